"""The topic map: every topic dripstream reads or writes, with its partitioning and cleanup.

Keyed topics (contact id as key) all have ``DRIPSTREAM_PARTITIONS`` partitions so that a
contact's events, state, executions and sends land on the same partition number and are
handled, in order, by the one worker that owns it. Faust's table changelogs follow the same
count. ``dripstream topics`` and every worker start call :func:`ensure_topics`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.settings import Settings

__all__ = [
    "CHANNELS",
    "TOPICS",
    "PartitionCountError",
    "TopicNames",
    "TopicSpec",
    "describe_topics",
    "ensure_topics",
    "topic_name",
]

DAY_MS = 24 * 3600 * 1000


class PartitionCountError(RuntimeError):
    """An existing topic has another partition count than the settings ask for."""


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    compacted: bool
    retention_ms: int | None
    purpose: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("contact-events", False, 7 * DAY_MS, "CloudEvents from upstream publishers"),
    TopicSpec("routed", False, 7 * DAY_MS,
              "internal: events that arrived on another partition than their contact's, "
              "forwarded unchanged to the contact's partition"),
    TopicSpec("dead-letter", False, 30 * DAY_MS, "rejected input: original bytes + reason"),
    TopicSpec("definitions", True, None,
              "workflow, account-policy, keyword and campaign definitions; campaign controls"),
    TopicSpec("suppressions", True, None, "per account: addresses never to send to"),
    TopicSpec("control", False, 7 * DAY_MS, "pause/resume/cancel commands for executions"),
    TopicSpec("wakeups", False, 7 * DAY_MS, "internal: due waits, sent by the timer tick"),
    TopicSpec("journal", False, 7 * DAY_MS,
              "internal: what each batch's decisions read (now, definitions, suppressions), "
              "written before its effects so a replay decides the same; and when and how "
              "each input record was decided, for the journey lab (docs/simulation.md)"),
    TopicSpec("audit", False, 30 * DAY_MS, "every send that did not go out, with reason"),
    TopicSpec("outcomes", False, 90 * DAY_MS,
              "one record per entry into a workflow with a conversion, when its window "
              "closes: arm, sends, converted, revenue (docs/experiments.md)"),
    TopicSpec("shadow", False, 7 * DAY_MS,
              "what shadow versions would have sent and not sent, on the live stream "
              "(`dripstream shadow run`; docs/simulation.md); never read by a channel worker"),
    TopicSpec("send.sms", False, 7 * DAY_MS, "send commands for SMS channel workers"),
    TopicSpec("send.mms", False, 7 * DAY_MS, "send commands for MMS channel workers"),
    TopicSpec("send.email", False, 7 * DAY_MS, "send commands for email channel workers"),
)


CHANNELS = ("sms", "mms", "email")


def topic_name(settings: Settings, suffix: str) -> str:
    return f"{settings.topic_prefix}{suffix}"


@dataclass(frozen=True)
class TopicNames:
    """Every topic name the worker uses, built from the prefix in this one place."""

    prefix: str
    group_id: str

    @classmethod
    def of(cls, settings: Settings) -> TopicNames:
        return cls(settings.topic_prefix, settings.group_id)

    @property
    def events(self) -> str:
        return f"{self.prefix}contact-events"

    @property
    def routed(self) -> str:
        return f"{self.prefix}routed"

    @property
    def wakeups(self) -> str:
        return f"{self.prefix}wakeups"

    @property
    def control(self) -> str:
        return f"{self.prefix}control"

    @property
    def journal(self) -> str:
        return f"{self.prefix}journal"

    @property
    def definitions(self) -> str:
        return f"{self.prefix}definitions"

    @property
    def suppressions(self) -> str:
        return f"{self.prefix}suppressions"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @property
    def outcomes(self) -> str:
        return f"{self.prefix}outcomes"

    @property
    def shadow(self) -> str:
        return f"{self.prefix}shadow"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    def send(self, channel: str) -> str:
        return f"{self.prefix}send.{channel}"

    def changelog(self, table: str) -> str:
        """A Faust table's changelog topic (Faust names it ``<app id>-<table>-changelog``)."""
        return f"{self.group_id}-{table}-changelog"


def _config(spec: TopicSpec) -> dict[str, str]:
    config = {"cleanup.policy": "compact" if spec.compacted else "delete"}
    if spec.retention_ms is not None:
        config["retention.ms"] = str(spec.retention_ms)
    return config


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security()
    )


async def wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str],
                           wait_s: float = 30.0) -> None:
    """Until every partition of ``names`` has a leader: Kafka answers CreateTopics once its
    controller has the topics, before every broker knows their leaders (a producer
    that writes at once gets NotLeaderForPartition, and aiokafka logs an ERROR)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = await admin.describe_topics(names)
        if all(not t.get("error_code") and t["partitions"]
               and all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in found):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} have no leaders after {wait_s:.0f}s")
        await asyncio.sleep(0.05)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the topics of :data:`TOPICS` that do not exist yet; return the names created."""
    admin = _admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=topic_name(settings, spec.suffix),
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=_config(spec),
            )
            for spec in TOPICS
            if topic_name(settings, spec.suffix) not in existing
        ]
        if missing:
            await admin.create_topics(missing)
            await wait_for_leaders(admin, [t.name for t in missing])
        present = [n for n in (topic_name(settings, s.suffix) for s in TOPICS) if n in existing]
        wrong = {
            t["topic"]: len(t["partitions"])
            for t in (await admin.describe_topics(present) if present else [])
            if len(t["partitions"]) != settings.partitions
        }
        if wrong:
            raise PartitionCountError(
                f"topics {wrong} do not have DRIPSTREAM_PARTITIONS={settings.partitions} "
                "partitions; keyed topics and table changelogs must match (was a topic "
                "auto-created by a producer before `dripstream topics` ran?)"
            )
        return [t.name for t in missing]
    finally:
        await admin.close()


async def describe_topics(settings: Settings) -> list[dict[str, object]]:
    """Partition counts as the broker reports them, beside the intended configuration."""
    admin = _admin(settings)
    await admin.start()
    try:
        names = [topic_name(settings, spec.suffix) for spec in TOPICS]
        existing = set(await admin.list_topics())
        found = await admin.describe_topics([n for n in names if n in existing])
        partitions = {t["topic"]: len(t["partitions"]) for t in found}
        return [
            {
                "topic": name,
                "exists": name in existing,
                "partitions": partitions.get(name),
                "config": _config(spec),
                "purpose": spec.purpose,
            }
            for name, spec in zip(names, TOPICS, strict=True)
        ]
    finally:
        await admin.close()
