"""Contacts (from the Redis read model), their executions, and control.

- a contact: its profile, consent, groups, tags (``tables.contacts.public_view``) and the
  sends in each of its current cap windows (against the account policy's limits and the
  contact's own caps); per-contact cap overrides (``PUT/DELETE …/caps``, for a contact
  the read model knows) are a ``contact.updated`` event with ``data.caps``, as the
  contract defines them;
- a contact's executions, with a status filter and cursor pagination, and one with its
  step history;
- pause / resume / cancel of one execution, cancel of every execution of a workflow
  (``producers.admin.send_control``; the contact agent applies them in order with the
  contact's events, so the read model shows the change a moment later).

A contact id is one percent-encoded path segment, whatever it holds (:mod:`api.paths`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query

from api.auth import OPERATE, READ, Allow, Principal
from api.deps import ServicesDep
from api.errors import Problem
from api.paths import CONTACT_PATH
from api.schemas import Accepted, CapsIn, Cursor, Limit, Page, PreferencesIn
from producers.admin import send_control
from producers.publisher import build_event
from streams.commands import APPLIES_TO, Control
from tables.compliance import ROLLING, calendar_window
from tables.contacts import ContactState, public_view
from tables.experiments import in_holdout
from tables.gate import subscribed

router = APIRouter(prefix="/v1/accounts/{account}", tags=["contacts"])
Reader = Annotated[Principal, Depends(Allow(READ))]
Operator = Annotated[Principal, Depends(Allow(OPERATE))]
#: Any 1 to 256 characters, as the contract allows: one path segment, percent-encoded (a
#: ``/`` as ``%2F``; ``api.paths``).
ContactId = Annotated[str, Path(min_length=1, max_length=256,
                                description="percent-encoded: a / is %2F")]
ExecutionId = Annotated[str, Path(min_length=1, max_length=512,
                                 description="e.g. welcome/evt-1 (the slash is part of it)")]
WorkflowId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Status = Literal["running", "waiting", "paused", "completed", "cancelled", "failed"]


def cap_windows(state: ContactState, policy: dict[str, Any], now: datetime
                ) -> dict[str, Any]:
    """The sends in each current cap window (day, week, month) and each window's limit —
    the account's, or the contact's own — as the send gate counts them."""
    zone = ZoneInfo(state.get("timezone") or policy["timezone"])
    caps = policy["caps"]
    rolling = caps["windows"] == "rolling"
    own = state.get("caps") or {}
    sends = [(datetime.fromisoformat(s["at"]), s) for s in state.get("sends", [])]
    out: dict[str, Any] = {"windows": caps["windows"], "timezone": str(zone)}
    for kind in ("day", "week", "month"):
        if rolling:
            start, end = now - ROLLING[kind], now
        else:
            start, end = calendar_window(now, zone, kind)
        inside = [s for t, s in sends
                  if (start < t if rolling else start <= t) and t <= now]
        by_channel: dict[str, int] = {}
        by_category: dict[str, int] = {}
        for s in inside:
            by_channel[s["channel"]] = by_channel.get(s["channel"], 0) + 1
            if category := s.get("category"):
                by_category[category] = by_category.get(category, 0) + 1
        out[kind] = {"start": start.isoformat(), "end": end.isoformat(), "sent": len(inside),
                     "transactional": sum(1 for s in inside if s.get("transactional")),
                     "by_channel": by_channel, "by_category": by_category,
                     "limit": own.get(kind, caps["limits"].get(kind)),
                     "channel_limits": {ch: c.get(kind) for ch, c in
                                        caps.get("channels", {}).items()},
                     "category_limits": {c["id"]: (c.get("caps") or {}).get(kind)
                                         for c in policy.get("categories", ())
                                         if c.get("caps")}}
    return out


def subscriptions(state: ContactState, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Per declared category and channel: is the contact subscribed, and why — its own
    choice (when, where from) or the category's default (as the send gate decides)."""
    own = state.get("preferences") or {}
    out = []
    for category in policy.get("categories", ()):
        chosen = own.get(category["id"]) or {}
        for channel in ("sms", "mms", "email"):
            found = chosen.get(channel) or chosen.get("*")
            row: dict[str, Any] = {"category": category["id"], "name": category["name"],
                                   "channel": channel,
                                   "transactional": category["transactional"]}
            if category["transactional"]:
                row.update(subscribed=True, source="transactional")
            elif found is not None:
                row.update(subscribed=found["subscribed"], source=found["source"],
                           at=found["at"])
            else:
                row.update(subscribed=subscribed(state, category, category["id"], channel),
                           source="default")
            out.append(row)
    return out


