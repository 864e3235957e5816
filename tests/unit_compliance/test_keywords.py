"""Inbound keywords (tables/keywords.py ``on_keyword``): STOP, START, HELP and account
keywords such as JOIN, on contact states built by the real contact logic."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.commands import SendCommand
from streams.definitions import Keyword
from streams.events import parse_event
from tables.compliance import classify_keyword, default_policy
from tables.contacts import apply_event
from tables.effects import Effects
from tables.gate import Compliance
from tables.keywords import on_keyword, system_keyword
from tests.unit_compliance.support import ACCOUNT, HOUR, LA, local, policy, records
from tests.unit_workflows.support import CONTACT, DEDUPE_WINDOW_S, apply, created

PHONE = "+14155550101"  # Ada's number (tests/unit_workflows/support.py)
SHORT_CODE = "+15550001111"
OTHER_CODE = "+15550002222"
NOON = local(LA, 2026, 3, 4, 12)
RULES = policy(brand="Acme", support="help@acme.example")
OPEN = Compliance(RULES)  # an empty suppression list
LISTED = Compliance(RULES, lambda address: address == PHONE)  # Ada's number is suppressed

STOP_TEXT = ("Acme: You are unsubscribed and will receive no more messages. "
             "Reply START to resubscribe.")
START_TEXT = ("Acme: You are subscribed again. Msg frequency varies. Msg & data rates may "
              "apply. Reply HELP for help, STOP to cancel.")
HELP_TEXT = ("Acme: Msg frequency varies. Msg & data rates may apply. Reply STOP to cancel. "
             "Support: help@acme.example")


def ada(**fields: Any) -> dict[str, Any]:
    """Ada in Los Angeles, with SMS and email consent unless told otherwise."""
    fields.setdefault("consent", {"sms": True, "email": True})
    state, _ = created(at=NOON - timedelta(days=1), timezone="America/Los_Angeles", **fields)
    return state


def texts(
    state: dict[str, Any], text: str, *, event_id: str = "e-kw", at: datetime = NOON,
    to: str = SHORT_CODE, channel: str = "sms", depth: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ada texts ``text`` to ``to``: her next state and the event as the engine gets it."""
    data = {"keyword": text, "text": text, "to": to, "channel": channel}
    return apply(state, "keyword.received", data, event_id=event_id, at=at, depth=depth)


def handle(
    state: dict[str, Any], text: str, compliance: Compliance = OPEN,
    keywords: list[dict[str, Any]] | None = None, *, at: datetime = NOON, **event: Any,
) -> tuple[dict[str, Any], Effects, bool]:
    """The contact agent's keyword step: (state after, effects, may workflows react)."""
    state, received = texts(state, text, at=at, **event)
    fx = on_keyword(state, received, keywords or [], compliance, at)
    return state, fx, not system_keyword(received, compliance.policy)


def reply(body: str, purpose: str, keyword: str, *, event_id: str = "e-kw",
          at: datetime = NOON, channel: str = "sms",
          reply_from: str = SHORT_CODE, depth: int = 0) -> SendCommand:
    """The transactional reply to Ada's text ``event_id``."""
    digest = hashlib.sha256(f"{ACCOUNT}\x1f{event_id}\x1freply".encode()).hexdigest()[:32]
    return SendCommand.model_validate({
        "message_id": "msg-" + digest, "channel": channel, "account": ACCOUNT,
        "contact_id": CONTACT, "to": PHONE, "body": body, "transactional": True,
        "purpose": purpose, "reply_from": reply_from,
        "origin": {"kind": "keyword", "keyword": keyword, "event_id": event_id, "depth": depth},
        "created_at": at.isoformat(), "expires_at": (at + timedelta(hours=1)).isoformat()})


def suppression(*, remove: bool = False, at: datetime = NOON) -> dict[str, Any]:
    return {"account": ACCOUNT, "address": PHONE, "reason": "opted_out", "contact_id": CONTACT,
            "at": at.isoformat(), "remove": remove}


# --- opt-out ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "word"),
    [
        # The usual word.
        ("STOP", "STOP"),
        # Lower case.
        ("stop", "STOP"),
        # Leading spaces and more words after it: the first word counts.
        ("  Stop please", "STOP"),
        # The rest of the default opt-out list.
        ("stopall", "STOPALL"),
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("cancel", "CANCEL"),
        ("END", "END"),
        ("quit", "QUIT"),
        ("revoke", "REVOKE"),
        ("optout", "OPTOUT"),
    ],
)
def test_opt_out(text: str, word: str) -> None:
    """An opt-out word revokes SMS and MMS consent (email kept), suppresses the number,
    sends exactly one transactional confirmation, and starts no workflow."""
    state, fx, react = handle(ada(), text)
    expected = Effects(sends=[reply(STOP_TEXT, "opt_out_confirmation", word)],
                       suppressions=[suppression()])
    assert ({"sms": False, "mms": False, "email": True}, expected, False) == (
        state["consent"], fx, react)


