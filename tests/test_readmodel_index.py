"""The read model's execution index against a real Redis: the Lua diff, pages, counts."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from tables.activity import Activity, dead_letter_entry
from tables.contacts import ContactState
from tables.readmodel import STATUSES, ReadModel

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def model(redis_url: str) -> AsyncIterator[ReadModel]:
    redis = Redis.from_url(redis_url)
    prefix = f"u{uuid.uuid4().hex[:10]}."
    try:
        yield ReadModel(redis, prefix)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.unlink(*keys)
        await redis.aclose()


def execution(workflow: str, eid: str, status: str, step: str,
              started: datetime = T0) -> dict[str, Any]:
    return {"id": eid, "workflow_id": workflow, "status": status, "step": step,
            "started_at": started.isoformat()}


async def put(model: ReadModel, contact: str, revision: int, *executions: dict[str, Any],
              account: str = "acme") -> int:
    key = f"{account}:{contact}"
    state = cast(ContactState, {"executions": {e["id"]: e for e in executions}})
    return await model.put_many([(key, revision, b"{}")], states={key: state})


async def everything(model: ReadModel, workflow: str = "w", status: str | None = None,
                     limit: int = 2) -> list[dict[str, Any]]:
    """Every page, followed by cursor."""
    items, cursor = await model.list_executions("acme", workflow, status, limit=limit)
    while cursor is not None:
        more, cursor = await model.list_executions("acme", workflow, status, cursor, limit)
        items += more
    return items


async def test_add_status_and_step_changes_move_the_entry(model: ReadModel) -> None:
    """An execution appears at its status and step, and moves when either changes."""
    await put(model, "c1", 1, execution("w", "w/e1", "running", "hello"))
    assert (await model.execution_counts("acme", "w"))["running"] == 1
    assert await model.step_counts("acme", "w") == {"hello": 1}
    assert await model.workflow_ids("acme") == {"w"}

    await put(model, "c1", 2, execution("w", "w/e1", "waiting", "pause"))
    counts = await model.execution_counts("acme", "w")
    assert counts == {s: (1 if s == "waiting" else 0) for s in STATUSES}
    assert await model.step_counts("acme", "w") == {"pause": 1}
    items, cursor = await model.list_executions("acme", "w", "waiting")
    assert cursor is None
    assert items == [{"contact_id": "c1", "execution_id": "w/e1", "workflow_id": "w",
                      "status": "waiting", "step": "pause", "started_at": T0.isoformat()}]
    assert await model.list_executions("acme", "w", "running") == ([], None)

    await put(model, "c1", 3, execution("w", "w/e1", "completed", "nudge"))
    assert (await model.execution_counts("acme", "w"))["completed"] == 1
    assert await model.step_counts("acme", "w") == {}  # finished: at no step
    assert [i["status"] for i in await everything(model)] == ["completed"]


async def test_removed_from_the_state_leaves_the_index(model: ReadModel) -> None:
    """An execution pruned from the contact's state is gone from every index key."""
    await put(model, "c1", 1, execution("w", "w/e1", "completed", "s"),
              execution("w", "w/e2", "waiting", "pause"), execution("v", "v/e3", "running", "a"))
    await put(model, "c1", 2, execution("w", "w/e2", "waiting", "pause"))
    assert await model.execution_counts("acme", "w") == {
        s: (1 if s == "waiting" else 0) for s in STATUSES}
    assert await model.workflow_ids("acme") == {"w"}
    assert await model.step_counts("acme", "v") == {}
    assert await everything(model, "v") == []
    await put(model, "c1", 3)
    assert await model.workflow_ids("acme") == set()
    assert await model.redis.keys(f"{model.prefix}exec*") == []


async def test_older_or_same_revision_is_ignored(model: ReadModel) -> None:
    """A late write of an older state (a worker that lost the partition) changes nothing,
    and a repeat of the same one is idempotent."""
    assert await put(model, "c1", 5, execution("w", "w/e1", "waiting", "pause")) == 1
    assert await put(model, "c1", 4, execution("w", "w/e1", "running", "hello")) == 0
    assert await put(model, "c1", 5, execution("w", "w/e1", "waiting", "pause")) == 0
    assert (await model.execution_counts("acme", "w"))["waiting"] == 1
    assert (await model.execution_counts("acme", "w"))["running"] == 0
    assert await model.step_counts("acme", "w") == {"pause": 1}


