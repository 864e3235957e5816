"""The journey lab against a real broker: real traffic through the worker, then
``dripstream simulate`` over the same window.

Fidelity is the test: with the live definitions, the simulation must make the very sends
(same message ids, same times) and the very non-sends (same reasons) the worker made — any
difference is a bug in one of the two. Then candidates: what they would have done instead.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration

WELCOME = {
    "id": "welcome", "account": "acme", "name": "Welcome", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "hello",
    "steps": {
        "hello": {"kind": "send_sms", "body": "Hi {{contact.first_name|there}}!",
                  "next": "pause"},
        "pause": {"kind": "wait", "duration": "2d", "next": "bought"},
        "bought": {"kind": "branch",
                   "condition": [{"field": "contact.purchases", "op": "gt", "value": 0}],
                   "true": "thanks", "false": "nudge"},
        "thanks": {"kind": "send_sms", "body": "Thanks for your order."},
        "nudge": {"kind": "send_sms", "body": "10% off your first order."},
    },
}
PING = {
    "id": "ping", "account": "acme", "name": "Ping", "version": 1,
    "trigger": {"event": "custom.ping"}, "reentry": {"policy": "every_time"},
    "start": "s", "steps": {"s": {"kind": "send_sms", "body": "ping {{event.data.n}}"}},
}


PHONES = {"ann": "+14155550101", "bob": "+14155550102", "cat": "+14155550103"}


def signup(contact: str) -> dict[str, Any]:
    return build_event("acme", contact, "contact.created",
                       {"phone": PHONES[contact], "attributes": {"first_name": contact.title()},
                        "consent": {"sms": True}}, event_id=f"signup-{contact}")


def pings(contact: str, count: int) -> list[dict[str, Any]]:
    return [build_event("acme", contact, "custom.ping", {"n": n},
                        event_id=f"ping-{contact}-{n}") for n in range(count)]


async def simulate(stack: Stack, tmp_path: Path, *args: str,
                   candidates: tuple[dict[str, Any], ...] = ()) -> tuple[list[dict[str, Any]],
                                                                   dict[str, Any]]:
    """``dripstream simulate --lines``: its lines and its summary."""
    files = []
    for n, definition in enumerate(candidates):
        path = tmp_path / f"candidate-{n}.json"
        path.write_bytes(orjson.dumps(definition))
        files.append(str(path))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "simulate", *files, "--lines",
                         *args], env=stack.env, cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    out = [orjson.loads(line) for line in done.stdout.splitlines()]
    return out[:-1], out[-1]["summary"]


async def stop_and_buy(stack: Stack) -> None:
    """bob texts STOP, cat buys."""
    await stack.publisher.send(build_event(
        "acme", "bob", "keyword.received", {"keyword": "STOP", "text": "STOP",
                                            "channel": "sms", "to": "+14155550000"},
        event_id="bob-stop"))
    await stack.publisher.send(build_event("acme", "cat", "purchase.completed",
                                           {"order_id": "o-1", "amount": 20, "currency": "USD"},
                                           event_id="cat-buys"))


def revive(stack: Stack) -> None:
    """A worker killed by a fault injection is followed by the next one."""
    if stack.workers[-1].poll() is not None:
        stack.start_worker()


async def sms_count(stack: Stack, n: int) -> bool:
    revive(stack)
    return len({orjson.loads(r.value)["message_id"]
                for r in await stack.read_all("send.sms")}) >= n


async def traffic(stack: Stack, env: dict[str, str] | None = None) -> str:
    """Three signups; ann pinged past her daily cap; bob texts STOP before his wait ends;
    cat buys; two days later the waits fire. Returns where the window starts."""
    since = (stack.now() - timedelta(minutes=1)).isoformat()
    await stack.define(WELCOME)
    await stack.define(PING)
    stack.start_worker(env)
    for contact in ("ann", "bob", "cat"):
        await stack.publisher.send(signup(contact))
    await eventually(lambda: sms_count(stack, 3), what="three welcomes")
    await stack.publisher.send_many(pings("ann", 7))
    await stop_and_buy(stack)
    await eventually(lambda: sms_count(stack, 3 + 4 + 1), what="pings and bob's reply")

    async def cat_bought() -> bool:  # the crash may come right after those sends
        revive(stack)
        cat = await stack.contact("acme", "cat")
        return cat is not None and cat["version"] >= 2

    await eventually(cat_bought, timeout=60, what="cat's purchase")
    stack.skip(2 * 24 * 3600 + 60)
    # ann's nudge (capped? a new day: sent), cat's thanks; bob's is suppressed
    await eventually(lambda: sms_count(stack, 3 + 4 + 1 + 2), timeout=60,
                     what="the waits' sends")

    async def bob_refused() -> bool:
        revive(stack)
        return any(orjson.loads(r.value)["reason"] == "suppressed"
                   for r in await stack.read_all("audit"))

    await eventually(bob_refused, what="bob's nudge refused")
    return since


def assert_faithful(summary: dict[str, Any]) -> None:
    assert summary["sends"] == summary["actual_sends"] > 0, summary
    assert (summary["only_simulated"], summary["only_actual"],
            summary["both_at_other_times"]) == (0, 0, 0), summary
    assert summary["not_sent"] == summary["actual_not_sent"], summary
    assert summary["added_wakeups"] == 0, summary


async def test_the_live_definitions_reproduce_what_happened(
        stack: Stack, tmp_path: Path) -> None:
    """Waits, a branch, a cap, STOP: the same sends at the same times, the same
    non-sends with the same reasons — in one process or two."""
    since = await traffic(stack)
    lines, summary = await simulate(stack, tmp_path, "--since", since)
    assert_faithful(summary)
    assert summary["not_sent"] == {"frequency_capped": 3, "suppressed": 1}
    assert {line["diff"] for line in lines if line["kind"] == "send"} == {"both"}
    # Two processes, each simulating half the partitions: the same answer.
    _, shared = await simulate(stack, tmp_path, "--since", since, "--until",
                               summary["until"], "--processes", "2")
    assert (shared.pop("processes"), summary.pop("processes")) == (2, 1)
    assert shared == summary


async def test_a_worker_crash_in_the_window_changes_nothing(
        stack: Stack, tmp_path: Path) -> None:
    """The worker is killed after its second batch's effects went out (they go out again
    from the next worker, decided with the journal's answers): still the same."""
    since = await traffic(stack, {"DRIPSTREAM_FAULT": "after_effects:2"})
    assert "fault injection: after_effects" in stack.worker_log(0)
    _, summary = await simulate(stack, tmp_path, "--since", since)
    assert_faithful(summary)


