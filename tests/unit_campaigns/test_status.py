"""What ``dripstream campaign status`` and the API's progress route report
(tables/campaigns.py): the status an operator reads (completed once nothing is left), and
why sends did not go out, from audit records. Times are passed in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.definitions import definition_key, parse_any
from tables.campaigns import campaign_state, not_sent, progress_summary
from tables.registry import Registry
from tables.schedule import Occurrence

UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
PUBLISHED = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)


def campaign(**schedule: Any) -> dict[str, Any]:
    raw = {"kind": "campaign", "id": "hello", "account": "demo", "name": "Hello",
           "version": 1, "content": {"channel": "sms", "body": "Hi"},
           "schedule": schedule or {"type": "once", "at": "2027-01-15T10:00",
                                    "timezone": "UTC"}}
    if schedule.get("type") == "drip":
        raw = {**raw, "content": None, "workflow": "welcome"}
    return parse_any(raw).model_dump(mode="json")


def occurrence(statuses: dict[str, int], partitions: int = 4) -> dict[str, Any]:
    return {"occurrence": "2027-01-15T10:00", "partitions": partitions, "statuses": statuses}


UPCOMING = Occurrence("2027-01-16T10:00", datetime(2027, 1, 16, 10, 0),  # noqa: DTZ001
                      datetime(2027, 1, 16, 10, 0, tzinfo=UTC), 2)
DRIP_JOINERS = {"type": "drip", "at": "2027-01-15T10:00", "until": "2027-01-20T00:00",
                "timezone": "UTC", "enrol_joiners": True}


@pytest.mark.parametrize(("control", "schedule", "upcoming", "occurrences", "now", "expected"), [
    # The README's case: a `once` campaign whose only occurrence finished everywhere.
    pytest.param("running", {}, None, [occurrence({"completed": 4})], NOW, "completed",
                 id="once-done"),
    # Partitions that skipped it (a misfire) are finished too.
    pytest.param("running", {}, None, [occurrence({"completed": 3, "skipped": 1})], NOW,
                 "completed", id="done-with-skips"),
    # One partition still walking its contacts.
    pytest.param("running", {}, None, [occurrence({"completed": 3, "running": 1})], NOW,
                 "running", id="one-partition-running"),
    # A partition has not reported the occurrence yet.
    pytest.param("running", {}, None, [occurrence({"completed": 3}, partitions=3)], NOW,
                 "running", id="partition-missing"),
    # Not fired yet.
    pytest.param("running", {}, UPCOMING, [], NOW, "running", id="not-yet"),
    # Another occurrence to come (a recurring schedule).
    pytest.param("running", {}, UPCOMING, [occurrence({"completed": 4})], NOW, "running",
                 id="more-to-come"),
    # The controls come first.
    pytest.param("paused", {}, None, [occurrence({"completed": 4})], NOW, "paused",
                 id="paused"),
    pytest.param("cancelled", {}, None, [occurrence({"completed": 4})], NOW, "cancelled",
                 id="cancelled"),
    # A drip enrolling joiners runs until its `until`…
    pytest.param("running", DRIP_JOINERS, None, [occurrence({"completed": 4})], NOW,
                 "running", id="drip-joiners-before-until"),
    # …and is complete after it.
    pytest.param("running", DRIP_JOINERS, None, [occurrence({"completed": 4})],
                 datetime(2027, 1, 21, tzinfo=UTC), "completed", id="drip-joiners-after"),
])
def test_campaign_state(control: str, schedule: dict[str, Any], upcoming: Occurrence | None,
                        occurrences: list[dict[str, Any]], now: datetime, expected: str
                        ) -> None:
    """running / paused / cancelled / completed, from the controls, what is left and each
    occurrence's partitions."""
    assert expected == campaign_state(control, campaign(**schedule), UTC_ZONE, upcoming,
                                      occurrences, 4, now)


def test_progress_summary_says_completed_after_the_only_occurrence() -> None:
    """The registry's view, the partitions' progress records: a `once` campaign whose
    occurrence finished on every partition is completed, with nothing next (it said
    `running` before)."""
    registry = Registry()
    body = campaign()
    registry.apply(definition_key(parse_any(body)).encode(), orjson.dumps(body),
                   int(PUBLISHED.timestamp() * 1000))
    entry = {"id": "2027-01-15T10:00", "at": "2027-01-15T10:00:00+00:00", "version": 1,
             "status": "completed", "sent": 1, "remaining": 0}
    records = {p: {"last": "2027-01-15T10:00", "running": {}, "history": [entry]}
               for p in range(4)}

    summary = progress_summary(registry, body, records, 4, NOW)

    assert ("completed", None, 4) == (summary["status"], summary["next_occurrence"],
                                      summary["occurrences"][0]["sent"])


def audit(reason: str, contact: str, *, campaign_id: str = "hello", action: str = "defer",
          until: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"account": "demo", "contact_id": contact, "reason": reason,
                              "at": "2027-01-15T10:00:00+00:00", "action": action,
                              "origin": {"kind": "campaign", "campaign_id": campaign_id}}
    if until:
        record["deferred_until"] = until
    return record


def test_not_sent_says_why_and_until_when() -> None:
    """Per reason: how many contacts, until when the newest deferral holds, what it means;
    other campaigns' records are not counted."""
    records = [
        audit("quiet_hours_deferred", "c-1", until="2027-01-15T16:00:00+00:00"),
        audit("quiet_hours_deferred", "c-2", until="2027-01-15T17:00:00+00:00"),
        audit("quiet_hours_deferred", "c-1", until="2027-01-15T16:00:00+00:00"),
        audit("no_consent", "c-3", action="drop"),
        audit("quiet_hours_deferred", "c-4", campaign_id="other",
              until="2027-01-15T18:00:00+00:00"),
    ]

    found = not_sent("hello", records)

    assert [("no_consent", "drop", 1, None),
            ("quiet_hours_deferred", "defer", 2, "2027-01-15T17:00:00+00:00")] == [
        (e["reason"], e["action"], e["contacts"], e["until"]) for e in found]
    assert "quiet hours" in found[1]["why"] and "consent" in found[0]["why"]
