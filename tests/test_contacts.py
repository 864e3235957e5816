"""Contact state logic (tables/contacts.py): events in, next state out, with ``now`` given."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.publisher import build_event
from streams.events import EVENT_TYPES, ContactEvent, Rejected, parse_event
from tables.contacts import (
    ACTIVITY_TYPES,
    MAX_SEEN,
    apply_event,
    contact_key,
    public_view,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
WINDOW_S = 3600.0
Step = tuple[str, dict[str, Any]]


def event(
    event_type: str,
    data: dict[str, Any] | None = None,
    *,
    event_id: str = "e-1",
    account: str = "acme",
    contact: str = "c-1",
    at: datetime = T0,
) -> ContactEvent:
    """An event as the ingest agent sees it: built by the SDK, sent as bytes, parsed."""
    envelope = build_event(account, contact, event_type, data, event_id=event_id, time=at)
    return parse_event(orjson.dumps(envelope))


def run(steps: list[Step], *, now: datetime = T0) -> dict[str, Any]:
    """The state after ``steps`` (distinct ids, one second apart, all within the window)."""
    state: dict[str, Any] | None = None
    for n, (event_type, data) in enumerate(steps):
        tick = now + timedelta(seconds=n)
        state = apply_event(
            state, event(event_type, data, event_id=f"e-{n}", at=tick), tick, WINDOW_S
        ).state
    assert state is not None
    return state


# One valid event of every v1 type, whether it shows the contact doing something.
EVERY_TYPE: list[tuple[str, dict[str, Any], bool]] = [
    # A signup is the contact's first activity.
    ("contact.created", {"phone": "+14155550101"}, True),
    # An operator's profile edit is not the contact's activity.
    ("contact.updated", {"email": "ada@example.com"}, False),
    # Tagging is an operator action.
    ("contact.tagged", {"tag": "vip"}, False),
    # Group membership is an operator action.
    ("contact.added_to_group", {"group": "newsletter"}, False),
    # Untagging is an operator (or workflow) action.
    ("contact.untagged", {"tag": "vip"}, False),
    # Removing from a group is an operator action too.
    ("contact.removed_from_group", {"group": "newsletter"}, False),
    # A channel worker's send report says nothing about the contact.
    ("message.sent", {"message_id": "m-1", "channel": "sms"}, False),
    # Delivery is the carrier's doing, not the contact's.
    ("message.delivered", {"message_id": "m-1", "channel": "sms"}, False),
    # A failed send is a system report.
    ("message.failed", {"message_id": "m-1", "channel": "sms", "reason": "carrier"}, False),
    # A bounce is a system report.
    ("message.bounced", {"message_id": "m-1", "channel": "email", "reason": "gone"}, False),
    # A click is the contact acting.
    ("message.clicked", {"message_id": "m-1", "channel": "sms", "url": "https://x.test"}, True),
    # An open is the contact acting.
    ("message.opened", {"message_id": "m-1", "channel": "email"}, True),
    # Campaign bookkeeping is not activity.
    ("campaign.started", {"campaign_id": "cmp-1"}, False),
    # Campaign bookkeeping is not activity.
    ("campaign.completed", {"campaign_id": "cmp-1"}, False),
    # An inbound SMS is the contact acting.
    ("keyword.received", {"keyword": "JOIN", "text": "join", "to": "+14155550000"}, True),
    # A purchase is the contact acting.
    ("purchase.completed", {"order_id": "o-1", "amount": "19.90", "currency": "USD"}, True),
    # The inactivity report must not count as activity, or it would reset itself.
    ("contact.inactive", {"threshold_days": 30}, False),
    # A subscription change may come from anywhere (a CRM, an operator): not activity.
    ("contact.preferences_updated",
     {"preferences": [{"category": "promotions", "subscribed": False}]}, False),
    # Every custom.* event counts as activity.
    ("custom.trial_expiring", {"days_left": 3}, True),
]


def test_activity_table_covers_the_documented_types() -> None:
    """The named activity types in the table above are exactly ACTIVITY_TYPES."""
    expected = set(ACTIVITY_TYPES)

    actual = {t for t, _, activity in EVERY_TYPE if activity and not t.startswith("custom.")}

    assert expected == actual


def test_type_table_covers_every_event_type() -> None:
    """The table above has a row for every named type of the contract."""
    expected = set(EVENT_TYPES)

    actual = {t for t, _, _ in EVERY_TYPE if not t.startswith("custom.")}

    assert expected == actual


@pytest.mark.parametrize(("event_type", "data", "activity"), EVERY_TYPE)
def test_any_event_creates_an_unknown_contact(
    event_type: str, data: dict[str, Any], activity: bool
) -> None:
    """An event of any type for a contact never seen creates it at version 1."""
    now = datetime(2026, 3, 1, 7, 0, tzinfo=ZoneInfo("America/New_York"))

    applied = apply_event(None, event(event_type, data, contact="c-9"), now, WINDOW_S)

    assert applied.duplicate is False
    assert ("acme", "c-9", 1) == (
        applied.state["account"], applied.state["contact_id"], applied.state["version"]
    )
    assert now.isoformat() == applied.state["created_at"] == applied.state["updated_at"]


@pytest.mark.parametrize(("event_type", "data", "activity"), EVERY_TYPE)
def test_last_activity_moves_only_for_activity_types(
    event_type: str, data: dict[str, Any], activity: bool
) -> None:
    """Every event sets last_event_at; only activity types (and custom.*) set last_activity_at."""
    signup = event("contact.created", {}, event_id="e-0", at=T0)
    later = event(event_type, data, event_id="e-1", at=T0 + HOUR)
    state = apply_event(None, signup, T0, WINDOW_S).state

    actual = apply_event(state, later, T0 + HOUR, WINDOW_S).state

    expected_activity = (T0 + HOUR) if activity else T0
    assert expected_activity.isoformat() == actual["last_activity_at"]
    assert (T0 + HOUR).isoformat() == actual["last_event_at"]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # Only the fields present are set; the others stay unknown.
        ([("contact.created", {"phone": "+14155550101"})],
         {"phone": "+14155550101", "email": None, "timezone": None, "locale": None}),
        # All four fields at once.
        ([("contact.created", {"phone": "+14155550101", "email": "a@x.io",
                               "timezone": "Europe/Berlin", "locale": "de-DE"})],
         {"phone": "+14155550101", "email": "a@x.io", "timezone": "Europe/Berlin",
          "locale": "de-DE"}),
        # An update that names another field keeps the phone.
        ([("contact.created", {"phone": "+14155550101"}),
          ("contact.updated", {"email": "a@x.io"})],
         {"phone": "+14155550101", "email": "a@x.io", "timezone": None, "locale": None}),
        # An update replaces a field it names.
        ([("contact.created", {"timezone": "Europe/Berlin"}),
          ("contact.updated", {"timezone": "Australia/Sydney"})],
         {"phone": None, "email": None, "timezone": "Australia/Sydney", "locale": None}),
        # An explicit null clears the field; the absent email is kept.
        ([("contact.created", {"phone": "+14155550101", "email": "a@x.io"}),
          ("contact.updated", {"phone": None})],
         {"phone": None, "email": "a@x.io", "timezone": None, "locale": None}),
        # An empty update changes no field.
        ([("contact.created", {"locale": "en-US"}), ("contact.updated", {})],
         {"phone": None, "email": None, "timezone": None, "locale": "en-US"}),
        # contact.updated for an unknown contact creates it with the given fields.
        ([("contact.updated", {"timezone": "Asia/Tokyo"})],
         {"phone": None, "email": None, "timezone": "Asia/Tokyo", "locale": None}),
        # Non-profile events leave the profile alone.
        ([("contact.created", {"phone": "+14155550101"}), ("contact.tagged", {"tag": "a"}),
          ("message.sent", {"message_id": "m", "channel": "sms"})],
         {"phone": "+14155550101", "email": None, "timezone": None, "locale": None}),
    ],
)
def test_profile_fields_set_when_present(steps: list[Step], expected: dict[str, Any]) -> None:
    """Profile fields are set when present in data, kept when absent and cleared by null."""
    state = run(steps)

    actual = {k: state[k] for k in ("phone", "email", "timezone", "locale")}

    assert expected == actual


@pytest.mark.parametrize(
    ("updates", "expected_attributes", "expected_consent"),
    [
        # Attribute keys from two events are merged.
        ([{"attributes": {"a": 1}}, {"attributes": {"b": 2}}], {"a": 1, "b": 2}, {}),
        # A later value replaces an earlier one for the same key.
        ([{"attributes": {"a": 1}}, {"attributes": {"a": 2}}], {"a": 2}, {}),
        # The merge is key by key, not deep: a nested object is replaced whole.
        ([{"attributes": {"addr": {"city": "X", "zip": "1"}}},
          {"attributes": {"addr": {"city": "Y"}}}], {"addr": {"city": "Y"}}, {}),
        # An update without attributes keeps them.
        ([{"attributes": {"a": 1}}, {"email": "a@x.io"}], {"a": 1}, {}),
        # Consent channels are merged.
        ([{"consent": {"sms": True}}, {"consent": {"email": False}}], {},
         {"sms": True, "email": False}),
        # Consent can be withdrawn per channel.
        ([{"consent": {"sms": True, "email": True}}, {"consent": {"sms": False}}], {},
         {"sms": False, "email": True}),
        # Attributes and consent in one event both land.
        ([{"attributes": {"plan": "pro"}, "consent": {"mms": True}}], {"plan": "pro"},
         {"mms": True}),
    ],
)
def test_attributes_and_consent_merged(
    updates: list[dict[str, Any]],
    expected_attributes: dict[str, Any],
    expected_consent: dict[str, bool],
) -> None:
    """Attributes and consent from successive profile events are merged key by key."""
    state = run([("contact.updated", data) for data in updates])

    assert expected_attributes == state["attributes"]
    assert expected_consent == state["consent"]


@pytest.mark.parametrize(
    ("steps", "expected_tags", "expected_groups"),
    [
        # The same tag twice is one tag.
        ([("contact.tagged", {"tag": "a"}), ("contact.tagged", {"tag": "a"})], ["a"], []),
        # Tags come out sorted, whatever the order they arrived in.
        ([("contact.tagged", {"tag": "b"}), ("contact.tagged", {"tag": "a"})], ["a", "b"], []),
        # Joining the same group twice is one membership.
        ([("contact.added_to_group", {"group": "g"}),
          ("contact.added_to_group", {"group": "g"})], [], ["g"]),
        # Leaving a group never joined is no error and leaves no trace.
        ([("contact.removed_from_group", {"group": "g"})], [], []),
        # Join then leave.
        ([("contact.added_to_group", {"group": "g"}),
          ("contact.removed_from_group", {"group": "g"})], [], []),
        # Leaving one group keeps the others.
        ([("contact.added_to_group", {"group": "g2"}),
          ("contact.added_to_group", {"group": "g1"}),
          ("contact.removed_from_group", {"group": "g2"})], [], ["g1"]),
        # Leave then join again: a member.
        ([("contact.removed_from_group", {"group": "g"}),
          ("contact.added_to_group", {"group": "g"})], [], ["g"]),
        # Untagging removes the tag.
        ([("contact.tagged", {"tag": "a"}), ("contact.tagged", {"tag": "b"}),
          ("contact.untagged", {"tag": "a"})], ["b"], []),
        # Untagging a tag the contact does not have is no error.
        ([("contact.untagged", {"tag": "a"})], [], []),
        # A tag and a group of the same name are independent.
        ([("contact.tagged", {"tag": "x"}), ("contact.added_to_group", {"group": "x"}),
          ("contact.removed_from_group", {"group": "x"})], ["x"], []),
    ],
)
def test_tags_and_groups_are_sets(
    steps: list[Step], expected_tags: list[str], expected_groups: list[str]
) -> None:
    """Tags and groups behave as sorted sets: adding twice keeps one, removing absent is a no-op."""
    state = run(steps)

    assert (expected_tags, expected_groups) == (state["tags"], state["groups"])


@pytest.mark.parametrize(
    ("first", "second", "expected_activity", "expected_event"),
    [
        # A newer activity moves both times forward.
        (("purchase.completed", T0), ("purchase.completed", T0 + HOUR), T0 + HOUR, T0 + HOUR),
        # An older activity arriving after a newer one moves neither back.
        (("purchase.completed", T0 + HOUR), ("purchase.completed", T0), T0 + HOUR, T0 + HOUR),
        # An older custom.* event after a newer one: still no move back.
        (("custom.visit", T0 + HOUR), ("custom.visit", T0 - HOUR), T0 + HOUR, T0 + HOUR),
        # An older non-activity event cannot move last_event_at back either.
        (("keyword.received", T0 + HOUR), ("message.sent", T0), T0 + HOUR, T0 + HOUR),
        # A newer non-activity event moves last_event_at only.
        (("keyword.received", T0), ("message.sent", T0 + HOUR), T0, T0 + HOUR),
        # Instants are compared, not strings: 12:30+01:00 is earlier than 12:00Z.
        (("message.opened", T0),
         ("message.opened", datetime(2026, 3, 1, 12, 30, tzinfo=ZoneInfo("Europe/Berlin"))),
         T0, T0),
        # ...and 13:30+01:00 is later than 12:00Z.
        (("message.opened", T0),
         ("message.opened", datetime(2026, 3, 1, 13, 30, tzinfo=ZoneInfo("Europe/Berlin"))),
         T0 + HOUR / 2, T0 + HOUR / 2),
    ],
)
def test_event_times_never_move_backwards(
    first: tuple[str, datetime],
    second: tuple[str, datetime],
    expected_activity: datetime,
    expected_event: datetime,
) -> None:
    """last_activity_at and last_event_at keep the newest event time, whatever the order."""
    data: dict[str, dict[str, Any]] = {
        "purchase.completed": {"order_id": "o", "amount": "1", "currency": "EUR"},
        "keyword.received": {"keyword": "HI", "text": "hi", "to": "+14155550000"},
        "message.sent": {"message_id": "m", "channel": "sms"},
        "message.opened": {"message_id": "m", "channel": "email"},
    }
    now = T0 + 2 * HOUR
    state = None
    for n, (event_type, at) in enumerate((first, second)):
        ev = event(event_type, data.get(event_type, {}), event_id=f"e-{n}", at=at)
        state = apply_event(state, ev, now, WINDOW_S).state
    assert state is not None

    actual = (
        datetime.fromisoformat(state["last_activity_at"]),
        datetime.fromisoformat(state["last_event_at"]),
    )

    assert (expected_activity, expected_event) == actual


def test_created_at_kept_and_updated_at_follows_processing_time() -> None:
    """created_at is when the contact was first seen; updated_at is the latest apply's now."""
    state = run([("contact.created", {}), ("contact.tagged", {"tag": "a"})])

    actual = (state["created_at"], state["updated_at"])

    assert (T0.isoformat(), (T0 + timedelta(seconds=1)).isoformat()) == actual


