"""What every worker holds in full: the definitions and the suppression lists.

Each worker reads a whole compacted topic (all partitions, no consumer group) into
memory, from the start, and keeps following it. The contact agent waits until both
copies have caught up with their topics' ends at start-up, so no event is handled with
an incomplete set. (Faust's GlobalTable would do the reading, but its values must be
written through Faust; definitions are written by the admin API and the CLI.)

:class:`Registry` — ``<prefix>definitions``: workflows, account policies, account
keywords. Keys are ``<kind>:<account>:<id>:<version>``: every version is kept (compaction
keeps one record per key), because an execution finishes on the version it started with.
The newest version decides what is active. An invalid record is logged and ignored
(``dripstream define`` and the admin API validate before writing).

:class:`Suppressions` — ``<prefix>suppressions``: per account, addresses that must never
receive a send (opted out, hard-bounced, complained, manual). Key ``<account>:<address>``;
a record with ``"remove": true`` lifts a suppression of the same reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.compat import end_offsets, refresh_metadata
from streams.definitions import AccountPolicy, DefinitionError, parse_any
from streams.settings import Settings
from tables.compliance import default_policy

__all__ = ["CompactedView", "Registry", "Suppressions"]

log = logging.getLogger(__name__)


class CompactedView:
    """A worker-local copy of a compacted topic: subclasses say how to apply a record."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError

    async def follow(self, settings: Settings, topic: str) -> None:
        """Read ``topic`` from the start forever; set :attr:`ready` once caught up."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
            fetch_max_wait_ms=settings.follow_max_wait_ms, **settings.kafka_security(),
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic)
            while not partitions:  # the worker creates its topics at start; wait for them
                await asyncio.sleep(0.5)
                await refresh_metadata(consumer)
                partitions = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = (await end_offsets(consumer, tps) if settings.embedded
                    else await consumer.end_offsets(tps))
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                if not self.ready.is_set() and all(
                    pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)
                ):
                    self.ready.set()
                    log.info("%s ready: %s", type(self).__name__, self)
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.apply(record.key, record.value)
        finally:
            await consumer.stop()


class Registry(CompactedView):
    """Every definition, every version, by (kind, account) and id. Every event asks for
    its account's policy and active workflows: answered from the account's own entries,
    not a scan of every account's."""

    def __init__(self) -> None:
        super().__init__()
        self._by_account: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}

    def __str__(self) -> str:
        return f"{sum(len(ids) for ids in self._by_account.values())} definitions"

    def _newest(self, kind: str, account: str) -> list[dict[str, Any]]:
        ids = self._by_account.get((kind, account), {})
        return [versions[max(versions)] for versions in ids.values() if versions]

    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        return self._by_account.get(("workflow", account), {}).get(workflow_id, {}).get(version)

    def active(self, account: str) -> list[dict[str, Any]]:
        """The account's active workflows, newest version of each."""
        return [wf for wf in self._newest("workflow", account) if wf["active"]]

    def keywords(self, account: str) -> list[dict[str, Any]]:
        return [kw for kw in self._newest("keyword", account) if kw["active"]]

    def policy(self, account: str) -> dict[str, Any]:
        """The account's newest policy, or the defaults."""
        found = self._newest("account", account)
        return found[0] if found else default_policy(account)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        parts = (key or b"").decode().split(":")
        if value is None:  # tombstone: forget that version
            if len(parts) == 4 and parts[3].isdigit():
                ids = self._by_account.get((parts[0], parts[1]), {})
                ids.get(parts[2], {}).pop(int(parts[3]), None)
            return
        try:
            definition = parse_any(orjson.loads(value))
        except (DefinitionError, orjson.JSONDecodeError) as exc:
            log.error("ignoring invalid definition %r: %s", key, exc)
            return
        ident = "policy" if isinstance(definition, AccountPolicy) else definition.id
        ids = self._by_account.setdefault((definition.kind, definition.account), {})
        versions = ids.setdefault(ident, {})
        value_dict = definition.model_dump(mode="json")
        if versions.get(definition.version, value_dict) != value_dict:
            # Versions are write-once: running executions rely on the steps they started on.
            log.error("ignoring a changed %s v%d: publish a new version instead", key,
                      definition.version)
            return
        versions[definition.version] = value_dict


class Suppressions(CompactedView):
    """(account, address) → reason."""

    def __init__(self) -> None:
        super().__init__()
        self._reasons: dict[tuple[str, str], str] = {}

    def __str__(self) -> str:
        return f"{len(self._reasons)} suppressed addresses"

    def reason(self, account: str, address: str) -> str | None:
        return self._reasons.get((account, address))

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        account, _, address = (key or b"").decode().partition(":")
        if value is None:
            self._reasons.pop((account, address), None)
            return
        try:
            record = orjson.loads(value)
            reason = str(record["reason"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.error("ignoring invalid suppression record %r: %r", key, exc)
            return
        if record.get("remove"):
            if self._reasons.get((account, address)) == reason:
                del self._reasons[(account, address)]
        else:
            self._reasons[(account, address)] = reason
