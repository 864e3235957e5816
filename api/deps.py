"""What every route needs, built once by :func:`api.app.create_app` and reached through
``Annotated`` aliases: ``ServicesDep`` (settings, store, producer, publisher, read model)
and ``SessionDep`` (one database session per request)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api import store
from api.settings import ApiSettings
from producers.publisher import Publisher
from streams.settings import Settings
from tables.readmodel import ReadModel
from tables.registry import Suppressions

__all__ = ["POLICY_CACHE_S", "Services", "ServicesDep", "SessionDep", "services"]

#: How long a replica may serve an account policy another replica changed.
POLICY_CACHE_S = 5.0


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
    #: account -> (until, live policy): the contact route reads the policy's cap limits on
    #: every call; a store query each time was a fifth of its cost. This process forgets
    #: an account's entry when it writes the policy; other replicas within POLICY_CACHE_S.
    policies: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    #: Held by the journey lab's run (``api.routes.simulations``): one at a time per
    #: process, since each holds its window's whole log in memory.
    simulating: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def policy(self, account: str) -> dict[str, Any]:
        """The account's live policy (or the defaults), remembered for a few seconds."""
        now = time.monotonic()
        if (hit := self.policies.get(account)) is not None and hit[0] > now:
            return hit[1]
        async with self.sessions() as session:
            found = await store.policy(session, account)
        if len(self.policies) > 10_000:
            self.policies.clear()
        self.policies[account] = (now + POLICY_CACHE_S, found)
        return found


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


async def _session(svc: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with svc.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]