@pytest.mark.parametrize(
    ("ids", "expected_version"),
    [
        # One event.
        (["a"], 1),
        # Three distinct events.
        (["a", "b", "c"], 3),
        # A retry of the first in the middle is not counted.
        (["a", "b", "a", "c"], 3),
        # The same id five times counts once.
        (["a"] * 5, 1),
    ],
)
def test_version_counts_applied_events(ids: list[str], expected_version: int) -> None:
    """version is the number of events applied, duplicates excluded."""
    state = None
    for n, event_id in enumerate(ids):
        tick = T0 + timedelta(seconds=n)
        state = apply_event(state, event("contact.tagged", {"tag": "t"}, event_id=event_id),
                            tick, WINDOW_S).state
    assert state is not None

    assert expected_version == state["version"]


@pytest.mark.parametrize(
    ("elapsed", "retry"),
    [
        # An immediate retry.
        (timedelta(0), event("contact.tagged", {"tag": "a"}, event_id="e-1")),
        # A retry one second before the window ends.
        (timedelta(seconds=WINDOW_S - 1), event("contact.tagged", {"tag": "a"}, event_id="e-1")),
        # Same id, other content: the id decides, the new tag is not added.
        (timedelta(seconds=5), event("contact.tagged", {"tag": "b"}, event_id="e-1")),
        # Same id, other type: still the same event as far as dedupe goes.
        (timedelta(seconds=5), event("purchase.completed",
                                     {"order_id": "o", "amount": "1", "currency": "EUR"},
                                     event_id="e-1", at=T0 + HOUR)),
    ],
)
def test_duplicate_within_window_changes_nothing(elapsed: timedelta, retry: ContactEvent) -> None:
    """A repeat of an event id within the window is flagged duplicate and the state is unchanged."""
    state = apply_event(None, event("contact.tagged", {"tag": "a"}, event_id="e-1"), T0,
                        WINDOW_S).state
    expected = copy.deepcopy(state)

    applied = apply_event(state, retry, T0 + elapsed, WINDOW_S)

    assert applied.duplicate is True
    assert expected == applied.state


