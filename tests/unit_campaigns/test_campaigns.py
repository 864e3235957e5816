"""Campaigns per contact and per occurrence (tables/campaigns.py): audiences, one contact's
delivery through the send gate, drip joiners, when an occurrence fires, and the throttle.

Contact states are made by the real contact logic from SDK-built events; definitions
reach the code as validated JSON dicts through a fake of the worker's registry. Times are
passed in: T0 is Monday 2 March 2026, 14:00 UTC (09:00 in New York).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.definitions import Audience, parse_campaign
from streams.events import parse_event
from tables.campaigns import (
    CAMPAIGN_WORKFLOW,
    Delivery,
    Due,
    Throttle,
    Verdict,
    content_workflow,
    due,
    handle_delivery,
    in_audience,
    next_after,
    starts_at,
)
from tables.contacts import apply_event
from tables.effects import Outcome
from tables.executions import HOLD
from tables.handlers import Context, Wakeup, handle_event, handle_wakeup
from tables.schedule import Occurrence, occurrences, parse_local, resolve
from tests.unit_compliance.support import policy as account_policy
from tests.unit_compliance.support import records
from tests.unit_workflows.support import (
    ACCOUNT,
    DAY,
    DEDUPE_WINDOW_S,
    HOUR,
    SECOND,
    T0,
    Registry,
    definition,
    parsed_event,
    profile,
)

NEW_YORK = "America/New_York"
MINUTE = timedelta(minutes=1)
OCC = "2026-03-02T09:00"  # the spring sale's occurrence: 09:00 New York = T0
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)  # before every schedule here

State = dict[str, Any]


# -- builders -----------------------------------------------------------------------------


def campaign(**sections: Any) -> dict[str, Any]:
    """The spring sale (an SMS to everyone at 09:00 New York on 2 March), with ``sections``
    merged in (a schedule replaced; ``content=None`` removes it); validated and dumped as
    the registry holds it."""
    raw: dict[str, Any] = {
        "kind": "campaign", "id": "spring", "account": ACCOUNT, "name": "Spring sale",
        "version": 1,
        "content": {"channel": "sms", "body": "Hi {{contact.first_name|there}}, 20% off today"},
        "schedule": {"type": "once", "at": OCC, "timezone": NEW_YORK},
    }
    for name, value in sections.items():
        if value is None:
            raw.pop(name, None)
        elif name != "schedule" and isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    return parse_campaign(raw).model_dump(mode="json")


def workflow(wf_id: str, trigger: dict[str, Any], steps: dict[str, Any],
             reentry: str = "once_at_a_time") -> dict[str, Any]:
    return definition({"id": wf_id, "account": ACCOUNT, "name": wf_id, "version": 1,
                       "trigger": trigger, "reentry": {"policy": reentry},
                       "start": next(iter(steps)), "steps": steps})


def email(subject: str, **more: Any) -> dict[str, Any]:
    return {"kind": "send_email", "subject": subject, "body": subject, **more}


#: The workflow drip campaigns enrol into: an email, three days, another email.
NURTURE = workflow("nurture", {"event": "custom.nurture"}, {
    "welcome": email("Welcome", next="pause"),
    "pause": {"kind": "wait", "duration": "3d", "next": "tips"},
    "tips": email("Tips"),
})


def definitions(*campaigns: dict[str, Any], workflows: Iterable[dict[str, Any]] = (),
                policy: dict[str, Any] | None = None) -> Registry:
    """What the handlers read of the worker's registry, for one account: its workflows,
    its campaigns (a content campaign's workflow under ``campaign:<id>``), its policy."""
    return Registry(*workflows, campaigns=campaigns, policy=policy or account_policy())


def context(defs: Registry, suppressed: dict[str, str] | None = None) -> Context:
    """The handler context; ``suppressed``: address → reason on the suppression list."""
    listed = suppressed or {}
    return Context(defs, lambda account, address: listed.get(address))


def delivery(c: dict[str, Any], defs: Registry, occurrence: str | None = None) -> Delivery:
    """An occurrence of ``c`` (default: its first) as the scheduler hands it to each
    contact."""
    zone = c["schedule"]["timezone"] or defs.policy(ACCOUNT)["timezone"]
    if occurrence is None:
        occurrence = next(occurrences(c["schedule"], ZoneInfo(zone), LONG_AGO)).id
    local = parse_local(occurrence)
    if c.get("workflow") is None:
        wf = defs.lookup(ACCOUNT, CAMPAIGN_WORKFLOW + c["id"], c["version"])
    else:
        wf = next(w for w in defs.active(ACCOUNT) if w["id"] == c["workflow"])
    assert wf is not None
    return Delivery(c, occurrence, local, resolve(local, ZoneInfo(zone)), wf, zone)


def contact(contact_id: str = "c-1", *, groups: Iterable[str] = (), tags: Iterable[str] = (),
            purchases: int = 0, at: datetime = T0 - DAY, **fields: Any) -> State:
    """A contact's state, made from its events: created (see ``profile``: Ada, SMS
    consent), then added to ``groups``, tagged, and ``purchases`` orders."""
    events: list[tuple[str, dict[str, Any] | None]] = [("contact.created", profile(**fields))]
    events += [("contact.added_to_group", {"group": g}) for g in groups]
    events += [("contact.tagged", {"tag": t}) for t in tags]
    events += [("purchase.completed", {"order_id": f"o-{n}", "amount": "10.00",
                                       "currency": "EUR"}) for n in range(purchases)]
    state = None
    for n, (event_type, data) in enumerate(events):
        event = parsed_event(event_type, data, event_id=f"{contact_id}-{n}", at=at,
                             contact_id=contact_id)
        state = apply_event(state, event, at, DEDUPE_WINDOW_S).state
    assert state is not None
    return dict(state)


def deliver(state: State | None, c: dict[str, Any], now: datetime, *,
            occurrence: str | None = None, defs: Registry | None = None,
            suppressed: dict[str, str] | None = None) -> tuple[Outcome, Verdict]:
    defs = defs or definitions(c)
    return handle_delivery(state, delivery(c, defs, occurrence), context(defs, suppressed),  # type: ignore[arg-type]
                           now)


def new_state(outcome: Outcome) -> State:
    assert outcome.state is not None, "the delivery changed the contact"
    return dict(outcome.state)


def executions(state: State) -> dict[str, dict[str, Any]]:
    """Execution id → the execution, for the contact's executions."""
    found: dict[str, dict[str, Any]] = state["executions"]
    return found


def workflows_run(state: State) -> list[str]:
    return sorted(ex["workflow_id"] for ex in executions(state).values())


# -- in_audience --------------------------------------------------------------------------


def audience(**fields: Any) -> dict[str, Any]:
    return Audience.model_validate(fields).model_dump(mode="json")


PLAN_PRO = {"field": "contact.attributes.plan", "op": "eq", "value": "pro"}


@pytest.mark.parametrize(
    ("rules", "member", "expected"),
    [
        # An empty audience is every contact of the account.
        pytest.param({}, {}, True, id="everyone"),
        # Groups are any-of.
        pytest.param({"groups": ["vip", "staff"]}, {"groups": ["staff"]}, True,
                     id="groups-any-of"),
        pytest.param({"groups": ["vip"]}, {"groups": ["newsletter"]}, False,
                     id="groups-none"),
        # Tags are all-of by default...
        pytest.param({"tags": ["engaged", "sms-ok"]}, {"tags": ["engaged"]}, False,
                     id="tags-all-missing-one"),
        pytest.param({"tags": ["engaged", "sms-ok"]}, {"tags": ["sms-ok", "engaged", "x"]},
                     True, id="tags-all-present"),
        # ...or any-of when asked.
        pytest.param({"tags": ["engaged", "sms-ok"], "tags_match": "any"},
                     {"tags": ["sms-ok"]}, True, id="tags-any-one"),
        pytest.param({"tags": ["engaged", "sms-ok"], "tags_match": "any"}, {"tags": ["x"]},
                     False, id="tags-any-none"),
        # An excluded group wins over an included one.
        pytest.param({"groups": ["vip"], "exclude_groups": ["staff"]},
                     {"groups": ["vip", "staff"]}, False, id="exclude-wins"),
        # Exclusion alone: everyone but the excluded.
        pytest.param({"exclude_groups": ["staff"]}, {"groups": ["vip"]}, True,
                     id="exclude-only-other"),
        pytest.param({"exclude_groups": ["staff"]}, {"groups": ["staff"]}, False,
                     id="exclude-only-member"),
        # Criteria on an attribute, by its full path...
        pytest.param({"criteria": [PLAN_PRO]}, {"attributes": {"plan": "pro"}}, True,
                     id="attribute-eq"),
        pytest.param({"criteria": [PLAN_PRO]}, {"attributes": {"plan": "free"}}, False,
                     id="attribute-ne"),
        # ...or by the attribute's bare name.
        pytest.param({"criteria": [{"field": "contact.plan", "op": "eq", "value": "pro"}]},
                     {"attributes": {"plan": "pro"}}, True, id="attribute-short-name"),
        # A missing attribute never matches (except not_exists).
        pytest.param({"criteria": [PLAN_PRO]}, {}, False, id="attribute-missing"),
        pytest.param({"criteria": [{"field": "contact.plan", "op": "not_exists"}]}, {}, True,
                     id="attribute-not-exists"),
        # Profile counters compare as numbers.
        pytest.param({"criteria": [{"field": "contact.purchases", "op": "gte", "value": 2}]},
                     {"purchases": 2}, True, id="purchases-gte-2-of-2"),
        pytest.param({"criteria": [{"field": "contact.purchases", "op": "gte", "value": 2}]},
                     {"purchases": 1}, False, id="purchases-gte-2-of-1"),
        # Membership criteria need no field.
        pytest.param({"criteria": [{"op": "not_has_tag", "value": "churned"}]},
                     {"tags": ["churned"]}, False, id="criterion-not-has-tag"),
        # Everything together: in a group, one of the tags, the plan, not excluded.
        pytest.param({"groups": ["vip"], "tags": ["a", "b"], "tags_match": "any",
                      "exclude_groups": ["staff"], "criteria": [PLAN_PRO]},
                     {"groups": ["vip"], "tags": ["b"], "attributes": {"plan": "pro"}}, True,
                     id="all-rules-hold"),
        pytest.param({"groups": ["vip"], "tags": ["a", "b"], "tags_match": "any",
                      "exclude_groups": ["staff"], "criteria": [PLAN_PRO]},
                     {"groups": ["vip"], "tags": ["b"], "attributes": {"plan": "free"}}, False,
                     id="all-rules-but-criteria"),
        pytest.param({"groups": ["vip"], "tags": ["a", "b"], "tags_match": "any",
                      "exclude_groups": ["staff"], "criteria": [PLAN_PRO]},
                     {"groups": ["vip"], "attributes": {"plan": "pro"}}, False,
                     id="all-rules-but-tags"),
    ],
)
def test_in_audience(rules: dict[str, Any], member: dict[str, Any], expected: bool) -> None:
    """Groups any-of, tags all/any-of, exclusions win, criteria read the contact."""
    attributes = {"first_name": "Ada", **member.pop("attributes", {})}
    assert expected is in_audience(audience(**rules), contact(attributes=attributes, **member))


# -- handle_delivery: sends -----------------------------------------------------------------


def test_contact_in_audience_gets_one_send() -> None:
    """Ada gets exactly one SMS, rendered from her profile, from the campaign's workflow;
    her new state marks the occurrence; the stored state is left as it was."""
    ada = contact()
    outcome, verdict = deliver(ada, campaign(), T0)
    (send,) = outcome.effects.sends
    assert (Verdict("sent"), "sms", "+14155550101", "Hi Ada, 20% off today") == (
        verdict, send.channel, send.to, send.body)
    assert send.origin is not None
    assert ("campaign", "spring", "campaign:spring", "send") == (
        send.origin.kind, send.origin.campaign_id, send.origin.workflow_id,
        send.origin.step_id)
    assert ({"spring": OCC}, [], []) == (
        new_state(outcome)["campaigns"], outcome.effects.audit, outcome.effects.events)
    assert "campaigns" not in ada and not ada["executions"]


def test_template_may_read_the_campaign_event() -> None:
    """The synthetic campaign.started is the execution's trigger: templates can name the
    occurrence (run_id) and the campaign."""
    c = campaign(id="runs", content={"body": "{{event.data.campaign_id}} of {{event.data.run_id}}"})
    outcome, _ = deliver(contact(), c, T0)
    assert [f"runs of {OCC}"] == [s.body for s in outcome.effects.sends]


WEEKLY = {"type": "recurring", "cron": "0 9 * * MON", "timezone": NEW_YORK}


def _message_id(state: State, c: dict[str, Any], occurrence: str, now: datetime) -> str:
    outcome, verdict = deliver(state, c, now, occurrence=occurrence)
    assert Verdict("sent") == verdict
    return outcome.effects.sends[0].message_id


def test_message_id_is_deterministic() -> None:
    """A redo from the same stored state (even later) sends under the same message id;
    another contact or another occurrence gets another one."""
    weekly = campaign(schedule=WEEKLY)
    ada, bob = contact(), contact("c-2", phone="+14155550102")
    first = _message_id(ada, weekly, OCC, T0)
    redo = _message_id(ada, weekly, OCC, T0 + 10 * MINUTE)
    other_contact = _message_id(bob, weekly, OCC, T0)
    next_week = _message_id(ada, weekly, "2026-03-09T09:00", T0 + 7 * DAY)
    assert (first, 3) == (redo, len({first, other_contact, next_week}))


@pytest.mark.parametrize(
    ("occurrence", "expected"),
    [
        # The occurrence already delivered: nothing happens again.
        pytest.param("2026-03-09T09:00", "done", id="same"),
        # An older one (a late or replayed fan-out) neither.
        pytest.param(OCC, "done", id="older"),
        # The next one is delivered.
        pytest.param("2026-03-16T09:00", "sent", id="newer"),
    ],
)
def test_each_occurrence_reaches_a_contact_once(occurrence: str, expected: str) -> None:
    """After the 9 March occurrence reached Ada, only a newer occurrence sends again."""
    weekly = campaign(schedule=WEEKLY)
    delivered, verdict = deliver(contact(), weekly, T0 + 7 * DAY,
                                 occurrence="2026-03-09T09:00")
    assert Verdict("sent") == verdict
    at = resolve(parse_local(occurrence), ZoneInfo(NEW_YORK))
    outcome, verdict = deliver(new_state(delivered), weekly, at, occurrence=occurrence)
    if expected == "done":
        assert (Verdict("done"), None, 0) == (
            verdict, outcome.state, len(outcome.effects.sends) + len(outcome.effects.audit))
    else:
        assert (Verdict("sent"), 1, {"spring": occurrence}) == (
            verdict, len(outcome.effects.sends), new_state(outcome)["campaigns"])


@pytest.mark.parametrize(
    "state",
    [
        # In another group than the audience's.
        pytest.param(contact(groups=["newsletter"]), id="not-in-group"),
        # No stored state at all (a key without a contact).
        pytest.param(None, id="no-state"),
    ],
)
def test_not_in_audience_changes_nothing(state: State | None) -> None:
    outcome, verdict = deliver(state, campaign(audience={"groups": ["vip"]}), T0)
    assert (Verdict("not_in_audience"), None, False) == (
        verdict, outcome.state, bool(outcome.effects))


# -- handle_delivery: the send gate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "suppressed", "policy", "verdict", "reason"),
    [
        # SMS needs consent: none given.
        pytest.param({"consent": {}}, None, {}, "suppressed", "no_consent", id="no-consent"),
        # Consent withdrawn.
        pytest.param({"consent": {"sms": False}}, None, {}, "suppressed", "opted_out",
                     id="opted-out"),
        # The number is on the account's suppression list.
        pytest.param({}, {"+14155550101": "hard_bounce"}, {}, "suppressed", "suppressed",
                     id="suppressed-address"),
        # No number to send to.
        pytest.param({"phone": None}, None, {}, "dropped", "no_destination",
                     id="no-phone"),
        # 23:00 in Tokyo, and the account drops (not defers) in quiet hours.
        pytest.param({"timezone": "Asia/Tokyo"}, None,
                     {"quiet_hours": {"policy": "drop"}}, "dropped", "quiet_hours",
                     id="quiet-hours-drop"),
    ],
)
def test_gate_drops_are_audited_and_marked(
    fields: dict[str, Any], suppressed: dict[str, str] | None, policy: dict[str, Any],
    verdict: str, reason: str,
) -> None:
    """A send the gate drops is not sent, is audited with its reason and message id, and
    the occurrence still counts as delivered (it is not tried again)."""
    c = campaign()
    defs = definitions(c, policy=account_policy(**policy))
    outcome, got = deliver(contact(**fields), c, T0, defs=defs, suppressed=suppressed)
    state = new_state(outcome)
    (ex,) = executions(state).values()
    assert (Verdict(verdict), [], [(reason, "drop", ex["history"][0]["message_id"])],
            {"spring": OCC}) == (
        got, outcome.effects.sends,
        [(a["reason"], a["action"], a["message_id"]) for a in outcome.effects.audit],
        state["campaigns"])


