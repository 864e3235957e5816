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
(``dripstream define`` and the admin API validate before writing). A version is
write-once: the first record of a key is the one every worker runs, and a later record
with another body is refused (logged, with its key as text, and counted in
:attr:`Registry.refused`). Publishers check before and read back after publishing, so such
a record only exists after a lost race, and the loser then re-publishes the first body
(compaction keeps a key's *last* record): see ``docs/architecture.md``, Definitions.

:class:`Suppressions` — ``<prefix>suppressions``: per account, addresses that must never
receive a send (opted out, hard-bounced, complained, manual). Key ``<account>:<address>``;
a record with ``"remove": true`` lifts a suppression of the same reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from streams.compat import end_offsets, refresh_metadata
from streams.definitions import AccountPolicy, CampaignControl, DefinitionError, parse_any
from streams.settings import Settings
from tables.campaigns import CAMPAIGN_WORKFLOW, content_workflow, sends_content
from tables.compliance import default_policy
from tables.inactivity import thresholds

if TYPE_CHECKING:
    from streams.capabilities import Capabilities

__all__ = ["CompactedView", "Registry", "Suppressions"]

log = logging.getLogger(__name__)


class CompactedView:
    """A worker-local copy of a compacted topic: subclasses say how to apply a record."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        #: partition → the next offset to read (every record before it is applied).
        self.positions: dict[int, int] = {}
        #: The topic does not exist (yet): :meth:`follow` waits for it.
        self.topic_missing = False
        self._progress = asyncio.Condition()

    def apply(self, key: bytes | None, value: bytes | None, timestamp: int = 0) -> None:
        """Apply one record (``timestamp``: its broker timestamp, ms)."""
        raise NotImplementedError

    def apply_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Apply one consumed record (a subclass that needs its headers overrides this)."""
        self.apply(record.key, record.value, record.timestamp)

    async def batch_applied(self) -> None:
        """Called after each fetch has been applied (also an empty one), before
        :meth:`reached` answers for it: a subclass's own step (the API's projection)."""

    async def reached(self, partition: int, offset: int, within_s: float) -> bool:
        """Wait until the record at ``offset`` of ``partition`` has been applied (a
        publisher's read-back); False if ``within_s`` seconds pass first."""
        return await self.wait_for(lambda: self.positions.get(partition, 0) > offset,
                                   within_s)

    async def wait_for(self, predicate: Callable[[], bool], within_s: float) -> bool:
        """Wait until ``predicate()`` holds after a fetch has been applied; False if
        ``within_s`` seconds pass first."""
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(predicate), within_s)
            except TimeoutError:
                return False
        return True

    async def follow(self, settings: Settings, topic: str,
                     capabilities: Capabilities | None = None, *,
                     read_committed: bool = False) -> None:
        """Read ``topic`` from the start forever; set :attr:`ready` once caught up.
        ``capabilities``: the broker's (unknown: end offsets are read the way that is
        right on every broker). ``read_committed``: only what committed transactions
        wrote (exactly-once: the suppressions a batch writes are in its transaction)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
            fetch_max_wait_ms=settings.follow_max_wait_ms,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            **settings.kafka_security(),
        )
        try:  # start inside: a follower cancelled while starting still closes it
            await consumer.start()
            partitions = consumer.partitions_for_topic(topic)
            while not partitions:  # the worker creates its topics at start; wait for them
                self.topic_missing = True
                await asyncio.sleep(0.5)
                await refresh_metadata(consumer)
                partitions = consumer.partitions_for_topic(topic)
            self.topic_missing = False
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            exact = capabilities is not None and capabilities.exact_end_offsets
            ends = (await consumer.end_offsets(tps) if exact
                    else await end_offsets(consumer, tps))
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                if not self.ready.is_set() and all(
                    pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)
                ):
                    self.ready.set()
                    log.info("%s ready: %s", type(self).__name__, self)
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        self.apply_record(record)
                    if records:
                        self.positions[tp.partition] = records[-1].offset + 1
                await self.batch_applied()
                async with self._progress:
                    self._progress.notify_all()
        finally:
            await consumer.stop()


class Registry(CompactedView):
    """Every definition, every version, by (kind, account) and id. Every event asks for
    its account's policy and active workflows: answered from the account's own entries,
    not a scan of every account's.

    Campaigns also keep when each version was published (its record's broker timestamp:
    the same on every worker; a schedule's occurrences count from it) and their controls
    (paused, cancelled). A content campaign runs as a one-step workflow made from it
    (:func:`tables.campaigns.content_workflow`), found by :meth:`lookup` under the id
    ``campaign:<id>``, which no defined workflow can have.

    ``quiet``: refused records are counted, not logged (a CLI command reading the topic
    has nothing to say about another account's old conflicts)."""

    def __init__(self, *, quiet: bool = False) -> None:
        super().__init__()
        self.quiet = quiet
        #: Records refused because their version exists with another body, and the last
        #: few of their keys (as text).
        self.refused = 0
        self.refused_keys: deque[str] = deque(maxlen=100)
        self._by_account: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}
        #: (kind, account, id, version) → its record's broker timestamp (ms).
        self._published: dict[tuple[str, str, str, int], int] = {}
        #: (account, campaign id) → {"pause": action, "cancel": action} (newest of each).
        self._controls: dict[tuple[str, str], dict[str, str]] = {}
        self._made: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._thresholds: dict[str, tuple[int, ...]] = {}
        #: Accounts whose inactivity thresholds changed since the timer last looked
        #: (:meth:`threshold_changes`): their contacts' timers are re-armed.
        self._threshold_changes: set[str] = set()

    def __str__(self) -> str:
        return f"{sum(len(ids) for ids in self._by_account.values())} definitions"

    def _newest(self, kind: str, account: str) -> list[dict[str, Any]]:
        ids = self._by_account.get((kind, account), {})
        return [versions[max(versions)] for versions in ids.values() if versions]

    def _live_workflows(self, account: str) -> list[dict[str, Any]]:
        """The newest version of each workflow that is not a shadow."""
        out = []
        for versions in self._by_account.get(("workflow", account), {}).values():
            live = [v for v, body in versions.items() if not body.get("shadow")]
            if live:
                out.append(versions[max(live)])
        return out

    def shadows(self, account: str | None = None) -> list[dict[str, Any]]:
        """Workflow versions in shadow (of ``account``, or of every account): the newest
        version of a workflow when it is an active shadow. A later version without
        ``shadow`` (a promotion) or with ``active: false`` ends it (docs/simulation.md)."""
        out = []
        for (kind, acct), ids in self._by_account.items():
            if kind != "workflow" or (account is not None and acct != account):
                continue
            for versions in ids.values():
                if versions and (body := versions[max(versions)]).get("shadow") \
                        and body["active"]:
                    out.append(body)
        return sorted(out, key=lambda b: (b["account"], b["id"]))

    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        if workflow_id.startswith(CAMPAIGN_WORKFLOW):
            ident = (account, workflow_id, version)
            if (made := self._made.get(ident)) is None:
                campaign = self.campaign(account, workflow_id[len(CAMPAIGN_WORKFLOW):],
                                         version)
                if campaign is None or not sends_content(campaign):
                    return None
                made = self._made[ident] = content_workflow(campaign, self.policy(account))
            return made
        return self._by_account.get(("workflow", account), {}).get(workflow_id, {}).get(version)

    def version(self, kind: str, account: str, ident: str, version: int
                ) -> dict[str, Any] | None:
        """One definition by its exact version (an account policy's ``ident`` is
        ``policy``); versions are write-once, so the answer never changes once given."""
        return self._by_account.get((kind, account), {}).get(ident, {}).get(version)

    def versions(self, kind: str, account: str, ident: str) -> dict[int, dict[str, Any]]:
        """Every version of one definition held (version → body; empty: none)."""
        return dict(self._by_account.get((kind, account), {}).get(ident, {}))

    def campaign(self, account: str, campaign_id: str, version: int | None = None
                 ) -> dict[str, Any] | None:
        """A campaign's given version, or its newest."""
        versions = self._by_account.get(("campaign", account), {}).get(campaign_id, {})
        if not versions:
            return None
        return versions.get(max(versions) if version is None else version)

    def campaigns(self, account: str | None = None) -> list[dict[str, Any]]:
        """The newest version of every campaign (of ``account``, or of every account)."""
        if account is not None:
            return self._newest("campaign", account)
        return [versions[max(versions)] for (kind, _), ids in self._by_account.items()
                if kind == "campaign" for versions in ids.values() if versions]

    def published_at(self, campaign: dict[str, Any]) -> datetime:
        """When this version of the campaign was published (its record's timestamp)."""
        return self.published("campaign", campaign)

    def published(self, kind: str, definition: dict[str, Any]) -> datetime:
        """When this version of a campaign or workflow was published (its record's
        broker timestamp)."""
        ms = self._published.get((kind, definition["account"], definition["id"],
                                  definition["version"]), 0)
        return datetime.fromtimestamp(ms / 1000, UTC)

    def campaign_status(self, account: str, campaign_id: str) -> str:
        """``cancelled`` (final), ``paused`` or ``running``."""
        controls = self._controls.get((account, campaign_id), {})
        if "cancel" in controls:
            return "cancelled"
        return "paused" if controls.get("pause") == "pause" else "running"

    def active(self, account: str) -> list[dict[str, Any]]:
        """The account's active workflows, newest version of each (shadows aside)."""
        return [wf for wf in self._live_workflows(account) if wf["active"]]

    def inactivity_thresholds(self, account: str) -> tuple[int, ...]:
        """The ``inactive_days`` the account's active workflows react to, ascending."""
        if (found := self._thresholds.get(account)) is None:
            found = self._thresholds[account] = thresholds(self.active(account))
        return found

    def threshold_changes(self) -> set[str]:
        """The accounts whose thresholds changed since the last call (then forgotten)."""
        changed, self._threshold_changes = self._threshold_changes, set()
        return changed

    def keywords(self, account: str) -> list[dict[str, Any]]:
        return [kw for kw in self._newest("keyword", account) if kw["active"]]

    def policy(self, account: str) -> dict[str, Any]:
        """The account's newest policy, or the defaults."""
        found = self._newest("account", account)
        return found[0] if found else default_policy(account)

    def apply(self, key: bytes | None, value: bytes | None, timestamp: int = 0) -> None:
        parts = (key or b"").decode().split(":")
        if value is None:  # tombstone: forget that version (or that control)
            if parts[0] == "campaign_control" and len(parts) == 4:
                self._controls.get((parts[1], parts[2]), {}).pop(parts[3], None)
            elif len(parts) == 4 and parts[3].isdigit():
                ids = self._by_account.get((parts[0], parts[1]), {})
                ids.get(parts[2], {}).pop(int(parts[3]), None)
                if parts[0] == "workflow":
                    self._rethreshold(parts[1])
            return
        try:
            # A campaign's minimum interval was checked against its account's policy when
            # it was defined; not again here, where the policy may not have been read yet
            # (a worker reads the topic's partitions in no particular order).
            definition = parse_any(orjson.loads(value), min_interval_s=0)
        except (DefinitionError, orjson.JSONDecodeError, ValueError) as exc:
            log.error("ignoring invalid definition %s: %s", _text(key), exc)
            return
        if definition.kind in ("account", "campaign"):
            # A content campaign's workflow is made from the campaign and its account's
            # policy (the zone): made again from the newest.
            self._made = {k: v for k, v in self._made.items() if k[0] != definition.account}
        if isinstance(definition, CampaignControl):
            slot = "cancel" if definition.action == "cancel" else "pause"
            controls = self._controls.setdefault((definition.account, definition.campaign_id),
                                                 {})
            controls[slot] = definition.action
            return
        ident = "policy" if isinstance(definition, AccountPolicy) else definition.id
        ids = self._by_account.setdefault((definition.kind, definition.account), {})
        versions = ids.setdefault(ident, {})
        value_dict = definition.model_dump(mode="json")
        if versions.get(definition.version, value_dict) != value_dict:
            # Versions are write-once: running executions rely on the steps they started on.
            # Publishers refuse such a record before publishing it; one here lost a race.
            self.refused += 1
            self.refused_keys.append(_text(key))
            if not self.quiet:
                log.error("ignoring a changed %s (another body was published first under "
                          "that key): publish a new version instead", _text(key))
            return
        versions[definition.version] = value_dict
        if definition.kind == "workflow":
            self._rethreshold(definition.account)
        if definition.kind in ("campaign", "workflow"):
            self._published.setdefault(
                (definition.kind, definition.account, ident, definition.version), timestamp)


    def _rethreshold(self, account: str) -> None:
        before = self._thresholds.pop(account, None)
        if self.inactivity_thresholds(account) != (before or ()):
            self._threshold_changes.add(account)


class Suppressions(CompactedView):
    """(account, address) → reason."""

    def __init__(self) -> None:
        super().__init__()
        self._reasons: dict[tuple[str, str], str] = {}

    def __str__(self) -> str:
        return f"{len(self._reasons)} suppressed addresses"

    def reason(self, account: str, address: str) -> str | None:
        return self._reasons.get((account, address))

    def listing(self, account: str) -> dict[str, str]:
        """The account's suppressed addresses and their reasons (the admin API's list)."""
        return {address: reason for (acc, address), reason in self._reasons.items()
                if acc == account}

    def apply(self, key: bytes | None, value: bytes | None, timestamp: int = 0) -> None:
        account, _, address = (key or b"").decode().partition(":")
        if value is None:
            self._reasons.pop((account, address), None)
            return
        try:
            record = orjson.loads(value)
            reason = str(record["reason"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.error("ignoring invalid suppression record %s: %r", _text(key), exc)
            return
        if record.get("remove"):
            if self._reasons.get((account, address)) == reason:
                del self._reasons[(account, address)]
        else:
            self._reasons[(account, address)] = reason


def _text(key: bytes | None) -> str:
    """A record key as an operator reads it (not a Python bytes repr)."""
    return (key or b"").decode(errors="replace")
