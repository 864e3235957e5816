"""The batch drain (streams/compat.py BatchConsumer._drain_messages) with a fake consumer:
what it hands the agent around a seek, and that it never reports holes to Faust itself
(the input guard judges them with the broker: agents/inputguard.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.compat import BatchConsumer, Batches

INPUT = TP("in", 0)


class FakeConsumer:
    """What the drain reads of Faust's consumer; ``fetch`` is one fetch's records, and
    ``seek_after`` seeks the partition back (to ``seek_to``) once that offset was handed
    over — as the gap guard's rewind does, from the agent or a timer."""

    def __init__(self, fetch: list[int], seek_after: int | None, seek_to: int) -> None:
        self.app = SimpleNamespace(batches=Batches({INPUT.topic}, 100), fetch_wait_ms=10,
                                   idle_fetch_wait_ms=250)
        self.callback = None
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._read_offset[INPUT] = 9  # everything up to 9 was handed over already
        # Position moves per partition (a seek adds one, in the consumer thread), and the
        # count this fetch was made at.
        self._thread = SimpleNamespace(moves=defaultdict(int))
        self._fetched_moves = {INPUT: 0}
        self._stopped = asyncio.Event()
        self.should_stop = False
        self.fetch, self.seek_after, self.seek_to = fetch, seek_after, seek_to
        self.gaps: list[tuple[int, int]] = []
        self.tracked: list[int] = []

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for offset in self.fetch:
            yield INPUT, SimpleNamespace(offset=offset)
            if offset == self.seek_after:  # what the consumer thread's seek does
                self._read_offset[INPUT] = self.seek_to
                self._thread.moves[INPUT] += 1
        self._stopped.set()  # one fetch, then the drain stops

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((offset_from, offset_to))

    def track_message(self, message: Any) -> None:
        self.tracked.append(message.offset)

    def _set_fetch_wait(self, wait_ms: int) -> None:
        pass


async def drain(consumer: FakeConsumer) -> None:
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await BatchConsumer._drain_messages(consumer, fetcher)  # type: ignore[arg-type]


async def test_records_fetched_before_a_seek_are_dropped_not_taken_for_a_hole() -> None:
    """Sought back to 5 after 11 was handed over: 12 and 13 are stale (they come again
    from 5) — neither handed to the agent nor reported as a hole 6..12, which would let
    Faust commit past records nobody processed (found by the chaos run: input lost)."""
    consumer = FakeConsumer([10, 11, 12, 13], seek_after=11, seek_to=5)
    await drain(consumer)
    assert consumer.tracked == [10, 11]
    assert consumer.gaps == []
    assert consumer._read_offset[INPUT] == 5


async def test_a_jump_is_handed_over_and_left_to_the_guard() -> None:
    """Without a seek, a jump in the offsets (transaction markers, or records lost on the
    way) reaches the agent as it is; the drain records no hole that commits could pass."""
    consumer = FakeConsumer([10, 11, 15], seek_after=None, seek_to=0)
    await drain(consumer)
    assert (consumer.tracked, consumer.gaps) == ([10, 11, 15], [])
