"""The reference providers, and provider callbacks turned into contact events.

Providers (:class:`producers.channel.Provider`), chosen by ``dripstream channel CHANNEL
--provider NAME``:

- :class:`ConsoleProvider` prints each send (``dripstream dev`` runs one for SMS and one
  for email);
- :class:`FileProvider` appends one JSON line per call it receives — the tests' fake
  provider; ``DRIPSTREAM_CHANNEL_FILE_FAULTS`` (tests only) makes some calls fail
  transiently or permanently, or lose their response after being recorded; its
  :meth:`~FileProvider.lookup` reads its own file;
- :class:`WebhookProvider` POSTs each command as JSON to an https URL, signed
  (:func:`sign`), with ``Idempotency-Key: <message_id>`` — the worked example of
  ``docs/channel-workers.md``.

Callbacks: a provider reports what happened later (delivered, opened, clicked, bounced,
failed). :func:`verify` checks the signature (HMAC-SHA256 over ``<timestamp>.<body>``,
constant-time, with a timestamp tolerance), :func:`callback_event` maps a report to its
``message.*`` contact event (pure), and :class:`Callbacks` does both for an HTTP body,
finding the message's account, contact and channel in the ledger (by ``message_id``, or
by the provider's own id), and publishes it; :class:`CallbackServer` serves it over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import ssl
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from producers.channel import Entry, Ledger, Outcome, PermanentError, Provider, TransientError
from producers.publisher import build_event
from streams.commands import SendCommand
from streams.events import Rejected, encode_event, parse_event

__all__ = [
    "SIGNATURE_HEADER",
    "CallbackServer",
    "Callbacks",
    "ConsoleProvider",
    "FileFaults",
    "FileProvider",
    "SignatureError",
    "WebhookProvider",
    "callback_event",
    "sign",
    "verify",
]

#: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (several ``v1`` allowed while
#: a secret is rotated).
SIGNATURE_HEADER = "Dripstream-Signature"


# -- signatures -------------------------------------------------------------------------

class SignatureError(Exception):
    """A signature that is missing, malformed, too old or wrong."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str | None, body: bytes, now: datetime,
           tolerance_s: float = 300) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``body`` with ``secret`` and
    its timestamp is within ``tolerance_s`` of ``now`` (a replayed old request fails)."""
    if not header:
        raise SignatureError("no signature")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("no timestamp") from None
    if abs(now.timestamp() - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} outside the {tolerance_s:.0f} s tolerance")
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, given) for given in parts.get("v1", [])):
        raise SignatureError("signature mismatch")


# -- console ----------------------------------------------------------------------------

class ConsoleProvider(Provider):
    """Prints each send on stdout; nothing is really sent. No lookup (unknown outcomes
    are assumed sent: a print is harmless)."""

    name = "console"

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    async def deliver(self, command: SendCommand) -> Outcome:
        subject = f" [{command.subject}]" if command.subject else ""
        print(f"{command.channel} → {command.to}{subject}: {command.body}  "
              f"({command.account}/{command.contact_id}, {command.message_id})",
              file=self.out, flush=True)
        return Outcome.sent(f"console-{uuid.uuid4().hex[:12]}")


# -- file (the tests' fake) -------------------------------------------------------------

@dataclass(frozen=True)
class FileFaults:
    """Tests only: fractions of calls that fail (by a hash of the message id, so a run
    is reproducible): ``transient`` (per attempt: a retry may pass), ``permanent``,
    ``drop`` (recorded — accepted — then the response is lost: an unknown outcome), and
    ``delay_ms`` per call (a slow provider: half before the call is recorded, half after,
    so a crash lands on both sides of it)."""

    transient: float = 0.0
    permanent: float = 0.0
    drop: float = 0.0
    delay_ms: float = 0.0
    seed: str = "0"

    @classmethod
    def parse(cls, text: str | None) -> FileFaults:
        if not text:
            return cls()
        values = dict(item.split("=", 1) for item in text.split(",") if item)
        return cls(transient=float(values.get("transient", 0)),
                   permanent=float(values.get("permanent", 0)),
                   drop=float(values.get("drop", 0)),
                   delay_ms=float(values.get("delay_ms", 0)), seed=values.get("seed", "0"))

    def hit(self, fraction: float, *parts: object) -> bool:
        if fraction <= 0:
            return False
        digest = hashlib.sha256("\x1f".join(map(str, (self.seed, *parts))).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class FileProvider(Provider):
    """Appends one JSON line per call (``result`` ``accepted``, ``transient`` or
    ``permanent``) to ``path``, with one ``write`` on an ``O_APPEND`` file, so several
    worker processes may share it and a SIGKILL never leaves half a line."""

    name = "file"

    def __init__(self, path: Path, faults: FileFaults | None = None) -> None:
        self.path = path
        self.faults = faults or FileFaults()
        self._calls: Counter[str] = Counter()
        self._fd: int | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, command: SendCommand, result: str, provider_id: str | None = None
                ) -> None:
        assert self._fd is not None, "start() first"
        line = orjson.dumps({
            "message_id": command.message_id, "channel": command.channel,
            "account": command.account, "contact_id": command.contact_id,
            "to": command.to, "body": command.body, "result": result,
            "provider_id": provider_id, "pid": os.getpid(),
            "at": datetime.now(UTC).isoformat()}) + b"\n"
        os.write(self._fd, line)

    async def deliver(self, command: SendCommand) -> Outcome:
        faults, mid = self.faults, command.message_id
        self._calls[mid] += 1
        # A slow provider: half the delay before it records the call, half after (a crash
        # then lands as often after the provider took a message as before).
        delay = faults.delay_ms / 1000 * (0.5 + random.random()) / 2
        if delay:
            await asyncio.sleep(delay)
        if faults.hit(faults.transient, mid, "transient", self._calls[mid]):
            self._append(command, "transient")
            raise TransientError("file provider: simulated outage", "503")
        if faults.hit(faults.permanent, mid, "permanent"):
            self._append(command, "permanent")
            raise PermanentError("invalid_destination", "file provider: simulated rejection")
        provider_id = f"file-{uuid.uuid4().hex[:16]}"
        self._append(command, "accepted", provider_id)
        if delay:
            await asyncio.sleep(delay)
        if faults.hit(faults.drop, mid, "drop"):
            raise ConnectionResetError("file provider: response lost after accepting")
        return Outcome.sent(provider_id)

    async def lookup(self, command: SendCommand) -> Outcome | None:
        for call in read_calls(self.path):
            if call.get("message_id") == command.message_id and call["result"] == "accepted":
                return Outcome.sent(call.get("provider_id"))
        return None


def read_calls(path: Path) -> list[dict[str, Any]]:
    """Every call a :class:`FileProvider` recorded in ``path``."""
    try:
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    except FileNotFoundError:
        return []


# -- webhook ----------------------------------------------------------------------------

class WebhookProvider(Provider):
    """POSTs each command (its contract JSON) to ``url``, with headers
    ``Idempotency-Key: <message_id>`` and :data:`SIGNATURE_HEADER`.

    2xx: sent (the JSON answer's ``id`` is the provider id); 429 and 5xx: transient; any
    other status: permanent, with the status as the code. A connect error or connect
    timeout is transient (nothing was sent); a read timeout, a dropped connection or a
    broken answer after the request went out is an unknown outcome. With ``lookup_url``,
    ``GET <lookup_url>/<message_id>`` (signed over an empty body) answers 200 with
    ``{"status": "sent"|"failed", "id", "code"}`` or 404: the ``lookup`` policy."""

    name = "webhook"

    def __init__(
        self, url: str, secret: bytes, *, lookup_url: str | None = None,
        connect_timeout_s: float = 5.0, read_timeout_s: float = 10.0,
        verify_tls: str | bool = True, allow_http: bool = False,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        for which in (url, lookup_url):
            if which is not None and not which.startswith("https://") and not (
                    allow_http and which.startswith("http://")):
                raise ValueError(f"webhook URL must be https:// (got {which!r}; "
                                 "DRIPSTREAM_CHANNEL_WEBHOOK_ALLOW_HTTP is for dev/tests)")
        if not secret:
            raise ValueError("the webhook needs a secret (DRIPSTREAM_CHANNEL_WEBHOOK_SECRET)")
        self.url, self.secret, self.lookup_url = url, secret, lookup_url
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.verify_tls = verify_tls
        self.now = now
        self._client: httpx.AsyncClient | None = None

    @property
    def can_lookup(self) -> bool:
        return self.lookup_url is not None

    async def start(self) -> None:
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=self.verify_tls)
                                         if isinstance(self.verify_tls, str)
                                         else self.verify_tls)
        self._client = httpx.AsyncClient(timeout=self.timeout, verify=verify,
                                         follow_redirects=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _headers(self, command: SendCommand, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", "Idempotency-Key": command.message_id,
                SIGNATURE_HEADER: sign(self.secret, int(self.now().timestamp()), body)}

    async def deliver(self, command: SendCommand) -> Outcome:
        assert self._client is not None, "start() first"
        body = command.model_dump_json(exclude_none=True).encode()
        try:
            response = await self._client.post(self.url, content=body,
                                               headers=self._headers(command, body))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientError(f"connect: {exc!r}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return Outcome.sent(_answer_id(response))
        if status == 429 or status >= 500:
            raise TransientError(f"http {status}", str(status))
        raise PermanentError(str(status), response.text[:200] or f"http {status}")

    async def lookup(self, command: SendCommand) -> Outcome | None:
        assert self._client is not None and self.lookup_url is not None
        try:
            response = await self._client.get(
                f"{self.lookup_url.rstrip('/')}/{command.message_id}",
                headers=self._headers(command, b""))
        except httpx.TransportError as exc:
            raise TransientError(f"lookup: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise TransientError(f"lookup: http {response.status_code}")
        found = response.json()
        if found.get("status") == "failed":
            return Outcome.failed(found.get("code"), found.get("reason"),
                                  provider_id=found.get("id"))
        return Outcome.sent(found.get("id"))


def _answer_id(response: httpx.Response) -> str | None:
    try:
        found = response.json()
    except ValueError:
        return None
    ident = found.get("id") if isinstance(found, dict) else None
    return str(ident) if ident is not None else None


# -- callbacks --------------------------------------------------------------------------

#: A provider's status → the contact event reporting it.
CALLBACK_TYPES = {"delivered": "message.delivered", "opened": "message.opened",
                  "clicked": "message.clicked", "bounced": "message.bounced",
                  "complained": "message.bounced", "failed": "message.failed"}


def callback_event(
    payload: Mapping[str, Any], message_id: str, entry: Entry, now: datetime, source: str,
) -> dict[str, Any]:
    """The contact event for one provider report (raises ValueError if it is not one).

    ``payload``: ``status`` (``delivered``, ``opened``, ``clicked``, ``bounced`` with
    ``bounce_type`` ``hard``/``soft``/``complaint``, ``complained``, ``failed``), and
    optionally ``reason``, ``code``, ``url``, ``event_id`` (the provider's id for the
    report), ``at`` (when it happened). The event id is ``<message_id>:<status>``, with
    the provider's event id (or the URL's hash) for the reports that may come many times
    (opens, clicks)."""
    status = str(payload.get("status", ""))
    if status not in CALLBACK_TYPES:
        raise ValueError(f"unknown status {status!r}")
    if not (entry.account and entry.contact_id and entry.channel):
        raise ValueError(f"ledger entry of {message_id} lacks account/contact/channel")
    data: dict[str, Any] = {"message_id": message_id, "channel": entry.channel}
    if entry.provider_id:
        data["provider_id"] = entry.provider_id
    if payload.get("code"):
        data["code"] = str(payload["code"])
    kind = status
    if status in ("bounced", "complained"):
        kind = "bounced"
        bounce = "complaint" if status == "complained" else payload.get("bounce_type", "hard")
        if bounce not in ("hard", "soft", "complaint"):
            raise ValueError(f"unknown bounce_type {bounce!r}")
        data.update(bounce_type=bounce, reason=str(payload.get("reason") or bounce))
    elif status == "failed":
        data.update(reason=str(payload.get("reason") or payload.get("code") or "failed"),
                    provider_accepted=True)
    elif status == "clicked" and payload.get("url"):
        data["url"] = str(payload["url"])
    ident = f"{message_id}:{kind}"
    if kind == "bounced":
        ident += f":{data['bounce_type']}"
    if status in ("opened", "clicked"):
        extra = payload.get("event_id") or hashlib.sha256(
            str(payload.get("url", "")).encode()).hexdigest()[:16]
        ident += f":{extra}"
    at = now
    if payload.get("at"):
        at = datetime.fromisoformat(str(payload["at"]))
        if at.tzinfo is None:
            raise ValueError("at must have a UTC offset")
    return build_event(entry.account, entry.contact_id, CALLBACK_TYPES[status], data,
                       event_id=ident[:256], time=at, source=source)


class Callbacks:
    """Verifies, maps and publishes provider callbacks for one channel.

    ``publish(key, value)`` sends a record to ``<prefix>contact-events`` and returns once
    it is acknowledged. :meth:`handle` answers ``(HTTP status, JSON body)``: 202 published,
    401 bad signature, 400 not a report, 404 a message this ledger does not know."""

    def __init__(self, ledger: Ledger, channel: str, secret: bytes,
                 publish: Callable[[bytes, bytes], Any], now: Callable[[], datetime],
                 source: str, tolerance_s: float = 300) -> None:
        self.ledger, self.channel, self.secret = ledger, channel, secret
        self.publish, self.now, self.source = publish, now, source
        self.tolerance_s = tolerance_s

    async def handle(self, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        now = self.now()
        try:
            verify(self.secret, signature, body, now, self.tolerance_s)
        except SignatureError as exc:
            return 401, {"error": f"signature: {exc}"}
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return 400, {"error": f"body: {exc}"}
        message_id = payload.get("message_id")
        if not message_id and payload.get("provider_id"):
            message_id = await self.ledger.by_provider_id(self.channel,
                                                          str(payload["provider_id"]))
        entry = await self.ledger.get(str(message_id)) if message_id else None
        if entry is None or not message_id:
            return 404, {"error": "unknown message"}
        try:
            event = callback_event(payload, str(message_id), entry, now, self.source)
            value = encode_event(event)
            parse_event(value)
        except (ValueError, Rejected) as exc:
            return 400, {"error": str(exc)}
        await self.publish(entry.contact_id.encode() if entry.contact_id else b"", value)
        return 202, {"event_id": event["id"], "type": event["type"]}


class CallbackServer:
    """``POST /callbacks`` over HTTP (aiohttp), answered by :meth:`Callbacks.handle`;
    TLS is the deployment's (a load balancer in front)."""

    def __init__(self, callbacks: Callbacks, port: int, host: str = "0.0.0.0") -> None:
        self.callbacks, self.port, self.host = callbacks, port, host
        self._runner: Any = None

    async def start(self) -> int:
        """Listen; the port (a free one when ``port`` is 0)."""
        from aiohttp import web

        async def post(request: web.Request) -> web.Response:
            status, answer = await self.callbacks.handle(
                await request.read(), request.headers.get(SIGNATURE_HEADER))
            return web.json_response(answer, status=status)

        app = web.Application()
        app.router.add_post("/callbacks", post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def build_provider(settings: Any, name: str) -> Provider:
    """The reference provider ``name`` (console, file, webhook) from the settings; raises
    ValueError on a missing or invalid setting."""
    if name == "console":
        return ConsoleProvider()
    if name == "file":
        return FileProvider(settings.channel_file, FileFaults.parse(settings.channel_file_faults))
    if name == "webhook":
        if not settings.channel_webhook_url:
            raise ValueError("the webhook provider needs DRIPSTREAM_CHANNEL_WEBHOOK_URL")
        secret = settings.channel_webhook_secret
        ca = settings.channel_webhook_ca_file
        return WebhookProvider(
            settings.channel_webhook_url, secret.get_secret_value().encode() if secret else b"",
            lookup_url=settings.channel_webhook_lookup_url,
            connect_timeout_s=settings.channel_webhook_connect_timeout_s,
            read_timeout_s=settings.channel_webhook_read_timeout_s,
            verify_tls=str(ca) if ca else True,
            allow_http=settings.channel_webhook_allow_http)
    raise ValueError(f"unknown provider {name!r} (console, file, webhook)")