async def test_candidates_say_what_they_would_have_done(
        stack: Stack, tmp_path: Path) -> None:
    """A new welcome (one send, no wait) and a stricter cap (2 a day): the simulation's
    sends are the candidates', and the pings the cap would have stopped are reported as
    budget taken from the ping journey. Nothing is published."""
    since = await traffic(stack)
    before = {s: len(await stack.read_all(s)) for s in ("send.sms", "audit", "definitions")}
    welcome = {**WELCOME, "version": 2, "start": "hello",
               "steps": {"hello": {"kind": "send_sms", "body": "Welcome aboard"}}}
    policy = {"kind": "account", "account": "acme", "version": 1,
              "caps": {"limits": {"day": 2}}, "quiet_hours": None}
    lines, summary = await simulate(stack, tmp_path, "--since", since, "--migrate",
                                    candidates=(welcome, policy))
    assert summary["migrate"] == {}  # everyone entered in the window: nobody is in v1
    # v2's welcome is v1's message with another text: in both, and said so
    assert summary["both_with_other_body"] == 3
    assert summary["candidates"] == ["acme/welcome", "acme/policy"]
    bodies = {line["message_id"]: line for line in lines if line["kind"] == "send"}
    sent = [line for line in bodies.values() if line["diff"] != "actual"]
    # welcome v2 to each (3), ann one ping (cap 2), bob's STOP reply; no nudge, no thanks.
    assert sorted(line["origin"]["workflow_id"] for line in sent
                  if line["origin"].get("workflow_id")) == ["ping"] + ["welcome"] * 3
    assert {line["body"] for line in sent if line["origin"].get("workflow_id") == "welcome"
            } == {"Welcome aboard"}
    assert summary["displaced"] == {"ping/s": 3}
    # the pings the cap stops, and v1's nudge and thanks (v2's welcome is v1's message:
    # the same execution and step, so the same id, another body)
    assert summary["only_actual"] == 3 + 2
    after = {s: len(await stack.read_all(s)) for s in before}
    assert after == before


async def test_a_window_the_lab_cannot_run_is_one_line_and_exit_2(stack: Stack,
                                                                  tmp_path: Path) -> None:
    """A window reaching past now, candidates of another account than --account, and a
    partition count the topics do not have: each one line, exit 2, nothing read."""
    policy = tmp_path / "policy.json"
    policy.write_bytes(orjson.dumps({"kind": "account", "account": "acme", "version": 1}))
    cases = [
        (["--since", "1h", "--until", "2099-01-01T00:00"], stack.env, "is after now"),
        ([str(policy), "--account", "globex"], stack.env, "candidates of acme"),
        (["--since", "1h"], {**stack.env, "DRIPSTREAM_PARTITIONS": "16"},
         "DRIPSTREAM_PARTITIONS says 16"),
    ]
    for args, env, said in cases:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "streams.cli", "simulate", *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout) == (2, ""), (args, done.stderr)
        assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
