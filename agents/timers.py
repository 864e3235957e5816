"""Durable waits: the timer tick that turns due waits into wake-up records.

The source of truth for every wait is the execution inside the contact's table value
(``due_at``; the contact's earliest is ``next_due``), so waits survive restarts,
redeploys and rebalances with the table. Each worker keeps an in-memory index of due
times for the partitions it owns *actively*, built by scanning the table when a partition
is assigned and updated by the contact agent after every write. Every
``DRIPSTREAM_TIMER_INTERVAL_S`` the tick sends a wake-up for each contact whose next due
time has come to ``<prefix>wakeups`` on the contact's own partition — at most
``DRIPSTREAM_TIMER_MAX_PER_TICK`` per tick, so a backlog after an outage is caught up at
a bounded rate. The contact agent then fires what is due (never early, and a repeated
wake-up finds nothing left to do).

Why not fire from the timer directly: Faust only lets an agent, inside stream iteration,
change a table, and only the partition owner may. The tick runs on every worker
(``@app.timer``), but each only looks at its own active partitions — a standby copy never
fires.
"""

from __future__ import annotations

import heapq
import logging
from datetime import datetime, timedelta
from typing import Any

import orjson

from streams.app import app, clock, settings
from streams.topics import topic_name
from tables.state import contacts

__all__ = ["DueIndex", "due_index", "fire_due_waits"]

log = logging.getLogger(__name__)

#: A wake-up not acted on within this long (lost, or its partition moved) is sent again.
RESEND_AFTER = timedelta(seconds=30)


class DueIndex:
    """Min-heap of (due time, contact key, partition); stale entries are skipped on pop."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str, int]] = []
        self._due: dict[str, float] = {}
        self.partitions: set[int] = set()

    def schedule(self, key: str, partition: int, due: str | datetime | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        ts = (datetime.fromisoformat(due) if isinstance(due, str) else due).timestamp()
        self._due[key] = ts
        heapq.heappush(self._heap, (ts, key, partition))

    def rebuild(self, partitions: set[int], items: Any) -> int:
        count = 0
        for key, state in items:
            if state.get("partition") in partitions and state.get("next_due"):
                self.schedule(key, state["partition"], state["next_due"])
                count += 1
        return count

    def pop_due(self, now: datetime, limit: int) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now.timestamp():
            ts, key, partition = heapq.heappop(self._heap)
            if self._due.get(key) != ts or partition not in self.partitions:
                continue  # superseded, or the partition is no longer ours
            del self._due[key]
            out.append((key, partition))
        return out


due_index = DueIndex()
_EVENTS = topic_name(settings, "contact-events")
_WAKEUPS = topic_name(settings, "wakeups")


@app.timer(interval=settings.timer_interval_s)  # type: ignore[untyped-decorator]
async def fire_due_waits() -> None:
    if app.rebalancing or app.in_recovery:
        return
    actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == _EVENTS}
    if new := actives - due_index.partitions:
        due_index.partitions |= new
        count = due_index.rebuild(new, list(contacts.items()))
        log.info("timer index: partitions %s assigned, %d contacts with waits", sorted(new),
                 count)
    due_index.partitions &= actives
    now = clock.now()
    for key, partition in due_index.pop_due(now, settings.timer_max_per_tick):
        state = contacts.get(key)
        if not state or not state.get("next_due"):
            continue
        if datetime.fromisoformat(state["next_due"]) > now:
            due_index.schedule(key, partition, state["next_due"])
            continue
        wakeup = {"account": state["account"], "contact_id": state["contact_id"]}
        await app.producer.send(_WAKEUPS, state["contact_id"].encode(), orjson.dumps(wakeup),
                                partition, None, None)
        due_index.schedule(key, partition, now + RESEND_AFTER)
