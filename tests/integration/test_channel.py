"""Channel workers against a real broker and Redis: the engine emits send commands, a
``dripstream channel`` process delivers them through the file provider (the fake that
records every call it receives) and reports back. Nothing here sleeps to synchronise: it
waits on the provider's file, the topics or the read model, with deadlines."""

from __future__ import annotations

import random
import signal
from collections import Counter
from datetime import timedelta
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


def command(n: int, contact: str, stack: Stack, channel: str = "sms") -> dict[str, Any]:
    now = stack.now()
    return {"message_id": f"msg-t{n:05d}", "channel": channel, "account": "acme",
            "contact_id": contact, "to": "+14155550100", "body": f"body {n}",
            "origin": {"kind": "workflow", "workflow_id": "t", "version": 1,
                       "execution_id": f"t/{contact}", "step_id": "s"},
            "created_at": now.isoformat(),
            "expires_at": (now + timedelta(days=1)).isoformat()}


async def put_commands(stack: Stack, commands: list[dict[str, Any]]) -> None:
    topic = stack.topic(f"send.{commands[0]['channel']}")
    pending = [await stack.producer.send(topic, orjson.dumps(c), key=c["contact_id"].encode())
               for c in commands]
    for future in pending:
        await future


async def test_sigkill_mid_batch_each_message_once(stack: Stack) -> None:
    """SIGKILLed at random points mid-batch and restarted while its commands are
    redelivered: the provider sees every message id exactly once, none missing, and each
    contact's messages in order."""
    rng = random.Random()
    commands = [command(n, f"c{n % 30}", stack) for n in range(150)]
    await put_commands(stack, commands)
    env = {"DRIPSTREAM_CHANNEL_FILE_FAULTS": "delay_ms=40",
           "DRIPSTREAM_CHANNEL_MAX_IN_FLIGHT": "8", "DRIPSTREAM_CHANNEL_BATCH_MAX": "60"}
    kills = 0
    for _ in range(3):
        worker = stack.start_channel("sms", env=env)
        target = len(accepted(stack)) + rng.randint(5, 30)

        async def progressed(target: int = target) -> bool:
            return len(accepted(stack)) >= target

        await eventually(progressed, timeout=30, what=f"{target} calls")
        stack.kill(worker, signal.SIGKILL)
        kills += 1
    stack.start_channel("sms", env=env)

    async def all_done() -> bool:
        return len(accepted(stack)) >= len(commands)

    await eventually(all_done, timeout=60, what="every message at the provider")

    async def all_reported() -> list[dict[str, Any]]:
        found = await reports(stack, "message.sent")
        return found if len({e["data"]["message_id"] for e in found}) == 150 else []

    await eventually(all_reported, timeout=30, what="a message.sent for each")
    calls = accepted(stack)
    assert set(calls) == {c["message_id"] for c in commands}
    assert max(calls.values()) == 1, [m for m, n in calls.items() if n > 1]
    order = [c["message_id"] for c in read_calls(stack.calls_path) if c["result"] == "accepted"]
    for contact in {c["contact_id"] for c in commands}:
        mine = [c["message_id"] for c in commands if c["contact_id"] == contact]
        assert [m for m in order if m in mine] == mine
    unknown = [r for r in map(orjson.loads, (x.value for x in await stack.read_all("audit")))
               if r["reason"] == "delivery_unknown"]
    assert all(r["resolution"] in ("found", "not_found") for r in unknown)
    assert unknown  # each kill lands during calls (40 ms each, 8 at a time)
    resolutions = Counter(r["resolution"] for r in unknown)
    print(f"\n{kills} kills, {len(unknown)} reservations found without an outcome: "
          f"{dict(resolutions)}")


async def test_lost_responses_are_looked_up_not_resent(stack: Stack) -> None:
    """A provider that loses 5 % of its responses after accepting: no second call for any
    of those ids, each reported (audit delivery_unknown, resolved by lookup: found) and
    reported sent."""
    from producers.providers import FileFaults

    faults = "drop=0.05,seed=7"
    commands = [command(n, f"c{n % 40}", stack) for n in range(200)]
    dropped = {c["message_id"] for c in commands
               if FileFaults.parse(faults).hit(0.05, c["message_id"], "drop")}
    assert 3 <= len(dropped) <= 25
    await put_commands(stack, commands)
    stack.start_channel("sms", env={"DRIPSTREAM_CHANNEL_FILE_FAULTS": faults})

    async def all_reported() -> list[dict[str, Any]]:
        found = await reports(stack, "message.sent")
        return found if len({e["data"]["message_id"] for e in found}) == 200 else []

    await eventually(all_reported, timeout=40, what="a message.sent for each")
    assert accepted(stack) == Counter({c["message_id"]: 1 for c in commands})
    audit = [orjson.loads(r.value) for r in await stack.read_all("audit")]
    unknown = {r["message_id"]: r for r in audit if r["reason"] == "delivery_unknown"}
    assert set(unknown) == dropped
    for record in unknown.values():
        AuditRecord.model_validate(record)
        assert record["stage"] == "channel"
        assert record["resolution"] == "found"
        assert record["policy"] == "lookup"
    assert "outcome unknown" in stack.channel_log()


