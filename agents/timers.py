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
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson
import zstandard
from faust.types import TP

from streams.compat import SKIPPED, Record, committed_offset, highwater, send_batches
from tables.contacts import ContactState, peek_timers, split_key
from tables.inactivity import earliest
from tables.store import partition_for

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["RESEND_AFTER", "DueIndex", "InputClock", "applied_until", "due_of", "install",
           "state_due"]

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


class InputClock:
    """How far, in time, each partition's contact events have been taken by the agent: the
    newest broker timestamp of the ``contact-events`` and ``routed`` records it has taken,
    or "everything the broker has" once it is level with their high watermarks.

    A wait is fired only once the input up to its due time is applied: a STOP, a purchase
    or a reply that reached the broker before the wait came due is handled first, even when
    the partition has a backlog — after a restart, a rebalance or a burst — which the
    wake-up (a record on another topic) would otherwise overtake. Stream processors call
    this firing timers on the watermark. Under load waits fire as late as the backlog is
    long; a backlog not drained within ``DRIPSTREAM_TIMER_HOLD_S`` of the consumer
    generation's start stops holding waits due more than that long ago."""

    def __init__(self, topics: tuple[str, ...]) -> None:
        self.topics = topics
        self.generation: int | None = None
        self.since = 0.0  # when this worker saw the generation first (POSIX seconds)
        self.stamps: dict[int, float] = {}
        self.positions: dict[tuple[str, int], int] = {}

    def _roll(self, generation: int, now: float) -> None:
        if generation != self.generation:  # a rebalance: committed offsets are the reference
            self.generation, self.since = generation, now
            self.stamps.clear()
            self.positions.clear()

    def took(self, topic: str, partition: int, offset: int, timestamp: float | None,
             generation: int, now: float) -> None:
        """The agent took a record (``timestamp``: its broker timestamp, seconds)."""
        self._roll(generation, now)
        if topic not in self.topics:
            return
        key = (topic, partition)
        if offset + 1 > self.positions.get(key, -1):
            self.positions[key] = offset + 1
        if timestamp is not None and timestamp > self.stamps.get(partition, 0.0):
            self.stamps[partition] = timestamp

    def applied_until(self, partition: int, generation: int, highwaters: dict[str, int | None],
                      committed: dict[str, int | None], now: float, hold: float) -> float:
        """Up to when (POSIX seconds, the broker's clock) the partition's input counts as
        applied: ``now`` once level with every input topic's high watermark; else the
        newest timestamp taken — and, once the generation is ``hold`` seconds old, never
        more than ``hold`` behind ``now`` (an input that never levels, say one ending in
        an upstream transaction's marker, cannot hold a wait forever)."""
        self._roll(generation, now)
        level = True
        for topic in self.topics:
            high = highwaters.get(topic)
            at = max(self.positions.get((topic, partition), 0), committed.get(topic) or 0)
            if high is None or at < high:
                level = False
        if level:
            return now
        floor = now - hold if now - self.since >= hold else 0.0
        return max(self.stamps.get(partition, 0.0), floor)


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

    def pop_due(self, now: datetime, limit: int,
                ready: Callable[[str, float], bool] = lambda key, due: True) -> list[str]:
        """Up to ``limit`` contacts due at ``now`` and ``ready`` (their partition's input
        applied up to their due time); the others due stay, in order (at most ``limit``
        of those are looked at per call, so a lagging partition costs bounded work)."""
        out: list[str] = []
        held: list[tuple[float, str]] = []
        stamp = now.timestamp()
        while (self._heap and len(out) < limit and len(held) < limit
               and self._heap[0][0] <= stamp):
            ts, key = heapq.heappop(self._heap)
            if self._due.get(key) != ts:
                continue  # superseded
            if not ready(key, ts):
                held.append((ts, key))
                continue
            del self._due[key]
            out.append(key)
        for entry in held:
            heapq.heappush(self._heap, entry)
        return out


def applied_until(worker: Worker) -> Callable[[int], float]:
    """For the tick: partition → up to when its input is applied (:class:`InputClock`),
    from the consumer's last fetches (no broker round trip)."""
    app, clock = worker.app, worker.input_clock
    now, hold = time.time(), worker.settings.timer_hold_s
    generation = app.consumer_generation_id
    memo: dict[int, float] = {}

    def reached(tp: TP) -> int | None:
        """The committed offset — or, where only offsets the fetcher passed over
        (transaction markers: a topic written in transactions ends with one) lie between
        what the agent has and the fetch position, that position."""
        at = max(committed_offset(app, tp) or 0, clock.positions.get(tp, 0))
        fetched = app.fetch_position(tp)
        if fetched is not None and fetched > at and SKIPPED.covers(tp, at, fetched):
            return fetched
        return committed_offset(app, tp)

    def until(partition: int) -> float:
        if partition not in memo:
            tps = {topic: TP(topic, partition) for topic in clock.topics}
            memo[partition] = clock.applied_until(
                partition, generation, {t: highwater(app, tp) for t, tp in tps.items()},
                {t: reached(tp) for t, tp in tps.items()}, now, hold)
        return memo[partition]

    return until


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
        applied = applied_until(worker)
        offset = worker.clock.offset()

        def ready(key: str, due: float) -> bool:
            return applied(store.partition(key)) >= due - offset  # the broker's clock

        records: list[Record] = []
        for key in index.pop_due(now, settings.timer_max_per_tick, ready):
            raw = store.get_raw(key)
            due = due_of(worker, key, raw) if raw is not None else None
            if due is None:
                continue
            if due > now:
                index.schedule(key, due)
                continue
            account, contact_id = split_key(key)
            # ``due``: the time it serves, however late it comes (the journey lab matches
            # a recorded wake-up to the due time by it).
            wakeup = orjson.dumps({"account": account, "contact_id": contact_id,
                                   "due": due.isoformat()})
            records.append((names.wakeups, store.partition(key), contact_id.encode(), wakeup,
                            None))
            index.schedule(key, now + RESEND_AFTER)
        await (await send_batches(app, records))()
