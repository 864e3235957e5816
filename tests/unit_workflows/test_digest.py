"""The digest step and debounced or throttled triggers, without a broker: bursts of events
become one message (docs/workflows.md#digest, #debounce-and-throttle)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from streams.definitions import DefinitionError, parse_any
from tables.contacts import ContactState
from tables.effects import Outcome
from tables.handlers import Context, Wakeup, handle_event, handle_wakeup
from tests.unit_workflows.support import ACCOUNT, HOUR, T0, Registry, definition, parsed_event

MINUTE = timedelta(minutes=1)


def flow(**digest: Any) -> dict[str, Any]:
    step = {"kind": "digest", "event": "message.clicked", "window": "1h",
            "item": "event.data.url", "next": "recap", **digest}
    return definition({
        "id": "recap", "account": ACCOUNT, "name": "Recap", "version": 1,
        "trigger": {"event": "message.clicked"}, "start": "collect",
        "steps": {"collect": step,
                  "recap": {"kind": "send_email", "subject": "Your {{digest.count}} picks",
                            "body": "You looked at: {{digest.items}}"}}})


def ctx(*flows: dict[str, Any]) -> Context:
    return Context(Registry(*flows), lambda account, address: None)


def event(kind: str, data: dict[str, Any], ident: str, at: datetime) -> Any:
    return parsed_event(kind, data, event_id=ident, at=at, contact_id="ann")


def click(n: int, at: datetime) -> Any:
    return event("message.clicked", {"message_id": f"m-{n}", "channel": "email",
                                     "url": f"https://shop.example/p/{n}"}, f"click-{n}", at)


def signed_up(flows: Context) -> ContactState:
    state = handle_event(None, event("contact.created", {
        "email": "ann@example.com", "consent": {"email": True}}, "signup", T0), flows, T0).state
    assert state is not None
    return state


def feed(state: ContactState, flows: Context, events: list[tuple[Any, datetime]]
         ) -> tuple[ContactState, list[Any]]:
    sends = []
    for ev, at in events:
        out = handle_event(state, ev, flows, at)
        state = out.state or state
        sends += out.effects.sends
    return state, sends


def wake(state: ContactState, flows: Context, at: datetime) -> Outcome:
    return handle_wakeup(state, Wakeup(ACCOUNT, "ann"), flows, at)


def test_ten_clicks_in_an_hour_give_one_digest() -> None:
    """The first click starts the execution and is the first item; nine more within the
    hour are collected (a repeated one once); when the hour is up, one email lists all
    ten — none earlier."""
    flows = ctx(flow())
    clicks = [(click(n, T0 + n * 5 * MINUTE), T0 + n * 5 * MINUTE) for n in range(10)]
    state, sends = feed(signed_up(flows), flows, [*clicks, clicks[3]])
    assert sends == []
    [ex] = state["executions"].values()
    assert (ex["status"], ex["digest"]["count"], state["next_due"]) == (
        "waiting", 10, (T0 + HOUR).isoformat())
    assert wake(state, flows, T0 + HOUR - MINUTE).state is None  # not early
    out = wake(state, flows, T0 + HOUR)
    [send] = out.effects.sends
    assert send.subject == "Your 10 picks"
    assert send.body == "You looked at: " + ", ".join(
        f"https://shop.example/p/{n}" for n in range(10))
    assert out.state is not None
    assert wake(out.state, flows, T0 + 2 * HOUR).effects.sends == []  # once


def test_a_full_digest_goes_at_once() -> None:
    flows = ctx(flow(max=3))
    state, sends = feed(signed_up(flows), flows,
                        [(click(n, T0 + n * MINUTE), T0 + n * MINUTE) for n in range(4)])
    [send] = sends  # the third click filled it
    assert send.subject == "Your 3 picks"
    # the fourth started a new digest (the first one had ended), its first item
    assert sorted((ex["status"], ex["digest"]["count"]) for ex in state["executions"].values()
                  ) == [("completed", 3), ("waiting", 1)]


def test_an_empty_digest_sends_nothing() -> None:
    """Reached after a signup (not a click): nothing comes within the hour, the execution
    ends ``digest_empty``."""
    wf = definition({**flow(), "trigger": {"event": "contact.created"}})
    flows = ctx(wf)
    state = signed_up(flows)
    [ex] = state["executions"].values()
    assert ex["digest"]["count"] == 0  # a signup is not a click
    out = wake(state, flows, T0 + HOUR)
    assert out.effects.sends == [] and out.state is not None
    [ex] = out.state["executions"].values()
    assert (ex["status"], ex["ended_reason"]) == ("completed", "digest_empty")


def cart(n: int, at: datetime, total: int) -> Any:
    return event("custom.cart_updated", {"total": total}, f"cart-{n}", at)


def test_a_debounced_trigger_starts_once_after_quiet_with_the_latest_event() -> None:
    wf = definition({
        "id": "nudge", "account": ACCOUNT, "name": "Nudge", "version": 1,
        "trigger": {"event": "custom.cart_updated", "debounce": "30m"},
        "reentry": {"policy": "every_time"}, "start": "hi",
        "steps": {"hi": {"kind": "send_email", "subject": "Your cart",
                         "body": "Still {{event.data.total}} EUR in your cart"}}})
    flows = ctx(wf)
    burst = [(cart(n, T0 + n * 10 * MINUTE, 10 * (n + 1)), T0 + n * 10 * MINUTE)
             for n in range(3)]
    state, sends = feed(signed_up(flows), flows, burst)
    assert sends == [] and not state["executions"]
    assert state["next_due"] == (T0 + 50 * MINUTE).isoformat()  # 30 min after the last
    assert wake(state, flows, T0 + 49 * MINUTE).state is None
    out = wake(state, flows, T0 + 50 * MINUTE)
    [send] = out.effects.sends
    assert send.body == "Still 30 EUR in your cart"
    assert out.state is not None and "debounced" not in out.state
    assert out.state["next_due"] is None


def test_a_throttled_trigger_starts_at_most_once_per_period() -> None:
    wf = definition({
        "id": "thanks", "account": ACCOUNT, "name": "Thanks", "version": 1,
        "trigger": {"event": "purchase.completed", "throttle": "1d"},
        "reentry": {"policy": "every_time"}, "start": "hi",
        "steps": {"hi": {"kind": "send_email", "subject": "Thanks", "body": "Thanks!"}}})
    flows = ctx(wf)
    buys = [(event("purchase.completed", {"order_id": f"o-{h}", "amount": 5,
                                          "currency": "EUR"}, f"buy-{h}", T0 + h * HOUR),
             T0 + h * HOUR) for h in (0, 1, 23, 24, 25)]
    _, sends = feed(signed_up(flows), flows, buys)
    assert len(sends) == 2  # at 0 h and at 24 h


@pytest.mark.parametrize(("change", "message"), [
    ({"trigger": {"event": "message.clicked", "debounce": "1h", "throttle": "1h"}},
     "give debounce or throttle, not both"),
    ({"steps": {"collect": {"kind": "digest", "event": "message.clicked", "window": "1h",
                            "max": 0, "next": "recap"},
                "recap": {"kind": "send_sms", "body": "x"}}}, "steps.collect.max"),
    ({"steps": {"collect": {"kind": "digest", "event": "message.clicked", "window": "1h",
                            "item": "contact.name", "next": "recap"},
                "recap": {"kind": "send_sms", "body": "x"}}}, "steps.collect.item"),
])
def test_bad_digests_and_triggers_are_named(change: dict[str, Any], message: str) -> None:
    raw = {**flow(), **change}
    with pytest.raises(DefinitionError) as info:
        parse_any(raw)
    assert message in str(info.value)


def test_a_late_wakeup_releases_the_digest_before_a_new_event() -> None:
    """The hour ended at T0+1h but the wake-up has not run when a click comes at
    T0+1h+1m: the digest goes with what it had, and the click starts the next one."""
    flows = ctx(flow())
    state, sends = feed(signed_up(flows), flows, [(click(0, T0), T0)])
    assert sends == []
    state, sends = feed(state, flows, [(click(1, T0 + HOUR + MINUTE), T0 + HOUR + MINUTE)])
    [send] = sends
    assert send.subject == "Your 1 picks"
    assert sorted((ex["status"], ex["digest"]["count"]) for ex in state["executions"].values()
                  ) == [("completed", 1), ("waiting", 1)]


def test_a_goal_drops_a_debounced_start() -> None:
    wf = definition({
        "id": "nudge", "account": ACCOUNT, "name": "Nudge", "version": 1,
        "trigger": {"event": "custom.cart_updated", "debounce": "30m"},
        "goals": [{"event": "purchase.completed"}], "start": "hi",
        "steps": {"hi": {"kind": "send_email", "subject": "Your cart", "body": "Come back"}}})
    flows = ctx(wf)
    buy = event("purchase.completed", {"order_id": "o-1", "amount": 5, "currency": "EUR"},
                "buy", T0 + 10 * MINUTE)
    state, _ = feed(signed_up(flows), flows, [(cart(0, T0, 10), T0), (buy, T0 + 10 * MINUTE)])
    assert "debounced" not in state and state["next_due"] is None
    assert wake(state, flows, T0 + HOUR).state is None  # nothing left to start
