"""The workflow engine against a real broker and Redis, with the worker as a real process.

The workers' clock is skipped forward (tests/stack.py `skip`), so days of waiting take
milliseconds; nothing here sleeps.
"""

from __future__ import annotations

import signal
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from streams.commands import AuditRecord, SendCommand
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

DAY = 24 * 3600


def welcome_flow(**overrides: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "id": "welcome", "account": "acme", "name": "Welcome", "version": 1,
        "trigger": {"event": "contact.created"},
        "start": "hello",
        "steps": {
            "hello": {"kind": "send_sms", "body": "Hi {{contact.first_name|there}}, welcome!",
                      "next": "pause"},
            "pause": {"kind": "wait", "duration": "2d", "next": "bought"},
            "bought": {"kind": "branch",
                       "condition": [{"field": "contact.purchases", "op": "gt", "value": 0}],
                       "true": "thanks", "false": "nudge"},
            "thanks": {"kind": "send_email", "subject": "Thank you",
                       "body": "Thanks for your order, {{contact.first_name}}."},
            "nudge": {"kind": "send_email", "subject": "Still thinking?",
                      "body": "10% off your first order."},
        },
    }
    flow.update(overrides)
    return flow


def signup(contact: str, account: str = "acme", **data: Any) -> dict[str, Any]:
    profile = {"phone": "+14155550123", "email": f"{contact}@example.com",
               "attributes": {"first_name": contact.title()}, "consent": {"sms": True}}
    return build_event(account, contact, "contact.created", {**profile, **data},
                       event_id=f"signup-{contact}")


def commands(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def test_signup_welcome_wait_branch_email(stack: Stack) -> None:
    """Signup → welcome SMS → 2 days → branch on purchase → the matching email, once each."""
    await stack.define(welcome_flow())
    stack.start_worker()
    await stack.publisher.send(signup("ann"))
    await stack.publisher.send(signup("bob"))
    await stack.publisher.send(signup("eve", account="globex"))  # another tenant
    ann = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "waiting")
    await stack.wait_execution("acme", "bob", lambda e: e["status"] == "waiting")
    started = datetime.fromisoformat(ann["started_at"])
    assert datetime.fromisoformat(ann["due_at"]) == started + timedelta(days=2)

    sms = commands(await stack.read_all("send.sms"))
    assert sorted(c["contact_id"] for c in sms) == ["ann", "bob"]
    first = next(c for c in sms if c["contact_id"] == "ann")
    SendCommand.model_validate(first)
    assert first["channel"] == "sms"
    assert first["account"] == "acme"
    assert first["to"] == "+14155550123"
    assert first["body"] == "Hi Ann, welcome!"
    assert first["transactional"] is False
    assert first["origin"] == {"kind": "workflow", "workflow_id": "welcome", "version": 1,
                               "execution_id": ann["id"], "step_id": "hello", "depth": 0}
    assert first["message_id"].startswith("msg-")
    assert datetime.fromisoformat(first["expires_at"]) == (
        datetime.fromisoformat(first["created_at"]) + timedelta(days=1))

    await stack.publisher.send(build_event("acme", "ann", "purchase.completed",
                               {"order_id": "o-1", "amount": "5", "currency": "USD"}))
    await stack.wait_contact("acme", "ann", 2)
    assert await stack.read_all("send.email") == []  # the wait has not passed

    stack.skip(2 * DAY + 60)
    for contact in ("ann", "bob"):
        await stack.wait_execution("acme", contact, lambda e: e["status"] == "completed",
                                   what="completed")
    emails = {c["contact_id"]: c for c in commands(await stack.read_all("send.email"))}
    assert set(emails) == {"ann", "bob"}
    assert emails["ann"]["subject"] == "Thank you"
    assert emails["ann"]["body"] == "Thanks for your order, Ann."
    assert emails["ann"]["to"] == "ann@example.com"
    assert emails["bob"]["subject"] == "Still thinking?"
    # Sent at or after the due time, never early.
    for contact, email in emails.items():
        ex = await stack.wait_execution("acme", contact, lambda e: True)
        assert datetime.fromisoformat(email["created_at"]) >= started + timedelta(days=2)
        assert [h["outcome"] for h in ex["history"]] == [
            "sent", "waiting", "waited", "true" if contact == "ann" else "false", "sent",
            "completed"]
    assert len(commands(await stack.read_all("send.sms"))) == 2
    assert await stack.executions("globex", "eve") == {}