async def test_opt_out_after_the_command_left_the_gate_wins(stack: Stack) -> None:
    """A STOP processed after the engine emitted a send (the channel worker was not
    running yet): the send is skipped with its reason on the audit topic and in the
    ledger; the opt-out confirmation, exempt, is delivered."""
    await stack.define(sms_flow())
    await stack.define(NO_QUIET)
    stack.start_worker()
    await stack.publisher.send(signup("ann"))
    await eventually(lambda: sends(stack), what="the welcome send")
    phone = (await sends(stack))[0]["to"]
    await stack.publisher.send(build_event("acme", "ann", "keyword.received", {
        "keyword": "STOP", "text": "STOP", "to": "+14155550000", "from": phone},
        event_id="stop-ann"))
    await stack.wait_contact("acme", "ann", 2)
    welcome, confirmation = await eventually(
        lambda: _two(sends(stack)), what="the opt-out confirmation")
    assert confirmation["purpose"] == "opt_out_confirmation"
    stack.start_channel("sms")

    async def skipped() -> list[dict[str, Any]]:
        return [r for r in map(orjson.loads, (x.value for x in await stack.read_all("audit")))
                if r.get("stage") == "channel"]

    records = await eventually(skipped, what="the channel's skip record")
    assert len(records) == 1
    AuditRecord.model_validate(records[0])
    assert records[0]["message_id"] == welcome["message_id"]
    assert records[0]["reason"] in ("suppressed", "opted_out")
    assert records[0]["origin"] == welcome["origin"]
    await eventually(lambda: _has_call(stack, confirmation["message_id"]),
                     what="the confirmation at the provider")
    assert welcome["message_id"] not in accepted(stack)
    ledger = await stack.redis.hgetall(f"{stack.settings.topic_prefix}ledger:"
                                       f"{welcome['message_id']}")
    assert ledger[b"state"] == b"skipped"
    assert ledger[b"reason"].decode() == records[0]["reason"]


async def _two(found: Any) -> list[dict[str, Any]] | None:
    items = await found
    return items if len(items) == 2 else None


async def _has_call(stack: Stack, message_id: str) -> bool:
    return message_id in accepted(stack)


async def test_failed_send_starts_a_follow_up_workflow(stack: Stack) -> None:
    """An SMS the provider refuses becomes message.failed with the provider's code, and
    a workflow triggered by it sends an email instead, end to end."""
    await stack.define(sms_flow())
    await stack.define(NO_QUIET)
    await stack.define({
        "id": "fallback", "account": "acme", "name": "Email after SMS failure", "version": 1,
        "trigger": {"event": "message.failed",
                    "criteria": [{"field": "event.data.channel", "op": "eq", "value": "sms"}]},
        "start": "e",
        "steps": {"e": {"kind": "send_email", "subject": "We could not text you",
                        "body": "Hi {{contact.first_name}}, here it is by email."}}})
    stack.start_worker()
    stack.start_channel("sms", env={"DRIPSTREAM_CHANNEL_FILE_FAULTS": "permanent=1"})
    await stack.publisher.send(signup("ann"))
    emails = await eventually(lambda: sends(stack, "email"), timeout=40,
                              what="the fallback email")
    assert emails[0]["contact_id"] == "ann"
    assert emails[0]["subject"] == "We could not text you"
    failed = (await reports(stack, "message.failed"))[0]
    sms = (await sends(stack))[0]
    assert failed["data"] == {"message_id": sms["message_id"], "channel": "sms",
                              "code": "invalid_destination",
                              "reason": "file provider: simulated rejection",
                              "provider_accepted": False}


