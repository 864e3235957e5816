"""An account's suppression list (``<prefix>suppressions``, compacted, key
``<account>:<address>``): add, lift, look up, list. Writes go through
:func:`producers.admin.suppress`; reads come from the API's own follower of the topic,
so a write shows a moment later (as on every worker). Lifting removes only a suppression
of the same reason: a STOP (``opted_out``) is not lifted by removing a ``manual`` one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from api.auth import OPERATE, READ, Allow, Principal
from api.deps import ServicesDep
from api.errors import Problem
from api.schemas import Accepted, Cursor, Limit, Page, SuppressionIn
from producers.admin import suppress

router = APIRouter(prefix="/v1/accounts/{account}/suppressions", tags=["suppressions"])
Reader = Annotated[Principal, Depends(Allow(READ))]
Operator = Annotated[Principal, Depends(Allow(OPERATE))]
Address = Annotated[str, Path(min_length=3, max_length=254)]
Reason = Annotated[str, Query(pattern=r"^(manual|opted_out|bounced|complained)$")]


@router.post("", status_code=202, response_model=Accepted, summary="Suppress an address")
async def add(account: str, body: SuppressionIn, who: Operator, svc: ServicesDep) -> Accepted:
    await suppress(svc.producer, svc.settings.topic_prefix, account, body.address,
                   body.reason)
    return Accepted(detail=f"suppressed {body.address} ({body.reason})")


@router.delete("/{address}", status_code=202, response_model=Accepted,
               summary="Lift a suppression")
async def lift(account: str, address: Address, who: Operator, svc: ServicesDep,
               reason: Reason = "manual") -> Accepted:
    await suppress(svc.producer, svc.settings.topic_prefix, account, address, reason,
                   remove=True)
    return Accepted(detail=f"lifted {address} ({reason})")


@router.get("/{address}", summary="Whether an address is suppressed, and why")
async def show(account: str, address: Address, who: Reader, svc: ServicesDep
               ) -> dict[str, Any]:
    reason = svc.suppressions.reason(account, address)
    if reason is None:
        raise Problem(404, f"{address} is not suppressed")
    return {"address": address, "reason": reason}


@router.get("", response_model=Page, summary="The account's suppressed addresses")
async def list_(account: str, who: Reader, svc: ServicesDep, limit: Limit = 50,
                cursor: Cursor = None) -> Page:
    found = sorted(svc.suppressions.listing(account).items())
    if cursor is not None:
        found = [f for f in found if f[0] > cursor]
    page = found[:limit]
    return Page(items=[{"address": a, "reason": r} for a, r in page],
                next_cursor=page[-1][0] if len(found) > limit else None)