def test_opt_out_confirmation_is_recorded() -> None:
    """The confirmation counts as a send of the contact (once)."""
    state, fx, _ = handle(ada(), "STOP")
    assert [fx.sends[0].message_id] == [s["id"] for s in state["sends"]]


def test_opt_out_confirmation_goes_at_night_over_the_cap_to_a_listed_number() -> None:
    """At 23:00 local, with the day's cap used up and the number already suppressed, the
    confirmation still goes out."""
    night = local(LA, 2026, 3, 4, 23)
    state = ada()
    state["sends"] = records(*[local(LA, 2026, 3, 4, h) for h in range(8, 14)])
    _, fx, _ = handle(state, "STOP", LISTED, at=night)
    assert [reply(STOP_TEXT, "opt_out_confirmation", "STOP", at=night)] == fx.sends


def test_opt_out_by_mms_is_answered_by_mms() -> None:
    """A STOP that came in as MMS is confirmed on MMS."""
    _, fx, _ = handle(ada(), "STOP", channel="mms")
    assert [reply(STOP_TEXT, "opt_out_confirmation", "STOP", channel="mms")] == fx.sends


def test_second_stop_gets_no_second_confirmation() -> None:
    """A contact who is already opted out and texts STOP again gets no second text."""
    state, _, _ = handle(ada(), "STOP")
    state, fx, react = handle(state, "stop", LISTED, event_id="e-kw-2",
                              at=NOON + timedelta(minutes=5))
    assert ([], False, {"sms": False, "mms": False, "email": True}) == (
        fx.sends, react, state["consent"])


def test_opt_out_phrase() -> None:
    """Texting "opt out" opts the contact out, like STOP."""
    state, fx, react = handle(ada(), "Opt out")
    assert ({"sms": False, "mms": False, "email": True}, 1, False) == (
        state["consent"], len(fx.sends), react)


# --- opt-in -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "word"),
    [
        # The usual word.
        ("START", "START"),
        # Lower case.
        ("unstop", "UNSTOP"),
        # More words after it.
        ("Yes please", "YES"),
        # The last of the default list.
        ("subscribe", "SUBSCRIBE"),
    ],
)
def test_opt_in_after_opt_out(text: str, word: str) -> None:
    """An opt-in word restores SMS and MMS consent, lifts the opt-out suppression, and its
    confirmation is delivered although the list still has the number."""
    state, _, _ = handle(ada(), "STOP")
    later = NOON + HOUR
    state, fx, react = handle(state, text, LISTED, event_id="e-kw-2", at=later)
    expected = Effects(
        sends=[reply(START_TEXT, "opt_in_confirmation", word, event_id="e-kw-2", at=later)],
        suppressions=[suppression(remove=True, at=later)])
    assert ({"sms": True, "mms": True, "email": True}, expected, False) == (
        state["consent"], fx, react)


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "word", "consent"),
    [
        # HELP from a subscribed contact.
        ("HELP", "HELP", {"sms": True, "email": True}),
        # INFO, lower case, from a contact who never consented.
        ("info", "INFO", {}),
        # Help with more words, from an opted-out contact.
        ("  Help me", "HELP", {"sms": False}),
    ],
)
def test_help(text: str, word: str, consent: dict[str, bool]) -> None:
    """A help word is answered with the brand and support contact filled in, whatever the
    contact's consent and even if the number is suppressed; consent is unchanged."""
    state, fx, react = handle(ada(consent=consent), text, LISTED)
    assert (Effects(sends=[reply(HELP_TEXT, "help", word)]), False, consent) == (
        fx, react, state["consent"])


# --- custom lists -------------------------------------------------------------------------

FRENCH = policy(brand="Acme", support="help@acme.example",
                keywords={"opt_out": ["arret"], "opt_in": ["arrive"], "help": ["aide"]})


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        # The account's own opt-out word (lists are upper-cased when validated).
        ("Arret", "opt_out"),
        # Its opt-in word.
        ("ARRIVE", "opt_in"),
        # Its help word.
        ("aide moi", "help"),
        # STOP is not in this account's list.
        ("STOP", None),
        # Neither is HELP.
        ("help", None),
    ],
)
def test_custom_word_lists(text: str, kind: str | None) -> None:
    """An account's own word lists replace the defaults."""
    _, fx, react = handle(ada(), text, Compliance(FRENCH))
    purposes = {"opt_out": ["opt_out_confirmation"], "opt_in": ["opt_in_confirmation"],
                "help": ["help"], None: []}[kind]
    assert (purposes, kind is None) == ([s.purpose for s in fx.sends], react)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # Default opt-out word.
        ("STOP", "opt_out"),
        # Default opt-in word.
        ("START", "opt_in"),
        # Default help word.
        ("INFO", "help"),
        # An ordinary word.
        ("JOIN", None),
        # The empty word (a blank text).
        ("", None),
    ],
)
def test_classify_keyword(word: str, expected: str | None) -> None:
    """System words are classified from the account's lists (already upper-cased)."""
    assert expected == classify_keyword(word, default_policy())


