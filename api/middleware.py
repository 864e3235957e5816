"""The admin API's ASGI middleware, added by :func:`api.app.create_app` (outermost first):

- :class:`Metrics` counts every response by route and status — including the 500 of an
  exception that escapes the app (Starlette's error middleware answers it outside every
  other middleware, so a middleware that waits for a response object never sees it);
- :class:`BodyLimit` answers 413 for a body over the limit, declared or streamed (chunked);
- :class:`JsonOnly` answers 415 for a body under ``/v1`` that is not declared JSON.

Pure ASGI (no ``BaseHTTPMiddleware``): they see the raw messages, so a response is
counted whoever sends it, and a body is measured as it arrives.
"""

from __future__ import annotations

import time
from email.message import Message as MimeMessage

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors

__all__ = ["BodyLimit", "JsonOnly", "Metrics", "is_json"]


class Metrics:
    """``dripstream_api_requests_total{method,route,status}`` and
    ``dripstream_api_request_seconds{method,route}`` in ``registry``."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("dripstream_api_requests", "API requests by route and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "dripstream_api_request_seconds", "API request latency by route",
            ["method", "route"], registry=registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # An exception escaped before any response: the error middleware outside
            # answers 500 (api.errors), so that is what the client gets.
            route = scope.get("route")
            label = getattr(route, "path_format", None) or getattr(route, "path", "unmatched")
            method = scope["method"]
            self.latency.labels(method, label).observe(time.perf_counter() - started)
            self.requests.labels(method, label, str(status or 500)).inc()


class BodyLimit:
    """413 for a body over ``limit`` bytes, whether declared or streamed.

    A streamed body over the limit raises an ``HTTPException`` from ``receive``: FastAPI
    passes that kind on when it parses a body (any other error there becomes its 400),
    and a route that reads the body itself gets the same exception, so every route
    answers the same problem document."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"the body is over {self.limit} bytes"
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await errors.problem_response(413, detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json`` (parameters allowed)."""
    if not content_type:
        return False
    parsed = MimeMessage()
    parsed["content-type"] = content_type
    if parsed.get_content_maintype() != "application":
        return False
    subtype = parsed.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class JsonOnly:
    """415 for a request under ``/v1`` with a body that is not declared JSON.

    FastAPI would read a ``text/plain`` or undeclared body as raw bytes (a 422 that
    blames the body's shape), and a route that parses the body itself would take it as
    JSON; a form-encoded ``curl -d`` is the usual mistake. The dashboard's forms are
    not under ``/v1``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].removeprefix(
                scope.get("root_path", "")).startswith("/v1/"):
            headers = Headers(scope=scope)
            length = headers.get("content-length")
            has_body = "transfer-encoding" in headers or (
                length is not None and length.strip() not in ("", "0"))
            if has_body and not is_json(headers.get("content-type")):
                given = headers.get("content-type") or "none"
                await errors.problem_response(
                    415, f"the body must be JSON: send Content-Type: application/json "
                         f"(got {given[:100]})")(scope, receive, send)
                return
        await self.app(scope, receive, send)
