"""Local-time maths for waits and campaign schedules: pure functions of aware instants
(``now``, ``origin``) and a zone.

The two DST traps are handled explicitly: a local time that does not exist (the
spring-forward gap) is moved forward by the gap (02:30 → 03:30), and a local time that
happens twice (fall-back) means its first occurrence.

Campaign crons are evaluated by cronsim on the naive wall clock (that is what keeps a
09:00 campaign at 09:00 local across DST); each wall-clock time is then resolved to an
instant by the rule above. Local times are naive datetimes, instants aware UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

__all__ = [
    "WEEKDAYS",
    "Occurrence",
    "check_cron",
    "contact_instant",
    "contact_zone",
    "cron_min_interval",
    "earliest_instant",
    "is_occurrence",
    "latest_instant",
    "local_to_utc",
    "next_local_time",
    "occurrence_id",
    "occurrences",
    "parse_local",
    "resolve",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def contact_zone(contact: Mapping[str, Any], fallback: str) -> ZoneInfo:
    zone = contact.get("timezone")
    return ZoneInfo(zone if isinstance(zone, str) and zone else fallback)


def local_to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time in ``zone``.

    ``fold=0`` gives both DST rules at once: a time in the spring-forward gap is read with
    the offset from before the change, which lands it the gap's length later (02:30 →
    03:30), and a time that happens twice means its first occurrence.
    """
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def next_local_time(
    now: datetime, zone: ZoneInfo, at: dtime, weekdays: list[str] | None = None
) -> datetime:
    """The first instant strictly after ``now`` whose local time in ``zone`` is ``at``,
    on one of ``weekdays`` (all days if None). Returned in UTC."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    allowed = {WEEKDAYS.index(d) for d in weekdays} if weekdays else set(range(7))
    local_day = now.astimezone(zone).date()
    for offset in range(0, 8):
        day = local_day + timedelta(days=offset)
        if day.weekday() not in allowed:
            continue
        candidate = local_to_utc(datetime.combine(day, at), zone)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a weekday recurs within 8 days")


# --- Campaign schedules ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One firing of a campaign schedule."""

    #: The local wall-clock time, ``YYYY-MM-DDTHH:MM``: unique per occurrence of a schedule
    #: and sortable as a string.
    id: str
    #: The naive wall-clock time in the schedule's zone.
    local: datetime
    #: The aware UTC instant ``local`` resolves to (:func:`resolve`).
    at: datetime
    #: The 1-based position in the schedule (what ``max_occurrences`` counts).
    index: int