def test_quiet_hours_defer_then_the_wakeup_sends() -> None:
    """At 23:00 in Tokyo the SMS waits for 08:00 there (the execution waits, the contact's
    next_due says when); the wake-up then sends it under the same message id."""
    c = campaign()
    defs = definitions(c)
    outcome, verdict = deliver(contact(timezone="Asia/Tokyo"), c, T0, defs=defs)
    state = new_state(outcome)
    morning = datetime(2026, 3, 3, 8, tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    (ex,) = executions(state).values()
    (audit,) = outcome.effects.audit
    assert (Verdict("deferred"), [], "waiting", morning.isoformat(), morning.isoformat()) == (
        verdict, outcome.effects.sends, ex["status"], ex["due_at"], state["next_due"])
    assert ("quiet_hours_deferred", "defer", morning.isoformat()) == (
        audit["reason"], audit["action"], audit["deferred_until"])
    woken = handle_wakeup(state, Wakeup(ACCOUNT, "c-1"), context(defs), morning)  # type: ignore[arg-type]
    assert [(audit["message_id"], "campaign:spring")] == [
        (s.message_id, s.origin and s.origin.workflow_id) for s in woken.effects.sends]


@pytest.mark.parametrize(
    ("status", "outcome", "sends"),
    [
        # Paused: the deferred send waits on (looked at again later), nothing goes out.
        pytest.param("paused", "held", 0, id="paused"),
        # Cancelled: it ends, audited as a send that will never go out.
        pytest.param("cancelled", "cancelled", 0, id="cancelled"),
        pytest.param("running", "completed", 1, id="running"),
    ],
)
def test_a_deferred_campaign_send_follows_the_campaign(status: str, outcome: str,
                                                        sends: int) -> None:
    """A send deferred by quiet hours, woken while its campaign is paused or cancelled."""
    c = campaign()
    defs = definitions(c)
    deferred = new_state(deliver(contact(timezone="Asia/Tokyo"), c, T0, defs=defs)[0])
    morning = datetime(2026, 3, 3, 8, tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    defs.statuses = {"spring": status}
    woken = handle_wakeup(deferred, Wakeup(ACCOUNT, "c-1"), context(defs), morning)  # type: ignore[arg-type]
    (ex,) = executions(new_state(woken)).values()
    assert (sends, outcome) == (len(woken.effects.sends), ex["history"][-1]["outcome"])
    if status == "paused":
        assert ("waiting", (morning + HOLD).isoformat()) == (ex["status"], ex["due_at"])
    if status == "cancelled":
        assert [("execution_ended", "campaign_cancelled")] == [
            (a["reason"], a["ended_reason"]) for a in woken.effects.audit]


@pytest.mark.parametrize(
    ("on_capped", "verdict", "action", "until"),
    [
        # The default: the sixth marketing SMS of the day is dropped.
        pytest.param("drop", "capped", "drop", None, id="drop"),
        # Or it waits for the next local day (midnight in New York).
        pytest.param("defer", "deferred", "defer", "2026-03-03T05:00:00+00:00", id="defer"),
    ],
)
def test_frequency_cap(on_capped: str, verdict: str, action: str, until: str | None) -> None:
    """Five SMS already went to Ada today (New York): the day cap of 5 is reached."""
    ada = contact()
    ada["sends"] = records(*(T0 - n * MINUTE for n in range(1, 6)))
    outcome, got = deliver(ada, campaign(delivery={"on_capped": on_capped}), T0)
    (audit,) = outcome.effects.audit
    assert (Verdict(verdict), [], ("frequency_capped", action, until)) == (
        got, outcome.effects.sends,
        (audit["reason"], audit["action"], audit.get("deferred_until")))


# -- handle_delivery: contact-local time ------------------------------------------------------

#: 10:00 on 2 March in each contact's own zone; Chicago for contacts without one.
LOCAL_TEN = {"type": "once", "at": "2026-03-02T10:00", "timezone": "America/Chicago"}


def _utc(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, 2, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "now", "expected"),
    [
        # Los Angeles' 10:00 is 18:00 UTC: not yet at 14:00 UTC.
        pytest.param({"timezone": "America/Los_Angeles"}, T0, Verdict("later", _utc(18)),
                     id="la-before"),
        # Once it has come, she gets it.
        pytest.param({"timezone": "America/Los_Angeles"}, _utc(18), Verdict("sent"),
                     id="la-at-ten"),
        # No zone on the contact: the delivery's (Chicago, 16:00 UTC), not the account's
        # (UTC) nor New York's.
        pytest.param({}, T0, Verdict("later", _utc(16)), id="no-zone-uses-delivery-zone"),
        pytest.param({}, _utc(16), Verdict("sent"), id="no-zone-at-ten"),
        # Berlin's 10:00 (09:00 UTC) has passed: sent now.
        pytest.param({"timezone": "Europe/Berlin"}, T0, Verdict("sent"), id="berlin-after"),
    ],
)
def test_contact_local_delivery(fields: dict[str, Any], now: datetime,
                                expected: Verdict) -> None:
    """Each contact at 10:00 in their own zone: earlier, the delivery says when and
    changes nothing; from then on it sends."""
    outcome, verdict = deliver(contact(**fields), campaign(
        schedule=LOCAL_TEN, delivery={"contact_local_time": True}), now)
    assert expected == verdict
    if expected.outcome == "later":
        assert (None, False) == (outcome.state, bool(outcome.effects))
    else:
        assert 1 == len(outcome.effects.sends)


def test_contact_local_lateness_counts_from_the_contacts_time() -> None:
    """max_lateness counts from the contact's own 10:00: Berlin's was five hours ago, so
    with two hours allowed the send is dropped as too late."""
    c = campaign(schedule=LOCAL_TEN, content={"max_lateness": "2h"},
                 delivery={"contact_local_time": True})
    outcome, verdict = deliver(contact(timezone="Europe/Berlin"), c, T0)
    (ex,) = executions(new_state(outcome)).values()
    assert (Verdict("dropped"), ["too_late"], _utc(9).isoformat()) == (
        verdict, [a["reason"] for a in outcome.effects.audit], ex["scheduled_at"])


# -- handle_delivery: workflows ---------------------------------------------------------------

DRIP = {"type": "drip", "at": OCC, "timezone": NEW_YORK}


def test_linked_workflow_campaign_enrols() -> None:
    """A drip campaign starts its workflow for the contact (which sends its first email)."""
    c = campaign(content=None, workflow="nurture", schedule=DRIP)
    outcome, verdict = deliver(contact(), c, T0, defs=definitions(c, workflows=[NURTURE]))
    state = new_state(outcome)
    (ex,) = executions(state).values()
    assert (Verdict("enrolled"), "nurture", "waiting", ["Welcome"], {"spring": OCC}) == (
        verdict, ex["workflow_id"], ex["status"],
        [s.subject for s in outcome.effects.sends], state["campaigns"])


def test_linked_workflow_already_running_is_not_enrolled() -> None:
    """Ada is in the nurture flow already (its own trigger started it) and its re-entry
    is once_at_a_time: the campaign does not start a second one."""
    c = campaign(content=None, workflow="nurture", schedule=DRIP)
    defs = definitions(c, workflows=[NURTURE])
    ada = contact()
    running = handle_event(ada, parsed_event("custom.nurture", None, event_id="n-1",  # type: ignore[arg-type]
                                             at=T0 - HOUR), context(defs), T0 - HOUR)
    assert ["nurture"] == workflows_run(new_state(running))
    outcome, verdict = deliver(new_state(running), c, T0, defs=defs)
    assert (Verdict("not_enrolled"), ["nurture"], []) == (
        verdict, workflows_run(new_state(outcome)), outcome.effects.sends)


THANKS = workflow("thanks", {"event": "campaign.started", "criteria": [
    {"field": "event.data.campaign_id", "op": "eq", "value": "spring"}]},
    {"thank": email("Thanks for shopping the spring sale")}, reentry="every_time")


@pytest.mark.parametrize(
    ("campaign_id", "started"),
    [
        # The campaign the trigger names starts it.
        pytest.param("spring", ["campaign:spring", "thanks"], id="named-campaign"),
        # Another campaign does not.
        pytest.param("autumn", ["campaign:autumn"], id="other-campaign"),
    ],
)
def test_campaign_started_triggers_the_accounts_workflows(campaign_id: str,
                                                          started: list[str]) -> None:
    """An account workflow triggered by campaign.started (for this campaign) is started
    by the delivery, beside the campaign's own send."""
    c = campaign(id=campaign_id)
    outcome, verdict = deliver(contact(), c, T0, defs=definitions(c, workflows=[THANKS]))
    assert (Verdict("sent"), started, len(started)) == (
        verdict, workflows_run(new_state(outcome)), len(outcome.effects.sends))


@pytest.mark.parametrize("publish", [True, False], ids=["publish", "quiet"])
def test_publish_events(publish: bool) -> None:
    """With publish_events, the contact's campaign.started and (its send gone out)
    campaign.completed are emitted, already marked seen in the new state, so the copies
    that come back change nothing."""
    c = campaign(delivery={"publish_events": publish})
    defs = definitions(c)
    outcome, _ = deliver(contact(), c, T0, defs=defs)
    state = new_state(outcome)
    if not publish:
        assert [] == outcome.effects.events
        return
    started, completed = outcome.effects.events
    for event, kind in ((started, "campaign.started"), (completed, "campaign.completed")):
        assert (kind, "c-1", {"campaign_id": "spring", "run_id": OCC}, True) == (
            event["type"], event["subject"], event["data"], event["id"] in state["seen"])
        echo = parse_event(orjson.dumps(event), b"c-1")
        assert handle_event(state, echo, context(defs), T0 + MINUTE).duplicate  # type: ignore[arg-type]
    assert started["id"] != completed["id"]


def test_content_workflow_runs_every_time_and_never_by_trigger() -> None:
    """A content campaign's workflow: inactive (only deliveries start it), every_time
    re-entry, the schedule's zone, the campaign's on_capped."""
    wf = content_workflow(campaign(delivery={"on_capped": "defer"}), account_policy())
    assert ("campaign:spring", False, "every_time", NEW_YORK, "defer", ["send"]) == (
        wf["id"], wf["active"], wf["reentry"]["policy"], wf["timezone"], wf["on_capped"],
        list(wf["steps"]))


# -- drip joiners ---------------------------------------------------------------------------


def _joiner_campaign(**schedule: Any) -> dict[str, Any]:
    return campaign(content=None, workflow="nurture", audience={"groups": ["vip"]},
                    schedule={**DRIP, "enrol_joiners": True, **schedule})


@pytest.mark.parametrize(
    ("joined", "schedule", "enrolled"),
    [
        # Joins the audience after the drip began: enrolled then.
        pytest.param(T0 + HOUR, {}, True, id="after-at"),
        # Before it began: the scheduled enrolment will reach them, not the join.
        pytest.param(T0 - HOUR, {}, False, id="before-at"),
        # After its until: no longer.
        pytest.param(T0 + 2 * DAY, {"until": "2026-03-03T09:00"}, False, id="after-until"),
    ],
)
def test_drip_enrols_joiners(joined: datetime, schedule: dict[str, Any],
                             enrolled: bool) -> None:
    c = _joiner_campaign(**schedule)
    defs = definitions(c, workflows=[NURTURE])
    event = parsed_event("contact.added_to_group", {"group": "vip"}, event_id="join",
                         at=joined)
    outcome = handle_event(contact(), event, context(defs), joined)  # type: ignore[arg-type]
    state = new_state(outcome)
    assert ((["nurture"], {"spring": OCC}) if enrolled else ([], None)) == (
        workflows_run(state), state.get("campaigns"))


def test_drip_with_seconds_in_at_enrols_a_contact_once() -> None:
    """A drip whose ``at`` has seconds: the scheduled enrolment reaches Ada, and her next
    event does not enrol her again."""
    one_email = workflow("nurture", {"event": "custom.nurture"}, {"hi": email("Welcome")})
    c = _joiner_campaign(at="2026-03-02T09:00:00")
    defs = definitions(c, workflows=[one_email])
    delivered, verdict = deliver(contact(groups=["vip"]), c, T0, defs=defs)
    assert Verdict("enrolled") == verdict
    later = parsed_event("custom.ping", None, event_id="ping", at=T0 + HOUR)
    outcome = handle_event(new_state(delivered), later, context(defs), T0 + HOUR)  # type: ignore[arg-type]
    assert ([], ["nurture"]) == (outcome.effects.sends, workflows_run(new_state(outcome)))


# -- when an occurrence fires -----------------------------------------------------------------

NY = ZoneInfo(NEW_YORK)
UTC_ZONE = ZoneInfo("UTC")
GRACE = 300.0
PUBLISHED = T0 - DAY


def _once(**delivery_options: Any) -> dict[str, Any]:
    return campaign(delivery=delivery_options)


def _first(c: dict[str, Any], zone: ZoneInfo = NY, origin: datetime = PUBLISHED,
           last: str | None = None) -> Occurrence:
    found = next_after(c, zone, origin, last)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("now", "misfire", "expected"),
    [
        # A second before 09:00 New York: nothing yet.
        pytest.param(T0 - SECOND, "fire_once_now", None, id="not-yet"),
        # On time.
        pytest.param(T0, "fire_once_now", "fire", id="on-time"),
        # Still within the 5 minute grace (inclusive), whatever the policy.
        pytest.param(T0 + 5 * MINUTE, "skip", "fire", id="end-of-grace"),
        # Past the grace: a misfire, fired once now...
        pytest.param(T0 + 5 * MINUTE + SECOND, "fire_once_now", "fire", id="late-fire"),
        # ...or skipped.
        pytest.param(T0 + 5 * MINUTE + SECOND, "skip", "skip", id="late-skip"),
    ],
)
def test_once_campaign_due(now: datetime, misfire: str, expected: str | None) -> None:
    c = _once(misfire=misfire)
    occ = _first(c)
    assert (OCC, T0) == (occ.id, occ.at)
    plan = due(c, NY, PUBLISHED, occ, now, GRACE)
    assert {None: None, "fire": Due(occ), "skip": Due(None, (occ,))}[expected] == plan


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        # Published a day before: the occurrence is ahead.
        pytest.param(T0 - DAY, OCC, id="published-before"),
        # A second before.
        pytest.param(T0 - SECOND, OCC, id="published-just-before"),
        # Published at the very instant, or after: it never fires.
        pytest.param(T0, None, id="published-at"),
        pytest.param(T0 + HOUR, None, id="published-after"),
    ],
)
def test_occurrence_at_or_before_publication_never_fires(origin: datetime,
                                                         expected: str | None) -> None:
    found = next_after(_once(), NY, origin, None)
    assert expected == (found and found.id)


