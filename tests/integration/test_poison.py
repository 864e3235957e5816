"""Oversized and poison records: nothing lost, no crash loop, no phantom read model, and a
worker that stops making progress says so (liveness) and exits with the documented status."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from producers.publisher import build_event
from streams.events import MAX_EVENT_BYTES
from tables.contacts import MAX_ATTRIBUTES_BYTES
from tables.store import partition_for
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration

ACCOUNT = "acme"


async def big_producer(stack: Stack) -> AIOKafkaProducer:
    """A producer of records up to 16 MiB, and a contact-events topic that takes them
    (Kafka's default ``max.message.bytes`` is 1 MiB, so a publisher cannot write such a
    record unless an operator raised it: that is the case tested here; Tansu has no
    limit)."""
    if stack.capabilities.exact_end_offsets:  # Apache Kafka: raise the topic's limit
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(
                ConfigResourceType.TOPIC, stack.topic("contact-events"),
                configs={"max.message.bytes": str(16 << 20)})])
        finally:
            await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all",
                                max_request_size=16 << 20)
    await producer.start()
    return producer


def headers_of(record: object) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]


async def test_a_huge_invalid_record_is_dead_lettered_as_much_as_fits(stack: Stack) -> None:
    """5 MiB of invalid bytes: a dead letter with reason too_large, the first bytes, the
    size and SHA-256 of the original, and where it came from; the contact's next event
    is applied."""
    value = b"{" + b"x" * (5 << 20)
    producer = await big_producer(stack)
    try:
        meta = await producer.send_and_wait(stack.topic("contact-events"), value,
                                            key=b"c-bigbad")
    finally:
        await producer.stop()
    stack.start_worker()
    await stack.publisher.send(build_event(ACCOUNT, "c-bigbad", "contact.tagged", {"tag": "a"}))

    state = await stack.wait_contact(ACCOUNT, "c-bigbad", 1, timeout=60)
    assert state["tags"] == ["a"]
    (letter,) = await stack.read_topic("dead-letter", 1)
    headers = headers_of(letter)
    assert headers["dripstream.reason"] == "too_large"
    assert headers["dripstream.truncated"] == "true"
    assert int(headers["dripstream.original_size"]) == len(value)
    assert headers["dripstream.original_sha256"] == hashlib.sha256(value).hexdigest()
    assert (int(headers["dripstream.partition"]), int(headers["dripstream.offset"])) == (
        meta.partition, meta.offset)
    assert value.startswith(letter.value) and 0 < len(letter.value) < len(value)
    assert letter.key == b"c-bigbad"
    assert stack.workers[0].poll() is None


async def test_an_event_over_the_size_limit_never_reaches_the_contact(stack: Stack) -> None:
    """A valid contact.created with a 1.1 MB attribute: dead-lettered too_large, the
    worker keeps running, the read model never shows it, and the contact's later events
    are applied (the revision the read model holds is the table's)."""
    event = build_event(ACCOUNT, "c-poison", "contact.created",
                        {"attributes": {"blob": "x" * 1_100_000}}, event_id="big")
    producer = await big_producer(stack)
    try:
        await producer.send_and_wait(stack.topic("contact-events"), orjson.dumps(event),
                                     key=b"c-poison")
    finally:
        await producer.stop()
    worker = stack.start_worker()
    await stack.publisher.send(build_event(ACCOUNT, "c-poison", "contact.tagged", {"tag": "t"}))

    state = await stack.wait_contact(ACCOUNT, "c-poison", 1, timeout=60)
    assert ("blob" not in state["attributes"], state["tags"]) == (True, ["t"])
    assert state["revision"] == 1
    (letter,) = await stack.read_topic("dead-letter", 1)
    assert headers_of(letter)["dripstream.reason"] == "too_large"
    assert worker.poll() is None


async def test_growing_a_contact_past_its_limits_is_refused_event_by_event(
    stack: Stack,
) -> None:
    """Six contact.updated adding 200 KB of attributes each: each is refused with
    limit_exceeded before anything changes; no restart, no crash loop; the contact goes on."""
    worker = stack.start_worker()
    await stack.publisher.send(build_event(ACCOUNT, "c-grow", "contact.created",
                                           {"attributes": {"n": 0}}))
    await stack.wait_contact(ACCOUNT, "c-grow", 1)
    growth = [build_event(ACCOUNT, "c-grow", "contact.updated",
                          {"attributes": {f"k{n}": "y" * 200_000}}) for n in range(6)]
    await stack.publisher.send_many(growth)
    await stack.publisher.send(build_event(ACCOUNT, "c-grow", "contact.tagged", {"tag": "ok"}))

    state = await stack.wait_contact(ACCOUNT, "c-grow", 2, timeout=60)
    assert (state["attributes"], state["tags"]) == ({"n": 0}, ["ok"])
    letters = await stack.read_topic("dead-letter", 6)
    assert [headers_of(r)["dripstream.reason"] for r in letters] == ["limit_exceeded"] * 6
    assert all(str(MAX_ATTRIBUTES_BYTES) in headers_of(r)["dripstream.detail"]
               for r in letters)
    assert worker.poll() is None
    assert "Traceback" not in stack.worker_log(0)


async def test_a_poison_record_does_not_stall_the_other_partitions(stack: Stack) -> None:
    """An oversized record on one partition: events for contacts on every partition,
    sent after it, are all applied."""
    partitions = stack.settings.partitions
    poison = "c-p0"
    producer = await big_producer(stack)
    try:
        await producer.send_and_wait(stack.topic("contact-events"),
                                     b"[" * (MAX_EVENT_BYTES + 1), key=poison.encode())
    finally:
        await producer.stop()
    contacts = {}
    for n in range(200):
        contacts.setdefault(partition_for(f"c-{n}", partitions), f"c-{n}")
        if len(contacts) == partitions:
            break
    stack.start_worker()
    await stack.publisher.send_many([build_event(ACCOUNT, c, "contact.tagged", {"tag": "t"})
                                     for c in [*contacts.values(), poison]])
    for contact in [*contacts.values(), poison]:
        await stack.wait_contact(ACCOUNT, contact, 1, timeout=60)


def health(stack: Stack, max_age: float) -> subprocess.CompletedProcess[str]:
    """`dripstream health` with the workers' settings (so the same liveness file)."""
    return subprocess.run([sys.executable, "-m", "streams.cli", "health", "--max-age",
                           str(max_age)], env=stack.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


async def test_liveness_file_goes_stale_when_the_worker_stops(stack: Stack) -> None:
    """A running worker keeps its liveness file fresh (`dripstream health` exits 0); a
    frozen one (SIGSTOP) lets it go stale (exit 1); thawed, it is fresh again."""
    env = {"DRIPSTREAM_HEALTH_INTERVAL_S": "0.5"}
    worker = stack.start_worker(env=env)
    await stack.publisher.send(build_event(ACCOUNT, "c-1", "contact.tagged", {"tag": "a"}))
    await stack.wait_contact(ACCOUNT, "c-1", 1)

    async def fresh() -> bool:
        return health(stack, 3).returncode == 0

    await eventually(fresh, what="a fresh liveness file")
    worker.send_signal(signal.SIGSTOP)
    try:
        async def stale() -> bool:
            result = health(stack, 3)
            return result.returncode == 1 and "old" in result.stderr

        await eventually(stale, timeout=20, what="a stale liveness file")
    finally:
        worker.send_signal(signal.SIGCONT)
    await eventually(fresh, what="fresh again")


async def test_a_stalled_worker_with_input_waiting_exits_70(stack: Stack) -> None:
    """The agent stops (fault injection) while events wait: the worker judges itself
    stalled, stops refreshing its liveness file and exits with status 70."""
    worker = stack.start_worker(env={
        "DRIPSTREAM_FAULT": "stall:1", "DRIPSTREAM_HEALTH_INTERVAL_S": "0.5",
        "DRIPSTREAM_STALL_AFTER_S": "2", "DRIPSTREAM_STALL_EXIT_S": "3"})
    await stack.publisher.send_many([build_event(ACCOUNT, f"c-{n}", "contact.tagged",
                                                 {"tag": "a"}) for n in range(50)])
    started = time.monotonic()
    assert worker.wait(60) == 70
    assert time.monotonic() - started >= 2
    assert "stalled for" in stack.worker_log(0)


async def test_a_crashed_app_exits_70(stack: Stack) -> None:
    """A crash inside Faust (fault injection) ends the worker with status 70, not 1."""
    worker = stack.start_worker(env={"DRIPSTREAM_FAULT": "crash:1"})
    await stack.publisher.send(build_event(ACCOUNT, "c-1", "contact.tagged", {"tag": "a"}))
    assert worker.wait(60) == 70


def test_health_without_a_file_is_unhealthy(tmp_path: Path) -> None:
    """No liveness file (no worker ever ran here): exit 1 and say why."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "health"], cwd=ROOT, capture_output=True,
        text=True, timeout=30, env={"PATH": "/usr/bin:/bin",
                                    "DRIPSTREAM_HEALTH_FILE": str(tmp_path / "none")})
    assert (1, True) == (result.returncode, "cannot read" in result.stderr)