async def test_hard_bounce_callback_suppresses_the_address(stack: Stack) -> None:
    """A signed provider callback reporting a hard bounce becomes message.bounced, and
    the engine puts the address on the suppression list; a forged one is refused."""
    import httpx

    from producers.providers import SIGNATURE_HEADER, sign
    from streams.embedded import free_port

    port = free_port()
    await stack.define(sms_flow())
    await stack.define(NO_QUIET)
    stack.start_worker()
    stack.start_channel("sms", env={"DRIPSTREAM_CHANNEL_CALLBACK_PORT": str(port),
                                    "DRIPSTREAM_CHANNEL_CALLBACK_SECRET": "s3cret"})
    await stack.publisher.send(signup("ann"))
    await eventually(lambda: reports(stack, "message.sent"), what="message.sent")
    call = read_calls(stack.calls_path)[0]
    body = orjson.dumps({"provider_id": call["provider_id"], "status": "bounced",
                         "bounce_type": "hard", "reason": "number disconnected"})
    url = f"http://127.0.0.1:{port}/callbacks"
    async with httpx.AsyncClient() as client:
        forged = await client.post(url, content=body, headers={
            SIGNATURE_HEADER: sign(b"wrong", int(stack.now().timestamp()), body)})
        assert forged.status_code == 401
        answer = await client.post(url, content=body, headers={
            SIGNATURE_HEADER: sign(b"s3cret", int(stack.now().timestamp()), body)})
    assert answer.status_code == 202, answer.text
    assert answer.json()["type"] == "message.bounced"

    async def suppressed() -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in await stack.read_all("suppressions")]

    records = await eventually(suppressed, what="the suppression")
    assert records[0]["address"] == call["to"]
    assert records[0]["reason"] == "bounced"
    assert records[0]["message_id"] == call["message_id"]


async def test_sigterm_while_joining_the_group_is_honoured_at_once(stack: Stack) -> None:
    """A worker joining a group whose rebalance does not end (a member stuck giving its
    partitions up) has no partitions and may never get any: SIGTERM stops it at once,
    exit 0, not once an assignment arrives."""
    from tests.integration.test_channel_worker import stuck_member

    async with stuck_member(stack) as stuck:
        worker = stack.start_channel("sms")

        async def joining() -> bool:  # its join began a rebalance the member holds up
            return stuck.revoking.is_set()

        await eventually(joining, what="the worker joining the group")
        worker.send_signal(signal.SIGTERM)

        async def exited() -> bool:  # waited for in the loop: the member's heartbeats go on
            return worker.poll() is not None

        await eventually(exited, timeout=15, what="the exit after SIGTERM")
    assert worker.poll() == 0, stack.channel_log(0)
    assert "channel sms: assigned" not in stack.channel_log(0)
    assert "stopped" in stack.channel_log(0)


async def test_exit_statuses(stack: Stack, tmp_path: Any) -> None:
    """0 after SIGTERM, 2 on invalid settings (with the reason, in one line, before
    connecting to anything), 70 when the broker cannot be reached."""
    worker = stack.start_channel("email")

    async def consuming() -> bool:
        return "consuming" in stack.channel_log(0)

    await eventually(consuming, what="the worker consuming")
    assert worker.kill(signal.SIGTERM) == 0
    assert "stopped" in stack.channel_log(0)
    bad = stack.start_channel("sms", env={"DRIPSTREAM_CHANNEL_MAX_IN_FLIGHT": "0"})
    assert bad.wait(30) == 2
    assert "DRIPSTREAM_CHANNEL_MAX_IN_FLIGHT" in stack.channel_log(1)
    webhook = stack.start_channel("sms", "webhook")
    assert webhook.wait(30) == 2
    assert "DRIPSTREAM_CHANNEL_WEBHOOK_URL" in stack.channel_log(2)
    from streams.embedded import free_port

    nowhere = stack.start_channel("sms", env={
        "DRIPSTREAM_BROKER": f"kafka://127.0.0.1:{free_port()}"})
    assert nowhere.wait(60) == 70, stack.channel_log(3)
    # Callbacks without a secret: a configuration error, found before connecting (the
    # broker here answers nowhere, and it is still 2, not 70).
    secretless = stack.start_channel("sms", env={
        "DRIPSTREAM_CHANNEL_CALLBACK_PORT": "0",
        "DRIPSTREAM_BROKER": f"kafka://127.0.0.1:{free_port()}"})
    assert secretless.wait(30) == 2, stack.channel_log(4)
    assert stack.channel_log(4).splitlines() == [
        "invalid: provider callbacks (DRIPSTREAM_CHANNEL_CALLBACK_PORT) need a secret: "
        "DRIPSTREAM_CHANNEL_CALLBACK_SECRET (or the webhook's)"]
