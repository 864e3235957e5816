"""The ingest agent: validate, dedupe and apply contact events to the contacts table.

For each record of ``<prefix>contact-events`` (keyed by contact id):
1. parse it (:func:`streams.events.parse_event`); invalid input goes to
   ``<prefix>dead-letter`` with its original key and bytes and the reason in headers;
2. apply it to the contact's state (:func:`tables.contacts.apply_event`), which also
   drops a repeat of an event id seen within the dedupe window;
3. store the new state in the ``contacts`` table, then project it to the Redis read model.

Processing is at-least-once (the embedded broker has no transactions): after a crash the
last events are delivered again, the dedupe marks stored with the state turn them into
no-ops, and the Redis write is idempotent. Trigger matching (the workflow engine) runs
in this same step, after the state update, so it sees the contact as of this event.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from streams.app import app, settings, topics
from streams.events import Rejected, parse_event
from tables.contacts import apply_event, contact_key, public_view
from tables.readmodel import ReadModel
from tables.state import contacts

__all__ = ["ingest"]

log = logging.getLogger(__name__)

_read_model: ReadModel | None = None


def read_model() -> ReadModel:
    global _read_model
    if _read_model is None:
        _read_model = ReadModel(Redis.from_url(settings.redis_url), settings.topic_prefix)
    return _read_model


async def dead_letter(message: Any, error: Rejected) -> None:
    """Put a rejected record on the dead-letter topic: same key and bytes, reason in headers."""
    headers = [
        ("dripstream.reason", error.reason.encode()),
        ("dripstream.detail", error.detail.encode()[:2000]),
        ("dripstream.topic", str(message.topic).encode()),
        ("dripstream.partition", str(message.partition).encode()),
        ("dripstream.offset", str(message.offset).encode()),
        ("dripstream.rejected_at", datetime.now(UTC).isoformat().encode()),
    ]
    await topics.dead_letter.send(key=message.key, value=message.value, headers=headers)
    log.warning(
        "dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, error
    )


async def project(state: dict[str, Any]) -> None:
    """Write to the read model, retrying while Redis is away (the event is not acked meanwhile)."""
    delay = 0.1
    while True:
        try:
            await read_model().put_contact(public_view(state))
            return
        except (RedisError, OSError) as exc:
            log.warning("read model write failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@app.agent(topics.contact_events)
async def ingest(stream: Any) -> None:
    async for event in stream.events():
        message = event.message
        try:
            parsed = parse_event(message.value, message.key)
        except Rejected as error:
            await dead_letter(message, error)
            continue
        key = contact_key(parsed.account, parsed.contact_id)
        applied = apply_event(
            contacts.get(key), parsed, datetime.now(UTC), settings.dedupe_window_s
        )
        if applied.duplicate:
            log.info("duplicate event %s/%s ignored", parsed.account, parsed.id)
        else:
            contacts[key] = applied.state
        # Also on a duplicate: a crash between the table write and the Redis write is
        # healed by the redelivery (the read model keeps the newest version only).
        await project(applied.state)