EVERY_2H = {"type": "recurring", "cron": "0 */2 * * *", "timezone": "UTC"}
DOWN_FROM = datetime(2026, 3, 2, 1, 59, tzinfo=UTC)  # the last tick before the outage


def _two_hourly(misfire: str) -> dict[str, Any]:
    return campaign(schedule=EVERY_2H, delivery={"misfire": misfire})


@pytest.mark.parametrize(
    ("misfire", "now", "fired", "skipped"),
    [
        # Back at 09:10 after 7 hours down: the newest (08:00) fires, 02/04/06 skipped.
        pytest.param("fire_once_now", _utc(9, 10), "08:00", ["02:00", "04:00", "06:00"],
                     id="fire-once-now"),
        # With skip all four are skipped: 08:00 is past its grace too.
        pytest.param("skip", _utc(9, 10), None, ["02:00", "04:00", "06:00", "08:00"],
                     id="skip-all"),
        # Back at 08:03, the newest is within its grace: it fires, the older are skipped.
        pytest.param("skip", _utc(8, 3), "08:00", ["02:00", "04:00", "06:00"],
                     id="skip-but-newest-in-grace"),
        # Back at 08:06 with fire_once_now: 08:00 still fires (late).
        pytest.param("fire_once_now", _utc(8, 6), "08:00", ["02:00", "04:00", "06:00"],
                     id="fire-once-now-just-late"),
    ],
)
def test_recurring_misfire_after_an_outage(misfire: str, now: datetime, fired: str | None,
                                           skipped: list[str]) -> None:
    """A campaign every 2 hours, with no worker from 01:59 on."""
    c = _two_hourly(misfire)
    first = _first(c, UTC_ZONE, DOWN_FROM - HOUR)
    plan = due(c, UTC_ZONE, DOWN_FROM - HOUR, first, now, GRACE)
    assert plan is not None
    assert (fired, skipped) == (
        plan.occurrence and plan.occurrence.id[11:], [o.id[11:] for o in plan.skipped])


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        # Nothing started yet: the first after publication.
        pytest.param(None, "2026-03-02T02:00", id="none"),
        # 04:00 started: the next is 06:00.
        pytest.param("2026-03-02T04:00", "2026-03-02T06:00", id="after-04"),
        # A last that is not itself an occurrence still bounds the next.
        pytest.param("2026-03-02T05:00", "2026-03-02T06:00", id="after-05"),
    ],
)
def test_last_excludes_occurrences_up_to_it(last: str | None, expected: str) -> None:
    assert expected == _first(_two_hourly("skip"), UTC_ZONE, DOWN_FROM - HOUR, last).id


