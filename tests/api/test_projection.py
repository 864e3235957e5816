"""One source of truth: the definitions topic is the record the workers run, and the
admin API projects it (api/projection.py). What ``dripstream define`` publishes appears
in the API and on the dashboard; what the API writes is checked against the topic and
read back; a publication that lost its key to another publisher's is refused, whoever
publishes."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from api.app import create_app
from tests.api.conftest import Api, Databases, api_settings
from tests.integration.test_cli import dripstream
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

WORKFLOW: dict[str, Any] = {
    "kind": "workflow", "id": "welcome", "account": "acme", "name": "Welcome", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "hello",
    "steps": {"hello": {"kind": "send_sms", "body": "Hi"}},
}
CAMPAIGN: dict[str, Any] = {
    "kind": "campaign", "id": "spring", "account": "acme", "name": "Spring sale",
    "version": 1, "content": {"channel": "sms", "body": "Sale!"},
    "schedule": {"type": "once", "at": "2030-03-01T10:00", "timezone": "UTC"},
}


async def define(stack: Stack, definition: dict[str, Any]) -> tuple[int, str]:
    """`dripstream define -` against the stack: exit status and stderr."""
    result = await dripstream(stack.env, "define", "-", stdin=json.dumps(definition))
    return result.returncode, result.stderr.strip()


async def dashboard(api: Api, account: str) -> httpx.AsyncClient:
    """The API's client logged in to the dashboard with the bootstrap key."""
    form = await api.client.get("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None, form.text
    r = await api.client.post("/dashboard/login", data={
        "csrf": csrf.group(1), "key": api.bootstrap, "account": account})
    assert r.status_code == 303, r.text
    return api.client


async def test_cli_definitions_appear_in_the_api_and_on_the_dashboard(api: Api) -> None:
    """A workflow and a campaign defined with the CLI are listed, versioned (who published
    them) and controllable through the API, and shown on the dashboard (before: 404 and
    "No campaigns yet.")."""
    h = await api.key("acme", "operator")
    assert (0, "") == await define(api.stack, WORKFLOW)
    assert (0, "") == await define(api.stack, {**WORKFLOW, "version": 2, "name": "Welcome 2"})
    assert (0, "") == await define(api.stack, CAMPAIGN)

    async def listed() -> Any:
        r = await api.client.get("/v1/accounts/acme/workflows", headers=h)
        items = r.json()["items"]
        return items if items and items[0]["version"] == 2 else None

    [workflow] = await eventually(listed, what="the CLI's workflow in the API")
    versions = (await api.client.get("/v1/accounts/acme/workflows/welcome/versions",
                                     headers=h)).json()
    assert [(1, "Welcome"), (2, "Welcome 2")] == [
        (v["version"], v["definition"]["name"]) for v in versions]
    assert workflow["created_by"].startswith("cli:")
    progress = await api.client.get("/v1/accounts/acme/campaigns/spring/progress", headers=h)
    assert (200, "running") == (progress.status_code, progress.json()["status"])
    paused = await api.client.post("/v1/accounts/acme/campaigns/spring/pause", headers=h)
    assert 202 == paused.status_code, paused.text
    status = await dripstream(api.stack.env, "campaign", "status", "spring",
                              "--account", "acme")
    assert "paused" == json.loads(status.stdout)["status"], status.stderr

    client = await dashboard(api, "acme")
    assert "Spring sale" in (await client.get("/dashboard/acme/campaigns")).text
    assert "welcome" in (await client.get("/dashboard/acme/workflows")).text


async def test_cli_controls_count_in_the_api_status(api: Api) -> None:
    """A campaign paused with `dripstream campaign pause` is paused for the API too (its
    status came from the API's own control rows)."""
    h = await api.key("acme", "editor")
    body = {k: v for k, v in CAMPAIGN.items() if k not in ("kind", "account", "version")}
    assert 201 == (await api.client.post("/v1/accounts/acme/campaigns", headers=h,
                                         json=body)).status_code

    paused = await dripstream(api.stack.env, "campaign", "pause", "spring", "--account", "acme")
    assert 0 == paused.returncode, paused.stderr

    async def status() -> bool:
        r = await api.client.get("/v1/accounts/acme/campaigns/spring/progress", headers=h)
        return bool(r.json()["status"] == "paused")

    await eventually(status, what="the CLI's pause in the API's status")


async def test_the_cli_refuses_another_body_at_a_version_the_api_wrote(api: Api) -> None:
    """The API's v1 is on the topic: the CLI's changed v1 is refused (exit 3), its v2 is
    the next version of the same sequence, and the API's next PUT is v3."""
    h = await api.key("acme", "editor")
    body = {k: v for k, v in WORKFLOW.items() if k not in ("kind", "account", "version")}
    assert 201 == (await api.client.post("/v1/accounts/acme/workflows", headers=h,
                                         json=body)).status_code

    assert (3, "refused: workflow acme/welcome v1 is published already with another body "
               "(the workers run the first one): publish your change as v2") == (
        await define(api.stack, {**WORKFLOW, "name": "Changed"}))
    assert (0, "") == await define(api.stack, {**WORKFLOW, "version": 2, "name": "CLI"})

    r = await api.client.put("/v1/accounts/acme/workflows/welcome", headers=h,
                             json={**body, "name": "API"})
    assert (200, 3) == (r.status_code, r.json()["version"]), r.text


async def test_an_api_write_that_loses_its_key_is_a_409(api: Api) -> None:
    """The API committed v2, but another publisher's v2 reached the topic before its
    outbox record: 409, the store shows the body the workers run, and the topic's last
    record for the key is that body (compaction keeps it). Before: 201, then ignored."""
    h = await api.key("acme", "editor")
    body = {k: v for k, v in WORKFLOW.items() if k not in ("kind", "account", "version")}
    assert 201 == (await api.client.post("/v1/accounts/acme/workflows", headers=h,
                                         json=body)).status_code
    relay = api.services.extra["relay"]
    release = asyncio.Event()
    relay_once = relay.relay_once

    async def held() -> int:  # the relay waits: the other publisher gets there first
        await release.wait()
        return int(await relay_once())

    relay.relay_once = held
    put = asyncio.create_task(api.client.put("/v1/accounts/acme/workflows/welcome",
                                             headers=h, json={**body, "name": "API"}))
    await eventually(relay.pending, what="the API's v2 in the outbox")
    await api.stack.define({**WORKFLOW, "version": 2, "name": "Other"})
    release.set()
    r = await put

    assert 409 == r.status_code, r.text
    assert r.json()["detail"].startswith("workflow 'welcome' v2 was published meanwhile by "
                                         "another publisher with another body")
    versions = (await api.client.get("/v1/accounts/acme/workflows/welcome/versions",
                                     headers=h)).json()
    assert [(1, "Welcome"), (2, "Other")] == [(v["version"], v["definition"]["name"])
                                              for v in versions]

    async def last_is_the_winner() -> bool:
        records = sorted((r for r in await api.stack.read_all("definitions")
                          if r.key == b"workflow:acme:welcome:2"), key=lambda r: r.offset)
        return bool(records) and json.loads(records[-1].value)["name"] == "Other"

    await eventually(last_is_the_winner, what="the winner last on the topic")


async def test_the_projection_puts_the_winner_back_after_a_loser(
    stack: Stack, databases: Databases,
) -> None:
    """A topic whose last record for a key is a loser (a race lost while no API ran):
    the API's projection publishes the first body again and shows that one."""
    await stack.define(dict(WORKFLOW))
    await stack.define({**WORKFLOW, "name": "Loser"})
    settings = api_settings(databases.new())
    app = create_app(stack.settings, settings, clock=stack.now)
    async with AsyncExitStack() as exits:
        await exits.enter_async_context(app.router.lifespan_context(app))
        client = await exits.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"))
        assert settings.bootstrap_key is not None
        h = {"Authorization": f"Bearer {settings.bootstrap_key.get_secret_value()}"}

        async def restored() -> list[str] | None:
            names = [json.loads(r.value)["name"] for r in sorted(
                await stack.read_all("definitions"), key=lambda r: r.offset)]
            return names if names[-1] == "Welcome" else None

        assert ["Welcome", "Loser", "Welcome"] == await eventually(
            restored, what="the first body re-published")
        shown = (await client.get("/v1/accounts/acme/workflows/welcome", headers=h)).json()
        assert ("Welcome", "topic") == (shown["definition"]["name"], shown["created_by"])
