"""Compliance maths: frequency-cap windows, quiet hours, keyword classification.

Pure functions of plain dicts and ``now``; :mod:`tables.gate` combines them into the send
decision. A contact's sends of the last 32 days are kept in its state
(``sends``: message id, time, channel), so a cap check and the count it makes are one
agent step for that contact — two sends can never both squeeze under a cap — and a
replayed send (same ``message_id``) is never counted twice. There are no counters to
reset: windows are derived from the send times and ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from streams.definitions import AccountPolicy
from tables.contacts import ContactState, SendRecord
from tables.effects import suppression
from tables.schedule import local_to_utc, next_local_time

__all__ = [
    "KEEP_SENDS",
    "MAX_SENDS",
    "calendar_window",
    "cap_until",
    "category_of",
    "classify_keyword",
    "default_policy",
    "quiet_until",
    "record_send",
    "report_suppression",
]

#: How long sends are remembered: longer than any window (a calendar month, 30 days).
KEEP_SENDS = timedelta(days=32)
#: At most this many sends are remembered per contact (every cap a policy can set is
#: below it: streams/events.py ``MAX_CAP``). Past it the oldest transactional sends
#: are forgotten first — caps never stop those, so a stream of order confirmations could
#: otherwise grow the contact without end — then the oldest others.
MAX_SENDS = 256
ROLLING = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}


@lru_cache(maxsize=4096)
def default_policy(account: str = "default") -> dict[str, Any]:
    """The policy of an account that has not published one: 5/20/50 calendar caps,
    SMS/MMS 08:00-21:00 local, the usual keyword lists. Made once per account (a policy is
    only ever read)."""
    return AccountPolicy(account=account).model_dump(mode="json")


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return local_to_utc(datetime.combine(day, dtime(0)), zone)


def calendar_window(now: datetime, zone: ZoneInfo, kind: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the contact-local day, ISO week (Monday start) or month."""
    today = now.astimezone(zone).date()
    if kind == "day":
        first, after = today, today + timedelta(days=1)
    elif kind == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    else:
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return _midnight(first, zone), _midnight(after, zone)


#: What a cap counts: every send (None), a channel's, or a category's.
Scope = tuple[str, str] | None


def category_of(policy: Mapping[str, Any], category: str | None) -> dict[str, Any] | None:
    """The policy's declaration of ``category`` (None: none, or not declared)."""
    if category is None:
        return None
    return next((c for c in policy.get("categories", ()) if c["id"] == category), None)


def _limits(policy: Mapping[str, Any], contact: Mapping[str, Any], channel: str,
            category: str | None = None) -> list[tuple[Scope, str, int]]:
    """(what it counts, window, limit) for every cap that applies."""
    caps = policy["caps"]
    overall = {**caps["limits"], **{k: v for k, v in (contact.get("caps") or {}).items()
                                     if k in ROLLING}}
    out: list[tuple[Scope, str, int]] = [
        (None, kind, n) for kind, n in overall.items() if n is not None
    ]
    per_channel = caps.get("channels", {}).get(channel) or {}
    out += [(("channel", channel), kind, n) for kind, n in per_channel.items() if n is not None]
    declared = category_of(policy, category)
    if declared is not None and category is not None:
        out += [(("category", category), kind, n)
                for kind, n in (declared.get("caps") or {}).items() if n is not None]
    return out


def _counts(scope: Scope, send: SendRecord) -> bool:
    if scope is None:
        return True
    what, name = scope
    return send["channel"] == name if what == "channel" else send.get("category") == name