async def _state(svc: Any, account: str, contact_id: str) -> ContactState:
    state: ContactState | None = await svc.read_model.get_state(account, contact_id)
    if state is None:
        raise Problem(404, f"no contact {contact_id!r}")
    return state


def _execution_view(ex: dict[str, Any], history: bool) -> dict[str, Any]:
    view = {k: v for k, v in ex.items() if k != "trigger" and (history or k != "history")}
    return view


@router.get("/contacts", response_model=Page, summary="The account's contact ids")
async def list_contacts(account: str, who: Reader, svc: ServicesDep, limit: Limit = 50,
                        cursor: Cursor = None) -> Page:
    """Sorted by id, from the read model."""
    ids = sorted(await svc.read_model.contact_ids(account))
    if cursor is not None:
        ids = [i for i in ids if i > cursor]
    page = ids[:limit]
    return Page(items=[{"contact_id": i} for i in page],
                next_cursor=page[-1] if len(ids) > limit else None)


@router.get("/holdout", summary="The account holdout: its share, size and members")
async def holdout(account: str, who: Reader, svc: ServicesDep, limit: Limit = 50,
                  cursor: Cursor = None) -> dict[str, Any]:
    """The contacts the account's policy ``holdout`` keeps out of every marketing send
    (docs/experiments.md#the-account-holdout): among the contacts the read model knows,
    how many are members, and the members' ids (sorted, a page at a time)."""
    percent = float((await svc.policy(account)).get("holdout", 0))
    ids = sorted(await svc.read_model.contact_ids(account))
    # A hash per contact (about a second per million): off the event loop.
    members = await asyncio.to_thread(
        lambda: [i for i in ids if in_holdout(account, i, percent)])
    after = [i for i in members if cursor is None or i > cursor]
    return {"percent": percent, "contacts": len(ids), "members": len(members),
            "items": [{"contact_id": i} for i in after[:limit]],
            "next_cursor": after[limit - 1] if len(after) > limit else None}


@router.get(CONTACT_PATH, summary="A contact: profile, consent, groups, tags, caps")
async def show_contact(account: str, contact_id: ContactId, who: Reader, svc: ServicesDep
                       ) -> dict[str, Any]:
    """From the read model (a moment behind the worker: docs/api.md, staleness);
    ``holdout``: the contact is in the account holdout (sent no marketing)."""
    state = await _state(svc, account, contact_id)
    policy = await svc.policy(account)
    return {"contact": public_view(state),
            "holdout": in_holdout(account, state["contact_id"], policy.get("holdout", 0)),
            "subscriptions": subscriptions(state, policy),
            "cap_windows": cap_windows(state, policy, svc.clock())}


async def _publish_caps(svc: Any, account: str, contact_id: str,
                        caps: dict[str, int] | None) -> None:
    await _publish(svc, build_event(account, contact_id, "contact.updated", {"caps": caps},
                                    source="urn:dripstream:api", time=svc.clock()))


async def _publish(svc: Any, event: dict[str, Any]) -> None:
    [result] = await svc.publisher.publish_many([event])
    if not result.accepted:
        raise Problem(503 if result.reason == "publish_failed" else 422,
                      f"{result.reason}: {result.detail}")


@router.put(f"{CONTACT_PATH}/caps", status_code=202, response_model=Accepted,
            summary="Give a contact frequency caps of its own")
async def put_caps(account: str, contact_id: ContactId, body: CapsIn, who: Operator,
                   svc: ServicesDep) -> Accepted:
    """A ``contact.updated`` event with ``data.caps`` (windows left out: the account's),
    for a contact the read model knows (404 otherwise: an event would create it)."""
    await _state(svc, account, contact_id)
    caps = {k: v for k, v in body.model_dump().items() if v is not None}
    await _publish_caps(svc, account, contact_id, caps)
    return Accepted(detail=f"caps {caps} sent for {contact_id}")


@router.put(f"{CONTACT_PATH}/preferences", status_code=202, response_model=Accepted,
            summary="Subscribe a contact to, or unsubscribe it from, message categories")
