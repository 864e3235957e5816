"""The dashboard's journey lab in a real headless Chromium, against a real stack (PostgreSQL,
Redis, the broker, a worker, the API on uvicorn) after real traffic
(``tests/integration/test_simulation.py``'s): the page shows what
``POST /v1/accounts/{account}/simulations`` answers for the same candidates and window,
a message body is text (never markup), and a candidate the lab cannot take shows why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.async_api import Dialog, Page, async_playwright, expect

from api.app import create_app
from tests.api.conftest import api_settings
from tests.api.test_api_simulation import candidate_error
from tests.conftest import Broker
from tests.integration.test_dashboard import expected_error, served, watch
from tests.integration.test_simulation import WELCOME, traffic
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.surface]

#: A simulation reads every topic to its end: a page waits this long for one (ms).
RUN_MS = 240_000
#: Markup in a candidate's message: the page must show it as text.
XSS = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
#: welcome v2: one send (the same execution and step as v1's hello: the same message id).
CANDIDATE = {k: v for k, v in WELCOME.items() if k != "account"} | {
    "version": 2, "steps": {"hello": {"kind": "send_sms", "body": f"Welcome {XSS}"}}}
#: Its hello step names a step it does not have.
BROKEN = {**WELCOME, "steps": {"hello": {"kind": "send_sms", "body": "Hi", "next": "gone"}}}


@pytest.fixture
async def stack(broker: Broker, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """One partition: the lab reads the log partition by partition, topic by topic."""
    s = Stack(broker.bootstrap, redis_url, tmp_path, embedded=broker.embedded, partitions=1)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()



async def submit(page: Page, definitions: Any, since: str, until: str) -> None:
    text = definitions if isinstance(definitions, str) else orjson.dumps(
        definitions, option=orjson.OPT_INDENT_2).decode()
    await page.fill("#definitions", text)
    await page.fill("#since", since)
    await page.fill("#until", until)
    await page.get_by_test_id("lab-run").click(timeout=RUN_MS)  # it waits for the answer


async def test_the_lab_page_shows_what_the_api_answers(
        stack: Stack, database_url: str, chromium: str, shots: Path) -> None:
    """A viewer runs a candidate from the page: its summary, reasons, steps and lines are
    the JSON route's; the message's markup stays text; an invalid candidate, one of
    another account and text that is not JSON each say what is wrong (422), keeping what
    was typed; a form without its CSRF token is refused."""
    settings = api_settings(database_url)
    assert settings.bootstrap_key is not None
    boot = {"Authorization": f"Bearer {settings.bootstrap_key.get_secret_value()}"}
    app = create_app(stack.settings, settings, clock=stack.now)  # the workers' clock
    async with served(app) as base, httpx.AsyncClient(base_url=base,
                                                      timeout=RUN_MS / 1000) as c:
        r = await c.post("/v1/accounts/acme/keys", headers=boot,
                         json={"role": "viewer", "name": "lab"})
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        since = await traffic(stack)
        until = stack.now().isoformat()
        r = await c.post("/v1/accounts/acme/simulations",
                         headers={"Authorization": f"Bearer {key}"},
                         json={"definitions": [CANDIDATE], "since": since, "until": until})
        assert r.status_code == 200, r.text
        expected, lines = r.json()["summary"], r.json()["lines"]
        # The candidate changes something, and something was held back: both are shown.
        assert expected["only_actual"] > 0 and expected["not_sent"], expected

        problems: list[str] = []
        dialogs: list[str] = []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium)
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(15_000)
            page = await context.new_page()
            watch(page, problems)

            async def dialog(d: Dialog) -> None:
                dialogs.append(d.message)
                await d.dismiss()

            page.on("dialog", dialog)
            await page.goto(f"{base}/dashboard/login")
            await page.fill("#key", key)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{base}/dashboard/acme")
            await page.click("text=Journey lab")
            await expect(page).to_have_url(f"{base}/dashboard/acme/lab")
            await page.screenshot(path=shots / "lab-form.png")

            await submit(page, [CANDIDATE], since, until)
            await expect(page.get_by_test_id("lab-result")).to_be_visible(timeout=RUN_MS)
            await expect(page.get_by_test_id("lab-candidate")).to_have_text(
                expected["candidates"])
            for name in ("sends", "actual_sends", "both", "both_at_other_times",
                         "only_simulated", "only_actual", "handled"):
                await expect(page.get_by_test_id(f"lab-{name.replace('_', '-')}")
                             ).to_have_text(str(expected[name]))
            for reason in expected["not_sent"].keys() | expected["actual_not_sent"].keys():
                await expect(page.get_by_test_id(f"lab-reason-{reason}")).to_have_text(
                    str(expected["not_sent"].get(reason, 0)))
                await expect(page.get_by_test_id(f"lab-actual-reason-{reason}")).to_have_text(
                    str(expected["actual_not_sent"].get(reason, 0)))
            for field, testid in (("per_step", "lab-step"), ("per_channel", "lab-channel"),
                                  ("displaced", "lab-displaced")):
                for name, n in expected[field].items():
                    await expect(page.get_by_test_id(f"{testid}-{name}")).to_have_text(str(n))
            # Every line, marked as the route marks it.
            rows = page.get_by_test_id("lab-line")
            await expect(rows).to_have_count(len(lines))
            shown = Counter([await row.get_attribute("data-diff") for row in await rows.all()])
            assert shown == Counter(line.get("diff") if line["kind"] == "send" else line["kind"]
                                    for line in lines), shown
            assert shown["actual"] == expected["only_actual"]
            # The markup in a message is text: no element made of it, nothing run.
            marked = sum(XSS in line.get("body", "") for line in lines)
            assert marked == 3, lines  # welcome v2 to ann, bob and cat
            await expect(page.get_by_test_id("lab-body").filter(has_text=XSS)).to_have_count(
                marked)
            await expect(page.locator("main img, main script")).to_have_count(0)
            assert await page.title() == "Journey lab · dripstream"
            # What was typed is still there, to edit.
            assert orjson.loads(await page.input_value("#definitions")) == [CANDIDATE]
            await page.screenshot(path=shots / "lab.png", full_page=True)

            # What the lab cannot take: the reason, on the page, and the form as typed.
            for definitions, message in (
                    ([BROKEN], f"definitions[0]: {candidate_error(BROKEN)}"),
                    ({**CANDIDATE, "account": "other"},
                     "definitions[0]: account 'other' is not 'acme'"),
                    ('{"id": "welcome",', "the candidate definitions are not JSON")):
                before = len(problems)
                await submit(page, definitions, since, until)
                await expect(page.get_by_test_id("lab-error")).to_contain_text(message)
                await expect(page.get_by_test_id("lab-result")).to_have_count(0)
                await expect(page.locator("#since")).to_have_value(since)
                expected_error(problems, before, 422)
            await page.screenshot(path=shots / "lab-error.png")
            # A window that ends before it starts.
            before = len(problems)
            await submit(page, [], until, since)
            await expect(page.get_by_test_id("lab-error")).to_contain_text("is not before")
            expected_error(problems, before, 422)

            # A forged form (the session's cookie, no token) is refused, and runs nothing.
            r2 = await context.request.post(f"{base}/dashboard/acme/lab",
                                            form={"since": since, "until": until})
            assert r2.status == 403, (r2.status, await r2.text())
            await browser.close()
        assert problems == []
        assert dialogs == []