def test_same_id_after_window_applied_once_an_other_event_pruned_the_mark() -> None:
    """An id whose mark a later event pruned (the window had passed) is applied as new."""
    first = event("contact.tagged", {"tag": "a"}, event_id="e-1")
    state = apply_event(None, first, T0, WINDOW_S).state
    later = T0 + timedelta(seconds=WINDOW_S + 1)
    state = apply_event(state, event("contact.tagged", {"tag": "b"}, event_id="e-2"), later,
                        WINDOW_S).state

    applied = apply_event(state, first, later + timedelta(seconds=1), WINDOW_S)

    assert (False, 3) == (applied.duplicate, applied.state["version"])


@pytest.mark.parametrize(
    "elapsed",
    [
        # One second past the window.
        timedelta(seconds=WINDOW_S + 1),
        # Long after the window.
        timedelta(days=30),
    ],
)
def test_same_id_after_window_applied_again(elapsed: timedelta) -> None:
    """The same id arriving after the window has passed counts as new and is applied."""
    first = event("contact.tagged", {"tag": "a"}, event_id="e-1")
    state = apply_event(None, first, T0, WINDOW_S).state

    applied = apply_event(state, first, T0 + elapsed, WINDOW_S)

    assert (False, 2) == (applied.duplicate, applied.state["version"])


