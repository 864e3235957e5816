"""Workflow executions (tables/executions.py), driven by ``now`` values instead of a clock.

Contact states are built with the real contact logic (tables/contacts.py) and definitions
reach the engine as validated JSON dicts, as in the contact agent.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.commands import SendCommand
from streams.events import parse_event
from tables.contacts import apply_event
from tables.effects import Effects, message_id
from tables.executions import cancel_all, control, next_due, on_event, on_wakeup, render
from tests.unit_workflows.support import (
    ACCOUNT,
    CONTACT,
    DAY,
    DEDUPE_WINDOW_S,
    HOUR,
    MAX_DEPTH,
    SECOND,
    T0,
    Registry,
    apply,
    created,
    definition,
    docs_example,
    welcome_raw,
)

EX = "welcome/e-created"
DUE = T0 + 2 * DAY


def origin(step_id: str, *, ex: str = EX, wf: str = "welcome", version: int = 1,
           depth: int = 0) -> dict[str, Any]:
    return {"kind": "workflow", "workflow_id": wf, "version": version, "execution_id": ex,
            "step_id": step_id, "depth": depth}


def start(
    raw: dict[str, Any] | None = None, *, at: datetime = T0, **fields: Any
) -> tuple[dict[str, Any], Registry, Effects]:
    """Ada is created at ``at``; the creation starts the workflow (the welcome flow)."""
    registry = Registry(definition(raw or welcome_raw()))
    state, event = created(at=at, **fields)
    fx = on_event(state, event, registry.active(ACCOUNT), registry.lookup, at, MAX_DEPTH)
    return state, registry, fx


def feed(
    state: dict[str, Any], registry: Registry, event_type: str, data: dict[str, Any] | None,
    *, event_id: str, at: datetime, depth: int = 0,
) -> tuple[dict[str, Any], Effects]:
    """An event as the contact agent handles it: applied to the profile, then to executions."""
    state, event = apply(state, event_type, data, event_id=event_id, at=at, depth=depth)
    fx = on_event(state, event, registry.active(ACCOUNT), registry.lookup, at, MAX_DEPTH)
    return state, fx


def purchase(amount: str = "25.00") -> dict[str, Any]:
    return {"order_id": "o-1", "amount": amount, "currency": "EUR"}


def email(step_id: str, subject: str, body: str, seq: int, at: datetime) -> SendCommand:
    """The email the welcome flow sends at ``step_id`` to Ada."""
    return SendCommand.model_validate({
        "message_id": message_id(ACCOUNT, EX, step_id, seq),
        "channel": "email",
        "account": ACCOUNT,
        "contact_id": CONTACT,
        "to": "ada@example.com",
        "body": body,
        "transactional": False,
        "origin": origin(step_id),
        "created_at": at.isoformat(),
        "expires_at": (at + DAY).isoformat(),
        "subject": subject,
    })


def cancelled_all(state: dict[str, Any]) -> int:
    """How many of the contact's executions a ``cancel_all`` ended."""
    return sum(1 for e in state["executions"].values()
               if (e["status"], e["ended_reason"]) == ("cancelled", "cancelled_all"))


# --- the welcome flow, step by step -------------------------------------------------------


def test_first_sms_command() -> None:
    """The trigger sends the SMS at once, rendered, with a deterministic id, and waits."""
    state, _, fx = start()
    expected = Effects(sends=[SendCommand.model_validate({
        "message_id": message_id(ACCOUNT, EX, "hello", 1),
        "channel": "sms",
        "account": ACCOUNT,
        "contact_id": CONTACT,
        "to": "+14155550101",
        "body": "Hi Ada, welcome friend!",
        "transactional": False,
        "origin": origin("hello"),
        "created_at": T0.isoformat(),
        "expires_at": (T0 + DAY).isoformat(),
    })])
    ex = state["executions"][EX]
    assert expected == fx
    assert ("waiting", "pause", DUE.isoformat(), DUE.isoformat()) == (
        ex["status"], ex["step"], ex["due_at"], state["next_due"])


def test_wakeup_one_second_early_does_nothing() -> None:
    """A wake-up before the due time changes nothing and sends nothing."""
    state, registry, _ = start()
    before = copy.deepcopy(state)
    fx = on_wakeup(state, registry.lookup, DUE - SECOND)
    assert (None, before) == (fx, state)