def test_two_hourly_cron_passes_the_default_minimum_interval() -> None:
    assert "0 */2 * * *" == _two_hourly("skip")["schedule"]["cron"]


@pytest.mark.parametrize(
    ("now", "misfire", "expected"),
    [
        # UTC+14 shows 10:00 on 2 March at 20:00 UTC on 1 March: not a second earlier...
        pytest.param(datetime(2026, 3, 1, 19, 59, 59, tzinfo=UTC), "skip", None,
                     id="before-the-first-zone"),
        # ...from then on it fires.
        pytest.param(datetime(2026, 3, 1, 20, tzinfo=UTC), "skip", "fire",
                     id="first-zone"),
        # UTC-12 shows it at 22:00 UTC on 2 March; the grace runs from there.
        pytest.param(_utc(22, 5), "skip", "fire", id="last-zone-plus-grace"),
        # Past it: a misfire, skipped...
        pytest.param(_utc(22, 5) + SECOND, "skip", "skip", id="late-skip"),
        # ...or fired once now.
        pytest.param(_utc(22, 5) + SECOND, "fire_once_now", "fire", id="late-fire"),
    ],
)
def test_contact_local_occurrence_spans_every_zone(now: datetime, misfire: str,
                                                   expected: str | None) -> None:
    """A contact-local occurrence starts when the first zone's clock shows its time
    (14 h before that wall time in UTC) and misfires only after the last zone's (12 h
    after) plus the grace."""
    c = campaign(schedule={"type": "once", "at": "2026-03-02T10:00", "timezone": NEW_YORK},
                 delivery={"contact_local_time": True, "misfire": misfire})
    occ = _first(c, NY, datetime(2026, 2, 1, tzinfo=UTC))
    assert datetime(2026, 3, 1, 20, tzinfo=UTC) == starts_at(c, occ)
    plan = due(c, NY, datetime(2026, 2, 1, tzinfo=UTC), occ, now, GRACE)
    assert {None: None, "fire": Due(occ), "skip": Due(None, (occ,))}[expected] == plan


