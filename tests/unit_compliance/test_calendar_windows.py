"""Calendar cap windows (tables/compliance.py ``calendar_window``): the contact-local day,
ISO week and month as UTC instants, across zones, month ends and DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.compliance import calendar_window
from tests.unit_compliance.support import (
    AUCKLAND,
    HAVANA,
    HOUR,
    LA,
    MICRO,
    SANTIAGO,
    UTC_ZONE,
    instants,
    local,
    utc,
)

WINDOWS = [
    # --- the same instant is a different local day in Auckland and Los Angeles -----------
    # 2026-03-02 11:00Z is 00:00 on Tuesday 3 March in Auckland (NZDT, +13)...
    (utc("2026-03-02T11:00"), AUCKLAND, "day", utc("2026-03-02T11:00"), utc("2026-03-03T11:00")),
    # ...and 03:00 on Monday 2 March in Los Angeles (PST, -8).
    (utc("2026-03-02T11:00"), LA, "day", utc("2026-03-02T08:00"), utc("2026-03-03T08:00")),
    # A microsecond earlier it is still Monday 2 March in Auckland.
    (utc("2026-03-02T11:00") - MICRO, AUCKLAND, "day", utc("2026-03-01T11:00"),
     utc("2026-03-02T11:00")),
    # UTC midnight is mid-afternoon in Los Angeles: still the previous local day.
    (utc("2026-03-03T00:00"), LA, "day", utc("2026-03-02T08:00"), utc("2026-03-03T08:00")),
    # --- ISO weeks start on Monday 00:00 local -------------------------------------------
    # Sunday 1 March 23:59 in Los Angeles: the week of Monday 23 February.
    (local(LA, 2026, 3, 1, 23, 59), LA, "week", local(LA, 2026, 2, 23), local(LA, 2026, 3, 2)),
    # Monday 2 March 00:00 in Los Angeles: a new week (ending an hour early: DST on 8 March).
    (local(LA, 2026, 3, 2), LA, "week", utc("2026-03-02T08:00"), utc("2026-03-09T07:00")),
    # Monday 00:00 in Auckland is still Sunday in Los Angeles: a new week there only.
    (utc("2026-03-01T11:00"), AUCKLAND, "week", utc("2026-03-01T11:00"),
     utc("2026-03-08T11:00")),
    (utc("2026-03-01T11:00"), LA, "week", utc("2026-02-23T08:00"), utc("2026-03-02T08:00")),
    # Thursday 1 January 2026: its ISO week began Monday 29 December 2025.
    (utc("2026-01-01T12:00"), UTC_ZONE, "week", utc("2025-12-29T00:00"),
     utc("2026-01-05T00:00")),
    # New Year 2027 (a Friday) in Auckland while it is still 2026 in UTC: week of 28 Dec.
    (utc("2026-12-31T12:00"), AUCKLAND, "week", local(AUCKLAND, 2026, 12, 28),
     local(AUCKLAND, 2027, 1, 4)),
    # Saturday 1 January 2028: the week of Monday 27 December 2027.
    (utc("2028-01-01T00:00"), UTC_ZONE, "week", utc("2027-12-27T00:00"),
     utc("2028-01-03T00:00")),
    # --- month ends ----------------------------------------------------------------------
    # 31 January 23:59:59: still January.
    (utc("2026-01-31T23:59:59"), UTC_ZONE, "month", utc("2026-01-01T00:00"),
     utc("2026-02-01T00:00")),
    # 1 February 00:00: February, 28 days in 2026.
    (utc("2026-02-01T00:00"), UTC_ZONE, "month", utc("2026-02-01T00:00"),
     utc("2026-03-01T00:00")),
    # 28 February 2028, a leap year: the month runs to 1 March (29 days).
    (utc("2028-02-28T12:00"), UTC_ZONE, "month", utc("2028-02-01T00:00"),
     utc("2028-03-01T00:00")),
    # 29 February 2028 is a day of its own.
    (utc("2028-02-29T23:00"), UTC_ZONE, "day", utc("2028-02-29T00:00"),
     utc("2028-03-01T00:00")),
    # 31 December: the month ends at New Year.
    (utc("2026-12-31T23:59"), UTC_ZONE, "month", utc("2026-12-01T00:00"),
     utc("2027-01-01T00:00")),
    # 1 January: a new month in a new year.
    (utc("2027-01-01T00:00"), UTC_ZONE, "month", utc("2027-01-01T00:00"),
     utc("2027-02-01T00:00")),
    # 1 April 00:30 in Auckland is 31 March in UTC; April ends in NZST (+12, not +13).
    (utc("2026-03-31T11:30"), AUCKLAND, "month", utc("2026-03-31T11:00"),
     utc("2026-04-30T12:00")),
    # March in Los Angeles starts in PST and ends in PDT.
    (local(LA, 2026, 3, 15), LA, "month", utc("2026-03-01T08:00"), utc("2026-04-01T07:00")),
]


@pytest.mark.parametrize(("now", "zone", "kind", "start", "end"), WINDOWS)
def test_calendar_window(
    now: datetime, zone: ZoneInfo, kind: str, start: datetime, end: datetime
) -> None:
    """The window holding ``now`` runs from local midnight of its first day to local
    midnight after its last."""
    assert (start, end) == calendar_window(now, zone, kind)


DAY_LENGTHS = [
    # Los Angeles springs forward on 8 March 2026: a 23-hour day.
    (LA, (2026, 3, 8, 12), 23),
    # Los Angeles falls back on 1 November 2026: a 25-hour day.
    (LA, (2026, 11, 1, 12), 25),
    # The day before the change is an ordinary 24 hours.
    (LA, (2026, 3, 7, 12), 24),
    # Auckland falls back on 5 April 2026: 25 hours.
    (AUCKLAND, (2026, 4, 5, 12), 25),
    # Auckland springs forward on 27 September 2026: 23 hours.
    (AUCKLAND, (2026, 9, 27, 12), 23),
    # Santiago's day of 6 September 2026 begins at 01:00 (midnight is skipped): 23 hours.
    (SANTIAGO, (2026, 9, 6, 12), 23),
    # Havana skips midnight on 8 March 2026: 23 hours.
    (HAVANA, (2026, 3, 8, 12), 23),
    # Havana falls back at 01:00 → 00:00 on 1 November 2026 (midnight twice): 25 hours.
    (HAVANA, (2026, 11, 1, 12), 25),
]


@pytest.mark.parametrize(("zone", "at", "hours"), DAY_LENGTHS)
def test_dst_day_length(zone: ZoneInfo, at: tuple[int, ...], hours: int) -> None:
    """A local day on a DST change is as long as the clocks make it, not 24 hours."""
    start, end = calendar_window(local(zone, *at), zone, "day")
    assert timedelta(hours=hours) == end - start


def skips_midnight(zone: ZoneInfo, day: tuple[int, int, int]) -> bool:
    """True if 00:00 on ``day`` never happens on the clocks of ``zone`` (zoneinfo's data)."""
    read_back = datetime(*day, tzinfo=zone).astimezone(UTC).astimezone(zone)
    return (read_back.hour, read_back.minute) != (0, 0)


SKIPPED_MIDNIGHTS = [
    # Santiago: Saturday 5 September 24:00 becomes Sunday 01:00 (-04 → -03).
    (SANTIAGO, (2026, 9, 6), utc("2026-09-06T04:00"), utc("2026-09-07T03:00")),
    # Havana: 8 March 2026 00:00 becomes 01:00 (-05 → -04).
    (HAVANA, (2026, 3, 8), utc("2026-03-08T05:00"), utc("2026-03-09T04:00")),
]


@pytest.mark.parametrize(("zone", "day", "start", "end"), SKIPPED_MIDNIGHTS)
def test_day_whose_midnight_is_skipped(
    zone: ZoneInfo, day: tuple[int, int, int], start: datetime, end: datetime
) -> None:
    """A day whose midnight does not exist starts at its first instant (01:00 local), and
    the day before ends there, so no instant is in two days or in none."""
    assert skips_midnight(zone, day), "zoneinfo's data no longer skips this midnight"
    before = calendar_window(start - MICRO, zone, "day")
    assert (1, (start, end), start) == (
        start.astimezone(zone).hour, calendar_window(start, zone, "day"), before[1])


def test_repeated_midnight_belongs_to_the_new_day() -> None:
    """In Havana on 1 November 2026 midnight happens twice; both 00:30s are 1 November."""
    first, second = local(HAVANA, 2026, 11, 1, 0, 30), local(HAVANA, 2026, 11, 1, 0, 30, fold=1)
    window = (utc("2026-11-01T04:00"), utc("2026-11-02T05:00"))
    assert (HOUR, window, window) == (
        second - first, calendar_window(first, HAVANA, "day"),
        calendar_window(second, HAVANA, "day"))

ZONES = st.sampled_from([LA, AUCKLAND, SANTIAGO, HAVANA, UTC_ZONE, ZoneInfo("Asia/Kolkata"),
                         ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Europe/London")])
INSTANTS = instants(utc("2025-01-01T00:00"), utc("2029-12-31T00:00"))


@settings(max_examples=300, deadline=None)
@given(now=INSTANTS, zone=ZONES, kind=st.sampled_from(["day", "week", "month"]))
def test_windows_tile_time(now: datetime, zone: ZoneInfo, kind: str) -> None:
    """Every instant lies in exactly one window: ``start <= now < end``, the window at
    ``end`` starts there and the one before ``start`` ends there; its first local day is
    the contact's day, a Monday, or the 1st."""
    start, end = calendar_window(now, zone, kind)
    first = start.astimezone(zone).date()
    today = now.astimezone(zone).date()
    expected_first = {"day": today, "week": today - timedelta(days=today.weekday()),
                      "month": today.replace(day=1)}[kind]
    assert (True, end, start, expected_first) == (
        start <= now < end, calendar_window(end, zone, kind)[0],
        calendar_window(start - MICRO, zone, kind)[1], first)