@pytest.mark.parametrize(
    ("purchases", "step_id", "subject", "body"),
    [
        # No purchase during the wait: the nudge.
        (0, "nudge", "Still there, Ada?", "Have a look around."),
        # A purchase during the wait: the thank-you (branch on contact.purchases > 0).
        (1, "thanks", "Thanks Ada", "Enjoy your order."),
        # Several purchases: still the thank-you.
        (3, "thanks", "Thanks Ada", "Enjoy your order."),
    ],
)
def test_wakeup_at_due_branches_and_sends_email(
    purchases: int, step_id: str, subject: str, body: str
) -> None:
    """At the due time the branch reads the contact's purchases and the email goes out."""
    state, registry, _ = start()
    for n in range(purchases):
        state, fx = feed(state, registry, "purchase.completed", purchase(), event_id=f"e-p{n}",
                         at=T0 + DAY)
        assert Effects() == fx
    fx = on_wakeup(state, registry.lookup, DUE)
    ex = state["executions"][EX]
    assert Effects(sends=[email(step_id, subject, body, 4, DUE)]) == fx
    assert ("completed", "end", None) == (ex["status"], ex["ended_reason"], state["next_due"])
    expected_history = [("hello", "sent"), ("pause", "waiting"), ("pause", "waited"),
                        ("check", "true" if purchases else "false"), (step_id, "sent"),
                        (step_id, "completed")]
    assert expected_history == [(h["step"], h["outcome"]) for h in ex["history"]]


def test_second_wakeup_is_idempotent() -> None:
    """A repeated wake-up (same time or later) finds nothing due and changes nothing."""
    state, registry, _ = start()
    first = on_wakeup(state, registry.lookup, DUE)
    after_first = copy.deepcopy(state)
    again = on_wakeup(state, registry.lookup, DUE)
    later = on_wakeup(state, registry.lookup, DUE + 10 * DAY)
    assert (1, None, None, after_first) == (len(first.sends), again, later, state)


def test_pause_and_resume_keep_the_remaining_wait() -> None:
    """Paused at +1h of a 2-day wait and resumed 10 days later, 47 hours remain."""
    state, registry, _ = start()
    paused_at = T0 + HOUR
    assert Effects() == control(state, "pause", EX, paused_at)
    ex = state["executions"][EX]
    assert ("paused", None, 47 * 3600, None) == (
        ex["status"], ex["due_at"], ex["remaining_s"], state["next_due"])
    assert None is on_wakeup(state, registry.lookup, DUE)  # the original due time
    resumed_at = paused_at + 10 * DAY
    assert Effects() == control(state, "resume", EX, resumed_at)
    new_due = resumed_at + 47 * HOUR
    assert (new_due.isoformat(), new_due.isoformat()) == (ex["due_at"], state["next_due"])
    assert None is on_wakeup(state, registry.lookup, new_due - SECOND)
    fx = on_wakeup(state, registry.lookup, new_due)
    assert ["nudge"] == [s.origin.step_id for s in fx.sends]
    waited = [h for h in ex["history"] if h["outcome"] == "waited"]
    assert [(new_due.isoformat(), new_due.isoformat())] == [(h["at"], h["due_at"])
                                                            for h in waited]


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        # Pause a waiting execution.
        (["pause"], [True]),
        # A second pause finds it paused already.
        (["pause", "pause"], [True, False]),
        # Resume needs a pause first.
        (["resume"], [False]),
        # Pause, resume, resume again.
        (["pause", "resume", "resume"], [True, True, False]),
        # Cancel a waiting execution; a second cancel finds it ended.
        (["cancel", "cancel"], [True, False]),
        # Cancel a paused one; it cannot be resumed afterwards.
        (["pause", "cancel", "resume"], [True, True, False]),
        # A cancelled execution cannot be paused.
        (["cancel", "pause"], [True, False]),
    ],
)
def test_control_answers_whether_it_changed_anything(
    actions: list[str], expected: list[bool]
) -> None:
    """Control commands apply only in the right state, so a repeat does nothing (None)."""
    state, _, _ = start()
    assert expected == [control(state, a, EX, T0 + HOUR) is not None for a in actions]


def test_control_of_unknown_execution() -> None:
    """A control command for an execution the contact does not have changes nothing."""
    state, _, _ = start()
    before = copy.deepcopy(state)
    assert (None, before) == (control(state, "cancel", "welcome/nope", T0), state)


def test_cancel_is_cancelled_not_failed() -> None:
    """A cancelled execution ends as "cancelled", and its wake-up finds nothing due."""
    state, registry, _ = start()
    assert Effects() == control(state, "cancel", EX, T0 + HOUR)
    ex = state["executions"][EX]
    assert ("cancelled", "cancelled", (T0 + HOUR).isoformat(), None) == (
        ex["status"], ex["ended_reason"], ex["ended_at"], state["next_due"])
    assert (None, None) == (on_wakeup(state, registry.lookup, DUE),
                            on_wakeup(state, registry.lookup, DUE + 30 * DAY))


