"""Inactivity: each contact's own timer, re-armed by every activity, never a scan.

A contact is *inactive* for ``N`` days when no activity event — the types the account
policy lists under ``inactivity.activity_types`` (default ``keyword.received``,
``message.clicked``, ``message.opened``, ``purchase.completed``) — has arrived for N x 24
hours; a contact never active counts from its creation. The ``N`` are the
``inactive_days`` of the account's active workflows triggered by ``contact.inactive``
(:func:`thresholds`).

The contact's value keeps one small record, ``inactivity``: ``since`` (the start of the
current period: the newest activity's time, or the creation), ``fired`` (the thresholds
already reported in this period) and ``active`` (ever active). Its due time is derived,
not stored: ``since`` + the smallest threshold not yet fired (:func:`due_at`), with the
account's *current* thresholds — so defining a new inactivity workflow arms every contact
already past it, with no write. The worker's due index (``agents/timers.py``) holds one
entry per contact: the earlier of its executions' ``next_due`` and this. When it comes, a
wake-up reaches the contact agent and :func:`on_wakeup` emits one ``contact.inactive``
per threshold reached (``threshold_days``, ``last_activity_at``, ``inactive_since``), once
per period: ``fired`` remembers it, the event id is a hash of (contact, period, N), and an
activity starts a new period (:func:`track`).

Pure: no clock, no I/O; ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from tables.contacts import Inactivity
from tables.effects import Effects, contact_event, iso

__all__ = [
    "DEFAULT_ACTIVITY_TYPES",
    "MAX_THRESHOLDS",
    "SOURCE",
    "due_at",
    "earliest",
    "is_stale",
    "on_wakeup",
    "thresholds",
    "track",
]

#: What counts as the contact doing something, unless the account policy says otherwise.
DEFAULT_ACTIVITY_TYPES = ("keyword.received", "message.clicked", "message.opened",
                          "purchase.completed")
#: Thresholds an account may use (the smallest are kept); ``fired`` never holds more.
MAX_THRESHOLDS = 32
#: The ``source`` of the ``contact.inactive`` events dripstream emits.
SOURCE = "urn:dripstream:inactivity"
_DAY = timedelta(days=1)


def thresholds(workflows: Iterable[dict[str, Any]]) -> tuple[int, ...]:
    """The ``inactive_days`` of the active workflows triggered by ``contact.inactive``,
    ascending, at most :data:`MAX_THRESHOLDS`."""
    days = {wf["trigger"]["inactive_days"] for wf in workflows
            if wf.get("active", True) and wf["trigger"]["event"] == "contact.inactive"
            and wf["trigger"].get("inactive_days")}
    return tuple(sorted(days)[:MAX_THRESHOLDS])


def due_at(since: str, fired: Iterable[int], days: tuple[int, ...]) -> datetime | None:
    """When the next threshold not yet reported in this period is reached (None: none)."""
    done = set(fired)
    for n in days:
        if n not in done:
            return datetime.fromisoformat(since) + n * _DAY
    return None


def earliest(next_due: str | None, record: tuple[str, list[int]] | None,
             days: tuple[int, ...]) -> datetime | None:
    """A contact's one timer: the earlier of its executions' ``next_due`` and its next
    inactivity threshold (``record``: the period's ``since`` and ``fired``)."""
    due = datetime.fromisoformat(next_due) if next_due is not None else None
    if record is not None and days:
        inactive = due_at(record[0], record[1], days)
        if inactive is not None and (due is None or inactive < due):
            return inactive
    return due


def track(record: Inactivity, event_type: str, event_time: datetime, now: datetime,
          activity_types: Iterable[str]) -> None:
    """An accepted event: an activity after the current period's start starts a new
    period at its time (never later than ``now``) — ``record`` is changed in place.

    An activity at or before the period's start never moves it back: the period of a
    contact never active starts at its creation here, so a first purchase back-dated to
    before it (a backfill, or the very event that creates the contact, stamped before it
    is processed) must not make the contact fire early. Such an activity only marks a
    contact never active as active (its silence then counts from its creation)."""
    if event_type not in activity_types:
        return
    at = min(event_time, now).astimezone(UTC)
    if at > datetime.fromisoformat(record["since"]):
        record.update({"since": iso(at), "fired": [], "active": True})
    elif not record["active"]:
        record["active"] = True


def on_wakeup(contact: Any, days: tuple[int, ...], now: datetime) -> Effects | None:
    """Emit ``contact.inactive`` for each threshold reached and not yet reported in this
    period, and remember it; None if none is due (``contact["inactivity"]`` is changed in
    place)."""
    record: Inactivity | None = contact.get("inactivity")
    if record is None or not days:
        return None
    since = datetime.fromisoformat(record["since"])
    reached = [n for n in days if n not in record["fired"] and since + n * _DAY <= now]
    if not reached:
        return None
    fx = Effects()
    for n in reached:
        fx.events.append(contact_event(
            contact, f"inactive\x1f{contact['account']}\x1f{contact['contact_id']}"
                     f"\x1f{record['since']}\x1f{n}",
            SOURCE, "contact.inactive",
            {"threshold_days": n,
             "last_activity_at": record["since"] if record["active"] else None,
             "inactive_since": record["since"]},
            0, now))
    record["fired"] = sorted({*record["fired"], *reached})[-MAX_THRESHOLDS:]
    return fx


def is_stale(contact: Any, event: dict[str, Any]) -> bool:
    """A ``contact.inactive`` dripstream emitted for a period that has ended since (an
    activity arrived before it was processed): it starts no workflow."""
    record: Inactivity | None = contact.get("inactivity")
    data = event["data"]
    return (record is not None and event.get("source") == SOURCE
            and data.get("inactive_since") not in (None, record["since"]))
