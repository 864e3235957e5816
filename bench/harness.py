"""What every benchmark path shares: configuration, results, event makers, Kafka and Redis
helpers, worker processes, the throughput drains, latency and CPU measurement, py-spy.

The paths themselves are in :mod:`bench.paths`, the printing in :mod:`bench.report`.
Every wait here has a deadline; nothing asserts on a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from producers.admin import publish_definition
from producers.publisher import build_event
from streams.compat import visible_ends
from streams.embedded import EmbeddedRedis, WorkerProcess, read_records, topic_ends
from streams.settings import Settings
from streams.topics import ensure_topics, wait_for_leaders
from tables.contacts import decode as decode_state
from tables.readmodel import ReadModel
from tables.store import partition_for

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "bench"
#: Throughput-phase event types, in the order a contact receives them (created first).
EVENT_MIX = ("contact.created", "contact.tagged", "purchase.completed", "message.delivered",
             "custom.x")

Record = tuple[bytes, bytes]
#: (seq, sent_at) of an output record, or None if it carries no stamp.
Extract = Callable[[bytes | None], tuple[int, float] | None]
Partitioner = Callable[[bytes, int], int]

# --------------------------------------------------------------------------- definitions

#: No quiet hours: the bench runs at any hour and must measure sends, not deferrals.
POLICY = {"kind": "account", "account": ACCOUNT, "quiet_hours": None}
#: The workflow path's one workflow: every new contact gets an SMS carrying its stamp.
WORKFLOW = {
    "id": "bench-welcome", "account": ACCOUNT, "name": "bench welcome", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "sms",
    "steps": {"sms": {"kind": "send_sms", "body": "{{contact.sent_at}}"}},
}
#: ``--categories``: the same with message categories declared, one with caps, and the
#: send naming it — the gate reads the contact's preferences and the category's caps.
CATEGORY_POLICY = {**POLICY, "categories": [
    {"id": "promotions", "name": "Promotions", "caps": {"week": 100}},
    {"id": "news", "name": "News", "subscribed_by_default": False}]}
CATEGORY_WORKFLOW = {**WORKFLOW, "steps": {"sms": {**WORKFLOW["steps"]["sms"],  # type: ignore[dict-item]
                                                   "category": "promotions"}}}


def welcome(cfg: Config) -> list[dict[str, Any]]:
    """The workflow path's policy and workflow (with categories under ``--categories``)."""
    return [CATEGORY_POLICY, CATEGORY_WORKFLOW] if cfg.categories else [POLICY, WORKFLOW]


#: The contacts (memory) mode: a signup series that sends, then waits two days...
ONBOARDING = {
    "kind": "workflow", "id": "bench-onboarding", "account": ACCOUNT, "name": "onboarding",
    "version": 1, "trigger": {"event": "contact.created"}, "start": "hello",
    "steps": {
        "hello": {"kind": "send_sms", "body": "Hi {{contact.first_name|there}}!",
                  "next": "pause"},
        "pause": {"kind": "wait", "duration": "2d", "next": "again"},
        "again": {"kind": "send_sms", "body": "Still there, {{contact.first_name}}?"},
    },
}
#: ... and a one-SMS workflow for contacts tagged ``vip`` (finishes at once).
VIP = {
    "kind": "workflow", "id": "bench-vip", "account": ACCOUNT, "name": "vip", "version": 1,
    "trigger": {"event": "contact.tagged",
                "criteria": [{"field": "event.data.tag", "op": "eq", "value": "vip"}]},
    "start": "sms",
    "steps": {"sms": {"kind": "send_sms", "body": "Welcome to VIP, {{contact.first_name}}"}},
}

# --------------------------------------------------------------------------- config, results


@dataclass(frozen=True)
class Config:
    bootstrap: str
    redis_url: str
    redis_desc: str
    events: int
    partitions: int
    latency_events: int
    latency_seconds: float
    rate: float
    workflow_rates: tuple[float, ...]
    timeout: float
    profile: str
    workdir: Path
    run_id: str
    workers: int = 2
    contacts: int = 0
    contacts_stores: tuple[str, ...] = ("memory",)
    idle_seconds: float = 30.0
    idle_fetch_waits: tuple[int, ...] = (10, 50, 100, 250)
    pyspy: float = 0.0
    #: ``--categories``: the workflow's send names a message category (:func:`welcome`).
    categories: bool = False
    #: ``tansu`` (started here), ``kafka`` (an Apache Kafka node started here) or
    #: ``given`` (``--broker HOST:PORT``: not ours to restart, its CPU not measured).
    broker: str = "tansu"
    #: The broker's process when this run started it (its CPU is measured).
    broker_pid: int | None = None
    campaign_contacts: int = 100_000
    recovery_contacts: int = 200_000
    #: The simulate path's recorded window: events over contacts.
    sim_events: int = 1_000_000
    sim_contacts: int = 100_000
    #: Events/s the simulate path produces them at while the worker runs (0: a backlog).
    sim_rate: float = 0.0
    #: ``DRIPSTREAM_GUARANTEE`` of the workers (``--guarantee``).
    guarantee: str = "auto"
    #: What the workers run with that setting on this broker (the bench asks the broker
    #: as the workers do: ``streams.capabilities``): exactly-once writes every batch in
    #: transactions, so end offsets count commit markers too and outputs are read
    #: ``read_committed``.
    exactly_once: bool = False
    #: The broker's ListOffsets(latest) counts every record (Kafka). Tansu's is short:
    #: end offsets come from a Fetch's high watermark there.
    exact_ends: bool = False

    @property
    def broker_given(self) -> bool:
        return self.broker == "given"

    def prefix(self, name: str) -> str:
        """A topic / group / Redis-key prefix of this run (all removed afterwards)."""
        return f"bench{self.run_id}.{name}."

    def latency_count(self, rate: float) -> int:
        """Events of a latency phase at ``rate``: ``--latency-events``, or more so that
        the phase lasts ``--latency-seconds`` (a short burst shows no steady state)."""
        return max(self.latency_events, round(rate * self.latency_seconds))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Latency:
    """One latency phase: stamped events offered at ``offered``/s, outputs received."""

    offered: float
    sent: int = 0
    send_rate: float | None = None  # what the producer achieved
    output_rate: float | None = None  # outputs received / (last receipt - first send)
    latencies_ms: list[float] = field(default_factory=list)
    #: The channel path: each output's last hop alone (send command → provider call).
    channel_ms: list[float] = field(default_factory=list)
    #: Exactly-once: outputs read and the commit markers among them (one per
    #: transaction that wrote a partition): how many outputs a transaction carries at
    #: this rate.
    outputs: int = 0
    markers: int | None = None

    def percentile(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q)

    @property
    def over_capacity(self) -> bool:
        """The processor did not keep up with the rate the events were sent at (outputs
        per second 3 % below it: at a steady state the last output trails the last send
        by one latency, well under 1 % of a phase): the latencies are queueing."""
        sent = min(self.offered, self.send_rate or self.offered)
        return self.output_rate is not None and self.output_rate < 0.97 * sent


