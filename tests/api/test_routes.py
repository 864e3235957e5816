"""Every admin API resource through HTTP, against real PostgreSQL, Redis and a broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from streams.events import Rejected, encode_event, parse_event
from tests.api.conftest import Api
from tests.stack import eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]

WORKFLOW: dict[str, Any] = {
    "id": "welcome", "name": "Welcome",
    "trigger": {"event": "contact.created"},
    "start": "hello",
    "steps": {"hello": {"kind": "send_sms", "body": "Hi {{ contact.first_name | there }}"}},
}
KEYWORD = {"id": "join", "words": ["JOIN"], "group": "club", "consent": True}
CAMPAIGN = {"id": "spring", "name": "Spring", "content": {"channel": "sms", "body": "Sale!"},
            "schedule": {"type": "once", "at": "2030-03-01T10:00"}}
PROBLEM = "application/problem+json"


@pytest.mark.parametrize(("plural", "body", "change"), [
    ("workflows", WORKFLOW, {"name": "Welcome again"}),
    ("keywords", KEYWORD, {"words": ["JOIN", "CLUB"]}),
    ("campaigns", CAMPAIGN, {"name": "Spring sale"}),
])
async def test_definition_round_trip(api: Api, plural: str, body: dict[str, Any],
                                     change: dict[str, Any]) -> None:
    """Create, list, show, update (v2), versions, deactivate (v3), each on the topic."""
    c, h = api.client, await api.key("acme", "editor")
    base = f"/v1/accounts/acme/{plural}"
    r = await c.post(base, json=body, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    assert (await c.post(base, json=body, headers=h)).status_code == 409
    r = await c.put(f"{base}/{body['id']}", json={**body, **change}, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = await c.put(f"{base}/{body['id']}", json={**body, "version": 2}, headers=h)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    listed = (await c.get(base, headers=h)).json()
    assert [(i["id"], i["version"]) for i in listed["items"]] == [(body["id"], 2)]
    shown = (await c.get(f"{base}/{body['id']}", headers=h)).json()
    assert all(shown["definition"][k] == v for k, v in change.items())
    r = await c.delete(f"{base}/{body['id']}", headers=h)
    assert r.status_code == 200 and r.json()["definition"]["active"] is False
    versions = (await c.get(f"{base}/{body['id']}/versions", headers=h)).json()
    assert [v["version"] for v in versions] == [1, 2, 3]
    one = (await c.get(f"{base}/{body['id']}/versions/1", headers=h)).json()
    assert one["definition"] == versions[0]["definition"]

    async def published() -> list[Any] | None:
        records = await api.stack.read_all("definitions")
        return records if len(records) >= 3 else None

    found = await eventually(published, what="three versions on the definitions topic")
    records = sorted(found, key=lambda r: r.key)  # keyed per version: any partitions
    kind = body.get("kind", plural[:-1])
    assert [r.key for r in records] == [f"{kind}:acme:{body['id']}:{v}".encode()
                                        for v in (1, 2, 3)]
    assert [orjson.loads(r.value) for r in records] == [v["definition"] for v in versions]


async def test_definition_errors_are_the_validators_words(api: Api) -> None:
    """An invalid workflow answers 422 problem+json with one error per validator message."""
    h = await api.key("acme", "editor")
    bad = {**WORKFLOW, "timezone": "Mars/Base", "steps": {
        "hello": {"kind": "send_mms", "body": "{{ nope }}", "media_urls": ["http://x/a.png"],
                  "next": "missing"}}}
    r = await api.client.post("/v1/accounts/acme/workflows", json=bad, headers=h)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(problem)
    msgs = {(tuple(e["loc"]), e["msg"]) for e in problem["errors"]}
    assert (("body", "timezone"), "unknown IANA time zone 'Mars/Base'") in msgs
    assert (("body", "steps", "hello"), "media_urls must be https:// URLs") in msgs
    assert (("body", "steps", "hello", "next"), "unknown step 'missing'") in msgs
    r = await api.client.get("/v1/accounts/acme/workflows?limit=500", headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "limit"]


async def test_policy_round_trip_and_campaign_interval(api: Api) -> None:
    """The policy starts as the defaults; a PUT makes v1; a campaign is held to its
    campaign_min_interval (the workers' parse_campaign check)."""
    c, h = api.client, await api.key("acme", "editor")
    r = await c.get("/v1/accounts/acme/policy", headers=h)
    assert r.json()["version"] == 0 and r.json()["definition"]["timezone"] == "UTC"
    r = await c.put("/v1/accounts/acme/policy", headers=h, json={
        "timezone": "Europe/Berlin", "caps": {"limits": {"day": 2}},
        "campaign_min_interval": "1d"})
    assert r.status_code == 200, r.text
    assert (await c.get("/v1/accounts/acme/policy", headers=h)).json()["version"] == 1
    hourly = {**CAMPAIGN, "schedule": {"type": "recurring", "cron": "0 * * * *",
                                       "start": "2030-01-01T00:00"}}
    r = await c.post("/v1/accounts/acme/campaigns", headers=h, json=hourly)
    assert r.status_code == 422, r.text
    assert "more often than the minimum interval of 24h00m" in r.json()["errors"][0]["msg"]


async def test_keys_suppressions_campaign_controls(api: Api) -> None:
    """Keys: created, listed, revoked (then refused). Suppressions: added, shown, lifted.
    Campaign: paused, resumed, cancelled (final)."""
    c = api.client
    admin = await api.key("acme", "admin")
    r = await c.post("/v1/accounts/acme/keys", headers=admin, json={"role": "viewer"})
    viewer_id, viewer = r.json()["key_id"], {"Authorization": f"Bearer {r.json()['key']}"}
    assert (await c.get("/v1/accounts/acme/workflows", headers=viewer)).status_code == 200
    listed = (await c.get("/v1/accounts/acme/keys", headers=admin)).json()
    assert viewer_id in {k["key_id"] for k in listed} and all(k["key"] is None for k in listed)
    assert (await c.delete(f"/v1/accounts/acme/keys/{viewer_id}", headers=admin)
            ).status_code == 200
    assert (await c.get("/v1/accounts/acme/workflows", headers=viewer)).status_code == 401

    op = await api.key("acme", "operator")
    r = await c.post("/v1/accounts/acme/suppressions", headers=op,
                     json={"address": "+14155550101", "reason": "manual"})
    assert r.status_code == 202

    async def shown() -> Any:
        r = await c.get("/v1/accounts/acme/suppressions/+14155550101", headers=op)
        return r.json() if r.status_code == 200 else None

    assert (await eventually(shown, what="suppression"))["reason"] == "manual"
    page = (await c.get("/v1/accounts/acme/suppressions", headers=op)).json()
    assert page["items"] == [{"address": "+14155550101", "reason": "manual"}]
    await c.delete("/v1/accounts/acme/suppressions/+14155550101", headers=op)

    async def lifted() -> bool:
        r = await c.get("/v1/accounts/acme/suppressions/+14155550101", headers=op)
        return r.status_code == 404

    await eventually(lifted, what="suppression lifted")

    editor = await api.key("acme", "editor")
    assert (await c.post("/v1/accounts/acme/campaigns", headers=editor, json=CAMPAIGN)
            ).status_code == 201
    base = "/v1/accounts/acme/campaigns/spring"
    for action, status in (("pause", "paused"), ("resume", "running"),
                           ("cancel", "cancelled")):
        assert (await c.post(f"{base}/{action}", headers=op)).status_code == 202
        assert (await c.get(f"{base}/progress", headers=op)).json()["status"] == status
    assert (await c.post(f"{base}/resume", headers=op)).status_code == 409
    preview = (await c.get(f"{base}/preview", headers=op)).json()
    assert preview == {"campaign": "spring", "audience": 0, "first": []}


async def test_events_accept_the_good_and_explain_the_bad(api: Api) -> None:
    """A mixed batch: valid events published, each invalid one rejected with exactly the
    contract parser's reason and detail; another account's event is refused."""
    h = await api.key("acme", "ingest")
    good = build_event("acme", "c-1", "contact.created", {"phone": "+14155550101"},
                       event_id="e-1")
    bad_data = build_event("acme", "c-2", "purchase.completed", {"amount": "-1"},
                           event_id="e-2")
    bad_zone = build_event("acme", "c-3", "contact.updated", {"timezone": "Mars/Base"},
                           event_id="e-3")
    other = build_event("other", "c-4", "contact.tagged", {"tag": "vip"}, event_id="e-4")
    deep: Any = {}
    for _ in range(400):
        deep = {"a": deep}
    nested = build_event("acme", "c-5", "custom.deep", deep, event_id="e-5")
    batch = [good, bad_data, [1, 2], bad_zone, other, "text", nested, None]
    r = await api.client.post("/v1/accounts/acme/events", headers=h, json=batch)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "rejected", "rejected", "rejected",
                                              "rejected", "rejected", "rejected", "rejected"]
    for index in (1, 3):
        with pytest.raises(Rejected) as exc:
            parse_event(encode_event(batch[index]))
        assert (results[index]["reason"], results[index]["detail"]) == (
            exc.value.reason, exc.value.detail)
    assert results[3]["reason"] == "invalid_timezone"
    for index, kind in ((2, "list"), (5, "str"), (7, "NoneType")):
        with pytest.raises(Rejected) as exc:
            parse_event(orjson.dumps(batch[index]))
        assert (results[index]["reason"], results[index]["detail"]) == (
            "malformed_json", exc.value.detail) == ("malformed_json",
                                                   f"expected a JSON object, got {kind}")
    assert results[4]["reason"] == "account_mismatch"
    assert results[6]["reason"] == "malformed_json"
    assert r.json()["accepted"] == 1
    single = await api.client.post("/v1/accounts/acme/events", headers=h,
                                   json=build_event("acme", "c-9", "contact.tagged",
                                                    {"tag": "x"}))
    assert single.json()["accepted"] == 1
    r = await api.client.post("/v1/accounts/acme/events", headers=h, json=[good] * 501)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    r = await api.client.post("/v1/accounts/acme/events", content=b"{nope",
                              headers={**h, "content-type": "application/json"})
    assert r.status_code == 400
    records = await api.stack.read_topic("contact-events", 2)
    assert {rec.key for rec in records} == {b"c-1", b"c-9"}


async def test_rate_limit_and_body_limit(api: Api) -> None:
    """Past the per-key rate: 429 with Retry-After; a body over the limit: 413."""
    svc = api.services
    h = await api.key("acme", "viewer")
    object.__setattr__(svc, "api", svc.api.model_copy(update={"rate_limit": 3}))
    codes = [(await api.client.get("/v1/accounts/acme/workflows", headers=h))
             for _ in range(4)]
    assert [r.status_code for r in codes[:3]] == [200] * 3
    assert codes[3].status_code == 429 and int(codes[3].headers["retry-after"]) >= 1
    r = await api.client.post("/v1/accounts/acme/events", headers=h,
                              content=b"[" + b"1," * 600_000 + b"1]")
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
