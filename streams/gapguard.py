"""Detect input records that reach the agent with a hole before them, and never let one
pass unless the broker shows those offsets hold no records.

The loss this was written against -- records fetched after a restart under CPU load that
never reached the agent -- had its root cause in the consumer (Faust's gap bookkeeping
after a seek, and aiokafka's seek to the committed offset leaving uncommitted partitions
alone) and is fixed in :mod:`streams.compat` (docs/reliability.md). This guard stays as a
detector: it checks that each input partition's offsets reach the agent without holes,
starting from the committed offset, and counts every hole it finds.

A hole ``start..end-1`` (the agent expected ``start`` and got ``end``) is first put to the
broker (:func:`streams.compat.absent_offsets`): offsets below the log start offset
(deleted by retention) or inside control batches (transaction markers of an upstream
transactional producer -- aiokafka skips them, so such a topic has one offset missing per
transaction) hold no records, and the hole is *explained*: Faust's commits may pass it.
Otherwise the records are stored and the consumer lost them: the agent rewinds to
``start`` and skips what arrives until the re-read reaches it (*healed*). A hole that
comes back after a rewind is put to the broker again; while the broker still holds
records there the guard rewinds again with backoff (1 s, 2 s, ... 30 s) and the hole is
*stuck* -- the worker reports it and its liveness counts it as a stall. Nothing is ever
accepted on the grounds that a rewind did not help. The inputs are delete-policy topics:
compaction, the other legitimate cause of holes, does not apply to them and is not
accepted.

A partition whose fetched records all went missing shows the agent no hole, so a timer
also compares, while the agent is idle, how far the consumer has fetched each partition
with what the agent has seen; records being handed over from the consumer's thread count
as fetched before they reach the agent, so only a difference that stays put for a few
seconds counts.

:class:`GapGuard` is the pure bookkeeping; ``agents/inputguard.py`` asks the broker,
rewinds and logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BACKOFF_MAX_S", "UNDELIVERED_AFTER_S", "Counts", "GapGuard", "Hole", "Verdict"]

Key = tuple[str, int]

#: The longest wait between two rewinds of a stuck hole.
BACKOFF_MAX_S = 30.0
#: How long the consumer must stay ahead of an idle agent before that counts as a hole.
UNDELIVERED_AFTER_S = 3.0


@dataclass(slots=True)
class Hole:
    """Offsets ``start..end-1`` of a partition that the agent never saw."""

    topic: str
    partition: int
    start: int
    end: int
    found_at: float
    rewinds: int = 0
    #: Set once it came back after a rewind with the broker holding records there.
    stuck_since: float | None = None
    #: When the next rewind is due (a stuck hole's backoff); None: none scheduled.
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["process", "skip", "check"]
    offset: int = -1  # for check: the hole's first offset (the record's is its end)
    healed: Hole | None = None  # for process: the hole this record's re-read filled


@dataclass(slots=True)
class Counts:
    """Since the worker started; in its liveness file (``input_holes``)."""

    holes: int = 0  # holes found (each one once, however often it comes back)
    explained: int = 0  # the broker showed no records there: markers or retention
    rewinds: int = 0
    healed: int = 0  # read again after a rewind: records the consumer had lost
    undelivered: int = 0  # found by the idle check (fetched, never handed over)
    #: Offsets the fetcher itself passed over as transaction markers or aborted batches
    #: (one marker per transaction on a topic written in transactions): not holes.
    markers: int = 0


@dataclass
class GapGuard:
    counts: Counts = field(default_factory=Counts)
    _next: dict[Key, int] = field(default_factory=dict)
    _generation: int | None = None
    _waiting: dict[Key, Hole] = field(default_factory=dict)
    #: Per partition with a rewind outstanding: the highest offset skipped since, so the
    #: re-read is recognised when the offsets go back.
    _last_skipped: dict[Key, int] = field(default_factory=dict)
    #: The idle check's last finding per partition: (fetched, expected, since).
    _suspect: dict[Key, tuple[int, int, float]] = field(default_factory=dict)

    # -- the records as they reach the agent ---------------------------------------------
    def observe(
        self, topic: str, partition: int, offset: int, generation: int | None,
        committed: int | None,
    ) -> Verdict:
        """Judge the record at ``offset``; ``committed`` is the partition's committed
        offset (the first one to read) when known. ``check``: a hole before it -- ask the
        broker, then :meth:`explained` or :meth:`missing`."""
        if generation != self._generation:  # a rebalance: the new one reads from commits
            self._generation = generation
            self._next.clear()
            self._waiting.clear()
            self._last_skipped.clear()
            self._suspect.clear()
        key = (topic, partition)
        self._suspect.pop(key, None)
        if (hole := self._waiting.get(key)) is not None:
            last = self._last_skipped.get(key, hole.end)
            if offset < hole.start:
                return Verdict("skip")  # delivered again after the rewind: processed
            if offset > hole.start and offset > last:
                self._last_skipped[key] = offset
                return Verdict("skip")  # fetched before the rewind: it comes again
            if offset > hole.start:  # the re-read started past the hole: it is still there
                return Verdict("check", hole.start)
            del self._waiting[key]  # the re-read reached the first missing offset
            self._last_skipped.pop(key, None)
            self.counts.healed += 1
            self._next[key] = offset + 1
            return Verdict("process", healed=hole)
        else:
            expected = self._next.get(key, committed)
            if expected is not None and offset > expected:
                return Verdict("check", expected)
            if expected is not None and offset < expected and key in self._next:
                return Verdict("skip")  # a record the agent processed already
        self._next[key] = offset + 1
        return Verdict("process")

    def hole(self, topic: str, partition: int) -> Hole | None:
        """The hole a rewind of this partition is outstanding for, if any."""
        return self._waiting.get((topic, partition))

    def explained(self, topic: str, partition: int, start: int, end: int) -> None:
        """The broker holds no record at ``start..end-1``: the agent goes on at ``end``
        (and the caller lets Faust's commits pass the hole)."""
        key = (topic, partition)
        if self._waiting.pop(key, None) is None:
            self.counts.holes += 1
        self._last_skipped.pop(key, None)
        self.counts.explained += 1
        self._next[key] = end

    def passed(self, topic: str, partition: int, start: int, end: int) -> None:
        """The fetcher passed over ``start..end-1`` (markers, aborted batches): the agent
        goes on at ``end``; no hole."""
        key = (topic, partition)
        self._waiting.pop(key, None)
        self._last_skipped.pop(key, None)
        self.counts.markers += end - start
        self._next[key] = end

    def missing(self, topic: str, partition: int, start: int, end: int,
                now: float) -> int | None:
        """The broker holds records at ``start..end-1`` that the agent never saw: the
        offset to rewind to now, or None if the next rewind waits (a stuck hole)."""
        key = (topic, partition)
        hole = self._waiting.get(key)
        if hole is None or hole.start != start:
            self.counts.holes += 1
            hole = self._waiting[key] = Hole(topic, partition, start, end, now)
        self._last_skipped[key] = max(self._last_skipped.get(key, end), end)
        if hole.rewinds == 0:
            hole.rewinds = 1
            self.counts.rewinds += 1
            return start
        hole.stuck_since = hole.stuck_since or now
        hole.end = max(hole.end, end)
        hole.retry_at = now + min(BACKOFF_MAX_S, 2.0 ** (hole.rewinds - 1))
        return None

    def due(self, now: float) -> list[Hole]:
        """Stuck holes whose next rewind is due (each counted as made)."""
        found = []
        for hole in self._waiting.values():
            if hole.retry_at is not None and hole.retry_at <= now:
                hole.retry_at = None
                hole.rewinds += 1
                self.counts.rewinds += 1
                found.append(hole)
        return found

    def stuck(self) -> list[Hole]:
        """Holes that came back after a rewind while the broker holds records there."""
        return [h for h in self._waiting.values() if h.stuck_since is not None]

    # -- the idle check --------------------------------------------------------------------
    def expected(self, topic: str, partition: int, committed: int | None) -> int | None:
        """The next offset the agent wants from the partition."""
        return self._next.get((topic, partition), committed)

    def lost_behind(
        self, topic: str, partition: int, fetched: int | None, committed: int | None,
        now: float,
    ) -> int | None:
        """For an idle agent: if the consumer has fetched past the next offset the agent
        wants, and has stayed there for :data:`UNDELIVERED_AFTER_S` (records still being
        handed over from the consumer's thread count as fetched meanwhile), those records
        went missing on the way: the offset to read again from."""
        key = (topic, partition)
        if key in self._waiting:
            return None
        expected = self._next.get(key, committed)
        # ``fetched`` is the next offset the consumer will fetch: past the next one the
        # agent wants, with the agent idle, records went missing on the way.
        if fetched is None or expected is None or fetched <= expected:
            self._suspect.pop(key, None)
            return None
        seen = self._suspect.get(key)
        if seen is None or seen[:2] != (fetched, expected):
            self._suspect[key] = (fetched, expected, now)
            return None
        if now - seen[2] < UNDELIVERED_AFTER_S:
            return None
        del self._suspect[key]
        self.counts.holes += 1
        self.counts.undelivered += 1
        self.counts.rewinds += 1
        self._waiting[key] = Hole(topic, partition, expected, fetched, now, rewinds=1)
        self._last_skipped[key] = fetched
        return expected
