"""Inactivity detection against a real broker and Redis, the worker a real process whose
clock the test moves (tests/stack.py ``set_time``): weeks of silence take seconds.

One run follows three contacts through two thresholds, a new threshold defined midway, an
activity that re-arms, and a SIGKILL: every ``contact.inactive`` comes at its time (none
early, none for a contact that was active), once per period, and starts its win-back
workflow once.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from tests.integration.test_workflows import signup
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def winback(days: int) -> dict[str, Any]:
    return {"id": f"winback-{days}", "account": "acme", "name": f"Win back {days}",
            "version": 1, "trigger": {"event": "contact.inactive", "inactive_days": days},
            "start": "nudge",
            "steps": {"nudge": {"kind": "send_sms",
                                "body": "{{event.data.threshold_days}} days: come back!"}}}


async def inactive(stack: Stack) -> set[tuple[str, int, str, str]]:
    """Every contact.inactive on the input so far: (contact, days, since, event id)."""
    found = set()
    for record in await stack.read_all("contact-events"):
        event = orjson.loads(record.value)
        if event["type"] == "contact.inactive":
            found.add((event["subject"], event["data"]["threshold_days"],
                       event["data"]["inactive_since"], event["id"]))
    return found


async def expect(stack: Stack, *wanted: tuple[str, int], what: str) -> None:
    """Wait until exactly ``wanted`` (contact, days) have been emitted, each once."""

    async def probe() -> list[tuple[str, int]] | None:
        got = sorted((contact, days) for contact, days, _, _ in await inactive(stack))
        return got if got == sorted(wanted) else None

    try:
        await eventually(probe, timeout=30, what=what)
    except AssertionError:
        got = sorted((c, d) for c, d, _, _ in await inactive(stack))
        raise AssertionError(f"{what}: wanted {sorted(wanted)}, emitted {got}") from None


async def since(stack: Stack, contact: str) -> datetime:
    state = await stack.contact("acme", contact)
    assert state is not None
    return datetime.fromisoformat(state["inactivity"]["since"])


async def test_inactivity_fires_at_its_time_once_per_period_and_survives_a_kill(
        stack: Stack) -> None:
    await stack.define(winback(30))
    worker = stack.start_worker()
    await stack.publisher.send(signup("bea"))
    await stack.wait_contact("acme", "bea", 1)
    stack.skip(HOUR.total_seconds())
    await stack.publisher.send(signup("ann"))
    await stack.publisher.send(signup("cid"))
    await stack.wait_contact("acme", "ann", 1)
    await stack.wait_contact("acme", "cid", 1)
    t = await since(stack, "ann")  # ann and cid were created at t, bea an hour before
    assert await since(stack, "bea") <= t - HOUR

    stack.set_time(t + 20 * DAY)  # cid clicks: active, so its 30 days start again
    await stack.publisher.send(build_event("acme", "cid", "message.clicked",
                                           {"message_id": "m-1", "channel": "sms"},
                                           time=stack.now()))
    await stack.wait_contact("acme", "cid", 2)

    stack.set_time(t + 30 * DAY - 50 * MINUTE)
    await expect(stack, ("bea", 30), what="bea's 30 days, and nobody else's yet")
    stack.set_time(t + 30 * DAY + MINUTE)
    await expect(stack, ("bea", 30), ("ann", 30), what="ann's 30 days; cid was active")

    await stack.define(winback(60))  # a new threshold for contacts already counting
    stack.set_time(t + 45 * DAY)  # ann buys: a new period
    await stack.publisher.send(build_event("acme", "ann", "purchase.completed",
                                           {"order_id": "o-1", "amount": "9", "currency": "USD"},
                                           time=stack.now()))
    await stack.wait_contact("acme", "ann", 3)  # created, its own contact.inactive, purchase
    stack.set_time(t + 50 * DAY + MINUTE)
    await expect(stack, ("bea", 30), ("ann", 30), ("cid", 30), what="cid's 30 days")
    stack.set_time(t + 60 * DAY)
    await expect(stack, ("bea", 30), ("ann", 30), ("cid", 30), ("bea", 60),
                 what="bea's 60 days (defined after bea's period began); not ann's")

    stack.kill(worker)  # SIGKILL: the periods and what fired are in the table
    stack.set_time(t + 75 * DAY + MINUTE)
    stack.start_worker()
    await expect(stack, ("bea", 30), ("ann", 30), ("cid", 30), ("bea", 60), ("ann", 30),
                 what="ann's second period, after a restart, and nothing again")

    emitted = await inactive(stack)
    first, second = sorted(datetime.fromisoformat(s) for c, _, s, _ in emitted if c == "ann")
    assert (first, True) == (t, t + 45 * DAY <= second < t + 45 * DAY + MINUTE)  # the purchase
    # Each emitted event started its win-back workflow once: one SMS per event.
    async def sends() -> Counter[tuple[str, str]] | None:
        unique = {c["message_id"]: (c["contact_id"], c["body"]) for c in
                  (orjson.loads(r.value) for r in await stack.read_all("send.sms"))}
        return Counter(unique.values()) if len(unique) >= 5 else None

    assert Counter({("ann", "30 days: come back!"): 2, ("bea", "30 days: come back!"): 1,
                    ("bea", "60 days: come back!"): 1, ("cid", "30 days: come back!"): 1}) \
        == await eventually(sends, what="five win-back SMS")
