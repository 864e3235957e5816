"""Campaign schedules (tables/schedule.py): resolving wall-clock times across DST, cron
occurrences, bounds and validation.

Expected instants are written in UTC with the local wall time beside them. DST dates
used (2026): New York 8 Mar / 1 Nov; Berlin 29 Mar / 25 Oct; Sydney and Lord Howe
5 Apr (back) / 4 Oct (forward); Chatham 5 Apr (back) / 27 Sep (forward), at 02:45.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tables.schedule import (
    Occurrence,
    check_cron,
    contact_instant,
    cron_min_interval,
    earliest_instant,
    is_occurrence,
    latest_instant,
    occurrences,
    parse_local,
    resolve,
)

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SYDNEY = ZoneInfo("Australia/Sydney")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
KOLKATA = ZoneInfo("Asia/Kolkata")
CHATHAM = ZoneInfo("Pacific/Chatham")
UTC_ZONE = ZoneInfo("UTC")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An instant in UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def wall(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
         second: int = 0, microsecond: int = 0) -> datetime:
    """A naive wall-clock time."""
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC
                    ).replace(tzinfo=None)


def recurring(cron: str, **bounds: Any) -> dict[str, Any]:
    """A recurring schedule as model_dump(mode="json") gives it."""
    return {"type": "recurring", "cron": cron, "timezone": None, "start": None, "end": None,
            "max_occurrences": None, **bounds}


def take(schedule: Mapping[str, Any], zone: ZoneInfo, origin: datetime,
         n: int = 100) -> list[Occurrence]:
    """The first ``n`` occurrences (fewer if the schedule ends)."""
    return list(islice(occurrences(schedule, zone, origin), n))


# --- resolve ----------------------------------------------------------------------------

RESOLVE = [
    # New York, spring forward 02:00 EST → 03:00 EDT.
    pytest.param(wall(2026, 3, 8, 1, 59), NEW_YORK, utc(2026, 3, 8, 6, 59), id="ny-before-gap"),
    # The gap's first minute is 03:00 EDT.
    pytest.param(wall(2026, 3, 8, 2), NEW_YORK, utc(2026, 3, 8, 7), id="ny-gap-start"),
    # 02:30 does not exist: 03:30 EDT.
    pytest.param(wall(2026, 3, 8, 2, 30), NEW_YORK, utc(2026, 3, 8, 7, 30), id="ny-gap"),
    # 03:00 EDT, the same instant as the gap's 02:00.
    pytest.param(wall(2026, 3, 8, 3), NEW_YORK, utc(2026, 3, 8, 7), id="ny-after-gap"),
    # Fall back 02:00 EDT → 01:00 EST: 01:30 twice, the first (EDT).
    pytest.param(wall(2026, 11, 1, 1, 30), NEW_YORK, utc(2026, 11, 1, 5, 30),
                 id="ny-overlap-first"),
    # 02:00 happens once, in EST.
    pytest.param(wall(2026, 11, 1, 2), NEW_YORK, utc(2026, 11, 1, 7), id="ny-after-overlap"),
    # Berlin spring forward 02:00 CET → 03:00 CEST: 02:30 is 03:30 CEST.
    pytest.param(wall(2026, 3, 29, 2, 30), BERLIN, utc(2026, 3, 29, 1, 30), id="berlin-gap"),
    # Berlin fall back 03:00 CEST → 02:00 CET: 02:30 CEST first.
    pytest.param(wall(2026, 10, 25, 2, 30), BERLIN, utc(2026, 10, 25, 0, 30),
                 id="berlin-overlap-first"),
    # 03:00 after the overlap is CET.
    pytest.param(wall(2026, 10, 25, 3), BERLIN, utc(2026, 10, 25, 2), id="berlin-after-overlap"),
    # Sydney (southern hemisphere) springs forward in October: 02:30 AEST → 03:30 AEDT.
    pytest.param(wall(2026, 10, 4, 2, 30), SYDNEY, utc(2026, 10, 3, 16, 30), id="sydney-gap-oct"),
    # ... and falls back in April (03:00 AEDT → 02:00 AEST): 02:30 AEDT first.
    pytest.param(wall(2026, 4, 5, 2, 30), SYDNEY, utc(2026, 4, 4, 15, 30),
                 id="sydney-overlap-apr"),
    # 03:00 after the overlap is AEST.
    pytest.param(wall(2026, 4, 5, 3), SYDNEY, utc(2026, 4, 4, 17), id="sydney-after-overlap"),
    # A summer (January) morning in Sydney is AEDT, UTC+11.
    pytest.param(wall(2026, 1, 15, 9), SYDNEY, utc(2026, 1, 14, 22), id="sydney-january"),
    # Kolkata is UTC+05:30 all year: New York's and Berlin's change nights are ordinary.
    pytest.param(wall(2026, 3, 8, 2, 30), KOLKATA, utc(2026, 3, 7, 21), id="kolkata-march"),
    pytest.param(wall(2026, 10, 25, 2, 30), KOLKATA, utc(2026, 10, 24, 21),
                 id="kolkata-october"),
    # Chatham (+12:45, DST +13:45) changes at 02:45 local: 02:44 is still standard time.
    pytest.param(wall(2026, 9, 27, 2, 44), CHATHAM, utc(2026, 9, 26, 13, 59),
                 id="chatham-before-gap"),
    # 02:45 → 03:45 +13:45: 02:45 is the gap's first minute.
    pytest.param(wall(2026, 9, 27, 2, 45), CHATHAM, utc(2026, 9, 26, 14), id="chatham-gap-start"),
    # 03:15 does not exist: 04:15 +13:45.
    pytest.param(wall(2026, 9, 27, 3, 15), CHATHAM, utc(2026, 9, 26, 14, 30), id="chatham-gap"),
    # 03:45 is the first valid minute after the gap.
    pytest.param(wall(2026, 9, 27, 3, 45), CHATHAM, utc(2026, 9, 26, 14), id="chatham-after-gap"),
    # April: 03:45 +13:45 → 02:45 +12:45; 03:15 twice, the first (+13:45).
    pytest.param(wall(2026, 4, 5, 3, 15), CHATHAM, utc(2026, 4, 4, 13, 30),
                 id="chatham-overlap-first"),
    # 03:45 after the overlap is +12:45.
    pytest.param(wall(2026, 4, 5, 3, 45), CHATHAM, utc(2026, 4, 4, 15),
                 id="chatham-after-overlap"),
    # Lord Howe's DST is 30 minutes: 02:00 → 02:30 (+10:30 → +11), so 02:15 is 02:45.
    pytest.param(wall(2026, 10, 4, 2, 15), LORD_HOWE, utc(2026, 10, 3, 15, 45),
                 id="lord-howe-gap"),
    # ... and 02:00 → 01:30 in April: 01:45 twice, the first (+11).
    pytest.param(wall(2026, 4, 5, 1, 45), LORD_HOWE, utc(2026, 4, 4, 14, 45),
                 id="lord-howe-overlap-first"),
]


@pytest.mark.parametrize(("local", "zone", "expected"), RESOLVE)
def test_resolve(local: datetime, zone: ZoneInfo, expected: datetime) -> None:
    """A gap time moves forward by the gap, an overlap time is its first occurrence."""
    assert resolve(local, zone) == expected
    assert resolve(local, zone).tzinfo is UTC


def test_resolve_refuses_an_aware_time() -> None:
    """An aware datetime is not a wall-clock time: refused, not silently relabelled."""
    with pytest.raises(ValueError, match="must be naive"):
        resolve(utc(2026, 7, 1, 9), BERLIN)


@pytest.mark.parametrize(("local", "zone", "expected"), RESOLVE[:6])
def test_contact_instant_is_resolve_by_zone_name(local: datetime, zone: ZoneInfo,
                                                 expected: datetime) -> None:
    """contact_instant resolves in the named zone, and a second call is a cache hit."""
    hits = contact_instant.cache_info().hits
    assert contact_instant(local, zone.key) == expected
    assert contact_instant(local, zone.key) == expected
    assert contact_instant.cache_info().hits >= hits + 1


# --- earliest / latest instants ---------------------------------------------------------

def test_earliest_and_latest_instant() -> None:
    """09:00 is first shown at UTC+14 (19:00Z the day before) and last at UTC-12 (21:00Z)."""
    local = wall(2026, 7, 1, 9)
    assert earliest_instant(local) == utc(2026, 6, 30, 19)
    assert latest_instant(local) == utc(2026, 7, 1, 21)


def test_earliest_and_latest_are_reached() -> None:
    """The bounds are tight: Kiritimati (UTC+14) and Etc/GMT+12 (UTC-12) reach them."""
    local = wall(2026, 7, 1, 9)
    assert contact_instant(local, "Pacific/Kiritimati") == earliest_instant(local)
    assert contact_instant(local, "Etc/GMT+12") == latest_instant(local)


# --- parse_local ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("2026-07-01T10:00", wall(2026, 7, 1, 10), id="minutes"),
    pytest.param("2026-07-01T10:00:30", wall(2026, 7, 1, 10, 0, 30), id="seconds"),
    pytest.param("2028-02-29T23:59", wall(2028, 2, 29, 23, 59), id="leap-day"),
])
def test_parse_local(text: str, expected: datetime) -> None:
    """A local time parses to a naive datetime."""
    parsed = parse_local(text)
    assert parsed == expected
    assert parsed.tzinfo is None


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("2026-07-01T10:00Z", "local time '2026-07-01T10:00Z' has a UTC offset",
                 id="zulu"),
    pytest.param("2026-07-01T10:00+02:00", "has a UTC offset", id="offset"),
    pytest.param("2026-07-01T10:00:00-05:00", "has a UTC offset", id="offset-seconds"),
    pytest.param("2026-07-01", "local time '2026-07-01' is not YYYY-MM-DDTHH:MM[:SS]",
                 id="date-only"),
    pytest.param("2026-07-01 10:00", "is not YYYY-MM-DDTHH:MM[:SS]", id="space"),
    pytest.param("2026-07-01T10:00:00.5", "is not YYYY-MM-DDTHH:MM[:SS]", id="fraction"),
    pytest.param("2026-7-1T10:00", "is not YYYY-MM-DDTHH:MM[:SS]", id="unpadded"),
    pytest.param("tomorrow", "is not YYYY-MM-DDTHH:MM[:SS]", id="garbage"),
    pytest.param("", "is not YYYY-MM-DDTHH:MM[:SS]", id="empty"),
    pytest.param("2026-02-30T10:00", "local time '2026-02-30T10:00' is not a valid date",
                 id="february-30"),
    pytest.param("2027-02-29T10:00", "is not a valid date", id="not-leap"),
    pytest.param("2026-07-01T24:00", "is not a valid date", id="hour-24"),
])
def test_parse_local_errors(text: str, message: str) -> None:
    """Offsets and malformed text are refused with a message that says which."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_local(text)


