"""Criteria and trigger matching (tables/triggers.py) over real contact states and events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.events import EVENT_TYPES
from tables.triggers import MISSING, criteria_hold, keyword_of, resolve, trigger_matches
from tests.unit_workflows.support import T0, apply, created, definition, welcome_raw


def contact_and_purchase() -> tuple[dict[str, Any], dict[str, Any]]:
    """Ada (tagged vip, in the newsletter group, one purchase) and her purchase event."""
    state, _ = created(attributes={"first_name": "Ada", "score": "42", "plan": "pro",
                                   "langs": ["en", "de"], "address": {"city": "Berlin"}})
    state, _ = apply(state, "contact.tagged", {"tag": "vip"}, event_id="e-2", at=T0)
    state, _ = apply(state, "contact.added_to_group", {"group": "newsletter"}, event_id="e-3",
                     at=T0)
    return apply(state, "purchase.completed",
                 {"order_id": "o-1", "amount": "19.90", "currency": "EUR",
                  "items": ["shoe", "sock"], "note": "Gift for MOM", "count": 3},
                 event_id="e-4", at=T0)


CONTACT, PURCHASE = contact_and_purchase()


def crit(field: str | None, op: str, value: Any = None) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


CRITERIA = [
    # eq: the same string.
    (crit("event.data.currency", "eq", "EUR"), True),
    # eq: strings are compared exactly (case matters).
    (crit("event.data.currency", "eq", "eur"), False),
    # eq: a Decimal-string amount equals the number.
    (crit("event.data.amount", "eq", 19.9), True),
    # eq: a number equals its string form.
    (crit("event.data.count", "eq", "3"), True),
    # eq: a numeric attribute string equals the number.
    (crit("contact.score", "eq", 42), True),
    # ne: a different number.
    (crit("event.data.count", "ne", 4), True),
    # ne: the same number written as a string is not different.
    (crit("event.data.count", "ne", "3"), False),
    # ne: a different string.
    (crit("event.data.currency", "ne", "USD"), True),
    # gt: Decimal-strings compare as numbers ("19.90" > "9.99", unlike as text).
    (crit("event.data.amount", "gt", "9.99"), True),
    # gt: not greater than itself.
    (crit("event.data.amount", "gt", "19.9"), False),
    # gte: equal counts.
    (crit("event.data.amount", "gte", "19.90"), True),
    # lt: "19.90" < "100" as numbers (as text it would not be).
    (crit("event.data.amount", "lt", "100"), True),
    # lte: equal counts.
    (crit("event.data.count", "lte", 3), True),
    # lte: a smaller bound.
    (crit("event.data.count", "lte", 2), False),
    # gt on text that is no number: compared as strings (ISO times).
    (crit("event.time", "gt", "2026-01-01T00:00:00+00:00"), True),
    # gt between a number and non-numeric text: false.
    (crit("event.data.count", "gt", "many"), False),
    # contains on a string: case-insensitive.
    (crit("event.data.note", "contains", "mom"), True),
    # contains on a string: absent text.
    (crit("event.data.note", "contains", "dad"), False),
    # contains on a list: membership.
    (crit("event.data.items", "contains", "sock"), True),
    # contains on a list: absent item.
    (crit("event.data.items", "contains", "hat"), False),
    # contains on a contact list attribute.
    (crit("contact.langs", "contains", "de"), True),
    # contains on a number: false.
    (crit("event.data.count", "contains", "3"), False),
    # in: one of the values.
    (crit("event.data.currency", "in", ["USD", "EUR"]), True),
    # in: none of the values.
    (crit("event.data.currency", "in", ["USD", "GBP"]), False),
    # in: a Decimal-string amount is in a list of numbers, as eq says it equals one.
    pytest.param(crit("event.data.amount", "in", [9.9, 19.9]), True, id="in-numeric"),
    # exists: a present field.
    (crit("event.data.order_id", "exists"), True),
    # exists: an absent field.
    (crit("event.data.coupon", "exists"), False),
    # exists: a profile field that is null (no timezone given).
    (crit("contact.timezone", "exists"), False),
    # not_exists: an absent field.
    (crit("event.data.coupon", "not_exists"), True),
    # not_exists: a present field.
    (crit("event.data.order_id", "not_exists"), False),
    # in_group: a group she is in.
    (crit(None, "in_group", "newsletter"), True),
    # in_group: a group she is not in.
    (crit(None, "in_group", "vip-list"), False),
    # not_in_group: a group she is not in.
    (crit(None, "not_in_group", "vip-list"), True),
    # not_in_group: a group she is in.
    (crit(None, "not_in_group", "newsletter"), False),
    # has_tag: a tag she has.
    (crit(None, "has_tag", "vip"), True),
    # has_tag: a tag she lacks.
    (crit(None, "has_tag", "churned"), False),
    # not_has_tag: a tag she lacks.
    (crit(None, "not_has_tag", "churned"), True),
    # not_has_tag: a tag she has.
    (crit(None, "not_has_tag", "vip"), False),
    # event.type.
    (crit("event.type", "eq", "purchase.completed"), True),
    # Shorthand: contact.first_name is looked up in the attributes.
    (crit("contact.first_name", "eq", "Ada"), True),
    # The long form says the same.
    (crit("contact.attributes.first_name", "eq", "Ada"), True),
    # A nested attribute.
    (crit("contact.address.city", "eq", "Berlin"), True),
    # contact.purchases is the counter the contact state keeps (this purchase included).
    (crit("contact.purchases", "gt", 0), True),
    # contact.purchases compared exactly.
    (crit("contact.purchases", "eq", 1), True),
    # Profile fields.
    (crit("contact.email", "eq", "ada@example.com"), True),
    # Consent per channel.
    (crit("contact.consent.sms", "eq", True), True),
    # Tags as a field.
    (crit("contact.tags", "contains", "vip"), True),
    # A missing attribute: eq is false.
    (crit("contact.last_name", "eq", "Lovelace"), False),
    # A missing attribute: ne is false too (a missing field holds nothing but not_exists).
    (crit("contact.last_name", "ne", "Lovelace"), False),
    # A missing event field: gt is false.
    (crit("event.data.discount", "gt", 0), False),
    # A missing event field: contains is false.
    (crit("event.data.tags", "contains", "x"), False),
    # A missing event field: in is false.
    (crit("event.data.coupon", "in", ["A"]), False),
    # A path through a non-dict value is missing.
    (crit("event.data.currency.code", "exists"), False),
]


@pytest.mark.parametrize(("criterion", "expected"), CRITERIA)
def test_criterion(criterion: dict[str, Any], expected: bool) -> None:
    """Each operator holds exactly when its table row says so."""
    assert expected == criteria_hold([criterion], PURCHASE, CONTACT)


def test_empty_criteria_hold() -> None:
    """No criteria means no condition."""
    assert criteria_hold([], PURCHASE, CONTACT)


def test_all_criteria_must_hold() -> None:
    """A list of criteria is a conjunction."""
    both = [crit("event.data.currency", "eq", "EUR"), crit(None, "has_tag", "churned")]
    assert (False, True) == (criteria_hold(both, PURCHASE, CONTACT),
                             criteria_hold(both[:1], PURCHASE, CONTACT))


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("contact.first_name", "Ada"),  # attribute shorthand
        ("contact.purchases", 1),  # profile counter
        ("contact.phone", "+14155550101"),  # profile field
        ("contact.nickname", MISSING),  # absent attribute
        ("event.data.amount", "19.90"),  # Decimal dumped as a string
        ("event.id", "e-4"),  # envelope field
        ("order.total", MISSING),  # unknown root
    ],
)
def test_resolve(field: str, expected: Any) -> None:
    """A field path resolves in the event, the profile, or the attributes."""
    assert expected == resolve(field, PURCHASE, CONTACT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("JOIN", "JOIN"),  # the keyword itself
        ("join", "JOIN"),  # lower case
        ("  Join  now please", "JOIN"),  # surrounding whitespace, more words
        ("\tstop\n", "STOP"),  # tabs and newlines
        ("", ""),  # empty
        ("   ", ""),  # only whitespace
    ],
)
def test_keyword_of(text: str, expected: str) -> None:
    """The first word, upper-cased, whitespace ignored."""
    assert expected == keyword_of(text)


def workflow(**changes: Any) -> dict[str, Any]:
    """The welcome flow as the engine sees it, with ``changes`` to its top level."""
    raw = welcome_raw()
    raw.update(changes)
    return definition(raw)


def keyword_event(keyword: str, text: str, account: str = "acme") -> dict[str, Any]:
    state, _ = created(account=account)
    _, event = apply(state, "keyword.received",
                     {"keyword": keyword, "text": text, "to": "12345"},
                     event_id="e-kw", at=T0, account=account)
    return event


KEYWORD = {"event": "keyword.received", "keyword": "join"}
ACME_STATE, ACME_CREATED = created()
OTHER_STATE, OTHER_CREATED = created(account="globex")

MATCHES = [
    # The trigger's type, the workflow's account, empty criteria: matches.
    (workflow(), ACME_CREATED, ACME_STATE, True),
    # The same event in another account: never, even with empty criteria.
    (workflow(), OTHER_CREATED, OTHER_STATE, False),
    # A workflow of the other account never sees acme's events.
    (workflow(account="globex"), ACME_CREATED, ACME_STATE, False),
    # An inactive workflow never matches.
    (workflow(active=False), ACME_CREATED, ACME_STATE, False),
    # Another event type.
    (workflow(), PURCHASE, CONTACT, False),
    # Criteria that hold.
    (workflow(trigger={"event": "purchase.completed",
                       "criteria": [crit("event.data.amount", "gte", "10")]}),
     PURCHASE, CONTACT, True),
    # Criteria that do not hold.
    (workflow(trigger={"event": "purchase.completed",
                       "criteria": [crit("event.data.amount", "gte", "100")]}),
     PURCHASE, CONTACT, False),
    # A keyword, said in another case with extra words.
    (workflow(trigger=KEYWORD), keyword_event("JOIN", " Join now"), ACME_STATE, True),
    # A keyword, first word of the text, with leading whitespace.
    (workflow(trigger=KEYWORD), keyword_event("  jOiN ", "jOiN"), ACME_STATE, True),
    # Another keyword.
    (workflow(trigger=KEYWORD), keyword_event("STOP", "stop"), ACME_STATE, False),
    # A keyword that only starts like it.
    (workflow(trigger=KEYWORD), keyword_event("JOINED", "joined"), ACME_STATE, False),
    # The right keyword in another account.
    (workflow(trigger=KEYWORD), keyword_event("JOIN", "join", account="globex"),
     OTHER_STATE, False),
]


@pytest.mark.parametrize(("wf", "event", "contact", "expected"), MATCHES)
def test_trigger_matches(
    wf: dict[str, Any], event: dict[str, Any], contact: dict[str, Any], expected: bool
) -> None:
    """A trigger matches its type, keyword and criteria, only in its own account."""
    assert expected == trigger_matches(wf, event, contact)


@given(account=st.sampled_from(["globex", "acme2", "ACME", "acme.eu"]),
       event_type=st.sampled_from(EVENT_TYPES))
def test_other_accounts_never_match(account: str, event_type: str) -> None:
    """An acme workflow with empty criteria never matches any event of another account."""
    wf = workflow(trigger={"event": event_type})
    event = {"id": "e-x", "type": event_type, "time": T0.isoformat(), "account": account,
             "causationdepth": 0, "data": {"keyword": "JOIN", "text": "JOIN"}}
    assert not trigger_matches(wf, event, OTHER_STATE)
