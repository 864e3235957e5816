"""The dashboard in a real headless Chromium, against a real stack: PostgreSQL (a database
made for the test), Redis, the broker, one worker, and the API served by uvicorn on a free
port. The pages show what the JSON API answers, their buttons act, viewers have none and
a form without its CSRF token is refused; an ingest key cannot log in; a campaign's
executions lead to the campaign, deleted definitions say so, times read one way with the
zone named, charts fill their card in fixed colours, the lag is summarised and workflows
are one compact table.

Chromium: Debian's (``/usr/bin/chromium``, or ``DRIPSTREAM_TEST_CHROMIUM``); ``.ci/run``
installs it. Screenshots go to ``DRIPSTREAM_DASHBOARD_SCREENSHOTS`` (docs/dashboard/ was
made that way) or the test's ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from playwright.async_api import ConsoleMessage, Error, Page, async_playwright, expect

from api.app import create_app
from api.charts import colour
from api.dashboard import CHANNELS
from producers.publisher import build_event
from streams.settings import Settings
from tests.api.conftest import api_settings
from tests.api.test_end_to_end import DRIP
from tests.stack import Stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]

CAMPAIGN = {"id": "spring", "name": "Spring", "content": {"channel": "sms", "body": "Sale!"},
            "schedule": {"type": "once", "at": "2030-03-01T10:00"}}
KINDS = ("events", "sends", "nonsends", "deadletters")
#: An instant as the read model writes it (ISO with a T): never shown as such.
RAW_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
#: The flash campaign's zone: a half-hour offset, and the workers' 12:00 UTC is inside
#: its send hours (quiet hours are read in a content campaign's zone).
KOLKATA = ZoneInfo("Asia/Kolkata")



@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """The app on uvicorn in this event loop, on a port the OS picked; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            task.result()  # raises what stopped it
            raise AssertionError("uvicorn stopped before it started")
        return server.started

    try:
        await eventually(started, timeout=60, what="the API to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def dashboard_page(chromium: str, problems: list[str]) -> AsyncIterator[Page]:
    """A page of a fresh headless Chromium (1280x800, 15 s default timeout) whose console
    errors and uncaught exceptions go to ``problems``."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium)
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        page = await context.new_page()
        watch(page, problems)
        try:
            yield page
        finally:
            await browser.close()


@asynccontextmanager
async def admin_api(stack: Stack, database_url: str, role: str = "viewer",
                    settings: Settings | None = None
                    ) -> AsyncIterator[tuple[str, httpx.AsyncClient, str]]:
    """The admin API for ``stack`` (its settings, or ``settings``) served on a free port,
    a client of it, and a new API key of ``role`` for acme: (base URL, client, key)."""
    api = api_settings(database_url)
    assert api.bootstrap_key is not None
    boot = {"Authorization": f"Bearer {api.bootstrap_key.get_secret_value()}"}
    app = create_app(settings or stack.settings, api, clock=stack.now)
    async with served(app) as base, httpx.AsyncClient(base_url=base, timeout=60) as c:
        r = await c.post("/v1/accounts/acme/keys", headers=boot,
                         json={"role": role, "name": role})
        assert "key" in r.json(), r.text
        yield base, c, r.json()["key"]


async def log_in(page: Page, base: str, key: str) -> None:
    """The dashboard's login form with ``key``: the account's overview opens."""
    await page.goto(f"{base}/dashboard/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/dashboard/acme")


def watch(page: Page, problems: list[str]) -> None:
    """Collect the page's console errors and uncaught exceptions."""
    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"{page.url}: console: {message.text}")

    def crashed(error: Error) -> None:
        problems.append(f"{page.url}: pageerror: {error}")

    page.on("console", console)
    page.on("pageerror", crashed)


def expected_error(problems: list[str], since: int, status: int) -> None:
    """Chromium logs a console error for a page answered with an error status: the ones
    a step provoked on purpose (and only those) are taken off the list."""
    provoked = problems[since:]
    assert provoked and all(f"status of {status}" in p for p in provoked), provoked
    del problems[since:]


