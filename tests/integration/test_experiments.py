"""An A/B split with a control group and a conversion, end to end on a real broker:
signups through the worker, purchases from upstream, the windows closing on the
contacts' own timers, the worker SIGKILLed as they close, and ``dripstream report``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.async_api import expect

from producers.publisher import build_event
from tables.experiments import choose, in_control, in_holdout
from tests.integration.test_campaigns import completed_everywhere, local, signups
from tests.integration.test_dashboard import admin_api, dashboard_page, log_in
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration

BRANCHES = [{"name": "a", "weight": 1, "next": "sa"}, {"name": "b", "weight": 1, "next": "sb"}]
PROMO = {
    "id": "promo", "account": "acme", "name": "Promo", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "pick",
    "experiment": {"control": 30, "conversion": {
        "event": "purchase.completed",
        "criteria": [{"field": "event.data.amount", "op": "gt", "value": 0}],
        "window": "1d", "revenue": "event.data.amount"}},
    "steps": {"pick": {"kind": "split", "branches": BRANCHES},
              "sa": {"kind": "send_sms", "body": "Offer A"},
              "sb": {"kind": "send_sms", "body": "Offer B"}},
}
CONTACTS = [f"c-{n:02d}" for n in range(24)]
BUYERS = set(CONTACTS[::3])  # every third buys inside the window


def arm(contact: str) -> str:
    if in_control("acme", contact, "promo", 30):
        return "control"
    return str(choose("acme", contact, "promo", "pick", BRANCHES)["name"])


async def outcome_ids(stack: Stack) -> set[str]:
    return {orjson.loads(r.value)["id"] for r in await stack.read_all("outcomes")}


async def run_experiment(stack: Stack, *, crash: bool) -> dict[str, str]:
    """24 signups, the treated ones' offers, a third buying inside the window, the
    windows closing (``crash``: the worker SIGKILLed as they do); each contact's arm."""
    arms = {c: arm(c) for c in CONTACTS}
    assert set(arms.values()) == {"control", "a", "b"}  # the hash gives all three here
    await stack.define(PROMO)
    stack.start_worker()
    await stack.publisher.send_many([build_event(
        "acme", c, "contact.created", {"phone": f"+1415555{n:04d}", "consent": {"sms": True}},
        event_id=f"signup-{c}") for n, c in enumerate(CONTACTS)])
    treated = [c for c in CONTACTS if arms[c] != "control"]

    async def sent() -> list[dict[str, Any]]:
        found = [orjson.loads(r.value) for r in await stack.read_all("send.sms")]
        return found if len(found) >= len(treated) else []

    sends = await eventually(sent, timeout=60, what="the treated contacts' offers")
    # Each treated contact got its branch's offer, marked with its arm; the control none.
    assert sorted((s["contact_id"], s["variant"], s["body"]) for s in sends) == sorted(
        (c, arms[c], f"Offer {arms[c].upper()}") for c in treated)

    async def audited() -> bool:
        return len([r for r in await stack.read_all("audit")
                    if orjson.loads(r.value)["reason"] == "control_group"]) >= 24 - len(treated)

    await eventually(audited, what="the control group's sends audited")
    await stack.publisher.send_many([build_event(
        "acme", c, "purchase.completed", {"order_id": f"o-{c}", "amount": 25, "currency": "USD"},
        event_id=f"buy-{c}") for c in sorted(BUYERS)])
    await stack.wait_contact("acme", sorted(BUYERS)[-1], 2)
    stack.skip(24 * 3600 + 60)  # the windows close
    if crash:
        async def some_closed() -> bool:
            return len(await outcome_ids(stack)) >= 1

        await eventually(some_closed, timeout=60, what="the first windows to close")
        stack.kill(stack.workers[0])  # SIGKILL while the windows close: some batch redone
        stack.start_worker()

    async def all_closed() -> bool:
        return await outcome_ids(stack) == {f"promo/signup-{c}" for c in CONTACTS}

    await eventually(all_closed, timeout=90, what="every window closed")
    return arms


async def reported(c: httpx.AsyncClient, auth: dict[str, str], what: str) -> dict[str, Any]:
    """``GET …/<what>/report`` once the API's store has imported the definition from the
    topic (before that it is a 404: the account has no such workflow or campaign)."""
    async def answer() -> dict[str, Any] | None:
        r = await c.get(f"/v1/accounts/acme/{what}/report", headers=auth)
        assert r.status_code in (200, 404), r.text
        return dict(r.json()) if r.status_code == 200 else None

    return await eventually(answer, what=f"the report of {what}")


def expected(arms: dict[str, str]) -> dict[str, tuple[int, int, int, float]]:
    """Per arm: entered, sent, converted, revenue."""
    out = {}
    for name in ("control", "a", "b"):
        members = [c for c in CONTACTS if arms[c] == name]
        buyers = [c for c in members if c in BUYERS]
        out[name] = (len(members), 0 if name == "control" else len(members), len(buyers),
                     25.0 * len(buyers))
    return out


