"""The guarantee a worker chooses from the broker's capabilities, and the record of
offsets the fetcher passed over (pure)."""

from __future__ import annotations

import pytest
from aiokafka.structs import TopicPartition

from streams.capabilities import KAFKA, TANSU, GuaranteeError, guarantee
from streams.compat import _Skipped
from streams.settings import Settings


@pytest.mark.parametrize(("asked", "kafka", "tansu"), [
    ("auto", "exactly_once", "at_least_once"),  # transactions where there are some
    ("at_least_once", "at_least_once", "at_least_once"),
    ("exactly_once", "exactly_once", None),  # None: refused, the broker cannot
])
def test_guarantee_by_setting_and_broker(asked: str, kafka: str, tansu: str | None) -> None:
    """What DRIPSTREAM_GUARANTEE gives on a broker with and without transactions."""
    settings = Settings(guarantee=asked)  # type: ignore[arg-type]
    assert guarantee(settings, KAFKA) == kafka
    if tansu is None:
        with pytest.raises(GuaranteeError, match="needs a broker with transactions"):
            guarantee(settings, TANSU)
    else:
        assert guarantee(settings, TANSU) == tansu


TP = TopicPartition("t", 0)


@pytest.mark.parametrize(("ranges", "hole", "covered"), [
    ([(5, 6)], (5, 6), True),  # one commit marker
    ([(5, 6), (6, 9)], (5, 9), True),  # a marker, then an aborted batch
    ([(6, 9), (5, 6)], (5, 9), True),  # recorded out of order
    ([(5, 6), (7, 9)], (5, 9), False),  # offset 6 was not passed over: a record is there
    ([(4, 10)], (5, 9), True),  # inside a larger range
    ([], (5, 6), False),  # nothing recorded: ask the broker
    ([(5, 6)], (6, 7), False),  # a different offset
])
def test_a_hole_is_covered_only_if_every_offset_was_passed_over(
    ranges: list[tuple[int, int]], hole: tuple[int, int], covered: bool,
) -> None:
    skipped = _Skipped()
    for start, end in ranges:
        skipped.add(TP, start, end)
    assert skipped.covers(TP, *hole) is covered
    assert not skipped.covers(TopicPartition("t", 1), *hole)  # another partition's
