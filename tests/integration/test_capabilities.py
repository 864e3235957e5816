"""The broker's capabilities as workers probe them at start, several at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from streams import capabilities
from streams.settings import Settings
from tests.conftest import Broker

pytestmark = pytest.mark.integration


async def test_workers_probing_at_once_all_see_what_the_broker_can_do(broker: Broker) -> None:
    """Three workers of one prefix probe together, five times: each finds exact end
    offsets, idempotence and transactions on Kafka, none of them on Tansu (a worker took
    a peer's probe batch for its own and ran Tansu without its end-offset correction: a
    standby recovery then failed with ConsistencyError)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    kafka = broker.kind == "kafka"
    for _ in range(5):
        capabilities._cache.clear()
        found = await asyncio.gather(*(capabilities.probe(Settings(
            broker=f"kafka://{broker.bootstrap}", topic_prefix=prefix,
            sasl_username=f"worker-{n}")) for n in range(3)))  # three cache entries
        assert {(c.exact_end_offsets, c.idempotence, c.transactions) for c in found} == {
            (kafka, kafka, kafka)}