def test_cancel_all() -> None:
    """cancel_all ends every active execution of the workflow, and only those."""
    state, registry, _ = start()
    fx = cancel_all(state, "welcome", T0 + HOUR)
    other = cancel_all(state, "other", T0)  # None: no active execution of that workflow
    assert (Effects(), 1, None) == (fx, cancelled_all(state), other)
    ex = state["executions"][EX]
    assert ("cancelled", "cancelled_all", None) == (ex["status"], ex["ended_reason"],
                                                    cancel_all(state, "welcome", T0 + 2 * HOUR))
    assert None is on_wakeup(state, registry.lookup, DUE)


@pytest.mark.parametrize(
    ("goal", "reached"),
    [
        # Any purchase ends the flow.
        ({"event": "purchase.completed"}, True),
        # A purchase over 20 ends it; this one is 25.
        ({"event": "purchase.completed",
          "criteria": [{"field": "event.data.amount", "op": "gt", "value": "20"}]}, True),
        # A purchase over 100 would; this one is not.
        ({"event": "purchase.completed",
          "criteria": [{"field": "event.data.amount", "op": "gt", "value": "100"}]}, False),
        # Another event type is no goal.
        ({"event": "contact.tagged"}, False),
    ],
)
def test_goal_event_ends_the_execution(goal: dict[str, Any], reached: bool) -> None:
    """A goal event completes the execution with "goal_reached"; nothing more is sent."""
    raw = welcome_raw()
    raw["goals"] = [goal]
    state, registry, _ = start(raw)
    state, fx = feed(state, registry, "purchase.completed", purchase(), event_id="e-buy",
                     at=T0 + DAY)
    ex = state["executions"][EX]
    after_event = (ex["status"], ex["ended_reason"])
    later = on_wakeup(state, registry.lookup, DUE)
    sent = None if later is None else len(later.sends)  # None: nothing was due any more
    expected = ("completed", "goal_reached", None) if reached else ("waiting", None, 1)
    assert (Effects(), *expected) == (fx, *after_event, sent)


# --- wait_for_event -----------------------------------------------------------------------


def wait_for_purchase_raw() -> dict[str, Any]:
    """Wait up to 3 days for a purchase of at least 20: thank, or nudge on the timeout."""
    raw = welcome_raw()
    raw["start"] = "wait_buy"
    raw["steps"] = {
        "wait_buy": {
            "kind": "wait_for_event", "event": "purchase.completed", "timeout": "3d",
            "criteria": [{"field": "event.data.amount", "op": "gte", "value": "20"}],
            "next": "thanks", "timeout_next": "nudge",
        },
        "thanks": raw["steps"]["thanks"],
        "nudge": raw["steps"]["nudge"],
    }
    return raw


Action = tuple[str, timedelta, str]

WAIT_FOR_EVENT = [
    # A matching purchase after a day: the thank-you, at once.
    pytest.param([("buy", DAY, "25.00")], ["thanks"], id="match"),
    # A matching purchase, then the timeout's wake-up: nothing more.
    pytest.param([("buy", DAY, "25.00"), ("wakeup", 3 * DAY, "")], ["thanks"],
                 id="match-then-wakeup"),
    # A purchase that misses the criteria does not end the wait.
    pytest.param([("buy", DAY, "5.00")], [], id="criteria-miss"),
    # ... and the timeout follows timeout_next.
    pytest.param([("buy", DAY, "5.00"), ("wakeup", 3 * DAY, "")], ["nudge"],
                 id="criteria-miss-timeout"),
    # No purchase: a second before the timeout, nothing.
    pytest.param([("wakeup", 3 * DAY - SECOND, "")], [], id="before-timeout"),
    # No purchase: at the timeout, the nudge.
    pytest.param([("wakeup", 3 * DAY, "")], ["nudge"], id="timeout"),
    # A purchase after the timeout fired changes nothing.
    pytest.param([("wakeup", 3 * DAY, ""), ("buy", 4 * DAY, "25.00")], ["nudge"],
                 id="timeout-then-buy"),
    # A purchase after the timeout, before its (late) wake-up: the contact did not buy in
    # time, so the timeout path.
    pytest.param([("buy", 3 * DAY + HOUR, "25.00"), ("wakeup", 3 * DAY + HOUR, "")],
                 ["nudge"], id="late-event-before-late-wakeup"),
]


