"""Malformed and unusual requests get a precise 4xx (never a 500), and every answer is
counted in ``/metrics`` — against real PostgreSQL, Redis and a broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from api.schemas import MAX_DEPTH
from producers.publisher import build_event
from tests.api.conftest import Api
from tests.api.test_routes import CAMPAIGN, KEYWORD, PROBLEM, WORKFLOW
from tests.stack import eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]


def nested(levels: int) -> Any:
    """A value of ``levels`` nested lists around a 1."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def with_value(value: Any, workflow_id: str = "deep") -> dict[str, Any]:
    """WORKFLOW with a trigger criterion comparing against ``value`` (at level 5 of the
    body: body, trigger, criteria, the criterion, the value)."""
    return {**WORKFLOW, "id": workflow_id, "trigger": {
        "event": "contact.created",
        "criteria": [{"field": "contact.attributes.x", "op": "eq", "value": value}]}}


@pytest.mark.parametrize(("plural", "body"), [
    ("workflows", WORKFLOW), ("keywords", KEYWORD), ("campaigns", CAMPAIGN)])
async def test_a_nul_in_a_definition_cursor_is_a_422(api: Api, plural: str,
                                                     body: dict[str, Any]) -> None:
    """The cursor is an id: a NUL (which PostgreSQL refuses in text) is refused before
    the store, and a real next_cursor still pages."""
    h = await api.key("acme", "editor")
    base = f"/v1/accounts/acme/{plural}"
    for n in (1, 2):
        r = await api.client.post(base, headers=h, json={**body, "id": f"{body['id']}{n}"})
        assert r.status_code == 201, r.text
    r = await api.client.get(base, headers=h, params={"cursor": "a\x00b"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["errors"][0]["loc"] == ["query", "cursor"]
    first = (await api.client.get(base, headers=h, params={"limit": 1})).json()
    second = (await api.client.get(base, headers=h, params={
        "limit": 1, "cursor": first["next_cursor"]})).json()
    assert [i["id"] for i in first["items"] + second["items"]] == [
        f"{body['id']}1", f"{body['id']}2"]


async def test_a_definition_nested_past_the_limit_is_a_422(api: Api) -> None:
    """At MAX_DEPTH levels a definition is stored; one level more (or a few hundred, which
    failed in the store's JSON encoder) is a 422 naming where, on create, update and the
    policy."""
    h = await api.key("acme", "editor")
    base = "/v1/accounts/acme/workflows"
    r = await api.client.post(base, headers=h, json=with_value(nested(MAX_DEPTH - 4)))
    assert r.status_code == 201, r.text
    for levels in (MAX_DEPTH - 3, 250):
        r = await api.client.post(base, headers=h,
                                  json=with_value(nested(levels), f"deep{levels}"))
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        [error] = r.json()["errors"]
        # The value is level 5; its 28th inner list level 33.
        assert error["loc"] == ["body", "trigger", "criteria", 0, "value"] + [0] * (
            MAX_DEPTH - 4)
        assert error["msg"] == f"nested deeper than {MAX_DEPTH} levels (the limit for a " \
                               "definition)"
    r = await api.client.put(f"{base}/deep", headers=h, json=with_value(nested(250)))
    assert r.status_code == 422, r.text
    r = await api.client.put("/v1/accounts/acme/policy", headers=h,
                             json={"caps": {"limits": {"day": nested(250)}}})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][:4] == [
        "body", "caps", "limits", "day"], r.text


async def test_a_chunked_body_over_the_limit_is_a_413(api: Api) -> None:
    """No Content-Length, 2 MB streamed: 413 problem+json on the events route (which reads
    the body itself) and on a definition route (FastAPI reads it)."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000

    for role, path in (("ingest", "events"), ("editor", "workflows")):
        h = {**await api.key("acme", role), "content-type": "application/json"}
        r = await api.client.post(f"/v1/accounts/acme/{path}", headers=h, content=chunks())
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM, (path, r.text)
        assert r.json()["detail"] == f"the body is over {api.services.api.max_body_bytes} bytes"


@pytest.mark.parametrize("content_type", [None, "text/plain",
                                          "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_declared_json_is_a_415(api: Api,
                                                         content_type: str | None) -> None:
    """A JSON text sent as text/plain, as a form or undeclared is refused, on the events
    route (which parsed it as JSON) and on a definition route; +json types are JSON."""
    ingest, editor = await api.key("acme", "ingest"), await api.key("acme", "editor")
    event = build_event("acme", "c-1", "contact.tagged", {"tag": "x"})
    for h, path, body in ((ingest, "events", event), (editor, "workflows", WORKFLOW)):
        headers = {**h, **({"content-type": content_type} if content_type else {})}
        r = await api.client.post(f"/v1/accounts/acme/{path}", headers=headers,
                                  content=orjson.dumps(body))
        assert r.status_code == 415 and r.headers["content-type"] == PROBLEM, r.text
        assert "Content-Type: application/json" in r.json()["detail"]
    assert await api.stack.read_all("contact-events") == []
    r = await api.client.post("/v1/accounts/acme/events", content=orjson.dumps([event]),
                              headers={**ingest,
                                       "content-type": "application/cloudevents-batch+json"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


async def test_metrics_count_the_500_of_an_escaping_exception(api: Api) -> None:
    """An exception that escapes a route is answered 500 by the outermost error handler;
    /metrics counts it, and the 413 a middleware answers, too."""
    async def broken() -> None:
        raise RuntimeError("a bug")

    api.app.add_api_route("/v1/broken", broken)
    assert (await api.client.get("/v1/broken")).status_code == 500
    h = await api.key("acme", "ingest")
    r = await api.client.post("/v1/accounts/acme/events", headers=h,
                              content=b" " * (api.services.api.max_body_bytes + 1))
    assert r.status_code == 413
    text = (await api.client.get("/metrics")).text
    assert 'dripstream_api_requests_total{method="GET",route="/v1/broken",status="500"} ' \
           '1.0' in text
    assert 'method="POST",route="unmatched",status="413"} 1.0' in text


async def test_caps_of_an_unknown_contact_are_a_404(api: Api) -> None:
    """PUT or DELETE caps of a contact the read model does not know publishes nothing (the
    event would have created the contact)."""
    op = await api.key("acme", "operator")
    for method in ("PUT", "DELETE"):
        r = await api.client.request(method, "/v1/accounts/acme/contacts/nobody/caps",
                                     headers=op, json={"day": 1} if method == "PUT" else None)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, r.text
        assert r.json()["detail"] == "no contact 'nobody'"
    assert await api.stack.read_all("contact-events") == []


async def test_a_contact_id_with_a_slash_opens(api: Api) -> None:
    """Contact ids hold any character: ``team/ann`` (sent as team%2Fann) and a literal
    ``50%2Foff`` open as themselves: detail, executions, caps."""
    c = api.client
    ingest, op = await api.key("acme", "ingest"), await api.key("acme", "operator")
    ids = {"team/ann": "team%2Fann", "50%2Foff": "50%252Foff"}
    api.stack.start_worker()
    r = await c.post("/v1/accounts/acme/events", headers=ingest, json=[
        build_event("acme", contact_id, "contact.created", {"phone": "+14155550101"},
                    time=api.stack.now()) for contact_id in ids])
    assert r.json()["accepted"] == 2, r.text

    async def listed() -> bool:
        r = await c.get("/v1/accounts/acme/contacts", headers=op)
        return {i["contact_id"] for i in r.json()["items"]} == set(ids)

    await eventually(listed, timeout=60, what="both contacts in the read model")
    for contact_id, segment in ids.items():
        base = f"/v1/accounts/acme/contacts/{segment}"
        r = await c.get(base, headers=op)
        assert r.status_code == 200, (contact_id, r.text)
        assert r.json()["contact"]["contact_id"] == contact_id
        assert (await c.get(f"{base}/executions", headers=op)).json()["items"] == []
        r = await c.put(f"{base}/caps", headers=op, json={"day": 1})
        assert r.status_code == 202, (contact_id, r.text)

        async def capped(base: str = base) -> bool:
            r = await c.get(base, headers=op)
            return bool(r.json()["cap_windows"]["day"]["limit"] == 1)

        await eventually(capped, what=f"{contact_id}'s own cap")
