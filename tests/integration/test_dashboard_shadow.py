"""A shadow version published through the admin API, run by ``dripstream shadow run``
beside the live one, and its report on ``GET /v1/accounts/{account}/shadow`` and on the
dashboard's Shadow page in a real headless Chromium (real PostgreSQL, Redis, broker,
worker and API on uvicorn)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.async_api import expect

from api.app import create_app
from tests.api.conftest import api_settings
from tests.conftest import Broker
from tests.integration.test_dashboard import dashboard_page, served
from tests.integration.test_shadow import SHADOW, start_shadow
from tests.integration.test_simulation import WELCOME, signup, sms_count
from tests.stack import Stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]

URL = "/v1/accounts/acme"


@pytest.fixture
async def stack(broker: Broker, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(broker.bootstrap, redis_url, tmp_path, embedded=broker.embedded, partitions=1)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()



def body(definition: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in definition.items() if k not in ("account", "version")}


@pytest.mark.slow
async def test_a_shadow_published_through_the_api_is_reported_on_the_page(
        stack: Stack, database_url: str, chromium: str, shots: Path) -> None:
    """The API keeps showing the live version while v2 is in shadow; the worker runs v1;
    the report route and the page say the same: v2's welcome in both with another text."""
    settings = api_settings(database_url)
    assert settings.bootstrap_key is not None
    boot = {"Authorization": f"Bearer {settings.bootstrap_key.get_secret_value()}"}
    app = create_app(stack.settings, settings, clock=stack.now)
    async with served(app) as base, httpx.AsyncClient(base_url=base, timeout=60) as c:
        keys = {}
        for role in ("editor", "viewer"):
            r = await c.post(f"{URL}/keys", headers=boot, json={"role": role, "name": role})
            assert r.status_code == 201, r.text
            keys[role] = {"Authorization": f"Bearer {r.json()['key']}"}
        r = await c.post(f"{URL}/workflows", headers=keys["editor"], json=body(WELCOME))
        assert r.status_code == 201, r.text
        r = await c.put(f"{URL}/workflows/welcome", headers=keys["editor"], json=body(SHADOW))
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["definition"]["shadow"]) == (2, True)
        # The live version is still v1, on the API as on the workers.
        r = await c.get(f"{URL}/workflows/welcome", headers=keys["viewer"])
        assert r.json()["version"] == 1, r.text
        r = await c.get(f"{URL}/workflows", headers=keys["viewer"])
        assert [(d["id"], d["version"]) for d in r.json()["items"]] == [("welcome", 1)]

        stack.start_worker()
        start_shadow(stack)
        for contact in ("ann", "bob", "cat"):
            await stack.publisher.send(signup(contact))
        await eventually(lambda: sms_count(stack, 3), what="the live welcomes")
        sent = [orjson.loads(r.value)["body"] for r in await stack.read_all("send.sms")]
        assert all(text.startswith("Hi ") for text in sent), sent

        async def reported() -> dict[str, Any] | None:
            r = await c.get(f"{URL}/shadow", headers=keys["viewer"])
            assert r.status_code == 200, r.text
            return r.json() if r.json()["summary"]["both"] >= 3 else None

        answer = await eventually(reported, timeout=60, what="the shadow's welcomes")
        expected, lines = answer["summary"], answer["lines"]
        assert [(v["id"], v["version"]) for v in expected["shadows"]] == [("welcome", 2)]
        assert expected["both_with_other_body"] == 3, expected
        assert {line["body"] for line in lines if line["kind"] == "send"} == {
            "Welcome aboard, Ann!", "Welcome aboard, Bob!", "Welcome aboard, Cat!"}

        problems: list[str] = []
        async with dashboard_page(chromium, problems) as page:
            await page.goto(f"{base}/dashboard/login")
            await page.fill("#key", keys["viewer"]["Authorization"].split()[1])
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{base}/dashboard/acme")
            await page.click("text=Shadow")
            await expect(page).to_have_url(f"{base}/dashboard/acme/shadow")
            await expect(page.get_by_test_id("shadow-result")).to_be_visible()
            await expect(page.get_by_test_id("shadow-version")).to_have_count(1)
            # The page's window is the route's default: its counts are the route's.
            for name in ("sends", "both", "both_with_other_body", "only_simulated"):
                await expect(page.get_by_test_id(f"shadow-{name.replace('_', '-')}")
                             ).to_have_text(str(expected[name]))
            rows = page.get_by_test_id("shadow-line")
            shown = Counter([await row.get_attribute("data-diff") for row in await rows.all()])
            assert shown["both"] == 3, shown
            await expect(page.get_by_test_id("shadow-body").filter(
                has_text="Welcome aboard, Ann!")).to_have_count(1)
            await page.screenshot(path=shots / "shadow.png", full_page=True)
            # A window that ends before it starts says so.
            await page.fill("#since", "2026-03-02 00:00")
            await page.fill("#until", "2026-03-01 00:00")
            await page.get_by_test_id("shadow-run").click()
            await expect(page.get_by_test_id("shadow-error")).to_contain_text("is not before")
        assert [p for p in problems if "422" not in p] == []
