"""Quiet hours (tables/compliance.py ``quiet_until``): when a marketing send may go out in
the contact's local time, and when the window next opens (across midnight and DST)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.compliance import quiet_until
from tests.unit_compliance.support import (
    AUCKLAND,
    LA,
    SANTIAGO,
    UTC_ZONE,
    instants,
    local,
    policy,
    utc,
)

DEFAULT = policy()["quiet_hours"]  # 08:00-21:00, sms and mms, defer
NIGHT_OWL = {**DEFAULT, "send_from": "22:00", "send_until": "06:00"}  # crosses midnight
EMAIL_ONLY = {**DEFAULT, "channels": ["email"]}
ALWAYS = {**DEFAULT, "send_from": "09:00", "send_until": "09:00"}


def la(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return local(LA, 2026, month, day, hour, minute)


QUIET = [
    # --- the default window, 08:00-21:00, SMS and MMS ---------------------------------
    # 07:59: quiet until 08:00 the same morning.
    (DEFAULT, "sms", la(4, 7, 59), la(4, 8)),
    # 08:00: the window is open.
    (DEFAULT, "sms", la(4, 8), None),
    # 20:59: still open.
    (DEFAULT, "sms", la(4, 20, 59), None),
    # 21:00: closed, until 08:00 tomorrow.
    (DEFAULT, "sms", la(4, 21), la(5, 8)),
    # 23:30: until 08:00 tomorrow.
    (DEFAULT, "sms", la(4, 23, 30), la(5, 8)),
    # Midnight: until 08:00 the same day.
    (DEFAULT, "sms", la(5, 0), la(5, 8)),
    # MMS is restricted like SMS.
    (DEFAULT, "mms", la(4, 22), la(5, 8)),
    # Email is not restricted by default.
    (DEFAULT, "email", la(4, 3), None),
    # --- a window that crosses midnight: 22:00-06:00 -----------------------------------
    # 23:00: open.
    (NIGHT_OWL, "sms", la(4, 23), None),
    # 05:59: open.
    (NIGHT_OWL, "sms", la(5, 5, 59), None),
    # 06:00: closed until 22:00 the same day.
    (NIGHT_OWL, "sms", la(5, 6), la(5, 22)),
    # Noon: until 22:00.
    (NIGHT_OWL, "sms", la(5, 12), la(5, 22)),
    # 22:00: open.
    (NIGHT_OWL, "sms", la(5, 22), None),
    # --- other shapes -------------------------------------------------------------------
    # from == until: no restriction at all.
    (ALWAYS, "sms", la(4, 3), None),
    # A policy restricting email only: email at 03:00 waits...
    (EMAIL_ONLY, "email", la(4, 3), la(4, 8)),
    # ...and SMS goes.
    (EMAIL_ONLY, "sms", la(4, 3), None),
    # No quiet hours in the policy.
    (None, "sms", la(4, 3), None),
    # --- DST -------------------------------------------------------------------------------
    # Saturday 22:00 PST before spring-forward: 08:00 PDT Sunday, 9 hours later.
    (DEFAULT, "sms", la(7, 22), utc("2026-03-08T15:00")),
    # Saturday 22:00 PDT before fall-back: 08:00 PST Sunday, 11 hours later.
    (DEFAULT, "sms", la(31, 22, month=10), utc("2026-11-01T16:00")),
    # A window opening at 02:30 on the spring-forward day (02:30 does not exist): 03:30 PDT.
    ({**DEFAULT, "send_from": "02:30", "send_until": "05:00"}, "sms", la(8, 1),
     utc("2026-03-08T10:30")),
]


@pytest.mark.parametrize(("quiet", "channel", "now", "expected"), QUIET)
def test_quiet_until(
    quiet: dict[str, Any] | None, channel: str, now: datetime, expected: datetime | None
) -> None:
    """None inside the send window, else the next local opening time."""
    assert expected == quiet_until(quiet, channel, LA, now)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        # 17:00Z is 06:00 on Tuesday in Auckland: quiet until 08:00 there (19:00Z).
        (AUCKLAND, utc("2026-03-02T19:00")),
        # ...09:00 on Monday in Los Angeles: open.
        (LA, None),
        # ...17:00 in UTC: open.
        (UTC_ZONE, None),
    ],
)
def test_quiet_hours_are_local(zone: ZoneInfo, expected: datetime | None) -> None:
    """The same instant is quiet in one zone and not in another."""
    assert expected == quiet_until(DEFAULT, "sms", zone, utc("2026-03-02T17:00"))




def hhmm(first_minute: int) -> st.SearchStrategy[str]:
    """A time of day as HH:MM, from ``first_minute`` after midnight on."""
    return st.integers(first_minute, 24 * 60 - 1).map(lambda m: f"{m // 60:02d}:{m % 60:02d}")



@settings(max_examples=300, deadline=None)
@given(
    now=instants(utc("2026-01-01T00:00"), utc("2028-12-31T00:00")),
    zone=st.sampled_from([LA, AUCKLAND, SANTIAGO, UTC_ZONE]),
    send_from=hhmm(3 * 60),  # no zone here skips a time after 03:00
    send_until=hhmm(0),
)
def test_opening_is_later_and_open(
    now: datetime, zone: ZoneInfo, send_from: str, send_until: str
) -> None:
    """A send that must wait is told a later instant, within 25 hours, whose local time is
    the opening time and at which the window is open."""
    quiet = {**DEFAULT, "send_from": send_from, "send_until": send_until}
    opens = quiet_until(quiet, "sms", zone, now)
    if opens is not None:
        assert (True, True, None, send_from) == (
            opens > now, opens - now <= timedelta(hours=25), quiet_until(quiet, "sms", zone, opens),
            opens.astimezone(zone).strftime("%H:%M"))