def _past_the_cap(extra: int) -> dict[str, Any]:
    """A contact with MAX_SEEN + extra events applied (ids e-0, e-1, …), all in the window."""
    state = None
    for n in range(MAX_SEEN + extra):
        tick = T0 + timedelta(milliseconds=n)
        state = apply_event(state, event("contact.tagged", {"tag": "t"}, event_id=f"e-{n}"),
                            tick, WINDOW_S).state
    assert state is not None
    return state


def test_seen_cap_keeps_the_newest_ids() -> None:
    """Past MAX_SEEN applied events, the marks are exactly the newest MAX_SEEN ids."""
    extra = 10
    state = _past_the_cap(extra)

    expected = [f"e-{n}" for n in range(extra, MAX_SEEN + extra)]

    assert expected == list(state["seen"])


@pytest.mark.parametrize(
    ("replayed", "expected_duplicate"),
    [
        # The very first id was evicted: a replay is applied again.
        ("e-0", False),
        # The last evicted id.
        ("e-9", False),
        # The oldest id still remembered.
        ("e-10", True),
        # The newest id.
        (f"e-{MAX_SEEN + 9}", True),
    ],
)
def test_seen_cap_forgets_the_oldest(replayed: str, expected_duplicate: bool) -> None:
    """An id evicted by the cap is applied again; one still remembered is a duplicate."""
    state = _past_the_cap(10)
    now = T0 + timedelta(seconds=10)

    applied = apply_event(state, event("contact.tagged", {"tag": "t"}, event_id=replayed),
                          now, WINDOW_S)

    assert expected_duplicate == applied.duplicate
    assert MAX_SEEN == len(applied.state["seen"])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # Two tenants' c-1 are two contacts.
        (("acme", "c-1"), ("globex", "c-1")),
        # One tenant's two contacts.
        (("acme", "c-1"), ("acme", "c-2")),
        # A contact id that looks like another tenant's key.
        (("acme", "globex:c-1"), ("globex", "c-1")),
    ],
)
def test_contact_keys_are_distinct(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Different (account, contact id) pairs never share a key."""
    assert contact_key(*a) != contact_key(*b)


def test_contact_key_format() -> None:
    """The key is '<account>:<contact id>'."""
    assert "acme:c-1" == contact_key("acme", "c-1")


def test_account_with_colon_rejected() -> None:
    """An account id containing ':' is rejected, so '<account>:' is an unambiguous key prefix."""
    with pytest.raises(Rejected) as caught:
        event("contact.created", {}, account="acme:globex")

    assert "invalid_envelope" == caught.value.reason


def test_same_event_id_in_two_tenants_applies_to_both() -> None:
    """The dedupe marks are per contact state: another tenant's identical id is not a repeat."""
    acme = apply_event(None, event("contact.tagged", {"tag": "a"}, account="acme"), T0,
                       WINDOW_S).state
    globex = apply_event(None, event("contact.tagged", {"tag": "z"}, account="globex"), T0,
                         WINDOW_S)

    assert (False, "globex", ["z"]) == (
        globex.duplicate, globex.state["account"], globex.state["tags"]
    )
    assert ("acme", ["a"]) == (acme["account"], acme["tags"])


PROFILE_FIELDS = (
    "account", "contact_id", "phone", "email", "timezone", "locale", "attributes", "consent",
    "groups", "tags", "created_at", "updated_at", "last_event_at", "last_activity_at", "version",
)


def test_public_view_keeps_the_profile_and_drops_seen() -> None:
    """public_view keeps every profile field as it is, drops the dedupe marks, and leaves the
    state intact."""
    state = run([("contact.created", {"phone": "+14155550101"}), ("contact.tagged", {"tag": "a"})])
    before = copy.deepcopy(state)

    view = public_view(state)

    assert {k: state[k] for k in PROFILE_FIELDS} == {k: view.get(k) for k in PROFILE_FIELDS}
    assert "seen" not in view
    assert {k: state[k] for k in view} == view
    assert before == state


@pytest.mark.parametrize(
    ("event_type", "data", "event_id"),
    [
        # A profile update touches the scalar fields and both dicts.
        ("contact.updated", {"phone": None, "attributes": {"b": 2}, "consent": {"sms": False}},
         "e-new"),
        # A tag touches the tags list.
        ("contact.tagged", {"tag": "z"}, "e-new"),
        # Joining a group touches the groups list.
        ("contact.added_to_group", {"group": "h"}, "e-new"),
        # Leaving a group touches the groups list.
        ("contact.removed_from_group", {"group": "g"}, "e-new"),
        # An activity event touches the times.
        ("custom.visit", {}, "e-new"),
        # A duplicate must not touch anything either.
        ("contact.tagged", {"tag": "z"}, "e-0"),
    ],
)
def test_input_state_never_mutated(event_type: str, data: dict[str, Any], event_id: str) -> None:
    """apply_event returns a new state and leaves the one passed in exactly as it was."""
    state = run([
        ("contact.created", {"phone": "+14155550101", "attributes": {"a": 1},
                             "consent": {"sms": True}}),
        ("contact.tagged", {"tag": "a"}),
        ("contact.added_to_group", {"group": "g"}),
    ])
    before = copy.deepcopy(state)
    now = T0 + HOUR

    applied = apply_event(state, event(event_type, data, event_id=event_id, at=now), now,
                          WINDOW_S)
    if not applied.duplicate:
        # The new state's containers are its own: changing them cannot reach the old one.
        applied.state["attributes"]["x"] = 1
        applied.state["tags"].append("y")
        applied.state["seen"]["z"] = 0.0

    assert before == state


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from(["t1", "t2", "t3", "t4"])),
        max_size=30,
    )
)
def test_property_version_and_tags_follow_first_occurrences(
    steps: list[tuple[str, str]],
) -> None:
    """Within the window, version is the count of distinct ids and tags the first occurrences'."""
    state: dict[str, Any] | None = None
    for n, (event_id, tag) in enumerate(steps):
        tick = T0 + timedelta(seconds=n)
        ev = event("contact.tagged", {"tag": tag}, event_id=event_id, at=tick)
        state = apply_event(state, ev, tick, WINDOW_S).state
    first: dict[str, str] = {}
    for event_id, tag in steps:
        first.setdefault(event_id, tag)

    actual = (state["version"], set(state["tags"])) if state else (0, set())

    assert (len(first), set(first.values())) == actual


