"""``python -m bench.txn``: what a batch's durable part costs on Apache Kafka, at-least-once
against exactly-once, without the engine around it.

The worker's own sequence (``agents/contacts.py``: ``Cycle.finish`` and ``Cycle._commit``),
for ``--partitions`` input partitions side by side, one batch after the other:

- *at-least-once*: the partition's effects produced and acknowledged, then its changelog
  records (one idempotent producer, ``acks=all``);
- *exactly-once*: per partition its own transactional producer (``<group>-tx-<p>``):
  begin, the same two produces, the input offset (``send_offsets_to_transaction``), commit.

It prints the median and p90 time of a batch (all partitions done) and, for partition 0,
the median of each step of the transaction. Not a path of ``python -m bench``: a probe
for docs/performance.md ("On Apache Kafka"). Starts a Kafka node (Java 17+ and Maven)
unless ``--broker`` is given; every batch has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from streams.apache_kafka import KafkaCluster, KafkaUnavailable
from streams.topics import wait_for_leaders

#: Seconds one batch may take before the probe gives up.
BATCH_DEADLINE_S = 30.0
#: Batches left out of the figures (connections, the coordinators' first answers).
WARM_UP = 10
STEPS = ("effects", "changelog", "offsets", "commit")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.txn",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--broker", help="bootstrap HOST:PORT (default: start a Kafka node here)")
    p.add_argument("--partitions", type=int, default=8, help="input partitions (8)")
    p.add_argument("--batches", type=int, default=60, help=f"batches per mode ({WARM_UP} "
                   "of them warm-up) (60)")
    p.add_argument("--effects", type=int, default=5,
                   help="effect records per partition per batch (5)")
    p.add_argument("--states", type=int, default=5,
                   help="changelog records per partition per batch (5)")
    args = p.parse_args(argv)
    if min(args.partitions, args.effects, args.states) < 1 or args.batches <= WARM_UP:
        p.error(f"--partitions, --effects, --states must be positive, --batches > {WARM_UP}")
    return args


async def _produce(producer: AIOKafkaProducer, topic: str, partition: int, n: int,
                   size: int) -> None:
    """``n`` records to one partition, then every acknowledgement (as send_batches does)."""
    futures = [await producer.send(topic, b"x" * size, partition=partition) for _ in range(n)]
    await asyncio.gather(*futures)


def _summary(times: list[float]) -> str:
    ordered = sorted(times)
    return (f"median {statistics.median(ordered):.1f} ms, "
            f"p90 {ordered[int(len(ordered) * 0.9)]:.1f} ms")


async def probe(bootstrap: str, args: argparse.Namespace) -> list[str]:
    run = f"txn{time.time_ns() % 10**9}"
    inputs, effects, changelog, group = (f"{run}.in", f"{run}.out", f"{run}.changelog",
                                         f"{run}.worker")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, args.partitions, 1)
                                   for t in (inputs, effects, changelog)])
        await wait_for_leaders(admin, [inputs, effects, changelog])
    finally:
        await admin.close()
    # The group must exist for its coordinator to take transactional offsets.
    consumer = AIOKafkaConsumer(inputs, bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    await consumer.stop()
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             linger_ms=0)
    txn = [AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{group}-tx-{p}",
                            acks="all", enable_idempotence=True, linger_ms=0)
           for p in range(args.partitions)]
    await plain.start()
    await asyncio.gather(*(t.start() for t in txn))
    steps: dict[str, list[float]] = {name: [] for name in STEPS}

    async def at_least_once(p: int, _: int) -> None:
        await _produce(plain, effects, p, args.effects, 300)
        await _produce(plain, changelog, p, args.states, 600)

    async def exactly_once(p: int, batch: int) -> None:
        producer = txn[p]
        marks = [time.perf_counter()]
        await producer.begin_transaction()
        await _produce(producer, effects, p, args.effects, 300)
        marks.append(time.perf_counter())
        await _produce(producer, changelog, p, args.states, 600)
        marks.append(time.perf_counter())
        await producer.send_offsets_to_transaction({TopicPartition(inputs, p): batch}, group)
        marks.append(time.perf_counter())
        await producer.commit_transaction()
        marks.append(time.perf_counter())
        if p == 0 and batch > WARM_UP:
            for name, start, end in zip(STEPS, marks, marks[1:], strict=False):
                steps[name].append((end - start) * 1000)

    lines = []
    try:
        for label, one in (("at-least-once", at_least_once), ("exactly-once", exactly_once)):
            times = []
            for batch in range(1, args.batches + 1):
                start = time.perf_counter()
                await asyncio.wait_for(
                    asyncio.gather(*(one(p, batch) for p in range(args.partitions))),
                    BATCH_DEADLINE_S)
                if batch > WARM_UP:
                    times.append((time.perf_counter() - start) * 1000)
            lines.append(f"{label:<14} a batch's durable part, {args.partitions} partitions x "
                         f"({args.effects} effects + {args.states} changelog records): "
                         f"{_summary(times)}")
        lines.append("exactly-once, one partition's transaction, median ms per step: "
                     + ", ".join(f"{name} {statistics.median(v):.1f}"
                                 for name, v in steps.items()))
    finally:
        await plain.stop()
        await asyncio.gather(*(t.stop() for t in txn))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dripstream-txn-") as work:
        cluster = None if args.broker else KafkaCluster(Path(work) / "kafka")
        try:
            if cluster is not None:
                cluster.start()
            bootstrap = args.broker or (cluster.bootstrap if cluster else "")
            for line in asyncio.run(probe(bootstrap, args)):
                print(line)
        except KafkaUnavailable as exc:
            print(f"python -m bench.txn: {exc}", file=sys.stderr)
            return 2
        finally:
            if cluster is not None:
                cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
