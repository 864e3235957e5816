"""The channel-worker SDK: deliver send commands to a provider, each ``message_id`` at
most once, every command at least once, and report back.

A worker author writes a :class:`Provider` (or one ``deliver(command) -> Outcome``
coroutine) and runs it in a :class:`ChannelWorker`::

    class MyProvider(Provider):
        name = "acme-sms"

        async def deliver(self, command: SendCommand) -> Outcome:
            reply = await my_api.send(command.to, command.body, key=command.message_id)
            return Outcome.sent(reply.id)

    raise SystemExit(ChannelWorker(Settings(), "sms", MyProvider()).run())

The worker consumes ``<prefix>send.<channel>`` in the consumer group
``<prefix>channel-<channel>`` and, per command:

1. **Ledger first.** ``<prefix>ledger:<message_id>`` in Redis says what became of the
   id (``reserved`` — a provider call may be under way — ``pending``, ``sent``,
   ``failed``, ``bounced``, ``skipped``, ``unresolved``). A command whose id is already
   settled is not sent again: its report is published again (same event id, so the
   engine's dedupe drops it if it already arrived) and its offset committed.
2. **Re-checks** (:func:`skip_reason`): expiry, the address's suppression, the contact's
   consent in the Redis read model — a STOP that arrived after the command left the gate
   still wins. A skip is recorded in the ledger and on ``<prefix>audit`` (``stage``
   ``channel``).
3. **Reserve, call, record.** The id is reserved atomically just before the provider
   call (a Lua script: only if nobody holds it), the outcome recorded after. A
   :class:`TransientError` releases the reservation and retries with exponential
   backoff and full jitter (:func:`backoff_delay`, bounded by
   ``DRIPSTREAM_CHANNEL_MAX_ATTEMPTS``, counted in the ledger across redeliveries); a
   :class:`PermanentError` is ``message.failed`` with the provider's code; any other
   exception, and a call longer than ``DRIPSTREAM_CHANNEL_CALL_TIMEOUT_S``, is an
   **unknown outcome**: the provider may have accepted it, so it is never called again
   blindly.
4. **Unknown outcomes** — a reservation without an outcome whose owner is dead (its
   liveness key ``<prefix>channel-worker:<token>`` expired: a crash during the call), or
   one of ours that failed in an unknown way — are reported (audit ``delivery_unknown``, a
   warning, :attr:`ChannelWorker.stats`) and resolved by the channel's policy: ``lookup``
   asks the provider by idempotency key (``message_id``) — found: record what it says;
   not found: deliver now — or ``assume_sent`` (``message.sent`` with ``"assumed":
   true``). A reservation of a live owner (a rebalance in the middle of its call) is
   waited for as long as the owner lives.
5. **Report**: ``message.sent`` / ``message.failed`` / ``message.bounced`` contact events
   with the message id, keyed by contact, ids ``<message_id>:<status>``.
6. **Commit** a batch's offsets only once every outcome is recorded and every report
   acknowledged (per partition, up to the first command not finished).

Records of one ``getmany`` are grouped by contact: one contact's commands run in order,
different contacts concurrently, at most ``DRIPSTREAM_CHANNEL_MAX_IN_FLIGHT`` at once. A
rebalance waits for the batch in flight and commits before giving partitions up. SIGTERM
starts no new command, lets calls in flight finish, releases those waiting for a retry,
commits what is done, and exits 0 — at once while it connects or joins its group. Redis
unreachable: nothing is delivered or committed until it answers (retried with backoff). A
broker error exits 70; so does a stall (:class:`Liveness`: no partitions, or input
waiting and no progress, for ``DRIPSTREAM_CHANNEL_STALL_AFTER_S``, then
``_STALL_EXIT_S``). ``docs/channel-workers.md`` is the guide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producers.publisher import build_event
from streams.capabilities import BrokerRefused, BrokerUnreachable, Capabilities, probe
from streams.clock import Clock
from streams.commands import SendCommand
from streams.compat import SKIPPED, abandon, leave_by_expiry, set_fetch_wait
from streams.events import encode_event
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tables.contacts import decode
from tables.gate import EXEMPT_PURPOSES, consent_veto
from tables.readmodel import contact_hash
from tables.registry import Suppressions

__all__ = [
    "EXIT_FATAL",
    "ChannelWorker",
    "Entry",
    "Ledger",
    "Liveness",
    "Outcome",
    "PermanentError",
    "Provider",
    "SuppressionTimes",
    "TransientError",
    "audit_skip",
    "backoff_delay",
    "channel_consumer",
    "outcome_event",
    "skip_reason",
]

log = logging.getLogger(__name__)

#: Exit status on a fatal error (the engine's convention, EX_SOFTWARE); 0 is a clean stop.
EXIT_FATAL = 70
#: Exit status on a configuration error found at start (settings, refused credentials).
EXIT_CONFIG = 2
FINAL = frozenset({"sent", "failed", "bounced", "skipped", "unresolved"})
Policy = Literal["lookup", "assume_sent"]
T = TypeVar("T")


# -- what an author gives and gets ------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What the provider said about one command.

    ``sent``: accepted (``provider_id`` is its id for the message, used to match its
    callbacks); ``failed``: refused or failed after accepting (``code``, ``reason``);
    ``bounced``: refused as undeliverable (``bounce_type`` ``hard`` / ``complaint``
    suppress the address). ``provider_accepted`` defaults to True except for what
    :class:`PermanentError` turns into."""

    status: Literal["sent", "failed", "bounced"] = "sent"
    provider_id: str | None = None
    code: str | None = None
    reason: str | None = None
    bounce_type: Literal["hard", "soft", "complaint"] = "hard"
    provider_accepted: bool = True

    @classmethod
    def sent(cls, provider_id: str | None = None) -> Outcome:
        return cls("sent", provider_id)

    @classmethod
    def failed(cls, code: str | None, reason: str | None = None, *,
               provider_id: str | None = None, provider_accepted: bool = True) -> Outcome:
        return cls("failed", provider_id, code, reason, provider_accepted=provider_accepted)


