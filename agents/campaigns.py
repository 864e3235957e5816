"""Campaigns: when each occurrence fires, and its fan-out, partition by partition.

Every worker runs the scheduler tick (every ``DRIPSTREAM_TIMER_INTERVAL_S``) for the
partitions it owns actively, and every campaign in the registry. Each partition keeps its
own progress per campaign — a record in the contacts table under the reserved key
``~<partition>:campaign:<account>:<id>`` (account ids cannot hold ``~``), so it lives in
that partition's changelog and moves with the partition on a rebalance or a restart:

- ``last``: the newest occurrence this partition started or skipped (never fired again);
- ``running``: the occurrences in progress, each with its counters (sent, deferred,
  capped, suppressed, dropped, enrolled, not_enrolled, remaining) and status;
- ``history``: the partition's last :data:`HISTORY` occurrences.

When the next occurrence after ``last`` is due (:func:`tables.campaigns.due`, with the
campaign's misfire policy), the partition's owner starts it and walks *its own* contacts
of the account in slices of :data:`SLICE_MAX`: each slice is handed to the contact agent
like an input batch (:func:`agents.contacts.compute_slice`) and runs the pure
:func:`tables.campaigns.handle_delivery` per contact — audience, send gate, workflow —
so a slice's sends, contact states (with the occurrence's mark) and the progress record
are written by the same batch cycle as everything else, in order with the contact's
events. No worker ever holds a whole audience; fan-out scales with partitions.

Once per contact: a slice redone after a crash finds the mark on the contacts it reached
(nothing happens twice) or, if the crash came between the sends and the state write,
emits the same sends with the same ids. A partition's fan-out that stops (crash,
rebalance, pause) is started again by the tick from the stored progress and walks the
partition again, skipping the contacts already marked. Contact-local occurrences run in
waves: each walk delivers to the contacts whose local time has come and notes the
earliest time still to come; the fan-out sleeps until then (one timer per partition and
campaign, not per contact).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson

from agents.contacts import EXIT_FATAL
from agents.timers import applied_until
from streams.definitions import parse_duration
from tables.campaigns import (
    COUNTERS,
    Delivery,
    Throttle,
    campaign_workflow,
    campaign_zone,
    due,
    next_after,
    starts_at,
)
from tables.contacts import split_key
from tables.schedule import Occurrence, is_occurrence, parse_local

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["COUNTERS", "HISTORY", "SLICE_MAX", "Scheduler", "Slice", "install",
           "progress_key"]

log = logging.getLogger(__name__)

#: Contacts per slice (one batch cycle of the contact agent).
SLICE_MAX = 500
#: Finished occurrences a partition's progress keeps.
HISTORY = 10
#: What the throttle counts: a message that went out, or an enrolment.
_PACED = ("sent", "enrolled")


def progress_key(partition: int, account: str, campaign_id: str) -> str:
    return f"~{partition}:campaign:{account}:{campaign_id}"


@dataclass(slots=True)
class SliceRecord:
    """What a dead letter says about a delivery that failed (there is no input record):
    made per contact, its bytes only when a dead letter needs them."""

    contact: str
    partition: int
    campaign_id: str | None
    occurrence: str | None
    topic: str = "campaign"
    offset: int = -1
    headers: Any = None

    @property
    def key(self) -> bytes:
        return split_key(self.contact)[1].encode()

    @property
    def value(self) -> bytes:
        return orjson.dumps({"campaign_id": self.campaign_id, "occurrence": self.occurrence,
                             "contact": self.contact})


@dataclass(eq=False)
class Slice:
    """Part of one partition's fan-out, run by the contact agent as one batch."""

    partition: int
    progress_key: str
    #: The partition's progress record: the agent updates its counters, then stores it.
    progress: dict[str, Any]
    generation: int
    #: The occurrence whose counters the deliveries add to (None: a progress write only).
    occurrence: str | None = None
    delivery: Delivery | None = None
    keys: list[str] = field(default_factory=list)
    #: At most this many sends (enrolments) in this slice: the throttle's allowance.
    budget: int | None = None
    #: Audit records to emit with it (skipped occurrences).
    audit: list[dict[str, Any]] = field(default_factory=list)
    # -- filled in by the agent ---------------------------------------------------------
    consumed: int = 0
    aborted: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    #: Contacts whose local time has still to come, and the earliest of those times.
    later: int = 0
    next_wave: datetime | None = None
    #: Set once the agent has run the deliveries (the fields above are final), and once
    #: their effects and states are durable.
    computed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, key: str) -> SliceRecord:
        delivery = self.delivery
        if delivery is None:
            return SliceRecord(key, self.partition, None, None)
        return SliceRecord(key, self.partition, delivery.campaign["id"], delivery.occurrence)

    @property
    def paced(self) -> int:
        """Sends (enrolments) so far: what the throttle counts."""
        return sum(self.counts[c] for c in _PACED)

    def tally(self, outcome: str, at: datetime | None) -> None:
        if outcome == "later":
            assert at is not None
            self.later += 1
            if self.next_wave is None or at < self.next_wave:
                self.next_wave = at
        elif outcome in COUNTERS:
            self.counts[outcome] += 1
            entry = self.progress["running"][self.occurrence]
            entry[outcome] = entry.get(outcome, 0) + 1