async def test_pause_resume_keeps_the_remaining_wait(stack: Stack) -> None:
    """Paused mid-wait and resumed later, the execution waits out the rest: one send."""
    flow = {"id": "later", "account": "acme", "name": "Later", "version": 1,
            "trigger": {"event": "contact.created"}, "start": "w",
            "steps": {"w": {"kind": "wait", "duration": "1h", "next": "s"},
                      "s": {"kind": "send_sms", "body": "later"}}}
    await stack.define(flow)
    stack.start_worker()
    await stack.publisher.send(signup("ann"))
    ex = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "waiting")

    stack.skip(20 * 60)
    await stack.control(action="pause", account="acme", contact_id="ann", execution_id=ex["id"])
    paused = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "paused")
    assert 39 * 60 <= paused["remaining_s"] <= 40 * 60

    stack.skip(5 * 3600)  # far past the original due time: the old wake-up must not fire
    await stack.publisher.send(build_event("acme", "ann", "contact.tagged", {"tag": "x"}))
    await stack.wait_contact("acme", "ann", 2)
    await stack.control(action="resume", account="acme", contact_id="ann", execution_id=ex["id"])
    resumed = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "waiting")
    resumed_at = datetime.fromisoformat(resumed["history"][-1]["at"])
    assert datetime.fromisoformat(resumed["due_at"]) - resumed_at == timedelta(
        seconds=paused["remaining_s"])
    assert await stack.read_all("send.sms") == []

    stack.skip(40 * 60 + 5)
    done = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "completed")
    assert [h["outcome"] for h in done["history"]] == [
        "waiting", "paused", "resumed", "waited", "sent", "completed"]
    assert len(await stack.read_all("send.sms")) == 1


async def test_cancel_during_wait_sends_nothing(stack: Stack) -> None:
    """A cancelled execution is 'cancelled' (not failed) and never sends."""
    await stack.define(welcome_flow(steps={
        "hello": {"kind": "wait", "duration": "1d", "next": "s"},
        "s": {"kind": "send_sms", "body": "never"}}, start="hello"))
    stack.start_worker()
    await stack.publisher.send(signup("ann"))
    await stack.publisher.send(signup("bob"))
    ex = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "waiting")
    await stack.wait_execution("acme", "bob", lambda e: e["status"] == "waiting")
    await stack.control(action="cancel", account="acme", contact_id="ann", execution_id=ex["id"])
    await stack.control(action="cancel_all", account="acme", workflow_id="welcome")
    for contact in ("ann", "bob"):
        done = await stack.wait_execution("acme", contact, lambda e: e["status"] == "cancelled")
        assert done["ended_reason"] in ("cancelled", "cancelled_all")
    stack.skip(2 * DAY)
    await stack.publisher.send(build_event("acme", "ann", "contact.tagged", {"tag": "x"}))
    await stack.wait_contact("acme", "ann", 2)
    assert await stack.read_all("send.sms") == []


async def test_goal_event_ends_the_execution(stack: Stack) -> None:
    """A purchase (the goal) ends a cart-abandonment drip before its next send."""
    await stack.define(welcome_flow(
        goals=[{"event": "purchase.completed"}],
        steps={"hello": {"kind": "wait", "duration": "1d", "next": "s"},
               "s": {"kind": "send_sms", "body": "come back"}}, start="hello"))
    stack.start_worker()
    await stack.publisher.send(signup("ann"))
    await stack.wait_execution("acme", "ann", lambda e: e["status"] == "waiting")
    await stack.publisher.send(build_event("acme", "ann", "purchase.completed",
                               {"order_id": "o", "amount": 1, "currency": "USD"}))
    done = await stack.wait_execution("acme", "ann", lambda e: e["status"] == "completed")
    assert done["ended_reason"] == "goal_reached"
    stack.skip(2 * DAY)
    await stack.publisher.send(build_event("acme", "ann", "contact.tagged", {"tag": "x"}))
    await stack.wait_contact("acme", "ann", 3)
    assert await stack.read_all("send.sms") == []