class TransientError(Exception):
    """The provider did **not** accept the message (connection refused, 429, 503…):
    safe to call again. Retried with backoff; after the last attempt ``message.failed``
    with ``reason`` and ``code``."""

    def __init__(self, reason: str = "transient", code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class PermanentError(Exception):
    """The provider refused the message for good (invalid number, 4xx): ``message.failed``
    with the provider's ``code``, no retry."""

    def __init__(self, code: str, reason: str | None = None) -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason or code


class Provider:
    """A channel's provider. Override :meth:`deliver`; override :meth:`lookup` if the
    provider can say whether it has a message (by the idempotency key ``message_id``),
    which makes ``lookup`` the default policy for unknown outcomes.

    ``deliver`` returns an :class:`Outcome` or raises :class:`TransientError` (not
    accepted: retried) or :class:`PermanentError` (refused: failed). **Anything else it
    raises — a read timeout after the request was sent, a dropped connection — is an
    unknown outcome** and the message is never sent again blindly.

    ``lookup`` returns the provider's :class:`Outcome` for the message, or None **only
    if the provider certainly does not have it** (the message is then delivered); raise
    :class:`TransientError` to be asked again later (bounded), anything else to leave the
    message ``unresolved`` (reported, not sent)."""

    name = "provider"

    async def start(self) -> None:
        """Open connections (called once before the first command)."""

    async def close(self) -> None:
        """Close them (called once at the end)."""

    async def deliver(self, command: SendCommand) -> Outcome:
        raise NotImplementedError

    async def lookup(self, command: SendCommand) -> Outcome | None:
        raise NotImplementedError

    @property
    def can_lookup(self) -> bool:
        return type(self).lookup is not Provider.lookup


class FunctionProvider(Provider):
    """A provider made of coroutine functions (``ChannelWorker(..., provider=deliver)``)."""

    def __init__(self, deliver: Callable[[SendCommand], Awaitable[Outcome]],
                 lookup: Callable[[SendCommand], Awaitable[Outcome | None]] | None = None,
                 name: str = "function") -> None:
        self._deliver, self._lookup, self.name = deliver, lookup, name

    async def deliver(self, command: SendCommand) -> Outcome:
        return await self._deliver(command)

    async def lookup(self, command: SendCommand) -> Outcome | None:
        if self._lookup is None:
            raise NotImplementedError
        return await self._lookup(command)

    @property
    def can_lookup(self) -> bool:
        return self._lookup is not None


# -- pure logic -------------------------------------------------------------------------

def backoff_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait before call ``attempt + 1`` after ``attempt`` transient failures:
    exponential (``base``, doubling, at most ``cap``) with full jitter (``rand`` in
    [0, 1): the caller's random draw, so this stays pure)."""
    return float(rand * min(cap, base * 2.0 ** (attempt - 1)))


def skip_reason(
    command: SendCommand, contact: Mapping[str, Any] | None,
    suppression: tuple[str, datetime] | None, now: datetime, margin_s: float,
) -> str | None:
    """Why a command the gate let go must not be delivered now, or None.

    - ``expired``: ``now`` is at or past ``expires_at``;
    - compliance replies (:data:`tables.gate.EXEMPT_PURPOSES`) skip the next two;
    - ``suppressed``: the address is suppressed by a record (``(reason, at)``) at or after
      ``created_at - margin_s`` (the same instant too: the engine stamps one time on a
      batch, and a STOP after the send in that batch must win). Older ones the gate knew
      when it let the command go, so what this worker sees is a lift it has not read yet
      (a START lifts an opt-out in the same batch that sends its confirmation); the
      margin covers the gate's own follower lag for suppressions written elsewhere;
    - ``opted_out`` / ``no_consent``: the contact's state in the read model forbids the
      channel — only a state at least as new as the command (``updated_at >=
      created_at``): an older one is what the gate had already overruled, since the
      engine projects to Redis after it emits.
    """
    if now >= command.expires_at:
        return "expired"
    if command.purpose in EXEMPT_PURPOSES:
        return None
    if suppression is not None:
        if suppression[1] >= command.created_at - timedelta(seconds=margin_s):
            return "suppressed"
    if contact is not None:
        updated = contact.get("updated_at")
        if updated and datetime.fromisoformat(updated) >= command.created_at:
            return consent_veto(contact, command.channel)
    return None


def outcome_event(
    command: SendCommand, status: str, at: datetime, source: str, *,
    provider_id: str | None = None, code: str | None = None, reason: str | None = None,
    bounce_type: str | None = None, provider_accepted: bool = False, assumed: bool = False,
) -> dict[str, Any]:
    """The ``message.<status>`` contact event reporting a command; its id is
    ``<message_id>:<status>``, so a repeated report is a duplicate the engine drops."""
    data: dict[str, Any] = {"message_id": command.message_id, "channel": command.channel}
    if provider_id:
        data["provider_id"] = provider_id
    if code:
        data["code"] = code
    if status == "sent" and assumed:
        data["assumed"] = True
    if status == "failed":
        data["reason"] = reason or code or "failed"
        data["provider_accepted"] = provider_accepted
    if status == "bounced":
        data["reason"] = reason or code or "bounced"
        data["bounce_type"] = bounce_type or "hard"
    event = build_event(command.account, command.contact_id, f"message.{status}", data,
                        event_id=f"{command.message_id}:{status}", time=at, source=source)
    # One hop deeper than what sent it, so the engine's loop guard sees a chain through
    # the channel ("message.failed → a workflow's send → fails again …").
    event["causationdepth"] = (command.origin.depth or 0) + 1
    return event


def audit_skip(command: SendCommand, reason: str, at: datetime, **extra: Any
               ) -> dict[str, Any]:
    """An ``<prefix>audit`` record (the contract's AuditRecord) from a channel worker."""
    return {"account": command.account, "contact_id": command.contact_id, "reason": reason,
            "at": at.isoformat(), "message_id": command.message_id,
            "channel": command.channel, "origin": command.origin.model_dump(exclude_none=True),
            "stage": "channel", "action": "drop", **extra}


# -- the ledger -------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A ledger record: what became of one message id."""

    state: str
    owner: str = ""
    reserved_at: float = 0.0
    attempts: int = 0
    at: str | None = None
    provider_id: str | None = None
    code: str | None = None
    reason: str | None = None
    bounce_type: str | None = None
    provider_accepted: bool = False
    assumed: bool = False
    account: str | None = None
    contact_id: str | None = None
    channel: str | None = None

    @classmethod
    def of(cls, raw: Mapping[Any, Any] | list[Any] | None) -> Entry | None:
        """From HGETALL's answer (a dict; a flat list from a script)."""
        pairs = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
        if not pairs:
            return None
        fields = {(k.decode() if isinstance(k, bytes) else k):
                  (v.decode() if isinstance(v, bytes) else v) for k, v in pairs.items()}
        return cls(
            state=fields.get("state", ""), owner=fields.get("owner", ""),
            reserved_at=float(fields.get("reserved_at") or 0),
            attempts=int(fields.get("attempts") or 0), at=fields.get("at"),
            provider_id=fields.get("provider_id") or None, code=fields.get("code") or None,
            reason=fields.get("reason") or None, bounce_type=fields.get("bounce_type") or None,
            provider_accepted=fields.get("provider_accepted") == "1",
            assumed=fields.get("assumed") == "1", account=fields.get("account"),
            contact_id=fields.get("contact_id"), channel=fields.get("channel"))

    @property
    def final(self) -> bool:
        return self.state in FINAL


#: KEYS[1] the entry; ARGV token, now, ttl, state, field/value pairs. Takes an absent or
#: released (pending) id and returns, for a reservation, its provider-call count with this
#: one (kept in the entry, so a redelivered command goes on from it), else 0; returns the
#: entry as it is if someone holds it.
_CLAIM = """
local s = redis.call('HGET', KEYS[1], 'state')
if s and s ~= 'pending' then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'owner', ARGV[1], 'reserved_at', ARGV[2],
           unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == 'reserved' then return redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
return 0
"""
#: KEYS[1]; ARGV old owner, token, now. Takes over a reservation whose outcome is unknown.
_TAKEOVER = """
if redis.call('HGET', KEYS[1], 'state') == 'reserved'
   and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'reserved_at', ARGV[3])
  return {}
end
return redis.call('HGETALL', KEYS[1])
"""
#: KEYS[1] the entry, KEYS[2] the provider-id index (optional); ARGV token, ttl,
#: message id, field/value pairs. Only the owner records an outcome.
_RECORD = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if #KEYS > 1 then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2]) end
return 1
"""
#: KEYS[1]; ARGV token. A reservation given back (the provider did not accept it).
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'state') == 'reserved' then
  redis.call('HSET', KEYS[1], 'state', 'pending')
  return 1
end
return 0
"""


class Ledger:
    """The Redis ledger: ``<prefix>ledger:<message_id>`` (hash), kept ``ttl_s`` after
    its last change; ``<prefix>ledger-provider:<channel>:<provider id>`` → message id
    (for callbacks); ``<prefix>channel-worker:<token>``: a live worker's key."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int) -> None:
        self.redis, self.prefix, self.ttl_s = redis, prefix, ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._takeover = redis.register_script(_TAKEOVER)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)

    def key(self, message_id: str) -> str:
        return f"{self.prefix}ledger:{message_id}"

    def provider_key(self, channel: str, provider_id: str) -> str:
        return f"{self.prefix}ledger-provider:{channel}:{provider_id}"

    def owner_key(self, token: str) -> str:
        return f"{self.prefix}channel-worker:{token}"

    async def get(self, message_id: str) -> Entry | None:
        return Entry.of(await self.redis.hgetall(self.key(message_id)))

    async def claim(self, command: SendCommand, token: str, now: float, state: str,
                    **fields: Any) -> Entry | None:
        """Take the id (absent or pending) as ``state`` (``reserved``, ``skipped``); None
        if taken, else the entry that holds it."""
        found = await self._take(command, token, now, state, fields)
        return None if isinstance(found, int) else found

    async def reserve(self, command: SendCommand, token: str, now: float) -> int | Entry:
        """Reserve the id for a provider call: the call's attempt number, counted across
        every worker and redelivery of the command; or the entry of whoever holds it."""
        return await self._take(command, token, now, "reserved", {})

    async def count_attempt(self, message_id: str) -> int:
        """One more provider call for an id reserved already (after an unknown outcome
        the provider did not know): its attempt number."""
        return int(await self.redis.hincrby(self.key(message_id), "attempts", 1))

    async def _take(self, command: SendCommand, token: str, now: float, state: str,
                    fields: Mapping[str, Any]) -> int | Entry:
        pairs = {"account": command.account, "contact_id": command.contact_id,
                 "channel": command.channel, **fields}
        found = await self._claim(keys=[self.key(command.message_id)],
                                  args=[token, now, self.ttl_s, state, *_flat(pairs)])
        if isinstance(found, int):
            return found
        entry = Entry.of(found)
        assert entry is not None, "the claim script returns the entry that holds the id"
        return entry

    async def takeover(self, message_id: str, old: str, token: str, now: float
                       ) -> Entry | None:
        return Entry.of(await self._takeover(keys=[self.key(message_id)],
                                             args=[old, token, now]))

    async def record(self, command: SendCommand, token: str, **fields: Any) -> bool:
        """Store an outcome (only the owner can); False if another worker owns it now."""
        keys = [self.key(command.message_id)]
        if fields.get("provider_id"):
            keys.append(self.provider_key(command.channel, str(fields["provider_id"])))
        done = await self._record(keys=keys, args=[token, self.ttl_s, command.message_id,
                                                   *_flat(fields)])
        return bool(done)

    async def release(self, message_id: str, token: str) -> None:
        await self._release(keys=[self.key(message_id)], args=[token])

    async def by_provider_id(self, channel: str, provider_id: str) -> str | None:
        found = await self.redis.get(self.provider_key(channel, provider_id))
        return found.decode() if isinstance(found, bytes) else found

    async def beat(self, token: str, ttl_s: float) -> None:
        await self.redis.set(self.owner_key(token), b"1", px=int(ttl_s * 1000))

    async def alive(self, token: str) -> bool:
        return bool(await self.redis.exists(self.owner_key(token)))


def _flat(fields: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name, value in fields.items():
        if value is None:
            continue
        out += [name, ("1" if value else "0") if isinstance(value, bool) else value]
    return out


class SuppressionTimes(Suppressions):
    """The suppression list with the time of each suppression (its record's ``at``, else
    the record's broker timestamp), which :func:`skip_reason` compares with a command's
    ``created_at``."""

    def __init__(self) -> None:
        super().__init__()
        self._at: dict[tuple[str, str], datetime] = {}

    def since(self, account: str, address: str) -> tuple[str, datetime] | None:
        reason = self.reason(account, address)
        at = self._at.get((account, address))
        return None if reason is None or at is None else (reason, at)

    def apply(self, key: bytes | None, value: bytes | None, timestamp: int = 0) -> None:
        super().apply(key, value, timestamp)
        account, _, address = (key or b"").decode().partition(":")
        if self.reason(account, address) is None:
            self._at.pop((account, address), None)
            return
        at = datetime.fromtimestamp(timestamp / 1000, UTC)
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            record = orjson.loads(value or b"")
            if record.get("remove"):
                return  # a lift of another reason: the suppression keeps its time
            at = datetime.fromisoformat(record["at"])
            at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        self._at[(account, address)] = at


# -- liveness ---------------------------------------------------------------------------

@dataclass
class Liveness:
    """Whether a channel worker makes progress, judged as the stream worker judges itself
    (``agents/worker.py: Health``, docs/operations.md "Liveness"): it is *stalled* once it
    has held no partitions for ``stall_after_s`` while joining its group (a rebalance that
    does not end), or input has been waiting that long with no command finished and no
    provider call returned. Times are monotonic seconds, passed in."""

    stall_after_s: float
    last_progress: float
    #: Set when the worker starts joining its group (and at each rebalance), cleared when
    #: partitions are assigned.
    joining_since: float | None = None
    stalled_since: float | None = None

    def progress(self, now: float) -> None:
        self.last_progress = now

    def judge(self, now: float, waiting: bool) -> str | None:
        """Why the worker is stalled (since :attr:`stalled_since`), or None.
        ``waiting``: input is waiting for it (a batch in flight, or records past the
        committed offset of a partition it holds)."""
        if not waiting:  # nothing to do is no stall: the clock starts when input waits
            self.last_progress = now
        if self.joining_since is not None and now - self.joining_since >= self.stall_after_s:
            reason = (f"no partitions assigned for {now - self.joining_since:.0f} s "
                      "(joining the group)")
        elif waiting and now - self.last_progress >= self.stall_after_s:
            reason = f"input waiting, no progress for {now - self.last_progress:.0f} s"
        else:
            self.stalled_since = None
            return None
        if self.stalled_since is None:
            self.stalled_since = now
        return reason


# -- the worker -------------------------------------------------------------------------

class _Stopping(Exception):
    """A command left unfinished because the worker is stopping (it is redelivered)."""


class _Stopped(Exception):
    """A stop began while the worker waited for the broker (connecting, joining)."""


@dataclass
class _Batch:
    """One ``getmany``: its commands' offsets, and which are finished."""

    offsets: dict[TopicPartition, list[int]] = field(default_factory=dict)
    done: set[tuple[TopicPartition, int]] = field(default_factory=set)
    acks: list[asyncio.Future[Any]] = field(default_factory=list)

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last of an unbroken run of finished
        records from the batch's first."""
        out: dict[TopicPartition, int] = {}
        for tp, offsets in self.offsets.items():
            nxt = None
            for offset in sorted(offsets):
                if (tp, offset) not in self.done:
                    break
                nxt = offset + 1
            if nxt is not None:
                out[tp] = nxt
        return out


def channel_consumer(settings: Settings, group_id: str,
                     capabilities: Capabilities) -> AIOKafkaConsumer:
    """The send-command consumer of a channel's group (the one place it is built). Where
    the broker has transactions it reads only committed ones: with exactly-once the
    stream worker writes its sends in transactions, and an aborted attempt's send must
    never reach a provider."""
    group = ({"session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
              "rebalance_timeout_ms": 2000} if settings.embedded else {})
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=settings.channel_batch_max, fetch_max_wait_ms=settings.fetch_wait_ms,
        isolation_level="read_committed" if capabilities.transactions else "read_uncommitted",
        **group, **settings.kafka_security())


class _Revoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, worker: ChannelWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        liveness = self.worker.liveness
        if liveness.joining_since is None:
            liveness.joining_since = time.monotonic()
        await self.worker.settle(leaving=True)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.liveness.joining_since = None
        log.info("channel %s: assigned %s", self.worker.channel,
                 sorted(tp.partition for tp in assigned))


class ChannelWorker:
    """Runs one channel's provider over its send-command topic (see the module doc).

    ``provider``: a :class:`Provider`, or a ``deliver(command) -> Outcome`` coroutine
    function (then ``lookup`` may be given beside it). ``policy``: what to do with an
    unknown outcome; default ``DRIPSTREAM_CHANNEL_UNKNOWN_POLICY``, else ``lookup`` if the
    provider can, else ``assume_sent``. Raises ValueError on a configuration error, before
    anything connects."""

    def __init__(
        self, settings: Settings, channel: str,
        provider: Provider | Callable[[SendCommand], Awaitable[Outcome]], *,
        lookup: Callable[[SendCommand], Awaitable[Outcome | None]] | None = None,
        policy: Policy | None = None, rand: Callable[[], float] = random.random,
        callback_secret: bytes | None = None,
    ) -> None:
        if channel not in ("sms", "mms", "email"):
            raise ValueError(f"unknown channel {channel!r}")
        self.settings, self.channel = settings, channel
        self.provider = (provider if isinstance(provider, Provider)
                         else FunctionProvider(provider, lookup))
        self.policy: Policy = (policy or settings.channel_unknown_policy
                               or ("lookup" if self.provider.can_lookup else "assume_sent"))
        if self.policy == "lookup" and not self.provider.can_lookup:
            raise ValueError(f"provider {self.provider.name} has no lookup: use assume_sent")
        if settings.channel_callback_port is not None and not callback_secret:
            raise ValueError("provider callbacks (DRIPSTREAM_CHANNEL_CALLBACK_PORT) need a "
                             "secret: DRIPSTREAM_CHANNEL_CALLBACK_SECRET (or the webhook's)")
        self.names = TopicNames.of(settings)
        self.group_id = f"{settings.topic_prefix}channel-{channel}"
        self.token = f"{channel}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.clock = Clock(settings.clock_offset_file)
        self.source = f"urn:dripstream:channel:{channel}:{self.provider.name}"
        self.suppressions = SuppressionTimes()
        self.stats: Counter[str] = Counter()
        self.liveness = Liveness(settings.channel_stall_after_s, time.monotonic())
        #: Why the worker gave up (a stall exit), or None.
        self.fatal: str | None = None
        self._rand = rand
        #: Serve signed provider callbacks (``DRIPSTREAM_CHANNEL_CALLBACK_PORT``): the
        #: port once listening.
        self.callback_secret = callback_secret
        self.callback_port: int | None = settings.channel_callback_port
        self._stop = asyncio.Event()
        self._leaving = asyncio.Event()  # set by a stop and during a rebalance
        self._current: asyncio.Future[None] | None = None
        self._settling = asyncio.Lock()
        self._batch: _Batch | None = None
        self._sem = asyncio.Semaphore(settings.channel_max_in_flight)
        self._redis: Redis | None = None
        self._ledger: Ledger | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._read_committed = False

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit status 0) or a fatal error (70)."""
        return asyncio.run(self.main())

    def stop(self) -> None:
        """Begin a clean stop (what SIGTERM does)."""
        self._stop.set()
        self._leaving.set()

    async def main(self, install_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        try:
            await self._serve()
        except BrokerRefused as exc:  # credentials or certificate: a configuration error
            log.critical("channel %s: the broker refused this worker: %s; exiting %d",
                         self.channel, exc, EXIT_CONFIG)
            return EXIT_CONFIG
        except BrokerUnreachable as exc:  # restart it: the broker may be back by then
            log.critical("channel %s: cannot reach the broker at %s (DRIPSTREAM_BROKER): "
                         "%s; exiting %d", self.channel, self.settings.broker, exc,
                         EXIT_FATAL)
            return EXIT_FATAL
        except KafkaError as exc:
            log.critical("channel %s: broker error %r; exiting %d", self.channel, exc,
                         EXIT_FATAL)
            return EXIT_FATAL
        except Exception:
            log.critical("channel %s: fatal error; exiting %d", self.channel, EXIT_FATAL,
                         exc_info=True)
            return EXIT_FATAL
        if self.fatal is not None:
            return EXIT_FATAL  # the CRITICAL line with the reason is logged already
        log.info("channel %s: stopped (%s)", self.channel, dict(self.stats))
        return 0

    async def _serve(self) -> None:
        s = self.settings
        try:
            capabilities = await self._unless_stopped(probe(s))
            await self._unless_stopped(ensure_topics(s))
        except _Stopped:
            return
        self._redis = Redis.from_url(s.redis_url)
        self._ledger = Ledger(self._redis, s.topic_prefix, s.channel_ledger_ttl_s)
        tasks = [asyncio.ensure_future(self.suppressions.follow(
                     s, self.names.suppressions, capabilities,
                     read_committed=capabilities.transactions)),
                 asyncio.ensure_future(self._heartbeat())]
        self._producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all",
                                          linger_ms=2, **s.kafka_security())
        self._consumer = channel_consumer(s, self.group_id, capabilities)
        self._read_committed = capabilities.transactions  # as channel_consumer reads
        server: Any = None
        try:
            await self._unless_stopped(self.provider.start())
            await self._unless_stopped(self._producer.start())
            if self.callback_port is not None:
                server = await self._unless_stopped(self._callbacks())
            await self._wait_ready(tasks[0])
            # Started before it subscribes, so that starting does not wait for the group
            # to assign partitions (it would, with no bound, deaf to a stop): joining is
            # waited for in getmany below, a stop beside it.
            await self._unless_stopped(self._consumer.start())
            self.liveness.joining_since = time.monotonic()
            self._consumer.subscribe([self.names.send(self.channel)], listener=_Revoke(self))
            tasks.append(asyncio.ensure_future(self._watch()))
            log.info("channel %s: consuming %s as %s (provider %s, policy %s)", self.channel,
                     self.names.send(self.channel), self.token, self.provider.name,
                     self.policy)
            quiet_since: float | None = None
            while not self._stop.is_set():
                for task in tasks:
                    if task.done():
                        task.result()  # a follower that died raises here
                # Waits, whatever timeout_ms says, as long as the group rebalances.
                batch = await self._unless_stopped(self._consumer.getmany(timeout_ms=250))
                # Short fetch waits while commands flow, long once quiet for a second
                # (the engine's rule: the embedded broker holds a fetch ~half its wait).
                now = asyncio.get_running_loop().time()
                quiet_since = None if batch else (quiet_since or now)
                set_fetch_wait(self._consumer, s.idle_fetch_wait_ms if quiet_since is not None
                               and now - quiet_since > 1.0 else s.fetch_wait_ms)
                if batch:
                    self._current = asyncio.ensure_future(self._process(batch))
                    try:
                        await asyncio.wait({self._current})
                    finally:
                        # A stall exit abandons the batch: its calls are cancelled, and
                        # what they reserved is an unknown outcome for the next owner.
                        if self.fatal is None:
                            await self.settle()
        except _Stopped:
            pass  # stopped while connecting or joining: nothing taken, nothing to settle
        finally:
            if server is not None:
                await server.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if s.embedded:
                leave_by_expiry(self._consumer)
            try:  # leaving the group: bounded, a broker that does not answer must not
                await asyncio.wait_for(self._consumer.stop(), 10)  # hold the exit
            except TimeoutError:
                log.warning("channel %s: the consumer did not stop within 10 s (a group "
                            "rebalance held it): closing its connections", self.channel)
                await abandon(self._consumer)
            await self._producer.stop()
            await self.provider.close()
            with contextlib.suppress(Exception):
                await self._ledger.redis.delete(self._ledger.owner_key(self.token))
            await self._redis.aclose()

    async def _unless_stopped(self, call: Awaitable[T]) -> T:
        """``call``'s result; if a stop comes first, ``call`` is cancelled and
        :class:`_Stopped` raised. Connecting to a broker that does not answer, joining a
        group and a fetch during a rebalance wait with no bound of their own: a SIGTERM
        must not wait for them."""
        task = asyncio.ensure_future(call)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=5)  # let it close what it opened
        if task.cancelled():
            raise _Stopped
        return task.result()

    async def _watch(self) -> None:
        """Judge progress every few seconds (:class:`Liveness`); stalled for
        ``DRIPSTREAM_CHANNEL_STALL_EXIT_S``: give up, so a supervisor restarts the worker
        (exit 70)."""
        s = self.settings
        interval = min(5.0, s.channel_stall_after_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            reason = self.liveness.judge(now, await self._input_waiting())
            if reason is None:
                continue
            self.stats["stalled_checks"] += 1
            stalled = now - (self.liveness.stalled_since or now)
            log.warning("channel %s: stalled: %s", self.channel, reason)
            if s.channel_stall_exit_s and stalled >= s.channel_stall_exit_s:
                log.critical("channel %s: stalled for %.0f s (%s); exiting %d so a "
                             "supervisor restarts the worker", self.channel, stalled, reason,
                             EXIT_FATAL)
                self.fatal = f"stalled: {reason}"
                self.stop()
                if self._current is not None:
                    self._current.cancel()
                return

    async def _input_waiting(self) -> bool:
        """A batch in flight, or records past the committed offset of an assigned
        partition (committed, not merely taken: a batch taken and never finished is
        input waiting too)."""
        if self._current is not None and not self._current.done():
            return True
        consumer = self._consumer
        assert consumer is not None
        committed_only = self._read_committed
        for tp in consumer.assignment():
            # From the last fetch response; None (or -1) before one.
            high = consumer.last_stable_offset(tp) if committed_only else consumer.highwater(tp)
            if not high or high < 0:
                continue
            try:
                committed = await asyncio.wait_for(consumer.committed(tp), 2.0) or 0
            except (KafkaError, TimeoutError):  # the broker is away: judged on progress
                continue
            # A topic written in transactions ends with a commit marker, which no record
            # follows until the next send: offsets the fetcher passed over are not input.
            if high > committed and not SKIPPED.covers(tp, committed, high):
                return True
        return False

    def _progress(self) -> None:
        self.liveness.progress(time.monotonic())

    async def _callbacks(self) -> Any:
        from producers.providers import Callbacks, CallbackServer

        assert self._ledger is not None and self._producer is not None
        assert self.callback_secret, "checked by __init__"
        producer, topic = self._producer, self.names.events

        async def publish(key: bytes, value: bytes) -> None:
            await producer.send_and_wait(topic, value=value, key=key)

        server = CallbackServer(Callbacks(self._ledger, self.channel, self.callback_secret,
                                          publish, self.clock.now, self.source),
                                self.callback_port or 0)
        self.callback_port = await server.start()
        log.info("channel %s: provider callbacks on port %d (POST /callbacks)",
                 self.channel, self.callback_port)
        return server

    async def _wait_ready(self, follower: asyncio.Future[None]) -> None:
        """The suppression list must be read to its end before the first command."""
        ready: asyncio.Future[Any] = asyncio.ensure_future(self.suppressions.ready.wait())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({ready, follower, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stop.cancel()
        if follower.done():
            follower.result()
        if self._stop.is_set():
            raise _Stopped

    async def _heartbeat(self) -> None:
        """Keep this worker's liveness key: its reservations are live while it exists."""
        interval = self.settings.channel_heartbeat_s
        assert self._ledger is not None
        while True:
            try:
                await self._ledger.beat(self.token, 3 * interval)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("channel %s: heartbeat failed (%r)", self.channel, exc)
            await asyncio.sleep(interval)

    async def settle(self, leaving: bool = False) -> None:
        """Wait for the batch in flight, then commit what it finished. ``leaving`` (a
        rebalance, before partitions are given up): as at a stop, no new command starts
        and commands waiting for a retry are released, so the partitions move promptly."""
        if leaving:
            self._leaving.set()
        try:
            await self._settle()
        finally:
            if not self._stop.is_set():
                self._leaving.clear()

    async def _settle(self) -> None:
        async with self._settling:
            current, self._current = self._current, None
            if current is not None:
                await asyncio.wait({current})
                if not current.cancelled() and (exc := current.exception()) is not None:
                    raise exc
            batch, self._batch = self._batch, None
            if batch is not None and self._consumer is not None:
                await self._commit(batch)

    async def _commit(self, batch: _Batch) -> None:
        assert self._consumer is not None
        if batch.acks:
            await asyncio.gather(*batch.acks)  # a broker error raises: exit 70, no commit
        offsets = {tp: OffsetAndMetadata(o, "") for tp, o in batch.commit_offsets().items()
                   if tp in self._consumer.assignment()}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:  # the group moved on: redelivered, and the ledger
            log.warning("channel %s: commit failed (%r); the next owner redelivers "
                        "(the ledger stops a second call)", self.channel, exc)

    # -- one batch -------------------------------------------------------------------
    async def _process(self, records: Mapping[TopicPartition, list[Any]]) -> None:
        batch = self._batch = _Batch()
        by_contact: dict[tuple[str, str], list[tuple[TopicPartition, int, SendCommand]]] = (
            defaultdict(list))
        for tp, part in records.items():
            batch.offsets[tp] = [r.offset for r in part]
            for record in part:
                try:
                    command = SendCommand.model_validate_json(record.value or b"")
                    if command.channel != self.channel:
                        raise ValueError(f"a {command.channel} command on the "
                                         f"{self.channel} topic")
                except (ValidationError, ValueError) as exc:
                    self._dead_letter(batch, tp, record, exc)
                    batch.done.add((tp, record.offset))
                    continue
                by_contact[(command.account, command.contact_id)].append(
                    (tp, record.offset, command))
        if not by_contact:
            return
        entries, states = await self._pre_read(by_contact)
        await asyncio.gather(*(self._contact(batch, items, entries, states.get(contact))
                               for contact, items in by_contact.items()))

    async def _pre_read(self, by_contact: Mapping[tuple[str, str], list[Any]]
                        ) -> tuple[dict[str, Entry | None], dict[tuple[str, str], Any]]:
        """Every command's ledger entry and every contact's read-model state, in one
        round trip."""
        ledger = self._ledger
        assert ledger is not None
        ids = [c.message_id for items in by_contact.values() for _, _, c in items]
        contacts = list(by_contact)
        prefix = self.settings.topic_prefix

        async def read() -> list[Any]:
            async with ledger.redis.pipeline(transaction=False) as pipe:
                for message_id in ids:
                    pipe.hgetall(ledger.key(message_id))
                for account, contact_id in contacts:
                    pipe.hget(contact_hash(prefix, account, contact_id), "value")
                return list(await pipe.execute())

        found = await self._redis_call(read)
        entries = {m: Entry.of(raw) for m, raw in zip(ids, found, strict=False)}
        states: dict[tuple[str, str], Any] = {}
        for contact, raw in zip(contacts, found[len(ids):], strict=True):
            if raw is not None:
                try:
                    states[contact] = decode(raw)
                except Exception as exc:  # an unreadable state: the gate's word stands
                    log.error("channel %s: cannot read the state of %s: %r", self.channel,
                              contact, exc)
        return entries, states

    async def _contact(self, batch: _Batch, items: list[tuple[TopicPartition, int, Any]],
                       entries: Mapping[str, Entry | None], state: Any) -> None:
        """One contact's commands, in order; stops at the first left unfinished."""
        for tp, offset, command in items:
            if self._leaving.is_set():
                return
            async with self._sem:
                try:
                    await self._command(batch, command, entries.get(command.message_id),
                                        state)
                except _Stopping:
                    return
            batch.done.add((tp, offset))
            self._progress()

    async def _command(self, batch: _Batch, command: SendCommand, entry: Entry | None,
                       state: Any) -> None:
        if entry is not None and entry.final:
            self.stats["redelivered"] += 1
            self._report_again(batch, command, entry)
            return
        if entry is not None and entry.state == "reserved":
            await self._theirs(batch, command, entry, state)
            return
        await self._fresh(batch, command, state)

    async def _fresh(self, batch: _Batch, command: SendCommand, state: Any,
                     owned: bool = False) -> None:
        """Judge, then reserve and call the provider (``owned``: the reservation is ours
        already, after an unknown outcome the provider did not know)."""
        ledger = self._ledger
        assert ledger is not None
        now = self.clock.now()
        reason = skip_reason(command, state, self.suppressions.since(command.account,
                                                                       command.to),
                             now, self.settings.channel_suppression_margin_s)
        if reason is not None:
            if owned:
                await self._redis_call(lambda: ledger.record(
                    command, self.token, state="skipped", reason=reason, at=now.isoformat()))
            else:
                held = await self._redis_call(lambda: ledger.claim(
                    command, self.token, now.timestamp(), "skipped", reason=reason,
                    at=now.isoformat()))
                if held is not None:
                    await self._existing(batch, command, held, state)
                    return
            self.stats[f"skipped_{reason}"] += 1
            log.info("channel %s: %s skipped: %s", self.channel, command.message_id, reason)
            self._emit(batch, self.names.audit, command.contact_id,
                       orjson.dumps(audit_skip(command, reason, now)))
            return
        while True:
            # The attempt number is the ledger's, not this call's: a command released for
            # its retry (a stop, a rebalance) and redelivered goes on from its count.
            if owned:
                attempt = await self._redis_call(
                    lambda: ledger.count_attempt(command.message_id))
            else:
                got = await self._redis_call(lambda: ledger.reserve(
                    command, self.token, self.clock.now().timestamp()))
                if isinstance(got, Entry):
                    await self._existing(batch, command, got, state)
                    return
                attempt = got
            owned = False
            try:
                outcome = await self._call(self.provider.deliver(command))
            except TransientError as exc:
                if attempt >= self.settings.channel_max_attempts:
                    self.stats["failed_transient"] += 1
                    await self._settle_outcome(batch, command, Outcome.failed(
                        exc.code, f"{exc.reason} (after {attempt} attempts)",
                        provider_accepted=False))
                    return
                self.stats["retried"] += 1
                await self._redis_call(lambda: ledger.release(command.message_id, self.token))
                delay = backoff_delay(attempt, self.settings.channel_backoff_s,
                                      self.settings.channel_backoff_max_s, self._rand())
                log.info("channel %s: %s transient error %r; retry %d in %.2f s",
                         self.channel, command.message_id, exc.reason, attempt, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._leaving.wait(), delay)
                if self._leaving.is_set():
                    raise _Stopping from None  # released: the next owner delivers it
                continue
            except PermanentError as exc:
                await self._settle_outcome(batch, command, Outcome.failed(
                    exc.code, exc.reason, provider_accepted=False))
                return
            except Exception as exc:  # timeout, dropped connection, a bug: unknown
                await self._unknown(batch, command, self.token, f"provider call: {exc!r}",
                                    state, retried=attempt > 1)
                return
            await self._settle_outcome(batch, command, outcome)
            return

    async def _existing(self, batch: _Batch, command: SendCommand, entry: Entry,
                        state: Any) -> None:
        """Someone else holds the id: report it again, or wait for them."""
        if entry.final:
            self._report_again(batch, command, entry)
        else:
            await self._theirs(batch, command, entry, state)

    async def _theirs(self, batch: _Batch, command: SendCommand, entry: Entry,
                      state: Any) -> None:
        """A reservation without an outcome: wait as long as its owner lives (it is
        mid-call, e.g. during a rebalance; a live owner always settles or releases what it
        reserved, its calls are bounded), warning now and then; once its liveness key is
        gone it is a crash during the call: unknown. No deadline on a live owner: a lease
        that ran out under a slow call would let two workers call the provider."""
        ledger = self._ledger
        assert ledger is not None
        loop = asyncio.get_running_loop()
        warn_at = loop.time() + self.settings.channel_call_timeout_s
        current: Entry | None = entry
        while current is not None and current.state == "reserved" \
                and current.owner != self.token:
            owner = current.owner
            if not await self._redis_call(lambda: ledger.alive(owner)):  # noqa: B023
                break
            if self._leaving.is_set():
                raise _Stopping  # not ours: left to whoever owns the partition next
            if loop.time() > warn_at:
                self.stats["waited"] += 1
                log.warning("channel %s: %s still reserved by the live worker %s",
                            self.channel, command.message_id, owner)
                warn_at += self.settings.channel_call_timeout_s
            await asyncio.sleep(0.1)
            current = await self._redis_call(lambda: ledger.get(command.message_id))
        if current is None or current.state == "pending":
            await self._fresh(batch, command, state)
        elif current.final:
            self._report_again(batch, command, current)
        else:
            await self._unknown(batch, command, current.owner,
                                f"reservation of {current.owner} without an outcome", state)

    async def _unknown(self, batch: _Batch, command: SendCommand, owner: str, detail: str,
                       state: Any, retried: bool = False) -> None:
        """The provider may or may not have the message: report it, resolve by policy,
        never call the provider a second time on a guess."""
        ledger = self._ledger
        assert ledger is not None
        self.stats["unknown"] += 1
        log.warning("channel %s: %s outcome unknown (%s); policy %s", self.channel,
                    command.message_id, detail, self.policy)
        if owner != self.token:
            held = await self._redis_call(lambda: ledger.takeover(
                command.message_id, owner, self.token, self.clock.now().timestamp()))
            if held is not None:  # another worker took it first: theirs now
                await self._existing(batch, command, held, state)
                return
        resolution: str
        if self.policy == "assume_sent":
            resolution = "assumed_sent"
            await self._settle_outcome(batch, command, Outcome.sent(), assumed=True)
        else:
            try:
                found = await self._lookup(command)
            except Exception as exc:
                resolution = "unresolved"
                detail = f"{detail}; lookup failed: {exc!r}"
                await self._redis_call(lambda: ledger.record(
                    command, self.token, state="unresolved", reason=detail[:500],
                    at=self.clock.now().isoformat()))
            else:
                if found is not None:
                    resolution = "found"
                    await self._settle_outcome(batch, command, found)
                else:
                    resolution = "not_found"
        self._emit(batch, self.names.audit, command.contact_id, orjson.dumps(audit_skip(
            command, "delivery_unknown", self.clock.now(), action="report",
            policy=self.policy, resolution=resolution, detail=detail[:500])))
        if resolution == "not_found":  # certainly not at the provider: deliver it now
            if retried:
                log.warning("channel %s: %s not found after an unknown outcome",
                            self.channel, command.message_id)
            await self._fresh(batch, command, state, owned=True)

    async def _lookup(self, command: SendCommand) -> Outcome | None:
        """The provider's answer, transient errors retried with backoff (bounded)."""
        for attempt in range(1, self.settings.channel_max_attempts + 1):
            try:
                return await self._call(self.provider.lookup(command))
            except TransientError:
                if attempt == self.settings.channel_max_attempts:
                    raise
                await asyncio.sleep(backoff_delay(attempt, self.settings.channel_backoff_s,
                                                  self.settings.channel_backoff_max_s,
                                                  self._rand()))
        raise AssertionError("unreachable")

    async def _call(self, call: Awaitable[T]) -> T:
        """A provider call, bounded by the call timeout; its end, however it ends, is
        progress (a slow provider is not a stalled worker)."""
        try:
            return await asyncio.wait_for(call, self.settings.channel_call_timeout_s)
        finally:
            self._progress()

    async def _settle_outcome(self, batch: _Batch, command: SendCommand, outcome: Outcome,
                              assumed: bool = False) -> None:
        """Record the outcome (we own the reservation), then publish its report."""
        ledger = self._ledger
        assert ledger is not None
        now = self.clock.now()
        fields = {"state": outcome.status, "at": now.isoformat(),
                  "provider_id": outcome.provider_id, "code": outcome.code,
                  "reason": outcome.reason, "provider_accepted": outcome.provider_accepted,
                  "assumed": assumed,
                  "bounce_type": outcome.bounce_type if outcome.status == "bounced" else None}
        if not await self._redis_call(lambda: ledger.record(command, self.token, **fields)):
            log.error("channel %s: %s was taken over by another worker during our call "
                      "(longer than DRIPSTREAM_CHANNEL_CALL_TIMEOUT_S?)", self.channel,
                      command.message_id)
        self.stats[outcome.status] += 1
        self._emit(batch, self.names.events, command.contact_id, encode_event(outcome_event(
            command, outcome.status, now, self.source, provider_id=outcome.provider_id,
            code=outcome.code, reason=outcome.reason, bounce_type=outcome.bounce_type,
            provider_accepted=outcome.provider_accepted, assumed=assumed)))

    def _report_again(self, batch: _Batch, command: SendCommand, entry: Entry) -> None:
        """A settled id redelivered: its report again (the same event id; a skip's audit
        record again, since it may not have been written before a crash)."""
        at = datetime.fromisoformat(entry.at) if entry.at else self.clock.now()
        if entry.state == "skipped":
            value = orjson.dumps(audit_skip(command, entry.reason or "skipped", at))
            self._emit(batch, self.names.audit, command.contact_id, value)
        elif entry.state in ("sent", "failed", "bounced"):
            self._emit(batch, self.names.events, command.contact_id, encode_event(
                outcome_event(command, entry.state, at, self.source,
                              provider_id=entry.provider_id, code=entry.code,
                              reason=entry.reason, bounce_type=entry.bounce_type,
                              provider_accepted=entry.provider_accepted,
                              assumed=entry.assumed)))

    def _emit(self, batch: _Batch, topic: str, key: str, value: bytes,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        assert self._producer is not None
        send = self._producer.send(topic, value=value, key=key.encode(), headers=headers)
        batch.acks.append(asyncio.ensure_future(_acked(send)))

    def _dead_letter(self, batch: _Batch, tp: TopicPartition, record: Any, exc: Exception
                     ) -> None:
        log.warning("channel %s: invalid send command at %s:%d dead-lettered: %s",
                    self.channel, tp.topic, record.offset, exc)
        self.stats["dead_lettered"] += 1
        headers = [("dripstream.reason", b"invalid_command"),
                   ("dripstream.detail", str(exc)[:2000].encode()),
                   ("dripstream.topic", tp.topic.encode()),
                   ("dripstream.partition", str(tp.partition).encode()),
                   ("dripstream.offset", str(record.offset).encode()),
                   ("dripstream.rejected_at", self.clock.now().isoformat().encode())]
        assert self._producer is not None
        send = self._producer.send(self.names.dead_letter, value=record.value,
                                   key=record.key, headers=headers)
        batch.acks.append(asyncio.ensure_future(_acked(send)))

    async def _redis_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried with backoff while Redis is unreachable: nothing is
        delivered or committed meanwhile."""
        delay = 0.1
        while True:
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self.stats["redis_retries"] += 1
                log.warning("channel %s: ledger unreachable (%r); retrying in %.1f s",
                            self.channel, exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)


async def _acked(send: Awaitable[asyncio.Future[Any]]) -> Any:
    return await (await send)
