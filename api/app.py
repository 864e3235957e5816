"""The admin API: ``create_app(settings, api_settings)`` builds the FastAPI app.

Start-up (the lifespan) runs the migrations, connects the store, Redis, the broker, and
starts three tasks: the outbox relay (:mod:`api.relay`), the projection of the
definitions topic into the store (:mod:`api.projection`) and a follower of the
suppressions topic (the list's reads). Everything is under ``/v1``; the OpenAPI schema is
``/openapi.json`` (docs at ``/docs``); Prometheus metrics at ``/metrics``; the HTML
dashboard at ``/dashboard`` (:mod:`api.dashboard`). Every error
is ``application/problem+json`` (:mod:`api.errors`). The middleware around the routes
(metrics, body limit, JSON bodies only) is :mod:`api.middleware`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis

from api import dashboard, errors, preference_page
from api.auth import bearer_source
from api.db import connect, migrate
from api.deps import Services
from api.middleware import BodyLimit, JsonOnly, Metrics
from api.paths import ContactSegment
from api.projection import Projection
from api.relay import Relay
from api.routes import campaigns, contacts, events, keys, observe, simulations, suppressions
from api.routes.definitions import definition_router, policy_router
from api.settings import ApiSettings
from api.store import FaultPlan
from producers.publisher import Publisher
from streams.capabilities import probe
from streams.settings import Settings
from tables.readmodel import ReadModel
from tables.registry import Suppressions

__all__ = ["create_app"]

_PROBLEM_SCHEMA = {"type": "object", "required": ["type", "title", "status", "detail"],
                   "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                  "status": {"type": "integer"},
                                  "detail": {"type": "string"},
                                  "errors": {"type": "array", "items": {"type": "object"}}}}
_PROBLEM = {"content": {errors.PROBLEM: {"schema": _PROBLEM_SCHEMA}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, **_PROBLEM} for status, text in (
        (400, "malformed request"), (401, "no or unknown API key"),
        (403, "the key's role may not do this"),
        (404, "not found (also: another account's)"), (409, "conflict"),
        (413, "body or batch too large"), (415, "the body is not JSON"),
        (422, "invalid request or definition"),
        (429, "rate limit (Retry-After)"),
        (503, "the broker or store is unavailable"))}


def _metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings | None = None, api_settings: ApiSettings | None = None, *,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> FastAPI:
    """The API for one deployment; ``clock`` is injected (tests)."""
    settings = settings or Settings()
    api = api_settings or ApiSettings()
    if api.bootstrap_key is None and not api.dev:
        raise RuntimeError("DRIPSTREAM_API_BOOTSTRAP_KEY is required outside `dripstream "
                           "dev` (the admin key that creates every other key)")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, api.database_url)
        engine, sessions = connect(api.database_url)
        redis = Redis.from_url(settings.redis_url)
        capabilities = await probe(settings)  # what the broker can do, asked once
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                    **settings.kafka_security())
        publisher = Publisher(settings.bootstrap_servers, topic_prefix=settings.topic_prefix,
                              idempotence=capabilities.idempotence,
                              **settings.kafka_security())
        await producer.start()
        await publisher.__aenter__()
        relay = Relay(sessions, producer, settings.topic_prefix, clock, api.relay_interval_s)
        view = Projection(sessions, producer, settings.topic_prefix, clock)
        svc = Services(settings=settings, api=api, engine=engine, sessions=sessions,
                       redis=redis, read_model=ReadModel(redis, settings.topic_prefix),
                       producer=producer, publisher=publisher, suppressions=Suppressions(),
                       clock=clock, wake_relay=relay.wake,
                       extra={"faults": FaultPlan(api.fault), "relay": relay,
                              "projection": view})
        app.state.services = svc
        tasks = [asyncio.create_task(relay.run(), name="outbox-relay"),
                 asyncio.create_task(view.run(settings, capabilities),
                                     name="definitions-projection"),
                 asyncio.create_task(svc.suppressions.follow(
                     settings, f"{settings.topic_prefix}suppressions", capabilities,
                     read_committed=capabilities.transactions), name="suppressions")]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.__aexit__(None, None, None)
            await producer.stop()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(title="dripstream admin API", version="1", lifespan=lifespan,
                  responses=RESPONSES,
                  description="Definitions, events, contacts, executions and campaigns of "
                              "dripstream accounts (docs/api.md).")
    app.state.auth_sources = [bearer_source]
    errors.install(app)
    for kind, plural in (("workflow", "workflows"), ("keyword", "keywords")):
        app.include_router(definition_router(kind, plural))
    app.include_router(policy_router())
    app.include_router(definition_router("campaign", "campaigns"))
    for module in (campaigns, contacts, events, keys, suppressions, observe, simulations):
        app.include_router(module.router)
    app.include_router(simulations.shadow_router)
    dashboard.mount(app)  # /dashboard (docs/dashboard.md): a session cookie as an auth source
    app.include_router(preference_page.router)  # /preferences/{token}: a signed link
    registry = CollectorRegistry()
    _metrics_route(app, registry)
    # Added innermost first: Metrics ends up outermost, so it counts the answers of the
    # others too.
    app.add_middleware(ContactSegment)
    app.add_middleware(JsonOnly)
    app.add_middleware(BodyLimit, limit=api.max_body_bytes)
    app.add_middleware(Metrics, registry=registry)
    return app