def _new_progress(account: str, campaign_id: str, partition: int) -> dict[str, Any]:
    return {"account": account, "campaign_id": campaign_id, "partition": partition,
            "last": None, "running": {}, "history": []}


def _occurrence(occ: Occurrence, campaign: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {"id": occ.id, "at": occ.at.isoformat(), "version": campaign["version"],
            "status": "running", "started_at": now.isoformat(), "ended_at": None,
            **dict.fromkeys(COUNTERS, 0), "remaining": 0, "next_wave": None}


def _close(progress: dict[str, Any], occurrence: str, status: str, now: datetime) -> None:
    entry = progress["running"].pop(occurrence)
    entry.update({"status": status, "ended_at": now.isoformat(), "next_wave": None})
    progress["history"] = [*progress["history"], entry][-HISTORY:]


class Scheduler:
    """The tick, and the tasks it starts: one per partition, campaign and occurrence in
    progress. Occurrences of a campaign may overlap (a contact-local one lasts 26 hours;
    a throttled one as long as its audience takes): each runs on its own. The tasks of a
    partition's campaign share its progress record in memory while any of them runs."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        #: (partition, account, campaign id, occurrence) → its task.
        self.tasks: dict[tuple[int, str, str, str], asyncio.Task[None]] = {}
        #: (partition, account, campaign id) → its progress record, while tasks use it.
        self.shared: dict[tuple[int, str, str], dict[str, Any]] = {}
        #: (account, id, version, last) → the next occurrence (None: no more).
        self._next: dict[tuple[str, str, int, str | None], Occurrence | None] = {}

    # -- the tick ------------------------------------------------------------------------
    def actives(self) -> set[int]:
        topic = self.w.names.events
        return {tp.partition for tp in self.w.app.assignor.assigned_actives()
                if tp.topic == topic}

    async def tick(self) -> None:
        app, registry = self.w.app, self.w.registry
        if app.rebalancing or app.in_recovery or not registry.ready.is_set():
            return
        actives = self.actives()
        for ident, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[ident]
                if not task.cancelled() and task.exception() is not None:
                    log.critical("campaign fan-out %s failed; exiting so it is redone",
                                 ident, exc_info=task.exception())
                    os._exit(EXIT_FATAL)
            elif ident[0] not in actives:
                task.cancel()
                del self.tasks[ident]
        busy = {ident[:3] for ident in self.tasks}
        for shared in [s for s in self.shared if s not in busy]:
            del self.shared[shared]  # the store has it all: read it afresh next time
        if len(self._next) > 10_000:
            self._next.clear()
        now = self.w.clock.now()
        applied, offset = applied_until(self.w), self.w.clock.offset()

        def input_now(partition: int) -> datetime:  # on the workers' clock
            return datetime.fromtimestamp(applied(partition) + offset, UTC)

        for campaign in registry.campaigns():
            for partition in sorted(actives):
                for occurrence, work in self.plan(partition, campaign, now,
                                                  input_now(partition)):
                    ident = (partition, campaign["account"], campaign["id"], occurrence)
                    self.tasks[ident] = asyncio.ensure_future(work)

    def zone(self, campaign: dict[str, Any]) -> ZoneInfo:
        return campaign_zone(campaign, self.w.registry.policy(campaign["account"]))

    def progress(self, partition: int, account: str, campaign_id: str) -> dict[str, Any]:
        ident = (partition, account, campaign_id)
        if (progress := self.shared.get(ident)) is None:
            stored = self.w.store.get(progress_key(partition, account, campaign_id))
            progress = dict(stored) if stored else _new_progress(account, campaign_id,
                                                                 partition)
            self.shared[ident] = progress
        return progress

    def plan(self, partition: int, campaign: dict[str, Any], now: datetime,
             input_now: datetime | None = None) -> list[tuple[str, Any]]:
        """What to start for this partition and campaign now: (occurrence, coroutine).
        ``input_now``: up to when the partition's input is applied (agents/timers.py
        InputClock) — an occurrence starts once what reached the broker before its
        instant (a STOP in a backlog) is applied."""
        registry = self.w.registry
        account, cid = campaign["account"], campaign["id"]
        progress = self.progress(partition, account, cid)
        status = registry.campaign_status(account, cid)
        work: list[tuple[str, Any]] = []
        for occurrence, entry in list(progress["running"].items()):
            if (partition, account, cid, occurrence) in self.tasks:
                continue
            if status == "cancelled" or not campaign["active"]:
                _close(progress, occurrence, "cancelled" if status == "cancelled"
                       else "deactivated", now)
            elif not is_occurrence(campaign["schedule"], parse_local(occurrence)):
                _close(progress, occurrence, "superseded", now)  # never at the old time
            elif status == "paused":
                if entry["status"] == "paused":
                    continue
                entry["status"] = "paused"
            else:
                work.append((occurrence, self.fanout(partition, campaign, progress,
                                                     occurrence)))
                continue
            work.append((occurrence, self.write(partition, progress)))
        if status != "running" or not campaign["active"]:
            return work
        zone = self.zone(campaign)
        origin = registry.published_at(campaign)
        ident = (account, cid, campaign["version"], progress["last"])
        if ident not in self._next:
            self._next[ident] = next_after(campaign, zone, origin, progress["last"])
        first = self._next[ident]
        if first is None:
            return work
        grace = parse_duration(campaign["delivery"]["misfire_grace"])
        plan = due(campaign, zone, origin, first,
                   now if input_now is None else min(now, input_now), grace)
        if plan is None:
            return work
        audit = []
        for missed in plan.skipped:
            log.warning("campaign %s:%s occurrence %s missed (partition %d): skipped",
                        account, cid, missed.id, partition)
            skipped = {**_occurrence(missed, campaign, now), "status": "skipped",
                       "ended_at": now.isoformat()}
            progress["history"] = [*progress["history"], skipped][-HISTORY:]
            audit.append({"account": account, "contact_id": "", "reason": "campaign_misfire",
                          "at": now.isoformat(), "campaign_id": cid, "occurrence": missed.id,
                          "partition": partition, "action": "skip"})
        newest = plan.occurrence or plan.skipped[-1]
        progress["last"] = newest.id
        if plan.occurrence is None:
            work.append((newest.id, self.write(partition, progress, audit)))
            return work
        entry = progress["running"][newest.id] = _occurrence(newest, campaign, now)
        if plan.skipped:
            entry["misfired"] = [o.id for o in plan.skipped]
        log.info("campaign %s:%s occurrence %s starts on partition %d", account, cid,
                 newest.id, partition)
        work.append((newest.id, self.fanout(partition, campaign, progress, newest.id, audit)))
        return work

    # -- the fan-out ---------------------------------------------------------------------
    async def submit(self, work: Slice, *, durable: bool = True) -> Slice:
        """Hand ``work`` to the contact agent; return once it has run it (``durable``:
        once its effects and states are written, too)."""
        await self.w.batches.put(work)  # type: ignore[arg-type]  # the agent runs it
        await (work.done if durable else work.computed).wait()
        return work

    async def write(self, partition: int, progress: dict[str, Any],
                    audit: list[dict[str, Any]] | None = None) -> None:
        key = progress_key(partition, progress["account"], progress["campaign_id"])
        await self.submit(Slice(partition, key, progress, self.w.app.consumer_generation_id,
                                audit=audit or []))

    def _stopped(self, campaign: dict[str, Any]) -> bool:
        """Paused, cancelled or changed since the fan-out began: stop after this slice
        (the tick decides what comes next, from the progress)."""
        registry = self.w.registry
        newest = registry.campaign(campaign["account"], campaign["id"])
        return (registry.campaign_status(campaign["account"], campaign["id"]) != "running"
                or newest is None or newest["version"] != campaign["version"])

    async def fanout(self, partition: int, campaign: dict[str, Any],
                     progress: dict[str, Any], occurrence: str,
                     audit: list[dict[str, Any]] | None = None) -> None:
        w = self.w
        account = campaign["account"]
        key = progress_key(partition, account, campaign["id"])
        entry = progress["running"][occurrence]
        entry.update({"status": "running", "version": campaign["version"]})
        workflow = campaign_workflow(w.registry, campaign)
        if workflow is None:
            log.error("campaign %s:%s: workflow %r is not defined or not active; the "
                      "occurrence fails", account, campaign["id"], campaign["workflow"])
            _close(progress, occurrence, "failed", w.clock.now())
            await self.write(partition, progress, audit)
            return
        zone = self.zone(campaign)
        delivery = Delivery(campaign, occurrence, parse_local(occurrence),
                            datetime.fromisoformat(entry["at"]), workflow, zone.key)
        rate = campaign["delivery"]["throttle_per_minute"]
        # Slots from the occurrence's start: the same grid on every worker, so partitions
        # owned by different workers interleave without talking to each other.
        anchor = starts_at(campaign, Occurrence(occurrence, delivery.local, delivery.at, 0))
        throttle = (Throttle(rate, partition, w.settings.partitions, anchor.timestamp())
                    if rate else None)
        pending_audit = list(audit or [])
        # The next slices are computed while the ones before are being written (the
        # agent overlaps batches the same way, and bounds how many are unfinished).
        unfinished: deque[Slice] = deque()
        while True:
            keys = [k for k, _ in w.store.items({partition}, f"{account}:")]
            position, later, wave = 0, 0, None
            while True:
                if self._stopped(campaign):
                    return
                budget = None
                if throttle is not None:
                    budget = throttle.allowed(w.clock.now().timestamp())
                    if budget == 0:
                        wait = throttle.next_slot() - w.clock.now().timestamp()
                        await asyncio.sleep(min(max(wait, 0.001), 1.0))
                        continue
                work = await self.submit(Slice(
                    partition, key, progress, w.app.consumer_generation_id, occurrence,
                    delivery, keys[position:position + SLICE_MAX], budget, pending_audit),
                    durable=False)
                unfinished.append(work)
                if len(unfinished) > 2:
                    await unfinished.popleft().done.wait()
                pending_audit = []
                if work.aborted:
                    return  # the partition moved: its new owner goes on from the progress
                position += work.consumed
                later += work.later
                if work.next_wave is not None and (wave is None or work.next_wave < wave):
                    wave = work.next_wave
                if throttle is not None:
                    throttle.use(work.paced)
                if position >= len(keys):
                    break
            while unfinished:
                await unfinished.popleft().done.wait()
            now = w.clock.now()
            if wave is None:
                entry["remaining"] = 0
                _close(progress, occurrence, "completed", now)
                await self.write(partition, progress)
                log.info("campaign %s:%s occurrence %s completed on partition %d", account,
                         campaign["id"], occurrence, partition)
                return
            entry.update({"remaining": later, "next_wave": wave.isoformat()})
            await self.write(partition, progress)
            while w.clock.now() < wave:  # the next zone's local time
                if self._stopped(campaign):
                    return
                await asyncio.sleep(min((wave - w.clock.now()).total_seconds(), 1.0))


def install(worker: Worker) -> Scheduler:
    scheduler = Scheduler(worker)

    @worker.app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_fanouts(app: Any, **kwargs: Any) -> None:
        """No new slices once the worker stops (the stored progress says where to go on)."""
        for task in scheduler.tasks.values():
            task.cancel()

    @worker.app.timer(interval=worker.settings.timer_interval_s)  # type: ignore[untyped-decorator]
    async def schedule_campaigns() -> None:
        await scheduler.tick()

    return scheduler