# --- encoding and limits ---------------------------------------------------------------


def test_encoded_state_round_trips_and_is_small() -> None:
    """A contact with a profile, tags and a group decodes to the same state, in a fraction
    of its JSON size; plain JSON (a table written before) decodes too."""
    from tables.contacts import decode, encode

    state = run([("contact.created", {"phone": "+14155550101", "email": "ada@example.com",
                                      "timezone": "Europe/Berlin",
                                      "attributes": {"first_name": "Ada", "plan": "pro"},
                                      "consent": {"sms": True}}),
                 ("contact.tagged", {"tag": "vip"}), ("contact.added_to_group", {"group": "g"})])
    value = encode(state)
    assert (decode(value), decode(orjson.dumps(state))) == (state, state)
    assert len(value) < len(orjson.dumps(state)) / 2


def test_the_compression_dictionary_never_changes() -> None:
    """States in changelogs and Redis were deflated against this dictionary: changing it
    needs a new format byte (and keeping this one to read the old values)."""
    import hashlib

    from tables.contacts import ZDICT_V1

    assert hashlib.sha256(ZDICT_V1).hexdigest()[:16] == "e88c2e1435f373e7"


@pytest.mark.parametrize("due", [None, "2026-03-04T15:00:00+00:00"])
def test_next_due_is_read_without_decoding_the_rest(due: str | None) -> None:
    """The timer index reads ``next_due`` from the first bytes of an encoded state."""
    from tables.contacts import encode, peek_next_due

    state = run([("contact.created", {})])
    state["next_due"] = due
    assert (peek_next_due(encode(state)), peek_next_due(orjson.dumps(state))) == (due, due)


