"""The definitions every worker holds (tables/registry.py), fed records as the compacted
topic delivers them: the newest version answers, each account sees only its own."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from streams.definitions import definition_key, parse_any
from tables.compliance import default_policy
from tables.registry import Registry


def flow(account: str, version: int, *, active: bool = True, ident: str = "w") -> dict[str, Any]:
    return {"id": ident, "account": account, "name": "W", "version": version,
            "active": active, "trigger": {"event": "contact.created"}, "start": "s",
            "steps": {"s": {"kind": "send_sms", "body": f"v{version}"}}}


def record(raw: dict[str, Any]) -> tuple[bytes, bytes]:
    parsed = parse_any(raw)
    return definition_key(parsed).encode(), orjson.dumps(parsed.model_dump(mode="json"))


def registry(*raws: dict[str, Any]) -> Registry:
    r = Registry()
    for raw in raws:
        r.apply(*record(raw))
    return r


def test_the_newest_version_is_active_and_every_version_is_kept() -> None:
    """v2 starts new executions; v1 stays for the executions that started on it."""
    r = registry(flow("acme", 1), flow("acme", 2))
    assert [wf["version"] for wf in r.active("acme")] == [2]
    assert r.lookup("acme", "w", 1)["steps"]["s"]["body"] == "v1"  # type: ignore[index]


def test_accounts_never_see_each_others_definitions() -> None:
    """Another account's workflow and policy are invisible; without one, the defaults."""
    r = registry(flow("acme", 1), {"kind": "account", "account": "acme", "brand": "Acme"})
    assert (r.active("globex"), r.lookup("globex", "w", 1)) == ([], None)
    assert r.policy("acme")["brand"] == "Acme"
    assert r.policy("globex") == default_policy("globex")


def test_an_inactive_newest_version_stops_new_starts() -> None:
    """Publishing ``active: false`` as a new version takes the workflow out of matching."""
    assert registry(flow("acme", 1), flow("acme", 2, active=False)).active("acme") == []


def test_a_tombstone_forgets_that_version_only() -> None:
    """A deleted v2 leaves v1 as the newest."""
    r = registry(flow("acme", 1), flow("acme", 2))
    key, _ = record(flow("acme", 2))
    r.apply(key, None)
    assert ([wf["version"] for wf in r.active("acme")], r.lookup("acme", "w", 2)) == ([1], None)


def test_a_version_is_write_once() -> None:
    """Republishing v1 with other steps is ignored: executions rely on what they started."""
    changed = flow("acme", 1)
    changed["steps"]["s"]["body"] = "other"
    r = registry(flow("acme", 1), changed)
    assert r.lookup("acme", "w", 1)["steps"]["s"]["body"] == "v1"  # type: ignore[index]


def test_a_refused_version_is_counted_and_logged_with_its_key_as_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A changed body under a known key is counted (publishers read it back) and logged
    with the key as an operator reads it, not a Python bytes repr; the same body again
    (a publisher's repair) is no refusal."""
    changed = flow("acme", 1)
    changed["steps"]["s"]["body"] = "other"
    with caplog.at_level(logging.ERROR, logger="tables.registry"):
        r = registry(flow("acme", 1), changed, flow("acme", 1))
    assert (1, ["workflow:acme:w:1"]) == (r.refused, list(r.refused_keys))
    assert ["ignoring a changed workflow:acme:w:1 (another body was published first under "
            "that key): publish a new version instead"] == [m.getMessage()
                                                            for m in caplog.records]


def test_a_quiet_registry_counts_refusals_without_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The CLI's registry: another account's old conflict is nothing to print."""
    changed = flow("globex", 1)
    changed["name"] = "Other"
    r = Registry(quiet=True)
    with caplog.at_level(logging.DEBUG, logger="tables.registry"):
        for raw in (flow("globex", 1), changed):
            r.apply(*record(raw))
    assert (1, []) == (r.refused, caplog.records)


def test_versions_lists_every_version_held() -> None:
    """What a publisher checks against: every version of one definition, by number."""
    r = registry(flow("acme", 1), flow("acme", 3), flow("acme", 1, ident="other"))
    assert ([1, 3], {}) == (sorted(r.versions("workflow", "acme", "w")),
                            r.versions("workflow", "globex", "w"))


def inactive_flow(account: str, days: int, *, ident: str = "winback", version: int = 1,
                  active: bool = True) -> dict[str, Any]:
    return {**flow(account, version, active=active, ident=ident),
            "trigger": {"event": "contact.inactive", "inactive_days": days}}


def test_inactivity_thresholds_per_account_and_their_changes() -> None:
    """Each account's thresholds come from its own active workflows; defining, replacing
    or deactivating one reports the account once as changed (the timers re-arm it)."""
    r = registry(inactive_flow("acme", 30), inactive_flow("acme", 7, ident="early"),
                 inactive_flow("globex", 90))
    assert ((7, 30), (90,), ()) == (r.inactivity_thresholds("acme"),
                                    r.inactivity_thresholds("globex"),
                                    r.inactivity_thresholds("initech"))
    assert {"acme", "globex"} == r.threshold_changes()
    assert set() == r.threshold_changes()
    r.apply(*record(flow("acme", 1, ident="other")))  # no threshold moves
    assert set() == r.threshold_changes()
    r.apply(*record(inactive_flow("acme", 7, ident="early", version=2, active=False)))
    assert ({"acme"}, (30,)) == (r.threshold_changes(), r.inactivity_thresholds("acme"))


def test_a_shadow_version_runs_nowhere_until_promoted() -> None:
    """v2 in shadow: the workers keep v1 (and its inactivity thresholds); the shadow is
    listed until a later version promotes it (v3 without shadow) or withdraws it."""
    shadow = {**flow("acme", 2), "shadow": True}
    r = registry(flow("acme", 1), shadow)
    assert [wf["version"] for wf in r.active("acme")] == [1]
    assert [(s["id"], s["version"]) for s in r.shadows()] == [("w", 2)]
    assert r.shadows("globex") == []
    assert r.lookup("acme", "w", 2)["shadow"] is True  # type: ignore[index]
    promoted = registry(flow("acme", 1), shadow, flow("acme", 3))
    assert ([wf["version"] for wf in promoted.active("acme")], promoted.shadows()) == ([3], [])
    withdrawn = registry(flow("acme", 1), shadow, {**shadow, "version": 3, "active": False})
    assert ([wf["version"] for wf in withdrawn.active("acme")], withdrawn.shadows()) == (
        [1], [])
    # A new workflow can start in shadow: nothing is live, the shadow runs.
    new = registry({**flow("acme", 1), "shadow": True})
    assert (new.active("acme"), len(new.shadows("acme"))) == ([], 1)
