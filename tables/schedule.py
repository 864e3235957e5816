"""Local-time maths for waits: pure functions of ``now`` (aware) and a zone.

The two DST traps are handled explicitly: a local time that does not exist (the
spring-forward gap) is moved forward by the gap (02:30 → 03:30), and a local time that
happens twice (fall-back) means its first occurrence.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["WEEKDAYS", "contact_zone", "local_to_utc", "next_local_time"]

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