@pytest.mark.parametrize(("actions", "expected"), WAIT_FOR_EVENT)
def test_wait_for_event(actions: list[Action], expected: list[str]) -> None:
    """A matching event moves on to ``next``; the timeout moves on to ``timeout_next``."""
    state, registry, fx = start(wait_for_purchase_raw())
    sends = list(fx.sends)
    for n, (kind, offset, amount) in enumerate(actions):
        if kind == "buy":
            state, fx = feed(state, registry, "purchase.completed", purchase(amount),
                             event_id=f"e-{n}", at=T0 + offset)
        else:
            fx = on_wakeup(state, registry.lookup, T0 + offset)
        if fx is not None:  # None: nothing was due, so nothing was emitted
            sends += fx.sends
    assert expected == [s.origin.step_id for s in sends]


# --- lateness and the gate: a reason for every non-send -----------------------------------


def late_sms_raw(max_lateness: str | None) -> dict[str, Any]:
    """Wait a day, then an SMS that must not go out more than ``max_lateness`` late."""
    raw = welcome_raw()
    raw["start"] = "pause"
    raw["steps"] = {
        "pause": {"kind": "wait", "duration": "1d", "next": "hello"},
        "hello": {"kind": "send_sms", "body": "Hi {{contact.first_name}}"},
    }
    if max_lateness is not None:
        raw["steps"]["hello"]["max_lateness"] = max_lateness
    return raw


@pytest.mark.parametrize(
    ("max_lateness", "late_by", "sent"),
    [
        # On time.
        ("1h", timedelta(0), True),
        # Half an hour late, within the allowance.
        ("1h", timedelta(minutes=30), True),
        # Exactly the allowance: still sent.
        ("1h", HOUR, True),
        # A second past the allowance: skipped.
        ("1h", HOUR + SECOND, False),
        # Days late after downtime: skipped.
        ("1h", 3 * DAY, False),
        # No allowance: sent however late.
        (None, 3 * DAY, True),
    ],
)
def test_max_lateness(max_lateness: str | None, late_by: timedelta, sent: bool) -> None:
    """A send far past its scheduled time is skipped with a "too_late" audit record."""
    state, registry, _ = start(late_sms_raw(max_lateness))
    now = T0 + DAY + late_by
    fx = on_wakeup(state, registry.lookup, now)
    mid = message_id(ACCOUNT, EX, "hello", 2)
    audit = {"account": ACCOUNT, "contact_id": CONTACT, "reason": "too_late",
             "at": now.isoformat(), "message_id": mid, "channel": "sms",
             "origin": origin("hello"), "action": "drop"}
    expected = (1, []) if sent else (0, [audit])
    assert expected == (len(fx.sends), fx.audit)


@pytest.mark.parametrize(
    ("fields", "first", "second"),
    [
        # Phone, email and SMS consent: both sent.
        ({}, None, None),
        # No phone number: the SMS is recorded as no_destination; the email still goes.
        ({"phone": None}, "no_destination", None),
        # No SMS consent recorded.
        ({"consent": {}}, "no_consent", None),
        # Opted out of SMS.
        ({"consent": {"sms": False}}, "opted_out", None),
        # No email address: the email is recorded as no_destination.
        ({"email": None}, None, "no_destination"),
        # Opted out of email.
        ({"consent": {"sms": True, "email": False}}, None, "opted_out"),
        # Neither channel possible: two records, no sends.
        ({"phone": None, "email": None}, "no_destination", "no_destination"),
    ],
)
def test_gate_reasons_are_audited(
    fields: dict[str, Any], first: str | None, second: str | None
) -> None:
    """Every send step yields a send or an audit record with the gate's reason."""
    state, registry, fx = start(**fields)
    at_due = on_wakeup(state, registry.lookup, DUE)
    assert at_due is not None
    fx += at_due
    outcomes = {s.message_id: None for s in fx.sends}
    outcomes |= {a["message_id"]: a["reason"] for a in fx.audit}
    ex = state["executions"][EX]
    mids = [message_id(ACCOUNT, EX, "hello", 1), message_id(ACCOUNT, EX, "nudge", 4)]
    assert {mids[0]: first, mids[1]: second} == outcomes
    assert "completed" == ex["status"]
    for record in fx.audit:
        assert (ACCOUNT, CONTACT) == (record["account"], record["contact_id"])


# --- starting: re-entry, replays, the loop guard ------------------------------------------


def enter_raw(reentry: dict[str, Any] | None = None) -> dict[str, Any]:
    """custom.enter starts: an SMS, then a 1-day wait, then the end."""
    raw = welcome_raw()
    raw.update(id="enter", trigger={"event": "custom.enter"}, start="hello")
    raw["steps"] = {
        "hello": {"kind": "send_sms", "body": "Hi", "next": "pause"},
        "pause": {"kind": "wait", "duration": "1d"},
    }
    if reentry is not None:
        raw["reentry"] = reentry
    return raw


