"""Exactly-once on Kafka: a transactional producer per partition this worker owns.

With ``DRIPSTREAM_GUARANTEE=exactly_once`` (the default on a broker with transactions,
:mod:`streams.capabilities`) each batch's writes for input partition ``p`` — its send
commands, contact events, audit records, suppressions, dead letters and forwards, the
changelog records of its contacts, and the input offsets it consumed — are committed in
one Kafka transaction of ``p``'s producer (``agents/contacts.py: Cycle.finish``). A
``read_committed`` reader (channel workers, the worker's own consumer, the followers) sees
all of it or none of it: a batch cut short by a crash leaves nothing visible, and is
redone from the committed offsets against the committed state.

**Why one producer per partition.** The transactional id ``<group>-tx-<partition>`` goes
with the partition. When a worker is given ``p`` it starts that id's producer before it
reads the committed offsets or the changelog (:meth:`Transactions.assign`, called from
the consumer's assignment hook in :mod:`streams.compat`); the broker's
``InitProducerId`` then bumps the id's epoch, aborts the previous owner's open
transaction, waits for a commit already under way to complete, and refuses every later
write of the previous owner (``ProducerFenced``). A worker the group has thrown out — a
long pause, a network split — cannot commit behind its successor, and the successor
reads stable offsets and state. (Kafka 2.5+ can also fence by consumer-group generation,
KIP-447, with one producer per worker; aiokafka implements only ``TxnOffsetCommit`` v0,
which cannot carry it.)

A partition's transactions run one at a time (its lock); a partition taken away waits
for the transaction it has under way before its producer stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["NotOwned", "Transactions"]

log = logging.getLogger(__name__)


class NotOwned(Exception):
    """The partition is not this worker's (any more): its part of a batch is not written."""


class Transactions:
    """The transactional producers of the partitions this worker owns."""

    def __init__(self, settings: Settings, max_request_size: int) -> None:
        self.settings = settings
        self.group_id = settings.group_id
        self.max_request_size = max_request_size
        self.producers: dict[int, AIOKafkaProducer] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def transactional_id(self, partition: int) -> str:
        return f"{self.group_id}-tx-{partition}"

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def assign(self, partitions: set[int]) -> None:
        """Own exactly ``partitions``: stop the producers of the others (after their
        transaction under way), start — and so fence the previous owners of — the new."""
        for partition in sorted(set(self.producers) - partitions):
            async with self._lock(partition):
                producer = self.producers.pop(partition)
            await producer.stop()
        new = sorted(partitions - set(self.producers))
        if not new:
            return
        started = await asyncio.gather(*(self._start(p) for p in new))
        self.producers.update(zip(new, started, strict=True))
        log.info("transactional producers for partitions %s started (previous owners "
                 "fenced)", new)

    async def _start(self, partition: int) -> AIOKafkaProducer:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            transactional_id=self.transactional_id(partition),
            acks="all", enable_idempotence=True, linger_ms=0,
            max_request_size=self.max_request_size, **s.kafka_security(),
        )
        await producer.start()  # InitProducerId: the fence (see the module doc)
        return producer

    @asynccontextmanager
    async def transaction(self, partition: int) -> AsyncIterator[AIOKafkaProducer]:
        """``partition``'s producer inside a begun transaction; the caller commits with
        :meth:`commit`. Raises :class:`NotOwned` if the partition is not this worker's.
        An exception inside leaves the transaction open: the worker exits, and the next
        owner's fence aborts it."""
        async with self._lock(partition):
            producer = self.producers.get(partition)
            if producer is None:
                raise NotOwned(partition)
            await producer.begin_transaction()
            yield producer

    async def commit(self, producer: AIOKafkaProducer,
                     offsets: dict[TopicPartition, int]) -> None:
        """The consumed ``offsets`` (next offset to read, per input partition) into the
        transaction, then commit it."""
        if offsets:
            await producer.send_offsets_to_transaction(offsets, self.group_id)
        await producer.commit_transaction()

    async def stop(self) -> None:
        producers, self.producers = list(self.producers.values()), {}
        for producer in producers:
            await producer.stop()
