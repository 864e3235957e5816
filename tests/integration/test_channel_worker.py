"""The ChannelWorker in this process, with providers the test controls, against the real
broker and Redis: the ledger's operations, unknown outcomes and both policies, retries and
their count across redeliveries, a graceful stop in the middle of a batch, the stall exits
and how a worker leaves its group."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from producers.channel import (
    ChannelWorker,
    Ledger,
    Outcome,
    PermanentError,
    Policy,
    TransientError,
)
from streams.commands import SendCommand
from tests.stack import Stack, eventually
from tests.test_webhook import SECRET, Receiver, receiver  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration


def raw_command(message_id: str, contact: str, stack: Stack) -> dict[str, Any]:
    now = stack.now()
    return {"message_id": message_id, "channel": "sms", "account": "acme",
            "contact_id": contact, "to": "+14155550100", "body": message_id,
            "origin": {"kind": "workflow", "workflow_id": "t", "version": 1,
                       "execution_id": f"t/{contact}", "step_id": "s"},
            "created_at": now.isoformat(), "expires_at": (now + timedelta(hours=1)).isoformat()}


async def put(stack: Stack, *commands: dict[str, Any], partition: int | None = 0) -> None:
    for c in commands:
        await stack.producer.send_and_wait(stack.topic("send.sms"), orjson.dumps(c),
                                           key=c["contact_id"].encode(), partition=partition)


def worker(stack: Stack, deliver: Callable[[SendCommand], Awaitable[Outcome]], *,
           lookup: Callable[[SendCommand], Awaitable[Outcome | None]] | None = None,
           policy: Policy | None = None, **settings: Any) -> ChannelWorker:
    merged = {"channel_heartbeat_s": 0.3, "channel_backoff_s": 0.01,
              "channel_backoff_max_s": 0.05, **settings}
    return ChannelWorker(stack.settings.model_copy(update=merged), "sms", deliver,
                         lookup=lookup, policy=policy, rand=lambda: 1.0)


async def run_until(w: ChannelWorker, done: Callable[[], Awaitable[Any]],
                    what: str) -> None:
    task = asyncio.ensure_future(w.main(install_signals=False))
    try:
        await eventually(done, timeout=30, what=what)
    finally:
        w.stop()
        finished, _ = await asyncio.wait({task}, timeout=30)
        if not finished:  # say where it hangs before failing
            for t in asyncio.all_tasks():
                t.print_stack()
        assert await asyncio.wait_for(task, 1) == 0


async def events(stack: Stack) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in map(orjson.loads,
                                    (r.value for r in await stack.read_all("contact-events")))}


async def audit(stack: Stack) -> dict[str, dict[str, Any]]:
    return {a["message_id"]: a for a in map(orjson.loads,
                                            (r.value for r in await stack.read_all("audit")))}


async def test_ledger_operations(stack: Stack) -> None:
    """Reserve only what nobody holds, give back, take over only from the named owner,
    record only as the owner; entries and the provider index expire."""
    ledger = Ledger(stack.redis, stack.settings.topic_prefix, ttl_s=600)
    cmd = SendCommand.model_validate(raw_command("msg-l1", "c-1", stack))
    assert await ledger.claim(cmd, "w1", 1.0, "reserved") is None
    held = await ledger.claim(cmd, "w2", 2.0, "reserved")
    assert held is not None and held.state == "reserved" and held.owner == "w1"
    assert not await ledger.record(cmd, "w2", state="sent")  # not the owner
    await ledger.release("msg-l1", "w1")
    assert (await ledger.get("msg-l1")).state == "pending"  # type: ignore[union-attr]
    assert await ledger.claim(cmd, "w2", 3.0, "reserved") is None  # pending: claimable
    assert await ledger.takeover("msg-l1", "w1", "w3", 4.0) is not None  # w2 holds it
    assert await ledger.takeover("msg-l1", "w2", "w3", 4.0) is None
    assert await ledger.record(cmd, "w3", state="sent", provider_id="p-1", at="x")
    entry = await ledger.get("msg-l1")
    assert entry is not None and entry.final and entry.provider_id == "p-1"
    assert (entry.account, entry.contact_id, entry.channel) == ("acme", "c-1", "sms")
    assert await ledger.by_provider_id("sms", "p-1") == "msg-l1"
    assert 0 < await stack.redis.ttl(ledger.key("msg-l1")) <= 600
    assert 0 < await stack.redis.ttl(ledger.provider_key("sms", "p-1")) <= 600
    await ledger.beat("w3", 5.0)
    assert await ledger.alive("w3") and not await ledger.alive("w1")


async def test_outcomes_and_the_lookup_policy(stack: Stack) -> None:
    """Transient errors retry then fail; a permanent error fails with its code; unknown
    outcomes are reported and looked up: found → recorded, not found → delivered now,
    lookup failing → unresolved (reported, never sent again)."""
    calls: Counter[str] = Counter()
    at_provider = {"msg-found"}

    async def deliver(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        mid = cmd.message_id
        if mid == "msg-flaky" and calls[mid] < 3:
            raise TransientError("busy", "503")
        if mid == "msg-down":
            raise TransientError("down", "503")
        if mid == "msg-refused":
            raise PermanentError("21211", "invalid number")
        if mid in ("msg-found", "msg-unresolved") or (mid == "msg-lost" and calls[mid] == 1):
            raise TimeoutError("no answer")
        return Outcome.sent(f"p-{mid}")

    async def lookup(cmd: SendCommand) -> Outcome | None:
        if cmd.message_id == "msg-unresolved":
            raise RuntimeError("provider API down")
        return Outcome.sent("p-looked-up") if cmd.message_id in at_provider else None

    ids = ["msg-ok", "msg-flaky", "msg-down", "msg-refused", "msg-found", "msg-lost",
           "msg-unresolved"]
    await put(stack, *(raw_command(m, f"c-{m}", stack) for m in ids))
    w = worker(stack, deliver, lookup=lookup, channel_max_attempts=3)

    async def settled() -> bool:
        entries = [await Ledger(stack.redis, stack.settings.topic_prefix, 60).get(m)
                   for m in ids]
        return all(e is not None and e.final for e in entries)

    await run_until(w, settled, "every command settled")
    assert calls == Counter({"msg-ok": 1, "msg-flaky": 3, "msg-down": 3, "msg-refused": 1,
                             "msg-found": 1, "msg-lost": 2, "msg-unresolved": 1})
    found = await eventually(lambda: _events_with(stack, 6), what="six reports")
    assert found["msg-flaky:sent"]["data"]["provider_id"] == "p-msg-flaky"
    assert found["msg-down:failed"]["data"] == {
        "message_id": "msg-down", "channel": "sms", "code": "503",
        "reason": "down (after 3 attempts)", "provider_accepted": False}
    assert found["msg-refused:failed"]["data"]["code"] == "21211"
    assert found["msg-found:sent"]["data"]["provider_id"] == "p-looked-up"
    assert found["msg-lost:sent"]["data"]["provider_id"] == "p-msg-lost"
    assert not any(k.startswith("msg-unresolved") for k in found)
    reports = await audit(stack)
    assert {m: r["resolution"] for m, r in reports.items()} == {
        "msg-found": "found", "msg-lost": "not_found", "msg-unresolved": "unresolved"}
    assert all(r["reason"] == "delivery_unknown" for r in reports.values())
    assert w.stats["unknown"] == 3 and w.stats["retried"] == 4


async def _events_with(stack: Stack, n: int) -> dict[str, dict[str, Any]] | None:
    found = await events(stack)
    return found if len(found) >= n else None


async def test_assume_sent_policy(stack: Stack) -> None:
    """A channel that chose assume_sent records an unknown outcome as sent, says so in
    the event, and never calls the provider again for it — not after a restart either."""
    calls: Counter[str] = Counter()

    async def deliver(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        raise ConnectionResetError("dropped")

    await put(stack, raw_command("msg-a", "c-a", stack))
    w = worker(stack, deliver, policy="assume_sent")
    await run_until(w, lambda: _events_with(stack, 1), "the assumed report")
    event = (await events(stack))["msg-a:sent"]
    assert event["data"] == {"message_id": "msg-a", "channel": "sms", "assumed": True}
    assert (await audit(stack))["msg-a"]["resolution"] == "assumed_sent"
    # redelivered (a new group reads from the start): settled, reported again, not sent
    again = worker(stack, deliver, policy="assume_sent")
    again.group_id += "-replay"
    await run_until(again, lambda: _redelivered(again), "the redelivery")
    assert calls == Counter({"msg-a": 1})


async def _redelivered(w: ChannelWorker) -> bool:
    return w.stats["redelivered"] >= 1


async def committed(stack: Stack, group: str, partition: int = 0) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        found: int | None = await consumer.committed(
            TopicPartition(stack.topic("send.sms"), partition))
        return found
    finally:
        await consumer.stop()


async def test_graceful_stop_finishes_the_call_in_flight_and_releases_retries(
    stack: Stack,
) -> None:
    """SIGTERM mid-batch: the provider call in flight finishes and is recorded, a command
    waiting for its retry is released, the contact's next command is not started, and
    the commit stops at the first unfinished record; the next worker delivers the rest
    without calling the provider again for the finished one."""
    in_call, finish = asyncio.Event(), asyncio.Event()
    calls: Counter[str] = Counter()

    async def deliver(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        if cmd.message_id == "msg-a1":
            in_call.set()
            await finish.wait()
        if cmd.message_id == "msg-b1":
            raise TransientError("busy")
        return Outcome.sent(f"p-{cmd.message_id}")

    # One partition, in this order: a1 (contact a), b1 (contact b), a2 (contact a again).
    await put(stack, raw_command("msg-a1", "a", stack), raw_command("msg-b1", "b", stack),
              raw_command("msg-a2", "a", stack))
    w = worker(stack, deliver, channel_backoff_s=60, channel_backoff_max_s=60)
    task = asyncio.ensure_future(w.main(install_signals=False))
    ledger = Ledger(stack.redis, stack.settings.topic_prefix, 60)

    async def b1_waiting() -> bool:
        entry = await ledger.get("msg-b1")
        return in_call.is_set() and entry is not None and entry.state == "pending"

    await eventually(b1_waiting, what="a1 in its call, b1 waiting to retry")
    w.stop()
    finish.set()
    assert await asyncio.wait_for(task, 15) == 0
    assert calls == Counter({"msg-a1": 1, "msg-b1": 1})
    assert (await ledger.get("msg-a1")).state == "sent"  # type: ignore[union-attr]
    assert (await ledger.get("msg-b1")).state == "pending"  # type: ignore[union-attr]
    assert await ledger.get("msg-a2") is None
    assert await committed(stack, w.group_id) == 1  # after a1; b1 is not done
    assert "msg-a1:sent" in await events(stack)

    async def plain(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        return Outcome.sent(f"p-{cmd.message_id}")

    nxt = worker(stack, plain)
    await run_until(nxt, lambda: _events_with(stack, 3), "the rest delivered")
    assert calls == Counter({"msg-a1": 1, "msg-b1": 2, "msg-a2": 1})
    assert await committed(stack, w.group_id) == 3


async def test_webhook_retries_through_the_worker(
    stack: Stack, receiver: Receiver,  # noqa: F811  # the fixture imported above
) -> None:
    """A receiver answering 503, 503, then 200: the worker retries with backoff and
    reports one message.sent; every request carries the same idempotency key."""
    from producers.providers import WebhookProvider

    receiver.answers += [(503, {}, 0.0), (503, {}, 0.0), (200, {"id": "wh-9"}, 0.0)]
    provider = WebhookProvider(receiver.url, SECRET, verify_tls=str(receiver.ca_file))
    await put(stack, raw_command("msg-h1", "c-h", stack))
    w = ChannelWorker(stack.settings.model_copy(update={
        "channel_heartbeat_s": 0.3, "channel_backoff_s": 0.01}), "sms", provider)
    assert w.policy == "assume_sent"  # no lookup URL: the webhook cannot look up
    await run_until(w, lambda: _events_with(stack, 1), "the report")
    assert (await events(stack))["msg-h1:sent"]["data"]["provider_id"] == "wh-9"
    assert [h["Idempotency-Key"] for h, _ in receiver.requests] == ["msg-h1"] * 3


async def test_rebalance_releases_retries_and_moves_promptly(stack: Stack) -> None:
    """A worker whose commands all wait for a long retry gives them up when a second
    worker joins: the newcomer delivers its share at once, not after the backoff."""
    async def busy(cmd: SendCommand) -> Outcome:
        raise TransientError("busy")

    async def fine(cmd: SendCommand) -> Outcome:
        return Outcome.sent(f"p-{cmd.message_id}")

    for p in range(stack.settings.partitions):
        await put(stack, raw_command(f"msg-r{p}", f"c-r{p}", stack), partition=p)
    first = worker(stack, busy, channel_backoff_s=120, channel_backoff_max_s=120)
    first_task = asyncio.ensure_future(first.main(install_signals=False))
    ledger = Ledger(stack.redis, stack.settings.topic_prefix, 60)

    async def all_waiting() -> bool:
        entries = [await ledger.get(f"msg-r{p}") for p in range(stack.settings.partitions)]
        return all(e is not None and e.state == "pending" for e in entries)

    await eventually(all_waiting, what="every command waiting for its retry")
    second = worker(stack, fine)
    try:
        await run_until(second, lambda: _events_with(stack, stack.settings.partitions // 2),
                        "the newcomer's share delivered")
    finally:
        first.stop()
        assert await asyncio.wait_for(first_task, 30) == 0
    assert second.stats["sent"] >= stack.settings.partitions // 2


async def test_a_live_owners_reservation_is_waited_for_not_taken(stack: Stack) -> None:
    """A command reserved by another live worker (mid-call during a rebalance) is waited
    for — however long its call takes — and, once that worker records the outcome,
    reported, never sent a second time."""
    calls: Counter[str] = Counter()

    async def deliver(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        return Outcome.sent()

    raw = raw_command("msg-live", "c-live", stack)
    ledger = Ledger(stack.redis, stack.settings.topic_prefix, 60)
    await ledger.beat("other", 60)
    assert await ledger.claim(SendCommand.model_validate(raw), "other", 1.0,
                              "reserved") is None
    await put(stack, raw)
    w = worker(stack, deliver, channel_call_timeout_s=0.5)  # the wait outlasts it
    task = asyncio.ensure_future(w.main(install_signals=False))
    try:
        await eventually(lambda: _log_says(w), what="the worker waiting")
        assert calls == Counter()
        assert await ledger.record(SendCommand.model_validate(raw), "other", state="sent",
                                   provider_id="p-other", at=stack.now().isoformat())
        found = await eventually(lambda: _events_with(stack, 1), what="the report")
    finally:
        w.stop()
        assert await asyncio.wait_for(task, 30) == 0
    assert found["msg-live:sent"]["data"]["provider_id"] == "p-other"
    assert calls == Counter() and w.stats["unknown"] == 0


async def _log_says(w: ChannelWorker) -> bool:
    """The worker has been waiting at least one call timeout (it warned)."""
    return w.stats["waited"] >= 1


# -- attempts, liveness, the group -------------------------------------------------------


async def test_attempts_are_counted_across_redeliveries(stack: Stack) -> None:
    """A command that failed transiently twice, then was released by a stop while waiting
    for its retry, is called once more by the next worker (3 attempts allowed), not three
    more times: the count is in the ledger."""
    calls: Counter[str] = Counter()

    async def busy(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        raise TransientError("busy", "503")

    draws = iter([0.0])  # the first retry at once, the second after 60 s: stopped there
    await put(stack, raw_command("msg-t1", "c-t", stack))
    first = ChannelWorker(stack.settings.model_copy(update={
        "channel_heartbeat_s": 0.3, "channel_backoff_s": 60, "channel_backoff_max_s": 60,
        "channel_max_attempts": 3}), "sms", busy, rand=lambda: next(draws, 1.0))
    task = asyncio.ensure_future(first.main(install_signals=False))
    ledger = Ledger(stack.redis, stack.settings.topic_prefix, 60)

    async def waiting_after_two() -> bool:
        entry = await ledger.get("msg-t1")
        return calls["msg-t1"] == 2 and entry is not None and entry.state == "pending"

    await eventually(waiting_after_two, what="two calls, then waiting for the third")
    first.stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert (await ledger.get("msg-t1")).attempts == 2  # type: ignore[union-attr]
    nxt = worker(stack, busy, channel_max_attempts=3)
    await run_until(nxt, lambda: _events_with(stack, 1), "the failure report")
    assert calls == Counter({"msg-t1": 3})
    assert (await events(stack))["msg-t1:failed"]["data"]["reason"] == \
        "busy (after 3 attempts)"


class _Stuck(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """A group member that never gives its partitions up: its revoke callback waits (its
    heartbeats go on meanwhile), so the group's rebalance does not end."""

    def __init__(self) -> None:
        self.revoking, self.release = asyncio.Event(), asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:  # the first join has nothing to give up
            self.revoking.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


