"""Replays decide the same (tables/journal.py): a batch redone after a SIGKILL between its
effects and its table write is decided with what it read the first time, whatever changed
in between."""

from __future__ import annotations

import signal
from collections import defaultdict
from typing import Any

import orjson
import pytest

from producers.admin import suppress
from producers.publisher import build_event
from tests.stack import Stack

pytestmark = pytest.mark.integration

CONTACTS = 30
ADDRESS = "+14155550100"


def flow(version: int) -> dict[str, Any]:
    return {"id": "hello", "account": "acme", "name": "Hello", "version": version,
            "trigger": {"event": "contact.created"}, "start": "sms",
            "steps": {"sms": {"kind": "send_sms",
                              "body": f"v{version} {{{{contact.first_name}}}}"}}}


async def test_a_redone_batch_decides_as_the_first_time(stack: Stack) -> None:
    """SIGKILL once the first batch's sends are acknowledged, before its states are
    written. Before the restart: workflow v2 (another text), every contact's number on the
    suppression list, the clock in quiet hours. The contacts decided before the kill are
    decided the same again: v1's text with the same message id, counted in the cap window,
    their execution on v1 — no drop, no deferral. Those decided after it see the changes.
    (At-least-once only: with exactly-once nobody saw the first attempt, so a redo may
    decide afresh; on Kafka the workers run at-least-once here.)"""
    stack.use_guarantee("at_least_once")
    await stack.define(flow(1))
    await stack.publisher.send_many([
        build_event("acme", f"c-{n}", "contact.created",
                    {"phone": ADDRESS, "consent": {"sms": True},
                     "attributes": {"first_name": f"N{n}"}}, event_id=f"signup-{n}")
        for n in range(CONTACTS)])
    crashed = stack.start_worker(env={"DRIPSTREAM_FAULT": "after_effects:1"})
    assert crashed.wait(60) == -signal.SIGKILL
    before = {c["contact_id"]: c for c in
              (orjson.loads(r.value) for r in await stack.read_all("send.sms"))}
    assert before, "the first batch sent something before the kill"

    await stack.define(flow(2))
    await suppress(stack.producer, stack.settings.topic_prefix, "acme", ADDRESS)
    stack.set_time(stack.now().replace(hour=22, minute=30))  # quiet hours: 08:00-21:00 UTC
    stack.start_worker()
    states = {f"c-{n}": await stack.wait_contact("acme", f"c-{n}", 1, timeout=60)
              for n in range(CONTACTS)}
    executions = {c: list((await stack.executions("acme", c)).values())
                  for c in states}
    sends: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in await stack.read_all("send.sms"):
        command = orjson.loads(record.value)
        sends[command["contact_id"]].append(command)
    audit = [orjson.loads(r.value) for r in await stack.read_all("audit")]

    for contact, first in before.items():
        [ex] = executions[contact]
        assert (ex["version"], [h["outcome"] for h in ex["history"]]) == (1, ["sent",
                                                                               "completed"])
        assert [s["id"] for s in states[contact]["sends"]] == [first["message_id"]]
        assert {(s["message_id"], s["body"]) for s in sends[contact]} == {
            (first["message_id"], first["body"])}
        assert first["body"].startswith("v1 ")
        assert [a for a in audit if a["contact_id"] == contact] == []
    for contact in set(states) - set(before):  # decided only after the changes
        [ex] = executions[contact]
        assert (ex["version"], sends[contact], states[contact]["sends"]) == (2, [], [])
        assert [a["reason"] for a in audit if a["contact_id"] == contact] == ["suppressed"]
    assert "handled again with their recorded answers" in stack.worker_log(1)
