"""Definitions in the database: every change a new version row plus its outbox row, in
one transaction (the transactional outbox; :mod:`api.relay` publishes the outbox).

Versions are numbered by the store: the next is the live one plus 1 (or past the newest
the definitions topic holds, ``topic_version``: a version ``dripstream define`` published
that :mod:`api.projection` has not written here yet), and a body that names a
``version`` must name exactly that one (an optimistic check: two editors who both read v3
cannot both write v4). The definitions topic is the record the workers run; the store
is its projection plus the versions this API wrote, so a row is changed only when the
topic contradicts it (:mod:`api.projection`: another publisher's body won that version).

The outbox row holds the very bytes ``producers.admin.publish_definition`` writes: the
key ``<kind>:<account>:<id>:<version>`` and the validated model's JSON.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.db import DefinitionVersion, Outbox
from api.errors import Problem
from streams.definitions import (
    DEFAULT_MIN_INTERVAL,
    DefinitionError,
    definition_key,
    parse_any,
    parse_duration,
)
from tables.compliance import default_policy

__all__ = ["FaultPlan", "history", "list_live", "live", "policy", "write"]

POLICY_ID = "policy"

#: Not a shadow version (docs/simulation.md): the versions that can be live.
NOT_SHADOW = func.coalesce(DefinitionVersion.body["shadow"].as_boolean(), False).is_(False)


class FaultPlan:
    """``DRIPSTREAM_API_FAULT=after_commit:N``: SIGKILL this process right after the Nth
    definition commit, before the relay can publish it (tests of the outbox)."""

    def __init__(self, spec: str | None) -> None:
        self.at = int(spec.split(":")[1]) if spec else None
        self.commits = 0

    def committed(self) -> None:
        self.commits += 1
        if self.at is not None and self.commits == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


async def live(session: AsyncSession, *, account: str, kind: str, def_id: str
               ) -> DefinitionVersion | None:
    """The live version (the newest that is not a shadow), or None."""
    found: DefinitionVersion | None = (await session.execute(
        select(DefinitionVersion)
        .where(DefinitionVersion.account == account, DefinitionVersion.kind == kind,
               DefinitionVersion.def_id == def_id, NOT_SHADOW)
        .order_by(DefinitionVersion.version.desc()).limit(1))).scalar_one_or_none()
    return found


async def newest_version(session: AsyncSession, *, account: str, kind: str, def_id: str
                         ) -> int:
    """The newest version held, a shadow's too (0: none)."""
    found = (await session.execute(
        select(func.max(DefinitionVersion.version))
        .where(DefinitionVersion.account == account, DefinitionVersion.kind == kind,
               DefinitionVersion.def_id == def_id))).scalar_one_or_none()
    return int(found or 0)


async def history(session: AsyncSession, *, account: str, kind: str, def_id: str
                  ) -> list[DefinitionVersion]:
    return list((await session.execute(
        select(DefinitionVersion)
        .where(DefinitionVersion.account == account, DefinitionVersion.kind == kind,
               DefinitionVersion.def_id == def_id)
        .order_by(DefinitionVersion.version))).scalars())


async def list_live(session: AsyncSession, *, account: str, kind: str,
                    after: str | None, limit: int) -> tuple[list[DefinitionVersion], str | None]:
    """The live version of each definition of a kind, by id; (page, next cursor)."""
    newest = (select(DefinitionVersion.def_id, func.max(DefinitionVersion.version).label("v"))
              .where(DefinitionVersion.account == account, DefinitionVersion.kind == kind,
                     NOT_SHADOW)
              .group_by(DefinitionVersion.def_id).subquery())
    query = (select(DefinitionVersion)
             .join(newest, (DefinitionVersion.def_id == newest.c.def_id)
                   & (DefinitionVersion.version == newest.c.v))
             .where(DefinitionVersion.account == account, DefinitionVersion.kind == kind)
             .order_by(DefinitionVersion.def_id).limit(limit + 1))
    if after is not None:
        query = query.where(DefinitionVersion.def_id > after)
    rows = list((await session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].def_id if more and rows else None)


async def policy(session: AsyncSession, account: str) -> dict[str, Any]:
    """The account's live policy, or the defaults (as the workers use)."""
    row = await live(session, account=account, kind="account", def_id=POLICY_ID)
    return row.body if row is not None else default_policy(account)


async def write(
    session: AsyncSession, *, account: str, kind: str, def_id: str, body: dict[str, Any],
    create: bool, actor: str, now: datetime, faults: FaultPlan | None = None,
    topic_version: int = 0,
) -> DefinitionVersion:
    """Validate ``body`` as the next version of ``kind`` ``def_id`` and commit it with its
    outbox record. ``create``: it must not exist yet (409 if it does); otherwise it must
    (404 if not), except an account policy, which always exists (the defaults).
    ``topic_version``: the newest version the definitions topic holds (0: none)."""
    newest = max(await newest_version(session, account=account, kind=kind, def_id=def_id),
                 topic_version)
    if create and newest:
        raise Problem(409, f"{kind} {def_id!r} exists (v{newest}): PUT a new version")
    if not create and not newest and kind != "account":
        raise Problem(404, f"no {kind} {def_id!r}")
    version = newest + 1
    if "version" in body and body["version"] != version:
        raise Problem(409, f"version {body['version']!r} is not the next version ({version})",
                      type_="version-conflict")
    for field, expected in (("account", account), ("kind", kind)):
        if field in body and body[field] != expected:
            raise DefinitionError([f"{field}: must be {expected!r} (from the URL)"])
    raw: dict[str, Any] = {**body, "kind": kind, "account": account, "version": version}
    if kind != "account":
        if "id" in body and body["id"] != def_id:
            raise DefinitionError([f"id: must be {def_id!r} (from the URL)"])
        raw["id"] = def_id
    interval = DEFAULT_MIN_INTERVAL
    if kind == "campaign":
        interval = parse_duration((await policy(session, account))["campaign_min_interval"])
    parsed = parse_any(raw, interval)
    value = parsed.model_dump(mode="json")
    row = DefinitionVersion(account=account, kind=kind, def_id=def_id, version=version,
                            body=value, created_at=now, created_by=actor)
    session.add(row)
    session.add(Outbox(topic_suffix="definitions", key=definition_key(parsed).encode(),
                       value=orjson.dumps(value), created_at=now))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Problem(409, f"{kind} {def_id!r} v{version} was written meanwhile: read it "
                           "and try again", type_="version-conflict") from None
    if faults is not None:
        faults.committed()
    return row
