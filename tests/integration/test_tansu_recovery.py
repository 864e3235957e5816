"""The embedded broker's end-offset correction (streams/compat.py) keeps table recovery exact.

Without it, a restarted worker stops replaying its changelog at the broker's short
"latest offset" answer and its table comes back with counts missing.
"""

from __future__ import annotations

import signal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from producers.publisher import build_event
from streams.compat import end_offsets
from tests.conftest import Broker
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration


async def test_end_offsets_match_a_recount(broker: Broker, stack: Stack) -> None:
    """Records written as one batch: the corrected end offset equals the records there."""
    topic = stack.topic("audit")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x", partition=0) for _ in range(10)]
        for f in futures:
            await f
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(stack.settings.partitions)]
        ends = await end_offsets(consumer, tps)
    finally:
        await consumer.stop()
    records = await stack.read_topic("audit", 10)
    recount = {tp: sum(1 for r in records if r.partition == tp.partition) for tp in tps}
    assert ends == recount


async def _end_offsets(stack: Stack, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(the broker's own ListOffsets answer, the corrected answer) per partition of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(stack.settings.partitions)]
        listed = await consumer.end_offsets(tps)
        true_ends = await end_offsets(consumer, tps)
    finally:
        await consumer.stop()
    return {tp.partition: listed[tp] for tp in tps}, {tp.partition: true_ends[tp] for tp in tps}


async def _committed_all(stack: Stack, ends: dict[int, int]) -> bool:
    """True once the worker's group has committed ``ends`` on contact-events."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=stack.settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()  # not subscribed: it reads the group's offsets without joining
    try:
        topic = stack.topic("contact-events")
        got = {p: await consumer.committed(TopicPartition(topic, p)) for p in ends}
    finally:
        await consumer.stop()
    return got == ends


async def test_restarted_worker_recovers_table_exactly(broker: Broker, stack: Stack) -> None:
    """SIGKILL a worker with a full table, restart it: every contact's state is whole
    (on Tansu thanks to the end-offset correction; Kafka's own answer is exact)."""
    contacts, per_contact = 50, 40
    # A backlog sent before the worker starts: the worker works through it at full speed,
    # so its changelog writes leave in multi-record batches -- the case where the broker
    # answers a short end offset and an uncorrected recovery stops early.
    await stack.publisher.send_many([
        build_event("acme", f"c-{c}", "contact.tagged", {"tag": f"t{n}"}, event_id=f"e-{c}-{n}")
        for n in range(per_contact)
        for c in range(contacts)
    ])
    stack.start_worker()
    for c in range(contacts):
        await stack.wait_contact("acme", f"c-{c}", per_contact, timeout=60)
    listed, true_ends = await _end_offsets(stack, stack.topic("worker-contacts-changelog"))
    # One changelog record per contact per batch: the backlog's events were coalesced.
    assert contacts <= sum(true_ends.values()) < contacts * per_contact
    if stack.capabilities.exact_end_offsets:
        assert listed == true_ends
    else:  # the broker's own answer is short here: the correction is what this exercises
        assert sum(listed.values()) < sum(true_ends.values())
    # Wait for the worker to commit its input offsets: otherwise the restarted worker
    # replays the input, and the replay would hide a short table recovery.
    _, input_ends = await _end_offsets(stack, stack.topic("contact-events"))
    await eventually(lambda: _committed_all(stack, input_ends), what="input offsets committed")
    stack.kill(stack.workers[0], signal.SIGKILL)

    stack.start_worker()
    for c in range(contacts):
        await stack.publisher.send(build_event(
            "acme", f"c-{c}", "contact.tagged", {"tag": "after"}, event_id=f"after-{c}"))
    for c in range(contacts):
        # Recount: per_contact events before the restart + 1 after. A short recovery
        # loses the last updates (and the read model refuses a lower version).
        state = await stack.wait_contact("acme", f"c-{c}", per_contact + 1, timeout=20)
        assert state["version"] == per_contact + 1, (listed, true_ends)
        assert len(state["tags"]) == per_contact + 1