def resolve(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of the naive wall-clock time ``local`` in ``zone``.

    A time in the spring-forward gap moves forward by the gap's length (02:30 → 03:30
    where 02:00 → 03:00; 02:15 → 02:45 where Lord Howe's 02:00 → 02:30); an ambiguous
    fall-back time is its first occurrence. Never raises for a naive datetime more than
    a day away from ``datetime.min``/``datetime.max``.
    """
    return local_to_utc(_naive(local), zone)


def _naive(local: datetime) -> datetime:
    if local.tzinfo is not None:
        raise ValueError(f"a local time must be naive, got {local.isoformat()}")
    return local


_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")


def parse_local(text: str) -> datetime:
    """A naive wall-clock time from ``YYYY-MM-DDTHH:MM`` or ``YYYY-MM-DDTHH:MM:SS``.

    A UTC offset (``Z``, ``+02:00``) is refused: the zone comes from the schedule.
    """
    if not _LOCAL.fullmatch(text):
        try:
            offset = datetime.fromisoformat(text).tzinfo is not None
        except ValueError:
            offset = False
        if offset:
            raise ValueError(f"local time {text!r} has a UTC offset: write the wall-clock "
                             f"time without one (the schedule's timezone applies)")
        raise ValueError(f"local time {text!r} is not YYYY-MM-DDTHH:MM[:SS]")
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"local time {text!r} is not a valid date and time: {exc}") from None


_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")

#: The usual macros, refused with the 5-field expression to write instead.
_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
           "@annually": "0 0 1 1 *"}

#: Where cron_min_interval samples from (any fixed date would do; 2028 is a leap year).
_REFERENCE = datetime(2028, 1, 1)  # noqa: DTZ001 - a wall-clock time, naive on purpose


def check_cron(expr: str) -> None:
    """Raise ValueError unless ``expr`` is a 5-field cron: minute hour day-of-month month
    day-of-week.

    Everything cronsim accepts in those fields is allowed: lists, ranges, steps, names
    (``MON``, ``jan``), 0 or 7 for Sunday, ``L``/``LW`` in day-of-month, ``5L`` and
    ``MON#2`` in day-of-week. As in Debian cron, a day-of-month and a day-of-week that
    are both restricted (neither starts with ``*``) match either. Seconds or years fields
    and ``@`` macros (cronsim has none) are refused.
    """
    fields = expr.split()
    if len(fields) == 1 and fields[0].lower() in _MACROS:
        raise ValueError(f"cron macro {fields[0]!r} is not supported: "
                         f"write {_MACROS[fields[0].lower()]!r}")
    if len(fields) != 5:
        count = f"{len(fields)} field" if len(fields) == 1 else f"{len(fields)} fields"
        extra = " (seconds and years fields are not supported)" if len(fields) > 5 else ""
        if (five := _five_fields(fields)) is not None:
            extra += f": write {five!r}"
        raise ValueError(f"cron {expr!r} has {count}, needs 5: minute hour day-of-month "
                         f"month day-of-week{extra}")
    try:
        CronSim(expr, _REFERENCE)
    except CronSimError as exc:
        # cronsim names the field ("Bad minute"); quote that field's text too.
        name = str(exc).removeprefix("Bad ")
        if name not in _FIELDS:
            raise ValueError(f"cron {expr!r}: {exc}") from None
        text = fields[_FIELDS.index(name)]
        raise ValueError(f"cron {expr!r}: bad {name} field {text!r}") from None


_YEARS = re.compile(r"^\d{4}([-,/]\d{1,4})*$")


def _five_fields(fields: list[str]) -> str | None:
    """The 5-field form of a Quartz/Spring-style cron (seconds first, maybe a year last;
    ``?`` for "any day"), or of one with a year last; None if there is none to offer.
    A seconds field other than 0 is dropped too: occurrences are whole minutes."""
    if len(fields) == 6 and _YEARS.match(fields[5]):
        five = fields[:5]  # minute … day-of-week, year
    elif len(fields) == 6 or (len(fields) == 7 and (fields[6] == "*" or _YEARS.match(
            fields[6]))):
        five = fields[1:6]  # second, minute … day-of-week (, year)
    else:
        return None
    text = " ".join("*" if f == "?" else f for f in five)
    try:
        CronSim(text, _REFERENCE)
    except CronSimError:
        return None
    return text


#: cron_min_interval's sample: the occurrences of two years from _REFERENCE, at most this
#: many (dense crons show their smallest gap within a day), and never fewer than two.
_SAMPLE_SPAN = timedelta(days=731)
_SAMPLE_MAX = 2000


def cron_min_interval(expr: str) -> timedelta:
    """The smallest gap between consecutive wall-clock times of the cron ``expr``.

    Sampled from 2028-01-01 00:00 (inclusive) over the occurrences of two years, at most
    2000 of them but at least two whatever the span (``0 9 29 2 *`` gives 4 years). On
    the wall clock: a spring-forward gap can bring two instants closer by the gap's length
    (an hourly cron in Lord Howe fires 30 minutes apart once a year). A cron that fires
    once at most gives ``timedelta.max``. Raises ValueError for an invalid cron.
    """
    check_cron(expr)
    smallest = timedelta.max
    previous: datetime | None = None
    for count, local in enumerate(CronSim(expr, _REFERENCE - timedelta(seconds=1)), 1):
        if previous is not None:
            smallest = min(smallest, local - previous)
            if (count > _SAMPLE_MAX or local - _REFERENCE > _SAMPLE_SPAN
                    or smallest <= timedelta(minutes=1)):  # a cron's finest step
                break
        previous = local
    return smallest


def _optional_local(schedule: Mapping[str, Any], key: str) -> datetime | None:
    value = schedule.get(key)
    return parse_local(value) if value else None


#: How far before ``origin`` the wall clock is replayed so that the strictly-increasing
#: rule sees the times just before it (more than any gap in the tz database).
_LOOKBACK = timedelta(days=2)


def occurrences(
    schedule: Mapping[str, Any], zone: ZoneInfo, origin: datetime
) -> Iterator[Occurrence]:
    """Every occurrence of ``schedule`` whose instant is strictly after ``origin``, in order.

    ``once`` and ``drip``: one occurrence, at ``at``.

    ``recurring``: the cron runs on the wall clock in ``zone`` (09:00 stays 09:00 local
    across DST) and each time is resolved (:func:`resolve`). Instants strictly increase:
    a wall-clock time whose instant is not after the previous occurrence's is skipped. So
    the spring-forward gap's times fire at their moved-forward instants and the wall
    times those land on do not fire again (hourly: 02:00 fires at 03:00, 03:00 is
    skipped), and a fall-back time fires once, at its first occurrence.

    ``start`` and ``end`` bound the wall-clock times, both inclusive. ``index`` counts from
    the first time at or after ``start`` (those at or before ``origin`` take an index but
    are not yielded; the walk is O(occurrences since ``start``)), else from the first
    after ``origin``; ``max_occurrences`` is the last index. Without ``end`` or
    ``max_occurrences`` the iterator is infinite: take what you need.
    """
    if origin.tzinfo is None:
        raise ValueError("origin must be timezone-aware")
    kind = schedule.get("type")
    if kind in ("once", "drip"):
        local = parse_local(schedule["at"])
        at = resolve(local, zone)
        if at > origin:
            yield Occurrence(occurrence_id(local), local, at, 1)
        return
    if kind != "recurring":
        raise ValueError(f"unknown schedule type {kind!r}")
    cron: str = schedule["cron"]
    check_cron(cron)
    start, end = _optional_local(schedule, "start"), _optional_local(schedule, "end")
    limit: int | None = schedule.get("max_occurrences")
    if start is not None:
        begin = start - timedelta(seconds=1)  # cronsim yields times strictly after begin
    else:
        begin = origin.astimezone(zone).replace(tzinfo=None) - _LOOKBACK
    index, latest = 0, None
    for local in CronSim(cron, begin):
        if end is not None and local > end:
            return
        at = resolve(local, zone)
        if latest is not None and at <= latest:
            continue  # collapsed by the spring-forward gap onto an earlier occurrence
        latest = at
        if start is None and at <= origin:
            continue
        index += 1
        if at > origin:
            yield Occurrence(occurrence_id(local), local, at, index)
        if limit is not None and index >= limit:
            return


def occurrence_id(local: datetime) -> str:
    """An occurrence's id: its wall-clock time to the minute (sortable)."""
    return local.isoformat(timespec="minutes")


def is_occurrence(schedule: Mapping[str, Any], local: datetime) -> bool:
    """Whether the wall-clock time ``local`` is one of ``schedule``'s times.

    Honours ``start`` and ``end``, not ``max_occurrences`` or an origin; a recurring time
    skipped by the spring-forward rule of :func:`occurrences` still counts (that rule
    needs the zone). ``once``/``drip``: ``local`` is ``at``.
    """
    kind = schedule.get("type")
    if kind in ("once", "drip"):
        return local == parse_local(schedule["at"])
    if kind != "recurring":
        raise ValueError(f"unknown schedule type {kind!r}")
    check_cron(schedule["cron"])
    local, start, end = _naive(local), _optional_local(schedule, "start"), _optional_local(
        schedule, "end")
    if (start is not None and local < start) or (end is not None and local > end):
        return False
    # cronsim yields strictly after its start: the first time after local - 1 s is local
    # itself exactly when local matches (to the second, without microseconds).
    return next(CronSim(schedule["cron"], local - timedelta(seconds=1)), None) == local


@lru_cache(maxsize=4096)
def contact_instant(local: datetime, zone_name: str) -> datetime:
    """``local`` resolved in the zone named ``zone_name`` (cached: a fan-out asks this per
    contact, and contacts share a few zones)."""
    return resolve(local, ZoneInfo(zone_name))


#: The extreme UTC offsets of the tz database's present-day zones: Kiribati's Line Islands
#: (UTC+14) and Etc/GMT+12 (UTC-12).
_EASTMOST = timedelta(hours=14)
_WESTMOST = timedelta(hours=12)


def earliest_instant(local: datetime) -> datetime:
    """The earliest instant at which some zone's wall clock shows ``local`` (UTC+14)."""
    return (_naive(local) - _EASTMOST).replace(tzinfo=UTC)


def latest_instant(local: datetime) -> datetime:
    """The latest instant at which some zone's wall clock shows ``local`` (UTC-12)."""
    return (_naive(local) + _WESTMOST).replace(tzinfo=UTC)
