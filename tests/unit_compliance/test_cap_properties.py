"""Invariants of caps and send records (hypothesis): whatever the sequence of sends, the
gate never lets a marketing send into a full window, never caps one with room, names a
time when the windows have room, and counts each message once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tables.compliance import KEEP_SENDS, calendar_window, cap_until, record_send
from tables.gate import decide
from tests.unit_compliance.support import (
    AUCKLAND,
    HAVANA,
    LA,
    MICRO,
    SANTIAGO,
    caps,
    instants,
    policy,
    record,
    utc,
)

ZONES = st.sampled_from([LA, AUCKLAND, SANTIAGO, HAVANA, ZoneInfo("UTC")])
STARTS = instants(utc("2026-01-01T00:00"), utc("2028-12-01T00:00"))
POLICIES = st.sampled_from([
    policy(),  # the default: day 5, week 20, month 50 (calendar, contact-local)
    policy(caps=caps(day=2, week=4, month=6)),  # tight, so weeks and months fill up too
])
ATTEMPTS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 2 * 3600), st.integers(0, 4 * 86400)),  # seconds since last
        st.sampled_from(["sms", "mms", "email"]),
        st.booleans(),  # transactional
    ),
    min_size=1, max_size=80,
)


def held(sent: list[datetime], now: datetime, zone: ZoneInfo, kind: str) -> int:
    """Sends (all of them, transactional too) in the calendar window holding ``now``."""
    start, _ = calendar_window(now, zone, kind)
    return sum(1 for t in sent if start <= t <= now)


@settings(max_examples=120, deadline=None)
@given(start=STARTS, zone=ZONES, attempts=ATTEMPTS, rules=POLICIES)
def test_marketing_send_never_finds_a_full_window(
    start: datetime, zone: ZoneInfo, attempts: list[tuple[int, str, bool]],
    rules: dict[str, Any],
) -> None:
    """With calendar caps (the default policy or a tight one), a marketing send is capped
    exactly when its contact-local day, ISO week or month already holds its limit of sends
    (transactional ones count but are never capped), so no window ever gets a marketing
    send past its limit."""
    limits = rules["caps"]["limits"]
    contact: dict[str, Any] = {"consent": {"sms": True}, "timezone": zone.key, "sends": []}
    sent: list[datetime] = []
    marketing: list[datetime] = []
    now = start
    for n, (gap, channel, transactional) in enumerate(attempts):
        now += timedelta(seconds=gap)
        command = {"message_id": f"m-{n}", "channel": channel, "to": "+14155550101",
                   "transactional": transactional, "expires_at": (now + KEEP_SENDS).isoformat()}
        decision = decide(command, contact, rules, False, now, "defer")
        full = any(held(sent, now, zone, kind) >= limit for kind, limit in limits.items())
        quiet = channel != "email" and not 8 <= now.astimezone(zone).hour < 21
        if transactional:
            expected = "send"
        elif quiet:
            expected = "quiet_hours_deferred"
        else:
            expected = "frequency_capped" if full else "send"
        assert expected == (decision.reason or decision.action)
        if decision.action == "send":
            record_send(contact, command, now)
            sent.append(now)
            if not transactional:
                marketing.append(now)
    for t in marketing:
        for kind, limit in limits.items():
            assert held(marketing, calendar_window(t, zone, kind)[1] - MICRO, zone, kind) <= limit


LIMIT = st.one_of(st.none(), st.integers(0, 6))
SENDS = st.lists(
    st.tuples(st.integers(0, 40 * 86400), st.sampled_from(["sms", "email"]), st.booleans()),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(now=STARTS, zone=ZONES, sends=SENDS, day=LIMIT, week=LIMIT, month=LIMIT,
       sms_day=LIMIT, channel=st.sampled_from(["sms", "email"]))
def test_calendar_room_is_the_first_instant_with_room(
    now: datetime, zone: ZoneInfo, sends: list[tuple[int, str, bool]], day: int | None,
    week: int | None, month: int | None, sms_day: int | None, channel: str,
) -> None:
    """With calendar windows, a capped send is told the first instant at which every window
    has room (it is still capped a microsecond before); no time only for a cap of 0."""
    rules = policy(caps={"limits": {"day": day, "week": week, "month": month},
                         "channels": {"sms": {"day": sms_day}}})
    history = [record(now - timedelta(seconds=s), ch, ident=f"m-{n}", transactional=tx)
               for n, (s, ch, tx) in enumerate(sends)]
    capped, room = cap_until(history, rules, {}, channel, zone, now)
    if not capped:
        assert room is None
    elif room is None:
        limits = [day, week, month] + ([sms_day] if channel == "sms" else [])
        assert 0 in limits
    else:
        assert (True, (False, None), True) == (
            room > now, cap_until(history, rules, {}, channel, zone, room),
            cap_until(history, rules, {}, channel, zone, room - MICRO)[0])


@settings(max_examples=200, deadline=None)
@given(start=STARTS, steps=st.lists(
    st.tuples(st.integers(0, 12 * 86400), st.sampled_from([f"m-{n}" for n in range(6)])),
    max_size=40))
def test_each_message_is_counted_once(start: datetime, steps: list[tuple[int, str]]) -> None:
    """Whatever is replayed when, a contact's sends hold each message id once, at its first
    send, until that send is more than 32 days old."""
    contact: dict[str, Any] = {}
    model: dict[str, datetime] = {}
    now = start
    for gap, ident in steps:
        now += timedelta(seconds=gap)
        record_send(contact, {"message_id": ident, "channel": "sms"}, now)
        model = {i: t for i, t in model.items() if t >= now - KEEP_SENDS}
        model.setdefault(ident, now)
        ids = [s["id"] for s in contact["sends"]]
        assert (model, len(ids)) == (
            {s["id"]: datetime.fromisoformat(s["at"]) for s in contact["sends"]}, len(set(ids)))
