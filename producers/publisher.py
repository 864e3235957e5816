"""Publisher SDK: how an upstream system (shop, CRM, SMS gateway) sends contact events.

    async with Publisher(bootstrap_servers="127.0.0.1:9092") as pub:
        await pub.publish("acme", "c-1", "purchase.completed",
                          {"order_id": "o-9", "amount": "19.90", "currency": "EUR"})

:func:`build_event` makes the CloudEvents envelope (a fresh id unless one is given: pass
your own stable id when you may retry, so dripstream can drop the repeat). The event is
validated before it leaves, so a publisher learns about a bad event at once instead of
finding it on the dead-letter topic.

:meth:`Publisher.publish_many` sends a batch and answers one :class:`PublishResult` per
event (accepted, or rejected with the contract's reason), as the admin API's
``POST /v1/events`` needs. :class:`SyncPublisher` is the same client for code that owns
no event loop (a web app's request handlers, scripts): it runs its own loop in a thread.

Idempotent producing (no duplicates from the producer's own retries) is used where the
broker supports it: by default the publisher asks for it and, if the broker refuses
(the embedded Tansu broker cannot: ``InitProducerId`` fails), logs one warning and goes
on without (aiokafka's own error line about the refusal is kept out of the log: the
warning says it); ``idempotence=True`` makes that an error, ``False`` never asks. A
broker that cannot be reached at all is an error whatever the setting — not a refusal
of idempotence. Either way a retried publish with the same event id is dropped by
dripstream's dedupe.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.events import ContactEvent, Rejected, encode_event, parse_event

__all__ = ["PublishResult", "Publisher", "SyncPublisher", "build_event"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Set while a Publisher asks the broker for an idempotent producer (a context variable:
#: aiokafka logs the refusal inside the awaiting task, so only that probe is affected).
_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("probing", default=False)


class _ProbeRefusal(logging.Filter):
    """Drops aiokafka's ERROR about a refused InitProducerId during a probe: the
    publisher's own warning says what happened and what it does about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_PROBING.get() and "InitProducerId" in str(record.msg))


logging.getLogger("aiokafka.producer.sender").addFilter(_ProbeRefusal())


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


@dataclass(frozen=True)
class PublishResult:
    """One event's fate in :meth:`Publisher.publish_many`.

    ``accepted``: written and acknowledged (``partition``, ``offset``). Otherwise
    ``reason`` is the contract's rejection reason (:data:`streams.events.RejectReason`:
    ``invalid_envelope``, ``invalid_data``…, with ``detail``) — fix the event — or
    ``publish_failed``: valid, but the broker did not take it; safe to retry with the
    same id."""

    index: int
    id: str | None
    accepted: bool
    reason: str | None = None
    detail: str | None = None
    partition: int | None = None
    offset: int | None = None


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, as :func:`streams.events.parse_event`
    reports it (``list``, ``str``, ``int``, ``NoneType``…: Python's names)."""
    return type(value).__name__


class Publisher:
    """Validates and sends contact events to ``<prefix>contact-events``, keyed by contact.

    ``idempotence``: None (default) uses the idempotent producer if the broker supports
    it, with a warning if not; True requires it; False does not ask."""

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        topic_prefix: str = "dripstream.",
        idempotence: bool | None = None,
        **producer_options: Any,
    ) -> None:
        self.topic = f"{topic_prefix}contact-events"
        self._servers = bootstrap_servers
        self._options = {"acks": "all", "linger_ms": 5, **producer_options}
        self._idempotence = idempotence
        #: Whether the running producer is idempotent (known once started).
        self.idempotent = False
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers,
                                          enable_idempotence=idempotence is not False,
                                          **self._options)

    async def __aenter__(self) -> Publisher:
        probing = _PROBING.set(self._idempotence is None)
        try:
            await self._producer.start()
            self.idempotent = self._idempotence is not False
        except KafkaError as exc:
            await self._producer.stop()
            # Required (or already off), or no broker at all: an error, not a refusal.
            if self._idempotence is not None or isinstance(exc, KafkaConnectionError):
                raise
            log.warning("the broker refused an idempotent producer (%r); publishing "
                        "without (a retry may write an event twice: dripstream's dedupe "
                        "drops the repeat by its id)", exc)
            self._producer = AIOKafkaProducer(bootstrap_servers=self._servers,
                                              **self._options)
            try:
                await self._producer.start()
            except BaseException:
                await self._producer.stop()  # closed even when it never started
                raise
        finally:
            _PROBING.reset(probing)
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

    async def publish_many(self, events: Sequence[Any]) -> list[PublishResult]:
        """Validate each event and send the valid ones, batched by the producer; one
        :class:`PublishResult` per event, in order, once every send is acknowledged or
        failed. An invalid event does not stop the others."""
        results: list[PublishResult | None] = [None] * len(events)
        pending: list[tuple[int, str, Any]] = []
        for index, event in enumerate(events):
            ident = event.get("id") if isinstance(event, Mapping) else None
            ident = ident if isinstance(ident, str) else None
            if not isinstance(event, Mapping):
                # As parse_event words it for a record that is not an object (dict() of a
                # list of pairs or of "" would otherwise make one up).
                results[index] = PublishResult(
                    index, None, False, "malformed_json",
                    f"expected a JSON object, got {_json_type(event)}")
                continue
            try:
                value = encode_event(dict(event))
                parsed = parse_event(value)
            except Rejected as exc:
                results[index] = PublishResult(index, ident, False, exc.reason, exc.detail)
                continue
            except (orjson.JSONEncodeError, TypeError, ValueError, RecursionError) as exc:
                # orjson writes at most ~254 levels (it reads 1024): deeper is malformed here.
                results[index] = PublishResult(index, ident, False, "malformed_json",
                                               f"cannot encode the event: {exc}")
                continue
            try:
                future = await self._producer.send(self.topic, value=value,
                                                   key=parsed.contact_id.encode())
            except KafkaError as exc:
                results[index] = PublishResult(index, ident, False, "publish_failed", repr(exc))
                continue
            pending.append((index, parsed.id, future))
        for index, ident, future in pending:
            try:
                meta = await future
            except KafkaError as exc:
                results[index] = PublishResult(index, ident, False, "publish_failed", repr(exc))
            else:
                results[index] = PublishResult(index, ident, True, partition=meta.partition,
                                               offset=meta.offset)
        return [r for r in results if r is not None]

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


