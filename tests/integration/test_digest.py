"""A digest step on a real broker: ten clicks within the hour, the worker SIGKILLed in the
middle of the window, and one email that lists all ten when the hour is up
(docs/workflows.md#digest)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

RECAP = {"id": "recap", "account": "acme", "name": "Recap", "version": 1,
         "trigger": {"event": "message.clicked"}, "start": "collect",
         "steps": {"collect": {"kind": "digest", "event": "message.clicked", "window": "1h",
                               "item": "event.data.url", "next": "recap"},
                   "recap": {"kind": "send_email", "subject": "Your {{digest.count}} picks",
                             "body": "You looked at: {{digest.items}}"}}}


def click(n: int) -> dict[str, Any]:
    return build_event("acme", "ann", "message.clicked",
                       {"message_id": f"m-{n}", "channel": "email",
                        "url": f"https://shop.example/p/{n}"}, event_id=f"click-{n}")


async def test_a_digest_survives_a_sigkill_inside_its_window(stack: Stack) -> None:
    await stack.define(RECAP)
    worker = stack.start_worker()
    await stack.publisher.send(build_event(
        "acme", "ann", "contact.created", {"email": "ann@example.com",
                                           "consent": {"email": True}}, event_id="signup"))
    await stack.publisher.send_many([click(n) for n in range(5)])
    await stack.wait_contact("acme", "ann", 6)
    stack.kill(worker)  # SIGKILL with five clicks collected
    stack.start_worker()
    await stack.publisher.send_many([click(n) for n in range(3, 10)])  # 3, 4 again
    await stack.wait_contact("acme", "ann", 11)
    assert await stack.read_all("send.email") == []  # nothing before the hour is up
    stack.skip(3600 + 5)

    async def sent() -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in await stack.read_all("send.email")]

    sends = await eventually(sent, timeout=60, what="the digest")
    assert {s["message_id"] for s in sends} == {sends[0]["message_id"]}  # one message
    assert sends[0]["subject"] == "Your 10 picks"
    assert sends[0]["body"] == "You looked at: " + ", ".join(
        f"https://shop.example/p/{n}" for n in range(10))