@dataclass
class Result:
    """One measured path: throughput (first record in → last record needed out) and its
    latency phases, plus free-form notes (the correctness checks)."""

    path: str
    events: int = 0
    seconds: float | None = None
    startup_s: float | None = None  # worker start → first output record
    latency: list[Latency] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workers: int = 1
    #: The path this one is a variant of (N workers: the 1-worker run).
    baseline: str | None = None
    #: CPU seconds of ``worker`` (all of them) and ``broker`` over the throughput phase
    #: (:class:`PhaseCpu`); None where not measured.
    cpu_s: dict[str, float | None] = field(default_factory=dict)

    def cpu_us_per_event(self, name: str) -> float | None:
        """CPU time of ``name`` per event of the throughput phase, in µs."""
        cpu = self.cpu_s.get(name)
        return None if cpu is None or not self.events else cpu / self.events * 1e6

    @property
    def events_per_s(self) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.events / self.seconds


@dataclass
class MemoryResult:
    """Worker memory with N contacts of realistic state (``--contacts``)."""

    store: str
    contacts: int
    events: int
    rss_before: int | None = None
    rss_after: int | None = None
    rss_peak: int | None = None
    state_mean: float | None = None
    state_max: int | None = None
    seconds: float | None = None  # load: first changelog record → last one needed
    redis_before: int | None = None
    redis_after: int | None = None
    disk_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_contact(self) -> float | None:
        if self.rss_before is None or self.rss_after is None or not self.contacts:
            return None
        return (self.rss_after - self.rss_before) / self.contacts

    def projected(self, contacts: int) -> float | None:
        per = self.per_contact
        return None if per is None or self.rss_before is None else self.rss_before + per * contacts


@dataclass
class IdleResult:
    """CPU of an idle stack with one fetch wait, and the workflow latency it gives."""

    label: str
    fetch_wait_ms: int | None
    seconds: float
    cpu: dict[str, float | None] = field(default_factory=dict)  # % of one core; None: n/a
    latency: Latency | None = None
    notes: list[str] = field(default_factory=list)


#: The product goal of a campaign's fan-out: contacts reached per second per worker.
CAMPAIGN_GOAL_PER_WORKER = 50_000


@dataclass
class CampaignResult:
    """One occurrence of a content SMS campaign fanned out over ``contacts`` contacts (the
    ``campaign`` path). Times are seconds from the occurrence's instant (the real time the
    workers' clock showed its ``at``) to send commands' broker timestamps, or to the
    partitions' completion (their progress records' ``ended_at``, on the real clock)."""

    label: str
    workers: int
    contacts: int  # contacts of the account, all scanned
    audience: int  # of them in the audience: the sends expected
    sends: int = 0  # send commands of this campaign seen
    distinct: int = 0  # distinct contact ids among them
    first_s: float | None = None  # fire → first send command (the start-up delay)
    last_s: float | None = None  # fire → last send command
    complete_s: float | None = None  # fire → the last partition's progress completed
    #: What "contacts/s" divides by: ``last`` (the last send) or ``complete``.
    end: str = "last"
    cpu: dict[str, float | None] = field(default_factory=dict)  # % of one core, fire → end
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return self.last_s if self.end == "last" else self.complete_s

    @property
    def contacts_per_s(self) -> float | None:
        seconds = self.seconds
        return self.contacts / seconds if seconds and seconds > 0 else None

    @property
    def per_worker(self) -> float | None:
        rate = self.contacts_per_s
        return None if rate is None else rate / self.workers


@dataclass
class Profile:
    """A py-spy recording of a worker, summarised."""

    path: str
    seconds: float
    samples: int  # busy samples, all threads
    idle: int  # samples waiting in epoll / a lock
    inclusive: list[tuple[str, int]]
    self_time: list[tuple[str, int]]
    file: Path


