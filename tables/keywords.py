"""Inbound keywords: opt-out, opt-in, HELP and account keywords (JOIN, VIP…).

Pure: :func:`on_keyword` takes the contact's state (a fresh copy it updates), the
``keyword.received`` event, the account's policy and keyword definitions, and ``now``;
it returns the replies, events and suppression changes to emit. Workflows may react to the
event unless it is a system word (STOP / START / HELP and their lists:
:func:`system_keyword`).

- opt-out word: SMS and MMS consent revoked at once (so no marketing send for the contact
  leaves the gate from now on, including sends already waiting or deferred), the phone
  number suppressed for the account, one confirmation sent — only if the contact was not
  already opted out (a second STOP gets no second text);
- opt-in word: consent restored, the opt-out suppression lifted, a confirmation sent;
- help word: the account's help text (brand, frequency, rates, support) sent;
- account keyword (per receiving number if it names any): its group joined (as a
  ``contact.added_to_group`` event), SMS consent set if it is an opt-in keyword, its reply
  sent; then workflows whose trigger keyword matches start.
Replies are transactional (no caps, no quiet hours); every reply passes the send gate.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from tables import gate
from tables.compliance import classify_keyword, record_send
from tables.contacts import ContactState
from tables.effects import Draft, Effects, audit_record, contact_event, send_command, suppression
from tables.gate import Compliance
from tables.triggers import keyword_of

__all__ = ["on_keyword", "system_keyword"]


def _reply(
    contact: ContactState, event: dict[str, Any], text: str, purpose: str, now: datetime,
    compliance: Compliance, fx: Effects,
) -> None:
    digest = hashlib.sha256(f"{contact['account']}\x1f{event['id']}\x1freply".encode())
    channel = event["data"].get("channel", "sms")
    command: Draft = {
        "message_id": "msg-" + digest.hexdigest()[:32],
        "channel": channel,
        "account": contact["account"],
        "contact_id": contact["contact_id"],
        "to": event["data"].get("from") or contact.get("phone"),
        "body": text,
        "transactional": True,
        "purpose": purpose,
        "reply_from": event["data"].get("to"),
        "origin": {"kind": "keyword", "keyword": keyword_of(event["data"]["keyword"]),
                   "event_id": event["id"], "depth": int(event.get("causationdepth", 0))},
        "created_at": now.isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
    }
    to = command["to"]
    decision = gate.decide(command, contact, compliance.policy,
                           bool(to) and compliance.suppressed(str(to)), now)
    if decision.action == "send":
        fx.sends.append(send_command(command))
        record_send(contact, command, now)
    else:
        fx.audit.append(audit_record(contact, now, decision.reason or "",
                                     message_id=command["message_id"], channel=channel,
                                     origin=command["origin"], action="drop"))


def _lifted(compliance: Compliance, phone: str | None) -> Compliance:
    """The lifted opt-out reaches the suppression list a moment later: answer now. Only an
    opt-out is lifted: a number suppressed for another reason stays suppressed."""

    def suppressed(address: str) -> bool:
        if address == phone and compliance.reason(address) in (None, "opted_out"):
            return False
        return compliance.suppressed(address)

    return replace(compliance, suppressed=suppressed)


def _classify(event: dict[str, Any], policy: dict[str, Any]) -> tuple[str | None, str]:
    """(system keyword kind or None, the first word)."""
    text = str(event["data"].get("text") or event["data"].get("keyword") or "")
    word = keyword_of(str(event["data"].get("keyword") or text))
    return classify_keyword(text, policy) or classify_keyword(word, policy), word


def system_keyword(event: dict[str, Any], policy: dict[str, Any]) -> bool:
    """Is this text an opt-out, opt-in or help word? Workflows never react to those."""
    return _classify(event, policy)[0] is not None


def on_keyword(
    contact: ContactState, event: dict[str, Any], keywords: list[dict[str, Any]],
    compliance: Compliance, now: datetime,
) -> Effects:
    """Handle a ``keyword.received`` (``contact`` is changed in place)."""
    fx = Effects()
    policy = compliance.policy
    kind, word = _classify(event, policy)
    fill = {"brand": policy["brand"], "support": policy["support"]}
    consent = contact["consent"]
    # The number that wrote in (the contact's phone if the gateway did not say).
    sender = event["data"].get("from") or contact.get("phone")
    if kind == "opt_out":
        already = consent.get("sms") is False
        consent.update(sms=False, mms=False)
        if sender:
            fx.suppressions.append(suppression(contact, sender, "opted_out", now))
        if not already:
            _reply(contact, event, policy["replies"]["opt_out"].format(**fill),
                   "opt_out_confirmation", now, compliance, fx)
        return fx
    if kind == "opt_in":
        consent.update(sms=True, mms=True)
        if sender:
            fx.suppressions.append(suppression(contact, sender, "opted_out", now, remove=True))
        _reply(contact, event, policy["replies"]["opt_in"].format(**fill), "opt_in_confirmation",
               now, _lifted(compliance, sender), fx)
        return fx
    if kind == "help":
        _reply(contact, event, policy["replies"]["help"].format(**fill), "help", now,
               compliance, fx)
        return fx
    to = event["data"].get("to")
    for kw in keywords:
        if not kw["active"] or word not in kw["words"] or (kw["to"] and to not in kw["to"]):
            continue
        if kw["consent"]:  # an opt-in keyword: as START, for this programme
            consent.update(sms=True, mms=True)
            if sender:
                fx.suppressions.append(suppression(contact, sender, "opted_out", now,
                                                   remove=True))
                compliance = _lifted(compliance, sender)
        if kw["group"]:
            fx.events.append(contact_event(
                contact, f"{event['id']}\x1f{kw['id']}", f"urn:dripstream:keyword:{kw['id']}",
                "contact.added_to_group", {"group": kw["group"]},
                int(event.get("causationdepth", 0)) + 1, now))
        if kw["reply"]:
            _reply(contact, event, kw["reply"].format(**fill), "keyword_reply", now,
                   compliance, fx)
        break
    return fx