@pytest.mark.parametrize(
    ("steps", "detail"),
    [
        # The 257th tag.
        ([("contact.tagged", {"tag": f"t{n}"}) for n in range(257)], "tags: 257"),
        # The 257th group.
        ([("contact.added_to_group", {"group": f"g{n}"}) for n in range(257)], "groups: 257"),
        # The 257th attribute, over several updates.
        ([("contact.updated", {"attributes": {f"a{n}_{m}": m for m in range(50)}})
          for n in range(6)], "attributes: 300"),
        # 32 KiB of attributes, over several updates.
        ([("contact.updated", {"attributes": {f"k{n}": "x" * 10_000}}) for n in range(4)],
         "attributes bytes"),
    ],
)
def test_an_event_past_a_limit_is_refused_and_changes_nothing(
    steps: list[Step], detail: str
) -> None:
    """The event that would cross a limit raises limit_exceeded; the state before stands."""
    before = run(steps[:-1])
    last_type, last_data = steps[-1]
    with pytest.raises(Rejected) as caught:
        apply_event(before, event(last_type, last_data, event_id="last"), T0, WINDOW_S)
    assert (caught.value.reason, detail in caught.value.detail) == ("limit_exceeded", True)
    assert "last" not in before["seen"]


@given(st.lists(st.tuples(st.sampled_from(["contact.tagged", "contact.added_to_group",
                                           "contact.updated"]),
                          st.integers(0, 400), st.integers(0, 3000)), max_size=60))