# --- account keywords ---------------------------------------------------------------------


def keyword(**changes: Any) -> dict[str, Any]:
    """JOIN on the short code: joins ``vip``, sets SMS consent, replies."""
    fields: dict[str, Any] = {"id": "join", "account": ACCOUNT, "words": ["join"],
                              "to": [SHORT_CODE], "group": "vip", "consent": True,
                              "reply": "{brand}: welcome to VIP! Help: {support}", **changes}
    return Keyword(**fields).model_dump(mode="json")


def joined(event_id: str = "e-kw", depth: int = 3) -> dict[str, Any]:
    digest = hashlib.sha256(f"{event_id}\x1fjoin".encode()).hexdigest()[:32]
    return {"specversion": "1.0", "id": "ds-" + digest, "source": "urn:dripstream:keyword:join",
            "type": "contact.added_to_group", "subject": CONTACT, "time": NOON.isoformat(),
            "account": ACCOUNT, "causationdepth": depth, "data": {"group": "vip"}}


WELCOME = "Acme: welcome to VIP! Help: help@acme.example"

ACCOUNT_KEYWORDS: list[tuple[dict[str, Any], str, str, Effects, dict[str, bool]]] = [
    # JOIN on its short code: the group event (one level deeper), consent, the reply.
    (keyword(), "Join now", SHORT_CODE,
     Effects(sends=[reply(WELCOME, "keyword_reply", "JOIN", depth=2)], events=[joined()],
             suppressions=[suppression(remove=True)]),
     {"sms": True, "mms": True}),
    # JOIN to another number: this keyword does not match.
    (keyword(), "JOIN", OTHER_CODE, Effects(), {}),
    # A keyword for any number matches on every number.
    (keyword(to=[]), "join", OTHER_CODE,
     Effects(sends=[reply(WELCOME, "keyword_reply", "JOIN", reply_from=OTHER_CODE, depth=2)],
             events=[joined()], suppressions=[suppression(remove=True)]),
     {"sms": True, "mms": True}),
    # An inactive keyword does nothing.
    (keyword(active=False), "JOIN", SHORT_CODE, Effects(), {}),
    # Another word does nothing.
    (keyword(), "VIP", SHORT_CODE, Effects(), {}),
    # A keyword without a group, consent or reply: nothing to emit.
    (keyword(group=None, consent=False, reply=None), "JOIN", SHORT_CODE, Effects(), {}),
]


@pytest.mark.parametrize(("kw", "text", "to", "expected", "consent"), ACCOUNT_KEYWORDS)
def test_account_keyword(
    kw: dict[str, Any], text: str, to: str, expected: Effects, consent: dict[str, bool]
) -> None:
    """An account keyword joins its group, sets consent and replies; workflows may react
    to it (matched or not)."""
    state, fx, react = handle(ada(consent={}), text, keywords=[kw], to=to, depth=2)
    assert (expected, consent, True) == (fx, state["consent"], react)


def test_group_event_is_valid_and_joins_the_group() -> None:
    """The emitted ``contact.added_to_group`` passes the wire contract and, applied, puts
    the contact in the group."""
    state, fx, _ = handle(ada(consent={}), "JOIN", keywords=[keyword()], depth=2)
    parsed = parse_event(orjson.dumps(fx.events[0]), CONTACT.encode())
    state = apply_event(state, parsed, NOON, DEDUPE_WINDOW_S).state
    assert (["vip"], 3) == (state["groups"], parsed.envelope.causationdepth)


def test_opt_in_keyword_after_stop() -> None:
    """Texting an opt-in keyword after STOP re-subscribes the contact: the opt-out is
    lifted and the keyword's reply is delivered."""
    state, _, _ = handle(ada(), "STOP")
    later = NOON + HOUR
    _, fx, _ = handle(state, "JOIN", LISTED, keywords=[keyword()], event_id="e-kw-2", at=later)
    assert ([suppression(remove=True, at=later)], ["keyword_reply"]) == (
        fx.suppressions, [s.purpose for s in fx.sends])
