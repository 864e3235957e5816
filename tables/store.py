"""The contacts table: one encoded :class:`tables.contacts.ContactState` per contact.

A Faust table (``contacts``, raw bytes keys and values, changelog
``<app id>-contacts-changelog``, partitioned like ``contact-events``), so Faust recovers it
from its changelog on every start, rebalance and standby, in memory or in RocksDB
(``DRIPSTREAM_STORE``). The contact agent reads it directly and writes a whole batch at
once: one changelog record per changed contact, sent to the contact's partition, and the
local store updated only once the broker has acknowledged them all
(:meth:`ContactStore.send`, then :meth:`ContactStore.apply`) — so nothing local is ever
ahead of what a restart would recover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from faust.types import TP

from streams.compat import StoreAccess, send_batches, use_memory_store
from tables.contacts import ContactState, decode, split_key

__all__ = ["ContactStore", "Written", "partition_for"]

#: What a changelog write put where: (key, partition, value) rows and, per (topic,
#: partition), the last offset written.
Written = tuple[list[tuple[bytes, int, bytes]], dict[tuple[str, int], int]]


@lru_cache(maxsize=65536)
def _murmur2(key: bytes) -> int:
    return int(murmur2(key) & 0x7FFFFFFF)


def partition_for(contact_id: str | bytes, partitions: int) -> int:
    """The partition of a contact: Kafka's default (murmur2) partitioner on its id
    (remembered for recent ids: aiokafka's murmur2 is pure Python)."""
    key = contact_id.encode() if isinstance(contact_id, str) else contact_id
    return _murmur2(key) % partitions


#: RocksDB memory per partition database (faust-streaming's defaults are a 2 GiB block
#: cache and three 64 MiB write buffers *per partition*): bounded, so a worker's memory
#: stays flat however many contacts it holds. The data itself is on disk.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 << 20,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 << 20,
    "block_cache_compressed_size": 0,
}


class ContactStore:
    def __init__(self, app: Any, partitions: int, *, rocksdb: bool = False) -> None:
        self.app = app
        self.partitions = partitions
        self.table = app.Table(
            "contacts", default=None, partitions=partitions, key_type=bytes,
            value_type=bytes, help="Contact state by <account>:<contact id>",
            options=dict(ROCKSDB_OPTIONS) if rocksdb else None,
        )
        if not rocksdb:
            use_memory_store(self.table)  # a rebalance reads only the changelog's tail
        self._access = StoreAccess(self.table)

    def partition(self, key: str) -> int:
        """A contact's partition; a key ``~<partition>:...`` is a partition's own record
        (a campaign's progress there: agents/campaigns.py)."""
        if key[0] == "~":
            return int(key[1:key.index(":")])
        known = self._access.known_partition(key.encode())
        return known if known is not None else partition_for(split_key(key)[1],
                                                             self.partitions)

    def get_raw(self, key: str) -> bytes | None:
        access = self._access
        raw_key = key.encode()
        if not access.rocksdb:  # one dict for all partitions
            return access.get(0, raw_key)
        known = access.known_partition(raw_key)
        return access.get(self.partition(key) if known is None else known, raw_key)

    def get(self, key: str) -> ContactState | None:
        raw = self.get_raw(key)
        return None if raw is None else decode(raw)

    async def send(
        self, values: dict[str, bytes], *, producer: AIOKafkaProducer | None = None,
    ) -> Callable[[], Awaitable[Written]]:
        """Queue every changed contact's encoded state on its changelog partition; returns
        a coroutine function that waits for the broker's acknowledgements. Apply what it
        returns with :meth:`apply` (the local store is never ahead of the changelog).
        ``producer``: a transactional one, begun (exactly-once), instead of the app's."""
        topic = self.table.changelog_topic_name
        rows = [(key.encode(), self.partition(key), value) for key, value in values.items()]
        acknowledged = await send_batches(self.app, ((topic, partition, key, value, None)
                                                     for key, partition, value in rows),
                                          producer=producer)

        async def written() -> Written:
            return rows, await acknowledged()

        return written

    def apply(self, written: Written) -> None:
        """Put acknowledged states in the local store (in the order they were written)."""
        rows, newest = written
        topic = self.table.changelog_topic_name
        for key, partition, value in rows:
            self._access.put(partition, key, value)
        for (_, partition), offset in newest.items():
            self._access.persisted(TP(topic, partition), offset)

    def persisted(self, partition: int) -> int | None:
        """The newest changelog offset the local store holds for ``partition``."""
        store = self._access._store
        offset: int | None = store.persisted_offset(
            TP(self.table.changelog_topic_name, partition))
        return offset

    def items(self, partitions: set[int], prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """(key, encoded state) of every contact stored for ``partitions`` whose key starts
        with ``prefix`` (an account's: ``"acme:"``)."""
        raw_prefix = prefix.encode()
        for raw_key, value in self._access.items(partitions):
            if raw_key.startswith(raw_prefix):
                yield raw_key.decode(), value