# --- check_cron -------------------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    pytest.param("0 9 * * MON", id="weekday-name"),
    pytest.param("0 9 * * mon-fri", id="lowercase-range"),
    pytest.param("*/15 8-18 * JAN,DEC 1-5", id="steps-lists-ranges"),
    pytest.param("0 9 * * 7", id="sunday-7"),
    pytest.param("0 9 L * *", id="last-day"),
    pytest.param("0 9 LW * *", id="last-weekday"),
    pytest.param("0 9 * * 5L", id="last-friday"),
    pytest.param("0 9 * * MON#2", id="second-monday"),
    pytest.param("0 9 29 2 *", id="leap-day"),
    pytest.param("  0   9 * *  *  ", id="extra-spaces"),
])
def test_check_cron_accepts(expr: str) -> None:
    """Valid 5-field crons pass."""
    assert check_cron(expr) is None


@pytest.mark.parametrize(("expr", "message"), [
    pytest.param("0 0 * * * *", "cron '0 0 * * * *' has 6 fields, needs 5: minute hour "
                 "day-of-month month day-of-week (seconds and years fields are not supported)",
                 id="six-fields-seconds"),
    pytest.param("0 9 * * * 2026", "has 6 fields, needs 5", id="six-fields-year"),
    pytest.param("0 0 9 * * * 2026", "has 7 fields, needs 5", id="seven-fields"),
    pytest.param("0 9 * *", "cron '0 9 * *' has 4 fields, needs 5: minute hour day-of-month "
                 "month day-of-week", id="four-fields"),
    pytest.param("", "cron '' has 0 fields", id="empty"),
    pytest.param("garbage", "cron 'garbage' has 1 field, needs 5", id="garbage"),
    pytest.param("@daily", "cron macro '@daily' is not supported: write '0 0 * * *'",
                 id="macro-daily"),
    pytest.param("@HOURLY", "cron macro '@HOURLY' is not supported: write '0 * * * *'",
                 id="macro-hourly"),
    pytest.param("@reboot", "cron '@reboot' has 1 field", id="macro-reboot"),
    pytest.param("61 * * * *", "cron '61 * * * *': bad minute field '61'", id="minute-61"),
    pytest.param("0 24 * * *", "bad hour field '24'", id="hour-24"),
    pytest.param("0 9 0 * *", "bad day-of-month field '0'", id="day-0"),
    pytest.param("0 9 32 * *", "bad day-of-month field '32'", id="day-32"),
    pytest.param("0 9 * 13 *", "bad month field '13'", id="month-13"),
    pytest.param("0 9 * * 8", "bad day-of-week field '8'", id="dow-8"),
    pytest.param("0 9 * * FUNDAY", "bad day-of-week field 'FUNDAY'", id="dow-name"),
    pytest.param("0 9 * * MON#6", "bad day-of-week field 'MON#6'", id="dow-sixth"),
    pytest.param("*/0 * * * *", "bad minute field '*/0'", id="step-0"),
    pytest.param("5-1 * * * *", "bad minute field '5-1'", id="reversed-range"),
    pytest.param("x 9 * * *", "bad minute field 'x'", id="letter"),
    pytest.param("0 9 1,,2 * *", "bad day-of-month field '1,,2'", id="empty-list-item"),
    # No February has a 30th: cronsim refuses the day for the months given.
    pytest.param("0 9 30 2 *", "bad day-of-month field '30'", id="february-30"),
])
def test_check_cron_errors(expr: str, message: str) -> None:
    """Invalid crons are refused with a message naming the field and its text."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_cron(expr)


@pytest.mark.parametrize(("expr", "five"), [
    # Quartz/Spring: seconds first.
    pytest.param("0 0 9 * * MON", "0 9 * * MON", id="seconds-first"),
    # Quartz's "?" for the day field it does not restrict is "*" in five fields.
    pytest.param("0 0 9 ? * MON-FRI", "0 9 * * MON-FRI", id="quartz-question-mark"),
    # A seconds field other than 0: occurrences are whole minutes anyway.
    pytest.param("30 15 10 * * *", "15 10 * * *", id="seconds-30"),
    # A year last (six fields): the year goes (start and end bound a schedule).
    pytest.param("0 9 * * * 2026", "0 9 * * *", id="year-last"),
    # Quartz's seven fields: seconds first, a year last.
    pytest.param("0 0 9 ? * * 2026", "0 9 * * *", id="quartz-seven"),
    pytest.param("0 0 9 * * MON *", "0 9 * * MON", id="quartz-seven-any-year"),
])
def test_six_and_seven_field_crons_are_offered_the_five_field_form(expr: str, five: str
                                                                   ) -> None:
    """A seconds or years field is refused with the 5-field expression to write, as the
    docs promise."""
    with pytest.raises(ValueError, match=re.escape(f": write {five!r}") + "$"):
        check_cron(expr)


@pytest.mark.parametrize("expr", [
    # Eight fields: no known form.
    pytest.param("1 2 3 4 5 6 7 8", id="eight"),
    # What the five fields would be is no valid cron either.
    pytest.param("0 99 9 * * *", id="bad-minute-in-six"),
])
def test_no_five_field_form_is_offered_when_there_is_none(expr: str) -> None:
    """Only a valid expression is suggested."""
    with pytest.raises(ValueError) as raised:
        check_cron(expr)
    assert "write" not in str(raised.value)


# --- cron_min_interval ------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "expected"), [
    pytest.param("*/30 * * * *", timedelta(minutes=30), id="half-hourly"),
    pytest.param("* * * * *", timedelta(minutes=1), id="every-minute"),
    pytest.param("0 */4 * * *", timedelta(hours=4), id="four-hourly"),
    pytest.param("0 9 * * *", timedelta(days=1), id="daily"),
    pytest.param("0 9 * * MON", timedelta(days=7), id="weekly"),
    pytest.param("0 9 * * MON-FRI", timedelta(days=1), id="weekdays"),
    pytest.param("0 9,10 * * *", timedelta(hours=1), id="two-a-day"),
    # 23:00 and then 00:00 the next day: the dense spot spans midnight.
    pytest.param("0 0,23 * * *", timedelta(hours=1), id="across-midnight"),
    # 09:00, 09:59, 10:00: the sample goes on past a first gap under an hour.
    pytest.param("0,59 9,10 * * *", timedelta(minutes=1), id="dense-spot-later"),
    # Jan 31 then Feb 1.
    pytest.param("0 9 1,31 * *", timedelta(days=1), id="across-month-end"),
    pytest.param("0 9 1 * *", timedelta(days=28), id="monthly-february"),
    # Two occurrences are taken whatever the span: 2028-02-29, 2032-02-29.
    pytest.param("0 9 29 2 *", timedelta(days=1461), id="leap-day"),
])
def test_cron_min_interval(expr: str, expected: timedelta) -> None:
    """The smallest wall-clock gap between consecutive times of the cron."""
    assert cron_min_interval(expr) == expected


def test_cron_min_interval_refuses_an_invalid_cron() -> None:
    """An invalid cron is a ValueError, as from check_cron."""
    with pytest.raises(ValueError, match=re.escape("bad minute field '61'")):
        cron_min_interval("61 * * * *")


# --- recurring occurrences across DST ---------------------------------------------------

RECURRING = [
    # Berlin 09:00 across the last Sunday of March: 08:00Z (CET), then 07:00Z (CEST).
    pytest.param(BERLIN, "0 9 * * *", utc(2026, 3, 27, 12), [
        ("2026-03-28T09:00", utc(2026, 3, 28, 8)),
        ("2026-03-29T09:00", utc(2026, 3, 29, 7)),
        ("2026-03-30T09:00", utc(2026, 3, 30, 7)),
    ], id="berlin-daily-march"),
    # ... and the last Sunday of October: back to 08:00Z.
    pytest.param(BERLIN, "0 9 * * *", utc(2026, 10, 23, 12), [
        ("2026-10-24T09:00", utc(2026, 10, 24, 7)),
        ("2026-10-25T09:00", utc(2026, 10, 25, 8)),
        ("2026-10-26T09:00", utc(2026, 10, 26, 8)),
    ], id="berlin-daily-october"),
    # Sydney 09:00: AEDT (22:00Z the day before) until 5 April, then AEST (23:00Z).
    pytest.param(SYDNEY, "0 9 * * *", utc(2026, 4, 3, 0), [
        ("2026-04-04T09:00", utc(2026, 4, 3, 22)),
        ("2026-04-05T09:00", utc(2026, 4, 4, 23)),
    ], id="sydney-daily-april"),
    # ... and AEDT again from 4 October.
    pytest.param(SYDNEY, "0 9 * * *", utc(2026, 10, 2, 0), [
        ("2026-10-03T09:00", utc(2026, 10, 2, 23)),
        ("2026-10-04T09:00", utc(2026, 10, 3, 22)),
    ], id="sydney-daily-october"),
    # Kolkata has no DST: 03:30Z every day.
    pytest.param(KOLKATA, "0 9 * * *", utc(2026, 3, 28), [
        ("2026-03-28T09:00", utc(2026, 3, 28, 3, 30)),
        ("2026-03-29T09:00", utc(2026, 3, 29, 3, 30)),
    ], id="kolkata-daily"),
    # 02:30 on the spring-forward day fires at 03:30 EDT, once; the next day at 02:30 EDT.
    pytest.param(NEW_YORK, "30 2 * * *", utc(2026, 3, 7, 12), [
        ("2026-03-08T02:30", utc(2026, 3, 8, 7, 30)),
        ("2026-03-09T02:30", utc(2026, 3, 9, 6, 30)),
    ], id="ny-0230-spring-day"),
    # Hourly across the gap: 02:00 fires at 03:00 EDT; 03:00 (the same instant) is skipped.
    pytest.param(NEW_YORK, "0 * * * *", utc(2026, 3, 8, 5, 30), [
        ("2026-03-08T01:00", utc(2026, 3, 8, 6)),
        ("2026-03-08T02:00", utc(2026, 3, 8, 7)),
        ("2026-03-08T04:00", utc(2026, 3, 8, 8)),
        ("2026-03-08T05:00", utc(2026, 3, 8, 9)),
    ], id="ny-hourly-gap"),
    # Hourly across the overlap: 01:00 fires once (EDT); 01:00 EST does not fire again.
    pytest.param(NEW_YORK, "0 * * * *", utc(2026, 11, 1, 3, 30), [
        ("2026-11-01T00:00", utc(2026, 11, 1, 4)),
        ("2026-11-01T01:00", utc(2026, 11, 1, 5)),
        ("2026-11-01T02:00", utc(2026, 11, 1, 7)),
        ("2026-11-01T03:00", utc(2026, 11, 1, 8)),
    ], id="ny-hourly-overlap"),
    # Half-hourly across the gap: 02:00 and 02:30 fire at 03:00 and 03:30 EDT, and the
    # real 03:00 and 03:30 (the same instants) are skipped.
    pytest.param(NEW_YORK, "*/30 * * * *", utc(2026, 3, 8, 6, 15), [
        ("2026-03-08T01:30", utc(2026, 3, 8, 6, 30)),
        ("2026-03-08T02:00", utc(2026, 3, 8, 7)),
        ("2026-03-08T02:30", utc(2026, 3, 8, 7, 30)),
        ("2026-03-08T04:00", utc(2026, 3, 8, 8)),
    ], id="ny-half-hourly-gap"),
    # Asked just after the gap (03:15 EDT): the gap's 02:30 is still the next occurrence.
    pytest.param(NEW_YORK, "*/30 * * * *", utc(2026, 3, 8, 7, 15), [
        ("2026-03-08T02:30", utc(2026, 3, 8, 7, 30)),
        ("2026-03-08T04:00", utc(2026, 3, 8, 8)),
    ], id="ny-half-hourly-origin-in-gap-aftermath"),
    # Berlin hourly across the October overlap: 02:00 CEST once, then 03:00 CET.
    pytest.param(BERLIN, "0 * * * *", utc(2026, 10, 24, 23, 30), [
        ("2026-10-25T02:00", utc(2026, 10, 25, 0)),
        ("2026-10-25T03:00", utc(2026, 10, 25, 2)),
    ], id="berlin-hourly-overlap"),
    # Chatham hourly: 03:00 is in the 02:45-03:45 gap (04:00 +13:45), so 04:00 is skipped.
    pytest.param(CHATHAM, "0 * * * *", utc(2026, 9, 26, 13), [
        ("2026-09-27T02:00", utc(2026, 9, 26, 13, 15)),
        ("2026-09-27T03:00", utc(2026, 9, 26, 14, 15)),
        ("2026-09-27T05:00", utc(2026, 9, 26, 15, 15)),
    ], id="chatham-hourly-gap"),
    # Chatham in April: 03:00 is ambiguous (first: +13:45); 04:00 is +12:45, 2 h later.
    pytest.param(CHATHAM, "0 * * * *", utc(2026, 4, 4, 12), [
        ("2026-04-05T02:00", utc(2026, 4, 4, 12, 15)),
        ("2026-04-05T03:00", utc(2026, 4, 4, 13, 15)),
        ("2026-04-05T04:00", utc(2026, 4, 4, 15, 15)),
    ], id="chatham-hourly-overlap"),
    # Lord Howe's 30-minute gap: 02:00 fires at 02:30 +11, and 03:00 only 30 minutes later.
    pytest.param(LORD_HOWE, "0 * * * *", utc(2026, 10, 3, 14), [
        ("2026-10-04T01:00", utc(2026, 10, 3, 14, 30)),
        ("2026-10-04T02:00", utc(2026, 10, 3, 15, 30)),
        ("2026-10-04T03:00", utc(2026, 10, 3, 16)),
    ], id="lord-howe-hourly-gap"),
    # Month ends: the 31st skips the short months.
    pytest.param(UTC_ZONE, "0 9 31 * *", utc(2026, 1, 1), [
        ("2026-01-31T09:00", utc(2026, 1, 31, 9)),
        ("2026-03-31T09:00", utc(2026, 3, 31, 9)),
        ("2026-05-31T09:00", utc(2026, 5, 31, 9)),
        ("2026-07-31T09:00", utc(2026, 7, 31, 9)),
    ], id="day-31"),
    # L is the last day of every month, 29 February in a leap year.
    pytest.param(UTC_ZONE, "0 9 L * *", utc(2027, 12, 1), [
        ("2027-12-31T09:00", utc(2027, 12, 31, 9)),
        ("2028-01-31T09:00", utc(2028, 1, 31, 9)),
        ("2028-02-29T09:00", utc(2028, 2, 29, 9)),
        ("2028-03-31T09:00", utc(2028, 3, 31, 9)),
        ("2028-04-30T09:00", utc(2028, 4, 30, 9)),
    ], id="last-day"),
    # 29 February fires only in leap years.
    pytest.param(UTC_ZONE, "0 9 29 2 *", utc(2025, 1, 1), [
        ("2028-02-29T09:00", utc(2028, 2, 29, 9)),
        ("2032-02-29T09:00", utc(2032, 2, 29, 9)),
    ], id="leap-day"),
]


@pytest.mark.parametrize(("zone", "cron", "origin", "expected"), RECURRING)
def test_recurring(zone: ZoneInfo, cron: str, origin: datetime,
                   expected: list[tuple[str, datetime]]) -> None:
    """The cron runs on the wall clock; instants are resolved and strictly increase."""
    got = take(recurring(cron), zone, origin, len(expected))
    assert [(o.id, o.at) for o in got] == expected
    assert [o.index for o in got] == list(range(1, len(expected) + 1))
    assert all(o.local == parse_local(o.id) for o in got)


def test_hourly_across_a_year_of_dst() -> None:
    """Hourly for a year in New York: strictly increasing, and the only wall times missing
    are the ones the spring-forward gap collapsed (03:00, onto 02:00's instant)."""
    got = take(recurring("0 * * * *"), NEW_YORK, utc(2026, 1, 1, 5), 365 * 24)
    instants = [o.at for o in got]
    assert all(a < b for a, b in pairwise(instants))
    fired = {o.local for o in got}
    assert len(fired) == len(got)  # no wall time twice (the overlap's 01:00 fires once)
    every = list(islice(CronSim("0 * * * *", wall(2026, 1, 1)), len(got) + 1))
    missing = [w for w in every if w <= got[-1].local and w not in fired]
    assert missing == [wall(2026, 3, 8, 3)]


# --- start, end, max_occurrences --------------------------------------------------------

DAILY = "0 9 * * *"

BOUNDS = [
    # End is inclusive: 5 days, indexed from the first time at/after start.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", end="2026-07-05T09:00"),
                 utc(2026, 6, 1), ["07-01", "07-02", "07-03", "07-04", "07-05"],
                 [1, 2, 3, 4, 5], id="start-end-inclusive"),
    # An end one minute earlier leaves out the 5th.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", end="2026-07-05T08:59"),
                 utc(2026, 6, 1), ["07-01", "07-02", "07-03", "07-04"], [1, 2, 3, 4],
                 id="end-before-time"),
    # Start is inclusive too.
    pytest.param(recurring(DAILY, start="2026-07-01T09:00", end="2026-07-02T09:00"),
                 utc(2026, 6, 1), ["07-01", "07-02"], [1, 2], id="start-inclusive"),
    # A start one second later leaves out that day.
    pytest.param(recurring(DAILY, start="2026-07-01T09:00:01", end="2026-07-03T09:00"),
                 utc(2026, 6, 1), ["07-02", "07-03"], [1, 2], id="start-seconds"),
    # Counting from start: the occurrences at/before origin consume indexes 1-3.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", end="2026-07-05T23:59"),
                 utc(2026, 7, 3, 12), ["07-04", "07-05"], [4, 5], id="start-in-the-past"),
    # An origin exactly at an occurrence's instant: that one is not yielded.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", end="2026-07-03T23:59"),
                 utc(2026, 7, 2, 9), ["07-03"], [3], id="origin-at-occurrence"),
    # max_occurrences stops after that index.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", max_occurrences=3),
                 utc(2026, 6, 1), ["07-01", "07-02", "07-03"], [1, 2, 3], id="max"),
    # ... counted from start, including those before origin.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", max_occurrences=3),
                 utc(2026, 7, 2, 12), ["07-03"], [3], id="max-from-start"),
    # ... all used up before origin: nothing.
    pytest.param(recurring(DAILY, start="2026-07-01T00:00", max_occurrences=2),
                 utc(2026, 7, 5), [], [], id="max-used-up"),
    # Without start, counted from the first after origin.
    pytest.param(recurring(DAILY, max_occurrences=3), utc(2026, 7, 10, 8),
                 ["07-10", "07-11", "07-12"], [1, 2, 3], id="max-without-start"),
    # The origin before start: nothing before start.
    pytest.param(recurring(DAILY, start="2026-07-20T00:00", max_occurrences=1),
                 utc(2026, 7, 1), ["07-20"], [1], id="origin-before-start"),
    # End in the past: nothing.
    pytest.param(recurring(DAILY, end="2026-07-05T23:59"), utc(2026, 7, 6), [], [],
                 id="end-passed"),
    # End before start: nothing.
    pytest.param(recurring(DAILY, start="2026-07-05T00:00", end="2026-07-01T00:00"),
                 utc(2026, 6, 1), [], [], id="end-before-start"),
]


