"""Criteria and trigger matching: pure functions over plain dicts.

An event is a dict with ``type``, ``id``, ``time``, ``account``, ``data`` (and
``causationdepth``); a contact is the state dict of :mod:`tables.contacts`. Fields:
``event.type``, ``event.data.<path>``, ``contact.<profile field>`` or
``contact.<attribute>`` (attributes are looked up when no profile field has the name),
``contact.attributes.<path>``, ``contact.tags``, ``contact.groups``, ``contact.consent.<ch>``.
A criterion on a missing field is false (except ``not_exists``).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["MISSING", "criteria_hold", "keyword_of", "resolve", "trigger_matches"]

MISSING = object()
_PROFILE = ("contact_id", "account", "phone", "email", "timezone", "locale", "tags", "groups",
            "consent", "attributes", "last_activity_at", "created_at", "purchases",
            "last_purchase_at", "last_event_at")


def _walk(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return MISSING
    return value


def resolve(field: str, event: dict[str, Any], contact: Mapping[str, Any]) -> Any:
    root, *path = field.split(".")
    if root == "event":
        return _walk(event, path)
    if root == "contact":
        if path and path[0] in _PROFILE:
            return _walk(contact, path)
        return _walk(contact.get("attributes", {}), path)
    return MISSING


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _equal(left: Any, right: Any) -> bool:
    """Equal, numbers by value ("19.90" equals 19.9)."""
    if left == right:
        return True
    a, b = _number(left), _number(right)
    return a is not None and a == b


def _compare(op: str, left: Any, right: Any) -> bool:
    a, b = _number(left), _number(right)
    if a is None or b is None:
        if isinstance(left, str) and isinstance(right, str):
            a, b = left, right  # type: ignore[assignment]  # ISO times compare as strings
        else:
            return False
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]  # type: ignore[operator]


def _holds(criterion: dict[str, Any], event: dict[str, Any], contact: Mapping[str, Any]) -> bool:
    op, expected = criterion["op"], criterion.get("value")
    if op in ("in_group", "not_in_group"):
        return bool((expected in contact.get("groups", [])) == (op == "in_group"))
    if op in ("has_tag", "not_has_tag"):
        return bool((expected in contact.get("tags", [])) == (op == "has_tag"))
    actual = resolve(criterion["field"], event, contact)
    if op == "exists":
        return actual is not MISSING and actual is not None
    if op == "not_exists":
        return actual is MISSING or actual is None
    if actual is MISSING:
        return False
    if op in ("eq", "ne"):
        return bool(_equal(actual, expected) == (op == "eq"))
    if op == "contains":
        if isinstance(actual, str) and isinstance(expected, str):
            return expected.lower() in actual.lower()
        return isinstance(actual, list | dict) and expected in actual
    if op == "in":
        return isinstance(expected, list) and any(_equal(actual, e) for e in expected)
    return _compare(op, actual, expected)


def criteria_hold(
    criteria: list[dict[str, Any]], event: dict[str, Any], contact: Mapping[str, Any]
) -> bool:
    """All criteria hold (an empty list holds)."""
    return all(_holds(c, event, contact) for c in criteria)


def keyword_of(text: str) -> str:
    """The first word, case- and whitespace-insensitive."""
    words = text.strip().split()
    return words[0].upper() if words else ""


def trigger_matches(
    workflow: dict[str, Any], event: dict[str, Any], contact: Mapping[str, Any]
) -> bool:
    """Does ``event`` start ``workflow``? Never across accounts; empty criteria mean every
    event of the trigger's type *in the workflow's account*."""
    trigger = workflow["trigger"]
    if workflow["account"] != event["account"] or not workflow["active"]:
        return False
    if trigger["event"] != event["type"]:
        return False
    if trigger.get("keyword") is not None:
        said = keyword_of(str(event["data"].get("keyword") or event["data"].get("text") or ""))
        if said != keyword_of(trigger["keyword"]):
            return False
    if trigger.get("inactive_days") is not None:
        if event["data"].get("threshold_days") != trigger["inactive_days"]:
            return False
    return criteria_hold(trigger.get("criteria", []), event, contact)