@pytest.mark.slow
async def test_a_split_with_a_control_group_reports_each_arm_once(stack: Stack) -> None:
    arms = await run_experiment(stack, crash=True)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "report", "acme", "promo",
                         "--json"], env=stack.env, cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["baseline"] == "control" and report["entries"] == len(CONTACTS)
    got = {row["variant"]: (row["entered"], row["sent"], row["converted"], row["revenue"])
           for row in report["arms"]}
    assert got == expected(arms)
    table = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "report", "acme", "promo"],
        env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "against control" in table.stdout, table.stdout
    typo = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "report", "acme", "promoo"],
        env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (typo.returncode, typo.stderr.strip()) == (1, "no workflow acme/promoo")


async def test_the_report_route_and_page_show_each_arm(
        stack: Stack, database_url: str, chromium: str, shots: Path) -> None:
    """``GET …/workflows/promo/report`` and the dashboard's experiment page: the same arms
    and counts, the chart drawn with a bar per arm."""
    arms = await run_experiment(stack, crash=False)
    async with admin_api(stack, database_url) as (base, c, key):
        auth = {"Authorization": f"Bearer {key}"}
        answer = await reported(c, auth, "workflows/promo")
        r = await c.get("/v1/accounts/acme/workflows/nope/report", headers=auth)
        assert (r.status_code, r.json()["detail"]) == (404, "no workflow 'nope'")
        assert {row["variant"]: (row["entered"], row["sent"], row["converted"],
                                 row["revenue"]) for row in answer["arms"]} == expected(arms)
        problems: list[str] = []
        async with dashboard_page(chromium, problems) as page:
            await log_in(page, base, key)
            await page.goto(f"{base}/dashboard/acme/workflows/promo")
            await page.get_by_test_id("experiment-link").click()
            await expect(page).to_have_url(f"{base}/dashboard/acme/workflows/promo/report")
            rows = page.get_by_test_id("experiment-arm")
            await expect(rows).to_have_count(3)
            for row in answer["arms"]:
                shown = rows.and_(page.locator(f'[data-arm="{row["variant"]}"]'))
                await expect(shown.get_by_test_id("arm-entered")).to_have_text(
                    str(row["entered"]))
                await expect(shown.get_by_test_id("arm-converted")).to_have_text(
                    str(row["converted"]))
            await expect(page.locator("svg.chart rect[data-arm]")).to_have_count(3)
            await page.screenshot(path=shots / "experiment.png", full_page=True)
        assert problems == []


VARIANTS = [{"name": "pct", "weight": 1, "content": {"channel": "sms", "body": "20% off"}},
            {"name": "ship", "weight": 1, "content": {"channel": "sms", "body": "Free shipping"}}]
CAMPAIGN_BRANCHES = [{"name": v["name"], "weight": v["weight"], "next": f"send:{v['name']}"}
                     for v in VARIANTS]
BODIES = {str(v["name"]): str(v["content"]["body"]) for v in VARIANTS}  # type: ignore[index]


def campaign_arm(contact: str) -> str:
    if in_holdout("acme", contact, 10):
        return "holdout"
    if in_control("acme", contact, "campaign:spring", 20):
        return "control"
    return str(choose("acme", contact, "campaign:spring", "variants",
                      CAMPAIGN_BRANCHES)["name"])


