"""Inactivity detection (tables/inactivity.py, through the engine's handlers): each contact's
own timer, re-armed by activity, fired once per period, never early.

Contact states are made by the real handlers from SDK-built events; time is passed in
(``T0`` Monday 2 March 2026, 14:00 UTC), so weeks of silence take no time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.publisher import build_event
from streams.definitions import DefinitionError, parse_any, parse_definition
from streams.events import parse_event
from tables import inactivity
from tables.contacts import ContactState, copy_state, encode, peek_timers
from tables.effects import Outcome
from tables.handlers import Context, Wakeup, handle_event, handle_wakeup
from tests.unit_compliance.support import policy as account_policy
from tests.unit_workflows.support import (
    ACCOUNT,
    CONTACT,
    DAY,
    HOUR,
    SECOND,
    T0,
    Registry,
    definition,
    profile,
)


def winback(days: int, wf_id: str | None = None, *, active: bool = True) -> dict[str, Any]:
    """A workflow started by ``contact.inactive`` after ``days`` days: one SMS."""
    return definition({
        "id": wf_id or f"winback-{days}", "account": ACCOUNT, "name": "Win back",
        "version": 1, "active": active,
        "trigger": {"event": "contact.inactive", "inactive_days": days},
        "start": "nudge",
        "steps": {"nudge": {"kind": "send_sms", "body": "We miss you ({{event.data.threshold_days}}"
                                                        " days)"}},
    })


def context(*workflows: dict[str, Any], policy: dict[str, Any] | None = None) -> Context:
    return Context(Registry(*workflows, policy=policy or account_policy()),
                   lambda account, address: None)


def event(state: ContactState | None, ctx: Context, event_type: str, at: datetime,
          data: dict[str, Any] | None = None, *, ident: str, now: datetime | None = None,
          source: str | None = None) -> Outcome:
    """``source``: the publisher's (dripstream's own emitted events say theirs)."""
    envelope = build_event(ACCOUNT, CONTACT, event_type, data, event_id=ident, time=at,
                           source=source or "urn:shop:acme")
    return handle_event(state, parse_event(orjson.dumps(envelope), CONTACT.encode()), ctx,
                        now or at)


def signup(ctx: Context, at: datetime = T0) -> ContactState:
    outcome = event(None, ctx, "contact.created", at, profile(), ident="signup")
    assert outcome.state is not None
    return outcome.state


def wake(state: ContactState, ctx: Context, now: datetime) -> Outcome:
    return handle_wakeup(state, Wakeup(ACCOUNT, CONTACT), ctx, now)


def inactive_events(outcome: Outcome) -> list[dict[str, Any]]:
    return [e for e in outcome.effects.events if e["type"] == "contact.inactive"]


def timer(state: ContactState, ctx: Context) -> datetime | None:
    """The contact's one timer, as the worker's due index computes it."""
    record = state.get("inactivity")
    return inactivity.earliest(state["next_due"],
                               None if record is None else (record["since"], record["fired"]),
                               ctx.definitions.inactivity_thresholds(ACCOUNT))


# -- thresholds -------------------------------------------------------------------------------


def test_thresholds_are_the_inactive_days_of_active_inactivity_workflows() -> None:
    """Ascending, once each; inactive workflows and other triggers add none."""
    other = definition({"id": "hello", "account": ACCOUNT, "name": "Hello", "version": 1,
                        "trigger": {"event": "contact.created"}, "start": "s",
                        "steps": {"s": {"kind": "send_sms", "body": "hi"}}})
    flows = [winback(30), winback(7), winback(30, "again"), winback(90, active=False), other]
    assert (7, 30) == inactivity.thresholds(flows)


def test_at_most_max_thresholds_smallest_first() -> None:
    flows = [winback(d) for d in range(1, inactivity.MAX_THRESHOLDS + 10)]
    assert tuple(range(1, inactivity.MAX_THRESHOLDS + 1)) == inactivity.thresholds(flows)


# -- the timer --------------------------------------------------------------------------------


def test_a_contact_never_active_counts_from_its_creation() -> None:
    """No wake-up fires before creation + 30 days; at it, one contact.inactive with
    threshold_days 30, no last activity, inactive since the creation."""
    ctx = context(winback(30))
    state = signup(ctx)
    assert T0 + 30 * DAY == timer(state, ctx)
    assert wake(state, ctx, T0 + 30 * DAY - SECOND).state is None
    fired = wake(state, ctx, T0 + 30 * DAY)
    [sent] = inactive_events(fired)
    assert ({"threshold_days": 30, "last_activity_at": None, "inactive_since": T0.isoformat()},
            inactivity.SOURCE, 0) == (sent["data"], sent["source"], sent["causationdepth"])


def test_fires_once_per_period_not_every_day_after() -> None:
    """After it fired, later wake-ups find nothing and the contact holds no timer."""
    ctx = context(winback(30))
    state = wake(signup(ctx), ctx, T0 + 31 * DAY).state
    assert state is not None
    assert (None, None, None) == (timer(state, ctx), wake(state, ctx, T0 + 32 * DAY).state,
                                  wake(state, ctx, T0 + 400 * DAY).state)


def test_activity_re_arms_and_a_new_period_fires_again() -> None:
    """A purchase on day 31 starts a new period: the next contact.inactive is 30 days
    after it, with the purchase as the last activity and an id of its own."""
    ctx = context(winback(30))
    first = wake(signup(ctx), ctx, T0 + 31 * DAY)
    assert first.state is not None
    bought = T0 + 31 * DAY
    active = event(first.state, ctx, "purchase.completed", bought,
                   {"order_id": "o-1", "amount": "5", "currency": "EUR"}, ident="o-1").state
    assert active is not None
    assert bought + 30 * DAY == timer(active, ctx)
    second = wake(active, ctx, bought + 30 * DAY)
    [again] = inactive_events(second)
    [before] = inactive_events(first)
    assert (bought.isoformat(), bought.isoformat()) == (
        again["data"]["last_activity_at"], again["data"]["inactive_since"])
    assert before["id"] != again["id"]


@pytest.mark.parametrize(("event_type", "data"), [
    # system reports and operator actions are not the contact doing something
    ("message.sent", {"message_id": "m-1", "channel": "sms"}),
    ("message.delivered", {"message_id": "m-1", "channel": "sms"}),
    ("contact.tagged", {"tag": "vip"}),
    ("contact.updated", {"attributes": {"plan": "pro"}}),
    ("contact.inactive", {"threshold_days": 30}),
    ("custom.page_view", {"path": "/"}),
])
def test_events_that_are_not_activity_do_not_re_arm(event_type: str, data: dict[str, Any]
                                                     ) -> None:
    ctx = context(winback(30))
    state = event(signup(ctx), ctx, event_type, T0 + 10 * DAY, data, ident="x").state
    assert state is not None
    assert T0 + 30 * DAY == timer(state, ctx)


@pytest.mark.parametrize(("event_type", "data"), [
    ("keyword.received", {"keyword": "HI", "text": "hi", "to": "+14155550000"}),
    ("message.clicked", {"message_id": "m-1", "channel": "sms"}),
    ("message.opened", {"message_id": "m-1", "channel": "email"}),
    ("purchase.completed", {"order_id": "o-1", "amount": "1", "currency": "USD"}),
])
def test_the_default_activity_types_re_arm(event_type: str, data: dict[str, Any]) -> None:
    ctx = context(winback(30))
    state = event(signup(ctx), ctx, event_type, T0 + 10 * DAY, data, ident="x").state
    assert state is not None
    assert T0 + 40 * DAY == timer(state, ctx)


def test_the_account_policy_says_what_counts_as_activity() -> None:
    """With only purchases listed, a click does not re-arm and a purchase does."""
    ctx = context(winback(30),
                  policy=account_policy(inactivity={"activity_types": ["purchase.completed"]}))
    clicked = event(signup(ctx), ctx, "message.clicked", T0 + 5 * DAY,
                    {"message_id": "m", "channel": "sms"}, ident="click").state
    assert clicked is not None
    bought = event(clicked, ctx, "purchase.completed", T0 + 6 * DAY,
                   {"order_id": "o", "amount": "1", "currency": "USD"}, ident="buy").state
    assert bought is not None
    assert (T0 + 30 * DAY, T0 + 36 * DAY) == (timer(clicked, ctx), timer(bought, ctx))


def test_an_activity_time_never_moves_the_period_back_nor_past_now() -> None:
    """A late-arriving older click changes nothing; a click stamped in the future counts
    as now (a publisher's clock ahead must not postpone inactivity)."""
    ctx = context(winback(30))
    recent = event(signup(ctx), ctx, "message.clicked", T0 + 10 * DAY,
                   {"message_id": "m", "channel": "sms"}, ident="c1").state
    assert recent is not None
    older = event(recent, ctx, "message.clicked", T0 + 2 * DAY,
                  {"message_id": "m", "channel": "sms"}, ident="c2", now=T0 + 11 * DAY).state
    future = event(recent, ctx, "message.clicked", T0 + 90 * DAY,
                   {"message_id": "m", "channel": "sms"}, ident="c3", now=T0 + 12 * DAY).state
    assert older is not None and future is not None
    assert (T0 + 40 * DAY, T0 + 42 * DAY) == (timer(older, ctx), timer(future, ctx))


CREATED = T0.isoformat()
LATER = (T0 + 10 * DAY).isoformat()
BUY = "purchase.completed"


@pytest.mark.parametrize(("record", "event_type", "at", "now", "expected"), [
    # never active: an activity after the creation starts the first period at it
    ({"since": CREATED, "fired": [], "active": False}, BUY, T0 + 10 * DAY, T0 + 10 * DAY,
     {"since": LATER, "fired": [], "active": True}),
    # never active: a first purchase back-dated to before the creation (a backfill) does
    # not move the period back -- it would fire a day early -- it only marks the contact
    # active
    ({"since": CREATED, "fired": [], "active": False}, BUY, T0 - DAY, T0 + HOUR,
     {"since": CREATED, "fired": [], "active": True}),
    # never active: the event that creates the contact, stamped a moment before the
    # engine processed it (the creation is the processing time)
    ({"since": CREATED, "fired": [], "active": False}, BUY, T0 - SECOND, T0,
     {"since": CREATED, "fired": [], "active": True}),
    # never active: an activity at the very instant of the creation
    ({"since": CREATED, "fired": [], "active": False}, BUY, T0, T0,
     {"since": CREATED, "fired": [], "active": True}),
    # never active, a threshold already reported: a back-dated activity keeps it reported
    ({"since": CREATED, "fired": [30], "active": False}, BUY, T0 - DAY, T0 + 31 * DAY,
     {"since": CREATED, "fired": [30], "active": True}),
    # active: an older activity arriving late changes nothing
    ({"since": LATER, "fired": [7], "active": True}, BUY, T0 + 2 * DAY, T0 + 11 * DAY,
     {"since": LATER, "fired": [7], "active": True}),
    # active: the same instant again (a second event of one purchase) changes nothing
    ({"since": LATER, "fired": [7], "active": True}, BUY, T0 + 10 * DAY, T0 + 11 * DAY,
     {"since": LATER, "fired": [7], "active": True}),
    # active: a newer activity starts a new period, nothing reported in it yet
    ({"since": CREATED, "fired": [7], "active": True}, BUY, T0 + 10 * DAY, T0 + 11 * DAY,
     {"since": LATER, "fired": [], "active": True}),
    # stamped in the future (a publisher's clock ahead): counts as now
    ({"since": CREATED, "fired": [], "active": True}, BUY, T0 + 90 * DAY, T0 + 10 * DAY,
     {"since": LATER, "fired": [], "active": True}),
    # not an activity: nothing
    ({"since": CREATED, "fired": [], "active": False}, "message.sent", T0 + 10 * DAY,
     T0 + 10 * DAY, {"since": CREATED, "fired": [], "active": False}),
])
def test_track(record: dict[str, Any], event_type: str, at: datetime, now: datetime,
               expected: dict[str, Any]) -> None:
    changed: Any = dict(record, fired=list(record["fired"]))
    inactivity.track(changed, event_type, at, now, inactivity.DEFAULT_ACTIVITY_TYPES)
    assert expected == changed


def test_a_back_dated_first_purchase_does_not_fire_early() -> None:
    """A purchase from the day before the contact's creation, imported after it: the
    contact still fires 30 days after its creation, not 29, and says it was active."""
    ctx = context(winback(30))
    bought = event(signup(ctx), ctx, "purchase.completed", T0 - DAY,
                   {"order_id": "o-0", "amount": "5", "currency": "EUR"}, ident="o-0",
                   now=T0 + HOUR).state
    assert bought is not None
    assert (T0 + 30 * DAY, None) == (timer(bought, ctx),
                                     wake(bought, ctx, T0 + 30 * DAY - SECOND).state)
    [sent] = inactive_events(wake(bought, ctx, T0 + 30 * DAY))
    assert {"threshold_days": 30, "last_activity_at": T0.isoformat(),
            "inactive_since": T0.isoformat()} == sent["data"]


def test_several_thresholds_fire_in_turn_and_together_after_an_outage() -> None:
    """7 then 30 days; a worker down past both emits both at once, each once."""
    ctx = context(winback(7), winback(30))
    state = signup(ctx)
    week = wake(state, ctx, T0 + 7 * DAY)
    assert week.state is not None
    assert ([7], T0 + 30 * DAY) == ([e["data"]["threshold_days"] for e in
                                     inactive_events(week)], timer(week.state, ctx))
    late = wake(state, ctx, T0 + 45 * DAY)
    assert [7, 30] == [e["data"]["threshold_days"] for e in inactive_events(late)]


def test_a_new_threshold_applies_to_contacts_already_past_it() -> None:
    """Defining a 7-day workflow when the contact has been silent for 10 days arms it for
    now: its timer is derived from the current thresholds, not stored."""
    before = context(winback(30))
    state = signup(before)
    after = context(winback(30), winback(7))
    assert (T0 + 30 * DAY, T0 + 7 * DAY) == (timer(state, before), timer(state, after))
    [sent] = inactive_events(wake(state, after, T0 + 10 * DAY))
    assert 7 == sent["data"]["threshold_days"]


def test_no_thresholds_no_timer() -> None:
    ctx = context()
    state = signup(ctx)
    assert (None, None) == (timer(state, ctx), wake(state, ctx, T0 + 999 * DAY).state)


def test_a_replayed_wake_up_emits_the_same_event_id() -> None:
    """The same period and threshold always give the same id (the dedupe drops the repeat)."""
    ctx = context(winback(30))
    state = signup(ctx)
    first = inactive_events(wake(state, ctx, T0 + 30 * DAY))
    again = inactive_events(wake(state, ctx, T0 + 30 * DAY + HOUR))
    assert [e["id"] for e in first] == [e["id"] for e in again]


# -- reacting to it ---------------------------------------------------------------------------


def test_the_workflow_with_that_threshold_starts_and_no_other() -> None:
    """The 30-day event starts winback-30 (its SMS goes out), not winback-7."""
    ctx = context(winback(7), winback(30))
    state = signup(ctx)
    emitted = inactive_events(wake(state, ctx, T0 + 30 * DAY))
    thirty = next(e for e in emitted if e["data"]["threshold_days"] == 30)
    reacted = event(state, ctx, "contact.inactive", T0 + 30 * DAY, thirty["data"],
                    ident=thirty["id"], source=inactivity.SOURCE)
    assert reacted.state is not None
    started = [ex["workflow_id"] for ex in reacted.state["executions"].values()]
    assert (["winback-30"], ["We miss you (30 days)"]) == (
        started, [s.body for s in reacted.effects.sends])


def test_a_stale_inactivity_event_starts_nothing() -> None:
    """Emitted for a period that a click has ended since (it was processed after the
    click): no workflow starts. One published upstream (another source) still does."""
    ctx = context(winback(30))
    state = signup(ctx)
    [sent] = inactive_events(wake(state, ctx, T0 + 30 * DAY))
    clicked = event(state, ctx, "message.clicked", T0 + 30 * DAY,
                    {"message_id": "m", "channel": "sms"}, ident="click").state
    assert clicked is not None
    stale = event(clicked, ctx, "contact.inactive", T0 + 30 * DAY, sent["data"],
                  ident=sent["id"], source=inactivity.SOURCE, now=T0 + 30 * DAY + SECOND)
    upstream = event(clicked, ctx, "contact.inactive", T0 + 30 * DAY,
                     {"threshold_days": 30}, ident="crm-1", now=T0 + 30 * DAY + SECOND)
    assert stale.state is not None and upstream.state is not None
    assert ([], ["winback-30"]) == (
        [ex["workflow_id"] for ex in stale.state["executions"].values()],
        [ex["workflow_id"] for ex in upstream.state["executions"].values()])


# -- definitions ------------------------------------------------------------------------------


def test_inactive_days_only_on_contact_inactive_triggers() -> None:
    raw = {"id": "w", "account": ACCOUNT, "name": "w", "version": 1,
           "trigger": {"event": "contact.created", "inactive_days": 30}, "start": "s",
           "steps": {"s": {"kind": "send_sms", "body": "hi"}}}
    with pytest.raises(DefinitionError) as caught:
        parse_definition(raw)
    assert ["trigger.inactive_days: only for trigger event contact.inactive"] == \
        caught.value.errors


def test_activity_types_must_be_event_types() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_any({"kind": "account", "account": ACCOUNT,
                   "inactivity": {"activity_types": ["purchase.done"]}})
    assert ["inactivity.activity_types: unknown event type 'purchase.done'"] == \
        caught.value.errors


# -- the value the timer index reads ------------------------------------------------------------


def test_the_timer_fields_are_read_without_decoding_the_rest() -> None:
    """``next_due`` and the period come first in the stored value."""
    ctx = context(winback(30))
    state = wake(signup(ctx), ctx, T0 + 31 * DAY).state
    assert state is not None
    assert (None, (T0.isoformat(), [30])) == peek_timers(encode(state))
    assert list(orjson.loads(orjson.dumps(state)))[:2] == ["next_due", "inactivity"]


def test_a_state_from_before_inactivity_gets_its_record_second() -> None:
    """A value written by an older version: its copy gains the period (from its last
    activity, or creation), in the place peeks read it."""
    ctx = context(winback(30))
    old: Any = {k: v for k, v in signup(ctx).items() if k != "inactivity"}
    new = copy_state(old)
    assert (["next_due", "inactivity"], {"since": T0.isoformat(), "fired": [],
                                         "active": True}) == (list(new)[:2],
                                                              new["inactivity"])


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 90 * 24)), max_size=25))
def test_never_early_and_once_per_period(steps: list[tuple[bool, int]]) -> None:
    """Whatever mix of clicks and wake-ups at whatever hours: every contact.inactive comes
    at least N days after the last activity (or creation) before it, and each (period,
    threshold) is emitted at most once."""
    ctx = context(winback(3), winback(10))
    state = signup(ctx)
    last, now, emitted = T0, T0, set()
    for n, (click, hours) in enumerate(sorted(steps, key=lambda s: s[1])):
        now = T0 + timedelta(hours=hours)
        if click:
            nxt = event(state, ctx, "message.clicked", now,
                        {"message_id": "m", "channel": "sms"}, ident=f"c{n}").state
            assert nxt is not None
            state, last = nxt, now
            continue
        outcome = wake(state, ctx, now)
        for e in inactive_events(outcome):
            days = e["data"]["threshold_days"]
            assert now >= last + days * DAY
            key = (e["data"]["inactive_since"], days)
            assert key not in emitted
            emitted.add(key)
        state = outcome.state or state
