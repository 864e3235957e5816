"""Builders shared by the compliance unit tests: policies, send records, local instants.

Policies reach the gate as the registry holds them: an :class:`AccountPolicy` validated and
dumped to JSON-ready dicts. Instants are written as local wall-clock times in a named zone
and compared in UTC, so a test reads like the calendar it is about.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from streams.definitions import AccountPolicy

ACCOUNT = "acme"
LA = ZoneInfo("America/Los_Angeles")
AUCKLAND = ZoneInfo("Pacific/Auckland")
SANTIAGO = ZoneInfo("America/Santiago")
HAVANA = ZoneInfo("America/Havana")
UTC_ZONE = ZoneInfo("UTC")
MICRO = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def policy(**changes: Any) -> dict[str, Any]:
    """An account policy as the gate gets it (validated, then dumped to JSON)."""
    return AccountPolicy(account=ACCOUNT, **changes).model_dump(mode="json")


def caps(windows: str = "calendar", channels: dict[str, Any] | None = None,
         **limits: int | None) -> dict[str, Any]:
    """The ``caps`` part of a policy: the default 5/20/50 with ``limits`` changed."""
    return {"limits": {"day": 5, "week": 20, "month": 50, **limits},
            "channels": channels or {}, "windows": windows}


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
          second: int = 0, *, fold: int = 0) -> datetime:
    """The UTC instant of a wall-clock time in ``zone`` (``fold=1``: its second occurrence)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone, fold=fold).astimezone(
        UTC)


def utc(text: str) -> datetime:
    """An instant written in ISO form without an offset, read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def record(at: datetime, channel: str = "sms", *, ident: str = "",
           transactional: bool = False) -> dict[str, Any]:
    """One entry of a contact's ``sends``, as :func:`tables.compliance.record_send` writes it."""
    return {"id": ident or f"msg-{channel}-{at.timestamp()}", "at": at.astimezone(UTC).isoformat(),
            "channel": channel, "transactional": transactional}


def records(*times: datetime, channel: str = "sms") -> list[dict[str, Any]]:
    """Sends on one channel at ``times`` (distinct ids)."""
    return [record(t, channel, ident=f"msg-{n}") for n, t in enumerate(times)]


def instants(first: datetime, last: datetime) -> st.SearchStrategy[datetime]:
    """Aware UTC instants from ``first`` to ``last``, to the microsecond."""
    span = int((last - first) / MICRO)
    return st.integers(0, span).map(lambda n: first + n * MICRO)
