"""Campaign operations beside the campaign definitions (``api/routes/definitions.py``):
preview (the audience now, from the read model), progress (each occurrence summed over
the partitions that report it, ``ReadModel.get_progress``), status, and pause / resume /
cancel (``producers.admin.control_campaign``).

Controls are published first, read back (the status is the workers' own, from the
definitions topic through :mod:`api.projection`, so a ``dripstream campaign pause`` counts
too) and recorded after (rows of kind ``campaign_control`` in the store: who did what).
They do not go through the outbox — a control that overtakes its campaign's definition
on the topic is still applied by the workers, which keep controls apart from versions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.ext.asyncio import AsyncSession

from api import projection, store
from api.auth import OPERATE, READ, Allow, Principal
from api.db import DefinitionVersion
from api.deps import ServicesDep, SessionDep
from api.errors import Problem
from api.routes.observe import experiment_report
from api.schemas import Accepted, Instant, Limit
from producers.admin import control_campaign
from tables.campaigns import CAMPAIGN_WORKFLOW, in_audience, progress_summary

router = APIRouter(prefix="/v1/accounts/{account}/campaigns", tags=["campaigns"])
Reader = Annotated[Principal, Depends(Allow(READ))]
Operator = Annotated[Principal, Depends(Allow(OPERATE))]
CampaignId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


async def _campaign(session: AsyncSession, account: str, campaign_id: str) -> dict[str, Any]:
    row = await store.live(session, account=account, kind="campaign", def_id=campaign_id)
    if row is None:
        raise Problem(404, f"no campaign {campaign_id!r}")
    return row.body


@router.get("/{campaign_id}/progress", summary="A campaign's status and progress")
async def progress(account: str, campaign_id: CampaignId, who: Reader, session: SessionDep,
                   svc: ServicesDep) -> dict[str, Any]:
    campaign = await _campaign(session, account, campaign_id)
    records = await svc.read_model.get_progress(account, campaign_id)
    summary = progress_summary(await projection.ready(svc), campaign, records,
                               svc.settings.partitions, svc.clock())
    return {"campaign": campaign_id, "version": campaign["version"],
            "active": campaign["active"], "status": summary["status"],
            "occurrences": summary["occurrences"]}


@router.get("/{campaign_id}/preview", summary="The audience as it is now (sends nothing)")
async def preview(account: str, campaign_id: CampaignId, who: Reader, session: SessionDep,
                  svc: ServicesDep, limit: Limit = 10) -> dict[str, Any]:
    """Its size and its first contacts, judged on the read model's states."""
    campaign = await _campaign(session, account, campaign_id)
    found = []
    for contact_id in sorted(await svc.read_model.contact_ids(account)):
        state = await svc.read_model.get_state(account, contact_id)
        if state is not None and in_audience(campaign["audience"], state):
            found.append(contact_id)
    return {"campaign": campaign_id, "audience": len(found), "first": found[:limit]}


@router.get("/{campaign_id}/report",
            summary="A campaign's experiment: each variant's conversions and lift over control")
async def report(account: str, campaign_id: CampaignId, who: Reader, svc: ServicesDep,
                 since: Annotated[Instant | None, Query(
                     description="only entries from, with its offset")] = None,
                 until: Annotated[Instant | None, Query(
                     description="only entries before, with its offset")] = None,
                 ) -> dict[str, Any]:
    """``dripstream report --campaign``'s answer (docs/experiments.md): a campaign with
    variants or an experiment runs as the workflow ``campaign:<id>``; its entries are
    the contacts each occurrence reached, counted once their window has closed."""
    return await experiment_report(svc, account, CAMPAIGN_WORKFLOW + campaign_id, since,
                                   until)


@router.post("/{campaign_id}/{action}", status_code=202, response_model=Accepted,
             summary="Pause, resume or cancel a campaign")
async def control(account: str, campaign_id: CampaignId,
                  action: Literal["pause", "resume", "cancel"], who: Operator,
                  session: SessionDep, svc: ServicesDep) -> Accepted:
    """Every worker applies it; a cancel is final (and cancels deferred sends). A cancelled
    campaign takes nothing more; a completed one no pause or resume (nothing is left to
    run; a cancel still drops its sends deferred by quiet hours)."""
    campaign = await _campaign(session, account, campaign_id)
    if await projection.status_of(svc, account, campaign_id) == "cancelled":
        raise Problem(409, f"campaign {campaign_id!r} is cancelled (final)")
    if action != "cancel":
        records = await svc.read_model.get_progress(account, campaign_id)
        summary = progress_summary(await projection.ready(svc), campaign, records,
                                   svc.settings.partitions, svc.clock())
        if summary["status"] == "completed":
            raise Problem(409, f"campaign {campaign_id!r} is completed: no occurrence is "
                               f"left to {action}")
    meta = await control_campaign(svc.producer, svc.settings.topic_prefix, account,
                                  campaign_id, action, by=f"api:{who.key_id}")
    # Read back: the status the next request reads (the projection's) includes it.
    await projection.projection(svc).reached(meta.partition, meta.offset,
                                             projection.READ_BACK_S)
    previous = await store.history(session, account=account, kind="campaign_control",
                                   def_id=campaign_id)
    session.add(DefinitionVersion(
        account=account, kind="campaign_control", def_id=campaign_id,
        version=len(previous) + 1, created_at=svc.clock(), created_by=who.key_id,
        body={"kind": "campaign_control", "account": account, "campaign_id": campaign_id,
              "action": action, "at": svc.clock().isoformat()}))
    await session.commit()
    return Accepted(detail=f"{action} sent for campaign {campaign_id}")