# -- the throttle -----------------------------------------------------------------------------

STEP = 0.05  # seconds between the simulation's looks at the clock
WINDOW = round(60 / STEP)  # a minute, in steps
ANCHOR = 1_772_460_000.0  # a POSIX time in March 2026


def simulate(rate: int, partitions: int, minutes: float,
             busy: Callable[[int, int], bool] = lambda p, step: True) -> list[tuple[int, int]]:
    """Every partition takes all the sends it is allowed whenever ``busy(partition, step)``;
    the (step, partition) of each send, over ``minutes``."""
    throttles = [Throttle(rate, p, partitions, ANCHOR) for p in range(partitions)]
    sends = []
    for step in range(round(minutes * 60 / STEP) + 1):
        now = ANCHOR + step * STEP
        for throttle in throttles:
            if busy(throttle.partition, step):
                allowed = throttle.allowed(now)
                sends += [(step, throttle.partition)] * allowed
                throttle.use(allowed)
    return sends


def most_in_a_minute(steps: list[int]) -> int:
    """The most sends any half-open 60 s window holds."""
    steps = sorted(steps)
    most, left = 0, 0
    for right, step in enumerate(steps):
        while step - steps[left] >= WINDOW:
            left += 1
        most = max(most, right - left + 1)
    return most