async def test_loop_guard_stops_a_tag_loop(stack: Stack) -> None:
    """Two workflows tagging each other stop at the causation limit, and say so."""
    def tagger(wf_id: str, on: str, add: str) -> dict[str, Any]:
        return {"id": wf_id, "account": "acme", "name": wf_id, "version": 1,
                "trigger": {"event": "contact.tagged",
                            "criteria": [{"field": "event.data.tag", "op": "eq", "value": on}]},
                "start": "t", "steps": {"t": {"kind": "add_tag", "tag": add}}}

    await stack.define(tagger("ping", "a", "b"))
    await stack.define(tagger("pong", "b", "a"))
    stack.start_worker()
    await stack.publisher.send(build_event("acme", "ann", "contact.tagged", {"tag": "a"}))

    async def guarded() -> list[dict[str, Any]]:
        return [r for r in map(orjson.loads, (x.value for x in await stack.read_all("audit")))
                if r["reason"] == "loop_guard"]

    stops = await eventually(guarded, what="a loop_guard audit record")
    assert len(stops) == 1
    AuditRecord.model_validate(stops[0])
    assert stops[0]["depth"] == 5
    # The original event plus 5 emitted ones (depths 1..5); nothing after the stop.
    state = await stack.wait_contact("acme", "ann", 6)
    assert state["version"] == 6
    assert state["tags"] == ["a", "b"]


async def test_sigkill_with_hundreds_waiting(stack: Stack) -> None:
    """SIGKILL while 200 executions wait and while they fire: after a restart every wait
    fires, none early, no send is lost, and a re-emitted send keeps its message_id."""
    contacts = 200
    await stack.define(welcome_flow(steps={
        "hello": {"kind": "wait", "duration": "3d", "next": "s"},
        "s": {"kind": "send_sms", "body": "day 3"}}, start="hello"))
    await stack.publisher.send_many([signup(f"c{n}") for n in range(contacts)])
    worker = stack.start_worker()
    for n in range(contacts):
        await stack.wait_execution("acme", f"c{n}", lambda e: e["status"] == "waiting",
                                   timeout=60)
    due = {n: datetime.fromisoformat((await stack.executions("acme", f"c{n}")).popitem()[1]
                                     ["due_at"]) for n in range(contacts)}
    stack.kill(worker, signal.SIGKILL)  # crash 1: everything waiting

    worker = stack.start_worker()
    stack.skip(3 * DAY + 1)

    async def some_sent() -> bool:
        return len(await stack.read_all("send.sms")) >= 20

    await eventually(some_sent, timeout=60, what="the first sends")
    stack.kill(worker, signal.SIGKILL)  # crash 2: while the waits fire
    stack.start_worker()

    async def all_sent() -> list[dict[str, Any]] | None:
        sent = commands(await stack.read_all("send.sms"))
        return sent if len({c["contact_id"] for c in sent}) == contacts else None

    sent = await eventually(all_sent, timeout=90, what="a send for every contact")
    ids_by_contact: dict[str, set[str]] = {}
    for command in sent:
        ids_by_contact.setdefault(command["contact_id"], set()).add(command["message_id"])
        n = int(command["contact_id"][1:])
        assert datetime.fromisoformat(command["created_at"]) >= due[n]  # never early
    assert all(len(ids) == 1 for ids in ids_by_contact.values())  # a repeat keeps its id
    repeats = sum(Counter(c["message_id"] for c in sent).values()) - contacts
    print(f"\n{contacts} sends, {repeats} re-emitted after the crash (same message_id)")
