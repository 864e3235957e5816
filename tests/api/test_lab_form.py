"""The journey lab's form read as the JSON route's body (``api.dashboard.lab_request``), and
its hours as the dashboard shows times (``api.display.hour``): pure, nothing started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from api.dashboard import LAB_LINES, lab_request
from api.display import hour
from api.errors import Problem

WORKFLOW = {"id": "welcome", "name": "Welcome"}
MARCH = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("form", "definitions", "since", "until"), [
    # one definition, or a list; empty: none (the live ones)
    ({"definitions": '{"id": "welcome", "name": "Welcome"}', "since": "2026-03-01 10:00"},
     [WORKFLOW], MARCH, None),
    ({"definitions": '[{"id": "welcome", "name": "Welcome"}]', "since": "2026-03-01 10:00"},
     [WORKFLOW], MARCH, None),
    ({"definitions": "  \n", "since": "2026-03-01T10:00:00Z"}, [], MARCH, None),
    # a time without an offset is UTC; with one, kept
    ({"since": "2026-03-01 10:00", "until": "2026-03-02T12:00+02:00"}, [], MARCH,
     datetime(2026, 3, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))),
])
def test_a_form_is_the_routes_body(form: dict[str, str], definitions: list[Any],
                                   since: datetime, until: datetime | None) -> None:
    body = lab_request(form)
    assert (body.definitions, body.since, body.until, body.lines) == (
        definitions, since, until, LAB_LINES)


@pytest.mark.parametrize(("form", "message"), [
    ({"definitions": '{"id": "welcome",', "since": "2026-03-01"},
     "the candidate definitions are not JSON"),
    ({"definitions": "[1]", "since": "2026-03-01"}, "definitions[0] is not a JSON object"),
    ({"definitions": '"welcome"', "since": "2026-03-01"},
     "definitions[0] is not a JSON object"),
    ({"definitions": "", "since": " "}, "from: the window needs a start"),
    ({"since": "yesterday"}, "from: 'yesterday' is not a time"),
    ({"since": "2026-03-01", "until": "2026-02-30"}, "to: '2026-02-30' is not a time"),
])
def test_a_form_the_lab_cannot_read_is_422_saying_why(form: dict[str, str],
                                                      message: str) -> None:
    with pytest.raises(Problem) as caught:
        lab_request(form)
    assert caught.value.status == 422
    assert message in caught.value.detail


@pytest.mark.parametrize(("key", "shown"), [
    ("2026-03-01T10:00", "2026-03-01 10:00 UTC"),  # an hour of the report (UTC send times)
    ("2026-03-01T10:00:00+00:00", "2026-03-01 10:00:00 UTC"),  # an instant: as every one
    ("not an hour", "not an hour"),
])
def test_an_hour_reads_like_every_time_on_the_dashboard(key: str, shown: str) -> None:
    assert hour(key) == shown
