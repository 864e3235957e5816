"""Channel workers against a real broker and Redis: the engine emits send commands, a
``dripstream channel`` process delivers them through the file provider (the fake that
records every call it receives) and reports back. Nothing here sleeps to synchronise: it
waits on the provider's file, the topics or the read model, with deadlines."""

from __future__ import annotations

import random
import signal
from collections import Counter
from typing import Any

import orjson
import pytest

from producers.providers import read_calls
from producers.publisher import build_event
from streams.commands import AuditRecord
from streams.events import parse_event
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration


def sms_flow(**overrides: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "id": "hello", "account": "acme", "name": "Hello", "version": 1,
        "trigger": {"event": "contact.created"}, "start": "s",
        "steps": {"s": {"kind": "send_sms", "body": "Hi {{contact.first_name|there}}!"}},
    }
    flow.update(overrides)
    return flow


NO_QUIET = {"kind": "account", "account": "acme", "version": 1, "quiet_hours": None}


def signup(contact: str, **data: Any) -> dict[str, Any]:
    profile = {"phone": f"+1415555{abs(hash(contact)) % 10000:04d}",
               "email": f"{contact}@example.com",
               "attributes": {"first_name": contact.title()},
               "consent": {"sms": True, "email": True}}
    return build_event("acme", contact, "contact.created", {**profile, **data},
                       event_id=f"signup-{contact}")


def accepted(stack: Stack) -> Counter[str]:
    return Counter(c["message_id"] for c in read_calls(stack.calls_path)
                   if c["result"] == "accepted")


async def reports(stack: Stack, kind: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await stack.read_all("contact-events")
            if orjson.loads(r.value)["type"] == kind]


async def sends(stack: Stack, channel: str = "sms") -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await stack.read_all(f"send.{channel}")]


async def test_send_reaches_provider_once_and_is_reported(stack: Stack) -> None:
    """Engine → send command → channel worker → one provider call and a message.sent
    event with the message id, which the engine applies."""
    await stack.define(sms_flow())
    stack.start_worker()
    stack.start_channel("sms")
    await stack.publisher.send(signup("ann"))

    async def sent() -> list[dict[str, Any]]:
        return await reports(stack, "message.sent")

    events = await eventually(sent, what="message.sent")
    command = (await sends(stack))[0]
    calls = read_calls(stack.calls_path)
    assert [c["message_id"] for c in calls] == [command["message_id"]]
    assert calls[0]["body"] == "Hi Ann!"
    event = events[0]
    parse_event(orjson.dumps(event))
    assert event["id"] == f"{command['message_id']}:sent"
    assert event["subject"] == "ann"
    assert event["data"]["message_id"] == command["message_id"]
    assert event["data"]["channel"] == "sms"
    assert event["data"]["provider_id"] == calls[0]["provider_id"]
    await stack.wait_contact("acme", "ann", 2)  # the signup and the report
