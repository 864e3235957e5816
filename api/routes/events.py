"""``POST /v1/accounts/{account}/events``: contact events over HTTP.

One event object or an array of up to 500. Each is validated by the contract's own
parser (:func:`streams.events.parse_event`, through :meth:`Publisher.publish_many`) and
the valid ones are published to ``<prefix>contact-events``; the answer has one result
per event, in order: ``accepted`` with its id, or ``rejected`` with the contract's reason
and detail, word for word as the dead-letter topic would give them. An event of another
account than the URL's is rejected ``account_mismatch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request

from api.auth import INGEST, Allow, Principal
from api.deps import ServicesDep
from api.errors import Problem
from api.schemas import EventResult, EventsOut
from producers.publisher import PublishResult
from streams.events import Rejected, encode_event, parse_event

router = APIRouter(prefix="/v1/accounts/{account}/events", tags=["events"])
Ingest = Annotated[Principal, Depends(Allow(INGEST))]
MAX_BATCH = 500

_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [{"type": "object", "description": "one CloudEvents 1.0 event (docs/contract.md)"},
              {"type": "array", "maxItems": MAX_BATCH, "items": {}}]}}}}}


def _mismatch(index: int, event: Mapping[str, Any], account: str) -> EventResult | None:
    """A valid event of another account: rejected (an invalid one keeps the contract's
    own reason)."""
    if event.get("account") == account:
        return None
    ident = event.get("id") if isinstance(event.get("id"), str) else None
    try:
        parse_event(encode_event(dict(event)))
    except (Rejected, TypeError, ValueError):
        return None  # publish_many words the contract's reason
    return EventResult(index=index, status="rejected", id=ident, reason="account_mismatch",
                       detail=f"account {event.get('account')!r} is not {account!r} (the URL's)")


def _result(r: PublishResult) -> EventResult:
    return EventResult(index=r.index, status="accepted" if r.accepted else "rejected",
                       id=r.id, reason=r.reason, detail=r.detail)


@router.post("", response_model=EventsOut, openapi_extra=_BODY,
             summary="Publish contact events (one, or an array of up to 500)")
async def post_events(account: str, request: Request, who: Ingest, svc: ServicesDep
                      ) -> EventsOut:
    """Per event: accepted (published and acknowledged) or rejected (reason, detail)."""
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not JSON: {exc}", type_="malformed-json") from None
    events: list[Any] = raw if isinstance(raw, list) else [raw]
    if len(events) > MAX_BATCH:
        raise Problem(413, f"{len(events)} events: at most {MAX_BATCH} per request",
                      type_="batch-too-large")
    results: dict[int, EventResult] = {}
    send: list[tuple[int, Any]] = []
    for index, event in enumerate(events):
        found = _mismatch(index, event, account) if isinstance(event, Mapping) else None
        if found is not None:
            results[index] = found
        else:
            send.append((index, event))
    published = await svc.publisher.publish_many([e for _, e in send])
    for (index, _), result in zip(send, published, strict=True):
        results[index] = _result(result).model_copy(update={"index": index})
    ordered = [results[i] for i in range(len(events))]
    accepted = sum(r.status == "accepted" for r in ordered)
    return EventsOut(accepted=accepted, rejected=len(ordered) - accepted, results=ordered)
