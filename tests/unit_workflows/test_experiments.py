"""Experiments without a broker (tables/experiments.py, through the contact handlers): the
split's assignment, the control group, conversion windows and their outcome records,
and the lift report's statistics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from streams.definitions import DefinitionError, parse_any
from tables.contacts import ContactState
from tables.effects import Outcome
from tables.experiments import MAX_WINDOWS, choose, in_control, report
from tables.handlers import Context, Wakeup, handle_event, handle_wakeup
from tests.unit_workflows.support import ACCOUNT, DAY, HOUR, T0, Registry, definition, parsed_event

BRANCHES = [{"name": "a", "weight": 50, "next": "sa"}, {"name": "b", "weight": 30, "next": "sb"},
            {"name": "c", "weight": 20, "next": "sc"}]


def split_flow(control: float = 0, window: str = "7d") -> dict[str, Any]:
    return definition({
        "id": "promo", "account": ACCOUNT, "name": "Promo", "version": 1,
        "trigger": {"event": "contact.created"}, "start": "pick",
        "experiment": {"control": control, "conversion": {
            "event": "purchase.completed",
            "criteria": [{"field": "event.data.amount", "op": "gt", "value": 0}],
            "window": window, "revenue": "event.data.amount"}},
        "steps": {"pick": {"kind": "split", "branches": BRANCHES},
                  "sa": {"kind": "send_sms", "body": "A"},
                  "sb": {"kind": "send_sms", "body": "B"},
                  "sc": {"kind": "send_sms", "body": "C"}}})


def ctx(*flows: dict[str, Any]) -> Context:
    return Context(Registry(*flows), lambda account, address: None)


def signup(contact: str, n: int = 0) -> Any:
    return parsed_event("contact.created", {"phone": f"+1415555{n:04d}",
                                            "consent": {"sms": True}},
                        event_id=f"signup-{contact}", at=T0, contact_id=contact)


def test_the_branch_shares_are_the_weights_within_binomial_bounds() -> None:
    """100,000 contacts: each branch's share is within 4.5 standard deviations of its
    weight (a false alarm about once in 150,000 runs); the same contact, the same branch."""
    n = 100_000
    counts = {"a": 0, "b": 0, "c": 0}
    for i in range(n):
        counts[choose(ACCOUNT, f"c-{i}", "promo", "pick", BRANCHES)["name"]] += 1
    for branch in BRANCHES:
        p = branch["weight"] / 100
        assert abs(counts[branch["name"]] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), counts
    again = [choose(ACCOUNT, f"c-{i}", "promo", "pick", BRANCHES)["name"] for i in range(100)]
    assert again == [choose(ACCOUNT, f"c-{i}", "promo", "pick", BRANCHES)["name"]
                     for i in range(100)]
    # Another step or workflow draws independently of this one.
    same = sum(choose(ACCOUNT, f"c-{i}", "promo", "pick", BRANCHES)["name"]
               == choose(ACCOUNT, f"c-{i}", "other", "pick", BRANCHES)["name"]
               for i in range(10_000))
    assert abs(same - 10_000 * (0.25 + 0.09 + 0.04)) < 4.5 * math.sqrt(10_000 * 0.38 * 0.62)
    controls = sum(in_control(ACCOUNT, f"c-{i}", "promo", 10) for i in range(n))
    assert abs(controls - n * 0.1) < 4.5 * math.sqrt(n * 0.1 * 0.9)


def test_a_split_sends_its_branch_and_says_which_on_the_command() -> None:
    out = handle_event(None, signup("ann"), ctx(split_flow()), T0)
    arm = choose(ACCOUNT, "ann", "promo", "pick", BRANCHES)["name"]
    [send] = out.effects.sends
    assert (send.body, send.variant) == (arm.upper(), arm)
    assert out.state is not None
    ex = next(iter(out.state["executions"].values()))
    assert ex["variant"] == arm
    assert {"step": "pick", "outcome": "split", "variant": arm}.items() <= \
        ex["history"][0].items()


def test_a_control_member_runs_is_counted_and_is_sent_nothing() -> None:
    """A contact the hash puts in a 50 % control group: the split's send is audited as
    control_group, never sent, and its window counts it as the control arm."""
    contact = next(c for c in (f"c-{i}" for i in range(100))
                   if in_control(ACCOUNT, c, "promo", 50))
    out = handle_event(None, signup(contact), ctx(split_flow(control=50)), T0)
    assert out.effects.sends == []
    [audit] = out.effects.audit
    assert (audit["reason"], audit["action"]) == ("control_group", "drop")
    assert out.state is not None
    [window] = out.state["attribution"].values()
    assert (window["variant"], window["sends"]) == ("control", 0)


def outcome_after(state: ContactState, flows: Context, at: Any) -> Outcome:
    return handle_wakeup(state, Wakeup(ACCOUNT, state["contact_id"]), flows, at)


def test_a_conversion_in_the_window_is_counted_once_when_it_closes() -> None:
    flows = ctx(split_flow(window="7d"))
    state = handle_event(None, signup("ann"), flows, T0).state
    assert state is not None and state["next_due"] == (T0 + 7 * DAY).isoformat()
    buy = parsed_event("purchase.completed", {"order_id": "o-1", "amount": "19.90",
                                              "currency": "USD"},
                       event_id="buy-1", at=T0 + DAY, contact_id="ann")
    state = handle_event(state, buy, flows, T0 + DAY).state
    again = parsed_event("purchase.completed", {"order_id": "o-2", "amount": 5,
                                                "currency": "USD"},
                         event_id="buy-2", at=T0 + 2 * DAY, contact_id="ann")
    state = handle_event(state, again, flows, T0 + 2 * DAY).state
    assert state is not None
    assert outcome_after(state, flows, T0 + 7 * DAY - HOUR).state is None  # not yet
    closed = outcome_after(state, flows, T0 + 7 * DAY)
    [record] = closed.effects.outcomes
    arm = choose(ACCOUNT, "ann", "promo", "pick", BRANCHES)["name"]
    assert record == {"id": "promo/signup-ann", "account": ACCOUNT, "contact_id": "ann",
                      "workflow_id": "promo", "version": 1, "variant": arm,
                      "entered_at": T0.isoformat(), "closed_at": (T0 + 7 * DAY).isoformat(),
                      "sends": 1, "converted": True,
                      "converted_at": (T0 + DAY).isoformat(), "revenue": 19.9}
    assert closed.state is not None and closed.state["attribution"] == {}
    assert closed.state["next_due"] is None
    # Nothing left to close: a repeated wake-up changes nothing.
    assert outcome_after(closed.state, flows, T0 + 8 * DAY).state is None


def test_a_purchase_after_the_window_does_not_convert() -> None:
    flows = ctx(split_flow(window="1d"))
    state = handle_event(None, signup("ann"), flows, T0).state
    assert state is not None
    late = parsed_event("purchase.completed", {"order_id": "o-1", "amount": 10,
                                               "currency": "USD"},
                        event_id="buy-1", at=T0 + 2 * DAY, contact_id="ann")
    # the window closed at T0 + 1d but its wake-up came late: the purchase is after it
    state = handle_event(state, late, flows, T0 + 2 * DAY).state
    assert state is not None
    [record] = outcome_after(state, flows, T0 + 2 * DAY).effects.outcomes
    assert (record["converted"], record["revenue"], record["closed_at"]) == (
        False, None, (T0 + DAY).isoformat())


def test_windows_per_contact_are_bounded() -> None:
    """An every_time workflow entered more often than the bound: the oldest window closes
    at once, its outcome as it stands."""
    flow = {**split_flow(), "reentry": {"policy": "every_time"}}
    flows, state = ctx(flow), None
    closed = []
    for n in range(MAX_WINDOWS + 2):
        event = parsed_event("contact.created", {"phone": "+14155550000",
                                                 "consent": {"sms": True}},
                             event_id=f"e-{n}", at=T0 + n * HOUR, contact_id="ann")
        out = handle_event(state, event, flows, T0 + n * HOUR)
        state = out.state
        closed += out.effects.outcomes
    assert state is not None and len(state["attribution"]) == MAX_WINDOWS
    assert [o["id"] for o in closed] == ["promo/e-0", "promo/e-1"]


def test_the_definition_checks_its_split() -> None:
    def broken(branches: list[dict[str, Any]]) -> str:
        raw = {**split_flow(), "steps": {**split_flow()["steps"],
                                        "pick": {"kind": "split", "branches": branches}}}
        with pytest.raises(DefinitionError) as info:
            parse_any(raw)
        return str(info.value)

    assert "unknown step 'gone'" in broken([BRANCHES[0], {**BRANCHES[1], "next": "gone"}])
    assert "unique" in broken([BRANCHES[0], {**BRANCHES[1], "name": "a"}])
    assert "control" in broken([BRANCHES[0], {**BRANCHES[1], "name": "control"}])
    assert "at least 2" in broken([BRANCHES[0]])


def outcomes(arm: str, entered: int, converted: int, revenue: float = 0) -> list[dict[str, Any]]:
    return [{"id": f"{arm}-{i}", "contact_id": f"c-{i}", "workflow_id": "promo",
             "variant": arm, "sends": 1,
             "converted": i < converted, "revenue": revenue if i < converted else None}
            for i in range(entered)]


def test_the_report_gives_rates_lift_and_significance_against_control() -> None:
    """1,000 a control with 100 conversions, 1,000 in a with 150: a's lift is +50 %, its
    interval above 0, significant; b with 105 is not yet. Each outcome id counts once."""
    records = (outcomes("control", 1000, 100) + outcomes("a", 1000, 150, 20.0)
               + outcomes("b", 1000, 105) + outcomes("a", 10, 10))  # repeats of a's ids
    found = report(records, "promo")
    assert found["baseline"] == "control" and found["entries"] == 3000
    arms = {row["variant"]: row for row in found["arms"]}
    assert [row["variant"] for row in found["arms"]] == ["control", "a", "b"]
    a = arms["a"]
    assert (a["entered"], a["converted"], a["rate"]) == (1000, 150, 0.15)
    assert a["rate_interval"][0] < 0.15 < a["rate_interval"][1]
    assert a["lift"] == pytest.approx(0.5)
    assert 0 < a["lift_interval"][0] < 0.5 < a["lift_interval"][1]
    assert a["p_value"] < 0.01 and a["verdict"] == "significant"
    assert (a["revenue"], a["revenue_per_contact"]) == (3000.0, 3.0)
    assert arms["b"]["verdict"] == "not yet significant" and arms["b"]["p_value"] > 0.05
    assert arms["b"]["lift_interval"][0] < 0 < arms["b"]["lift_interval"][1]
    assert "lift" not in arms["control"]


def test_the_docs_example_is_a_valid_experiment() -> None:
    text = (Path(__file__).parents[2] / "docs" / "experiments.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.DOTALL)
    assert block is not None
    parsed = parse_any(json.loads(block.group(1))).model_dump(mode="json")
    assert parsed["experiment"]["control"] == 10
    assert [b["name"] for b in parsed["steps"]["pick"]["branches"]] == ["a", "b"]


def after_send_flow() -> dict[str, Any]:
    """Two days' wait, then an offer; conversions count for a day after it (``after:
    send``); a purchase before it is a goal that ends the entry."""
    return definition({
        "id": "later", "account": ACCOUNT, "name": "Later", "version": 1,
        "trigger": {"event": "contact.created"}, "start": "pause",
        "goals": [{"event": "custom.left"}],
        "experiment": {"conversion": {"event": "purchase.completed", "window": "1d",
                                      "after": "send", "revenue": "event.data.amount"}},
        "steps": {"pause": {"kind": "wait", "duration": "2d", "next": "offer"},
                  "offer": {"kind": "send_sms", "body": "Offer"}}})


def purchase(contact: str, at: Any, n: int) -> Any:
    return parsed_event("purchase.completed", {"order_id": f"o-{n}", "amount": n,
                                               "currency": "USD"},
                        event_id=f"buy-{n}", at=at, contact_id=contact)


def test_a_window_after_the_send_opens_when_the_send_goes() -> None:
    """A purchase while the entry waits does not count; the window opens with the offer
    (two days in) and closes a day later, on the contact's timer."""
    flows = ctx(after_send_flow())
    state = handle_event(None, signup("ann"), flows, T0).state
    assert state is not None and state["next_due"] == (T0 + 2 * DAY).isoformat()
    state = handle_event(state, purchase("ann", T0 + DAY, 1), flows, T0 + DAY).state
    assert state is not None
    state = outcome_after(state, flows, T0 + 2 * DAY).state  # the offer goes
    assert state is not None and state["next_due"] == (T0 + 3 * DAY).isoformat()
    state = handle_event(state, purchase("ann", T0 + 2 * DAY + HOUR, 7), flows,
                         T0 + 2 * DAY + HOUR).state
    assert state is not None
    [record] = outcome_after(state, flows, T0 + 3 * DAY).effects.outcomes
    assert (record["opened_at"], record["closed_at"], record["sends"], record["converted"],
            record["revenue"]) == ((T0 + 2 * DAY).isoformat(), (T0 + 3 * DAY).isoformat(),
                                   1, True, 7.0)