def totals(minutes: list[dict[str, Any]]) -> dict[str, int]:
    return {kind: sum(sum(m[kind].values()) for m in minutes) for kind in KINDS}


def as_shown(iso: str) -> str:
    """An instant as the dashboard shows every one."""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def no_raw_times(page: Page) -> None:
    """No time on the page is raw ISO (a T, microseconds, an offset)."""
    text = await page.locator("main").inner_text()
    assert not RAW_TIME.search(text), (page.url, RAW_TIME.findall(text))


@pytest.mark.slow
async def test_dashboard_pages_buttons_and_roles(stack: Stack, database_url: str,
                                                 chromium: str, shots: Path) -> None:
    """Each page shows what the JSON API answers; pause pauses; viewers get no buttons
    and are refused; a form without its CSRF token is 403; no page logs an error."""
    settings = api_settings(database_url)
    assert settings.bootstrap_key is not None
    boot = {"Authorization": f"Bearer {settings.bootstrap_key.get_secret_value()}"}
    app = create_app(stack.settings, settings, clock=stack.now)  # the workers' clock
    async with served(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        keys: dict[str, str] = {}
        key_ids: dict[str, str] = {}
        for role in ("viewer", "operator", "editor", "ingest"):
            r = await c.post("/v1/accounts/acme/keys", headers=boot,
                             json={"role": role, "name": role})
            assert r.status_code == 201, r.text
            keys[role], key_ids[role] = r.json()["key"], r.json()["key_id"]
        bearer = {role: {"Authorization": f"Bearer {k}"} for role, k in keys.items()}
        now = stack.now()
        # A content campaign five minutes away in Kolkata time: it runs as the
        # pseudo-workflow campaign:flash, which the workflows page must not list.
        flash_at = (now + timedelta(minutes=5)).replace(second=0, microsecond=0)
        flash = {"id": "flash", "name": "Flash", "audience": {"groups": ["customers"]},
                 "content": {"channel": "sms", "body": "Flash sale!"},
                 "schedule": {"type": "once", "timezone": "Asia/Kolkata",
                              "at": flash_at.astimezone(KOLKATA).strftime("%Y-%m-%dT%H:%M")}}
        for path, body in (("workflows", DRIP), ("campaigns", CAMPAIGN),
                           ("campaigns", flash),
                           ("workflows", {**DRIP, "id": "old", "name": "Old drip"}),
                           ("campaigns", {**CAMPAIGN, "id": "autumn", "name": "Autumn"})):
            r = await c.post(f"/v1/accounts/acme/{path}", json=body, headers=bearer["editor"])
            assert r.status_code == 201, r.text
        for path in ("workflows/old", "campaigns/autumn"):  # deleted: inactive versions
            r = await c.delete(f"/v1/accounts/acme/{path}", headers=bearer["editor"])
            assert r.status_code == 200, r.text
        stack.start_worker()
        events = [
            build_event("acme", "c-1", "contact.created", {
                "phone": "+14155550101", "consent": {"sms": True},
                "attributes": {"first_name": "Ada"}}, event_id="c1-created", time=now),
            build_event("acme", "c-1", "contact.tagged", {"tag": "vip"}, event_id="c1-tag",
                        time=now),
            build_event("acme", "c-1", "contact.added_to_group", {"group": "customers"},
                        event_id="c1-group", time=now),
            # No consent: its first send does not go, and the audit says why.
            build_event("acme", "c-2", "contact.created", {
                "phone": "+14155550102", "consent": {"sms": False}}, event_id="c2-created",
                time=now),
            # A contact id with a slash (the contract allows it): its page opens.
            build_event("acme", "team/ann", "contact.created", {
                "phone": "+14155550103", "consent": {"sms": False}}, event_id="ann-created",
                time=now)]
        r = await c.post("/v1/accounts/acme/events", json=events, headers=bearer["ingest"])
        assert r.json()["accepted"] == 5, r.text
        read = bearer["operator"]
        c1 = "/v1/accounts/acme/contacts/c-1"

        async def execution(status: str) -> dict[str, Any] | None:
            r = await c.get(f"{c1}/executions", params={"status": status}, headers=read)
            items = r.json()["items"] if r.status_code == 200 else []
            return items[0] if items else None

        async def settled() -> dict[str, Any] | None:
            """The stats once the five events, the send and the non-sends are counted."""
            r = await c.get("/v1/accounts/acme/stats", headers=read)
            found = totals(r.json()["minutes"])
            done = found["events"] == 5 and found["sends"] == 1 and found["nonsends"] == 2
            return found if done and await execution("waiting") else None

        await eventually(settled, timeout=60, what="the workflow to run")
        ex = await execution("waiting")
        assert ex is not None
        # The flash campaign's time comes: c-1 (in customers, with consent) gets its SMS.
        stack.skip((flash_at - stack.now()).total_seconds() + 1)

        async def flashed() -> dict[str, Any] | None:
            """The stats once the campaign's execution of c-1 completed (the same read
            model write counts its send)."""
            done = await execution("completed")
            if done is None or not done["workflow_id"].startswith("campaign:"):
                return None
            r = await c.get("/v1/accounts/acme/stats", headers=read)
            found = totals(r.json()["minutes"])
            return found if found["sends"] == 2 else None

        expected_totals = await eventually(flashed, timeout=60, what="the campaign to send")
        flash_ex = await execution("completed")
        assert flash_ex is not None
        # The worker reports its lag every 5 s, on the wall clock.
        await eventually(lambda: stack.read_model.lag(datetime.now(UTC)), timeout=20,
                         what="the worker's lag report")

        problems: list[str] = []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium)
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(15_000)
            page = await context.new_page()
            watch(page, problems)

            async def shot(name: str) -> None:
                await page.screenshot(path=shots / f"{name}.png")

            # An ingest key may not read a page: its login is refused, saying why.
            await page.goto(f"{base}/dashboard/")
            await expect(page).to_have_url(f"{base}/dashboard/login")
            await shot("login")
            since = len(problems)
            await page.fill("#key", keys["ingest"])
            await page.click("button[type=submit]")
            await expect(page.get_by_test_id("login-error")).to_contain_text(
                "an ingest key only posts events")
            await expect(page).to_have_url(f"{base}/dashboard/login")
            expected_error(problems, since, 403)

            # Log in as an operator.
            await page.fill("#key", keys["operator"])
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{base}/dashboard/acme")

            # Overview: the stats' totals, as GET /stats sums them.
            for kind in KINDS:
                await expect(page.get_by_test_id(f"total-{kind}")).to_have_text(
                    str(expected_totals[kind]))
            # The lag: one row per topic, summing its partitions (collapsed below).
            await expect(page.get_by_test_id("lag-summary")).to_be_visible()
            await expect(page.locator("[data-testid=lag-details] table")).to_be_hidden()
            per_topic: dict[str, int] = {}
            for cell in await page.locator("[data-testid=lag-details] td[data-testid]").all():
                topic = (await cell.get_attribute("data-testid") or "").removeprefix("lag-")
                topic = topic.rsplit("-", 1)[0]
                per_topic[topic] = per_topic.get(topic, 0) + int(await cell.text_content()
                                                                 or "")
            assert len(per_topic) >= 1
            rows = page.locator("[data-testid=lag-summary] td[data-testid^=lag-total-]")
            await expect(rows).to_have_count(len(per_topic))
            for topic, total in per_topic.items():
                await expect(page.get_by_test_id(f"lag-total-{topic}")).to_have_text(
                    str(total))
            # Charts fill their card; a channel has its fixed colour.
            for chart in await page.locator("svg.chart").all():
                width, card = await chart.evaluate(
                    "e => [e.getBoundingClientRect().width, e.closest('section').clientWidth]")
                assert width >= 0.95 * card, (width, card)
            sms = page.locator("li[data-series=sms] rect")
            await expect(sms).to_have_attribute("fill", colour("sms", CHANNELS))
            await no_raw_times(page)
            await shot("overview")

            # Workflows: executions by status and per step, as GET /counts answers.
            await page.click("text=Workflows")
            counts = (await c.get("/v1/accounts/acme/workflows/drip/counts",
                                  headers=read)).json()
            # c-2's and team/ann's runs go on unsent
            assert counts["statuses"]["waiting"] == 3, counts
            for status, n in counts["statuses"].items():
                await expect(page.get_by_test_id(f"count-drip-{status}")).to_have_text(str(n))
            for step, n in counts["steps"].items():
                await expect(page.get_by_test_id(f"step-drip-{step}")).to_have_text(str(n))
            # One compact table: a row per workflow, no campaign pseudo-workflow, the
            # deleted one inactive.
            await expect(page.locator("main section")).to_have_count(1)
            ids = [await r.get_attribute("data-testid") for r in
                   await page.locator("[data-testid=workflows] tr[data-testid]").all()]
            assert ids == ["workflow-drip", "workflow-old"], ids
            await expect(page.get_by_test_id("workflow-state-drip")).to_have_text("active")
            await expect(page.get_by_test_id("workflow-state-old")).to_have_text("inactive")
            await no_raw_times(page)
            await shot("workflows")

            # Its executions, then the waiting one's timeline.
            await page.click("a[href$='/workflows/drip']")
            await expect(page.get_by_test_id("execution-link")).to_have_count(3)
            await no_raw_times(page)
            await shot("executions")
            await page.locator("[data-testid=execution-link][href*='/contacts/c-1/']").click()
            await expect(page.get_by_test_id("status")).to_have_text("waiting")
            await expect(page.get_by_test_id("timeline")).to_contain_text("hello")
            await expect(page.get_by_test_id("started")).to_have_text(
                as_shown(ex["started_at"]))
            await no_raw_times(page)
            await shot("execution")
            execution_url = page.url

            # A forged form (the session's cookie, no token or a wrong one) is refused.
            for form in ({}, {"csrf": "forged"}):
                r2 = await context.request.post(f"{execution_url}/pause", form=form)
                assert r2.status == 403, (form, r2.status, await r2.text())

            # Pause: the JSON API shows it paused, a moment later.
            await page.get_by_test_id("pause").click()
            await expect(page.get_by_test_id("flash")).to_contain_text("pause sent")
            await eventually(lambda: execution("paused"), timeout=30,
                             what="the execution paused")
            await page.reload()
            await expect(page.get_by_test_id("status")).to_have_text("paused")
            await expect(page.get_by_test_id("resume")).to_be_visible()

            # The contact page: consent, groups and tags as GET /contacts/c-1 answers.
            shown = (await c.get(c1, headers=read)).json()["contact"]
            await page.goto(f"{base}/dashboard/acme/contacts/c-1")
            await expect(page.get_by_test_id("consent-sms")).to_have_text(
                f"sms: {'yes' if shown['consent']['sms'] else 'no'}")
            await expect(page.get_by_test_id("tags")).to_have_text(", ".join(shown["tags"]))
            await expect(page.get_by_test_id("groups")).to_have_text(
                ", ".join(shown["groups"]))
            assert (shown["tags"], shown["groups"]) == (["vip"], ["customers"])
            await expect(page.get_by_test_id("sends")).to_contain_text("sms")
            await no_raw_times(page)
            await shot("contact")
            # The campaign's execution leads to the campaign, not to a workflow page.
            await page.goto(f"{base}/dashboard/acme/contacts/c-1/executions/{flash_ex['id']}")
            await expect(page.get_by_test_id("source")).to_contain_text("campaign flash")
            await page.get_by_test_id("campaign-link").click()
            await expect(page).to_have_url(f"{base}/dashboard/acme/campaigns#campaign-flash")
            await expect(page.get_by_test_id("campaign-flash")).to_be_visible()
            # A hand-made workflow URL of it is a page that says what is wrong, not JSON.
            since = len(problems)
            answer = await page.goto(f"{base}/dashboard/acme/workflows/campaign:flash")
            assert answer is not None and answer.status == 422
            assert answer.headers["content-type"].startswith("text/html")
            await expect(page.get_by_test_id("problem")).to_contain_text("workflow_id")
            expected_error(problems, since, 422)
            # c-2: why its send did not go, as GET /audit says, its origin in words.
            audit = (await c.get("/v1/accounts/acme/audit", headers=read)).json()["items"]
            reasons = [a["reason"] for a in audit if a["contact_id"] == "c-2"]
            assert reasons, audit
            await page.goto(f"{base}/dashboard/acme/contacts/c-2")
            await expect(page.get_by_test_id("audit-reason")).to_have_text(reasons)
            await expect(page.get_by_test_id("origin")).to_have_text(
                "workflow drip v1, step hello, execution drip/c2-created")
            await expect(page.get_by_test_id("audit-details")).not_to_contain_text("{")
            await no_raw_times(page)
            await shot("contact-nonsend")
            # A contact id with a slash: listed, and its page opens from the list.
            await page.goto(f"{base}/dashboard/acme/contacts")
            await page.get_by_role("link", name="team/ann", exact=True).click()
            await expect(page.locator("h1")).to_have_text("Contact team/ann")

            # Campaigns: status and progress; pause goes through the API's function.
            await page.click("text=Campaigns")
            await expect(page.get_by_test_id("campaign-status-spring")).to_have_text("running")
            # Deleted: inactive, and no button.
            await expect(page.get_by_test_id("campaign-status-autumn")).to_have_text("inactive")
            await expect(page.locator("[data-testid=campaign-autumn] button")).to_have_count(0)
            # The occurrence in its schedule's zone and as the UTC instant, one format.
            await expect(page.get_by_test_id("occurrence-flash")).to_have_text(
                flash_at.astimezone(KOLKATA).strftime("%Y-%m-%d %H:%M:%S Asia/Kolkata"))
            await expect(page.get_by_test_id("occurrence-at-flash")).to_have_text(
                flash_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
            await no_raw_times(page)
            await shot("campaigns")
            await page.get_by_test_id("campaign-spring").get_by_test_id("campaign-pause").click()
            await expect(page.get_by_test_id("campaign-status-spring")).to_have_text("paused")
            progress = (await c.get("/v1/accounts/acme/campaigns/spring/progress",
                                    headers=read)).json()
            assert progress["status"] == "paused", progress

            # A viewer sees no buttons, and the role check refuses its POST (with a token).
            viewer = await browser.new_context(viewport={"width": 1280, "height": 800})
            viewer.set_default_timeout(15_000)
            vpage = await viewer.new_page()
            watch(vpage, problems)
            await vpage.goto(f"{base}/dashboard/login")
            await vpage.fill("#key", keys["viewer"])
            await vpage.click("button[type=submit]")
            await expect(vpage).to_have_url(f"{base}/dashboard/acme")
            await vpage.goto(execution_url)
            await expect(vpage.get_by_test_id("status")).to_have_text("paused")
            await expect(vpage.locator("button[data-testid]")).to_have_count(0)
            token = await vpage.locator("input[name=csrf]").first.get_attribute("value")
            assert token
            r2 = await viewer.request.post(f"{execution_url}/resume", form={"csrf": token})
            assert r2.status == 403, (r2.status, await r2.text())
            await vpage.goto(f"{base}/dashboard/acme/campaigns")
            await expect(vpage.locator("button[data-testid]")).to_have_count(0)

            # A revoked key ends its sessions; logging out ends the operator's.
            r = await c.delete(f"/v1/accounts/acme/keys/{key_ids['viewer']}", headers=boot)
            assert r.status_code == 200, r.text
            await vpage.goto(f"{base}/dashboard/acme")
            await expect(vpage).to_have_url(f"{base}/dashboard/login")
            await page.click("text=Log out")
            await expect(page).to_have_url(f"{base}/dashboard/login")
            await page.goto(f"{base}/dashboard/acme/workflows")
            await expect(page).to_have_url(f"{base}/dashboard/login")
            await browser.close()
        assert problems == []