def cap_until(
    sends: list[SendRecord], policy: Mapping[str, Any], contact: Mapping[str, Any],
    channel: str, zone: ZoneInfo, now: datetime, category: str | None = None,
) -> tuple[bool, datetime | None]:
    """(capped, when to look again). Not capped: (False, None). Capped: the earliest time
    every window that is full now has room again (None: never, a cap of 0). The account's
    caps, its channel's and (``category``) the category's own."""
    limits = _limits(policy, contact, channel, category)
    if all(len(sends) < limit for _, _, limit in limits):
        return False, None  # fewer sends remembered than any cap: no window can be full
    rolling = policy["caps"]["windows"] == "rolling"
    times = sorted(((datetime.fromisoformat(s["at"]), s) for s in sends),
                   key=lambda pair: pair[0])
    later: list[datetime] = []
    capped = False
    for scope, kind, limit in limits:
        if rolling:
            start, end = now - ROLLING[kind], now
        else:
            start, end = calendar_window(now, zone, kind)
        # Rolling: a send exactly one window-length old has left the window (so the time
        # returned below really has room); calendar: [start, end).
        inside = [t for t, send in times
                  if (start < t if rolling else start <= t) and t <= now
                  and _counts(scope, send)]
        if len(inside) < limit:
            continue
        capped = True
        if limit == 0:
            return True, None
        # Rolling: room once the oldest sends that fill the window age out of it.
        later.append(inside[len(inside) - limit] + ROLLING[kind] if rolling else end)
    return capped, (max(later) if capped and later else None)


def record_send(contact: ContactState, command: Mapping[str, Any], now: datetime) -> None:
    """Count a send once per ``message_id``; forget sends older than :data:`KEEP_SENDS`."""
    horizon = now - KEEP_SENDS
    sends = [s for s in contact.get("sends", []) if datetime.fromisoformat(s["at"]) >= horizon]
    if all(s["id"] != command["message_id"] for s in sends):
        record: SendRecord = {
            "id": command["message_id"], "at": now.astimezone(UTC).isoformat(),
            "channel": command["channel"], "to": command.get("to"),
            "transactional": bool(command.get("transactional"))}
        if command.get("category"):
            record["category"] = command["category"]
        sends.append(record)
    if len(sends) > MAX_SENDS:
        excess = len(sends) - MAX_SENDS
        oldest = [n for n, s in enumerate(sends) if s["transactional"]][:excess]
        oldest += [n for n, s in enumerate(sends) if not s["transactional"]][
            :excess - len(oldest)]
        gone = set(oldest)
        sends = [s for n, s in enumerate(sends) if n not in gone]
    contact["sends"] = sends


def quiet_until(
    quiet: Mapping[str, Any] | None, channel: str, zone: ZoneInfo, now: datetime
) -> datetime | None:
    """When the send window next opens, if ``now`` is in quiet hours for ``channel``."""
    if not quiet or channel not in quiet["channels"]:
        return None
    opens, closes = dtime.fromisoformat(quiet["send_from"]), dtime.fromisoformat(
        quiet["send_until"])
    if opens == closes:
        return None
    local = now.astimezone(zone).time()
    allowed = opens <= local < closes if opens < closes else (local >= opens or local < closes)
    return None if allowed else next_local_time(now, zone, opens)


def classify_keyword(text: str, policy: Mapping[str, Any]) -> str | None:
    """``opt_out``, ``opt_in``, ``help`` if the message starts with one of the account's
    system words or phrases ("STOP", "opt out"; case and spacing ignored), else None."""
    words = text.upper().split()
    lists = policy["keywords"]
    for kind in ("opt_out", "opt_in", "help"):
        for entry in lists[kind]:
            size = len(entry.split())
            if words[:size] == entry.split():
                return kind
    return None


def report_suppression(
    contact: ContactState, event: dict[str, Any], now: datetime
) -> dict[str, Any] | None:
    """A hard bounce or a complaint suppresses the address the message went to."""
    if event["type"] != "message.bounced":
        return None
    reason = {"hard": "bounced", "complaint": "complained"}.get(event["data"].get("bounce_type"))
    # The address the message went to (the profile may have changed since), else today's.
    sent = [s.get("to") for s in contact.get("sends", [])
            if s["id"] == event["data"]["message_id"] and s.get("to")]
    address = sent[0] if sent else (
        contact.get("email") if event["data"]["channel"] == "email" else contact.get("phone"))
    if reason is None or not address:
        return None
    return suppression(contact, address, reason, now, message_id=event["data"]["message_id"])
