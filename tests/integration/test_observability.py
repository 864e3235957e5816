"""What the admin API and the dashboard read, written by a real worker: the execution
index, the per-minute stats, the recent audit and dead letters, the lag, the metrics."""

from __future__ import annotations

import re
import socket
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.integration.test_workflows import signup, welcome_flow
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

DAY = 24 * 3600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(port: int) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}/metrics")).text


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value of a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def summed(rows: list[dict[str, Any]], kind: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row[kind])
    return total


async def test_index_stats_recent_lists_and_metrics(stack: Stack) -> None:
    """A workflow run for three contacts shows in the index, counts and step counts as the
    states have it, through to completion; the minute's stats, the recent lists and the
    worker's metrics count the events, the sends, the non-send and the dead letter."""
    await stack.define(welcome_flow())
    port = free_port()
    stack.start_worker({"DRIPSTREAM_METRICS_PORT": str(port)})
    for contact in ("ann", "bob"):
        await stack.publisher.send(signup(contact))
    await stack.publisher.send(signup("cid", consent={}))  # no SMS consent: not sent
    # Names its account, but is no event: dead-lettered, listed under acme.
    await stack.producer.send_and_wait(stack.topic("contact-events"),
                                       b'{"account": "acme", "subject": "zed"}', key=b"zed")
    for contact in ("ann", "bob", "cid"):
        await stack.wait_execution("acme", contact, lambda e: e["status"] == "waiting")

    truth = {c: next(iter((await stack.executions("acme", c)).values()))
             for c in ("ann", "bob", "cid")}
    items, cursor = await stack.read_model.list_executions("acme", "welcome")
    assert cursor is None
    assert {(i["contact_id"], i["execution_id"], i["status"], i["step"]) for i in items} == {
        (c, e["id"], e["status"], e["step"]) for c, e in truth.items()}
    assert items[0]["started_at"][:19] == max(e["started_at"] for e in truth.values())[:19]
    page, cursor = await stack.read_model.list_executions("acme", "welcome", "waiting", limit=2)
    rest, end = await stack.read_model.list_executions("acme", "welcome", "waiting", cursor, 2)
    assert cursor is not None and end is None
    assert len({i["execution_id"] for i in page + rest}) == 3
    counts = await stack.read_model.execution_counts("acme", "welcome")
    assert counts == {"running": 0, "waiting": 3, "paused": 0, "completed": 0,
                      "cancelled": 0, "failed": 0}
    assert await stack.read_model.step_counts("acme", "welcome") == {"pause": 3}
    assert await stack.read_model.workflow_ids("acme") == {"welcome"}

    rows = await stack.read_model.stats("acme", stack.now(), minutes=5)
    assert len(rows) == 5
    assert summed(rows, "events") == {"contact.created": 3}
    assert summed(rows, "sends") == {"sms": 2}
    assert summed(rows, "nonsends") == {"no_consent": 1}
    [letter] = await stack.read_model.recent_dead_letters("acme")
    assert (letter["key"], letter["topic"]) == ("zed", stack.topic("contact-events"))
    assert summed(rows, "deadletters") == {letter["reason"]: 1}
    [audit] = await stack.read_model.recent_audit("acme", "no_consent")
    assert (audit["contact_id"], audit["account"]) == ("cid", "acme")
    at = await stack.read_model.projected_at("acme", "ann")
    assert at is not None and abs((datetime.now(UTC) - at).total_seconds()) < 60

    got = samples(await scrape(port))
    assert got['dripstream_events_total{type="contact.created"}'] == 3
    assert got['dripstream_sends_total{channel="sms"}'] == 2
    assert got['dripstream_nonsends_total{reason="no_consent"}'] == 1
    assert got[f'dripstream_dead_letters_total{{reason="{letter["reason"]}"}}'] == 1
    assert got["dripstream_processing_seconds_count"] >= 4  # every input record
    assert got["dripstream_batch_size_sum"] >= 4

    stack.skip(2 * DAY + 60)
    for contact in ("ann", "bob", "cid"):
        await stack.wait_execution("acme", contact, lambda e: e["status"] == "completed")

    async def finished() -> bool:
        counts = await stack.read_model.execution_counts("acme", "welcome")
        return counts["completed"] == 3 and counts["waiting"] == 0

    await eventually(finished, what="3 completed in the index")
    assert await stack.read_model.step_counts("acme", "welcome") == {}
    rows = await stack.read_model.stats("acme", stack.now(), minutes=5)
    assert summed(rows, "sends")["email"] == 3


async def test_lag_per_assigned_partition(stack: Stack) -> None:
    """The worker writes every input partition it is assigned, with its lag, which falls
    to 0 once its input is committed; the lag gauge has the same partitions."""
    port = free_port()
    stack.start_worker({"DRIPSTREAM_METRICS_PORT": str(port)})
    for n in range(20):
        await stack.publisher.send(signup(f"c{n}"))
    inputs = {stack.topic(t) for t in ("contact-events", "routed", "wakeups", "control")}

    async def caught_up() -> list[dict[str, Any]] | None:
        entries = await stack.read_model.lag(datetime.now(UTC))
        complete = {(e["topic"], e["partition"]) for e in entries} == {
            (t, p) for t in inputs for p in range(stack.settings.partitions)}
        return entries if complete and all(e["lag"] == 0 for e in entries) else None

    entries = await eventually(caught_up, timeout=60, what="every partition's lag, at 0")
    assert len({e["worker"] for e in entries}) == 1
    text = await scrape(port)
    lagged = re.findall(r'^dripstream_consumer_lag\{partition="(\d+)",topic="([^"]+)"\} ',
                        text, re.M)
    assert {(t, int(p)) for p, t in lagged} == {(e["topic"], e["partition"]) for e in entries}
