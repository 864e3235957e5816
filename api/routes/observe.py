"""What the workers report, per account: a workflow's executions (status filter, cursor
pages) and their counts per status and per step, the newest audit records and dead
letters (filtered by reason), per-minute stats, and the input lag.

These read the read model's indexes that the worker-side read model adds
(``ReadModel.list_executions``, ``execution_counts``, ``step_counts``, ``stats``,
``recent_audit``, ``recent_dead_letters``, ``lag``); :class:`Observed` names the methods
this module relies on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, cast

from fastapi import APIRouter, Depends, Path, Query

from api.auth import READ, Allow, Principal
from api.deps import Services, ServicesDep
from api.errors import Problem
from api.schemas import Cursor, Limit, Page

router = APIRouter(prefix="/v1/accounts/{account}", tags=["observe"])
Reader = Annotated[Principal, Depends(Allow(READ))]
WorkflowId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Status = Literal["running", "waiting", "paused", "completed", "cancelled", "failed"]
Reason = Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+$")]
Recent = Annotated[int, Query(ge=1, le=200)]


class Observed(Protocol):
    async def list_executions(self, account: str, workflow_id: str, status: str | None = None,
                              cursor: str | None = None, limit: int = 50
                              ) -> tuple[list[dict[str, Any]], str | None]: ...
    async def execution_counts(self, account: str, workflow_id: str) -> dict[str, int]: ...
    async def step_counts(self, account: str, workflow_id: str) -> dict[str, int]: ...
    async def stats(self, account: str, now: datetime, minutes: int = 60
                    ) -> list[dict[str, Any]]: ...
    async def recent_audit(self, account: str, reason: str | None = None, limit: int = 100
                           ) -> list[dict[str, Any]]: ...
    async def recent_dead_letters(self, account: str, reason: str | None = None,
                                  limit: int = 100) -> list[dict[str, Any]]: ...


def _model(svc: Services) -> Observed:
    """The read model, if it has the indexes (501 while this build's does not)."""
    if not hasattr(svc.read_model, "list_executions"):
        raise Problem(501, "this build's read model has no execution index yet",
                      type_="not-implemented")
    return cast(Observed, svc.read_model)


@router.get("/workflows/{workflow_id}/executions", response_model=Page,
            summary="A workflow's executions")
async def workflow_executions(account: str, workflow_id: WorkflowId, who: Reader,
                              svc: ServicesDep,
                              status: Annotated[Status | None, Query()] = None,
                              limit: Limit = 50, cursor: Cursor = None) -> Page:
    """Newest started first: contact, execution, status, step, start."""
    try:
        items, after = await _model(svc).list_executions(account, workflow_id, status,
                                                         cursor, limit)
    except ValueError as exc:
        raise Problem(422, str(exc), errors=[{"loc": ["query", "cursor"], "msg": str(exc)}]
                      ) from None
    return Page(items=items, next_cursor=after)


@router.get("/workflows/{workflow_id}/counts", summary="A workflow's executions per status "
                                                      "and per step")
async def workflow_counts(account: str, workflow_id: WorkflowId, who: Reader,
                          svc: ServicesDep) -> dict[str, Any]:
    """``statuses``: every status; ``steps``: executions not finished, per step."""
    model = _model(svc)
    return {"workflow_id": workflow_id,
            "statuses": await model.execution_counts(account, workflow_id),
            "steps": await model.step_counts(account, workflow_id)}


@router.get("/audit", summary="The newest audit records (sends that did not go out)")
async def audit(account: str, who: Reader, svc: ServicesDep, reason: Reason = None,
                limit: Recent = 100) -> dict[str, Any]:
    return {"items": await _model(svc).recent_audit(account, reason, limit)}


@router.get("/dead-letters", summary="The newest dead letters")
async def dead_letters(account: str, who: Reader, svc: ServicesDep, reason: Reason = None,
                       limit: Recent = 100) -> dict[str, Any]:
    return {"items": await _model(svc).recent_dead_letters(account, reason, limit)}


@router.get("/stats", summary="Per-minute counts: events, sends, non-sends, dead letters")
async def stats(account: str, who: Reader, svc: ServicesDep,
                minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
    return {"minutes": await _model(svc).stats(account, svc.clock(), minutes)}
