"""What every route needs, built once by :func:`api.app.create_app` and reached through
``Annotated`` aliases: ``ServicesDep`` (settings, store, producer, publisher, read model)
and ``SessionDep`` (one database session per request)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.settings import ApiSettings
from producers.publisher import Publisher
from streams.settings import Settings
from tables.readmodel import ReadModel
from tables.registry import Suppressions

__all__ = ["Services", "ServicesDep", "SessionDep", "services"]


@dataclass
class Services:
    settings: Settings
    api: ApiSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    read_model: ReadModel
    producer: AIOKafkaProducer
    publisher: Publisher
    suppressions: Suppressions
    clock: Callable[[], datetime]
    #: Set after each outbox commit: the relay publishes at once instead of at its tick.
    wake_relay: Callable[[], None] = lambda: None
    extra: dict[str, Any] = field(default_factory=dict)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


async def _session(svc: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with svc.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]