@pytest.mark.parametrize(("schedule", "origin", "days", "indexes"), BOUNDS)
def test_bounds(schedule: dict[str, Any], origin: datetime, days: list[str],
                indexes: list[int]) -> None:
    """start/end bound the wall-clock times; index and max_occurrences count from start."""
    got = list(occurrences(schedule, UTC_ZONE, origin))  # bounded: a finite iterator
    assert [o.id for o in got] == [f"2026-{day}T09:00" for day in days]
    assert [o.index for o in got] == indexes


def test_without_end_the_iterator_goes_on() -> None:
    """A recurring schedule without end or max_occurrences yields as many as are taken."""
    got = take(recurring(DAILY), UTC_ZONE, utc(2026, 1, 1), 1000)
    assert len(got) == 1000
    assert got[-1].id == "2028-09-26T09:00"


# --- once and drip ----------------------------------------------------------------------

ONCE = {"type": "once", "at": "2026-07-01T10:00", "timezone": "Europe/Berlin"}
DRIP = {"type": "drip", "at": "2026-07-01T10:00", "until": "2026-08-01T00:00",
        "enrol_joiners": True, "timezone": None}


@pytest.mark.parametrize(("schedule", "origin", "expected"), [
    # 10:00 CEST is 08:00Z.
    pytest.param(ONCE, utc(2026, 6, 30), [Occurrence(
        "2026-07-01T10:00", wall(2026, 7, 1, 10), utc(2026, 7, 1, 8), 1)], id="once"),
    pytest.param(ONCE, utc(2026, 7, 1, 7, 59), [Occurrence(
        "2026-07-01T10:00", wall(2026, 7, 1, 10), utc(2026, 7, 1, 8), 1)], id="once-just-before"),
    pytest.param(ONCE, utc(2026, 7, 1, 8), [], id="once-at-origin"),
    pytest.param(ONCE, utc(2026, 7, 2), [], id="once-passed"),
    pytest.param(DRIP, utc(2026, 6, 30), [Occurrence(
        "2026-07-01T10:00", wall(2026, 7, 1, 10), utc(2026, 7, 1, 8), 1)], id="drip"),
    pytest.param(DRIP, utc(2026, 7, 1, 8), [], id="drip-at-origin"),
    # In the gap: 02:30 fires at 03:30 CEST; the id stays the wall time asked for.
    pytest.param({"type": "once", "at": "2026-03-29T02:30"}, utc(2026, 3, 28), [Occurrence(
        "2026-03-29T02:30", wall(2026, 3, 29, 2, 30), utc(2026, 3, 29, 1, 30), 1)],
        id="once-in-gap"),
])
def test_once_and_drip(schedule: dict[str, Any], origin: datetime,
                       expected: list[Occurrence]) -> None:
    """One occurrence at ``at``, only if it is after origin."""
    assert list(occurrences(schedule, BERLIN, origin)) == expected