@pytest.mark.parametrize(
    ("reentry", "first_finished", "second_at", "started"),
    [
        # Default (once at a time): not while the first is running.
        (None, False, HOUR, False),
        # Once at a time: again once the first has ended.
        ({"policy": "once_at_a_time"}, True, 2 * DAY, True),
        # Once ever: not while running.
        ({"policy": "once_ever"}, False, HOUR, False),
        # Once ever: not even a month after the first ended.
        ({"policy": "once_ever"}, True, 30 * DAY, False),
        # After 3 days: not 2 days after the first start.
        ({"policy": "after_days", "days": 3}, True, 2 * DAY, False),
        # After 3 days: not a second before the 3 days are up.
        ({"policy": "after_days", "days": 3}, True, 3 * DAY - SECOND, False),
        # After 3 days: exactly 3 days after the first start.
        ({"policy": "after_days", "days": 3}, True, 3 * DAY, True),
        # After 3 days: never while the first is still running.
        ({"policy": "after_days", "days": 3}, False, 3 * DAY, False),
    ],
)
def test_reentry(
    reentry: dict[str, Any] | None, first_finished: bool, second_at: timedelta, started: bool
) -> None:
    """The re-entry policy decides whether a second trigger starts a second execution."""
    registry = Registry(definition(enter_raw(reentry)))
    state, _ = created()
    state, first = feed(state, registry, "custom.enter", None, event_id="e-1", at=T0)
    if first_finished:
        on_wakeup(state, registry.lookup, T0 + DAY)
    state, second = feed(state, registry, "custom.enter", None, event_id="e-2",
                         at=T0 + second_at)
    expected = (1, 1 if started else 0, 2 if started else 1, 2 if started else 1)
    assert expected == (len(first.sends), len(second.sends), len(state["executions"]),
                        state["runs"]["enter"]["count"])


@pytest.mark.parametrize(
    "replay_after",
    [
        HOUR,  # while the first execution still waits
        2 * DAY,  # after it ended (once_at_a_time would allow a new one)
    ],
)
def test_replayed_trigger_starts_nothing(replay_after: timedelta) -> None:
    """The same triggering event handled again starts no second execution."""
    registry = Registry(definition(enter_raw()))
    state, _ = created()
    state, event = apply(state, "custom.enter", None, event_id="e-1", at=T0)
    on_event(state, event, registry.active(ACCOUNT), registry.lookup, T0, MAX_DEPTH)
    on_wakeup(state, registry.lookup, T0 + replay_after)
    before = copy.deepcopy(state)
    fx = on_event(state, event, registry.active(ACCOUNT), registry.lookup, T0 + replay_after,
                  MAX_DEPTH)
    assert (Effects(), before) == (fx, state)


def test_replayed_event_is_a_duplicate_for_the_contact() -> None:
    """A redelivered event is marked duplicate before the engine sees it."""
    state, _ = created()
    event = parse_event(orjson.dumps({
        "specversion": "1.0", "id": "e-1", "source": "urn:test", "type": "custom.enter",
        "subject": CONTACT, "time": T0.isoformat(), "account": ACCOUNT, "data": {}}))
    once = apply_event(state, event, T0, DEDUPE_WINDOW_S).state
    assert apply_event(once, event, T0 + SECOND, DEDUPE_WINDOW_S).duplicate


@pytest.mark.parametrize(
    ("event_type", "depth", "started", "guarded"),
    [
        # A first-hand event.
        ("custom.enter", 0, True, False),
        # One below the limit still starts.
        ("custom.enter", MAX_DEPTH - 1, True, False),
        # At the limit: guarded.
        ("custom.enter", MAX_DEPTH, False, True),
        # Far past the limit: guarded.
        ("custom.enter", MAX_DEPTH + 4, False, True),
        # Deep but starting nothing anyway: no record.
        ("custom.other", MAX_DEPTH, False, False),
    ],
)
def test_loop_guard(event_type: str, depth: int, started: bool, guarded: bool) -> None:
    """An event at or past max_depth starts nothing and leaves one "loop_guard" record."""
    registry = Registry(definition(enter_raw()))
    state, _ = created()
    now = T0 + HOUR
    state, fx = feed(state, registry, event_type, None, event_id="e-deep", at=now,
                     depth=depth)
    record = {"account": ACCOUNT, "contact_id": CONTACT, "reason": "loop_guard",
              "at": now.isoformat(), "event_id": "e-deep", "event_type": event_type,
              "depth": depth, "workflows": ["enter"]}
    expected = (1 if started else 0, [record] if guarded else [], int(started))
    assert expected == (len(fx.sends), fx.audit, len(state["executions"]))