async def test_pages_newest_first_and_stable_under_inserts(model: ReadModel) -> None:
    """Pages follow each other without gaps or repeats, newest first, ties by member, and
    an execution inserted (newer) or moved between pages does not shift the next page."""
    for n in range(7):  # c0..c2 share one start time (one batch), the rest a minute apart
        started = T0 + timedelta(minutes=max(n - 2, 0))
        await put(model, f"c{n}", 1, execution("w", f"w/e{n}", "waiting", "pause", started))
    first, cursor = await model.list_executions("acme", "w", limit=3)
    assert [i["contact_id"] for i in first] == ["c6", "c5", "c4"]
    await put(model, "new", 1, execution("w", "w/new", "waiting", "pause",
                                         T0 + timedelta(hours=1)))
    await put(model, "c4", 2, execution("w", "w/e4", "completed", "pause",
                                        T0 + timedelta(minutes=2)))
    second, cursor = await model.list_executions("acme", "w", cursor=cursor, limit=3)
    assert [i["contact_id"] for i in second] == ["c3", "c2", "c1"]
    third, cursor = await model.list_executions("acme", "w", cursor=cursor, limit=3)
    assert [i["contact_id"] for i in third] == ["c0"]
    assert cursor is None
    # The cursor's own item gone from the set (moved to another status): still resumes.
    waiting, cursor = await model.list_executions("acme", "w", "waiting", limit=2)
    assert [i["contact_id"] for i in waiting] == ["new", "c6"]
    await put(model, "c6", 2, execution("w", "w/e6", "cancelled", "pause",
                                        T0 + timedelta(minutes=4)))
    rest, _ = await model.list_executions("acme", "w", "waiting", cursor, limit=10)
    assert [i["contact_id"] for i in rest] == ["c5", "c3", "c2", "c1", "c0"]
    assert len(await everything(model)) == 8


async def test_bad_status_or_cursor_is_refused(model: ReadModel) -> None:
    with pytest.raises(ValueError, match="unknown status"):
        await model.list_executions("acme", "w", "sleeping")
    with pytest.raises(ValueError, match="invalid cursor"):
        await model.list_executions("acme", "w", cursor="not-a-cursor")


async def test_stats_and_recent_lists(model: ReadModel) -> None:
    """A batch's activity lands in its minute (zero-filled around it) and the recent lists,
    newest first, filtered by reason."""
    now = T0 + timedelta(seconds=30)
    activity = Activity(now)
    activity.event("acme", "contact.created")
    activity.event("acme", "contact.created")
    activity.send("acme", "sms")
    activity.audited({"account": "acme", "contact_id": "c1", "reason": "no_consent",
                      "at": now.isoformat()})
    activity.audited({"account": "acme", "contact_id": "c2", "reason": "loop_guard",
                      "at": now.isoformat()})
    activity.dead_letter(dead_letter_entry(None, "invalid_json", "bad", "t", 1, 7, b"k",
                                           b"x" * 5000, now))
    await model.put_many([], activity=activity)
    rows = await model.stats("acme", now + timedelta(minutes=1), minutes=3)
    assert [r["minute"] for r in rows] == [
        (T0 - timedelta(minutes=1)).isoformat(), T0.isoformat(),
        (T0 + timedelta(minutes=1)).isoformat()]
    assert rows[1] == {"minute": T0.isoformat(), "events": {"contact.created": 2},
                       "sends": {"sms": 1}, "nonsends": {"no_consent": 1}, "deadletters": {}}
    assert rows[0]["events"] == rows[2]["events"] == {}
    assert (await model.stats("_", now))[-1]["deadletters"] == {"invalid_json": 1}
    assert [r["reason"] for r in await model.recent_audit("acme")] == [
        "loop_guard", "no_consent"]
    assert [r["contact_id"] for r in await model.recent_audit("acme", "no_consent")] == ["c1"]
    [letter] = await model.recent_dead_letters("_")
    assert (letter["reason"], letter["offset"], letter["size"], letter["truncated"]) == (
        "invalid_json", 7, 5000, True)
    assert base64.b64decode(letter["value"]) == b"x" * 4096  # the first 4 KiB
    ttl = await model.redis.ttl(model.stats_key("acme", int(T0.timestamp())))
    assert 0 < ttl <= 2 * 3600


async def test_lag_drops_old_entries_and_projected_at(model: ReadModel) -> None:
    now = datetime.now(UTC)
    await model.put_lag([
        {"topic": "t", "partition": 1, "lag": 3, "worker": "w1", "at": now.isoformat()},
        {"topic": "t", "partition": 0, "lag": 0, "worker": "w1",
         "at": (now - timedelta(minutes=5)).isoformat()}])
    assert [(e["partition"], e["lag"]) for e in await model.lag(now)] == [(1, 3)]
    await model.put_many([("acme:c1", 1, b"{}")],
                         states={"acme:c1": cast(ContactState, {"executions": {}})},
                         projected_ms=int(now.timestamp() * 1000))
    at = await model.projected_at("acme", "c1")
    assert at is not None and abs((at - now).total_seconds()) < 0.01
    assert await model.projected_at("acme", "nobody") is None
