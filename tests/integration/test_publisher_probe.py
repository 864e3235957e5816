"""The publisher's idempotence probe (producers/publisher.py): what it logs when the
broker refuses an idempotent producer, and when there is no broker at all."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from producers.publisher import Publisher, build_event
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def test_a_refused_idempotent_producer_is_one_warning(
    stack: Stack, caplog: pytest.LogCaptureFixture,
) -> None:
    """Asking the broker for idempotence (the default) logs no aiokafka ERROR about
    InitProducerId — on a broker that refuses it (Tansu) one warning says so — and the
    event is published either way."""
    with caplog.at_level(logging.INFO):
        async with Publisher(stack.bootstrap, topic_prefix=stack.settings.topic_prefix) as pub:
            await pub.send(build_event("acme", "c-1", "contact.tagged", {"tag": "a"},
                                       event_id="probe-1"))
    assert [] == [r.getMessage() for r in caplog.records
                  if "InitProducerId" in r.getMessage() and r.levelno >= logging.ERROR]
    refusals = [r for r in caplog.records if "refused an idempotent producer" in r.getMessage()]
    assert len(refusals) == (0 if pub.idempotent else 1)
    assert 1 == len(await stack.read_topic("contact-events", 1))


async def test_no_broker_is_an_error_not_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listening: the connection error itself, without a warning that the broker
    "refused an idempotent producer" and a second attempt."""
    with caplog.at_level(logging.WARNING, logger="producers.publisher"), pytest.raises(
            KafkaConnectionError):
        async with Publisher("127.0.0.1:1", request_timeout_ms=2000):
            pass
    assert [] == [r.getMessage() for r in caplog.records if r.name == "producers.publisher"]
