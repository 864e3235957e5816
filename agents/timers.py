"""Durable waits: the timer tick that turns due waits into wake-up records.

The source of truth for every wait is the execution inside the contact's table value
(``due_at``; the contact's earliest is ``next_due``), so waits survive restarts,
redeploys and rebalances with the table. A contact's inactivity period
(:mod:`tables.inactivity`) is one more due time, derived from the same value and the
account's current thresholds: a contact holds **one** timer, the earlier of the two
(:func:`due_of`). Each worker keeps an in-memory :class:`DueIndex`
of due times for the partitions it owns *actively*, built by scanning the table when a
partition is assigned and updated by the contact agent after every batch; when an
account's inactivity thresholds change, its contacts on the worker's partitions are
looked at again (in memory, nothing is written). Every
``DRIPSTREAM_TIMER_INTERVAL_S`` the tick sends a wake-up for each contact whose next due
time has come to ``<prefix>wakeups`` on the contact's own partition — at most
``DRIPSTREAM_TIMER_MAX_PER_TICK`` per tick, so a backlog after an outage is caught up at
a bounded rate. The contact agent then fires what is due (never early, and a repeated
wake-up finds nothing left to do).

Why not fire from the timer directly: only the agent, in input order, changes a contact.
The tick runs on every worker (``@app.timer``), but each only looks at its own active
partitions — a standby copy never fires.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson
import zstandard

from streams.compat import Record, send_batches
from tables.contacts import ContactState, peek_timers, split_key
from tables.inactivity import earliest
from tables.store import partition_for

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["RESEND_AFTER", "DueIndex", "due_of", "install", "state_due"]

log = logging.getLogger(__name__)

#: A wake-up not acted on within this long (lost, or its partition moved) is sent again.
RESEND_AFTER = timedelta(seconds=30)


def due_of(worker: Worker, key: str, raw: bytes) -> datetime | None:
    """The contact's timer from its encoded state (only its first fields are read)."""
    next_due, record = peek_timers(raw)
    return earliest(next_due, record,
                    worker.registry.inactivity_thresholds(split_key(key)[0]))


def state_due(worker: Worker, key: str, state: ContactState) -> datetime | None:
    """The contact's timer from its decoded state."""
    record = state.get("inactivity")
    return earliest(state["next_due"],
                    None if record is None else (record["since"], record["fired"]),
                    worker.registry.inactivity_thresholds(split_key(key)[0]))


class DueIndex:
    """Min-heap of (due time, contact key); an entry whose time is no longer the key's is
    stale and skipped on pop. The heap is rebuilt when stale entries outnumber live ones,
    so it holds at most about two entries per waiting contact, however often they move."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        #: Partitions this worker owns actively (the tick keeps it current).
        self.partitions: set[int] = set()
        #: The consumer generation :attr:`partitions` were owned under.
        self.generation: int | None = None

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, key: str, due: str | datetime | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        ts = (datetime.fromisoformat(due) if isinstance(due, str) else due).timestamp()
        if self._due.get(key) == ts:
            return
        self._due[key] = ts
        heapq.heappush(self._heap, (ts, key))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(t, k) for k, t in self._due.items()]
            heapq.heapify(self._heap)

    def assigned(self, actives: set[int], generation: int, partitions: int) -> set[int]:
        """Take ``actives`` as the partitions owned under consumer ``generation``; the
        ones to (re)read from the table. After any rebalance that is all of them: a
        partition owned before and again now may have been another worker's in between
        (the ticks skip rebalances, so a lost-and-regained partition looks unchanged),
        and that worker changed its contacts' timers. Within a generation, only the newly
        owned. Contacts of partitions no longer owned are forgotten."""
        new = set(actives) if generation != self.generation else actives - self.partitions
        if self.partitions - actives:
            self.drop_partitions(actives, partitions)
        self.partitions = set(actives)
        self.generation = generation
        return new

    def drop_partitions(self, keep: set[int], partitions: int) -> None:
        """Forget contacts of partitions no longer owned."""
        for key in [k for k in self._due if partition_for(split_key(k)[1], partitions)
                    not in keep]:
            del self._due[key]

    def pop_due(self, now: datetime, limit: int) -> list[str]:
        out: list[str] = []
        stamp = now.timestamp()
        while self._heap and len(out) < limit and self._heap[0][0] <= stamp:
            ts, key = heapq.heappop(self._heap)
            if self._due.get(key) != ts:
                continue  # superseded
            del self._due[key]
            out.append(key)
        return out


def install(worker: Worker) -> None:
    app, settings, names, store = worker.app, worker.settings, worker.names, worker.store
    index = worker.due_index

    async def rebuild(partitions: set[int], prefix: str = "") -> int:
        count = 0
        for n, (key, value) in enumerate(store.items(partitions, prefix)):
            if key[0] == "~":
                continue  # a partition's campaign progress, not a contact
            try:
                due = due_of(worker, key, value)
            except (ValueError, TypeError, AttributeError, zstandard.ZstdError) as exc:
                log.error("timer index: unreadable state for %r skipped: %r", key, exc)
                continue
            if due is not None:
                index.schedule(key, due)
                count += 1
            if n % 5000 == 4999:
                await asyncio.sleep(0)  # a large table: let heartbeats and fetches run
        return count

    @app.timer(interval=settings.timer_interval_s)  # type: ignore[untyped-decorator]
    async def fire_due_waits() -> None:
        if app.rebalancing or app.in_recovery or not worker.registry.ready.is_set():
            return
        actives = {tp.partition for tp in app.assignor.assigned_actives()
                   if tp.topic == names.events}
        if new := index.assigned(actives, app.consumer_generation_id, settings.partitions):
            count = await rebuild(new)
            log.info("timer index: partitions %s assigned, %d contacts with timers",
                     sorted(new), count)
        for account in sorted(worker.registry.threshold_changes()):
            # A new inactivity threshold may already have come for some of them.
            count = await rebuild(index.partitions, f"{account}:")
            log.info("timer index: %s's inactivity thresholds are now %s; %d contacts "
                     "with timers", account, worker.registry.inactivity_thresholds(account),
                     count)
        now = worker.clock.now()
        records: list[Record] = []
        for key in index.pop_due(now, settings.timer_max_per_tick):
            raw = store.get_raw(key)
            due = due_of(worker, key, raw) if raw is not None else None
            if due is None:
                continue
            if due > now:
                index.schedule(key, due)
                continue
            account, contact_id = split_key(key)
            wakeup = orjson.dumps({"account": account, "contact_id": contact_id})
            records.append((names.wakeups, store.partition(key), contact_id.encode(), wakeup,
                            None))
            index.schedule(key, now + RESEND_AFTER)
        await (await send_batches(app, records))()
