"""Guard against input records the Faust consumer skips without processing.

Observed with faust-streaming 0.15.3 on the embedded broker, under CPU load, when a
worker starts with a backlog: records fetched around the start-up seek are dropped
between the consumer and the agent, so the agent sees offset 6 and then 32 on a
partition, and 7..31 are never processed (faust-streaming#216/#221/#606 describe the same
family of races). At-least-once must not depend on that race, so the contact agent
checks that each input partition's offsets arrive without holes, starting from the
committed offset; on a hole it rewinds the consumer to the first missing offset and
skips records until that offset arrives again. A hole that comes back after one rewind
is real (e.g. transaction markers from an upstream transactional producer) and is
accepted. A partition whose records were all lost shows no hole to the agent, so a timer
also compares, while the agent is idle, how far the consumer has fetched each partition
with what the agent has processed.

:class:`GapGuard` is the pure bookkeeping; the agent does the rewind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["GapGuard", "Verdict"]

Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["process", "skip", "rewind"]
    offset: int = -1  # for rewind: where to read again from


@dataclass
class GapGuard:
    _next: dict[Key, int] = field(default_factory=dict)
    _generation: int | None = None
    _rewound: set[tuple[Key, int]] = field(default_factory=set)
    _waiting: dict[Key, int] = field(default_factory=dict)
    _last_skipped: dict[Key, int] = field(default_factory=dict)

    def observe(
        self, topic: str, partition: int, offset: int, generation: int | None,
        committed: int | None,
    ) -> Verdict:
        """Judge the record at ``offset``; ``committed`` is the partition's committed
        offset (the first one to read) when known."""
        if generation != self._generation:  # a rebalance: start over from the commits
            self._generation = generation
            self._next.clear()
            self._waiting.clear()
            self._last_skipped.clear()
        key = (topic, partition)
        if (wanted := self._waiting.get(key)) is not None:
            last = self._last_skipped.get(key)
            if offset < wanted:
                return Verdict("skip")  # delivered again after the rewind: processed
            if offset > wanted and (last is None or offset > last):
                self._last_skipped[key] = offset
                return Verdict("skip")  # fetched before the rewind: it will come again
            # The re-read has started: at the wanted offset, or past it if the hole is
            # real (nothing is stored there).
            del self._waiting[key]
            self._last_skipped.pop(key, None)
        else:
            expected = self._next.get(key, committed)
            if expected is not None and offset > expected and (key, expected) not in self._rewound:
                self._rewound.add((key, expected))
                self._waiting[key] = expected
                self._last_skipped[key] = offset
                return Verdict("rewind", expected)
            if expected is not None and offset < expected and key in self._next:
                return Verdict("skip")  # a record the agent processed already
        self._next[key] = offset + 1
        return Verdict("process")

    def lost_behind(
        self, topic: str, partition: int, fetched: int | None, committed: int | None
    ) -> int | None:
        """For an idle agent: if the consumer has fetched past the next offset the agent
        wants (so those records were lost on the way), the offset to read again from."""
        key = (topic, partition)
        if key in self._waiting:
            return None
        expected = self._next.get(key, committed)
        # ``fetched`` is the next offset the consumer will fetch: past the next one the
        # agent wants, with the agent idle, records went missing on the way.
        if fetched is None or expected is None or fetched <= expected:
            return None
        if (key, expected) in self._rewound:
            return None
        self._rewound.add((key, expected))
        self._waiting[key] = expected
        return expected