@dataclass
class Bench:
    """One invocation: the config, the shared events and everything measured."""

    cfg: Config
    events: list[Record]
    broker_desc: str
    #: The 1/5/15-minute load average when the run began (the report adds the end's).
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    #: Per step: the cores other processes than this run's took on average meanwhile.
    others: list[tuple[str, float]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    idle: list[IdleResult] = field(default_factory=list)
    campaigns: list[CampaignResult] = field(default_factory=list)
    recovery: list[Any] = field(default_factory=list)  # bench.recovery.RecoveryResult
    simulations: list[Any] = field(default_factory=list)  # bench.simulate.SimResult
    profiles: list[Profile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def result(self, path: str) -> Result | None:
        return next((r for r in self.results if r.path == path), None)


# --------------------------------------------------------------------------- events


def make_events(n: int, run_id: str) -> list[Record]:
    """``n`` valid, pre-encoded (key, value) events over ~n/10 contacts, keyed by contact id.

    Contact ``i`` gets event types in :data:`EVENT_MIX` order, so its first is
    ``contact.created``; later rounds repeat the non-creating types.
    """
    contacts = max(1, n // 10)
    base = datetime.now(UTC)
    out: list[Record] = []
    for j in range(n):
        contact_id = f"{run_id}-c{j % contacts}"
        round_ = j // contacts
        kind = EVENT_MIX[0] if round_ == 0 else EVENT_MIX[1 + (round_ - 1) % (len(EVENT_MIX) - 1)]
        data: dict[str, Any]
        if kind == "contact.created":
            data = {"phone": f"+1415555{j % 10000:04d}", "email": f"u{j}@example.com",
                    "timezone": "Europe/Berlin", "attributes": {"plan": "free"},
                    "consent": {"sms": True, "email": True}}
        elif kind == "contact.tagged":
            data = {"tag": f"t{round_ % 7}"}
        elif kind == "purchase.completed":
            data = {"order_id": f"o-{j}", "amount": "19.90", "currency": "EUR"}
        elif kind == "message.delivered":
            data = {"message_id": f"m-{j}", "channel": "sms"}
        else:
            data = {"page": "/pricing", "n": j}
        event = build_event(ACCOUNT, contact_id, kind, data,
                            time=base + timedelta(milliseconds=j))
        out.append((contact_id.encode(), orjson.dumps(event)))
    return out


def state_key(contact_id: bytes) -> bytes:
    """The contacts table (and changelog) key of a bench contact."""
    return ACCOUNT.encode() + b":" + contact_id


def expected_versions(events: Iterable[Record]) -> dict[bytes, int]:
    """Changelog key → the ``version`` its contact reaches once all its events applied."""
    return dict(Counter(state_key(key) for key, _ in events))


def realistic_contacts(run_id: str, n: int) -> Iterator[Record]:
    """The contacts mode's load: per contact a full ``contact.created`` (starts
    :data:`ONBOARDING`), a ``vip`` tag (starts :data:`VIP`), a second tag and a group."""
    cities = ("Berlin", "Lisbon", "Austin", "Osaka", "Lagos")
    for i in range(n):
        contact_id = f"{run_id}-m{i}"
        key = contact_id.encode()
        created = {
            "phone": f"+1415{i % 10_000_000:07d}", "email": f"user{i}@example.com",
            "timezone": "Europe/Berlin", "locale": "de-DE",
            "attributes": {"first_name": f"Name{i}", "plan": ("free", "pro")[i % 2],
                           "city": cities[i % len(cities)]},
            "consent": {"sms": True, "email": True},
        }
        for kind, data in (("contact.created", created), ("contact.tagged", {"tag": "vip"}),
                           ("contact.tagged", {"tag": "newsletter"}),
                           ("contact.added_to_group", {"group": "customers"})):
            yield key, orjson.dumps(build_event(ACCOUNT, contact_id, kind, data))


def campaign_contacts(run_id: str, n: int, every: int = 10) -> Iterator[Record]:
    """The campaign path's contacts ``<run id>-k<i>``: a ``contact.created`` with phone,
    SMS consent, a zone and a first name; every ``every``-th (i % every == 0) also joins
    the group ``customers`` (the narrow audience)."""
    for i in range(n):
        contact_id = f"{run_id}-k{i}"
        key = contact_id.encode()
        data = {"phone": f"+1415{i % 10_000_000:07d}", "timezone": "Europe/Berlin",
                "attributes": {"first_name": f"Name{i}"}, "consent": {"sms": True}}
        yield key, orjson.dumps(build_event(ACCOUNT, contact_id, "contact.created", data))
        if i % every == 0:
            yield key, orjson.dumps(build_event(ACCOUNT, contact_id, "contact.added_to_group",
                                                {"group": "customers"}))


def stamped_event(run_id: str, name: str, seq: int, kind: str = "contact.updated",
                  sent_at: float = 0.0) -> tuple[bytes, dict[str, Any]]:
    """A ``kind`` event for the fresh contact ``<run id>-<name><seq>``, stamped in
    ``data.attributes`` (``sent_at`` is reset when a latency event is sent).

    ``attributes`` is what the contact state keeps (custom event data is not stored), so the
    stamp survives into the changelog record, the passthrough output and — through the
    ``{{contact.sent_at}}`` template — the body of a workflow's send command.
    """
    contact_id = f"{run_id}-{name}{seq}"
    data: dict[str, Any] = {"attributes": {"bench_seq": seq, "sent_at": sent_at}}
    if kind == "contact.created":  # what the send gate needs to let an SMS out
        data.update(phone=f"+1415555{seq % 10000:04d}", consent={"sms": True})
    return contact_id.encode(), build_event(ACCOUNT, contact_id, kind, data)


def _stamp(attributes: Any) -> tuple[int, float] | None:
    if not isinstance(attributes, dict):
        return None
    seq, sent_at = attributes.get("bench_seq"), attributes.get("sent_at")
    if isinstance(seq, int) and isinstance(sent_at, (int, float)):
        return seq, float(sent_at)
    return None


def stamp_in_event(value: bytes | None) -> tuple[int, float] | None:
    """(seq, sent_at) of a passed-through CloudEvent."""
    if not value:
        return None
    return _stamp(orjson.loads(value).get("data", {}).get("attributes"))


def stamp_in_state(value: bytes | None) -> tuple[int, float] | None:
    """(seq, sent_at) of a contacts-changelog record (the encoded state: read with the
    engine's own decoder, whatever encoding it uses)."""
    if not value:
        return None
    state: Any = decode_state(value)
    return _stamp(state.get("attributes")) if isinstance(state, dict) else None


def stamp_in_send(value: bytes | None) -> tuple[int, float] | None:
    """(seq, sent_at) of a send command: seq from the contact id, sent_at from the body."""
    try:
        command = orjson.loads(value or b"")
        seq = int(command["contact_id"].rsplit("-lat", 1)[1])
        return seq, float(command["body"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- partitioners


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's (Java's, aiokafka's) default partitioner: where dripstream keeps a contact."""
    return partition_for(key, partitions)


def crc32_partition(key: bytes | None, partitions: int) -> int:
    """librdkafka's default ``consistent_random``: CRC32 of the key modulo the partition
    count, a random partition for a null key (what a confluent-kafka or librdkafka-based
    publisher does unless told to use murmur2)."""
    if key is None:
        return random.randrange(partitions)
    return zlib.crc32(key) % partitions


# --------------------------------------------------------------------------- kafka helpers


def settings_for(cfg: Config, prefix: str) -> Settings:
    return Settings(broker=f"kafka://{cfg.bootstrap}", topic_prefix=prefix,
                    partitions=cfg.partitions, redis_url=cfg.redis_url,
                    profile="embedded" if cfg.profile == "embedded" else "production",
                    guarantee=cast(Any, cfg.guarantee))


async def prepare(cfg: Config, prefix: str, definitions: Sequence[dict[str, Any]] = ()
                  ) -> Settings:
    """Create a prefix's topics and publish ``definitions`` (before any worker starts)."""
    s = settings_for(cfg, prefix)
    await ensure_topics(s)
    if definitions:
        producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap)
        await producer.start()
        try:
            for definition in definitions:
                await publish_definition(producer, prefix, definition)
        finally:
            await producer.stop()
    return s


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(name, partitions, 1)])
            # Kafka answers before the partitions have leaders: a producer writing at
            # once retries, and logs every retry.
            await wait_for_leaders(admin, [name])
    finally:
        await admin.close()


async def wait_for_topic(bootstrap: str, name: str, deadline: float,
                         alive: Callable[[], None] = lambda: None) -> int:
    """Wait until ``name`` exists; return its partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while time.monotonic() < deadline:
            alive()
            if name in set(await admin.list_topics()):
                described = await admin.describe_topics([name])
                if described and described[0]["partitions"]:
                    return len(described[0]["partitions"])
            await asyncio.sleep(0.2)
        raise TimeoutError(f"topic {name} did not appear")
    finally:
        await admin.close()


async def wait_for_group(bootstrap: str, group: str, members: int, deadline: float,
                         alive: Callable[[], None] = lambda: None) -> None:
    """Wait until the consumer group is Stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    seen: tuple[str, int] = ("?", 0)
    try:
        while time.monotonic() < deadline:
            alive()
            with contextlib.suppress(Exception):  # the group may not exist yet
                described = (await admin.describe_consumer_groups([group]))[0].groups[0]
                seen = (described[2], len(described[5]))
                if seen == ("Stable", members):
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"group {group}: {seen[1]} members ({seen[0]}), wanted {members}")
    finally:
        await admin.close()


async def produce_all(bootstrap: str, topic: str, records: Iterable[Record],
                      partitioner: Partitioner | None = None, partitions: int = 0) -> float:
    """Produce every record (acks=1) and wait for all acks; return the seconds it took.

    Without ``partitioner`` aiokafka's default (murmur2 of the key) places each record."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = []
        for k, v in records:
            partition = partitioner(k, partitions) if partitioner else None
            futures.append(await producer.send(topic, value=v, key=k, partition=partition))
            if len(futures) >= 20_000:  # bound what is held in memory for big loads
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return time.perf_counter() - start
    finally:
        await producer.stop()


def tps_of(topic: str, partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(partitions)]


def reader(cfg: Config) -> AIOKafkaConsumer:
    """A group-less consumer of the workers' outputs for manual assignment, fetching with
    a short wait; ``read_committed`` when the workers run exactly-once: it is handed only
    committed transactions' records (a latency is then the time until a channel worker
    could see the output) and its end offsets are the last stable offsets."""
    return AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=None,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            fetch_max_wait_ms=10,
                            isolation_level="read_committed" if cfg.exactly_once
                            else "read_uncommitted")


async def reader_ends(cfg: Config, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
                      ) -> dict[TopicPartition, int]:
    """Where :func:`reader` ``consumer`` ends now: the high watermark (on Tansu read from a
    Fetch, its ListOffsets is short) or, ``read_committed``, the last stable offset
    (below it every transaction is decided; reading up to it passes the markers too)."""
    return await topic_ends(consumer, tps, embedded=not cfg.exact_ends)


async def end_offsets(cfg: Config, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    probe = reader(cfg)
    await probe.start()
    try:
        probe.assign(tps)
        return await reader_ends(cfg, probe, tps)
    finally:
        await probe.stop()


async def consumed_ends(cfg: Config, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offsets a group that has consumed everything of ``tps`` has committed: the end
    offsets, or with exactly-once workers the last visible record + 1 — a log that ends
    with a commit marker is consumed to before the marker."""
    if not cfg.exactly_once:
        return await end_offsets(cfg, tps)
    probe = reader(cfg)
    await probe.start()
    try:
        probe.assign(tps)
        return await visible_ends(probe, tps)
    finally:
        await probe.stop()