@pytest.mark.slow
async def test_a_campaigns_variants_control_and_holdout_survive_sigkills(
        stack: Stack, database_url: str, chromium: str, shots: Path) -> None:
    """A campaign A/B test to 600 contacts with a 20 % control group, in an account with a
    10 % holdout: the worker is SIGKILLed while it assigns and sends (mid-fan-out) and
    again as the purchases are counted. Each treated contact gets its variant once (a
    repeat only with the same message id), the control and the holdout nothing; every
    contact is counted once, in the arm its hash gives; ``dripstream report --campaign``,
    the API's report route and the dashboard's page show each arm's conversions and
    revenue; the holdout's size and members are on the API."""
    n = 600
    at = stack.now() + timedelta(minutes=10)
    contacts = [f"c{i:06d}" for i in range(n)]  # as signups() names them
    arms = {c: campaign_arm(c) for c in contacts}
    assert set(arms.values()) == {"holdout", "control", "pct", "ship"}
    treated = [c for c in contacts if arms[c] in BODIES]
    await stack.define({"kind": "account", "account": "acme", "holdout": 10,
                        "quiet_hours": None})
    await stack.define({
        "kind": "campaign", "id": "spring", "account": "acme", "name": "Spring", "version": 1,
        "variants": VARIANTS, "audience": {},
        "experiment": {"control": 20, "conversion": {
            "event": "purchase.completed", "window": "1d", "revenue": "event.data.amount"}},
        "schedule": {"type": "once", "at": local(at), "timezone": "UTC"},
        # 100 a second: six seconds for everyone, so the SIGKILL lands mid-way
        "delivery": {"throttle_per_minute": 6000}})
    worker = stack.start_worker()
    await signups(stack, n)
    stack.set_time(at)

    async def some_sent() -> bool:
        return len(await stack.read_all("send.sms")) >= 60

    await eventually(some_sent, timeout=60, what="the first sends")
    stack.kill(worker)  # SIGKILL while the fan-out assigns and sends
    assert len(await stack.read_all("send.sms")) < len(treated)
    worker = stack.start_worker()
    await completed_everywhere(stack, "spring", local(at), timeout=120)
    sends = [orjson.loads(r.value) for r in await stack.read_all("send.sms")]
    by_contact: dict[str, set[tuple[str, str, str]]] = {}
    for s in sends:
        by_contact.setdefault(s["contact_id"], set()).add(
            (s["message_id"], s["variant"], s["body"]))
    assert set(by_contact) == set(treated)  # none of the control or the holdout
    for c, got in by_contact.items():
        assert len(got) == 1, got  # once (a redone batch repeats the same message)
        [(_, variant, body)] = got
        assert (variant, body) == (arms[c], BODIES[arms[c]])

    buyers = set(contacts[::4])
    await stack.publisher.send_many([build_event(
        "acme", c, "purchase.completed", {"order_id": f"o-{c}", "amount": 10,
                                          "currency": "USD"},
        event_id=f"buy-{c}") for c in sorted(buyers)])
    stack.kill(worker)  # SIGKILL as the conversions are counted
    stack.start_worker()
    await stack.wait_contact("acme", sorted(buyers)[-1], 2)
    stack.skip(24 * 3600 + 60)  # the windows close

    async def counted() -> dict[str, set[str]] | None:
        ids: dict[str, set[str]] = {}
        for r in await stack.read_all("outcomes"):
            o = orjson.loads(r.value)
            ids.setdefault(o["contact_id"], set()).add(o["id"])
        return ids if len(ids) == n else None

    ids = await eventually(counted, timeout=120, what="every contact's window closed")
    assert all(len(found) == 1 for found in ids.values())  # one entry each
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "report", "acme", "spring",
                         "--campaign", "--json"], env=stack.env, cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["baseline"] == "control" and report["entries"] == n
    got = {row["variant"]: (row["entered"], row["sent"], row["converted"], row["revenue"])
           for row in report["arms"]}
    want = {}
    for name in ("holdout", "control", "pct", "ship"):
        members = [c for c in contacts if arms[c] == name]
        bought = len([c for c in members if c in buyers])
        want[name] = (len(members), len(members) if name in BODIES else 0, bought,
                      10.0 * bought)
    assert got == want

    async with admin_api(stack, database_url) as (base, c, key):
        auth = {"Authorization": f"Bearer {key}"}
        assert (await reported(c, auth, "campaigns/spring"))["arms"] == report["arms"]
        members = sorted(c for c in contacts if arms[c] == "holdout")
        async def imported() -> bool:  # the API's store imports the policy from the topic
            r = await c.get("/v1/accounts/acme/holdout", headers=auth)
            return r.status_code == 200 and r.json()["percent"] == 10

        await eventually(imported, what="the account policy in the API's store")
        listed: list[str] = []
        params: dict[str, Any] = {"limit": 25}
        while True:  # a page at a time
            r = await c.get("/v1/accounts/acme/holdout", headers=auth, params=params)
            assert r.status_code == 200, r.text
            assert (r.json()["percent"], r.json()["contacts"], r.json()["members"]) == (
                10, n, len(members))
            listed += [i["contact_id"] for i in r.json()["items"]]
            if r.json()["next_cursor"] is None:
                break
            params["cursor"] = r.json()["next_cursor"]
        assert listed == members
        r = await c.get(f"/v1/accounts/acme/contacts/{members[0]}", headers=auth)
        assert r.json()["holdout"] is True
        problems: list[str] = []
        async with dashboard_page(chromium, problems) as page:
            await log_in(page, base, key)
            await page.goto(f"{base}/dashboard/acme/campaigns")
            await page.get_by_test_id("campaign-report-spring").click()
            await expect(page).to_have_url(f"{base}/dashboard/acme/campaigns/spring/report")
            rows = page.get_by_test_id("experiment-arm")
            await expect(rows).to_have_count(4)
            for row in report["arms"]:
                shown = rows.and_(page.locator(f'[data-arm="{row["variant"]}"]'))
                await expect(shown.get_by_test_id("arm-converted")).to_have_text(
                    str(row["converted"]))
            await page.screenshot(path=shots / "campaign-experiment.png", full_page=True)
            await page.goto(f"{base}/dashboard/acme/contacts/{members[0]}")
            await expect(page.get_by_test_id("holdout")).to_be_visible()
        assert problems == []