@asynccontextmanager
async def stuck_member(stack: Stack, channel: str = "sms") -> AsyncIterator[_Stuck]:
    """A member of ``channel``'s group holding every partition and never rejoining, so
    a worker that joins gets no partitions (until the context ends)."""
    timings = ({"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
               if stack.settings.embedded else {})
    stuck = _Stuck()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False,
                                group_id=f"{stack.settings.topic_prefix}channel-{channel}",
                                rebalance_timeout_ms=120_000, max_poll_interval_ms=300_000,
                                **timings)
    consumer.subscribe([stack.topic(f"send.{channel}")], listener=stuck)
    await consumer.start()
    try:
        yield stuck
    finally:
        stuck.release.set()
        await consumer.stop()


async def test_a_worker_that_gets_no_partitions_exits_70(stack: Stack) -> None:
    """Joining a group whose rebalance does not end: after the stall time the worker
    says it is stalled and why, and after the stall exit time it exits 70, with no
    connection left open."""
    async with stuck_member(stack) as stuck:
        w = worker(stack, _fine, channel_stall_after_s=1.0, channel_stall_exit_s=1.0)
        task = asyncio.ensure_future(w.main(install_signals=False))
        await eventually(lambda: _set(stuck.revoking), what="the worker joining")
        assert await asyncio.wait_for(task, 30) == 70
    assert (w.fatal or "").startswith("stalled: no partitions assigned for ")
    assert w.stats["stalled_checks"] >= 2
    # On Kafka the stop waits for the held JoinGroup and is given up on after 10 s: the
    # consumer's connections are closed all the same (they leaked into the test session).
    assert w._consumer is not None
    assert [c for c in w._consumer._client._conns.values() if c.connected()] == []


