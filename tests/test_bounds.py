"""A contact's value stays bounded whatever publishers send: the bounds added for hostile or
buggy input, one test each (the older ones are in test_contacts.py, test_cycle.py,
unit_compliance/test_compliant_flows.py and unit_workflows/test_inactivity.py; the list of
all of them is docs/contract.md, "Limits")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from streams.definitions import DefinitionError, parse_any
from streams.events import MAX_CAP, Rejected, parse_event
from tables.compliance import MAX_SENDS, cap_until, record_send
from tables.contacts import MAX_MARK_CHARS, MAX_SEEN, MAX_STATE_BYTES, apply_event, encode
from tests.unit_compliance.support import caps, policy

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
UTC_ZONE = T0.tzinfo


def event(event_type: str, data: dict[str, Any], *, event_id: str = "e-1") -> Any:
    envelope = build_event("acme", "c-1", event_type, data, event_id=event_id, time=T0)
    return parse_event(orjson.dumps(envelope))


def test_long_event_ids_are_remembered_by_a_digest() -> None:
    """256 ids of 256 characters: the marks stay small, a repeat is still a duplicate, and
    a short id is kept as it is."""
    state = None
    ids = [f"{n:03d}" + "x" * 253 for n in range(MAX_SEEN)]
    for n, ident in enumerate(ids):
        state = apply_event(state, event("contact.tagged", {"tag": "t"}, event_id=ident),
                            T0 + timedelta(milliseconds=n), 3600).state
    assert state is not None
    marks = orjson.dumps(state["seen"])
    assert (len(state["seen"]), len(marks) < MAX_SEEN * 60) == (MAX_SEEN, True)
    assert all(len(mark) <= MAX_MARK_CHARS for mark in state["seen"])
    again = apply_event(state, event("contact.tagged", {"tag": "t"}, event_id=ids[-1]),
                        T0 + timedelta(seconds=1), 3600)
    short = apply_event(state, event("contact.tagged", {"tag": "t"}, event_id="e-short"),
                        T0 + timedelta(seconds=1), 3600)
    assert (again.duplicate, "e-short" in short.state["seen"]) == (True, True)


def command(n: int, *, transactional: bool, channel: str = "sms") -> dict[str, Any]:
    return {"message_id": f"msg-{transactional}-{n}", "channel": channel, "to": "+1",
            "transactional": transactional}


def test_sends_are_bounded_and_transactional_ones_go_first() -> None:
    """A thousand order confirmations among 40 marketing sends: the contact keeps its
    newest MAX_SENDS, every marketing one among them, and its state stays small."""
    contact: dict[str, Any] = {"sends": []}
    for n in range(1000):
        at = T0 + timedelta(minutes=n)
        record_send(contact, command(n, transactional=True), at)  # type: ignore[arg-type]
        if n % 25 == 0:
            record_send(contact, command(n, transactional=False), at)  # type: ignore[arg-type]
    marketing = [s for s in contact["sends"] if not s["transactional"]]
    assert (len(contact["sends"]), len(marketing)) == (MAX_SENDS, 40)
    assert contact["sends"][-1]["id"] == "msg-True-999"  # the newest stay
    assert len(orjson.dumps(contact["sends"])) < MAX_STATE_BYTES // 3


def test_caps_count_exactly_up_to_the_highest_cap_whatever_was_forgotten() -> None:
    """MAX_CAP sends in one day, then a flood of transactional ones: the day is still
    full for a cap of MAX_CAP."""
    contact: dict[str, Any] = {"sends": []}
    for n in range(MAX_CAP):
        record_send(contact, command(n, transactional=False),  # type: ignore[arg-type]
                    T0 + timedelta(seconds=n))
    for n in range(2 * MAX_SENDS):
        record_send(contact, command(n, transactional=True),  # type: ignore[arg-type]
                    T0 + timedelta(minutes=5, seconds=n))
    rules = policy(caps=caps(day=MAX_CAP, week=None, month=None))
    capped, _ = cap_until(contact["sends"], rules, contact, "sms", UTC_ZONE,  # type: ignore[arg-type]
                          T0 + timedelta(hours=1))
    assert capped


@pytest.mark.parametrize("definition", [
    {"kind": "account", "account": "acme", "caps": {"limits": {"day": MAX_CAP + 1}}},
    {"kind": "account", "account": "acme",
     "caps": {"channels": {"sms": {"month": MAX_CAP + 1}}}},
])
def test_a_policy_cap_above_the_highest_is_refused(definition: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_any(definition)
    assert any(f"less than or equal to {MAX_CAP}" in e for e in caught.value.errors)


@pytest.mark.parametrize(("data", "field"), [
    ({"caps": {"day": MAX_CAP + 1}}, "caps.day"),
    ({"email": "a" * 250 + "@example.com"}, "email"),
    ({"locale": "en" + "-abcdefgh" * 5}, "locale"),
])
def test_profile_fields_past_their_length_or_range_are_invalid(data: dict[str, Any],
                                                               field: str) -> None:
    """Dead-lettered as invalid_data, naming the field."""
    with pytest.raises(Rejected) as caught:
        event("contact.updated", data)
    assert (caught.value.reason, f"data.{field}" in caught.value.detail) == ("invalid_data",
                                                                            True)


def test_a_realistic_contact_at_every_bound_still_fits_a_record() -> None:
    """Marks, sends and tags at their bounds together stay under the state limit."""
    state = None
    for n in range(MAX_SEEN):
        state = apply_event(state, event("contact.tagged", {"tag": f"tag-{n:03d}" + "x" * 100},
                                         event_id="i" * 200 + str(n)),
                            T0 + timedelta(milliseconds=n), 3600).state
    assert state is not None
    for n in range(MAX_SENDS):
        record_send(state, command(n, transactional=True), T0 + timedelta(seconds=n))
    assert len(orjson.dumps(state)) <= MAX_STATE_BYTES
    assert len(encode(state)) < MAX_STATE_BYTES
