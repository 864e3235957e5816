"""The publisher SDK against the real broker: publish_many's per-event results, the
sync client from threads, and what happens to idempotence on a broker without it."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from aiokafka.errors import KafkaError

from producers.publisher import Publisher, SyncPublisher, build_event
from tests.conftest import Broker
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def test_publish_many_answers_each_event(stack: Stack) -> None:
    """Valid events are written, keyed by contact; invalid ones are rejected with the
    contract's reason and do not stop the others."""
    good = [build_event("acme", f"c-{n}", "contact.tagged", {"tag": "vip"}, event_id=f"e-{n}")
            for n in range(3)]
    bad_data = build_event("acme", "c-9", "contact.tagged", {"tag": ""}, event_id="bad-1")
    bad_type = build_event("acme", "c-9", "nope.unknown", {}, event_id="bad-2")
    results = await stack.publisher.publish_many([good[0], bad_data, good[1], bad_type,
                                                  good[2]])
    assert [(r.index, r.id, r.accepted) for r in results] == [
        (0, "e-0", True), (1, "bad-1", False), (2, "e-1", True), (3, "bad-2", False),
        (4, "e-2", True)]
    assert results[1].reason == "invalid_data" and "tag" in (results[1].detail or "")
    assert results[3].reason == "unknown_type"
    assert all(r.offset is not None and r.partition is not None for r in results
               if r.accepted)
    written = await stack.read_all("contact-events")
    assert sorted(orjson.loads(r.value)["id"] for r in written) == ["e-0", "e-1", "e-2"]
    assert {r.key for r in written} == {b"c-0", b"c-1", b"c-2"}


async def test_sync_publisher_from_threads(stack: Stack) -> None:
    """A SyncPublisher shared by threads (as a web app's handlers would) publishes every
    event, without an event loop of the caller's."""
    def work(pub: SyncPublisher, n: int) -> bool:
        pub.publish("acme", f"c-{n}", "contact.tagged", {"tag": "t"}, event_id=f"s-{n}")
        return pub.publish_many([build_event("acme", f"c-{n}", "contact.tagged",
                                             {"tag": "u"}, event_id=f"m-{n}")])[0].accepted

    def run() -> list[bool]:
        with SyncPublisher(stack.bootstrap, topic_prefix=stack.settings.topic_prefix) as pub, \
                ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda n: work(pub, n), range(8)))

    assert await asyncio.to_thread(run) == [True] * 8
    ids = sorted(orjson.loads(r.value)["id"] for r in await stack.read_all("contact-events"))
    assert ids == sorted([f"s-{n}" for n in range(8)] + [f"m-{n}" for n in range(8)])


async def test_idempotence_falls_back_with_a_warning(
    broker: Broker, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """On the embedded broker (no InitProducerId) the default publisher warns and
    publishes without idempotence; requiring it fails at start. On Kafka it is used."""
    with caplog.at_level(logging.WARNING, logger="producers.publisher"):
        async with Publisher(stack.bootstrap, topic_prefix=stack.settings.topic_prefix) as pub:
            await pub.publish("acme", "c-1", "contact.tagged", {"tag": "x"}, event_id="i-1")
    if broker.kind == "kafka":
        assert pub.idempotent
        return
    assert not pub.idempotent
    assert "refused an idempotent producer" in caplog.text
    with pytest.raises(KafkaError):
        async with Publisher(stack.bootstrap, idempotence=True):
            pass
    assert [orjson.loads(r.value)["id"] for r in await stack.read_all("contact-events")] == [
        "i-1"]
