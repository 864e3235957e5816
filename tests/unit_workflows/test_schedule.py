"""Local-time maths for waits (tables/schedule.py), across DST in both hemispheres.

Expected instants are written in UTC with the local wall time beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tables.schedule import WEEKDAYS, contact_zone, local_to_utc, next_local_time

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
AUCKLAND = ZoneInfo("Pacific/Auckland")
TOKYO = ZoneInfo("Asia/Tokyo")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    """An instant in UTC."""
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def wall(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A naive wall-clock time (what local_to_utc takes)."""
    return utc(year, month, day, hour, minute).replace(tzinfo=None)


NEXT_LOCAL_TIME = [
    # A winter morning in New York (07:00 EST, UTC-5): 09:00 today is 14:00 UTC.
    pytest.param(utc(2026, 1, 14, 12), NEW_YORK, dtime(9), None, utc(2026, 1, 14, 14),
                 id="ny-winter"),
    # A summer morning (08:00 EDT, UTC-4): 09:00 today is 13:00 UTC.
    pytest.param(utc(2026, 7, 1, 12), NEW_YORK, dtime(9), None, utc(2026, 7, 1, 13),
                 id="ny-summer"),
    # A winter evening (17:00 EST): tomorrow.
    pytest.param(utc(2026, 1, 14, 22), NEW_YORK, dtime(9), None, utc(2026, 1, 15, 14),
                 id="ny-evening"),
    # Spring forward, 2026-03-08: 02:30 does not exist, so 03:30 EDT.
    pytest.param(utc(2026, 3, 7, 17), NEW_YORK, dtime(2, 30), None, utc(2026, 3, 8, 7, 30),
                 id="ny-spring-gap"),
    # Asked at 01:45 EST on the spring-forward night: 03:30 EDT is 45 minutes away.
    pytest.param(utc(2026, 3, 8, 6, 45), NEW_YORK, dtime(2, 30), None,
                 utc(2026, 3, 8, 7, 30), id="ny-spring-gap-same-night"),
    # Spring forward: 09:00 that day is already EDT (13:00 UTC, not 14:00).
    pytest.param(utc(2026, 3, 7, 17), NEW_YORK, dtime(9), None, utc(2026, 3, 8, 13),
                 id="ny-spring-morning"),
    # Fall back, 2026-11-01: 01:30 happens twice; the first, in EDT (05:30 UTC).
    pytest.param(utc(2026, 10, 31, 17), NEW_YORK, dtime(1, 30), None, utc(2026, 11, 1, 5, 30),
                 id="ny-fall-fold"),
    # Fall back: 09:00 that day is EST again (14:00 UTC).
    pytest.param(utc(2026, 10, 31, 17), NEW_YORK, dtime(9), None, utc(2026, 11, 1, 14),
                 id="ny-fall-morning"),
    # Berlin spring forward, 2026-03-29: 02:30 does not exist, so 03:30 CEST.
    pytest.param(utc(2026, 3, 28, 12), BERLIN, dtime(2, 30), None, utc(2026, 3, 29, 1, 30),
                 id="berlin-spring-gap"),
    # Berlin fall back, 2026-10-25: 02:30 twice; the first, in CEST (00:30 UTC).
    pytest.param(utc(2026, 10, 24, 12), BERLIN, dtime(2, 30), None, utc(2026, 10, 25, 0, 30),
                 id="berlin-fall-fold"),
    # Auckland (southern hemisphere) springs forward in September: 02:30 → 03:30 NZDT.
    pytest.param(utc(2026, 9, 26, 0), AUCKLAND, dtime(2, 30), None, utc(2026, 9, 26, 14, 30),
                 id="auckland-spring-gap"),
    # Auckland falls back in April: 02:30 twice; the first, in NZDT (UTC+13).
    pytest.param(utc(2026, 4, 4, 0), AUCKLAND, dtime(2, 30), None, utc(2026, 4, 4, 13, 30),
                 id="auckland-fall-fold"),
    # Auckland in its summer (January, NZDT): 09:00 is 20:00 UTC the day before.
    pytest.param(utc(2026, 1, 14, 0), AUCKLAND, dtime(9), None, utc(2026, 1, 14, 20),
                 id="auckland-summer"),
    # Exactly at the time: strictly after now, so the next day.
    pytest.param(utc(2026, 1, 14, 14), NEW_YORK, dtime(9), None, utc(2026, 1, 15, 14),
                 id="exactly-now"),
    # One microsecond before the time: today.
    pytest.param(utc(2026, 1, 14, 13, 59, 59, 999999), NEW_YORK, dtime(9), None,
                 utc(2026, 1, 14, 14), id="just-before"),
    # Friday evening, weekdays only: Monday 09:00 (and DST began on the Sunday: EDT).
    pytest.param(utc(2026, 3, 6, 23), NEW_YORK, dtime(9), list(WEEKDAYS[:5]),
                 utc(2026, 3, 9, 13), id="friday-evening-to-monday"),
    # Saturdays only, asked on a Saturday after the time: a week later.
    pytest.param(utc(2026, 1, 17, 16), NEW_YORK, dtime(10), ["sat"], utc(2026, 1, 24, 15),
                 id="saturday-a-week-later"),
    # The weekday is the local one: Monday 00:30 in Tokyo is still Sunday in UTC.
    pytest.param(utc(2026, 1, 18, 15), TOKYO, dtime(9), ["mon"], utc(2026, 1, 19, 0),
                 id="weekday-in-local-zone"),
    # Midnight local comes at the start of the next local day.
    pytest.param(utc(2026, 1, 14, 12), BERLIN, dtime(0), None, utc(2026, 1, 14, 23),
                 id="midnight"),
]


