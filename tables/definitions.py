"""The definitions registry: every worker's copy of every workflow definition.

Each worker reads the whole compacted ``<prefix>definitions`` topic (all partitions, no
consumer group) into memory, from the start, and keeps following it. The contact agent
waits until the copy has caught up with the topic's end at start-up, so no event is
matched against an incomplete set. (Faust's GlobalTable would do the reading, but its
values must be written through Faust; definitions are written by the admin API and the
CLI, outside any agent.)

Keys are ``workflow:<account>:<id>:<version>``: every version is kept (compaction keeps
one record per key), because an execution finishes on the version it started with. The
newest version decides whether a workflow is active. An invalid record is logged and
ignored (``dripstream define`` and the admin API validate before writing).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams import tansu
from streams.definitions import DefinitionError, parse_definition
from streams.settings import Settings

__all__ = ["Registry"]

log = logging.getLogger(__name__)


class Registry:
    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        self.ready = asyncio.Event()

    # -- reading ------------------------------------------------------------------
    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        return self._versions.get((account, workflow_id), {}).get(version)

    def active(self, account: str) -> list[dict[str, Any]]:
        """The account's active workflows, newest version of each."""
        out = []
        for (acct, _), versions in self._versions.items():
            if acct == account and versions:
                newest = versions[max(versions)]
                if newest["active"]:
                    out.append(newest)
        return out

    # -- writing ------------------------------------------------------------------
    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # tombstone: forget that version
            parts = (key or b"").decode().split(":")
            if len(parts) == 4 and parts[3].isdigit():
                self._versions.get((parts[1], parts[2]), {}).pop(int(parts[3]), None)
            return
        try:
            wf = parse_definition(orjson.loads(value))
        except (DefinitionError, orjson.JSONDecodeError) as exc:
            log.error("ignoring invalid definition %r: %s", key, exc)
            return
        self._versions.setdefault((wf.account, wf.id), {})[wf.version] = wf.model_dump(
            mode="json"
        )

    async def follow(self, settings: Settings, topic: str) -> None:
        """Read ``topic`` from the start forever; set :attr:`ready` once caught up."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
            fetch_max_wait_ms=settings.fetch_wait_ms, **settings.kafka_security(),
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic)
            while not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = (await tansu.end_offsets(consumer, tps) if settings.embedded
                    else await consumer.end_offsets(tps))
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                if not self.ready.is_set() and all(
                    pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)
                ):
                    self.ready.set()
                    log.info("definitions registry ready: %d workflows", len(self._versions))
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.apply(record.key, record.value)
        finally:
            await consumer.stop()
