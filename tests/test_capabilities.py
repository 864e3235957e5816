"""The guarantee a worker chooses from the broker's capabilities, how the transactions
probe reads the broker's answers (a stub client), and the record of offsets the fetcher
passed over (pure)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import TopicPartition

from streams import capabilities
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


class _Answers:
    """A client whose every InitProducerId is answered with the next of ``codes``."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.asked = 0

    async def coordinator_lookup(self, kind: int, key: str) -> int:
        return 1

    async def send(self, node: int, request: Any) -> Any:
        self.asked += 1
        return SimpleNamespace(error_code=self.codes.pop(0) if self.codes else 0)


@pytest.mark.parametrize(("codes", "granted", "asked"), [
    ((), True, 1),
    # CONCURRENT_TRANSACTIONS: another worker's probe of the same id is under way (a
    # broker failing over makes it last): asked again, not taken for a refusal.
    ((51, 51), True, 3),
    ((14, 15), True, 3),  # coordinator loading / not available yet: asked again
    ((53,), False, 1),  # TRANSACTIONAL_ID_AUTHORIZATION_FAILED: a refusal
    ((35,), False, 1),  # UNSUPPORTED_VERSION: a broker without transactions
])
async def test_the_transactions_probe_retries_what_is_not_a_refusal(
    codes: tuple[int, ...], granted: bool, asked: int,
) -> None:
    client = _Answers(*codes)
    assert await capabilities._granted(client, "p.capabilities-probe") is granted  # type: ignore[arg-type]
    assert client.asked == asked


async def test_a_probe_never_answered_raises_instead_of_saying_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the deadline a coordinator that only answers "not now" is an error (the
    worker exits 70 and is restarted), not a broker without transactions."""
    monkeypatch.setattr(capabilities, "_COORDINATOR_WAIT_S", 0.0)
    with pytest.raises(GroupCoordinatorNotAvailableError, match="not answered"):
        await capabilities._granted(_Answers(15, 15, 15), "p.capabilities-probe")  # type: ignore[arg-type]


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
