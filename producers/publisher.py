"""Publisher SDK: how an upstream system (shop, CRM, SMS gateway) sends contact events.

    async with Publisher(bootstrap_servers="127.0.0.1:9092") as pub:
        await pub.publish("acme", "c-1", "purchase.completed",
                          {"order_id": "o-9", "amount": "19.90", "currency": "EUR"})

:func:`build_event` makes the CloudEvents envelope (a fresh id unless one is given: pass
your own stable id when you may retry, so dripstream can drop the repeat). The event is
validated before it leaves, so a publisher learns about a bad event at once instead of
finding it on the dead-letter topic.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.events import ContactEvent, encode_event, parse_event

__all__ = ["Publisher", "build_event"]


def build_event(
    account: str,
    contact_id: str,
    event_type: str,
    data: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    time: datetime | None = None,
    source: str = "urn:dripstream:publisher",
) -> dict[str, Any]:
    """A v1 CloudEvents envelope as a dict; ``time`` defaults to now."""
    when = time or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "subject": contact_id,
        "time": when.isoformat(),
        "account": account,
        "datacontenttype": "application/json",
        "data": data or {},
    }


class Publisher:
    """Validates and sends contact events to ``<prefix>contact-events``, keyed by contact."""

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        topic_prefix: str = "dripstream.",
        **producer_options: Any,
    ) -> None:
        self.topic = f"{topic_prefix}contact-events"
        options = {"acks": "all", "linger_ms": 5, **producer_options}
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **options)

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send(self, event: dict[str, Any], *, validate: bool = True) -> ContactEvent | None:
        """Send an envelope dict; raises :class:`streams.events.Rejected` if it is invalid."""
        value = encode_event(event)
        parsed = parse_event(value) if validate else None
        key = str(event.get("subject", "")).encode()
        await self._producer.send_and_wait(self.topic, value=value, key=key)
        return parsed

    async def send_many(self, events: list[dict[str, Any]]) -> None:
        """Validate and send many events, letting the producer batch them; returns when all
        are acknowledged. Nothing is sent if any event is invalid."""
        encoded = [encode_event(e) for e in events]
        for value in encoded:
            parse_event(value)
        pending = [
            await self._producer.send(self.topic, value=v, key=str(e["subject"]).encode())
            for v, e in zip(encoded, events, strict=True)
        ]
        for future in pending:
            await future

    async def send_raw(self, value: bytes, key: bytes | None) -> Any:
        """Send bytes as they are (for tools and tests); returns aiokafka's RecordMetadata."""
        return await self._producer.send_and_wait(self.topic, value=value, key=key)

    async def publish(
        self, account: str, contact_id: str, event_type: str, data: dict[str, Any] | None = None,
        **envelope: Any,
    ) -> ContactEvent | None:
        return await self.send(build_event(account, contact_id, event_type, data, **envelope))

    async def flush(self) -> None:
        await self._producer.flush()