@pytest.mark.parametrize(("now", "zone", "at", "weekdays", "expected"), NEXT_LOCAL_TIME)
def test_next_local_time(
    now: datetime, zone: ZoneInfo, at: dtime, weekdays: list[str] | None, expected: datetime
) -> None:
    """The first instant strictly after now at the local time, in UTC."""
    actual = next_local_time(now, zone, at, weekdays)
    assert (expected, timedelta(0)) == (actual, actual.utcoffset())


@pytest.mark.parametrize(
    "zone_name",
    [
        "Asia/Tokyo",  # ahead of UTC
        "America/Los_Angeles",  # behind UTC
        "Australia/Sydney",  # a southern-hemisphere zone
        "UTC",  # UTC itself
    ],
)
def test_now_in_another_zone(zone_name: str) -> None:
    """The zone ``now`` is written in does not change the answer, which is in UTC."""
    now = utc(2026, 3, 6, 23)
    expected = next_local_time(now, NEW_YORK, dtime(9))
    actual = next_local_time(now.astimezone(ZoneInfo(zone_name)), NEW_YORK, dtime(9))
    assert (expected, timedelta(0)) == (actual, actual.utcoffset())


def test_naive_now_is_refused() -> None:
    """A naive ``now`` is a ValueError, never silently taken as UTC or local."""
    with pytest.raises(ValueError, match="timezone-aware"):
        next_local_time(datetime(2026, 1, 1), NEW_YORK, dtime(9))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("naive", "zone", "expected"),
    [
        # An ordinary winter time.
        pytest.param(wall(2026, 1, 14, 9), NEW_YORK, utc(2026, 1, 14, 14), id="plain"),
        # In the spring-forward gap: moved forward by the gap, 02:30 → 03:30 EDT.
        pytest.param(wall(2026, 3, 8, 2, 30), NEW_YORK, utc(2026, 3, 8, 7, 30), id="gap"),
        # The first minute of the gap: 02:00 → 03:00 EDT.
        pytest.param(wall(2026, 3, 8, 2, 0), NEW_YORK, utc(2026, 3, 8, 7, 0),
                     id="gap-start"),
        # Just after the gap: 03:00 EDT exists.
        pytest.param(wall(2026, 3, 8, 3, 0), NEW_YORK, utc(2026, 3, 8, 7, 0),
                     id="after-gap"),
        # The repeated hour: its first occurrence (EDT).
        pytest.param(wall(2026, 11, 1, 1, 30), NEW_YORK, utc(2026, 11, 1, 5, 30),
                     id="fold"),
        # Auckland's repeated hour: its first occurrence (NZDT).
        pytest.param(wall(2026, 4, 5, 2, 30), AUCKLAND, utc(2026, 4, 4, 13, 30),
                     id="fold-south"),
    ],
)
def test_local_to_utc(naive: datetime, zone: ZoneInfo, expected: datetime) -> None:
    """A wall-clock time maps to one UTC instant: gap shifted forward, fold the first."""
    assert expected == local_to_utc(naive, zone)


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        ({"timezone": "Europe/Berlin"}, "Europe/Berlin"),  # the contact's own zone
        ({"timezone": None}, "America/New_York"),  # none known: the workflow's zone
        ({"timezone": ""}, "America/New_York"),  # empty counts as none
        ({}, "America/New_York"),  # absent counts as none
    ],
)
def test_contact_zone(contact: dict[str, object], expected: str) -> None:
    """A contact's own zone wins; the fallback is used when it has none."""
    assert ZoneInfo(expected) == contact_zone(contact, "America/New_York")


ZONES = ["America/New_York", "Europe/Berlin", "Pacific/Auckland", "Asia/Kolkata",
         "Australia/Adelaide", "UTC"]


def exists(day: datetime, at: dtime, zone: ZoneInfo) -> bool:
    """Whether ``at`` on ``day``'s date is a real wall time in ``zone`` (not in a gap)."""
    naive = datetime.combine(day.date(), at)
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(
        tzinfo=None) == naive


@given(
    now=st.datetimes(wall(2025, 1, 1), wall(2029, 12, 31), timezones=st.just(UTC)),
    zone_name=st.sampled_from(ZONES),
    at=st.times(),
    weekdays=st.none() | st.lists(st.sampled_from(WEEKDAYS), min_size=1, unique=True),
)
def test_next_local_time_properties(
    now: datetime, zone_name: str, at: dtime, weekdays: list[str] | None
) -> None:
    """Always later than now, within 8 days, on an allowed local weekday, at the wall time."""
    zone = ZoneInfo(zone_name)
    result = next_local_time(now, zone, at, weekdays)
    local = result.astimezone(zone)
    assert now < result <= now + timedelta(days=8)
    allowed = set(weekdays or WEEKDAYS)
    if exists(local, at, zone):
        assert (WEEKDAYS[local.weekday()] in allowed, at) == (True, local.time())