def test_no_sequence_of_events_grows_a_contact_past_its_limits(
    steps: list[tuple[str, int, int]],
) -> None:
    """Whatever publishers send, an accepted state stays within every limit."""
    from tables.contacts import (
        MAX_ATTRIBUTES,
        MAX_ATTRIBUTES_BYTES,
        MAX_GROUPS,
        MAX_STATE_BYTES,
        MAX_TAGS,
        encode,
    )

    state = None
    for n, (kind, name, size) in enumerate(steps):
        data: dict[str, Any] = {"contact.tagged": {"tag": f"t{name}"},
                                "contact.added_to_group": {"group": f"g{name}"},
                                "contact.updated": {"attributes": {f"a{name}": "x" * size}}}[kind]
        try:
            state = apply_event(state, event(kind, data, event_id=f"e{n}"), T0, WINDOW_S).state
        except Rejected as refused:
            assert refused.reason == "limit_exceeded"
    if state is not None:
        assert len(state["tags"]) <= MAX_TAGS and len(state["groups"]) <= MAX_GROUPS
        assert len(state["attributes"]) <= MAX_ATTRIBUTES
        assert len(orjson.dumps(state["attributes"])) <= MAX_ATTRIBUTES_BYTES
        assert len(encode(state)) <= MAX_STATE_BYTES
