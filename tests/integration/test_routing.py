"""Events from any Kafka client: records on another partition than their contact's are
routed through ``<prefix>routed``, applied once, in each publisher's order."""

from __future__ import annotations

import signal
import zlib
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer as LibrdkafkaProducer

from producers.publisher import build_event
from tables.contacts import decode
from tables.store import partition_for
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

ACCOUNT = "acme"


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default partitioner (``consistent_random``) for a keyed record."""
    return (zlib.crc32(key) & 0xFFFFFFFF) % partitions


async def publish_librdkafka(stack: Stack, events: list[dict[str, Any]]) -> None:
    """Publish as an upstream service on confluent-kafka with its default configuration
    (librdkafka's ``consistent_random`` partitioner), keyed by contact id."""
    producer = LibrdkafkaProducer({"bootstrap.servers": stack.bootstrap})
    topic = stack.topic("contact-events")
    for event in events:
        producer.produce(topic, key=event["subject"].encode(), value=orjson.dumps(event))
    assert producer.flush(30) == 0, "librdkafka could not deliver every event"


def updates(contact: str, field: str, count: int, prefix: str = "") -> list[dict[str, Any]]:
    """``count`` contact.updated events setting ``attributes.<field>`` to 0, 1, 2…"""
    return [build_event(ACCOUNT, contact, "contact.updated", {"attributes": {field: n}},
                        event_id=f"{prefix}{contact}-{field}-{n}")
            for n in range(count)]


async def changelog_states(stack: Stack, contact: str) -> list[dict[str, Any]]:
    """Every state the worker wrote for ``contact``, in changelog order."""
    key = f"{ACCOUNT}:{contact}".encode()
    return [dict(decode(r.value)) for r in await stack.read_all("worker-contacts-changelog")
            if r.key == key]


async def test_default_librdkafka_publisher_loses_nothing(stack: Stack) -> None:
    """200 events from librdkafka's default partitioner: all applied in order per contact,
    none dead-lettered; those that arrived elsewhere went through ``routed`` once."""
    partitions = stack.settings.partitions
    contacts = [f"c-{n}" for n in range(20)]
    wrong = [c for c in contacts
             if crc32_partition(c.encode(), partitions) != partition_for(c, partitions)]
    assert len(wrong) >= 5, "the sample must exercise routing"
    events = [e for c in contacts for e in updates(c, "seq", 10)]
    stack.start_worker()
    await publish_librdkafka(stack, events)

    for contact in contacts:
        state = await stack.wait_contact(ACCOUNT, contact, 10, timeout=60)
        assert (10, 9) == (state["version"], state["attributes"]["seq"])
    routed = await stack.read_all("routed")
    assert len(routed) == 10 * len(wrong)
    assert {r.key.decode() for r in routed} == set(wrong)
    for record in routed:
        headers = dict(record.headers)
        assert record.partition == partition_for(record.key, partitions)
        assert headers["dripstream.origin.topic"] == stack.topic("contact-events").encode()
        assert int(headers["dripstream.origin.partition"]) == crc32_partition(
            record.key, partitions)
        assert int(headers["dripstream.origin.offset"]) >= 0
    assert await stack.read_all("dead-letter") == []
    # Per contact, the states written saw the updates in publishing order.
    for contact in wrong[:3]:
        seqs = [s["attributes"]["seq"] for s in await changelog_states(stack, contact)]
        assert seqs == sorted(seqs) and seqs[-1] == 9


async def test_two_publishers_for_one_contact_each_keep_their_order(stack: Stack) -> None:
    """A murmur2 publisher and a librdkafka publisher interleaved for one contact: each
    one's events are applied in its own order (the states written never go back)."""
    partitions = stack.settings.partitions
    contact = next(f"c-{n}" for n in range(100) if crc32_partition(
        f"c-{n}".encode(), partitions) != partition_for(f"c-{n}", partitions))
    stack.start_worker()
    native, librdkafka = updates(contact, "a", 50), updates(contact, "b", 50)
    for n in range(0, 50, 10):
        await stack.publisher.send_many(native[n:n + 10])
        await publish_librdkafka(stack, librdkafka[n:n + 10])

    state = await stack.wait_contact(ACCOUNT, contact, 100, timeout=60)
    assert (49, 49) == (state["attributes"]["a"], state["attributes"]["b"])
    written = await changelog_states(stack, contact)
    for field in ("a", "b"):
        seen = [s["attributes"][field] for s in written if field in s["attributes"]]
        assert seen == sorted(seen), f"{field} went back: {seen}"


async def test_records_without_a_usable_key_are_still_dead_lettered(stack: Stack) -> None:
    """No key, or a key that is not the subject: dead-lettered with the reason, wherever
    they land; nothing is routed."""
    event = orjson.dumps(build_event(ACCOUNT, "c-1", "contact.tagged", {"tag": "x"}))
    stack.start_worker()
    await stack.publisher.send_raw(event, None)
    await stack.publisher.send_raw(event, b"\xff\xfe not the subject")
    letters = await stack.read_topic("dead-letter", 2)
    assert sorted(dict(r.headers)["dripstream.reason"] for r in letters) == [
        b"key_mismatch", b"key_mismatch"]
    assert await stack.read_all("routed") == []


async def test_a_crash_between_forward_and_commit_applies_each_event_once(
    stack: Stack,
) -> None:
    """SIGKILL right after the first forwards are acknowledged, before the input offsets
    are committed: after the restart the events are forwarded again, and applied once
    (exactly-once: the first forwards were never committed, so each is seen once)."""
    partitions = stack.settings.partitions
    contacts = [f"c-{n}" for n in range(40) if crc32_partition(
        f"c-{n}".encode(), partitions) != partition_for(f"c-{n}", partitions)][:10]
    await publish_librdkafka(stack, [e for c in contacts for e in updates(c, "seq", 5)])
    crashed = stack.start_worker(env={"DRIPSTREAM_FAULT": "after_effects:1"})
    assert crashed.wait(60) == -signal.SIGKILL
    stack.start_worker()

    for contact in contacts:
        state = await stack.wait_contact(ACCOUNT, contact, 5, timeout=60)
        assert (5, 4) == (state["version"], state["attributes"]["seq"])
    # Forwarded twice (before and after the crash), applied once: the marker proves no
    # repeat raised the version.
    await stack.publisher.send(build_event(ACCOUNT, contacts[0], "contact.tagged",
                                           {"tag": "end"}, event_id="end"))
    assert (await stack.wait_contact(ACCOUNT, contacts[0], 6))["version"] == 6

    if stack.exactly_once:
        routed = [orjson.loads(r.value)["id"] for r in await stack.read_all("routed")]
        assert sorted(routed) == sorted(set(routed)), "an aborted forward became visible"
        assert len(routed) == 5 * len(contacts)
        return

    async def forwarded_again() -> bool:
        return len(await stack.read_all("routed")) > 5 * len(contacts)

    await eventually(forwarded_again, what="forwards repeated after the crash")