class SyncPublisher:
    """A blocking :class:`Publisher` for code without an event loop — a Flask or Django
    view, a script. It runs its own event loop in a daemon thread; one instance may be
    shared by every thread of a web app (calls are thread-safe). Each call waits at most
    ``timeout_s`` (then ``TimeoutError``).

        with SyncPublisher("127.0.0.1:9092") as pub:
            pub.publish("acme", "c-1", "contact.tagged", {"tag": "vip"}, event_id="tag-1")
            results = pub.publish_many([event1, event2])
    """

    def __init__(self, bootstrap_servers: str | list[str], *,
                 topic_prefix: str = "dripstream.", timeout_s: float = 30.0,
                 **options: Any) -> None:
        self.timeout_s = timeout_s
        self._args = (bootstrap_servers, topic_prefix, options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._publisher: Publisher | None = None

    def start(self) -> SyncPublisher:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="dripstream-publisher",
                                        daemon=True)
        self._thread.start()

        async def start() -> Publisher:
            servers, prefix, options = self._args
            return await Publisher(servers, topic_prefix=prefix, **options).__aenter__()

        try:
            self._publisher = self._run(start)
        except BaseException:
            self._shutdown()
            raise
        return self

    def close(self) -> None:
        """Flush and stop (what leaving the ``with`` block does)."""
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            self._run(lambda: publisher.__aexit__(None, None, None))
        self._shutdown()

    def __enter__(self) -> SyncPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def idempotent(self) -> bool:
        return self._publisher is not None and self._publisher.idempotent

    def publish(self, account: str, contact_id: str, event_type: str,
                data: dict[str, Any] | None = None, **envelope: Any) -> ContactEvent | None:
        return self._run(lambda: self._pub.publish(account, contact_id, event_type, data,
                                                   **envelope))

    def send(self, event: dict[str, Any], *, validate: bool = True) -> ContactEvent | None:
        return self._run(lambda: self._pub.send(event, validate=validate))

    def publish_many(self, events: Sequence[Mapping[str, Any]]) -> list[PublishResult]:
        return self._run(lambda: self._pub.publish_many(events))

    def flush(self) -> None:
        self._run(self._pub.flush)

    @property
    def _pub(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("SyncPublisher is not started (use it in a with block)")
        return self._publisher

    def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._loop is None:
            raise RuntimeError("SyncPublisher is not started (use it in a with block)")

        async def run() -> T:
            return await call()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def _shutdown(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
        self._loop = self._thread = None
