"""The send gate: the one decision every send passes before it leaves.

Pure: a :class:`Decision` from (send command, contact state, account policy, suppression,
``now``). Workflows, keyword replies and campaigns use it. Every send that does
not go out now — dropped or deferred — goes on ``<prefix>audit`` with its reason; nothing is
dropped silently. Checks, in order:

1. ``no_destination`` — no phone / email on the contact;
2. ``suppressed`` — the address is on the account's suppression list;
3. ``opted_out`` / ``no_consent`` — SMS/MMS need consent true (MMS falls back to SMS);
   email goes unless consent is false;
4. ``expired`` — past the command's ``expires_at``;
5. marketing sends only (not ``transactional``): quiet hours (``quiet_hours_deferred``, or
   ``quiet_hours`` when the policy drops), then frequency caps (``frequency_capped``:
   dropped, or deferred to when the windows have room, as the workflow chose).

Compliance replies (``purpose`` ``opt_out_confirmation`` or ``help``) skip 2 and 3: they
answer the number that just wrote in, whatever its consent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tables.compliance import cap_until, category_of, default_policy, quiet_until
from tables.experiments import in_holdout
from tables.preferences import Links
from tables.schedule import contact_zone

__all__ = ["DEFAULTS", "EXEMPT_PURPOSES", "REASONS", "Compliance", "Decision", "consent_veto",
           "decide", "subscribed"]

#: The send gate's reasons, and the ones the engine adds before it (a send held back from
#: an experiment's control group or the account holdout, one past its max_lateness); new
#: ones go last (the dashboard's colours follow this order).
REASONS = ("no_destination", "suppressed", "no_consent", "opted_out", "expired",
           "quiet_hours_deferred", "quiet_hours", "frequency_capped", "holdout",
           "control_group", "too_late", "category_unsubscribed")
EXEMPT_PURPOSES = ("opt_out_confirmation", "help")


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["send", "drop", "defer"]
    reason: str | None = None
    until: datetime | None = None


SEND = Decision("send")


@dataclass(frozen=True)
class Compliance:
    """The account's policy and its suppression list, as the gate needs them.
    ``reason`` says why an address is suppressed (None when unknown)."""

    policy: dict[str, Any]
    suppressed: Callable[[str], bool] = lambda address: False
    reason: Callable[[str], str | None] = lambda address: None
    #: What ``{{preferences_url}}`` renders to (None: not configured; its default shows).
    links: Links | None = None


#: Defaults for an account with no policy of its own (tests, and accounts not configured).
DEFAULTS = Compliance(default_policy())


def _consent(contact: Mapping[str, Any], channel: str) -> bool | None:
    consent = contact.get("consent", {})
    value = consent.get(channel)
    if value is None and channel == "mms":
        value = consent.get("sms")
    return value if isinstance(value, bool) else None


def consent_veto(contact: Mapping[str, Any], channel: str) -> str | None:
    """``opted_out`` / ``no_consent`` if the contact's consent forbids the channel, else
    None (shared with the channel workers' re-check, ``producers/channel.py``)."""
    consent = _consent(contact, channel)
    if consent is False:
        return "opted_out"
    if consent is None and channel in ("sms", "mms"):
        return "no_consent"
    return None


def subscribed(contact: Mapping[str, Any], declared: Mapping[str, Any] | None,
               category: str, channel: str) -> bool:
    """Is the contact subscribed to ``category`` on ``channel``: its own choice for the
    channel, else for every channel, else the category's default (subscribed, for a
    category the policy does not declare)."""
    own = (contact.get("preferences") or {}).get(category) or {}
    for slot in (channel, "*"):
        if slot in own:
            return bool(own[slot]["subscribed"])
    return bool(declared["subscribed_by_default"]) if declared is not None else True


def decide(
    command: Mapping[str, Any], contact: Mapping[str, Any], policy: Mapping[str, Any],
    suppressed: bool, now: datetime, on_capped: str = "drop", zone: str | None = None,
) -> Decision:
    """``zone``: for contacts without a time zone (default: the policy's)."""
    channel = command["channel"]
    if not command.get("to"):
        return Decision("drop", "no_destination")
    if command.get("purpose") not in EXEMPT_PURPOSES:
        if suppressed:
            return Decision("drop", "suppressed")
        if (veto := consent_veto(contact, channel)) is not None:
            return Decision("drop", veto)
    if now >= datetime.fromisoformat(command["expires_at"]):
        return Decision("drop", "expired")
    if command.get("transactional"):
        return SEND
    if (holdout := policy.get("holdout")) and in_holdout(contact["account"],
                                                          contact["contact_id"], holdout):
        return Decision("drop", "holdout")
    category = command.get("category")
    if category is not None and not subscribed(contact, category_of(policy, category),
                                               category, channel):
        return Decision("drop", "category_unsubscribed")
    local = contact_zone(contact, zone or policy["timezone"])
    quiet = policy.get("quiet_hours")
    if (opens := quiet_until(quiet, channel, local, now)) is not None:
        assert quiet is not None
        if quiet["policy"] == "defer":
            return Decision("defer", "quiet_hours_deferred", opens)
        return Decision("drop", "quiet_hours")
    capped, room = cap_until(contact.get("sends", []), policy, contact, channel, local, now,
                             category)
    if capped:
        if on_capped == "defer" and room is not None:
            return Decision("defer", "frequency_capped", room)
        return Decision("drop", "frequency_capped")
    return SEND
