"""Message categories and subscription preferences end to end on a real broker: one
contact unsubscribes from promotions by an upstream event, another on SMS through the
admin API; order updates keep going to both; a promotions cap of 2 a week holds while the
account's caps allow more; the API and the dashboard's contact page show each contact's
subscriptions and the category's cap window (docs/preferences.md)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import expect
from pydantic import SecretStr

from producers.publisher import build_event
from tables.preferences import sign
from tests.integration.test_dashboard import admin_api, dashboard_page, log_in
from tests.stack import Stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]

POLICY = {"kind": "account", "account": "acme", "quiet_hours": None,
          "caps": {"limits": {"day": 10, "week": 40, "month": 100}},
          "categories": [
              {"id": "promotions", "name": "Promotions", "caps": {"week": 2}},
              {"id": "order_updates", "name": "Order updates"},
              {"id": "receipts", "name": "Receipts", "transactional": True}]}
ORDER = {"id": "order", "account": "acme", "name": "Order", "version": 1,
         "trigger": {"event": "purchase.completed"}, "reentry": {"policy": "every_time"},
         "start": "update",
         "steps": {"update": {"kind": "send_sms", "body": "Order {{event.data.order_id}} "
                                                         "shipped", "category": "order_updates",
                              "next": "promo"},
                   "promo": {"kind": "send_sms", "body": "20% off your next order",
                             "category": "promotions"}}}
PEOPLE = {"ann": "+14155550101", "bob": "+14155550102", "cat": "+14155550103"}


def purchase(contact: str, n: int) -> dict[str, Any]:
    return build_event("acme", contact, "purchase.completed",
                       {"order_id": f"{contact}-{n}", "amount": 10, "currency": "USD"},
                       event_id=f"buy-{contact}-{n}")


async def test_unsubscribed_from_promotions_keeps_getting_order_updates(
        stack: Stack, database_url: str, chromium: str, shots: Path) -> None:
    await stack.define(POLICY)
    await stack.define(ORDER)
    stack.start_worker()
    await stack.publisher.send_many([build_event(
        "acme", c, "contact.created", {"phone": phone, "consent": {"sms": True}},
        event_id=f"signup-{c}") for c, phone in PEOPLE.items()])
    await stack.publisher.send(build_event(
        "acme", "ann", "contact.preferences_updated",
        {"preferences": [{"category": "promotions", "subscribed": False}], "source": "crm"},
        event_id="ann-prefs"))
    await stack.wait_contact("acme", "ann", 2)
    async with admin_api(stack, database_url, "operator") as (base, c, key):
        auth = {"Authorization": f"Bearer {key}"}

        async def policy_imported() -> bool:  # the API's store imports it from the topic
            r = await c.put("/v1/accounts/acme/contacts/bob/preferences", headers=auth,
                            json={"preferences": [{"category": "receipts",
                                                   "subscribed": False}]})
            return r.status_code == 422 and "is transactional" in r.json()["detail"]

        await eventually(policy_imported, what="the policy's categories in the API's store")
        r = await c.put("/v1/accounts/acme/contacts/bob/preferences", headers=auth,
                        json={"preferences": [{"category": "promotion", "subscribed": False}]})
        assert (r.status_code, r.json()["errors"][0]["loc"]) == (
            422, ["body", "preferences", 0, "category"])
        r = await c.put("/v1/accounts/acme/contacts/bob/preferences", headers=auth,
                        json={"preferences": [{"category": "promotions", "channel": "sms",
                                               "subscribed": False}]})
        assert r.status_code == 202, r.text
        r = await c.put("/v1/accounts/acme/contacts/nobody/preferences", headers=auth,
                        json={"preferences": [{"category": "promotions",
                                               "subscribed": False}]})
        assert r.status_code == 404
        await stack.wait_contact("acme", "bob", 2)
        # Three purchases each in one week: order updates always, promotions to cat only,
        # and to her twice (the category's cap), though the account allows 10 a day.
        await stack.publisher.send_many([purchase(p, n) for n in range(3) for p in PEOPLE])
        for person in PEOPLE:  # created, (preferences,) three purchases
            await stack.wait_contact("acme", person, 4 if person == "cat" else 5)

        async def all_decided() -> list[dict[str, Any]]:
            audit = [orjson.loads(r.value) for r in await stack.read_all("audit")]
            sends = [orjson.loads(r.value) for r in await stack.read_all("send.sms")]
            return sends if len(sends) + len(audit) >= 18 else []

        sends = await eventually(all_decided, timeout=60, what="every send decided")
        got = Counter((s["contact_id"], s["category"]) for s in sends)
        assert got == {("ann", "order_updates"): 3, ("bob", "order_updates"): 3,
                       ("cat", "order_updates"): 3, ("cat", "promotions"): 2}
        audit = Counter((a["contact_id"], a["reason"]) for a in
                        [orjson.loads(r.value) for r in await stack.read_all("audit")])
        assert audit == {("ann", "category_unsubscribed"): 3,
                         ("bob", "category_unsubscribed"): 3, ("cat", "frequency_capped"): 1}

        async def shown(person: str) -> dict[str, Any]:
            r = await c.get(f"/v1/accounts/acme/contacts/{person}", headers=auth)
            return dict(r.json())

        bob = await shown("bob")
        rows = {(s["category"], s["channel"]): s for s in bob["subscriptions"]}
        assert (rows["promotions", "sms"]["subscribed"], rows["promotions", "sms"]["source"]) \
            == (False, "api")
        assert rows["promotions", "email"]["subscribed"] is True
        week = (await shown("cat"))["cap_windows"]["week"]
        assert (week["by_category"]["promotions"], week["category_limits"]["promotions"]) == (
            2, 2)
        problems: list[str] = []
        async with dashboard_page(chromium, problems) as page:
            await log_in(page, base, key)
            await page.goto(f"{base}/dashboard/acme/contacts/ann")
            await expect(page.get_by_test_id("subscription-promotions-sms").get_by_test_id(
                "subscribed")).to_have_text("no")
            await expect(page.get_by_test_id("subscription-order_updates-sms")
                         .get_by_test_id("subscribed")).to_have_text("yes")
            await page.goto(f"{base}/dashboard/acme/contacts/cat")
            await expect(page.get_by_test_id("category-cap-promotions-week")).to_contain_text(
                "2")
            await page.screenshot(path=shots / "contact-preferences.png", full_page=True)
        assert problems == []


SECRET = "test-preference-secret"
NEWS = {"id": "news", "account": "acme", "name": "News", "version": 1,
        "trigger": {"event": "contact.created"}, "start": "hello",
        "steps": {"hello": {"kind": "send_sms", "category": "order_updates",
                            "body": "Welcome! Choose what we send you: {{preferences_url}}"}}}


async def test_the_preference_page_from_a_link_in_a_message(
        stack: Stack, database_url: str, chromium: str, shots: Path) -> None:
    """A welcome SMS carries the contact's link; opened in Chromium, the page shows the
    categories a contact may choose (not the transactional one), checked as the gate
    decides; unchecking promotions and checking the opt-in newsletter is saved as the
    contact's preferences. A forged link and an expired one open nothing."""
    policy = {**POLICY, "categories": [*POLICY["categories"], {
        "id": "newsletter", "name": "Newsletter", "subscribed_by_default": False}]}
    await stack.define(policy)
    await stack.define(NEWS)
    link_base = "https://prefs.example.test"
    stack.start_worker(env={"DRIPSTREAM_PREFERENCES_URL": link_base,
                            "DRIPSTREAM_PREFERENCES_SECRET": SECRET})
    await stack.publisher.send(build_event(
        "acme", "ann", "contact.created", {"phone": PEOPLE["ann"], "consent": {"sms": True}},
        event_id="signup-ann"))

    async def welcomed() -> list[Any]:
        return await stack.read_all("send.sms")

    [record] = await eventually(welcomed, what="the welcome with its link")
    body = orjson.loads(record.value)["body"]
    link = re.search(r"https://prefs\.example\.test(/preferences/\S+)", body)
    assert link is not None, body
    path = link.group(1)
    settings = stack.settings.model_copy(update={
        "preferences_url": link_base, "preferences_secret": SecretStr(SECRET)})
    async with admin_api(stack, database_url, settings=settings) as (base, c, _):
        token = path.removeprefix("/preferences/")
        payload, _, signature = token.partition(".")
        bob = sign(SECRET.encode(), "acme", "bob", stack.now() + timedelta(days=1))
        for forged in (f"{payload}.{signature[:-2]}xx", f"{bob.partition('.')[0]}.{signature}"):
            r = await c.get(f"/preferences/{forged}")
            assert (r.status_code, "not valid" in r.text, "Promotions" in r.text) == (
                403, True, False)
        old = sign(SECRET.encode(), "acme", "ann", stack.now() - timedelta(minutes=1))
        r = await c.get(f"/preferences/{old}")
        assert (r.status_code, "expired" in r.text) == (410, True)
        assert r.headers["referrer-policy"] == "no-referrer"

        async def page_ready() -> bool:  # the API's store imports the policy from the topic
            r = await c.get(path)
            return r.status_code == 200 and "Newsletter" in r.text

        await eventually(page_ready, what="the policy's categories in the API's store")
        problems: list[str] = []
        async with dashboard_page(chromium, problems) as page:
            await page.goto(f"{base}{path}")
            await expect(page.get_by_test_id("box-promotions-text")).to_be_checked()
            await expect(page.get_by_test_id("box-order_updates-text")).to_be_checked()
            await expect(page.get_by_test_id("box-newsletter-text")).not_to_be_checked()
            await expect(page.get_by_test_id("category-receipts")).to_have_count(0)
            await page.get_by_test_id("box-promotions-text").uncheck()
            await page.get_by_test_id("box-newsletter-text").check()
            await page.get_by_test_id("save").click()
            await expect(page.get_by_test_id("saved")).to_be_visible()
            await expect(page.get_by_test_id("box-promotions-text")).not_to_be_checked()
            await page.screenshot(path=shots / "preference-page.png", full_page=True)
        assert problems == []

    async def saved() -> dict[str, Any] | None:
        state = await stack.read_model.get_state("acme", "ann")
        prefs = (state or {}).get("preferences") or {}
        return prefs if "newsletter" in prefs else None

    prefs = await eventually(saved, what="the choices in the contact's state")
    assert {(c, ch, p["subscribed"], p["source"]) for c, per in prefs.items()
            for ch, p in per.items()} == {
        ("promotions", "sms", False, "preference_page"),
        ("promotions", "mms", False, "preference_page"),
        ("order_updates", "sms", True, "preference_page"),  # every box shown is saved
        ("order_updates", "mms", True, "preference_page"),
        ("newsletter", "sms", True, "preference_page"),
        ("newsletter", "mms", True, "preference_page")}
