"""The one Faust app. Everything imports ``app`` from here; nothing else constructs one.

Settings are read once, from the environment, when this module is imported. The worker
(``dripstream worker``) imports :mod:`agents` to register the agents and then runs it.

Two things here adjust Faust's aiokafka driver, both through a consumer-thread subclass:
the fetch wait (Faust hard-codes 1.5 s; ``DRIPSTREAM_FETCH_MAX_WAIT_MS``) and, on the
embedded broker only, end offsets read through :mod:`streams.tansu`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from streams import tansu
from streams.clock import Clock
from streams.settings import Settings
from streams.topics import topic_name

__all__ = ["App", "app", "clock", "settings", "topics"]

settings = Settings()
#: The workers' only clock (see streams/clock.py).
clock = Clock(settings.clock_offset_file)


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
        consumer._fetch_max_wait_ms = settings.fetch_wait_ms
        return consumer

    def fetch_position(self, tp: TP) -> int | None:
        """The next offset the underlying aiokafka consumer will fetch for ``tp``."""
        consumer = self._consumer
        if consumer is None:
            return None
        assignment = consumer._subscription.subscription.assignment
        if assignment is None or tp not in assignment.tps:
            return None
        state = assignment.state_value(tp)
        return int(state.position) if state.has_valid_position else None

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if settings.embedded and not self.consumer.in_transaction:
            return await tansu.end_offsets(self._ensure_consumer(), partitions)
        result: Mapping[TP, int] = await super()._highwaters(partitions)
        return result


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class App(faust.App):
    """faust.App with dripstream's aiokafka transport."""

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def _credentials(s: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    security = s.kafka_security()
    ssl_context = security.get("ssl_context")
    assert ssl_context is None or isinstance(ssl_context, ssl.SSLContext)
    if s.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.sasl_username,
            password=s.sasl_password.get_secret_value() if s.sasl_password else None,
            mechanism=s.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if s.security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    return None


def _profile(s: Settings) -> dict[str, Any]:
    if s.embedded:
        # Tansu delays a group join by max(1 s, session/2): these make a worker ready in
        # ~2.5 s instead of ~31 s. Real Kafka rejects sessions under 6 s.
        # Tansu sometimes never answers a Fetch (seen after a SIGKILLed member's restart,
        # under CPU load): a short request timeout makes the client retry instead of
        # waiting Faust's default 90 s.
        return {
            "broker_session_timeout": 2.0,
            "broker_heartbeat_interval": 0.5,
            "broker_rebalance_timeout": 2.0,
            "broker_request_timeout": 5.0,
        }
    return {}


app = App(
    settings.group_id,
    broker=settings.broker,
    broker_credentials=_credentials(settings),
    store=settings.store,
    datadir=str(settings.data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    consumer_auto_offset_reset="earliest",
    # Table keys and values (plain str / dict) as JSON; topics set their own (raw).
    key_serializer="json",
    value_serializer="json",
    # No linger: the agent waits for the acks of each record's effects before its table
    # write, so lingering would add its full length to every record that sends.
    producer_linger_ms=0,
    web_enabled=settings.web_enabled,
    web_port=settings.web_port,
    autodiscover=False,
    **_profile(settings),
)


class _Topics:
    """The app's topics. Raw bytes on the wire: payloads are validated by pydantic models."""

    def __init__(self, s: Settings) -> None:
        def raw(suffix: str) -> Any:
            return app.topic(
                topic_name(s, suffix),
                key_serializer="raw",
                value_serializer="raw",
                partitions=s.partitions,
            )

        self.contact_events = raw("contact-events")
        self.dead_letter = raw("dead-letter")


topics = _Topics(settings)
