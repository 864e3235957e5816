"""Frequency caps (tables/compliance.py ``cap_until`` and ``record_send``): which sends a
window counts, when a full window has room again, and how sends are remembered."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tables.compliance import KEEP_SENDS, cap_until, record_send
from tests.unit_compliance.support import (
    DAY,
    HOUR,
    LA,
    MICRO,
    caps,
    local,
    policy,
    record,
    records,
)


def wed(hour: int, minute: int = 0, day: int = 4) -> datetime:
    """A wall-clock time in Los Angeles in the week of Wednesday 4 March 2026 (PST)."""
    return local(LA, 2026, 3, day, hour, minute)


NOW = wed(12)  # Wednesday 4 March 2026 12:00 PST
MIDNIGHT = local(LA, 2026, 3, 5)  # the end of Wednesday, local
NEXT_MONDAY = local(LA, 2026, 3, 9)  # the end of the ISO week (PDT by then)
APRIL = local(LA, 2026, 4, 1)  # the end of the month
TODAY = [wed(h) for h in (8, 9, 10, 11, 11)]  # five sends earlier today

CASES: list[tuple[list[dict[str, Any]], dict[str, Any], dict[str, int] | None, str,
                  tuple[bool, datetime | None]]] = [
    # No sends yet.
    ([], caps(), None, "sms", (False, None)),
    # Four sends today, cap 5: room for one more.
    (records(*TODAY[:4]), caps(), None, "sms", (False, None)),
    # Five sends today: capped until the next local midnight.
    (records(*TODAY), caps(), None, "sms", (True, MIDNIGHT)),
    # A send exactly at local midnight is in today's window.
    (records(wed(0), *TODAY[:4]), caps(), None, "sms", (True, MIDNIGHT)),
    # ...a microsecond before it is yesterday's.
    (records(wed(0) - MICRO, *TODAY[:4]), caps(), None, "sms", (False, None)),
    # Sends after ``now`` (a clock skew) are not counted.
    (records(*TODAY[:4], NOW + HOUR), caps(), None, "sms", (False, None)),
    # Five sends yesterday evening (the latest 13 hours ago): a new calendar day has room...
    (records(*[wed(h, day=3) for h in (19, 20, 21, 22, 23)]), caps(), None, "sms",
     (False, None)),
    # ...but the rolling 24 hours hold all five: room when the oldest (19:00) ages out.
    (records(*[wed(h, day=3) for h in (19, 20, 21, 22, 23)]), caps("rolling"), None, "sms",
     (True, wed(19))),
    # Four today and one 23 hours ago: the calendar day has room...
    (records(wed(13, day=3), *TODAY[:4]), caps(), None, "sms", (False, None)),
    # ...the rolling day is full until the one from 23 hours ago is 24 hours old.
    (records(wed(13, day=3), *TODAY[:4]), caps("rolling"), None, "sms", (True, wed(13))),
    # Rolling, seven in the window and a cap of 5: room when the third oldest ages out.
    (records(*[NOW - timedelta(hours=h) for h in (20, 18, 16, 6, 5, 4, 3)]), caps("rolling"),
     None, "sms", (True, NOW - timedelta(hours=16) + DAY)),
    # The all-channel cap counts every channel: five emails cap an SMS.
    (records(*TODAY, channel="email"), caps(), None, "sms", (True, MIDNIGHT)),
    # Transactional sends are counted in the window too.
    ([record(t, transactional=True, ident=f"t-{n}") for n, t in enumerate(TODAY)], caps(),
     None, "sms", (True, MIDNIGHT)),
    # A per-channel cap of 2 SMS a day: two SMS cap the third...
    (records(*TODAY[:2]), caps(channels={"sms": {"day": 2}}), None, "sms", (True, MIDNIGHT)),
    # ...but not an email.
    (records(*TODAY[:2]), caps(channels={"sms": {"day": 2}}), None, "email", (False, None)),
    # Two emails do not fill the SMS cap.
    (records(*TODAY[:2], channel="email"), caps(channels={"sms": {"day": 2}}), None, "sms",
     (False, None)),
    # The per-channel cap comes on top of the all-channel one: 5 emails still cap an SMS.
    (records(*TODAY, channel="email"), caps(channels={"sms": {"day": 2}}), None, "sms",
     (True, MIDNIGHT)),
    # A per-channel weekly cap: room again next Monday.
    (records(*[wed(9, day=d) for d in (2, 3)], channel="email"),
     caps(channels={"email": {"week": 2}}), None,
     "email", (True, NEXT_MONDAY)),
    # The contact's own cap of 2 a day overrides the account's 5.
    (records(*TODAY[:2]), caps(), {"day": 2}, "sms", (True, MIDNIGHT)),
    # The contact's own cap of 10 a day lets a sixth through.
    (records(*TODAY), caps(), {"day": 10}, "sms", (False, None)),
    # The contact's day cap leaves the account's week cap in force.
    (records(*[wed(h, day=d) for d in (2, 3) for h in range(8, 18)]), caps(), {"day": 10},
     "sms", (True, NEXT_MONDAY)),
    # A contact cap of 0: capped, with no time it will ever have room.
    ([], caps(), {"day": 0}, "email", (True, None)),
    # An account cap of 0: the same.
    ([], caps(day=0), None, "sms", (True, None)),
    # A per-channel cap of 0 for MMS: capped for good.
    ([], caps(channels={"mms": {"month": 0}}), None, "mms", (True, None)),
    # No day cap at all (None): ten today is fine.
    (records(*[wed(h) for h in range(1, 11)]), caps(day=None), None, "sms", (False, None)),
    # 20 sends Monday and Tuesday fill the week: room next Monday 00:00 local (PDT).
    (records(*[wed(h, day=d) for d in (2, 3) for h in range(8, 18)]), caps(), None, "sms",
     (True, NEXT_MONDAY)),
    # The day and the week both full: room when both are, at the week's end.
    (records(*[wed(h, day=d) for d in (2, 3) for h in range(8, 18)], *TODAY), caps(), None,
     "sms", (True, NEXT_MONDAY)),
    # 50 sends earlier this month fill it: room on 1 April local.
    (records(*[local(LA, 2026, 3, 1, 0, m) for m in range(50)]), caps(), None, "sms",
     (True, APRIL)),
    # 50 sends last month do not count this month.
    (records(*[local(LA, 2026, 2, 28, 23, m) for m in range(50)]), caps(), None, "sms",
     (False, None)),
    # Rolling week: 20 in the last 7 days; room when the oldest is 7 days old.
    (records(*[NOW - timedelta(days=6, hours=h) for h in range(20)]), caps("rolling"), None,
     "sms", (True, NOW - timedelta(days=6, hours=19) + timedelta(days=7))),
    # Rolling month (30 days): 50 sends 29 days ago.
    (records(*[NOW - timedelta(days=29, minutes=m) for m in range(50)]), caps("rolling"), None,
     "sms", (True, NOW - timedelta(days=29, minutes=49) + timedelta(days=30))),
]


@pytest.mark.parametrize(("sends", "cap_policy", "contact_caps", "channel", "expected"), CASES)
def test_cap_until(
    sends: list[dict[str, Any]], cap_policy: dict[str, Any], contact_caps: dict[str, int] | None,
    channel: str, expected: tuple[bool, datetime | None],
) -> None:
    """A send is capped when any window that applies holds its limit; the time returned is
    when every full window has room again (None: a cap of 0 never has)."""
    contact = {"caps": contact_caps}
    assert expected == cap_until(sends, policy(caps=cap_policy), contact, channel, LA, NOW)


@pytest.mark.parametrize(
    "cap_policy",
    [
        # Rolling day: 5 sends in the last 24 hours.
        caps("rolling"),
        # Rolling week: a cap of 2 a week.
        caps("rolling", week=2, day=None),
    ],
)
def test_rolling_window_has_room_at_the_time_returned(cap_policy: dict[str, Any]) -> None:
    """At the time a full rolling window is said to have room, it has room."""
    sends = records(*[NOW - timedelta(hours=h) for h in (5, 4, 3, 2, 1)])
    capped, room = cap_until(sends, policy(caps=cap_policy), {}, "sms", LA, NOW)
    assert room is not None
    assert (True, (False, None)) == (capped, cap_until(sends, policy(caps=cap_policy), {},
                                                       "sms", LA, room))


def test_calendar_window_has_room_at_the_time_returned() -> None:
    """At the next local midnight the full day has room; a microsecond before it has not."""
    sends = records(*TODAY)
    capped, room = cap_until(sends, policy(), {}, "sms", LA, NOW)
    assert room is not None
    assert ((True, MIDNIGHT), (False, None), (True, MIDNIGHT)) == (
        (capped, room), cap_until(sends, policy(), {}, "sms", LA, room),
        cap_until(sends, policy(), {}, "sms", LA, room - MICRO))


# --- record_send ----------------------------------------------------------------------------


def command(message_id: str, channel: str = "sms", **changes: Any) -> dict[str, Any]:
    return {"message_id": message_id, "channel": channel, **changes}


def test_record_send_writes_one_entry() -> None:
    """A send is remembered by id, UTC time, channel, address and whether it was
    transactional (the address lets a later bounce suppress the one it went to)."""
    contact: dict[str, Any] = {}
    sent = command("m-1", "email", transactional=True)
    record_send(contact, sent, NOW)
    assert [{"id": "m-1", "at": "2026-03-04T20:00:00+00:00", "channel": "email",
             "to": sent.get("to"), "transactional": True}] == contact["sends"]


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        # One send.
        (["m-1"], ["m-1"]),
        # A replay of the same message is not counted twice.
        (["m-1", "m-1"], ["m-1"]),
        # Two different messages are two sends.
        (["m-1", "m-2"], ["m-1", "m-2"]),
        # A replay after another send still finds the first.
        (["m-1", "m-2", "m-1"], ["m-1", "m-2"]),
    ],
)
def test_record_send_once_per_message_id(ids: list[str], expected: list[str]) -> None:
    """Recording the same ``message_id`` again (a replay) adds nothing."""
    contact: dict[str, Any] = {"sends": []}
    for n, ident in enumerate(ids):
        record_send(contact, command(ident), NOW + n * HOUR)
    assert expected == [s["id"] for s in contact["sends"]]


def test_replay_keeps_the_first_time() -> None:
    """A replay an hour later leaves the original send time in place."""
    contact: dict[str, Any] = {}
    record_send(contact, command("m-1"), NOW)
    record_send(contact, command("m-1"), NOW + HOUR)
    assert [NOW.isoformat()] == [s["at"] for s in contact["sends"]]


@pytest.mark.parametrize(
    ("age", "kept"),
    [
        # 31 days old: kept (a calendar month can be 31 days).
        (timedelta(days=31), True),
        # Exactly 32 days old: kept.
        (KEEP_SENDS, True),
        # A second older than 32 days: forgotten.
        (KEEP_SENDS + timedelta(seconds=1), False),
        # Two months old: forgotten.
        (timedelta(days=60), False),
    ],
)
def test_record_send_prunes_old_sends(age: timedelta, kept: bool) -> None:
    """Sends older than 32 days are dropped when a new send is recorded."""
    contact = {"sends": [record(NOW - age, ident="old")]}
    record_send(contact, command("new"), NOW)
    assert (["old"] if kept else []) + ["new"] == [s["id"] for s in contact["sends"]]


def test_replay_still_prunes() -> None:
    """A replayed send adds nothing but old sends are still forgotten."""
    contact = {"sends": [record(NOW - timedelta(days=40), ident="old"),
                         record(NOW - HOUR, ident="m-1")]}
    record_send(contact, command("m-1"), NOW)
    assert ["m-1"] == [s["id"] for s in contact["sends"]]


def test_keep_sends_outlasts_every_window() -> None:
    """Sends are remembered longer than the longest calendar month and rolling month."""
    assert (True, True) == (KEEP_SENDS > timedelta(days=31), KEEP_SENDS > timedelta(days=30))
