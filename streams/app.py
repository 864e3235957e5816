"""The one Faust app, built from :class:`streams.settings.Settings`.

:func:`build_app` is called once, by the composition root (``agents/worker.py``); nothing
else constructs an app. The app class itself (batch delivery, fetch wait, end offsets on
a broker whose ListOffsets is short, read_committed) lives in :mod:`streams.compat` with
everything else that reaches inside Faust.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streams.capabilities import Capabilities
from streams.compat import App
from streams.settings import Settings

__all__ = ["build_app"]

#: The largest request the worker's producer sends (Kafka's default ``message.max.bytes``
#: is 1 MiB); every record dripstream writes is bounded well under it (docs/contract.md).
MAX_REQUEST_BYTES = 1024 * 1024


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


def build_app(settings: Settings, capabilities: Capabilities) -> App:
    """The app for ``settings`` on a broker with ``capabilities``. Where the broker has
    transactions its consumer reads only committed ones, whatever the worker's own
    guarantee: an upstream publisher's aborted events are not events."""
    return App(
        settings.group_id,
        broker=settings.broker,
        broker_credentials=_credentials(settings),
        store=settings.store,
        # Faust's default is 1 whatever the store: with memory:// a standby copy doubles a
        # worker's memory, so there it is asked for (docs/operations.md).
        table_standby_replicas=settings.standbys,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        # No linger: a batch's records are all queued before its acks are awaited, so the
        # producer batches them anyway; lingering would only add its length to each batch.
        producer_linger_ms=0,
        producer_max_request_size=MAX_REQUEST_BYTES,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        autodiscover=False,
        fetch_wait_ms=settings.fetch_wait_ms,
        idle_fetch_wait_ms=settings.idle_fetch_wait_ms,
        exact_end_offsets=capabilities.exact_end_offsets,
        read_committed=capabilities.transactions,
        **_profile(settings),
    )
