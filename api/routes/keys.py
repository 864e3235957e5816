"""API keys of an account: create (the key is shown once), list, revoke. Admins only —
an account's own admin, or the bootstrap key for any account."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy import select

from api.auth import ADMIN, Allow, Principal, digest, forget_keys, new_key
from api.db import ApiKey
from api.deps import ServicesDep, SessionDep
from api.errors import Problem
from api.schemas import KeyIn, KeyOut

router = APIRouter(prefix="/v1/accounts/{account}/keys", tags=["keys"])
Admin = Annotated[Principal, Depends(Allow(ADMIN))]
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")]
Account = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def _out(row: ApiKey, key: str | None = None) -> KeyOut:
    return KeyOut(key_id=row.key_id, account=row.account, role=row.role,
                  name=row.name, created_at=row.created_at, revoked_at=row.revoked_at,
                  key=key)


@router.post("", status_code=201, response_model=KeyOut, summary="Create an API key")
async def create(account: Account, body: KeyIn, who: Admin, session: SessionDep,
                 svc: ServicesDep) -> KeyOut:
    """The answer holds the key itself, once; only its SHA-256 is stored."""
    key_id, key = new_key()
    row = ApiKey(key_id=key_id, digest=digest(key), account=account, role=body.role,
                 name=body.name, created_at=svc.clock())
    session.add(row)
    await session.commit()
    return _out(row, key)


@router.get("", response_model=list[KeyOut], summary="List the account's API keys")
async def list_(account: Account, who: Admin, session: SessionDep) -> list[KeyOut]:
    rows = (await session.execute(select(ApiKey).where(ApiKey.account == account)
                                  .order_by(ApiKey.created_at, ApiKey.key_id))).scalars()
    return [_out(r) for r in rows]


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke an API key")
async def revoke(account: Account, key_id: KeyId, who: Admin, session: SessionDep,
                 svc: ServicesDep) -> KeyOut:
    """Refused at once by this process; by other replicas within 5 s (their cache)."""
    row = await session.get(ApiKey, key_id)
    if row is None or row.account != account:
        raise Problem(404, f"no key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = svc.clock()
        await session.commit()
    forget_keys()
    return _out(row)
