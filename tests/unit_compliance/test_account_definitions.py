"""Account policies and keywords as definitions (streams/definitions.py): their defaults,
what is refused and where, ``parse_any`` dispatch and the topic keys."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from streams.definitions import (
    AccountPolicy,
    DefinitionError,
    Keyword,
    Workflow,
    definition_key,
    parse_any,
)
from tables.compliance import default_policy
from tests.unit_compliance.support import ACCOUNT
from tests.unit_workflows.support import welcome_raw


def test_policy_defaults() -> None:
    """An account without a policy gets 5/20/50 calendar caps, SMS/MMS quiet hours
    08:00-21:00 deferred, the usual word lists, and replies, clicks, opens and purchases
    as the activity that ends an inactivity period."""
    expected = {
        "kind": "account", "account": ACCOUNT, "version": 1, "brand": "dripstream",
        "support": "your sender", "timezone": "UTC",
        "caps": {"limits": {"day": 5, "week": 20, "month": 50}, "channels": {},
                 "windows": "calendar"},
        "quiet_hours": {"send_from": "08:00", "send_until": "21:00",
                        "channels": ["sms", "mms"], "policy": "defer"},
        "keywords": {
            "opt_out": ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
                        "OPTOUT", "OPT OUT"],
            "opt_in": ["START", "UNSTOP", "YES", "SUBSCRIBE"],
            "help": ["HELP", "INFO"],
        },
        "campaign_min_interval": "1h",
        "inactivity": {"activity_types": ["keyword.received", "message.clicked",
                                          "message.opened", "purchase.completed"]},
    }
    actual = default_policy(ACCOUNT)
    assert expected == {k: v for k, v in actual.items() if k != "replies"}


def test_default_replies_have_the_required_parts() -> None:
    """The HELP reply names the brand, frequency, rates and support; STOP confirms."""
    replies = default_policy()["replies"]
    help_text = replies["help"].format(brand="Acme", support="help@acme.example")
    parts = ("Acme", "Msg frequency varies", "Msg & data rates may apply", "help@acme.example")
    assert ([True] * 4, True) == ([p in help_text for p in parts],
                                  "unsubscribed" in replies["opt_out"])


def account(**changes: Any) -> dict[str, Any]:
    return {"kind": "account", "account": ACCOUNT, **changes}


def keyword(**changes: Any) -> dict[str, Any]:
    return {"kind": "keyword", "id": "join", "account": ACCOUNT, "words": ["JOIN"], **changes}


REFUSED = [
    # A negative day cap.
    (account(caps={"limits": {"day": -1}}), "caps.limits.day"),
    # A negative per-channel cap.
    (account(caps={"channels": {"sms": {"week": -2}}}), "caps.channels.sms.week"),
    # A per-channel cap for a channel that does not exist.
    (account(caps={"channels": {"fax": {"day": 1}}}), "caps.channels.fax.[key]"),
    # A window kind that does not exist.
    (account(caps={"windows": "sliding"}), "caps.windows"),
    # An hour that does not exist.
    (account(quiet_hours={"send_from": "25:00"}), "quiet_hours.send_from"),
    # Not HH:MM.
    (account(quiet_hours={"send_until": "9pm"}), "quiet_hours.send_until"),
    # Quiet hours for an unknown channel.
    (account(quiet_hours={"channels": ["push"]}), "quiet_hours.channels.0"),
    # Neither defer nor drop.
    (account(quiet_hours={"policy": "queue"}), "quiet_hours.policy"),
    # An unknown zone.
    (account(timezone="Mars/Olympus_Mons"), "timezone"),
    # An empty keyword.
    (account(keywords={"help": [" "]}), "keywords.help"),
    # An unknown field.
    (account(quiet={"from": "08:00"}), "quiet"),
    # Version 0.
    (account(version=0), "version"),
    # An account id with a colon (it would break the topic keys).
    (account(account="a:b"), "account"),
    # A keyword with no words.
    (keyword(words=[]), "words"),
    # A keyword without an id.
    ({"kind": "keyword", "account": ACCOUNT, "words": ["JOIN"]}, "id"),
]


@pytest.mark.parametrize(("raw", "path"), REFUSED)
def test_invalid_definition_is_refused_with_its_path(raw: dict[str, Any], path: str) -> None:
    """An invalid account policy or keyword is refused, naming the path of the problem."""
    with pytest.raises(DefinitionError) as caught:
        parse_any(raw)
    assert [path] == [e.split(": ", 1)[0] for e in caught.value.errors]


@pytest.mark.parametrize(
    ("raw", "expected_type"),
    [
        # kind account: a policy.
        (account(), AccountPolicy),
        # kind keyword: an account keyword.
        (keyword(), Keyword),
        # kind workflow: a workflow.
        ({**welcome_raw(), "kind": "workflow"}, Workflow),
        # No kind: a workflow (the format before policies existed).
        (welcome_raw(), Workflow),
    ],
)
def test_parse_any_dispatches_by_kind(raw: dict[str, Any], expected_type: type) -> None:
    """``parse_any`` validates a definition as the model its ``kind`` names."""
    assert expected_type is type(parse_any(copy.deepcopy(raw)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # An unknown kind.
        ({"kind": "segment", "account": ACCOUNT},
         "kind: unknown definition kind 'segment': workflow, account, keyword, campaign, "
         "campaign_control"),
        # Not an object at all.
        (["account"], "kind: unknown definition kind None: workflow, account, keyword, "
         "campaign, campaign_control"),
    ],
)
def test_parse_any_refuses_unknown_kinds(raw: Any, message: str) -> None:
    """An unknown ``kind`` (or no object) is one error naming the kinds there are."""
    with pytest.raises(DefinitionError) as caught:
        parse_any(raw)
    assert [message] == caught.value.errors


def test_words_are_normalised() -> None:
    """Keyword words and word lists are stored stripped and upper-cased."""
    kw = parse_any(keyword(words=[" join ", "Vip"]))
    policy = parse_any(account(keywords={"opt_out": ["arret "]}))
    assert isinstance(kw, Keyword) and isinstance(policy, AccountPolicy)
    assert (["JOIN", "VIP"], ["ARRET"]) == (kw.words, policy.keywords.opt_out)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        # An account policy: one per account, keyed "policy".
        (account(version=3), "account:acme:policy:3"),
        # A keyword: by its id.
        (keyword(version=2), "keyword:acme:join:2"),
        # A workflow: by its id.
        (welcome_raw(), "workflow:acme:welcome:1"),
    ],
)
def test_definition_key(raw: dict[str, Any], key: str) -> None:
    """Each version of a definition has its own key ``<kind>:<account>:<id>:<version>``."""
    assert key == definition_key(parse_any(copy.deepcopy(raw)))


def test_keyword_phrases_are_normalised() -> None:
    """Words and phrases are stored upper case with single spaces ("opt  out" -> "OPT OUT")."""
    policy = parse_any(account(keywords={"opt_out": ["opt  out", " stop "]}))
    assert ["OPT OUT", "STOP"] == policy.keywords.opt_out  # type: ignore[union-attr]
