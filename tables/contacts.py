"""Contact state: what dripstream knows about one contact of one account.

Pure logic, no Faust: :func:`apply_event` takes the stored state (a plain dict, as the
Faust table holds it), a validated event and ``now``, and returns the next state. The
duplicate-event marks live inside the same dict, so a state change and its dedupe mark
are one table write: a crash can never store one without the other.

State key: ``"<account>:<contact id>"``. Account ids cannot contain ``:``, so two accounts'
``c-1`` never share a key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.events import (
    ContactEvent,
    ContactProfile,
    GroupMembership,
    PurchaseCompleted,
    Tagged,
)

__all__ = [
    "ACTIVITY_TYPES",
    "MAX_SEEN",
    "Applied",
    "apply_event",
    "contact_key",
    "copy_state",
    "public_view",
]

#: Events that show the contact doing something; they move ``last_activity_at``.
#: System reports (message.sent/delivered/failed/bounced, campaign.*, contact.inactive)
#: and operator actions (tags, groups, profile updates) do not.
ACTIVITY_TYPES = frozenset(
    {"contact.created", "keyword.received", "purchase.completed", "message.clicked",
     "message.opened"}
)

ContactState = dict[str, Any]

#: At most this many event ids are remembered per contact (the newest), whatever the
#: window: the marks travel with every state write, so they must stay small.
MAX_SEEN = 256


def contact_key(account: str, contact_id: str) -> str:
    return f"{account}:{contact_id}"


@dataclass(frozen=True, slots=True)
class Applied:
    state: ContactState
    duplicate: bool


def _new_state(event: ContactEvent, now: datetime) -> ContactState:
    return {
        "account": event.account,
        "contact_id": event.contact_id,
        "phone": None,
        "email": None,
        "timezone": None,
        "locale": None,
        "attributes": {},
        "consent": {},
        "groups": [],
        "tags": [],
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
        "last_event_at": None,
        "last_activity_at": None,
        "caps": None,
        "sends": [],
        "purchases": 0,
        "last_purchase_at": None,
        "version": 0,
        "seen": {},
        # Workflow executions (tables/executions.py) live in the same value, so one table
        # write covers an event's effect on the profile, its dedupe mark and its workflows.
        "executions": {},
        "runs": {},
        "next_due": None,
    }


def _later(current: str | None, candidate: datetime) -> str:
    if current is None or datetime.fromisoformat(current) < candidate:
        return candidate.isoformat()
    return current


def apply_event(
    state: ContactState | None, event: ContactEvent, now: datetime, dedupe_window_s: float
) -> Applied:
    """Return the contact's state after ``event``; a repeat of a recent event id changes nothing.

    An event for a contact never seen before creates it: upstream systems may report a
    purchase or a delivery before (or without) a ``contact.created``.
    """
    horizon = now.timestamp() - dedupe_window_s
    if state is not None and state["seen"].get(event.id, -1.0) >= horizon:
        return Applied(state, duplicate=True)
    new = _new_state(event, now) if state is None else copy_state(state)

    seen = [(k, t) for k, t in new["seen"].items() if t >= horizon][-(MAX_SEEN - 1):]
    new["seen"] = dict(seen)
    new["seen"][event.id] = now.timestamp()

    data = event.data
    if isinstance(data, ContactProfile):
        for field in ("phone", "email", "timezone", "locale", "caps"):
            if field in data.model_fields_set:
                new[field] = getattr(data, field)
        new["attributes"].update(data.attributes)
        new["consent"].update(data.consent)
    elif isinstance(data, Tagged):
        new["tags"] = _with(new["tags"], data.tag, event.type == "contact.tagged")
    elif isinstance(data, PurchaseCompleted):
        new["purchases"] = new.get("purchases", 0) + 1
        new["last_purchase_at"] = _later(new.get("last_purchase_at"), event.time)
    elif isinstance(data, GroupMembership):
        new["groups"] = _with(new["groups"], data.group, event.type == "contact.added_to_group")

    new["updated_at"] = now.isoformat()
    new["last_event_at"] = _later(new["last_event_at"], event.time)
    if event.type in ACTIVITY_TYPES or event.type.startswith("custom."):
        new["last_activity_at"] = _later(new["last_activity_at"], event.time)
    new["version"] += 1
    return Applied(new, duplicate=False)


def _with(members: list[str], item: str, present: bool) -> list[str]:
    """``members`` as a sorted set, with ``item`` added (present) or removed."""
    return sorted({*members, item} if present else set(members) - {item})


def copy_state(state: ContactState) -> ContactState:
    """A copy that can be changed without touching ``state`` (the table's value)."""
    new = dict(state)
    for field in ("attributes", "consent", "seen"):
        new[field] = dict(state[field])
    for field in ("groups", "tags"):
        new[field] = list(state[field])
    new["executions"] = copy.deepcopy(state.get("executions", {}))
    new["runs"] = copy.deepcopy(state.get("runs", {}))
    new["sends"] = list(state.get("sends", []))
    new.setdefault("next_due", None)
    return new


_PRIVATE = ("seen", "executions", "runs", "next_due")


def public_view(state: ContactState) -> ContactState:
    """The profile as operators and the read model see it (no dedupe marks, no executions)."""
    return {k: v for k, v in state.items() if k not in _PRIVATE}
