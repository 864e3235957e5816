"""Workflows through the compliant send gate (tables/executions.py with a ``Compliance``):
caps across executions, deferral to the window's opening with the original message, and an
opt-out that arrives while a send is deferred."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tables.effects import Effects
from tables.executions import MAX_ACTIVE, control, on_event, on_wakeup
from tables.gate import Compliance
from tables.keywords import on_keyword, system_keyword
from tests.unit_compliance.support import ACCOUNT, LA, caps, local, policy
from tests.unit_workflows.support import MAX_DEPTH, Registry, apply, created, definition

SECOND = timedelta(seconds=1)
MIDNIGHT = local(LA, 2026, 3, 5)  # the end of Wednesday 4 March in Los Angeles
MORNING = local(LA, 2026, 3, 5, 8)  # the send window opens on Thursday
PHONE = "+14155550101"


def wed(hour: int) -> datetime:
    return local(LA, 2026, 3, 4, hour)


def promo_raw(channel: str = "sms", on_capped: str = "drop", **step: Any) -> dict[str, Any]:
    """One send per ``custom.ping``, every time it comes."""
    send = {"kind": f"send_{channel}", "body": "Deal of the day", **step}
    if channel == "email":
        send["subject"] = "Today only"
    return {"id": "promo", "account": ACCOUNT, "name": "Promo", "version": 1,
            "trigger": {"event": "custom.ping"}, "reentry": {"policy": "every_time"},
            "on_capped": on_capped, "start": "offer", "steps": {"offer": send}}


class Flow:
    """Ada in Los Angeles, the promo workflow, and the account's compliance rules."""

    def __init__(self, raw: dict[str, Any], rules: Compliance) -> None:
        self.registry = Registry(definition(raw))
        self.rules = rules
        self.state, _ = created(at=wed(0) - timedelta(days=1), timezone="America/Los_Angeles")

    def ping(self, n: int, at: datetime) -> Effects:
        self.state, event = apply(self.state, "custom.ping", None, event_id=f"e-{n}", at=at)
        return on_event(self.state, event, self.registry.active(ACCOUNT),
                        self.registry.lookup, at, MAX_DEPTH, self.rules)

    def wake(self, at: datetime) -> Effects | None:
        """The wake-up's effects; None if nothing was due."""
        return on_wakeup(self.state, self.registry.lookup, at, self.rules)

    def execution(self, n: int) -> dict[str, Any]:
        ex: dict[str, Any] = self.state["executions"][f"promo/e-{n}"]
        return ex


def pings(flow: Flow, hours: range) -> Effects:
    fx = Effects()
    for n, hour in enumerate(hours):
        fx += flow.ping(n, wed(hour))
    return fx


def test_day_cap_drops_the_sixth_and_seventh() -> None:
    """Seven sends in one local day with the default policy: five go out, two are dropped
    and audited as frequency_capped."""
    flow = Flow(promo_raw(), Compliance(policy()))
    fx = pings(flow, range(9, 16))
    capped = [flow.execution(n)["history"][0]["message_id"] for n in (5, 6)]
    assert (5, [("frequency_capped", "drop", mid) for mid in capped]) == (
        len(fx.sends), [(a["reason"], a["action"], a["message_id"]) for a in fx.audit])
    assert [["not_sent", "completed"]] * 2 == [
        [h["outcome"] for h in flow.execution(n)["history"]] for n in (5, 6)]


def test_deferred_sends_go_at_local_midnight_with_their_original_ids() -> None:
    """With on_capped=defer, the sixth and seventh emails wait for the next local midnight
    and then go out with their original message id, creation and expiry times."""
    flow = Flow(promo_raw("email", "defer"), Compliance(policy()))
    fx = pings(flow, range(9, 16))
    deferred = [(a["message_id"], a["deferred_until"]) for a in fx.audit]
    originals = {n: flow.execution(n)["deferred"] for n in (5, 6)}
    assert ([(originals[n]["message_id"], MIDNIGHT.isoformat()) for n in (5, 6)],
            MIDNIGHT.isoformat()) == (deferred, flow.state["next_due"])
    assert None is flow.wake(MIDNIGHT - SECOND)
    sent = flow.wake(MIDNIGHT)
    assert sent is not None
    assert [(o["message_id"], datetime.fromisoformat(o["created_at"]),
             datetime.fromisoformat(o["expires_at"])) for o in originals.values()] == [
        (s.message_id, s.created_at, s.expires_at) for s in sent.sends]
    assert [wed(14).isoformat(), (wed(15) + timedelta(days=1)).isoformat()] == [
        originals[5]["created_at"], originals[6]["expires_at"]]
    assert (["completed", "completed"], None) == (
        [flow.execution(n)["status"] for n in (5, 6)], flow.state["next_due"])


def test_capped_sms_waits_for_midnight_then_for_the_window() -> None:
    """A capped SMS deferred to midnight finds quiet hours there, waits until 08:00 and
    then goes out, still under its first message id."""
    flow = Flow(promo_raw("sms", "defer"), Compliance(policy()))
    pings(flow, range(9, 15))
    mid = flow.execution(5)["deferred"]["message_id"]
    at_midnight = flow.wake(MIDNIGHT)
    at_morning = flow.wake(MORNING)
    assert at_midnight is not None and at_morning is not None
    assert ([("quiet_hours_deferred", MORNING.isoformat())], [mid]) == (
        [(a["reason"], a["deferred_until"]) for a in at_midnight.audit],
        [s.message_id for s in at_morning.sends])
    assert ["deferred", "retrying", "deferred", "retrying", "sent", "completed"] == [
        h["outcome"] for h in flow.execution(5)["history"]]


