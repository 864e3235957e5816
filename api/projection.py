"""The admin API's view of the definitions topic, projected into its store.

The ``<prefix>definitions`` topic is the record the workers run (``tables/registry.py``:
the first record of a key ``<kind>:<account>:<id>:<version>`` wins). The API follows it
as every worker does — :class:`Projection` *is* a :class:`~tables.registry.Registry` —
and after each fetch brings its store in line with it:

- a version the store does not have (published by ``dripstream define``, or by another
  tool) becomes a row: ``created_by`` is the record's ``dripstream.by`` header (``cli:…``,
  or ``topic`` without one), ``created_at`` its broker time. The lists, versions,
  campaign routes and the dashboard then show every definition, whoever published it;
- a row the topic contradicts (this API committed a version whose outbox record lost
  its key to another publisher's record) is rewritten to the body the workers run, and
  its outbox record, if still pending, is dropped;
- a record that lost its key and came *after* the winner is followed by the winner's
  body again (compaction keeps a key's last record; without that a compacted topic
  would one day hand new workers the loser).

:func:`write` is the definition routes' write: the store's checks against the store and
this projection, the commit with its outbox record, then a read-back — it waits until the
projection has seen its key on the topic and answers 409 if the body that won is not its
own. Campaign status comes from the projection too (:func:`status_of`): controls published
with ``dripstream campaign pause`` count as the API's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api import store
from api.db import DefinitionVersion, Outbox
from api.errors import Problem
from producers.admin import BY_HEADER
from streams.capabilities import Capabilities
from streams.settings import Settings
from tables.registry import Registry

__all__ = ["READ_BACK_S", "Projection", "projection", "write"]

log = logging.getLogger(__name__)

#: How long a write waits for its record to come back from the topic (the relay and
#: the broker are down past it: 503, the row stays and is published when they are back).
READ_BACK_S = 15.0


def _parts(key: str) -> tuple[str, str, str, int] | None:
    """A definition version's key → (kind, account, id, version); None for a campaign
    control's key (not versioned)."""
    parts = key.split(":")
    if len(parts) != 4 or parts[0] == "campaign_control" or not parts[3].isdigit():
        return None
    return parts[0], parts[1], parts[2], int(parts[3])


