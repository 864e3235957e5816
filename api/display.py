"""How the dashboard words values: times, record details and the lag summary.

Pure functions, used as Jinja filters by :mod:`api.dashboard`. Every instant is shown one
way, ``2026-03-01 15:04:05 UTC`` (seconds, no fraction, the zone named); a wall-clock
time (a campaign's occurrence) the same way with its own zone named, so the two never
look alike. Dicts and lists read as text (``workflow_id: drip, version: 1``), never as a
Python repr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["FORMAT", "hour", "lag_summary", "readable", "wall", "when"]

#: The one format of a time on the dashboard (then the zone's name).
FORMAT = "%Y-%m-%d %H:%M:%S"
#: What an ISO instant inside a record looks like (a date, a time and more).
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO.match(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def when(value: Any) -> str:
    """An aware instant (a datetime or ISO text) in UTC; anything else as it is ("" for
    None)."""
    if value is None:
        return ""
    found = _parse(value)
    if found is None or found.tzinfo is None:
        return str(value)
    return f"{found.astimezone(UTC).strftime(FORMAT)} UTC"


def wall(value: Any, zone: str) -> str:
    """A naive wall-clock time (``2030-03-01T10:00``) with the zone it is read in."""
    found = _parse(value)
    if found is None or found.tzinfo is not None:
        return when(value)
    return f"{found.strftime(FORMAT)} {zone}"


def hour(value: str) -> str:
    """An hour of the journey lab's report (``2026-03-01T10:00``, the start of an hour of
    UTC send times) as the dashboard shows times: ``2026-03-01 10:00 UTC``."""
    found = _parse(value)
    if found is None or found.tzinfo is not None:
        return when(value)
    return f"{found.strftime('%Y-%m-%d %H:%M')} UTC"


def readable(value: Any) -> str:
    """A record's value as text: instants by :func:`when`, mappings as ``key: value``
    pairs, sequences joined by commas."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {readable(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(readable(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return when(value)


def lag_summary(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per topic, by name: its partitions, total and largest lag (and that partition),
    the workers reporting, and the oldest report."""
    topics: dict[str, dict[str, Any]] = {}
    for e in entries:
        t = topics.setdefault(e["topic"], {"topic": e["topic"], "partitions": 0, "total": 0,
                                           "max": -1, "max_partition": None,
                                           "workers": set(), "oldest": e["at"]})
        t["partitions"] += 1
        t["total"] += e["lag"]
        if e["lag"] > t["max"]:
            t["max"], t["max_partition"] = e["lag"], e["partition"]
        t["workers"].add(e["worker"])
        if datetime.fromisoformat(e["at"]) < datetime.fromisoformat(t["oldest"]):
            t["oldest"] = e["at"]
    return [{**t, "workers": len(t["workers"])} for _, t in sorted(topics.items())]
