"""Drive dripstream's Faust consumer (``streams.compat.App``: the batch drain, its consumer
thread, a real group on the broker) into the interleavings that lost input, and print what
the agent was handed and what the group committed, as JSON.

Run by tests/integration/test_input_loss.py as a subprocess -- a Faust app, with its
consumer thread, does not share the test session's event loop -- as
``python -m tests.integration.seek_probe SCENARIO BOOTSTRAP NAME PROFILE KIND``
(``embedded``: fast group settings; anything else: Faust's defaults; ``tansu``: its end
offsets corrected). Every wait is on a
condition, with a deadline. The agent is played here: it takes the batches itself.

``seek``: the group has committed offset 10 of a 100-record partition; the worker starts
and its drain fetches 10..99 at once. With the agent not taking batches yet, the drain
holds 20..29 (one batch queued, the next waiting for room) when Faust's recovery seeks to
the committed offset (``perform_seek``, as at the end of every rebalance). The agent then
finishes its first two batches (acks 10..29) and takes everything else without finishing
it, and Faust commits 30 times. Nothing past 29 was acked: a commit past 30 loses records.

``uncommitted``: nothing committed yet; the drain holds 10..19 (0..9 queued) when the
consumer's flow stops (a rebalance begins): Faust's getmany drops the rest of the fetch
(20..99) and relies on the seek to the committed offset to read them again. Then the
rebalance ends (``perform_seek``, flow resumed) and the agent takes batches until it has
seen offset 99 or nothing more comes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from streams import compat

RECORDS = 100
COMMITTED = 10


async def until(probe: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.01)


async def prepare(bootstrap: str, topic: str, group: str, committed: int | None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n in range(RECORDS):
            await producer.send(topic, b"%d" % n, partition=0)
    finally:
        await producer.stop()
    if committed is not None:
        setter = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        await setter.start()
        try:
            setter.assign([TopicPartition(topic, 0)])
            await setter.commit({TopicPartition(topic, 0): OffsetAndMetadata(committed, "")})
        finally:
            await setter.stop()


async def broker_committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    checker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await checker.start()
    try:
        offset: int | None = await checker.committed(tp)
        return offset
    finally:
        await checker.stop()


async def main(scenario: str, bootstrap: str, name: str, profile: str,
               kind: str = "tansu") -> dict[str, Any]:
    topic, group = f"{name}-in", f"{name}-group"
    tp = TopicPartition(topic, 0)
    await prepare(bootstrap, topic, group, COMMITTED if scenario == "seek" else None)
    embedded = profile == "embedded"
    fast = {"broker_session_timeout": 2.0, "broker_heartbeat_interval": 0.5,
            "broker_rebalance_timeout": 2.0} if embedded else {}
    app = compat.App(group, broker=f"kafka://{bootstrap}", fetch_wait_ms=10,
                     idle_fetch_wait_ms=10, exact_end_offsets=kind != "tansu",
                     read_committed=False, web_enabled=False,
                     autodiscover=False, consumer_auto_offset_reset="earliest",
                     datadir=tempfile.mkdtemp(prefix="seek-probe-"), **fast)
    batches = compat.Batches({topic}, batch_max=10, depth=1)
    app.deliver_batches(batches)
    source = app.topic(topic, key_type=bytes, value_type=bytes, partitions=1)

    @app.agent(source)
    async def idle(stream: Any) -> None:  # subscribes the topic; its records come as batches
        await asyncio.Event().wait()

    await app.start()
    consumer: Any = app.consumer
    delivered: list[int] = []

    async def take(timeout: float = 10.0) -> list[Any]:
        batch = await asyncio.wait_for(batches.__anext__(), timeout)
        delivered.extend(m.offset for m in batch)
        return batch

    if scenario == "seek":
        await until(lambda: not app.rebalancing and consumer._read_offset.get(tp) == 29,
                    "the drain to hold 20..29")
        await consumer.perform_seek()
        acked: list[int] = []
        for n in range(RECORDS):
            if RECORDS - 1 in delivered:
                break
            batch = await take()
            if n < 2:
                for message in batch:
                    consumer.ack(message)
                    acked.append(message.offset)
        commits = []
        for _ in range(30):  # a minute and a half of Faust's commit timer
            await consumer.commit()
            commits.append(consumer._committed_offset.get(tp))
        return {"delivered": delivered, "acked": acked, "commits": commits,
                "broker_committed": await broker_committed(bootstrap, group, tp)}
    await until(lambda: not app.rebalancing and consumer._read_offset.get(tp) == 19,
                "the drain to hold 10..19")
    consumer.stop_flow()
    await take()  # room for the held batch: the drain puts it and goes on
    await until(lambda: not batches.empty(), "the held batch")
    await take()
    await consumer.perform_seek()
    consumer.resume_flow()
    while RECORDS - 1 not in delivered:
        try:
            await take(timeout=5.0)
        except TimeoutError:
            break
    return {"delivered": delivered}


async def probe(scenario: str, bootstrap: str, name: str, profile: str,
                kind: str = "tansu") -> None:
    try:
        print(json.dumps(await main(scenario, bootstrap, name, profile, kind)), flush=True)
    except BaseException:  # os._exit below skips the interpreter's own report
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finally:
        # Faust's clean stop waits for every tracked record to be acked, and the records in
        # flight never will be: nothing here needs one.
        os._exit(0)


if __name__ == "__main__":
    asyncio.run(probe(*sys.argv[1:6]))