# --- state steps --------------------------------------------------------------------------


def onboard_raw() -> dict[str, Any]:
    raw = welcome_raw()
    raw.update(id="onboard", trigger={"event": "custom.enter"}, start="tag")
    raw["steps"] = {
        "tag": {"kind": "add_tag", "tag": "welcomed", "next": "join"},
        "join": {"kind": "add_to_group", "group": "newbies", "next": "untag"},
        "untag": {"kind": "remove_tag", "tag": "prospect", "next": "leave"},
        "leave": {"kind": "remove_from_group", "group": "leads", "next": "done"},
        "done": {"kind": "exit"},
    }
    return raw


def emitted_event_id(execution_id: str, step_id: str, seq: int) -> str:
    """Deterministic and bounded (a hash): a replay emits the same id, never a longer one."""
    digest = hashlib.sha256(f"{execution_id}\x1f{step_id}\x1f{seq}".encode()).hexdigest()
    return "ds-" + digest[:32]


def test_state_steps_emit_contact_events() -> None:
    """Tag and group steps emit contact events one level deeper, with deterministic ids."""
    registry = Registry(definition(onboard_raw()))
    state, _ = created()
    state, fx = feed(state, registry, "custom.enter", None, event_id="e-in", at=T0, depth=2)
    ex_id = "onboard/e-in"
    rows = [("tag", 1, "contact.tagged", {"tag": "welcomed"}),
            ("join", 2, "contact.added_to_group", {"group": "newbies"}),
            ("untag", 3, "contact.untagged", {"tag": "prospect"}),
            ("leave", 4, "contact.removed_from_group", {"group": "leads"})]
    expected = [{"specversion": "1.0", "id": emitted_event_id(ex_id, sid, seq),
                 "source": "urn:dripstream:workflow:onboard", "type": event_type,
                 "subject": CONTACT, "time": T0.isoformat(), "account": ACCOUNT,
                 "causationdepth": 3, "data": data} for sid, seq, event_type, data in rows]
    ex = state["executions"][ex_id]
    assert (expected, "completed", "exit") == (fx.events, ex["status"], ex["ended_reason"])


def test_state_step_events_are_valid_and_change_the_contact() -> None:
    """The emitted events pass the wire contract and, applied, tag and group the contact."""
    registry = Registry(definition(onboard_raw()))
    state, _ = created()
    state, _ = apply(state, "contact.tagged", {"tag": "prospect"}, event_id="e-t", at=T0)
    state, _ = apply(state, "contact.added_to_group", {"group": "leads"}, event_id="e-g", at=T0)
    state, fx = feed(state, registry, "custom.enter", None, event_id="e-in", at=T0)
    for event in fx.events:
        parsed = parse_event(orjson.dumps(event), CONTACT.encode())
        state = apply_event(state, parsed, T0 + SECOND, DEDUPE_WINDOW_S).state
        assert 1 == parsed.envelope.causationdepth
    assert (["welcomed"], ["newbies"]) == (state["tags"], state["groups"])


def test_state_step_events_are_valid_for_the_longest_trigger_id() -> None:
    """A trigger id of the greatest allowed length still yields valid contact events."""
    registry = Registry(definition(onboard_raw()))
    state, _ = created()
    state, fx = feed(state, registry, "custom.enter", None, event_id="x" * 256, at=T0)
    for event in fx.events:
        parse_event(orjson.dumps(event), CONTACT.encode())


def test_state_step_ids_are_stable_across_replays() -> None:
    """Handling the same trigger from the same state twice gives the same event ids."""
    registry = Registry(definition(onboard_raw()))
    state, event = apply(created()[0], "custom.enter", None, event_id="e-in", at=T0)
    ids = [
        [e["id"] for e in on_event(copy.deepcopy(state), event, registry.active(ACCOUNT),
                                   registry.lookup, T0 + n * HOUR, MAX_DEPTH).events]
        for n in range(2)
    ]
    assert ids[0] == ids[1]


# --- versions -----------------------------------------------------------------------------


def versioned_raw(version: int) -> dict[str, Any]:
    raw = enter_raw()
    raw["version"] = version
    raw["steps"]["hello"]["body"] = f"v{version} hello"
    raw["steps"]["pause"]["next"] = "bye"
    raw["steps"]["bye"] = {"kind": "send_sms", "body": f"v{version} bye"}
    return raw