async def put_preferences(account: str, contact_id: ContactId, body: PreferencesIn,
                          who: Operator, svc: ServicesDep) -> Accepted:
    """A ``contact.preferences_updated`` event (docs/preferences.md; ``source`` default
    ``api``) for a contact the read model knows (404 otherwise). A category the policy
    declares transactional, or one it does not declare, is refused (422)."""
    await _state(svc, account, contact_id)
    policy = await svc.policy(account)
    declared = {c["id"]: c for c in policy.get("categories", ())}
    for n, change in enumerate(body.preferences):
        if change.category not in declared:
            raise Problem(422, f"category {change.category!r} is not one of the account "
                          f"policy's: {', '.join(sorted(declared)) or 'none declared'}",
                          type_="invalid-request",
                          errors=[{"loc": ["body", "preferences", n, "category"],
                                   "msg": "not a declared category"}])
        if declared[change.category]["transactional"]:
            raise Problem(422, f"category {change.category!r} is transactional: its "
                          "messages go whatever the contact's preferences",
                          type_="invalid-request",
                          errors=[{"loc": ["body", "preferences", n, "category"],
                                   "msg": "a transactional category"}])
    data = body.model_dump(mode="json", exclude_none=True)
    data.setdefault("source", "api")
    await _publish(svc, build_event(account, contact_id, "contact.preferences_updated", data,
                                    source="urn:dripstream:api", time=svc.clock()))
    return Accepted(detail=f"{len(body.preferences)} preference change(s) sent for "
                           f"{contact_id}")


@router.delete(f"{CONTACT_PATH}/caps", status_code=202, response_model=Accepted,
               summary="Drop a contact's own caps (the account's apply)")
async def delete_caps(account: str, contact_id: ContactId, who: Operator, svc: ServicesDep
                      ) -> Accepted:
    await _state(svc, account, contact_id)
    await _publish_caps(svc, account, contact_id, None)
    return Accepted(detail=f"caps cleared for {contact_id}")


@router.get(f"{CONTACT_PATH}/executions", response_model=Page,
            summary="A contact's executions")
async def list_executions(account: str, contact_id: ContactId, who: Reader, svc: ServicesDep,
                          status: Annotated[Status | None, Query()] = None,
                          limit: Limit = 50, cursor: Cursor = None) -> Page:
    """Newest first (by start, then id); without their step history."""
    state = await _state(svc, account, contact_id)
    found = sorted(state["executions"].values(),
                   key=lambda e: (e["started_at"], e["id"]), reverse=True)
    found = [e for e in found if status is None or e["status"] == status]
    if cursor is not None:
        at, _, ident = cursor.partition("|")
        found = [e for e in found if (e["started_at"], e["id"]) < (at, ident)]
    page = found[:limit]
    more = len(found) > limit
    return Page(items=[_execution_view(dict(e), False) for e in page],
                next_cursor=f"{page[-1]['started_at']}|{page[-1]['id']}" if more else None)


@router.get(CONTACT_PATH + "/executions/{execution_id:path}",
            summary="One execution with its step history")
async def show_execution(account: str, contact_id: ContactId, execution_id: ExecutionId,
                         who: Reader, svc: ServicesDep) -> dict[str, Any]:
    state = await _state(svc, account, contact_id)
    ex = state["executions"].get(execution_id)
    if ex is None:
        raise Problem(404, f"no execution {execution_id!r}")
    return _execution_view(dict(ex), True)


@router.post(CONTACT_PATH + "/executions/{execution_id:path}/{action}", status_code=202,
             response_model=Accepted, summary="Pause, resume or cancel an execution")
async def control_execution(
    account: str, contact_id: ContactId, execution_id: ExecutionId,
    action: Literal["pause", "resume", "cancel"], who: Operator, svc: ServicesDep,
) -> Accepted:
    """Applied by the contact's worker in order with its events. A command that does not
    fit the execution's status as the read model has it (resume of a running one, pause
    of a completed one) is refused with 409, as ``dripstream control`` refuses it."""
    state = await _state(svc, account, contact_id)
    if execution_id not in state["executions"]:
        raise Problem(404, f"no execution {execution_id!r}")
    status = state["executions"][execution_id]["status"]
    if status not in APPLIES_TO[action]:
        raise Problem(409, f"execution {execution_id!r} is {status}; {action} changes only "
                           f"a {' or '.join(APPLIES_TO[action])} one")
    await send_control(svc.producer, svc.settings.topic_prefix, Control(
        action=action, account=account, contact_id=contact_id, execution_id=execution_id))
    return Accepted(detail=f"{action} sent for {execution_id}")


@router.post("/workflows/{workflow_id}/cancel-all", status_code=202, response_model=Accepted,
             summary="Cancel every execution of a workflow")
async def cancel_all(account: str, workflow_id: WorkflowId, who: Operator, svc: ServicesDep
                     ) -> Accepted:
    """Sent to every partition; each worker cancels the workflow's active executions."""
    await send_control(svc.producer, svc.settings.topic_prefix, Control(
        action="cancel_all", account=account, workflow_id=workflow_id))
    return Accepted(detail=f"cancel_all sent for {workflow_id}")