@pytest.mark.parametrize(("schedule", "origin", "message"), [
    pytest.param(ONCE, wall(2026, 6, 30), "origin must be timezone-aware", id="naive-origin"),
    pytest.param({"type": "weekly"}, utc(2026, 6, 30), "unknown schedule type 'weekly'",
                 id="unknown-type"),
    pytest.param(recurring("0 9 * * * *"), utc(2026, 6, 30), "has 6 fields", id="bad-cron"),
    pytest.param(recurring(DAILY, start="2026-07-01T00:00Z"), utc(2026, 6, 30),
                 "has a UTC offset", id="bad-start"),
])
def test_occurrences_errors(schedule: dict[str, Any], origin: datetime, message: str) -> None:
    """Bad input is a ValueError on the first item taken."""
    with pytest.raises(ValueError, match=re.escape(message)):
        next(occurrences(schedule, BERLIN, origin))


# --- is_occurrence ----------------------------------------------------------------------

MONDAYS = recurring("0 9 * * MON", start="2026-07-06T09:00", end="2026-07-27T09:00",
                    max_occurrences=1)


@pytest.mark.parametrize(("schedule", "local", "expected"), [
    pytest.param(ONCE, wall(2026, 7, 1, 10), True, id="once"),
    pytest.param(ONCE, wall(2026, 7, 1, 10, 1), False, id="once-other-time"),
    pytest.param(DRIP, wall(2026, 7, 1, 10), True, id="drip"),
    # 2026-07-06 is a Monday, at start.
    pytest.param(MONDAYS, wall(2026, 7, 6, 9), True, id="recurring-at-start"),
    pytest.param(MONDAYS, wall(2026, 7, 7, 9), False, id="recurring-tuesday"),
    pytest.param(MONDAYS, wall(2026, 7, 13, 9, 30), False, id="recurring-other-minute"),
    pytest.param(MONDAYS, wall(2026, 7, 13, 9, 0, 30), False, id="recurring-seconds"),
    pytest.param(MONDAYS, wall(2026, 7, 13, 9, 0, 0, 1), False, id="recurring-microseconds"),
    # max_occurrences is 1, but is ignored.
    pytest.param(MONDAYS, wall(2026, 7, 13, 9), True, id="recurring-beyond-max"),
    pytest.param(MONDAYS, wall(2026, 7, 27, 9), True, id="recurring-at-end"),
    pytest.param(MONDAYS, wall(2026, 6, 29, 9), False, id="recurring-before-start"),
    pytest.param(MONDAYS, wall(2026, 8, 3, 9), False, id="recurring-after-end"),
    pytest.param(recurring("0 9 L * *"), wall(2028, 2, 29, 9), True, id="last-day-leap"),
    pytest.param(recurring("0 9 L * *"), wall(2028, 2, 28, 9), False, id="not-last-day"),
    pytest.param(recurring("0 9 29 2 *"), wall(2027, 3, 1, 9), False, id="no-leap-day"),
])
def test_is_occurrence(schedule: dict[str, Any], local: datetime, expected: bool) -> None:
    """A wall-clock time is an occurrence if the schedule's times include it."""
    assert is_occurrence(schedule, local) is expected