def test_execution_keeps_its_version() -> None:
    """An execution started on v1 finishes on v1 after v2 is published; new ones get v2."""
    registry = Registry(definition(versioned_raw(1)))
    state, _ = created()
    state, first = feed(state, registry, "custom.enter", None, event_id="e-1", at=T0)
    registry.publish(definition(versioned_raw(2)))
    finish = on_wakeup(state, registry.lookup, T0 + DAY)
    state, second = feed(state, registry, "custom.enter", None, event_id="e-2",
                         at=T0 + 2 * DAY)
    assert finish is not None
    sent = [(s.body, s.origin.version) for s in first.sends + finish.sends + second.sends]
    assert [("v1 hello", 1), ("v1 bye", 1), ("v2 hello", 2)] == sent


def test_missing_version_fails_the_execution() -> None:
    """A wake-up for an execution whose version is gone ends it as failed, sending nothing."""
    registry = Registry(definition(versioned_raw(1)))
    state, _ = created()
    state, _ = feed(state, registry, "custom.enter", None, event_id="e-1", at=T0)
    fx = on_wakeup(state, Registry(definition(versioned_raw(2))).lookup, T0 + DAY)
    ex = state["executions"]["enter/e-1"]
    assert (Effects(), "failed", "definition_missing") == (fx, ex["status"],
                                                           ex["ended_reason"])


# --- wait_until in the contact's zone -----------------------------------------------------




@pytest.mark.parametrize(
    ("at", "timezone", "time", "weekdays", "expected"),
    [
        # No zone of her own: the workflow's (New York, 09:00 EST now): 09:00 tomorrow.
        pytest.param(T0, None, "09:00", None, "2026-03-03T14:00:00+00:00", id="fallback"),
        # Her own zone (Berlin, 15:00 CET): 09:00 has passed, so tomorrow (08:00 UTC).
        pytest.param(T0, "Europe/Berlin", "09:00", None, "2026-03-03T08:00:00+00:00",
                     id="own-zone"),
        # Saturdays only, in New York: 2026-03-07 09:00 EST.
        pytest.param(T0, None, "09:00", ["sat"], "2026-03-07T14:00:00+00:00", id="weekday"),
        # Saturday noon before spring forward: 02:30 does not exist, so 03:30 EDT.
        pytest.param(T0 + 5 * DAY + 8 * HOUR, None, "02:30", None,
                     "2026-03-08T07:30:00+00:00", id="dst-gap"),
    ],
)
def test_wait_until_uses_the_contacts_zone(
    at: datetime, timezone: str | None, time: str, weekdays: list[str] | None, expected: str
) -> None:
    """wait_until waits for the local time in the contact's zone, else the workflow's."""
    raw = late_sms_raw(None)
    raw["steps"]["pause"] = {"kind": "wait_until", "time": time, "next": "hello"}
    if weekdays:
        raw["steps"]["pause"]["weekdays"] = weekdays
    state, _, _ = start(raw, at=at, timezone=timezone)
    assert expected == next_due(state)


def test_docs_example_runs() -> None:
    """The documented welcome series, started on a Friday, nudges on Monday 09:00 local."""
    friday = datetime.fromisoformat("2026-03-06T15:00:00+00:00")  # 10:00 EST
    state, registry, first = start(docs_example(), at=friday)
    after_wait = on_wakeup(state, registry.lookup, friday + 2 * DAY)  # Sunday, now EDT
    monday = datetime.fromisoformat("2026-03-09T13:00:00+00:00")  # 09:00 EDT
    assert monday.isoformat() == next_due(state)
    last = on_wakeup(state, registry.lookup, monday)
    ex = state["executions"][EX]
    assert last is not None
    assert ["Hi Ada, welcome to Acme!"] == [s.body for s in first.sends]
    assert (Effects(), ["Still thinking?"], [("contact.tagged", {"tag": "nudged"})]) == (
        after_wait, [s.subject for s in last.sends],
        [(e["type"], e["data"]) for e in last.events])
    assert ("completed", "end") == (ex["status"], ex["ended_reason"])


# --- rendering and ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hi {{contact.first_name}}", "Hi Ada"),  # an attribute
        ("Hi {{ contact.first_name }}", "Hi Ada"),  # spaces inside the braces
        ("Hi {{contact.nickname|friend}}", "Hi friend"),  # a missing field's default
        ("Hi {{contact.nickname | dear friend}}", "Hi dear friend"),  # default with spaces
        ("Hi {{contact.nickname}}!", "Hi !"),  # missing, no default: empty
        ("Hi {{contact.first_name|friend}}", "Hi Ada"),  # present: the default is unused
        ("{{contact.timezone|UTC}}", "UTC"),  # a null profile field takes the default
        ("{{contact.tags|none}}", "none"),  # a list is never rendered
        ("Order {{event.data.order_id}}", "Order o-1"),  # from the triggering event
        ("{{event.type}}", "purchase.completed"),  # the event's type
        ("No fields", "No fields"),  # plain text
    ],
)
def test_render(template: str, expected: str) -> None:
    """Templates fill in contact and event fields, or the default when missing."""
    state, event = apply(created()[0], "purchase.completed", purchase(), event_id="e-1",
                         at=T0)
    assert expected == render(template, state, event)