class Projection(Registry):
    """A registry of the definitions topic that writes what it reads into the store."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], producer: AIOKafkaProducer,
                 topic_prefix: str, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.sessions = sessions
        self.producer = producer
        self.topic = f"{topic_prefix}definitions"
        self.clock = clock
        #: key → (created_by, created_at) of its first record, until the store has it.
        self._pending: dict[str, tuple[str, datetime]] = {}
        #: Keys whose newest record is not the body the workers run (to re-publish).
        self._losers: set[str] = set()
        #: key → the body the workers run, once the store agrees (the read-back's answer).
        self.projected: dict[str, dict[str, Any]] = {}

    def apply_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        refused = self.refused
        super().apply_record(record)
        key = (record.key or b"").decode(errors="replace")
        if record.value is None or _parts(key) is None:
            return
        if self.refused != refused:
            self._losers.add(key)
        else:  # the first record, a repeat of it, or a re-published winner
            self._losers.discard(key)
        if key not in self.projected and key not in self._pending:
            by = dict(record.headers or ()).get(BY_HEADER, b"topic").decode(errors="replace")
            self._pending[key] = (by[:64], datetime.fromtimestamp(record.timestamp / 1000, UTC))

    async def batch_applied(self) -> None:
        if self._pending:
            try:
                await self._project()
            except Exception:  # the store is away: the keys stay pending, tried next fetch
                log.exception("projecting %d definition versions into the store failed; "
                              "retrying", len(self._pending))
        if self._losers and self.ready.is_set():
            await self._republish()

    async def _project(self) -> None:
        done: dict[str, dict[str, Any]] = {}
        async with self.sessions() as session:
            for key, (by, at) in list(self._pending.items()):
                found = _parts(key)
                assert found is not None
                kind, account, ident, version = found
                body = self.versions(kind, account, ident).get(version)
                if body is None:  # invalid, or a tombstone followed: nothing to show
                    del self._pending[key]
                    continue
                row = (await session.execute(select(DefinitionVersion).where(
                    DefinitionVersion.account == account, DefinitionVersion.kind == kind,
                    DefinitionVersion.def_id == ident, DefinitionVersion.version == version,
                ))).scalar_one_or_none()
                if row is None:
                    session.add(DefinitionVersion(
                        account=account, kind=kind, def_id=ident, version=version, body=body,
                        created_at=at, created_by=by))
                elif row.body != body:
                    log.warning("%s: the store's body lost the topic to another publisher's; "
                                "the store now shows the one the workers run", key)
                    row.body, row.created_by, row.created_at = body, by, at
                    await session.execute(
                        update(Outbox).where(Outbox.key == key.encode(),
                                             Outbox.relayed_at.is_(None))
                        .values(relayed_at=self.clock()))
                done[key] = body
            try:
                await session.commit()
            except IntegrityError:  # a route wrote the same version meanwhile: compare again
                await session.rollback()
                return
        for key, body in done.items():
            self._pending.pop(key, None)
            self.projected[key] = body

    async def _republish(self) -> None:
        for key in sorted(self._losers):
            found = _parts(key)
            assert found is not None
            body = self.versions(found[0], found[1], found[2]).get(found[3])
            if body is not None:
                try:
                    await self.producer.send_and_wait(self.topic, key=key.encode(),
                                                      value=orjson.dumps(body))
                except Exception:  # the broker is away: tried again after the next fetch
                    log.exception("re-publishing the body the workers run for %s failed", key)
                    return
                log.warning("%s: a later record with another body was on the topic; "
                            "re-published the one the workers run", key)
            self._losers.discard(key)

    async def run(self, settings: Settings, capabilities: Capabilities | None = None) -> None:
        """Follow the topic for as long as the API runs (started again after an error:
        re-reading from the start applies nothing twice)."""
        while True:
            try:
                await self.follow(settings, self.topic, capabilities,
                                  read_committed=bool(capabilities and capabilities.transactions))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following %s failed; starting again", self.topic)
                await asyncio.sleep(1.0)


def projection(svc: Any) -> Projection:
    found: Projection = svc.extra["projection"]
    return found


async def ready(svc: Any) -> Projection:
    """The projection, once it has read the topic to its end (else 503)."""
    view = projection(svc)
    try:
        await asyncio.wait_for(view.ready.wait(), READ_BACK_S)
    except TimeoutError:
        raise Problem(503, f"the definitions topic could not be read within "
                           f"{READ_BACK_S:.0f} s (is the broker up?)") from None
    return view


async def write(svc: Any, session: AsyncSession, *, account: str, kind: str, def_id: str,
                body: dict[str, Any], create: bool, actor: str) -> DefinitionVersion:
    """:func:`api.store.write` against the store and the topic's newest version, then the
    read-back: 409 if another publisher's body won this version (the store then shows
    that one), 503 if the record did not come back in time (the row stays and the relay
    publishes it once the broker answers)."""
    view = await ready(svc)
    row = await store.write(session, account=account, kind=kind, def_id=def_id, body=body,
                            create=create, actor=actor, now=svc.clock(),
                            faults=svc.extra.get("faults"),
                            topic_version=max(view.versions(kind, account, def_id), default=0))
    svc.wake_relay()
    key = f"{kind}:{account}:{def_id}:{row.version}"
    if not await view.wait_for(lambda: key in view.projected, READ_BACK_S):
        raise Problem(503, f"{kind} {def_id!r} v{row.version} is stored but was not seen on "
                           f"the definitions topic within {READ_BACK_S:.0f} s (is the broker "
                           "up?): it is published when it can be; GET it to see it live")
    if view.projected[key] != row.body:
        newest = max(view.versions(kind, account, def_id))
        raise Problem(409, f"{kind} {def_id!r} v{row.version} was published meanwhile by "
                           "another publisher with another body, which the workers run: "
                           f"yours is refused; read it and PUT your change as v{newest + 1}",
                      type_="version-conflict")
    return row


async def status_of(svc: Any, account: str, campaign_id: str) -> str:
    """``cancelled`` (final), ``paused`` or ``running``: the controls on the topic, as
    the workers apply them (from the API or ``dripstream campaign``)."""
    return (await ready(svc)).campaign_status(account, campaign_id)
