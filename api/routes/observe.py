"""What the workers report, per account: a workflow's executions (status filter, cursor
pages) and their counts per status and per step, the newest audit records and dead
letters (filtered by reason), per-minute stats, and the input lag.

These read the read model's indexes, which the workers keep with every batch
(``tables/readmodel.py``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Path, Query

from api import store
from api.auth import READ, Allow, Principal
from api.deps import ServicesDep
from api.errors import Problem
from api.schemas import Cursor, Instant, Limit, Page
from streams.history import PartitionMismatch, read_outcomes
from tables.campaigns import CAMPAIGN_WORKFLOW
from tables.experiments import report

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/accounts/{account}", tags=["observe"])
Reader = Annotated[Principal, Depends(Allow(READ))]
WorkflowId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Status = Literal["running", "waiting", "paused", "completed", "cancelled", "failed"]
Reason = Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+$")]
Recent = Annotated[int, Query(ge=1, le=200)]


@router.get("/workflows/{workflow_id}/executions", response_model=Page,
            summary="A workflow's executions")
async def workflow_executions(account: str, workflow_id: WorkflowId, who: Reader,
                              svc: ServicesDep,
                              status: Annotated[Status | None, Query()] = None,
                              limit: Limit = 50, cursor: Cursor = None) -> Page:
    """Newest started first: contact, execution, status, step, start."""
    try:
        items, after = await svc.read_model.list_executions(account, workflow_id, status,
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
    model = svc.read_model
    return {"workflow_id": workflow_id,
            "statuses": await model.execution_counts(account, workflow_id),
            "steps": await model.step_counts(account, workflow_id)}


@router.get("/workflows/{workflow_id}/report",
            summary="A workflow's experiment: each arm's conversions and lift over control")
async def workflow_report(account: str, workflow_id: WorkflowId, who: Reader,
                          svc: ServicesDep,
                          since: Annotated[Instant | None, Query(
                              description="only entries from, with its offset")] = None,
                          until: Annotated[Instant | None, Query(
                              description="only entries before, with its offset")] = None,
                          ) -> dict[str, Any]:
    """``dripstream report``'s answer (docs/experiments.md): per arm entered, sent,
    converted, the rate and its interval, revenue, the lift over the baseline with its
    interval, the p-value and a verdict. Entries count once their window has closed."""
    return await experiment_report(svc, account, workflow_id, since, until)


async def experiment_report(svc: Any, account: str, workflow_id: str,
                            since: datetime | None = None, until: datetime | None = None
                            ) -> dict[str, Any]:
    """The report behind the route and the dashboard's experiment section: 404 for a
    workflow or campaign the account does not have (a typo is not "wait longer")."""
    kind, ident = (("campaign", workflow_id.removeprefix(CAMPAIGN_WORKFLOW))
                   if workflow_id.startswith(CAMPAIGN_WORKFLOW) else ("workflow", workflow_id))
    async with svc.sessions() as session:
        if await store.live(session, account=account, kind=kind, def_id=ident) is None:
            raise Problem(404, f"no {kind} {ident!r}")
    if since is not None and until is not None and since >= until:
        msg = f"since {since.isoformat()} is not before until {until.isoformat()}"
        raise Problem(422, f"invalid window: {msg}", type_="invalid-request",
                      errors=[{"loc": ["query", "since"], "msg": msg}])
    try:
        found = await read_outcomes(svc.settings, account, workflow_id, since, until)
    except (KafkaError, OSError, PartitionMismatch) as exc:
        log.warning("experiment report for %s/%s: the outcomes could not be read: %s",
                    account, workflow_id, exc)
        raise Problem(503, "the outcomes topic could not be read (is the broker up?)"
                      ) from None
    return await asyncio.to_thread(report, found, workflow_id)  # statsmodels: off the loop


@router.get("/audit", summary="The newest audit records (sends that did not go out)")
async def audit(account: str, who: Reader, svc: ServicesDep, reason: Reason = None,
                limit: Recent = 100) -> dict[str, Any]:
    return {"items": await svc.read_model.recent_audit(account, reason, limit)}


@router.get("/dead-letters", summary="The newest dead letters")
async def dead_letters(account: str, who: Reader, svc: ServicesDep, reason: Reason = None,
                       limit: Recent = 100) -> dict[str, Any]:
    return {"items": await svc.read_model.recent_dead_letters(account, reason, limit)}


@router.get("/stats", summary="Per-minute counts: events, sends, non-sends, dead letters")
async def stats(account: str, who: Reader, svc: ServicesDep,
                minutes: Annotated[int, Query(ge=1, le=120)] = 60) -> dict[str, Any]:
    return {"minutes": await svc.read_model.stats(account, svc.clock(), minutes)}