@pytest.mark.parametrize(
    "other",
    [
        ("globex", EX, "hello", 1),  # another account
        (ACCOUNT, "welcome/e-2", "hello", 1),  # another execution
        (ACCOUNT, EX, "nudge", 1),  # another step
        (ACCOUNT, EX, "hello", 2),  # another pass (seq)
        (ACCOUNT, EX + "\x1fhello", "", 1),  # fields do not run into each other
    ],
)
def test_message_id(other: tuple[str, str, str, int]) -> None:
    """The same send always gets the same id, and any other send a different one."""
    same = message_id(ACCOUNT, EX, "hello", 1)
    assert (same, 36, True) == (message_id(ACCOUNT, EX, "hello", 1), len(same),
                                same != message_id(*other))


# --- property: waits never fire early, sends never repeat ---------------------------------

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 3 * 86400)),
        st.tuples(st.sampled_from(["wakeup", "pause", "resume"]), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(actions=ACTIONS)
def test_wait_never_fires_early_and_sends_once(actions: list[tuple[str, int]]) -> None:
    """Whatever the order of time, wake-ups, pauses and resumes, the wait fires at or after
    its due time in effect, and the email after it goes out at most once."""
    state, registry, _ = start()
    now, due, remaining, fired, emails = T0, DUE, None, False, 0
    for action, seconds in actions:
        if action == "advance":
            now += timedelta(seconds=seconds)
        elif action == "wakeup":
            fx = on_wakeup(state, registry.lookup, now)
            sent = 0 if fx is None else len(fx.sends)  # None: nothing was due
            emails += sent
            fires = due is not None and due <= now
            assert (fires, int(fires)) == (fx is not None, sent)
            if fires:
                fired, due = True, None
        elif action == "pause":
            assert (due is not None) == (control(state, "pause", EX, now) is not None)
            if due is not None:
                remaining, due = max(due - now, timedelta(0)), None
        else:
            assert (remaining is not None) == (control(state, "resume", EX, now) is not None)
            if remaining is not None:
                due, remaining = now + remaining, None
        waiting = state["executions"][EX]["due_at"]
        assert (due.isoformat() if due else None) == waiting
    history = state["executions"][EX]["history"]
    waited = [h for h in history if h["outcome"] == "waited"]
    assert all(datetime.fromisoformat(h["at"]) >= datetime.fromisoformat(h["due_at"])
               for h in waited)
    assert (int(fired), int(fired)) == (len(waited), emails)


# --- what an execution keeps of its trigger -------------------------------------------


def test_an_execution_keeps_only_the_trigger_fields_its_workflow_reads() -> None:
    """A purchase with a cart of items starts a flow that reads only ``order_id`` (a
    template) and ``amount`` (a branch): the execution keeps those, not the cart."""
    raw = welcome_raw()
    raw.update(id="thanks", trigger={"event": "purchase.completed"}, start="check", steps={
        "check": {"kind": "branch",
                  "condition": [{"field": "event.data.amount", "op": "gt", "value": 100}],
                  "true": "big", "false": "small"},
        "big": {"kind": "send_sms", "body": "Thanks for order {{event.data.order_id}}!"},
        "small": {"kind": "send_sms", "body": "Thanks!"},
    })
    wf = definition(raw)
    registry = Registry(wf)
    state, _ = created()
    state, purchase = apply(state, "purchase.completed",
                            {"order_id": "o-9", "amount": "250", "currency": "EUR",
                             "items": [{"sku": f"s{n}", "qty": n} for n in range(50)]},
                            event_id="buy", at=T0 + HOUR)
    fx = on_event(state, purchase, registry.active(ACCOUNT), registry.lookup, T0 + HOUR,
                  MAX_DEPTH)
    (ex,) = state["executions"].values()
    assert ex["trigger"] == {"id": "buy", "type": "purchase.completed",
                             "time": purchase["time"],
                             "data": {"amount": "250", "order_id": "o-9"}}
    assert [s.body for s in fx.sends] == ["Thanks for order o-9!"]
