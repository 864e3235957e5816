"""The journal on the wire: written before a batch's effects, read back for its replay.

Why it exists is in :mod:`tables.journal`. ``<prefix>journal`` has one record per batch and
input partition (the answers its handlers got), on that partition's number, written and
acknowledged before the batch's effects are produced (``agents/contacts.py``,
``Cycle.finish``). When a worker is given a partition — at start, after a crash, on a
rebalance — it reads that journal partition's tail back to the first entry whose records
are all committed, *before* it handles any of the partition's records: a record that an
entry covers was handled once already, and is handled again with the same answers and
the same ``now``. Entries of committed records are never needed again; the topic keeps
them for a day (a partition left unprocessed longer than that is re-decided).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.types import TP

from streams.compat import Record, committed_offset
from streams.embedded import read_records, topic_ends
from tables.journal import Entry, Recorder, Replayer

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["CHUNK", "Journal"]

log = logging.getLogger(__name__)

#: Journal records read per step when walking a partition's tail backwards.
CHUNK = 256


class Journal:
    """Entries of the partitions this worker was given, for the current generation."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.topic = worker.names.journal
        self.generation: int | None = None
        self.entries: dict[int, list[tuple[Entry, Replayer]]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        #: Records handled again with recorded answers, since the worker started.
        self.replayed = 0

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            s = self.w.settings
            committed = self.w.capabilities.transactions
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=s.bootstrap_servers, group_id=None,
                enable_auto_commit=False, fetch_max_wait_ms=10,
                isolation_level="read_committed" if committed else "read_uncommitted",
                **s.kafka_security())
            await self._consumer.start()
        return self._consumer

    async def prepare(self, partitions: set[int], generation: int) -> None:
        """Read the entries of ``partitions`` not read yet in this ``generation`` (none
        with exactly-once: nothing is journalled, agents/transactions.py)."""
        if self.w.transactions is not None:
            return
        if generation != self.generation:
            self.generation, self.entries = generation, {}
        for partition in sorted(partitions - set(self.entries)):
            self.entries[partition] = await self._tail(partition)

    async def _tail(self, partition: int) -> list[tuple[Entry, Replayer]]:
        w = self.w
        committed = {topic: committed_offset(w.app, TP(topic, partition)) or 0
                     for topic in w.batches.topics}

        def needed(entry: Entry) -> bool:
            return any(hi >= committed.get(topic, 0) for topic, (_, hi) in entry.ranges.items())

        consumer = await self._reader()
        tp = TopicPartition(self.topic, partition)
        end = (await topic_ends(consumer, [tp],
                                embedded=not w.capabilities.exact_end_offsets))[tp]
        found: list[Entry] = []
        hi = end
        while hi > 0:
            lo = max(0, hi - CHUNK)
            chunk = [Entry.decode(r.value) for r in
                     await read_records(consumer, {tp: hi}, start={tp: lo})]
            keep = [e for e in chunk if needed(e)]
            found = keep + found
            if len(keep) < len(chunk):
                break  # offsets only grow: everything before is committed too
            hi = lo
        if found:
            log.info("journal %s[%d]: %d entries cover records not yet committed; they are "
                     "handled again with their recorded answers", self.topic, partition,
                     len(found))
        registry, suppressions = w.registry, w.suppressions
        return [(e, Replayer(e, registry, suppressions.reason)) for e in found]

    def replay(self, topic: str, partition: int, offset: int) -> tuple[Entry, Replayer] | None:
        """The entry a record was handled with the first time, if any (the newest)."""
        for entry, replayer in reversed(self.entries.get(partition, ())):
            if entry.covers(topic, offset):
                self.replayed += 1
                return entry, replayer
        return None

    def records(self, recorders: dict[int, Recorder]) -> list[Record]:
        """The journal records of a batch's recorders, one per partition."""
        return [(self.topic, partition, None, recorder.entry().encode(), None)
                for partition, recorder in sorted(recorders.items()) if recorder.ranges]