# --- properties -------------------------------------------------------------------------

TRICKY_ZONES = [
    "America/New_York", "America/St_Johns", "America/Santiago", "America/Havana",
    "America/Sao_Paulo", "Europe/Berlin", "Europe/Dublin", "Europe/London",
    "Africa/Casablanca", "Asia/Tehran", "Asia/Kolkata", "Asia/Kathmandu",
    "Australia/Sydney", "Australia/Lord_Howe", "Pacific/Chatham", "Pacific/Auckland",
    "Pacific/Apia", "Pacific/Kiritimati", "Antarctica/Troll", "Etc/GMT+12",
]

zones = st.sampled_from(TRICKY_ZONES).map(ZoneInfo)

# A small cron grammar that hits the DST nights: early hours, spring and autumn months.
crons = st.tuples(
    st.sampled_from(["0", "30", "15,45", "*/20", "59", "0-4"]),
    st.sampled_from(["*", "0", "1", "2", "3", "1-3", "*/6", "0,12,23", "23"]),
    st.sampled_from(["*", "1", "L", "15", "31", "1-7"]),
    st.sampled_from(["*", "3", "4", "9,10", "10,11", "*/3"]),
    st.sampled_from(["*", "SUN", "0", "MON-FRI", "6,0", "SUN#1"]),
).map(" ".join)