async def count_records(cfg: Config, topic: str) -> int:
    """The records of ``topic`` (see :class:`Tail`: end offsets, or read when they also
    count transaction markers)."""
    async with Tail(cfg, tps_of(topic, cfg.partitions)) as tail:
        return await tail.now()


async def read_upto(cfg: Config, until: Mapping[TopicPartition, int], max_seconds: float = 60.0,
                    start: Mapping[TopicPartition, int] | None = None) -> list[Any]:
    """The records of ``until``'s partitions up to those offsets (shared reader)."""
    if all(v <= (start or {}).get(tp, 0) for tp, v in until.items()):
        return []
    consumer = reader(cfg)
    await consumer.start()
    try:
        return await read_records(consumer, until, start=start, max_seconds=max_seconds)
    finally:
        await consumer.stop()


async def read_topic(cfg: Config, topic: str, max_seconds: float = 60.0) -> list[Any]:
    """Every record of a topic up to its current end."""
    return await read_upto(cfg, await end_offsets(cfg, tps_of(topic, cfg.partitions)),
                           max_seconds)


async def delete_topics(bootstrap: str, run_id: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"bench{run_id}.")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- workers


class WorkerExited(RuntimeError):
    """A worker exited during a measurement (a crash: evidence for a bug report)."""

    def __init__(self, code: int, log_path: Path, tail: str) -> None:
        super().__init__(f"worker exited with {code}; log {log_path}; its end:\n{tail}")
        self.code = code
        self.log_path = log_path


class BenchWorker:
    """A ``dripstream worker`` (:class:`streams.embedded.WorkerProcess`) for one prefix,
    with its own data directory and log in the run's work directory."""

    def __init__(self, cfg: Config, prefix: str, *, name: str = "0", store: str = "memory://",
                 env: Mapping[str, str] | None = None,
                 command: tuple[str, ...] = ("worker",)) -> None:
        tag = f"{prefix.strip('.')}-{name}"
        self.data_dir = cfg.workdir / f"data-{tag}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")}
        environ.update({
            "DRIPSTREAM_BROKER": f"kafka://{cfg.bootstrap}",
            "DRIPSTREAM_PROFILE": cfg.profile,
            "DRIPSTREAM_GUARANTEE": cfg.guarantee,
            "DRIPSTREAM_TOPIC_PREFIX": prefix,
            "DRIPSTREAM_PARTITIONS": str(cfg.partitions),
            "DRIPSTREAM_REDIS_URL": cfg.redis_url,
            "DRIPSTREAM_STORE": store,
            "DRIPSTREAM_DATA_DIR": str(self.data_dir),
            "DRIPSTREAM_METRICS_PORT": "0",  # several workers on one host
            "DRIPSTREAM_LOG_LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                        environ.get("PYTHONPATH")])),
            **(env or {}),
        })
        self.process = WorkerProcess(environ, cfg.workdir / f"worker-{tag}.log",
                                     cwd=cfg.workdir, new_session=True, command=command)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def started_at(self) -> float:
        return self.process.started_at

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def start(self) -> BenchWorker:
        self.process.start()
        return self

    def check_alive(self) -> None:
        code = self.process.exit_code
        if code is not None:
            raise WorkerExited(code, self.log_path, self.first_error())

    def first_error(self) -> str:
        """The log's first ERROR/CRITICAL line (the cause, usually) and its last line."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        first = next((line for line in lines if "[ERROR]" in line or "[CRITICAL]" in line),
                     None)
        picked = [first] if first else []
        if lines and lines[-1] != first:
            picked.append(lines[-1])
        return "\n".join(picked) or "(empty log)"

    def rss(self, field: str = "VmRSS") -> int | None:
        return self.process.rss_bytes(field)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s (in a thread: the loop keeps running)."""
        await asyncio.to_thread(self.process.stop, 10.0)


