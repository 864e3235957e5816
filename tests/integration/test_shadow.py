"""A shadow version beside the live one, on a real broker: ``dripstream shadow run``
follows the live stream and says what the shadow would have sent; it sends nothing; its
report matches what the journey lab says the version would have done had it been active;
promoting it is a normal publication."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from streams.embedded import WorkerProcess
from tests.integration.test_simulation import (
    WELCOME,
    signup,
    simulate,
    sms_count,
    stop_and_buy,
)
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration

#: v2 in shadow: another welcome text, and one day's wait instead of two.
SHADOW = {**WELCOME, "version": 2, "shadow": True,
          "steps": {**WELCOME["steps"],
                    "hello": {"kind": "send_sms", "body": "Welcome aboard, "
                              "{{contact.first_name|there}}!", "next": "pause"},
                    "pause": {"kind": "wait", "duration": "1d", "next": "bought"}}}
LAG_S = 2


def start_shadow(stack: Stack) -> WorkerProcess:
    env = {**stack.env, "DRIPSTREAM_SHADOW_LAG_S": str(LAG_S)}
    runner = WorkerProcess(env, stack.tmp_path / "shadow.log", cwd=ROOT,
                           command=("shadow", "run")).start()
    stack.channels.append(runner)  # stopped with the stack
    return runner


async def shadow_records(stack: Stack) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await stack.read_all("shadow")]


async def report(stack: Stack, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "shadow", "report", "acme",
                         "--lines", *args], env=stack.env, cwd=ROOT, capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = [orjson.loads(line) for line in done.stdout.splitlines()]
    return out[:-1], out[-1]["summary"]


@pytest.mark.slow
async def test_a_shadow_runs_beside_the_live_version_and_sends_nothing(
        stack: Stack, tmp_path: Path) -> None:
    since = (stack.now() - timedelta(minutes=1)).isoformat()
    await stack.define(WELCOME)
    await stack.define(SHADOW)
    stack.start_worker()
    runner = start_shadow(stack)
    for contact in ("ann", "bob", "cat"):
        await stack.publisher.send(signup(contact))
    await stop_and_buy(stack)
    await eventually(lambda: sms_count(stack, 3 + 1), what="the welcomes and bob's reply")
    await stack.wait_contact("acme", "cat", 2)
    stack.skip(24 * 3600 + 60)  # the shadow's wait is over, not the live one's

    async def shadow_waited() -> list[dict[str, Any]]:
        return [r for r in await shadow_records(stack) if r["kind"] == "send"
                and r["origin"].get("step_id") in ("nudge", "thanks")]

    early = await eventually(shadow_waited, timeout=60, what="the shadow's nudge and thanks")
    assert runner.poll() is None
    stack.skip(24 * 3600)  # now the live waits fire
    await eventually(lambda: sms_count(stack, 3 + 1 + 2), timeout=60,
                     what="the live nudge and thanks")

    # Nothing of the shadow went out: the live texts only, each once.
    sent = [orjson.loads(r.value) for r in await stack.read_all("send.sms")]
    assert not [s for s in sent if s["body"].startswith("Welcome aboard")]
    assert len({s["message_id"] for s in sent}) == 6
    # The shadow's waits were its own: a day after each signup, a day before the live ones.
    live_at = {s["message_id"]: datetime.fromisoformat(s["created_at"]) for s in sent}
    for send in early:
        gap = live_at[send["message_id"]] - datetime.fromisoformat(send["created_at"])
        assert timedelta(hours=23) < gap < timedelta(hours=25), (send, live_at, gap)

    async def covered() -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        found = await report(stack)
        return found if found[1]["sends"] >= 5 and found[1]["actual_sends"] >= 6 else None

    lines, summary = await eventually(covered, timeout=60, what="the report to cover both")
    assert summary["shadows"][0]["version"] == 2 and summary["behind"] is False
    # hello in both with another text; nudge and thanks a day earlier; bob suppressed in both
    assert summary["both_with_other_body"] == 3, summary
    assert summary["both_at_other_times"] == 2, summary
    assert summary["not_sent"] == summary["actual_not_sent"] == {"suppressed": 1}, summary
    # What the journey lab says v2 would have done over the same window, had it been live.
    lab_lines, lab = await simulate(stack, tmp_path, "--since", since, "--until",
                                    summary["until"], candidates=(SHADOW,))

    def made(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return sorted((r["message_id"], r["created_at"], r["body"]) for r in rows
                      if r["kind"] == "send" and r["diff"] != "actual")

    assert made(lines) == made(lab_lines)
    assert lab["not_sent"] == summary["not_sent"]

    # Promotion is a normal publication: v3, v2's body, not in shadow. The workers take
    # it a moment later (they follow the definitions topic): a signup then gets its text.
    await stack.define({**SHADOW, "version": 3, "shadow": False})
    for n in range(20):  # a signup decided before the worker read v3 gets v1's text
        contact = f"dan-{n}"
        await stack.publisher.send(build_event(
            "acme", contact, "contact.created",
            {"phone": f"+1415555{n + 200:04d}", "attributes": {"first_name": "Dan"},
             "consent": {"sms": True}}, event_id=f"signup-{contact}"))

        async def welcome(contact: str = contact) -> str | None:
            return next((s["body"] for s in (orjson.loads(r.value)
                                             for r in await stack.read_all("send.sms"))
                         if s["contact_id"] == contact), None)

        if await eventually(welcome, what=f"{contact}'s welcome") == "Welcome aboard, Dan!":
            break
    else:
        raise AssertionError("no signup was welcomed by v3")
