"""The contact agent: everything that happens to a contact, in order, on one worker.

It consumes three co-partitioned topics keyed by contact id: ``contact-events`` (from
upstream), ``wakeups`` (due waits, from :mod:`agents.timers`) and ``control`` (operators).
For each record it computes the contact's next state and the effects with the pure logic
of :mod:`tables.contacts` and :mod:`tables.executions`, then:

1. emits the effects (send commands, contact events, audit records) and waits for the
   broker to acknowledge them;
2. writes the contact's state (profile, dedupe marks, executions) to the ``contacts``
   table — one value, so one changelog record;
3. projects it to the Redis read model and tells the timer index the next due time.

A crash before the table write is durable replays the record: the same effects are
computed again with the same ids (a send may be repeated, with its original
``message_id``; none is lost). A crash after it finds the dedupe mark and does nothing.
There are no transactions (the embedded broker has none): this ordering is the guarantee.
An exception must not reach Faust (which would ack the record and move on): a broker
error exits the process so the record is redone; any other error dead-letters the record
with reason ``processing_error``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, cast

import orjson
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from faust.types import TP
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.timers import due_index
from streams.app import app, clock, settings, topics
from streams.commands import Control
from streams.events import ContactEvent, Rejected, parse_event
from streams.gapguard import GapGuard
from streams.topics import topic_name
from tables import executions
from tables.compliance import report_suppression
from tables.contacts import apply_event, contact_key, copy_state, public_view
from tables.definitions import Registry, Suppressions
from tables.keywords import on_keyword
from tables.readmodel import ReadModel
from tables.state import contacts

__all__ = ["contact_agent", "registry"]

log = logging.getLogger(__name__)

registry = Registry()
suppressions = Suppressions()
_read_model: ReadModel | None = None

SEND_TOPICS = {ch: topic_name(settings, f"send.{ch}") for ch in ("sms", "mms", "email")}
AUDIT = topic_name(settings, "audit")
EVENTS = topic_name(settings, "contact-events")
WAKEUPS = topic_name(settings, "wakeups")
SUPPRESSIONS = topic_name(settings, "suppressions")
CONTROL = topic_name(settings, "control")


def read_model() -> ReadModel:
    global _read_model
    if _read_model is None:
        _read_model = ReadModel(Redis.from_url(settings.redis_url), settings.topic_prefix)
    return _read_model


@app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
async def follow_definitions() -> None:
    await registry.follow(settings, topic_name(settings, "definitions"))


@app.task  # type: ignore[untyped-decorator]
async def follow_suppressions() -> None:
    await suppressions.follow(settings, SUPPRESSIONS)


def compliance(account: str) -> executions.Compliance:
    return executions.Compliance(
        registry.policy(account),
        lambda address: suppressions.reason(account, address) is not None,
        lambda address: suppressions.reason(account, address),
    )


async def dead_letter(message: Any, error: Rejected) -> None:
    """Put a rejected record on the dead-letter topic: same key and bytes, reason in headers."""
    headers = [
        ("dripstream.reason", error.reason.encode()),
        ("dripstream.detail", error.detail.encode()[:2000]),
        ("dripstream.topic", str(message.topic).encode()),
        ("dripstream.partition", str(message.partition).encode()),
        ("dripstream.offset", str(message.offset).encode()),
        ("dripstream.rejected_at", clock.now().isoformat().encode()),
    ]
    await topics.dead_letter.send(key=message.key, value=message.value, headers=headers)
    log.warning(
        "dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, error
    )


async def emit(fx: executions.Effects, contact_id: str, partition: int) -> None:
    """Send every effect and wait until the broker has them all."""
    key = contact_id.encode()
    pending = []
    for command in fx.sends:
        pending.append(await app.producer.send(
            SEND_TOPICS[command["channel"]], key, orjson.dumps(command), None, None, None))
    for event in fx.events:  # back to the contact's own partition, in order
        pending.append(await app.producer.send(
            EVENTS, key, orjson.dumps(event), partition, None, None))
    for record in fx.audit:
        pending.append(await app.producer.send(
            AUDIT, key, orjson.dumps(record), None, None, None))
    for change in fx.suppressions:
        pending.append(await app.producer.send(
            SUPPRESSIONS, f"{change['account']}:{change['address']}".encode(),
            orjson.dumps(change), None, None, None))
    if pending:
        await asyncio.gather(*pending)
    for record in fx.audit:
        log.info("audit %s %s:%s %s", record["reason"], record["account"],
                 record["contact_id"], record.get("message_id", ""))


async def project(state: dict[str, Any]) -> None:
    """Write to the read model, retrying while Redis is away (the record is not acked)."""
    delay = 0.1
    while True:
        try:
            await read_model().put_contact(public_view(state), state["executions"],
                                           state["revision"])
            return
        except (RedisError, OSError) as exc:
            log.warning("read model write failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def store(key: str, state: dict[str, Any], partition: int) -> None:
    state["partition"] = partition
    state["revision"] = state.get("revision", 0) + 1
    contacts[key] = state
    due_index.schedule(key, partition, state["next_due"])
    await project(state)


def _event_dict(event: ContactEvent) -> dict[str, Any]:
    env = event.envelope
    return {"id": env.id, "type": env.type, "time": env.time.isoformat(),
            "account": env.account, "causationdepth": env.causationdepth,
            "data": event.data.model_dump(mode="json", by_alias=True, exclude_none=True)}


async def on_contact_event(message: Any) -> None:
    try:
        if message.key is None:
            raise Rejected("key_mismatch", "the record has no key (must be the contact id)")
        parsed = parse_event(message.value, message.key)
        expected = (murmur2(message.key) & 0x7FFFFFFF) % settings.partitions
        if message.partition != expected:
            raise Rejected(
                "wrong_partition",
                f"key {message.key!r} belongs on partition {expected} (Kafka's default "
                f"murmur2 partitioner), not {message.partition}",
            )
    except Rejected as error:
        await dead_letter(message, error)
        return
    key = contact_key(parsed.account, parsed.contact_id)
    current = contacts.get(key)
    now = clock.now()
    applied = apply_event(current, parsed, now, settings.dedupe_window_s)
    if applied.duplicate:
        log.info("duplicate event %s/%s ignored", parsed.account, parsed.id)
        # Re-project: heals a crash between the table write and the Redis write.
        await project(applied.state)
        return
    state = applied.state
    event = _event_dict(parsed)
    rules = compliance(parsed.account)
    fx, react = executions.Effects(), True
    if parsed.type == "keyword.received":
        fx, react = on_keyword(state, event, registry.keywords(parsed.account), rules, now)
    if (change := report_suppression(state, event, now)) is not None:
        fx.suppressions.append(change)
    if react:
        fx += executions.on_event(state, event, registry.active(parsed.account),
                                  registry.lookup, now, settings.max_causation_depth, rules)
    await emit(fx, parsed.contact_id, message.partition)
    await store(key, state, message.partition)


async def on_wakeup(message: Any) -> None:
    wakeup = orjson.loads(message.value)
    key = contact_key(wakeup["account"], wakeup["contact_id"])
    current = contacts.get(key)
    if current is None:
        return
    state = copy_state(current)
    fx = executions.on_wakeup(state, registry.lookup, clock.now(),
                              compliance(wakeup["account"]))
    if state == current:  # nothing was due (a repeated or early wake-up)
        due_index.schedule(key, message.partition, state["next_due"])
        return
    await emit(fx, wakeup["contact_id"], message.partition)
    await store(key, state, message.partition)


async def on_control(message: Any) -> None:
    try:
        command = Control.model_validate_json(message.value)
    except ValidationError as exc:
        await dead_letter(message, Rejected("invalid_data", str(exc)))
        return
    now = clock.now()
    if command.action == "cancel_all":
        assert command.workflow_id is not None
        # Sent to every partition; each owner cancels the executions it holds.
        for key, value in list(contacts.items()):
            if value.get("partition") == message.partition and value["account"] == command.account:
                changed, fx = copy_state(value), executions.Effects()
                if executions.cancel_all(changed, command.workflow_id, now, fx):
                    await emit(fx, changed["contact_id"], message.partition)
                    await store(key, changed, message.partition)
        return
    assert command.contact_id is not None and command.execution_id is not None
    key = contact_key(command.account, command.contact_id)
    current = contacts.get(key)
    state = copy_state(current) if current is not None else None
    fx = executions.Effects()
    if state is None or not executions.control(state, command.action, command.execution_id,
                                               now, fx):
        log.warning("control %s for %s/%s: nothing to do", command.action, key,
                    command.execution_id)
        return
    await emit(fx, command.contact_id, message.partition)
    await store(key, state, message.partition)


_inputs = app.topic(
    EVENTS, WAKEUPS, CONTROL,
    key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
)


_gaps = GapGuard()


_last_record_at = 0.0


@app.timer(interval=1.0)  # type: ignore[untyped-decorator]
async def heal_lost_input() -> None:
    """Rewind partitions whose fetched records never reached the (idle) agent."""
    if app.rebalancing or app.in_recovery or time.monotonic() - _last_record_at < 2.0:
        return
    consumer = cast(Any, app.consumer)
    for tp in app.assignor.assigned_actives():
        if tp.topic not in (EVENTS, WAKEUPS, CONTROL):
            continue
        fetched = consumer._thread.fetch_position(tp)
        offset = _gaps.lost_behind(tp.topic, tp.partition, fetched, _committed(tp))
        if offset is not None:
            log.warning("input %s[%s]: fetched up to %s but the agent is at %s; reading again",
                        tp.topic, tp.partition, fetched, offset)
            await consumer.seek(tp, offset)


def _committed(tp: TP) -> int:
    """Where the agent's input starts on ``tp``: the committed offset Faust keeps (it has
    no public API for it), or 0 without one (a new group reads from the start; where
    retention has removed offset 0, a rewind to it lands on the first stored record)."""
    offset: int | None = cast(Any, app.consumer)._committed_offset.get(tp)
    return offset or 0


@app.agent(_inputs)
async def contact_agent(stream: Any) -> None:
    async for event in stream.events():
        await registry.ready.wait()
        await suppressions.ready.wait()
        message = event.message
        global _last_record_at
        _last_record_at = time.monotonic()
        tp = TP(message.topic, message.partition)
        verdict = _gaps.observe(message.topic, message.partition, message.offset,
                                message.generation_id, _committed(tp))
        if verdict.action == "rewind":
            log.warning("input %s[%s]: offsets %s..%s never reached the agent; reading again",
                        message.topic, message.partition, verdict.offset, message.offset - 1)
            await app.consumer.seek(tp, verdict.offset)
            continue
        if verdict.action == "skip":
            continue
        try:
            if message.topic == EVENTS:
                await on_contact_event(message)
            elif message.topic == WAKEUPS:
                await on_wakeup(message)
            else:
                await on_control(message)
        except (TimeoutError, KafkaError) as exc:
            # Faust would ack the record and go on: its state change would be lost. Exit
            # instead, as a crash would: the record is processed again after the restart.
            log.critical("broker error on %s[%s]@%s: %r; exiting so it is redone",
                         message.topic, message.partition, message.offset, exc)
            os._exit(70)
        except Exception as exc:
            # A bug or an input the logic cannot handle: recorded with its bytes, not lost,
            # and the contact's other records go on.
            log.exception("processing %s[%s]@%s failed", message.topic, message.partition,
                          message.offset)
            await dead_letter(message, Rejected("processing_error",
                                                f"{type(exc).__name__}: {exc}"))
