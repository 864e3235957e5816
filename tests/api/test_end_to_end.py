"""Through the API to the workers and back: a workflow defined over HTTP runs on a real
worker, sends, and is paused, resumed and cancelled over HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from tests.api.conftest import Api
from tests.stack import eventually

pytestmark = pytest.mark.integration

DRIP = {
    "id": "drip", "name": "Drip", "trigger": {"event": "contact.created"}, "start": "hello",
    "steps": {
        "hello": {"kind": "send_sms", "body": "Hi {{ contact.first_name | there }}",
                  "next": "pause"},
        "pause": {"kind": "wait", "duration": "1d", "next": "bye"},
        "bye": {"kind": "send_sms", "body": "Bye"},
    },
}


async def test_workflow_from_the_api_sends_and_is_controlled(api: Api) -> None:
    c = api.client
    editor, ingest, op = [await api.key("acme", r) for r in ("editor", "ingest", "operator")]
    assert (await c.post("/v1/accounts/acme/workflows", json=DRIP, headers=editor)
            ).status_code == 201
    api.stack.start_worker()
    event = build_event("acme", "c-1", "contact.created", {
        "phone": "+14155550101", "consent": {"sms": True},
        "attributes": {"first_name": "Ada"}}, event_id="signup-1", time=api.stack.now())
    r = await c.post("/v1/accounts/acme/events", json=[event], headers=ingest)
    assert r.json()["accepted"] == 1
    base = "/v1/accounts/acme/contacts/c-1"

    async def execution(status: str) -> dict[str, Any] | None:
        r = await c.get(f"{base}/executions", params={"status": status}, headers=op)
        items = r.json()["items"] if r.status_code == 200 else []
        return items[0] if items else None

    ex = await eventually(lambda: execution("waiting"), timeout=60, what="waiting execution")
    [send] = await api.stack.read_topic("send.sms", 1)
    command = orjson.loads(send.value)
    assert (command["body"], command["to"], command["origin"]["workflow_id"]) == (
        "Hi Ada", "+14155550101", "drip")
    contact = (await c.get(base, headers=op)).json()
    assert contact["contact"]["attributes"]["first_name"] == "Ada"
    assert contact["cap_windows"]["day"]["sent"] == 1
    shown = (await c.get(f"{base}/executions/{ex['id']}", headers=op)).json()
    assert "history" in shown, (ex, shown)
    assert [h["step"] for h in shown["history"]][:1] == ["hello"]
    for action, status in (("pause", "paused"), ("resume", "waiting"),
                           ("cancel", "cancelled")):
        r = await c.post(f"{base}/executions/{ex['id']}/{action}", headers=op)
        assert r.status_code == 202, r.text
        await eventually(lambda s=status: execution(s), what=f"execution {status}")
    # A cancelled execution takes no more commands (202 and nothing happening misled).
    r = await c.post(f"{base}/executions/{ex['id']}/pause", headers=op)
    assert (r.status_code, r.json()["detail"]) == (
        409, f"execution '{ex['id']}' is cancelled; pause changes only a waiting one")