def all_alive(workers: Sequence[BenchWorker]) -> Callable[[], None]:
    def check() -> None:
        for worker in workers:
            worker.check_alive()
    return check


async def stop_all(workers: Sequence[BenchWorker]) -> None:
    await asyncio.gather(*(w.stop() for w in workers))


async def start_group(cfg: Config, prefix: str, n: int, deadline: float,
                      **kwargs: Any) -> list[BenchWorker]:
    """``n`` workers in one consumer group, returned once the group is stable with all of
    them (so the measured phase has no rebalance in it)."""
    workers = [BenchWorker(cfg, prefix, name=str(i), **kwargs).start() for i in range(n)]
    try:
        await wait_for_group(cfg.bootstrap, f"{prefix}worker", n, deadline, all_alive(workers))
    except BaseException:
        await stop_all(workers)
        raise
    return workers


def log_sizes(workers: Sequence[BenchWorker]) -> list[int]:
    """Where each worker's log ends now (for :func:`log_warnings` afterwards)."""
    sizes = []
    for worker in workers:
        try:
            sizes.append(worker.log_path.stat().st_size)
        except OSError:
            sizes.append(0)
    return sizes


#: A log line worth a reader's eye: Faust's ``[WARNING]`` and up, a bare ``WARNING:``.
_LOUD = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|^(WARNING|ERROR|CRITICAL):")
#: The log's own prefix (``[time] [pid] ``), left out when lines are compared.
_LOG_PREFIX = re.compile(r"^\[[^]]*\] \[\d+\] ")


