"""Dashboard sessions: a cookie that stands for an API key, and the CSRF tokens of its forms.

Logging in with a key (``POST /dashboard/login``) checks it exactly as a request with
``Authorization: Bearer <key>`` is checked (:func:`api.auth.bearer_source`), then stores
a random session id in Redis — ``<prefix>dash-session:<id>`` → ``{key_id, account, csrf,
bootstrap}`` with a TTL of :data:`TTL_S` — and sets it as an HttpOnly, SameSite=Lax
cookie (Secure when the request came over https). Logging out deletes the Redis entry.

:func:`session_source` is an auth source (``app.state.auth_sources``): it turns the
cookie back into the key's :class:`Principal` on every request — the key's row is read
each time (no cache), so a revoked key ends its sessions at once, on every replica. It
answers only under ``/dashboard``: the JSON routes under ``/v1`` check no CSRF token, so
a cookie must not authorise them.

CSRF: each session has its own token, put in a hidden field of every dashboard form and
compared on POST (:func:`check_csrf`; a mismatch is 403). The login form, before any
session exists, uses a double-submit cookie (``dripstream_login_csrf``) instead.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import asdict, dataclass
from urllib.parse import parse_qs

import orjson
from fastapi import Request
from fastapi.responses import Response

from api.auth import ANY_ACCOUNT, Principal, bearer_source, digest
from api.db import ApiKey
from api.deps import Services
from api.errors import Problem

__all__ = ["COOKIE", "LOGIN_COOKIE", "PREFIX", "TTL_S", "Session", "check_csrf", "create",
           "delete", "form", "key_principal", "load", "session_source", "set_cookie"]

#: The dashboard's mount point: the only paths a session cookie authorises.
PREFIX = "/dashboard"
COOKIE = "dripstream_session"
LOGIN_COOKIE = "dripstream_login_csrf"
#: A session lasts this long from its login (not extended by use).
TTL_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    sid: str
    key_id: str
    #: The account the dashboard shows (the key's, or the one chosen with the bootstrap key).
    account: str
    csrf: str
    #: The digest of the bootstrap key it was opened with ("" for stored keys): a changed
    #: bootstrap key ends its sessions.
    bootstrap: str = ""


def _key(svc: Services, sid: str) -> str:
    return f"{svc.settings.topic_prefix}dash-session:{sid}"


async def key_principal(svc: Services, key: str) -> Principal | None:
    """The key's principal, checked by the same code as a Bearer header (None: unknown or
    revoked)."""
    scope = {"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]}
    try:
        return await bearer_source(Request(scope), svc)
    except Problem as exc:
        if exc.status == 401:
            return None
        raise


async def create(svc: Services, principal: Principal, account: str, key: str) -> Session:
    session = Session(
        sid=secrets.token_urlsafe(32), key_id=principal.key_id, account=account,
        csrf=secrets.token_urlsafe(32),
        bootstrap=digest(key) if principal.account == ANY_ACCOUNT else "")
    await svc.redis.set(_key(svc, session.sid), orjson.dumps(asdict(session)), ex=TTL_S)
    return session


async def load(svc: Services, sid: str | None) -> Session | None:
    if not sid or len(sid) > 128:
        return None
    raw = await svc.redis.get(_key(svc, sid))
    return None if raw is None else Session(**orjson.loads(raw))


async def delete(svc: Services, sid: str) -> None:
    await svc.redis.delete(_key(svc, sid))


async def _principal(svc: Services, session: Session) -> Principal | None:
    """The session's key as it is now: None once revoked (or the bootstrap key changed)."""
    if session.bootstrap:
        current = svc.api.bootstrap_key
        if current is None or not hmac.compare_digest(
                session.bootstrap, digest(current.get_secret_value())):
            return None
        return Principal(ANY_ACCOUNT, "admin", session.key_id)
    async with svc.sessions() as db:
        row = await db.get(ApiKey, session.key_id)
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.account, row.role, row.key_id)  # type: ignore[arg-type]


async def session_source(request: Request, svc: Services) -> Principal | None:
    """The auth source of the dashboard's cookie; the session is left on
    ``request.state.dash_session`` for the pages (their forms' CSRF token)."""
    if not request.url.path.startswith(PREFIX):
        return None
    session = await load(svc, request.cookies.get(COOKIE))
    if session is None:
        return None
    principal = await _principal(svc, session)
    if principal is None:
        await delete(svc, session.sid)
        return None
    request.state.dash_session = session
    return principal


def set_cookie(response: Response, request: Request, name: str, value: str,
               max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")


async def form(request: Request) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (first value of each)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
            "application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def check_csrf(request: Request, fields: dict[str, str]) -> Session:
    """The request's session if the form's ``csrf`` field is its token; else 403."""
    session: Session | None = getattr(request.state, "dash_session", None)
    if session is None:
        raise Problem(403, "dashboard forms need a dashboard session (log in)")
    if not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
        raise Problem(403, "the form's CSRF token is missing or wrong (reload the page)")
    return session