def test_night_send_is_deferred_to_the_morning() -> None:
    """An SMS at 22:00 local waits until 08:00 local (quiet_hours_deferred), then goes."""
    flow = Flow(promo_raw(), Compliance(policy()))
    fx = flow.ping(0, wed(22))
    mid = flow.execution(0)["deferred"]["message_id"]
    assert ([], [("quiet_hours_deferred", "defer", MORNING.isoformat())]) == (
        fx.sends, [(a["reason"], a["action"], a["deferred_until"]) for a in fx.audit])
    assert None is flow.wake(MORNING - SECOND)
    at_morning = flow.wake(MORNING)
    assert at_morning is not None
    assert [mid] == [s.message_id for s in at_morning.sends]


def test_deferral_past_expiry_is_dropped_as_expired() -> None:
    """A send that expires two hours after it was made, deferred overnight, is dropped as
    expired at the morning: the deferral keeps its original lifetime."""
    flow = Flow(promo_raw(expires_after="2h"), Compliance(policy()))
    flow.ping(0, wed(22))
    fx = flow.wake(MORNING)
    assert fx is not None
    assert ([], ["expired"]) == (fx.sends, [a["reason"] for a in fx.audit])


@pytest.mark.parametrize(
    ("listed", "reason"),
    [
        # The suppression list has not caught up yet: the revoked consent stops it.
        (False, "opted_out"),
        # The suppression list has the number: suppression is reported first.
        (True, "suppressed"),
    ],
)
def test_opt_out_while_deferred_drops_the_send(listed: bool, reason: str) -> None:
    """A STOP between a deferral and its wake-up: the deferred send is dropped, audited."""
    rules = Compliance(policy())
    flow = Flow(promo_raw(), rules)
    flow.ping(0, wed(22))
    stop_at = wed(23)
    flow.state, event = apply(flow.state, "keyword.received",
                              {"keyword": "STOP", "text": "STOP", "to": "+15550001111"},
                              event_id="e-stop", at=stop_at)
    on_keyword(flow.state, event, [], rules, stop_at)
    react = not system_keyword(event, rules.policy)
    if listed:
        flow.rules = Compliance(policy(), lambda address: address == PHONE)
    fx = flow.wake(MORNING)
    assert fx is not None
    ex = flow.execution(0)
    assert (False, [], [(reason, "drop")], "completed") == (
        react, fx.sends, [(a["reason"], a["action"]) for a in fx.audit], ex["status"])


def test_rolling_deferral_goes_out_at_its_wakeup() -> None:
    """With rolling windows, a capped send deferred by the gate goes out at the time the
    gate named."""
    flow = Flow(promo_raw("email", "defer"), Compliance(policy(caps=caps("rolling"))))
    pings(flow, range(9, 15))
    due = datetime.fromisoformat(flow.state["next_due"])
    fx = flow.wake(due)
    assert fx is not None
    assert (wed(9) + timedelta(days=1), 1) == (due, len(fx.sends))


def test_zoneless_contact_gets_the_workflows_local_time() -> None:
    """For a contact with no zone, an SMS a Los Angeles workflow sends at 14:00 Los Angeles
    time goes out then, not at midnight Los Angeles time."""
    raw = {**promo_raw(), "timezone": "America/Los_Angeles"}
    flow = Flow(raw, Compliance(policy()))
    flow.state["timezone"] = None
    fx = flow.ping(0, wed(14))
    assert (1, []) == (len(fx.sends), [a.get("deferred_until") for a in fx.audit])


def test_cancelling_a_deferred_send_records_its_end() -> None:
    """A send deferred to the morning and then cancelled gets a final drop record
    (execution_ended): every deferral ends in a send or a recorded drop."""
    flow = Flow(promo_raw(), Compliance(policy()))
    flow.ping(0, wed(22))
    mid = flow.execution(0)["deferred"]["message_id"]
    fx = control(flow.state, "cancel", "promo/e-0", wed(23))
    assert fx is not None
    assert [("execution_ended", "drop", mid, "cancelled")] == [
        (a["reason"], a["action"], a["message_id"], a["ended_reason"]) for a in fx.audit]
    assert None is flow.wake(MORNING)  # nothing is due any more: it never goes


def test_active_executions_per_contact_are_bounded() -> None:
    """Past MAX_ACTIVE waiting executions a trigger starts nothing and says so: the
    contact's value stays bounded."""
    raw = promo_raw()
    raw["steps"] = {"hold": {"kind": "wait", "duration": "30d", "next": "offer"},
                    "offer": raw["steps"]["offer"]}
    raw["start"] = "hold"
    flow = Flow(raw, Compliance(policy()))
    for n in range(MAX_ACTIVE):
        assert Effects() == flow.ping(n, wed(12))
    fx = flow.ping(MAX_ACTIVE, wed(12))
    assert [("too_many_executions", "promo", MAX_ACTIVE)] == [
        (a["reason"], a["workflow_id"], a["active"]) for a in fx.audit]
    assert MAX_ACTIVE == len(flow.state["executions"])
