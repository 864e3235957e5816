"""The preference page (docs/preferences.md#the-preference-page): a contact opens it from
the signed link in a message (``{{preferences_url}}``), sees the account's message
categories with its choices, and saves them — no login. The link names the contact: a
tampered or expired one opens nothing (403, 410), never another contact's page. A save
is a ``contact.preferences_updated`` event (source ``preference_page``) with every box the
page showed; text messages are SMS and MMS together.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api import sessions
from api.dashboard import render_public
from api.deps import ServicesDep
from producers.publisher import build_event
from tables.contacts import ContactState
from tables.gate import subscribed
from tables.preferences import LinkError, Links, verify

router = APIRouter(include_in_schema=False)
#: What the page offers per category: text messages (SMS and MMS at once), email.
CHANNELS = {"text": ("sms", "mms"), "email": ("email",)}
_FAILED = {
    "invalid": (403, "This link is not valid. Open the link in one of our messages again, "
                     "as it came."),
    "expired": (410, "This link has expired. The link in a newer message opens your "
                     "preferences; reply STOP to any text to stop all texts."),
}


async def _open(svc: Any, token: str) -> tuple[str, ContactState, dict[str, Any]] | HTMLResponse:
    links = Links.of(svc.settings)
    if links is None:
        return render_public("preference_error.html", 503,
                             detail="Preference links are not set up here.")
    try:
        account, contact_id, _ = verify(links.secret, token, svc.clock())
    except LinkError as exc:
        code, detail = _FAILED[exc.reason]
        return render_public("preference_error.html", code, detail=detail)
    state = await svc.read_model.get_state(account, contact_id)
    if state is None:
        return render_public("preference_error.html", 404,
                             detail="We could not find your preferences.")
    return account, state, await svc.policy(account)


def rows(state: ContactState, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per category a contact may choose (not transactional), one box per
    channel it has an address for, checked as the send gate would decide."""
    boxes = [name for name, address in (("text", "phone"), ("email", "email"))
             if state.get(address)]
    out = []
    for category in policy.get("categories", ()):
        if category["transactional"]:
            continue
        out.append({"id": category["id"], "name": category["name"], "boxes": {
            name: subscribed(state, category, category["id"], CHANNELS[name][0])
            for name in boxes}})
    return out


@router.get("/preferences/{token}", response_class=HTMLResponse)
async def page(token: str, svc: ServicesDep) -> HTMLResponse:
    opened = await _open(svc, token)
    if isinstance(opened, HTMLResponse):
        return opened
    _, state, policy = opened
    return render_public("preferences.html", rows=rows(state, policy), brand=policy["brand"],
                         token=token, saved=False)


@router.post("/preferences/{token}", response_class=HTMLResponse)
async def save(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
    opened = await _open(svc, token)
    if isinstance(opened, HTMLResponse):
        return opened
    account, state, policy = opened
    if request.headers.get("content-type", "").split(";")[0].strip() != (
            "application/x-www-form-urlencoded"):
        return render_public("preference_error.html", 400,
                             detail="Send your choices from the page's form.")
    form = await sessions.form(request)
    # Every box the page showed is saved as it was submitted (the newest choice wins, so
    # saving twice is harmless): not only those that differ from what the read model —
    # a moment behind — holds now. A box the page did not show is left alone.
    seen = set(form.get("shown", "").split(","))
    shown = rows(state, policy)
    changes = []
    for row in shown:
        for name in row["boxes"]:
            if f"{row['id']}.{name}" not in seen:
                continue
            wanted = form.get(f"{row['id']}.{name}") == "on"
            changes += [{"category": row["id"], "channel": channel, "subscribed": wanted}
                        for channel in CHANNELS[name]]
            row["boxes"][name] = wanted
    if changes:
        event = build_event(account, state["contact_id"], "contact.preferences_updated",
                            {"preferences": changes, "source": "preference_page"},
                            source="urn:dripstream:preference-page", time=svc.clock())
        [result] = await svc.publisher.publish_many([event])
        if not result.accepted:
            return render_public("preference_error.html", 503,
                                 detail="Your choices could not be saved just now; please "
                                        "try again in a minute.")
    return render_public("preferences.html", rows=shown, brand=policy["brand"], token=token,
                         saved=True)
