"""Message categories, subscription preferences and per-category caps (docs/preferences.md),
without a broker: the event that changes preferences, the gate's answer for each category,
and a category's caps beside the account's, in the contact's local calendar."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from streams.definitions import DefinitionError, parse_any
from tables.compliance import cap_until
from tables.contacts import ContactState
from tables.gate import Compliance, decide
from tables.handlers import Context, handle_event
from tables.preferences import LinkError, Links, sign, verify
from tests.unit_campaigns.test_campaigns import T0, campaign, context, definitions, deliver
from tests.unit_campaigns.test_campaigns import contact as contact_state
from tests.unit_compliance.support import LA, caps, local, policy, record
from tests.unit_workflows.support import ACCOUNT, Registry, definition, parsed_event

PROMOTIONS = {"id": "promotions", "name": "Promotions", "caps": {"week": 2}}
ORDERS = {"id": "order_updates", "name": "Order updates"}
NEWS = {"id": "newsletter", "name": "Newsletter", "subscribed_by_default": False}
RECEIPTS = {"id": "receipts", "name": "Receipts", "transactional": True}
CATEGORIES = [PROMOTIONS, ORDERS, NEWS, RECEIPTS]
WED = local(LA, 2026, 3, 4, 12)  # Wednesday 4 March 2026 12:00 in Los Angeles
NEXT_MONDAY = local(LA, 2026, 3, 9)


def rules(**changes: Any) -> dict[str, Any]:
    return policy(categories=CATEGORIES, quiet_hours=None, **changes)


def contact(preferences: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    return {"account": ACCOUNT, "contact_id": "ann", "phone": "+14155550101",
            "email": "ann@example.com", "timezone": "America/Los_Angeles",
            "consent": {"sms": True, "email": True}, "sends": [],
            "preferences": preferences or {}, **more}


def command(category: str | None, channel: str = "sms", **more: Any) -> dict[str, Any]:
    out = {"message_id": "m-1", "channel": channel, "to": "+14155550101",
           "expires_at": "2030-01-01T00:00:00+00:00", "transactional": False, **more}
    if category is not None:
        out["category"] = category
    return out


def pref(subscribed: bool, at: str = "2026-03-01T00:00:00+00:00") -> dict[str, Any]:
    return {"subscribed": subscribed, "at": at, "source": "test"}


@pytest.mark.parametrize(("preferences", "category", "channel", "expected"), [
    # No choice made: a category's default (subscribed), an opt-in category's (not).
    ({}, "promotions", "sms", "send"),
    ({}, "newsletter", "sms", "category_unsubscribed"),
    # Unsubscribed from promotions everywhere: no promotions, order updates still go.
    ({"promotions": {"*": pref(False)}}, "promotions", "sms", "category_unsubscribed"),
    ({"promotions": {"*": pref(False)}}, "order_updates", "sms", "send"),
    # Unsubscribed on email only: an SMS promotion goes.
    ({"promotions": {"email": pref(False)}}, "promotions", "sms", "send"),
    ({"promotions": {"email": pref(False)}}, "promotions", "email", "category_unsubscribed"),
    # A channel's own choice wins over the all-channel one.
    ({"promotions": {"*": pref(False), "sms": pref(True)}}, "promotions", "sms", "send"),
    # Subscribed to the opt-in newsletter.
    ({"newsletter": {"*": pref(True)}}, "newsletter", "email", "send"),
    # A category the policy does not declare: subscribed unless the contact said no.
    ({}, "surveys", "sms", "send"),
    ({"surveys": {"*": pref(False)}}, "surveys", "sms", "category_unsubscribed"),
    # A send without a category: preferences do not apply.
    ({"promotions": {"*": pref(False)}}, None, "sms", "send"),
])
def test_the_gate_honours_each_category(preferences: dict[str, Any], category: str | None,
                                        channel: str, expected: str) -> None:
    decision = decide(command(category, channel), contact(preferences), rules(), False, WED)
    assert (decision.reason or decision.action) == expected


def test_stop_still_stops_everything() -> None:
    stopped = contact({"order_updates": {"*": pref(True)}}, consent={"sms": False})
    assert decide(command("order_updates"), stopped, rules(), False, WED).reason == "opted_out"


def test_a_categorys_cap_holds_while_the_accounts_allows_more() -> None:
    """Promotions 2 a week beside the account's 5/20/50: two promotions this week cap a
    third until next Monday (local), while other sends go on; with defer, it waits."""
    sends = [record(local(LA, 2026, 3, d, 10), ident=f"p-{d}") | {"category": "promotions"}
             for d in (2, 3)]
    who = contact(sends=sends)
    assert decide(command("promotions"), who, rules(), False, WED).reason == "frequency_capped"
    deferred = decide(command("promotions"), who, rules(), False, WED, "defer")
    assert (deferred.action, deferred.until) == ("defer", NEXT_MONDAY)
    assert decide(command("order_updates"), who, rules(), False, WED).action == "send"
    assert decide(command(None), who, rules(), False, WED).action == "send"
    # The account's caps count every send: five today fill the day for every category.
    today = [record(local(LA, 2026, 3, 4, h), ident=f"o-{h}") for h in (7, 8, 9, 10, 11)]
    full = contact(sends=sends + today)
    assert decide(command("order_updates"), full, rules(), False, WED).reason == \
        "frequency_capped"
    # cap_until itself: a category's window counts only that category's sends.
    assert cap_until(today[:3], policy(categories=CATEGORIES, caps=caps()), who, "sms", LA,
                     WED, "promotions") == (False, None)


def test_a_transactional_category_passes_caps_and_preferences() -> None:
    capped = contact({"receipts": {"*": pref(False)}},
                     sends=[record(local(LA, 2026, 3, 4, h), ident=f"m-{h}")
                            for h in range(1, 6)])
    assert decide(command("receipts", transactional=True), capped, rules(), False,
                  WED).action == "send"


def ctx(*flows: dict[str, Any], **changes: Any) -> Context:
    return Context(Registry(*flows, policy=rules(**changes)), lambda account, address: None)


FLOW = definition({
    "id": "order", "account": ACCOUNT, "name": "Order", "version": 1,
    "trigger": {"event": "purchase.completed"}, "start": "update",
    "steps": {"update": {"kind": "send_sms", "body": "Shipped", "category": "order_updates",
                         "next": "promo"},
              "promo": {"kind": "send_sms", "body": "20% off", "category": "promotions",
                        "next": "receipt"},
              "receipt": {"kind": "send_email", "subject": "Receipt", "body": "Receipt",
                          "category": "receipts"}}})


def event(event_type: str, data: dict[str, Any], n: int, at: datetime) -> Any:
    return parsed_event(event_type, data, event_id=f"e-{n}", at=at, contact_id="ann")


def test_unsubscribed_from_promotions_keeps_getting_order_updates() -> None:
    """The done-when case through the handlers: an upstream preferences event, then a
    purchase; STOP stops everything, START brings back what was subscribed before."""
    flows = ctx(FLOW)
    state: ContactState | None = None
    for n, (kind, data) in enumerate([
            ("contact.created", {"phone": "+14155550101", "email": "ann@example.com",
                                 "consent": {"sms": True, "email": True},
                                 "timezone": "America/Los_Angeles"}),
            ("contact.preferences_updated",
             {"preferences": [{"category": "promotions", "subscribed": False}],
              "source": "crm"})]):
        state = handle_event(state, event(kind, data, n, WED), flows, WED).state
    assert state is not None
    assert state["preferences"] == {"promotions": {"*": {
        "subscribed": False, "at": WED.isoformat(), "source": "crm"}}}
    buy = {"order_id": "o-1", "amount": 5, "currency": "USD"}
    out = handle_event(state, event("purchase.completed", buy, 2, WED), flows, WED)
    assert [(s.body, s.category, s.transactional) for s in out.effects.sends] == [
        ("Shipped", "order_updates", False), ("Receipt", "receipts", True)]
    assert [a["reason"] for a in out.effects.audit] == ["category_unsubscribed"]
    # STOP, then START: consent comes back, the promotions choice was never lost.
    state = out.state
    for n, word in ((3, "STOP"), (4, "START")):
        state = handle_event(state, event("keyword.received", {
            "keyword": word, "text": word, "to": "+14155550000",
            "from": "+14155550101"}, n, WED), flows, WED).state
    assert state is not None and state["preferences"]["promotions"]["*"]["subscribed"] is False
    again = handle_event(state, event("purchase.completed", {**buy, "order_id": "o-2"}, 5,
                                      WED), flows, WED)
    assert [s.body for s in again.effects.sends] == ["Shipped", "Receipt"]


def test_the_newest_change_wins() -> None:
    flows = ctx()
    early, late = local(LA, 2026, 3, 1), local(LA, 2026, 3, 2)
    changes = [
        (late, [{"category": "promotions", "channel": "sms", "subscribed": True}]),
        (early, [{"category": "promotions", "subscribed": False}]),  # older, arrives later
    ]
    state: ContactState | None = None
    for n, (at, preferences) in enumerate(changes):
        state = handle_event(state, event("contact.preferences_updated",
                                          {"preferences": preferences}, n, at), flows,
                             WED).state
    assert state is not None
    assert {k: v["subscribed"] for k, v in state["preferences"]["promotions"].items()} == {
        "sms": True, "*": False}
    # A newer change for every channel replaces the older per-channel one.
    state = handle_event(state, event("contact.preferences_updated", {"preferences": [
        {"category": "promotions", "subscribed": True}]}, 9, WED), flows, WED).state
    assert state is not None and list(state["preferences"]["promotions"]) == ["*"]


def test_the_policy_checks_its_categories() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_any({"kind": "account", "account": ACCOUNT,
                   "categories": [PROMOTIONS, {**ORDERS, "id": "promotions"}]})
    assert "category ids must be unique" in str(info.value)
    with pytest.raises(DefinitionError) as info:
        parse_any({**FLOW, "steps": {**FLOW["steps"], "update": {
            **FLOW["steps"]["update"], "category": "no spaces"}}})
    assert "steps.update" in str(info.value)


def test_compliance_defaults_know_no_categories() -> None:
    """An account without categories: a send naming one is sent (nothing declared, nothing
    chosen), as before categories existed."""
    assert decide(command("promotions"), contact(), Compliance(policy()).policy, False,
                  WED).action == "send"


def test_a_campaigns_content_names_its_category() -> None:
    """A promotions campaign: a contact unsubscribed from promotions is not sent it
    (counted ``suppressed``), another is, the command naming the category."""
    promo = campaign(content={"category": "promotions"})
    defs = definitions(promo, policy=rules())
    out, verdict = deliver(contact_state("c-1"), promo, T0, defs=defs)
    assert [(s.category, verdict.outcome) for s in out.effects.sends] == [
        ("promotions", "sent")]
    unsubscribed = handle_event(contact_state("c-2"), event(
        "contact.preferences_updated", {"preferences": [
            {"category": "promotions", "subscribed": False}]}, 1, T0), context(defs), T0)
    assert unsubscribed.state is not None
    out, verdict = deliver(dict(unsubscribed.state), promo, T0, defs=defs)
    assert (out.effects.sends, verdict.outcome) == ([], "suppressed")
    assert [a["reason"] for a in out.effects.audit] == ["category_unsubscribed"]


SECRET = b"s3cret"


def test_a_link_names_one_contact_and_expires() -> None:
    expires = WED + timedelta(days=30)
    token = sign(SECRET, ACCOUNT, "team/ann", expires)
    assert verify(SECRET, token, WED) == (ACCOUNT, "team/ann", expires.replace(microsecond=0))
    with pytest.raises(LinkError) as info:
        verify(SECRET, token, expires)
    assert info.value.reason == "expired"
    payload, _, signature = token.partition(".")
    other = sign(SECRET, ACCOUNT, "bob", expires).partition(".")[0]
    changed = signature[:-1] + ("B" if signature[-1] != "B" else "C")
    for forged in (f"{other}.{signature}", f"{payload}.{changed}", payload,
                   f"{payload}x.{signature}", token.replace(".", "")):
        with pytest.raises(LinkError) as info:
            verify(SECRET, forged, WED)
        assert info.value.reason == "invalid", forged
    with pytest.raises(LinkError):
        verify(b"another", token, WED)


def test_preferences_url_renders_the_same_link_for_the_same_send() -> None:
    """The link is made from the send's creation time: a send redone after a crash (a
    later ``now``) or deferred renders the same body; without links the default shows."""
    flow = definition({
        "id": "news", "account": ACCOUNT, "name": "News", "version": 1,
        "trigger": {"event": "contact.created"}, "start": "hello",
        "steps": {"hello": {"kind": "send_sms", "category": "promotions",
                            "body": "Deals! Choose what you get: {{preferences_url|reply "
                                    "STOP to stop}}"}}})
    signup = event("contact.created", {"phone": "+14155550101", "consent": {"sms": True}},
                   0, WED)
    links = Links("https://prefs.example.com/", SECRET, 30)
    with_links = Context(Registry(flow, policy=rules()), lambda a, b: None, links=links)
    [send] = handle_event(None, signup, with_links, WED).effects.sends
    prefix = "Deals! Choose what you get: https://prefs.example.com/preferences/"
    assert send.body.startswith(prefix)
    assert verify(SECRET, send.body.removeprefix(prefix), WED)[:2] == (ACCOUNT, "ann")
    [again] = handle_event(None, signup, with_links, WED).effects.sends
    assert again.body == send.body
    [plain] = handle_event(None, signup, ctx(flow), WED).effects.sends
    assert plain.body == "Deals! Choose what you get: reply STOP to stop"


def test_a_campaign_is_never_transactional_by_its_category() -> None:
    """Content naming a transactional category is still marketing: quiet hours, caps,
    the holdout apply to it (docs/campaigns.md: there is no transactional campaign)."""
    receipt = campaign(content={"category": "receipts"})
    defs = definitions(receipt, policy=rules(caps={"limits": {"day": 0}}))
    out, verdict = deliver(contact_state("c-1"), receipt, T0, defs=defs)
    assert (out.effects.sends, verdict.outcome) == ([], "capped")


def test_a_late_per_channel_change_does_not_undo_a_newer_one_for_every_channel() -> None:
    flows = ctx()
    early, late = local(LA, 2026, 3, 1), local(LA, 2026, 3, 2)
    state: ContactState | None = None
    for n, (at, change) in enumerate([
            (late, {"category": "promotions", "subscribed": False}),
            (early, {"category": "promotions", "channel": "sms", "subscribed": True})]):
        state = handle_event(state, event("contact.preferences_updated",
                                          {"preferences": [change]}, n, at), flows, WED).state
    assert state is not None
    assert list(state["preferences"]["promotions"]) == ["*"]
    assert decide(command("promotions"), contact(state["preferences"]), rules(), False,
                  WED).reason == "category_unsubscribed"


def test_a_token_with_strange_characters_is_simply_invalid() -> None:
    token = sign(SECRET, ACCOUNT, "a\x1fb/ç", WED + timedelta(days=1))
    assert verify(SECRET, token, WED)[1] == "a\x1fb/ç"
    for junk in ("é.é", "..", "", "x.ÿ", token + "é"):
        with pytest.raises(LinkError):
            verify(SECRET, junk, WED)


def test_a_change_dated_in_the_future_does_not_lock_later_ones_out() -> None:
    """A publisher's clock an hour ahead: its change counts as made now, and a change a
    minute later (by our clock) still wins."""
    flows = ctx()
    ahead = event("contact.preferences_updated", {"preferences": [
        {"category": "promotions", "subscribed": False}]}, 1, WED + timedelta(hours=1))
    state = handle_event(None, ahead, flows, WED).state
    assert state is not None
    assert state["preferences"]["promotions"]["*"]["at"] == WED.isoformat()
    later = WED + timedelta(minutes=1)
    state = handle_event(state, event("contact.preferences_updated", {"preferences": [
        {"category": "promotions", "subscribed": True}]}, 2, later), flows, later).state
    assert state is not None and state["preferences"]["promotions"]["*"]["subscribed"]
