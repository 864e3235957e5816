"""How the dashboard words times, record details and the lag (api/display.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from api.display import lag_summary, readable, wall, when


@pytest.mark.parametrize(("value", "shown"), [
    # The read model's ISO, microseconds and offset: seconds, UTC named.
    ("2026-03-01T15:04:05.120000+00:00", "2026-03-01 15:04:05 UTC"),
    # Another offset is the same instant in UTC.
    ("2026-03-01T20:34:05+05:30", "2026-03-01 15:04:05 UTC"),
    (datetime(2026, 3, 1, 15, 4, 5, tzinfo=timezone(timedelta(hours=-8))),
     "2026-03-01 23:04:05 UTC"),
    # Not an instant: as it is (a naive time has no zone to name).
    ("2026-03-01T15:04", "2026-03-01T15:04"),
    ("drip/c-1", "drip/c-1"),
    (None, ""),
])
def test_an_instant_reads_one_way(value: object, shown: str) -> None:
    assert shown == when(value)


def test_a_wall_clock_time_names_its_zone() -> None:
    """A campaign occurrence: its schedule's zone, in the same format as instants."""
    assert wall("2030-03-01T10:00", "Asia/Kolkata") == "2030-03-01 10:00:00 Asia/Kolkata"


def test_a_record_reads_as_text_never_as_a_repr() -> None:
    """Mappings as key: value, lists joined, booleans in words, instants by when."""
    origin = {"kind": "workflow", "workflow_id": "drip", "depth": 0,
              "steps": ["a", "b"], "transactional": False,
              "at": "2026-03-01T15:04:05.5+00:00"}

    assert readable(origin) == ("kind: workflow, workflow_id: drip, depth: 0, steps: a, b, "
                                "transactional: no, at: 2026-03-01 15:04:05 UTC")


def test_lag_is_summed_per_topic() -> None:
    """Per topic: partitions, total, the largest and its partition, workers, the oldest
    report."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    entries = [{"topic": t, "partition": p, "lag": lag, "worker": w,
                "at": (at + timedelta(seconds=s)).isoformat()}
               for t, p, lag, w, s in (("b", 0, 3, "w1", 5), ("a", 0, 1, "w1", 5),
                                       ("a", 1, 7, "w2", 0), ("a", 2, 0, "w2", 9))]

    assert lag_summary(entries) == [
        {"topic": "a", "partitions": 3, "total": 8, "max": 7, "max_partition": 1,
         "workers": 2, "oldest": at.isoformat()},
        {"topic": "b", "partitions": 1, "total": 3, "max": 3, "max_partition": 0,
         "workers": 1, "oldest": (at + timedelta(seconds=5)).isoformat()}]
