"""Who is calling: one dependency, :class:`Allow`, on every route.

A caller is a :class:`Principal` — its account, its role and the key (or session) it
came with. :data:`SOURCES` are tried in order; the first that recognises the request
wins. Today there is one, the API key in ``Authorization: Bearer <key>``; the dashboard
adds a session cookie by appending a source (``async (request, services) -> Principal |
None``) to ``app.state.auth_sources`` — nothing else changes, every route keeps its
check.

Keys are ``ds_<key id>_<secret>``: 32 random bytes (256 bits) from :mod:`secrets`. Only
their SHA-256 is stored: a slow password hash (argon2) protects *guessable* secrets, and a
256-bit random one cannot be guessed, so a fast digest is enough (and keeps each request
one indexed lookup). The bootstrap key (``DRIPSTREAM_API_BOOTSTRAP_KEY``) is an admin of
every account.

The check, in order: no credentials or unknown/revoked key → 401; the path's account is
not the principal's → 404 (another tenant's ids answer exactly like ids that do not
exist); role not allowed → 403; over the per-key rate → 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fastapi import Request
from sqlalchemy import select

from api.db import ApiKey
from api.deps import Services
from api.errors import Problem
from streams.events import ACCOUNT_PATTERN

__all__ = ["ADMIN", "EDIT", "INGEST", "OPERATE", "READ", "ROLES", "Allow", "Principal",
           "Role", "bearer_source", "digest", "new_key"]

Role = Literal["viewer", "editor", "operator", "ingest", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "editor", "operator", "ingest", "admin")
#: Who may do what (admin is every role within its account).
READ: frozenset[Role] = frozenset({"viewer", "editor", "operator", "admin"})
EDIT: frozenset[Role] = frozenset({"editor", "admin"})
OPERATE: frozenset[Role] = frozenset({"operator", "admin"})
INGEST: frozenset[Role] = frozenset({"ingest", "admin"})
ADMIN: frozenset[Role] = frozenset({"admin"})

_ACCOUNT = re.compile(ACCOUNT_PATTERN)
#: The bootstrap principal's account: it may act in any.
ANY_ACCOUNT = "*"
#: A key found (or not) is remembered this long: a revoked key stops within it.
_CACHE_S = 5.0


@dataclass(frozen=True)
class Principal:
    account: str
    role: Role
    key_id: str

    def may_see(self, account: str) -> bool:
        return self.account in (account, ANY_ACCOUNT)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, key): the id is public, the key is shown once."""
    key_id = secrets.token_hex(6)
    return key_id, f"ds_{key_id}_{secrets.token_urlsafe(32)}"


Source = Callable[[Request, Services], Awaitable[Principal | None]]
_cache: dict[str, tuple[float, Principal | None]] = {}


def forget_keys() -> None:
    """Drop remembered key lookups (after a revocation in this process)."""
    _cache.clear()


async def bearer_source(request: Request, svc: Services) -> Principal | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    key = key.strip()
    bootstrap = svc.api.bootstrap_key
    if bootstrap is not None and hmac.compare_digest(
            digest(key), digest(bootstrap.get_secret_value())):
        return Principal(ANY_ACCOUNT, "admin", "bootstrap")
    hashed = digest(key)
    now = time.monotonic()
    if (hit := _cache.get(hashed)) is not None and hit[0] > now:
        if hit[1] is None:
            raise Problem(401, "unknown or revoked API key", headers=_CHALLENGE)
        return hit[1]
    async with svc.sessions() as session:
        row = (await session.execute(select(ApiKey).where(ApiKey.digest == hashed))
               ).scalar_one_or_none()
    found = None
    if row is not None and row.revoked_at is None:
        found = Principal(row.account, row.role, row.key_id)  # type: ignore[arg-type]
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[hashed] = (now + _CACHE_S, found)
    if found is None:
        raise Problem(401, "unknown or revoked API key", headers=_CHALLENGE)
    return found


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def authenticate(request: Request, svc: Services) -> Principal:
    sources: list[Source] = getattr(request.app.state, "auth_sources", [bearer_source])
    for source in sources:
        if (principal := await source(request, svc)) is not None:
            return principal
    raise Problem(401, "an API key is required: Authorization: Bearer <key>",
                  headers=_CHALLENGE)


async def rate_limit(svc: Services, principal: Principal, now: datetime) -> None:
    """A fixed window per key in Redis: ``<prefix>api-rate:<key id>:<window number>``."""
    window = svc.api.rate_window_s
    slot = int(now.timestamp()) // window
    key = f"{svc.settings.topic_prefix}api-rate:{principal.key_id}:{slot}"
    async with svc.redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, window + 1)
        count, _ = await pipe.execute()
    if int(count) > svc.api.rate_limit:
        retry = (slot + 1) * window - now.timestamp()
        raise Problem(429, f"over {svc.api.rate_limit} requests per {window} s for this key",
                      headers={"Retry-After": str(max(1, int(retry + 0.999)))})


class Allow:
    """The dependency every route has: ``Annotated[Principal, Depends(Allow(READ))]``."""

    def __init__(self, roles: frozenset[Role]) -> None:
        self.roles = roles

    async def __call__(self, request: Request) -> Principal:
        svc: Services = request.app.state.services
        principal = await authenticate(request, svc)
        account = request.path_params.get("account")
        if account is not None and not (_ACCOUNT.match(account) and principal.may_see(account)):
            raise Problem(404, "not found")  # no such account, or not the caller's
        if principal.role not in self.roles:
            raise Problem(403, f"role {principal.role!r} may not do this "
                               f"(allowed: {', '.join(sorted(self.roles))})")
        await rate_limit(svc, principal, svc.clock())
        request.state.principal = principal
        return principal
