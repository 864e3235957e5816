"""A publisher's check before it publishes a definition (producers/admin.py: check),
against a registry fed records as the definitions topic delivers them: one version
sequence per definition, whoever publishes, and nothing the workers would ignore."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from producers.admin import DefinitionConflict, check
from streams.definitions import definition_key, parse_any
from tables.registry import Registry


def flow(version: int, body: str = "Hi", ident: str = "welcome") -> dict[str, Any]:
    return {"kind": "workflow", "id": ident, "account": "acme", "name": "Welcome",
            "version": version, "trigger": {"event": "contact.created"}, "start": "s",
            "steps": {"s": {"kind": "send_sms", "body": body}}}


def held(*raws: dict[str, Any]) -> Registry:
    registry = Registry(quiet=True)
    for raw in raws:
        parsed = parse_any(raw)
        registry.apply(definition_key(parsed).encode(),
                       orjson.dumps(parsed.model_dump(mode="json")))
    return registry


@pytest.mark.parametrize(("on_topic", "publish", "expected"), [
    # Nothing yet: any version starts the sequence.
    pytest.param([], flow(1), "new", id="first"),
    # The next version.
    pytest.param([flow(1)], flow(2, "Hello"), "new", id="next"),
    # A gap is allowed (the API's store numbers past it).
    pytest.param([flow(1)], flow(5, "Hello"), "new", id="gap"),
    # Exactly what is there: nothing to publish.
    pytest.param([flow(1)], flow(1), "unchanged", id="same-body"),
    # An older version, identical to what is there: nothing to publish either.
    pytest.param([flow(1), flow(2, "Hello")], flow(1), "unchanged", id="older-same-body"),
    # Another definition's versions do not count.
    pytest.param([flow(3, ident="other")], flow(1), "new", id="other-definition"),
    # A campaign control is not versioned.
    pytest.param([], {"kind": "campaign_control", "account": "acme", "campaign_id": "c",
                      "action": "pause"}, "new", id="control"),
])
def test_publications_the_workers_take(on_topic: list[dict[str, Any]],
                                       publish: dict[str, Any], expected: str) -> None:
    """New versions above the newest pass; this very body again is `unchanged`."""
    assert expected == check(held(*on_topic), parse_any(publish))


@pytest.mark.parametrize(("on_topic", "publish", "message"), [
    # The bug: a changed body at an existing version was published and then ignored.
    pytest.param([flow(1)], flow(1, "Changed"),
                 "workflow acme/welcome v1 is published already with another body (the "
                 "workers run the first one): publish your change as v2", id="changed-body"),
    # An older version that does not exist.
    pytest.param([flow(1), flow(3, "Three")], flow(2, "Two"),
                 "workflow acme/welcome is at v3: v2 would be an older version; publish v4",
                 id="lower-version"),
    # The account policy's versions, the same way.
    pytest.param([{"kind": "account", "account": "acme", "version": 2}],
                 {"kind": "account", "account": "acme", "version": 2, "brand": "Acme"},
                 "account acme/policy v2 is published already with another body",
                 id="policy"),
])
def test_conflicting_publications_are_refused(on_topic: list[dict[str, Any]],
                                              publish: dict[str, Any], message: str) -> None:
    """A changed body at an existing version, or a lower version, is refused with what
    to publish instead."""
    with pytest.raises(DefinitionConflict) as refused:
        check(held(*on_topic), parse_any(publish))
    assert str(refused.value).startswith(message)