origins = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31),  # noqa: DTZ001
                       timezones=st.just(UTC))


def _valid(expr: str) -> bool:
    try:
        check_cron(expr)
    except ValueError:
        return False
    return True


@settings(max_examples=100, deadline=None)
@given(zone=zones, cron=crons, origin=origins,
       start_hours=st.none() | st.integers(0, 72), limit=st.none() | st.integers(1, 30))
def test_occurrences_properties(zone: ZoneInfo, cron: str, origin: datetime,
                                start_hours: int | None, limit: int | None) -> None:
    """Occurrences are after origin, strictly increasing, never in an overlap's second
    pass or a gap, numbered consecutively; and asking again from one of them gives the
    rest unchanged."""
    assume(_valid(cron))
    start = None
    if start_hours is not None:
        start = (origin.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
                 - timedelta(hours=start_hours))
    schedule = recurring(cron, start=start and start.isoformat(timespec="minutes"),
                         max_occurrences=limit)
    got = take(schedule, zone, origin, 25)
    assert got or limit is not None  # an unbounded schedule of these crons always fires
    if not got:
        return  # max_occurrences used up before origin
    for o in got:
        assert o.at > origin
        assert o.at.tzinfo is UTC
        assert o.at == resolve(o.local, zone)
        # The instant's own wall clock resolves back to it: not a fall-back second pass.
        assert resolve(o.at.astimezone(zone).replace(tzinfo=None), zone) == o.at
        assert is_occurrence(schedule, o.local)
        assert o.id == o.local.isoformat(timespec="minutes")
        assert start is None or o.local >= start
        assert limit is None or o.index <= limit
    assert all(a.at < b.at and a.id < b.id for a, b in pairwise(got))
    assert [o.index for o in got] == list(range(got[0].index, got[0].index + len(got)))
    if start is None:
        assert got[0].index == 1
    if len(got) > 2:
        again = take(schedule, zone, got[1].at, len(got) - 2)
        expected = got[2:] if start is not None else [
            Occurrence(o.id, o.local, o.at, o.index - 2) for o in got[2:]]
        if limit is not None and start is None:
            expected = expected[:limit]
        assert again == expected


@settings(max_examples=150, deadline=None)
@given(zone=zones, local=st.datetimes(min_value=datetime(1900, 1, 1),  # noqa: DTZ001
                                      max_value=datetime(2100, 12, 31)))  # noqa: DTZ001
def test_resolve_never_raises(zone: ZoneInfo, local: datetime) -> None:
    """Any wall-clock time resolves; the wall clock never moves back, and forward only out
    of a gap (at most a day: Samoa skipped 30 December 2011)."""
    at = resolve(local, zone)
    assert at.tzinfo is UTC
    shown = at.astimezone(zone).replace(tzinfo=None)
    assert local <= shown <= local + timedelta(days=1)
    assert resolve(shown, zone) == at


@settings(max_examples=150, deadline=None)
@given(zone=zones, local=st.datetimes(min_value=datetime(2024, 1, 1),  # noqa: DTZ001
                                      max_value=datetime(2030, 12, 31)))  # noqa: DTZ001
def test_contact_instant_within_earliest_and_latest(zone: ZoneInfo, local: datetime) -> None:
    """Every zone shows a wall-clock time between UTC+14 and UTC-12."""
    assert earliest_instant(local) <= contact_instant(local, zone.key) <= latest_instant(local)
