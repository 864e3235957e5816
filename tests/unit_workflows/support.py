"""Builders shared by the workflow unit tests: definitions, contact states and engine events.

Contact states are made the way the contact agent makes them: an event built with the
publisher SDK, sent as bytes, parsed, and applied with :func:`tables.contacts.apply_event`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from producers.publisher import build_event
from streams.definitions import parse_definition
from streams.events import ContactEvent, parse_event
from tables.campaigns import CAMPAIGN_WORKFLOW, content_workflow
from tables.compliance import default_policy
from tables.contacts import apply_event
from tables.handlers import event_dict
from tables.inactivity import thresholds

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # a Monday, 09:00 in New York (not quiet hours)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
DEDUPE_WINDOW_S = 3600.0
MAX_DEPTH = 5
ACCOUNT = "acme"
CONTACT = "c-1"


def welcome_raw() -> dict[str, Any]:
    """The welcome flow: SMS, wait 2 days, then an email that depends on purchases."""
    return {
        "id": "welcome",
        "account": ACCOUNT,
        "name": "Welcome",
        "version": 1,
        "timezone": "America/New_York",
        "trigger": {"event": "contact.created"},
        "start": "hello",
        "steps": {
            "hello": {
                "kind": "send_sms",
                "body": "Hi {{contact.first_name}}, welcome {{contact.nickname|friend}}!",
                "next": "pause",
            },
            "pause": {"kind": "wait", "duration": "2d", "next": "check"},
            "check": {
                "kind": "branch",
                "condition": [{"field": "contact.purchases", "op": "gt", "value": 0}],
                "true": "thanks",
                "false": "nudge",
            },
            "thanks": {
                "kind": "send_email",
                "subject": "Thanks {{contact.first_name}}",
                "body": "Enjoy your order.",
            },
            "nudge": {
                "kind": "send_email",
                "subject": "Still there, {{contact.first_name|friend}}?",
                "body": "Have a look around.",
            },
        },
    }


def docs_example() -> dict[str, Any]:
    """The complete example of docs/workflows.md (its first JSON block)."""
    text = (Path(__file__).parents[2] / "docs" / "workflows.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/workflows.md has a JSON example"
    raw: dict[str, Any] = json.loads(block.group(1))
    return raw


def definition(raw: dict[str, Any]) -> dict[str, Any]:
    """A definition as it reaches the engine: validated, then dumped to JSON-ready dicts."""
    return parse_definition(copy.deepcopy(raw)).model_dump(mode="json")


class Registry:
    """The definitions a worker holds (``tables.handlers.Definitions``), in memory:
    workflows by version, campaigns (a content campaign's workflow under
    ``campaign:<id>``), one account policy (default: the defaults) and campaign statuses
    (``statuses``: campaign id → paused / cancelled; default running)."""

    def __init__(self, *definitions: dict[str, Any],
                 campaigns: Iterable[dict[str, Any]] = (),
                 policy: dict[str, Any] | None = None) -> None:
        self.by_key: dict[tuple[str, str, int], dict[str, Any]] = {}
        for d in definitions:
            self.publish(d)
        self.by_campaign = {c["id"]: c for c in campaigns}
        self._policy = policy
        self.statuses: dict[str, str] = {}

    def publish(self, d: dict[str, Any]) -> None:
        self.by_key[(d["account"], d["id"], d["version"])] = d

    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        if workflow_id.startswith(CAMPAIGN_WORKFLOW):
            found = self.by_campaign.get(workflow_id.removeprefix(CAMPAIGN_WORKFLOW))
            if found is None or found.get("workflow") is not None or found["version"] != version:
                return None
            return content_workflow(found, self.policy(account))
        return self.by_key.get((account, workflow_id, version))

    def active(self, account: str) -> list[dict[str, Any]]:
        """The newest version of each active workflow of ``account``."""
        newest: dict[str, dict[str, Any]] = {}
        for (acc, wf_id, _version), d in sorted(self.by_key.items()):
            if acc == account and d["active"]:
                newest[wf_id] = d
        return list(newest.values())

    def keywords(self, account: str) -> list[dict[str, Any]]:
        return []

    def inactivity_thresholds(self, account: str) -> tuple[int, ...]:
        return thresholds(self.active(account))

    def version(self, kind: str, account: str, ident: str, version: int
                ) -> dict[str, Any] | None:
        if kind == "workflow":
            return self.by_key.get((account, ident, version))
        if kind == "campaign":
            found = self.by_campaign.get(ident)
            return found if found is not None and found["version"] == version else None
        if kind == "account" and self._policy is not None:
            return self._policy if self._policy["version"] == version else None
        return None

    def policy(self, account: str) -> dict[str, Any]:
        return self._policy or default_policy(account)

    def campaigns(self, account: str) -> list[dict[str, Any]]:
        return [c for c in self.by_campaign.values() if c["account"] == account]

    def campaign_status(self, account: str, campaign_id: str) -> str:
        return self.statuses.get(campaign_id, "running")


def parsed_event(
    event_type: str,
    data: dict[str, Any] | None = None,
    *,
    event_id: str,
    at: datetime,
    account: str = ACCOUNT,
    contact_id: str = CONTACT,
    depth: int = 0,
) -> ContactEvent:
    """An event as the contact agent sees it: SDK envelope → bytes → parsed and checked."""
    envelope = build_event(account, contact_id, event_type, data, event_id=event_id, time=at)
    envelope["causationdepth"] = depth
    return parse_event(orjson.dumps(envelope), contact_id.encode())


def engine_event(event: ContactEvent) -> dict[str, Any]:
    """The dict the engine gets (:func:`tables.handlers.event_dict`)."""
    return event_dict(event)


def apply(
    state: dict[str, Any] | None,
    event_type: str,
    data: dict[str, Any] | None = None,
    *,
    event_id: str,
    at: datetime,
    depth: int = 0,
    account: str = ACCOUNT,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The contact's next state after an event, and the event as the engine gets it."""
    event = parsed_event(event_type, data, event_id=event_id, at=at, depth=depth,
                         account=account)
    applied = apply_event(state, event, at, DEDUPE_WINDOW_S)
    assert not applied.duplicate
    return applied.state, engine_event(event)


def profile(
    *,
    phone: str | None = "+14155550101",
    email: str | None = "ada@example.com",
    attributes: dict[str, Any] | None = None,
    consent: dict[str, bool] | None = None,
    timezone: str | None = None,
) -> dict[str, Any]:
    """``contact.created`` data for Ada, with SMS consent unless told otherwise."""
    data: dict[str, Any] = {
        "attributes": {"first_name": "Ada"} if attributes is None else attributes,
        "consent": {"sms": True} if consent is None else consent,
    }
    if phone is not None:
        data["phone"] = phone
    if email is not None:
        data["email"] = email
    if timezone is not None:
        data["timezone"] = timezone
    return data


def created(
    *, at: datetime = T0, event_id: str = "e-created", account: str = ACCOUNT, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new contact's state and its ``contact.created`` event (see :func:`profile`)."""
    return apply(None, "contact.created", profile(**fields), event_id=event_id, at=at,
                 account=account)
