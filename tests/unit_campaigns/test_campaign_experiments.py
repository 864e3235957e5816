"""A campaign's A/B test, control group and conversions, and the account holdout, without a
broker: the campaign runs as the workflow ``campaign:<id>`` (a split to one send per
variant), so assignment, held-back sends and windows are a workflow's
(docs/experiments.md)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from streams.definitions import AccountPolicy, DefinitionError, parse_any, parse_campaign
from tables.campaigns import COUNTERS, Verdict, content_workflow
from tables.experiments import choose, in_control, in_holdout
from tables.handlers import Wakeup, handle_event, handle_wakeup
from tests.unit_campaigns.test_campaigns import (
    ACCOUNT,
    DAY,
    T0,
    campaign,
    contact,
    context,
    definitions,
    deliver,
    new_state,
)
from tests.unit_compliance.support import policy as account_policy
from tests.unit_workflows.support import parsed_event

VARIANTS = [
    {"name": "pct", "weight": 3, "content": {"channel": "sms", "body": "20% off today"}},
    {"name": "ship", "weight": 1, "content": {"channel": "sms", "body": "Free shipping today"}},
]
EXPERIMENT = {"control": 20, "conversion": {
    "event": "purchase.completed", "window": "3d", "revenue": "event.data.amount"}}
BRANCHES = [{"name": v["name"], "weight": v["weight"], "next": f"send:{v['name']}"}
            for v in VARIANTS]


def ab(**more: Any) -> dict[str, Any]:
    return campaign(**{"content": None, "variants": VARIANTS, "experiment": EXPERIMENT, **more})


def arm(contact_id: str, holdout: float = 0) -> str:
    if in_holdout(ACCOUNT, contact_id, holdout):
        return "holdout"
    if in_control(ACCOUNT, contact_id, "campaign:spring", 20):
        return "control"
    return str(choose(ACCOUNT, contact_id, "campaign:spring", "variants", BRANCHES)["name"])


def test_each_contact_gets_its_variant_and_the_control_nothing() -> None:
    """Forty contacts: each treated one gets its variant's text marked with the variant,
    each control member nothing (audited control_group, counted held_back); a redelivery
    (a replay) changes nothing; every entry has its window."""
    c = ab()
    seen = set()
    for n in range(40):
        cid = f"c-{n}"
        outcome, verdict = deliver(contact(cid), c, T0)
        expected = arm(cid)
        seen.add(expected)
        state = new_state(outcome)
        [window] = state["attribution"].values()
        assert window["variant"] == expected
        if expected == "control":
            assert verdict == Verdict("held_back") and outcome.effects.sends == []
            [audit] = outcome.effects.audit
            assert (audit["reason"], audit["action"]) == ("control_group", "drop")
        else:
            [send] = outcome.effects.sends
            body = next(v["content"]["body"] for v in VARIANTS if v["name"] == expected)
            assert (verdict, send.variant, send.body) == (Verdict("sent"), expected, body)
            assert send.origin is not None and send.origin.step_id == f"send:{expected}"
        again, _ = deliver(state, c, T0 + DAY)
        assert again.state is None and again.effects.sends == []
    assert seen == {"control", "pct", "ship"}
    assert "held_back" in COUNTERS


def test_a_campaign_conversion_closes_on_the_contacts_timer() -> None:
    c = ab()
    defs = definitions(c)
    cid = next(f"c-{n}" for n in range(50) if arm(f"c-{n}") == "pct")
    outcome, _ = deliver(contact(cid), c, T0, defs=defs)
    state = new_state(outcome)
    buy = parsed_event("purchase.completed", {"order_id": "o-9", "amount": 30,
                                              "currency": "USD"},
                       event_id="buy", at=T0 + DAY, contact_id=cid)
    state = new_state(handle_event(state, buy, context(defs), T0 + DAY))
    closed = handle_wakeup(state, Wakeup(ACCOUNT, cid), context(defs), T0 + 3 * DAY)
    [record] = closed.effects.outcomes
    assert (record["workflow_id"], record["variant"], record["sends"], record["converted"],
            record["revenue"]) == ("campaign:spring", "pct", 1, True, 30.0)


def test_the_account_holdout_is_sent_no_marketing_and_is_its_own_arm() -> None:
    """A 30 % holdout: its members get no campaign send (audited holdout) and are the arm
    ``holdout`` of the campaign's experiment; a transactional workflow send still goes to
    them; membership is stable and nested as the share grows."""
    c = ab()
    defs = definitions(c, policy=account_policy(holdout=30))
    members = [f"c-{n}" for n in range(60) if in_holdout(ACCOUNT, f"c-{n}", 30)]
    assert 5 < len(members) < 35
    for cid in members[:5]:
        outcome, verdict = deliver(contact(cid), c, T0, defs=defs)
        assert verdict == Verdict("held_back") and outcome.effects.sends == []
        assert [a["reason"] for a in outcome.effects.audit] == ["holdout"]
        [window] = new_state(outcome)["attribution"].values()
        assert window["variant"] == "holdout"
    # A plain workflow (no experiment): marketing held back, transactional sent.
    receipt = {"id": "receipt", "account": ACCOUNT, "name": "Receipt", "version": 1,
               "trigger": {"event": "purchase.completed"}, "start": "promo",
               "steps": {"promo": {"kind": "send_sms", "body": "More deals", "next": "r"},
                         "r": {"kind": "send_sms", "body": "Thanks", "transactional": True}}}
    flows = definitions(workflows=[parse_any(receipt).model_dump(mode="json")],
                        policy=account_policy(holdout=30))
    buy = parsed_event("purchase.completed", {"order_id": "o-1", "amount": 5,
                                              "currency": "USD"},
                       event_id="b", at=T0, contact_id=members[0])
    out = handle_event(contact(members[0]), buy, context(flows), T0)
    assert [s.body for s in out.effects.sends] == ["Thanks"]
    assert [a["reason"] for a in out.effects.audit] == ["holdout"]
    # Its share is the percentage, within binomial bounds, over 100,000 contacts.
    n = 100_000
    count = sum(in_holdout(ACCOUNT, f"h-{i}", 10) for i in range(n))
    assert abs(count - n * 0.1) < 4.5 * math.sqrt(n * 0.1 * 0.9)
    # Nested: a larger share keeps every member of a smaller one.
    ids = [f"x-{n}" for n in range(2000)]
    small = {i for i in ids if in_holdout(ACCOUNT, i, 5)}
    assert small <= {i for i in ids if in_holdout(ACCOUNT, i, 15)}
    assert not any(in_holdout(ACCOUNT, i, 0) for i in ids)


def test_the_content_workflow_of_variants() -> None:
    made = content_workflow(ab(), account_policy())
    assert made["start"] == "variants" and made["experiment"]["control"] == 20
    assert [b["next"] for b in made["steps"]["variants"]["branches"]] == [
        "send:pct", "send:ship"]
    assert made["steps"]["send:ship"]["body"] == "Free shipping today"


@pytest.mark.parametrize(("change", "message"), [
    ({"content": {"channel": "sms", "body": "x"}}, "give exactly one of content"),
    ({"variants": [VARIANTS[0], {**VARIANTS[1], "name": "control"}]}, "'control' and "),
    ({"variants": [VARIANTS[0], {**VARIANTS[1], "name": "pct"}]}, "unique"),
    ({"variants": [VARIANTS[0]]}, "at least 2"),
    ({"variants": [VARIANTS[0], {**VARIANTS[1], "content": {
        "channel": "sms", "body": "{{nope}}"}}]}, "variants.1.content.body: unknown template"),
])
def test_a_bad_variant_list_is_named(change: dict[str, Any], message: str) -> None:
    raw = {"kind": "campaign", "id": "spring", "account": ACCOUNT, "name": "S", "version": 1,
           "variants": VARIANTS, "schedule": {"type": "once", "at": "2030-01-01T10:00"},
           **change}
    with pytest.raises(DefinitionError) as info:
        parse_campaign(raw)
    assert message in str(info.value)


def test_an_experiment_belongs_to_the_linked_workflow() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_campaign({"kind": "campaign", "id": "d", "account": ACCOUNT, "name": "D",
                        "version": 1, "workflow": "nurture", "experiment": EXPERIMENT,
                        "schedule": {"type": "once", "at": "2030-01-01T10:00"}})
    assert "give experiment in the workflow" in str(info.value)


def test_bodies_without_the_new_fields_dump_as_before() -> None:
    """A campaign without variants or experiment, a policy without holdout and a
    conversion from entry dump without the new keys (the API's store compares bodies)."""
    assert not {"variants", "experiment"} & set(campaign())
    assert "holdout" not in AccountPolicy(account=ACCOUNT).model_dump(mode="json")
    assert "after" not in ab()["experiment"]["conversion"]
    sent = ab(experiment={**EXPERIMENT, "conversion": {**EXPERIMENT["conversion"],
                                                       "after": "send"}})
    assert sent["experiment"]["conversion"]["after"] == "send"
