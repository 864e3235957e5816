"""The webhook provider against a local https receiver (a trustme CA, aiohttp): what it
sends (a signature the receiver can verify, the idempotency key), and how each answer —
or no answer — is classified. No broker."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web

from producers.channel import PermanentError, TransientError
from producers.providers import SIGNATURE_HEADER, WebhookProvider, verify
from streams.commands import SendCommand
from streams.embedded import free_port

SECRET = b"hook-secret"
T0 = datetime.now(UTC)


def command(message_id: str = "msg-w1") -> SendCommand:
    return SendCommand.model_validate({
        "message_id": message_id, "channel": "sms", "account": "acme", "contact_id": "c-1",
        "to": "+14155550101", "body": "hi", "origin": {"kind": "keyword", "keyword": "HELP"},
        "created_at": T0.isoformat(), "expires_at": (T0 + timedelta(hours=1)).isoformat()})


@dataclass
class Receiver:
    """Answers POST /hook with the next of ``answers`` (status, JSON, delay in s);
    GET /lookup/<id> from ``known``."""

    url: str
    lookup_url: str
    ca_file: Path
    answers: list[tuple[int, Any, float]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    known: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    state = Receiver(f"https://127.0.0.1:{port}/hook", f"https://127.0.0.1:{port}/lookup",
                     ca_file)

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        state.requests.append((dict(request.headers), body))
        status, answer, delay = state.answers.pop(0) if state.answers else (200, {}, 0.0)
        if delay:
            await asyncio.sleep(delay)  # a slow receiver, not synchronisation
        return web.json_response(answer, status=status)

    async def lookup(request: web.Request) -> web.Response:
        verify(SECRET, request.headers.get(SIGNATURE_HEADER), b"", datetime.now(UTC))
        found = state.known.get(request.match_info["mid"])
        return web.json_response(found or {}, status=200 if found else 404)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/lookup/{mid}", lookup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def provider(receiver: Receiver) -> AsyncIterator[WebhookProvider]:
    p = WebhookProvider(receiver.url, SECRET, lookup_url=receiver.lookup_url,
                        read_timeout_s=0.5, connect_timeout_s=1.0,
                        verify_tls=str(receiver.ca_file))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_signed_post_with_idempotency_key(receiver: Receiver,
                                                provider: WebhookProvider) -> None:
    """The receiver can verify the signature over the exact body; the idempotency key is
    the message id; a 2xx answer's id becomes the provider id."""
    receiver.answers.append((202, {"id": "wh-1"}, 0.0))
    outcome = await provider.deliver(command())
    assert outcome.status == "sent" and outcome.provider_id == "wh-1"
    headers, body = receiver.requests[0]
    verify(SECRET, headers[SIGNATURE_HEADER], body, datetime.now(UTC))
    with pytest.raises(Exception, match="mismatch"):
        verify(b"another", headers[SIGNATURE_HEADER], body, datetime.now(UTC))
    assert headers["Idempotency-Key"] == "msg-w1"
    assert SendCommand.model_validate_json(body) == command()


@pytest.mark.parametrize(("status", "error", "code"), [
    (429, TransientError, "429"),
    (500, TransientError, "500"),
    (503, TransientError, "503"),
    (400, PermanentError, "400"),
    (422, PermanentError, "422"),
    (301, PermanentError, "301"),  # redirects are not followed
])
async def test_answers_are_classified(receiver: Receiver, provider: WebhookProvider,
                                      status: int, error: type[Exception], code: str) -> None:
    receiver.answers.append((status, {"error": "x"}, 0.0))
    with pytest.raises(error) as caught:
        await provider.deliver(command())
    assert getattr(caught.value, "code", None) == code


async def test_read_timeout_after_sending_is_unknown(receiver: Receiver,
                                                     provider: WebhookProvider) -> None:
    """The request reached the receiver, the answer did not come in time: neither
    transient nor permanent (the SDK treats it as an unknown outcome)."""
    receiver.answers.append((200, {"id": "late"}, 2.0))
    with pytest.raises(httpx.ReadTimeout):
        await provider.deliver(command())
    assert len(receiver.requests) == 1


async def test_connect_failure_is_transient(tmp_path: Path) -> None:
    """Nobody listens: nothing was sent, so it is safe to retry."""
    p = WebhookProvider(f"https://127.0.0.1:{free_port()}/hook", SECRET)
    await p.start()
    try:
        with pytest.raises(TransientError, match="connect"):
            await p.deliver(command())
    finally:
        await p.close()


async def test_untrusted_certificate_is_refused(receiver: Receiver) -> None:
    """Without the receiver's CA the TLS handshake fails before anything is sent."""
    p = WebhookProvider(receiver.url, SECRET)
    await p.start()
    try:
        with pytest.raises(TransientError):
            await p.deliver(command())
    finally:
        await p.close()
    assert receiver.requests == []


async def test_lookup(receiver: Receiver, provider: WebhookProvider) -> None:
    assert provider.can_lookup
    assert await provider.lookup(command("msg-none")) is None
    receiver.known["msg-yes"] = {"status": "sent", "id": "wh-7"}
    receiver.known["msg-no"] = {"status": "failed", "code": "21610", "reason": "blocked"}
    found = await provider.lookup(command("msg-yes"))
    assert found is not None and found.status == "sent" and found.provider_id == "wh-7"
    failed = await provider.lookup(command("msg-no"))
    assert failed is not None and failed.status == "failed" and failed.code == "21610"