def log_warnings(workers: Sequence[BenchWorker], since: Sequence[int] | None = None,
                 ignore: str | None = None) -> tuple[int, list[str]]:
    """The warning-or-worse lines the workers logged (after ``since``, from
    :func:`log_sizes`), except those containing ``ignore``: their count, and the distinct
    ones (timestamps and pids left out) with their counts, most frequent first."""
    seen: Counter[str] = Counter()
    for k, worker in enumerate(workers):
        try:
            with worker.log_path.open("rb") as log:
                log.seek(since[k] if since else 0)
                text = log.read().decode(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if _LOUD.search(line) and not (ignore and ignore in line):
                seen[_LOG_PREFIX.sub("", line.strip())[:200]] += 1
    return sum(seen.values()), [f"{n}x {line}" for line, n in seen.most_common()]


#: What a worker prints at start (``streams/cli.py``): the guarantee it runs.
_GUARANTEE_LINE = re.compile(r"^broker: .*; guarantee: (\w+)$", re.MULTILINE)


def guarantee_mismatches(cfg: Config) -> list[str]:
    """Workers of this run whose log says they ran another guarantee than the bench
    measured for: the counts and the isolation level would then be wrong."""
    want = "exactly_once" if cfg.exactly_once else "at_least_once"
    out = []
    for log in sorted(cfg.workdir.glob("worker-*.log")):
        with contextlib.suppress(OSError):
            for got in _GUARANTEE_LINE.findall(log.read_text(errors="replace")):
                if got != want:
                    out.append(f"{log.name}: the worker ran {got}, the bench read its "
                               f"outputs as {want}")
    return out


def set_clock(path: Path, at: datetime, lead: float) -> float:
    """Move the clock of the workers reading ``path`` (``DRIPSTREAM_CLOCK_OFFSET_FILE``,
    :mod:`streams.clock`) so that it shows ``at`` ``lead`` seconds from now; returns that
    real instant (POSIX seconds). The file is replaced in one step, so a worker never
    reads it half-written."""
    fire = time.time() + lead
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(repr(at.timestamp() - fire))
    os.replace(tmp, path)
    return fire


# --------------------------------------------------------------------------- throughput


#: Seconds between two looks at the outputs' end offsets during a throughput phase, and
#: before its first output (shorter: the CPU window starts close to the phase's start).
POLL_S = 0.25
FIRST_POLL_S = 0.05


class Tail:
    """Follows partitions forward from ``start``: how many records they got since, and
    (``keep``) the records, reading as little as it can while a worker writes.

    Without transactions an end offset counts records, so counting reads nothing (the
    Tansu figures' method: this process takes no CPU from the worker). Exactly-once
    workers leave a commit marker in each partition per transaction, so end offsets
    overcount; the tail then reads ``read_committed`` (what a channel worker is handed)
    and counts what it read, each time only what is new since the last read.
    ``on_record`` sees each record read (and makes the tail read in every mode).
    """

    def __init__(self, cfg: Config, tps: list[TopicPartition], *,
                 start: Mapping[TopicPartition, int] | None = None, keep: bool = False,
                 on_record: Callable[[Any], None] | None = None) -> None:
        self.cfg = cfg
        self.tps = tps
        self.start: dict[TopicPartition, int] = {tp: (start or {}).get(tp, 0) for tp in tps}
        self.position = dict(self.start)  # read up to here
        self.ends_seen = dict(self.start)  # the end offsets last looked at
        self.keep = keep
        self.on_record = on_record
        self.kept: list[Any] = []
        self.records = 0  # records read
        self.by_offsets = not cfg.exactly_once and on_record is None
        self.consumer = reader(cfg)

    async def __aenter__(self) -> Self:
        await self.consumer.start()
        self.consumer.assign(self.tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    @property
    def count(self) -> int:
        """Records from ``start`` up to the ends last looked at (offsets count them) or,
        reading, to where the last read stopped."""
        if self.by_offsets:
            return sum(self.ends_seen[tp] - self.start[tp] for tp in self.tps)
        return self.records

    @property
    def markers(self) -> int:
        """Offsets read over that held no record handed to this reader: transaction
        markers (and aborted records), ``read_committed``."""
        return int(sum(self.position[tp] - self.start[tp] for tp in self.tps)) - self.records

    async def ends(self) -> dict[TopicPartition, int]:
        self.ends_seen = await reader_ends(self.cfg, self.consumer, self.tps)
        return self.ends_seen

    async def read(self, until: Mapping[TopicPartition, int], max_seconds: float = 60.0) -> None:
        """Take in the records from where the last read stopped up to ``until``."""
        if all(until[tp] <= self.position[tp] for tp in self.tps):
            return
        records = await read_records(self.consumer, until, start=self.position,
                                     max_seconds=max_seconds)
        self.position = dict(until)
        self.records += len(records)
        if self.keep:
            self.kept += records
        if self.on_record is not None:
            for r in records:
                self.on_record(r)

    async def now(self) -> int:
        """:attr:`count` as of now."""
        ends = await self.ends()
        if not self.by_offsets:
            await self.read(ends)
        return self.count

    async def follow(self, done: Callable[[], bool], deadline: float,
                     alive: Callable[[], None],
                     on_first: Callable[[], Awaitable[None]] | None = None) -> None:
        """Until ``done()`` or ``deadline``: look at the end offsets; counting by offsets
        that is all, else read the new records only once the ends stopped growing for a
        look — so this process takes (almost) no CPU from the worker while it writes.
        ``on_first`` runs once the first output is there."""
        last: dict[TopicPartition, int] | None = None
        while time.monotonic() < deadline:
            alive()
            ends = await self.ends()
            if on_first is not None and ends != self.start:
                await on_first()
                on_first = None
            if self.by_offsets:
                if done():
                    return
            elif ends == last and ends != self.position:
                await self.read(ends, max(30.0, deadline - time.monotonic()))
                if done():
                    return
            last = ends
            await asyncio.sleep(FIRST_POLL_S if on_first is not None else POLL_S)
        if not self.by_offsets:  # what came by the deadline
            await self.read(await self.ends(), 60.0)


async def wait_count(cfg: Config, tps: list[TopicPartition], n: int, deadline: float,
                     alive: Callable[[], None]) -> int:
    """Wait until ``tps`` hold ``n`` records (:class:`Tail`); the count then."""
    async with Tail(cfg, tps) as tail:
        await tail.follow(lambda: tail.count >= n, deadline, alive)
        return tail.count


def cpu_of(pids: Mapping[str, Sequence[int]]) -> dict[str, float | None]:
    """CPU seconds so far of each group of processes (None if one is gone or the group
    is empty)."""
    out: dict[str, float | None] = {}
    for name, group in pids.items():
        times = [cpu_seconds(pid) for pid in group]
        out[name] = None if not group or None in times else sum(t or 0.0 for t in times)
    return out


class PhaseCpu:
    """CPU seconds of the processors (``pids``: the workers) and, if this run started
    it, the broker over a throughput phase: from when its first output is seen (looked
    for every :data:`FIRST_POLL_S`; the first batch's work falls before it) to when the
    phase is seen done."""

    def __init__(self, cfg: Config, pids: Sequence[int]) -> None:
        self.pids = {"worker": list(pids),
                     "broker": [cfg.broker_pid] if cfg.broker_pid else []}
        self.before: dict[str, float | None] | None = None

    def begin(self) -> None:
        self.before = cpu_of(self.pids)

    def end(self, result: Result) -> None:
        if self.before is None:
            return
        after = cpu_of(self.pids)
        for name, a in self.before.items():
            b = after[name]
            result.cpu_s[name] = None if a is None or b is None else b - a


async def drain_count(cfg: Config, workers: Sequence[BenchWorker], tps: list[TopicPartition],
                      n: int, deadline: float, result: Result, what: str,
                      spy: Spy | None = None) -> list[Any]:
    """Throughput phase measured by a record count (send commands): wait until ``tps``
    hold ``n`` records (:class:`Tail`: this process reads nothing while the worker
    writes), then set the result from their timestamps (first → last)."""
    cpu = PhaseCpu(cfg, [w.pid for w in workers])

    async def first() -> None:
        cpu.begin()
        if spy is not None:
            await spy.start(workers[0].pid)

    async with Tail(cfg, tps, keep=True) as tail:
        await tail.follow(lambda: tail.count >= n, deadline, all_alive(workers), first)
        cpu.end(result)
        await tail.read(tail.ends_seen, max(30.0, deadline - time.monotonic()))
    if spy is not None:
        await spy.finish()
    records = tail.kept
    if len(records) < n:
        result.notes.append(f"throughput: {len(records)}/{n} {what} before the deadline "
                            "(the rest is missing, or still queued ahead of the latency phase)")
    if kinds := {r.timestamp_type for r in records} - {0}:
        result.notes.append(f"{what} timestamp types {sorted(kinds)} (0 = CreateTime)")
    result.events = len(records)
    transactions_note(cfg, result, tail, what)
    if records:
        lo, hi = min(r.timestamp for r in records), max(r.timestamp for r in records)
        result.seconds = (hi - lo) / 1000 if len(records) > 1 else None
        result.startup_s = lo / 1000 - min(w.started_at for w in workers)
    return records


def transactions_note(cfg: Config, result: Result, tail: Tail, what: str) -> None:
    """Exactly-once: the commit markers among the outputs of the throughput phase — one
    per transaction that wrote a partition, so about the transactions of the phase."""
    if cfg.exactly_once and tail.markers:
        result.notes.append(
            f"transactions: {tail.markers} commit markers among the {tail.records} {what} "
            f"of the throughput phase: {result.events / tail.markers:.1f} events per "
            "transaction (one transaction per input partition per batch)")


class ChangelogWatch(Tail):
    """Follows the contacts changelog: per contact, the highest ``version`` seen and the
    timestamp of the record where it first reached the expected one.

    The worker coalesces: one changelog record per changed contact per batch, so records
    cannot be counted; a contact is done when a record shows ``version`` = the number of
    events sent to it. ``inspect`` sees each decoded state (the contacts mode keeps the
    latest per contact).
    """

    def __init__(self, cfg: Config, tps: list[TopicPartition], expected: Mapping[bytes, int],
                 inspect: Callable[[bytes, bytes, dict[str, Any]], None] | None = None) -> None:
        super().__init__(cfg, tps, on_record=self._take)
        self.expected = expected
        self.inspect = inspect
        self.versions: dict[bytes, int] = {}
        self.reached: dict[bytes, int] = {}  # key → timestamp (ms) of the record
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.over = 0  # records with a version above the expected one

    @property
    def complete(self) -> bool:
        return len(self.reached) == len(self.expected)

    @property
    def applied(self) -> int:
        """Events applied to the expected contacts (as far as the records show)."""
        return sum(min(v, self.expected[k]) for k, v in self.versions.items()
                   if k in self.expected)

    def _take(self, r: Any) -> None:
        ts = r.timestamp
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        state = cast(dict[str, Any], decode_state(r.value))
        version = state.get("version")
        if not isinstance(version, int):
            return
        key: bytes = r.key
        self.versions[key] = max(version, self.versions.get(key, 0))
        wanted = self.expected.get(key)
        if wanted is not None:
            if version == wanted and key not in self.reached:
                self.reached[key] = ts
            elif version > wanted:
                self.over += 1
        if self.inspect is not None:
            self.inspect(key, r.value, state)


async def drain_versions(cfg: Config, workers: Sequence[BenchWorker],
                         tps: list[TopicPartition], expected: Mapping[bytes, int],
                         deadline: float, result: Result, spy: Spy | None = None,
                         inspect: Callable[[bytes, bytes, dict[str, Any]], None] | None = None,
                         ) -> ChangelogWatch:
    """Throughput phase of the ingest paths: done when every contact's changelog shows
    the version its events lead to; events/s = events / (first changelog record → the
    last record needed)."""
    cpu = PhaseCpu(cfg, [w.pid for w in workers])

    async def first() -> None:
        cpu.begin()
        if spy is not None and workers:
            await spy.start(workers[0].pid)

    async with ChangelogWatch(cfg, tps, expected, inspect) as watch:
        await watch.follow(lambda: watch.complete, deadline, all_alive(workers), first)
        cpu.end(result)
    if spy is not None:
        await spy.finish()
    total = sum(expected.values())
    result.events = total if watch.complete else watch.applied
    if not watch.complete:
        result.notes.append(
            f"throughput: {len(watch.reached)}/{len(expected)} contacts reached their "
            f"version before the deadline ({watch.applied}/{total} events applied)")
    if watch.over:
        result.notes.append(f"{watch.over} changelog records with a version above the "
                            "events sent (events applied twice?)")
    transactions_note(cfg, result, watch, "changelog records")
    end = max(watch.reached.values()) if watch.complete else watch.last_ts
    if watch.first_ts is not None and end is not None and end > watch.first_ts:
        result.seconds = (end - watch.first_ts) / 1000
    if watch.first_ts is not None and workers:
        result.startup_s = watch.first_ts / 1000 - min(w.started_at for w in workers)
    return watch


# --------------------------------------------------------------------------- latency


async def measure_latency(cfg: Config, in_topic: str, out_tps: list[TopicPartition],
                          start_offsets: Mapping[TopicPartition, int], extract: Extract,
                          alive: Callable[[], None], *, rate: float,
                          kind: str = "contact.updated", seq_base: int = 0,
                          partitioner: Partitioner | None = None) -> Latency:
    """Produce :meth:`Config.latency_count` stamped ``kind`` events (fresh contacts
    ``<run>-lat<seq>``) at ``rate``/s to ``in_topic`` and record, for each, the time its
    output record was received minus its stamp (``read_committed`` with exactly-once
    workers: when a channel worker could first see it)."""
    m = cfg.latency_count(rate)
    lat = Latency(offered=rate)
    sink = reader(cfg)
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, linger_ms=0)
    await sink.start()
    await producer.start()
    seen: dict[int, float] = {}
    produced = asyncio.Event()
    deadline = time.monotonic() + cfg.timeout
    first_sent = [0.0]
    last_receipt = [0.0]

    async def receive() -> None:
        sink.assign(out_tps)
        for tp in out_tps:
            sink.seek(tp, start_offsets.get(tp, 0))
        quiet_since = checked = time.monotonic()
        while len(seen) < m and time.monotonic() < deadline:
            if time.monotonic() - checked > 1:
                alive()
                checked = time.monotonic()
            batch = await sink.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                lat.outputs += len(records)
                for r in records:
                    stamp = extract(r.value)
                    if stamp is not None and stamp[0] not in seen and stamp[0] >= seq_base:
                        seen[stamp[0]] = (now - stamp[1]) * 1000
                        last_receipt[0] = now
                        quiet_since = time.monotonic()
            # Everything sent: stop once nothing has come for 10 s (a backlog still
            # drains; a lost output does not hold the run).
            if produced.is_set() and time.monotonic() - quiet_since > 10:
                break

    async def send() -> None:
        futures = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first_sent[0] = time.time()
        for i in range(m):
            if time.monotonic() > deadline:
                break
            key, event = stamped_event(cfg.run_id, "lat", seq_base + i, kind)
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i % 200 == 0:
                alive()
            event["data"]["attributes"]["sent_at"] = time.time()
            partition = partitioner(key, cfg.partitions) if partitioner else None
            futures.append(await producer.send(in_topic, value=orjson.dumps(event), key=key,
                                               partition=partition))
        elapsed = time.time() - first_sent[0]
        lat.sent = len(futures)
        lat.send_rate = len(futures) / elapsed if elapsed > 0 else None
        await asyncio.gather(*futures)
        produced.set()

    try:
        receiver = asyncio.create_task(receive())
        await asyncio.sleep(0.3)  # let the sink fetch once before the first send
        await send()
        await receiver
        if cfg.exactly_once:  # offsets passed over without a record: the markers
            read = sum([await sink.position(tp) - start_offsets.get(tp, 0) for tp in out_tps])
            lat.markers = read - lat.outputs
    finally:
        await producer.stop()
        await sink.stop()
    lat.latencies_ms = [seen[k] for k in sorted(seen)]
    if seen and last_receipt[0] > first_sent[0]:
        lat.output_rate = len(seen) / (last_receipt[0] - first_sent[0])
    return lat


def latency_note(lat: Latency) -> str | None:
    """What a reader must know about a latency phase, if anything."""
    notes = []
    if len(lat.latencies_ms) < lat.sent:
        notes.append(f"{len(lat.latencies_ms)}/{lat.sent} outputs seen")
    if lat.send_rate is not None and lat.send_rate < 0.95 * lat.offered:
        notes.append(f"the producer reached only {lat.send_rate:,.0f}/s")
    if lat.over_capacity:
        notes.append(f"offered {lat.offered:g}/s > achieved {lat.output_rate:,.0f}/s: "
                     "the latencies are mostly queueing")
    if lat.markers:
        notes.append(f"{lat.markers} commit markers among the {lat.outputs} outputs: "
                     f"{lat.outputs / lat.markers:.1f} outputs per transaction")
    tenth = len(lat.latencies_ms) // 10
    if tenth >= 20:  # in send order: a queue shows as latencies growing through the phase
        early = percentile(lat.latencies_ms[:tenth], 50) or 0.0
        late = percentile(lat.latencies_ms[-tenth:], 50) or 0.0
        if late > 2 * early and late - early > 50:
            notes.append(f"p50 grew from {early:.0f} ms (first tenth) to {late:.0f} ms (last "
                         "tenth)")
    return "; ".join(notes) or None


# --------------------------------------------------------------------------- redis


async def pick_redis(url: str) -> tuple[str, EmbeddedRedis | None]:
    """``url`` if a Redis answers there, else a freshly started embedded Valkey."""
    if await redis_answers(url):
        return url, None
    server = await asyncio.to_thread(lambda: EmbeddedRedis().start())
    return server.url, server


async def redis_answers(url: str) -> bool:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        await client.ping()
        return True
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def read_model_contacts(url: str, prefix: str) -> int:
    """The bench account's contacts in the read model."""
    return int(await _read_model(url, prefix, lambda model: model.count_contacts(ACCOUNT)))


async def campaign_progress(url: str, prefix: str, campaign_id: str
                            ) -> dict[int, dict[str, Any]]:
    """Each partition's progress record of a campaign of the bench account."""
    progress: dict[int, dict[str, Any]] = await _read_model(
        url, prefix, lambda model: model.get_progress(ACCOUNT, campaign_id))
    return progress


async def _read_model(url: str, prefix: str, read: Callable[[ReadModel], Awaitable[Any]]
                      ) -> Any:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        return await read(ReadModel(client, prefix))
    finally:
        await client.aclose()


async def redis_used_memory(url: str) -> int | None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        info = await client.info("memory")
        used = info.get("used_memory")
        return int(used) if used is not None else None
    finally:
        await client.aclose()


async def clean_redis(url: str, run_id: str) -> None:
    """Remove this run's read-model keys (they all start with ``bench<run id>.``)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"bench{run_id}.*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- processes


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (``/proc/<pid>/stat`` utime + stime)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15


def machine_cpu() -> tuple[float, float]:
    """(CPU seconds the machine's CPUs have been busy, CPU seconds of this process and its
    descendants — the reaped ones through their parents' ``cutime``/``cstime``) so far.
    Their difference over a step is what other processes took: the two cores are shared
    with other engineers' test runs, and a load average counts this run too."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9])
    busy = (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
    children: dict[int, list[int]] = {}
    spent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        spent[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    own, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        own += spent.get(pid, 0)
        todo += children.get(pid, [])
    return busy, own / CLOCK_TICKS


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


# --------------------------------------------------------------------------- py-spy


def pyspy_binary() -> str | None:
    """py-spy from the virtualenv (``pip install py-spy``) or PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("py-spy", path=path)


class Spy:
    """``py-spy record -f raw`` of one worker for ``--pyspy`` seconds, started when the
    throughput phase's first output appears (so start-up is not in it)."""

    def __init__(self, cfg: Config, path: str, binary: str) -> None:
        self.cfg = cfg
        self.path = path
        self.binary = binary
        self.out = cfg.workdir / f"pyspy-{path.replace(' ', '-').replace(',', '')}.txt"
        self.proc: asyncio.subprocess.Process | None = None
        self.profile: Profile | None = None
        self.error: str | None = None

    async def start(self, pid: int) -> None:
        if self.proc is not None:
            return
        log = (self.cfg.workdir / f"{self.out.stem}.log").open("wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "record", "-p", str(pid), "-d", str(max(1, round(self.cfg.pyspy))),
                "-r", "200", "-f", "raw", "-o", str(self.out),
                stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()

    async def finish(self) -> None:
        """Wait for the recording (its full duration) and summarise it."""
        if self.proc is None:
            self.error = "py-spy never started (no output appeared)"
            return
        try:
            await asyncio.wait_for(self.proc.wait(), self.cfg.pyspy + 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        try:
            text = self.out.read_text(errors="replace")
        except OSError:
            self.error = f"py-spy wrote nothing (exit {self.proc.returncode}; see its log)"
            return
        summary = parse_collapsed(text)
        self.profile = Profile(self.path, self.cfg.pyspy, summary.samples, summary.idle,
                               summary.inclusive.most_common(25),
                               summary.self_time.most_common(25), self.out)


def spy_for(bench: Bench, path: str) -> Spy | None:
    """A py-spy recorder for ``path`` if ``--pyspy`` asked for one and py-spy is there."""
    if bench.cfg.pyspy <= 0:
        return None
    binary = pyspy_binary()
    if binary is None:
        note = "--pyspy: py-spy is not installed (pip install py-spy); no profiles"
        if note not in bench.notes:
            bench.notes.append(note)
        return None
    return Spy(bench.cfg, path, binary)


def keep_profile(bench: Bench, spy: Spy | None) -> None:
    """A finished recording's summary into the report (or why there is none)."""
    if spy is None:
        return
    if spy.profile is not None:
        bench.profiles.append(spy.profile)
    elif spy.error:
        bench.notes.append(f"--pyspy {spy.path}: {spy.error}")


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    """``file:function`` of a collapsed-stack frame ``function (path:line)``, the path
    shortened to the package (site-packages/...) or the repository."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    if "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    elif path.startswith(str(REPO)):
        path = path[len(str(REPO)) + 1:]
    elif "/lib/python" in path:
        path = "stdlib/" + path.rsplit("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{path}:{match['func']}"


#: Leaves that mean "waiting": py-spy counts a thread blocked in epoll as active.
IDLE_LEAVES = frozenset({"selectors.py:EpollSelector.select", "threading.py:Condition.wait",
                         "threading.py:Event.wait", "threading.py:Thread._wait_for_tstate_lock"})
#: Frames on (nearly) every stack — process and thread entry, the event loop itself —
#: left out of the inclusive ranking, where they would only fill the top.
ENTRY_FRAMES = re.compile(
    r"^(<frozen runpy>|threading\.py|typer/|click/|streams/cli\.py|mode/worker\.py|"
    r"mode/threads\.py|agents/worker\.py:run$|asyncio/base_events\.py:BaseEventLoop\."
    r"(run_forever|run_until_complete|_run_once)$|asyncio/events\.py:Handle\._run$)")


@dataclass
class Collapsed:
    """py-spy's raw (collapsed) output, summarised by ``file:function``."""

    samples: int = 0  # busy samples (idle leaves excluded)
    idle: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)


def parse_collapsed(text: str) -> Collapsed:
    """One ``frame;frame;...;leaf count`` line per distinct stack: inclusive counts (each
    function once per stack, entry frames left out) and self counts (the leaf)."""
    out = Collapsed()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = [_frame_name(f) for f in stack.split(";") if f]
        if not names:
            continue
        if names[-1] in IDLE_LEAVES:
            out.idle += count
            continue
        out.samples += count
        for name in set(names):
            if not ENTRY_FRAMES.match(name):
                out.inclusive[name] += count
        out.self_time[names[-1]] += count
    return out