async def test_a_worker_whose_input_waits_with_no_progress_exits_70(stack: Stack) -> None:
    """A provider call that never returns (a call timeout longer than the stall time),
    input waiting: the worker exits 70, abandoning the call; the next worker treats the
    reservation as an unknown outcome (the provider may have it) and resolves it by
    lookup, never calling blindly."""
    hang = asyncio.Event()
    calls: Counter[str] = Counter()

    async def stuck(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        await hang.wait()
        return Outcome.sent()

    async def lookup(cmd: SendCommand) -> Outcome | None:
        return None  # the provider never got it

    await put(stack, raw_command("msg-h", "c-h", stack))
    w = worker(stack, stuck, lookup=lookup, channel_call_timeout_s=120,
               channel_stall_after_s=5.0, channel_stall_exit_s=1.0)
    assert await asyncio.wait_for(w.main(install_signals=False), 30) == 70
    assert (w.fatal or "").startswith("stalled: input waiting, no progress for ")
    entry = await Ledger(stack.redis, stack.settings.topic_prefix, 60).get("msg-h")
    assert entry is not None and (entry.state, entry.owner) == ("reserved", w.token)

    async def fine(cmd: SendCommand) -> Outcome:
        calls[cmd.message_id] += 1
        return Outcome.sent("p-h")

    nxt = worker(stack, fine, lookup=lookup)
    await run_until(nxt, lambda: _events_with(stack, 1), "the report")
    assert calls == Counter({"msg-h": 2})
    assert (await audit(stack))["msg-h"]["resolution"] == "not_found"


async def test_a_leader_stopped_while_its_group_re_forms_leaves_it_usable(
    stack: Stack,
) -> None:
    """The wedge of issue 20: a member leaves, and the worker leading the group stops
    before the group has re-formed. On the embedded broker (Tansu 0.6.0) a LeaveGroup then
    left the group with a departed leader for ever -- every later worker looped
    "(Re-)joining group" with no partitions. The worker leaves there by session expiry
    instead: the next worker gets every partition."""
    w = worker(stack, _fine)
    task = asyncio.ensure_future(w.main(install_signals=False))
    await eventually(lambda: _assigned(w), what="the partitions assigned")
    other = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=w.group_id,
                             enable_auto_commit=False,
                             **({"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
                                if stack.settings.embedded else {}))
    other.subscribe([stack.topic("send.sms")])
    await other.start()  # the worker rejoined: a generation above the first
    await other.stop()  # LeaveGroup: the group re-forms, the worker its leader ...
    w.stop()  # ... which leaves before it has noticed
    assert await asyncio.wait_for(task, 30) == 0
    nxt = worker(stack, _fine)
    await run_until(nxt, lambda: _assigned(nxt, stack.settings.partitions),
                    "every partition at the next worker")


async def _fine(cmd: SendCommand) -> Outcome:
    return Outcome.sent(f"p-{cmd.message_id}")


async def _set(event: asyncio.Event) -> bool:
    return event.is_set()


async def _assigned(w: ChannelWorker, count: int = 1) -> bool:
    consumer = w._consumer
    return consumer is not None and len(consumer.assignment()) >= count


@pytest.mark.kafka
async def test_a_send_topic_ending_in_a_commit_marker_is_no_input_waiting(stack: Stack) -> None:
    """Exactly-once workers write sends in transactions, so an idle send topic ends with
    a commit marker past the committed offset: that is no input waiting (it made idle
    channel workers on Kafka report a stall and exit 70 after five minutes)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, transactional_id=(
        f"{stack.settings.topic_prefix}marker-test"))
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(stack.topic("send.sms"),
                                         orjson.dumps(raw_command("msg-m", "c-m", stack)),
                                         key=b"c-m", partition=0)
    finally:
        await producer.stop()
    calls: list[str] = []

    async def deliver(cmd: SendCommand) -> Outcome:
        calls.append(cmd.message_id)
        return Outcome.sent("p-m")

    w = worker(stack, deliver)
    waiting: list[bool] = []

    async def delivered_and_judged() -> bool:
        if not calls or w._consumer is None:
            return False
        waiting.append(await w._input_waiting())
        return waiting[-1] is False

    await run_until(w, delivered_and_judged, "the delivery, then no input waiting")
    assert calls == ["msg-m"]