def test_an_entry_that_ends_before_any_send_is_counted_unconverted() -> None:
    flows = ctx(after_send_flow())
    state = handle_event(None, signup("bob"), flows, T0).state
    left = parsed_event("custom.left", {}, event_id="left", at=T0 + HOUR, contact_id="bob")
    state = handle_event(state, left, flows, T0 + HOUR).state  # the goal ends it
    assert state is not None and state["next_due"] == (T0 + HOUR).isoformat()
    state = handle_event(state, purchase("bob", T0 + 2 * HOUR, 3), flows, T0 + 2 * HOUR).state
    assert state is not None
    [record] = outcome_after(state, flows, T0 + 2 * HOUR).effects.outcomes
    assert (record["opened_at"], record["closed_at"], record["sends"], record["converted"]) == (
        None, (T0 + HOUR).isoformat(), 0, False)


def test_after_send_windows_open_at_the_same_moment_in_every_arm() -> None:
    """At 22:00 (quiet hours) a treated entry's offer is deferred to 08:00 and a control
    entry's is held back: both windows open at 22:00, when each reached its send step."""
    wf = definition({**split_flow(control=50), "experiment": {"control": 50, "conversion": {
        "event": "purchase.completed", "window": "1d", "after": "send"}}})
    flows = ctx(wf)
    night = T0.replace(hour=22) if T0.hour < 22 else T0
    opened = {}
    for n in range(40):
        contact = f"c-{n}"
        state = handle_event(None, parsed_event(
            "contact.created", {"phone": f"+1415555{n:04d}", "consent": {"sms": True}},
            event_id=f"signup-{contact}", at=night, contact_id=contact), flows, night).state
        assert state is not None
        [window] = state["attribution"].values()
        opened[in_control(ACCOUNT, contact, "promo", 50)] = window["opened_at"]
    assert opened == {True: night.isoformat(), False: night.isoformat()}