@pytest.mark.parametrize(
    ("rate", "partitions", "minutes"),
    [
        # Fewer sends per minute than partitions: each partition's slots are minutes apart.
        pytest.param(3, 8, 6, id="r3-p8"),
        # A rate the partitions do not divide.
        pytest.param(7, 3, 5, id="r7-p3"),
        pytest.param(13, 5, 4, id="r13-p5"),
        # One a second over four partitions.
        pytest.param(60, 4, 3, id="r60-p4"),
        # One partition.
        pytest.param(5, 1, 3, id="r5-p1"),
    ],
)
def test_throttle_holds_campaign_wide(rate: int, partitions: int, minutes: int) -> None:
    """Every partition sending whenever allowed: no minute holds more than the rate, the
    partitions share fairly, and the total is the rate times the minutes."""
    sends = simulate(rate, partitions, minutes)
    per_partition = [sum(1 for _, p in sends if p == q) for q in range(partitions)]
    assert most_in_a_minute([s for s, _ in sends]) <= rate
    assert max(per_partition) - min(per_partition) <= 1
    assert abs(len(sends) - rate * minutes) <= partitions


@pytest.mark.parametrize(
    ("used", "at", "allowed", "next_slot"),
    [
        # Partition 2 of 4 at 6 per minute (a slot every 10 s) owns slots 2, 6, 10...:
        # nothing before its first, at 20 s,
        pytest.param(0, -1.0, 0, 20.0, id="before-anchor"),
        pytest.param(0, 19.99, 0, 20.0, id="before-first-slot"),
        # which it may use from then on,
        pytest.param(0, 20.0, 1, 20.0, id="first-slot"),
        pytest.param(0, 20.99, 1, 20.0, id="within-tolerance"),
        # but not later than the tolerance (1 s): forfeited, the next is at 60 s.
        pytest.param(0, 21.0, 0, 60.0, id="forfeited"),
        pytest.param(0, 60.0, 1, 60.0, id="second-slot"),
        # Used: nothing more until the next.
        pytest.param(1, 20.5, 0, 60.0, id="used"),
        # Two minutes later only the newest slot (140 s) is left, not a backlog.
        pytest.param(0, 140.5, 1, 140.0, id="no-backlog"),
    ],
)
def test_throttle_slots(used: int, at: float, allowed: int, next_slot: float) -> None:
    throttle = Throttle(6, 2, 4, ANCHOR)
    throttle.use(used)
    assert (allowed, ANCHOR + next_slot) == (throttle.allowed(ANCHOR + at),
                                             throttle.next_slot())


def test_throttle_idle_partition_does_not_burst() -> None:
    """A partition that had nobody to send to for five minutes (contacts out of the
    audience, or a contact-local wave still to come) then sends one per slot again, not
    the five minutes' slots at once."""
    idle = round(5 * 60 / STEP)
    sends = simulate(6, 1, 7, busy=lambda p, step: step >= idle)
    steps = [s for s, _ in sends]
    assert (6, 13, idle) == (most_in_a_minute(steps), len(steps), steps[0])


def test_simulation_counts_a_burst() -> None:
    """The window count itself: 7 sends at once are 7 in a minute; spread 10 s apart, 6."""
    assert (7, 6) == (most_in_a_minute([0] * 7),
                      most_in_a_minute([n * round(10 / STEP) for n in range(7)]))

