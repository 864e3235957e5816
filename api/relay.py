"""The outbox relay: publishes committed outbox rows to their topic, in commit order.

Each pass takes the oldest unrelayed rows, produces them (acks=all), waits for every
acknowledgement and only then marks them relayed, in one transaction. On PostgreSQL a
transaction-scoped advisory lock keeps a second API replica's relay from interleaving.

A crash between a produce and the mark re-publishes the same rows on the next pass. That
is harmless: ``<prefix>definitions`` is compacted and keyed per definition *version*
(``workflow:acme:welcome:3``), the same key and the very same bytes are written again,
compaction keeps one of them, and the workers' registry applies a version it already
holds with an identical value as a no-op. A *changed* value under a known version is
refused by the registry: the outbox holds one only when another publisher's record took
that version first, and :mod:`api.projection` then marks it relayed unpublished (or, if
this relay got there in between, publishes the winner after it). A campaign keeps the
timestamp of its first record (``setdefault``), so a re-publish does not move its
schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from aiokafka import AIOKafkaProducer
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.db import Outbox

__all__ = ["Relay"]

log = logging.getLogger(__name__)
_LOCK = 0x64726970  # "drip"
_BATCH = 200


class Relay:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], producer: AIOKafkaProducer,
                 topic_prefix: str, clock: Callable[[], datetime], interval_s: float) -> None:
        self.sessions = sessions
        self.producer = producer
        self.prefix = topic_prefix
        self.clock = clock
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self.relayed = 0

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish and mark one batch of pending rows; how many."""
        async with self.sessions() as session, session.begin():
            if self.sessions.kw["bind"].dialect.name == "postgresql":
                locked = await session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                              {"k": _LOCK})
                if not locked:
                    return 0
            rows = list((await session.execute(
                select(Outbox).where(Outbox.relayed_at.is_(None)).order_by(Outbox.pk)
                .limit(_BATCH))).scalars())
            if not rows:
                return 0
            futures = [await self.producer.send(self.prefix + row.topic_suffix, key=row.key,
                                                value=row.value) for row in rows]
            for future in futures:
                await future
            await session.execute(update(Outbox).where(Outbox.pk.in_([r.pk for r in rows]))
                                  .values(relayed_at=self.clock()))
        self.relayed += len(rows)
        return len(rows)

    async def run(self) -> None:
        """Forever: relay what is pending; then wait to be woken or for the interval."""
        while True:
            self._wake.clear()  # before the pass: a commit during it wakes the next one
            try:
                while await self.relay_once() == _BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker or the database is away: try again later
                log.exception("outbox relay failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def pending(self) -> int:
        async with self.sessions() as session:
            rows = await session.execute(select(Outbox.pk).where(Outbox.relayed_at.is_(None)))
            return len(rows.all())
