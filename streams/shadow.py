"""Shadow versions on the live stream (``docs/simulation.md``, Shadow versions).

A workflow version published with ``"shadow": true`` is not run by the workers (the
registry's live version is the newest that is not a shadow). :class:`ShadowRunner`
(``dripstream shadow run``) runs it beside the live one: it follows the recorded log as
it grows — the input topics and the journal that says when and with which answers the
worker decided each record — and feeds it to the journey lab's simulator
(:class:`tables.simulation.Simulator`) with the shadow versions as candidates from their
publication on. What the simulation would have sent and not sent goes to
``<prefix>shadow``; nothing else is written, so a shadow never sends, never takes a cap
and never changes a state the live versions read.

It decides :attr:`Settings.shadow_lag_s` behind the live clock: a wake-up the simulation
needs is added only when no recorded one came within that lag after its due time, and a
record decided in a batch whose journal entry is late is still taken in order. Its
watermark goes to the topic too (``progress`` records): :func:`shadow_report` compares
live and shadow only up to where every partition got.

Started, it rebuilds the accounts' contacts from the start of the retained log (as
``dripstream simulate`` does) and goes on from the end; a change of the shadow versions
(one published, promoted or withdrawn) starts it again the same way. What it published
before is not published again: the topic is read at the start, and a send (by message
id) or a non-send (by its bytes) already on it is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.clock import Clock
from streams.history import Entries, Reader, parse_time
from streams.settings import Settings
from streams.topics import TopicNames
from tables.journal import Entry
from tables.preferences import Links
from tables.registry import Registry, Suppressions
from tables.simulation import Candidates, Recorded, Result, Simulator, lines, summary

__all__ = ["ShadowReport", "ShadowRunner", "shadow_report"]

log = logging.getLogger(__name__)

#: The simulation's end: a shadow runs until its versions change.
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
#: How often a partition's watermark is written when it moved.
PROGRESS_EVERY_S = 5.0
#: How long a record waits for the journal entry of its batch (at least the lag): an
#: exactly-once batch's entry is seen when its transaction commits.
UNJOURNALLED_S = 60.0
#: Cycles whose journal entries are kept to match records read later.
RECENT_CYCLES = 5
#: How often the simulations forget bookkeeping they will not look at again (s).
FORGET_EVERY_S = 60.0


def _identity(shadows: list[dict[str, Any]]) -> tuple[tuple[str, str, int], ...]:
    return tuple((b["account"], b["id"], b["version"]) for b in shadows)


@dataclass
class _Pending:
    """An input record read, not decided yet: its journal entry may still come."""

    kind: str
    record: Any
    arrived: float = field(default_factory=time.monotonic)


class ShadowRunner:
    """Every shadow version of every account, on every partition, in this process."""

    def __init__(self, settings: Settings, clock: Clock | None = None, *,
                 interval_s: float = 1.0) -> None:
        self.settings = settings
        self.clock = clock or Clock(settings.clock_offset_file)
        self.interval_s = interval_s
        self.lag = timedelta(seconds=settings.shadow_lag_s)
        self.names = TopicNames.of(settings)
        self.registry = Registry(quiet=True)
        self.suppressions = Suppressions()
        #: Sends and non-sends published, in all (for logs and tests).
        self.published = 0

    async def run(self) -> None:
        """Follow the definitions and run the shadows they hold, for ever."""
        followers = [
            asyncio.ensure_future(self.registry.follow(self.settings, self.names.definitions)),
            asyncio.ensure_future(self.suppressions.follow(self.settings,
                                                           self.names.suppressions))]
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers,
                                    **self.settings.kafka_security())
        try:
            await producer.start()
            await self.registry.ready.wait()
            await self.suppressions.ready.wait()
            while True:
                for task in followers:
                    if task.done():
                        task.result()  # what stopped it
                shadows = self.registry.shadows()
                if not shadows:
                    await asyncio.sleep(self.interval_s)
                    continue
                log.warning("shadow: running %s beside the live versions (nothing is sent "
                            "from them)", ", ".join(f"{a}/{i} v{v}"
                                                    for a, i, v in _identity(shadows)))
                await self._session(shadows, producer)
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _session(self, shadows: list[dict[str, Any]],
                       producer: AIOKafkaProducer) -> None:
        """Until the shadow versions change: rebuild, then follow the log."""
        ident = _identity(shadows)
        starts = {(b["account"], b["id"]): self.registry.published("workflow", b)
                  for b in shadows}
        cand = Candidates(shadows, starts)
        accounts = cand.accounts()
        since = min(starts.values())
        every = list(range(self.settings.partitions))
        sims = {p: Simulator(self.registry, self.suppressions.reason, since=since,
                             until=FOREVER, partitions=self.settings.partitions, cand=cand,
                             max_depth=self.settings.max_causation_depth,
                             dedupe_window_s=self.settings.dedupe_window_s,
                             accounts=accounts, lateness=self.lag,
                             links=Links.of(self.settings))
                for p in every}
        pending: dict[int, list[_Pending]] = defaultdict(list)
        kinds = {self.names.events: "event", self.names.routed: "event",
                 self.names.wakeups: "wakeup", self.names.control: "control"}
        last_progress: dict[int, float] = {}
        #: (topic, partition) → the highest offset a journal entry covered.
        journalled: dict[tuple[str, int], int] = {}
        async with Reader(self.settings, every, extra=(self.names.shadow,)) as reader:
            published = _published(await reader.read(self.names.shadow, every))
            recent: deque[list[tuple[int, Entry]]] = deque(maxlen=RECENT_CYCLES)
            forgot = time.monotonic()
            while _identity(self.registry.shadows()) == ident:
                new = [(r.partition, Entry.decode(r.value))
                       for r in await reader.read(self.names.journal, every)
                       if r.value is not None]
                # The topics' ends are not taken at one instant: an entry may be read a
                # cycle before its records. The last few cycles' entries are kept.
                recent.append(new)
                entries = Entries([e for cycle in recent for e in cycle])
                for p, entry in new:
                    for topic, (_, hi) in entry.ranges.items():
                        journalled[(topic, p)] = max(hi, journalled.get((topic, p), -1))
                for topic, kind in kinds.items():
                    for r in await reader.read(topic, every):
                        if r.value is not None:
                            pending[r.partition].append(_Pending(kind, r))
                watermark = self.clock.now() - self.lag
                forget = time.monotonic() - forgot >= FORGET_EVERY_S
                for p in every:
                    sims[p].load(self._decided(pending, p, entries, journalled))
                    # Not past a record still waiting for its journal entry: it is decided
                    # at or after its broker timestamp.
                    held = [datetime.fromtimestamp(item.record.timestamp / 1000, UTC)
                            for item in pending.get(p, ())]
                    sims[p].advance(min([watermark, *held]))
                    await self._publish(producer, p, sims[p].result, published)
                    reached = sims[p].reached
                    if forget and reached is not None:
                        sims[p].forget(reached)
                    if reached is not None and (
                            time.monotonic() - last_progress.get(p, 0) >= PROGRESS_EVERY_S):
                        last_progress[p] = time.monotonic()
                        await producer.send(self.names.shadow, partition=p, value=orjson.dumps(
                            {"kind": "progress", "at": reached.isoformat(),
                             "late": sims[p].late,
                             "shadows": [f"{a}/{i} v{v}" for a, i, v in ident]}))
                if forget:
                    forgot = time.monotonic()
                await producer.flush()
                await asyncio.sleep(self.interval_s)
                await reader.refresh([self.names.journal, *kinds])
        log.warning("shadow: the shadow versions changed; starting again")

    def _decided(self, pending: dict[int, list[_Pending]], partition: int,
                 entries: Entries, journalled: dict[tuple[str, int], int]) -> list[Recorded]:
        """The partition's pending records that can be decided: those a journal entry
        now covers (at its ``now``), and those none will (at their broker timestamp):
        the journal went past them (written before it was kept, or older than it), or
        none came within :data:`UNJOURNALLED_S` (their batch's worker is away)."""
        out, kept = [], []
        wait_s = max(UNJOURNALLED_S, self.lag.total_seconds())
        for item in pending.pop(partition, []):
            r = item.record
            entry = entries.covering(r.topic, r.partition, r.offset)
            published = datetime.fromtimestamp(r.timestamp / 1000, UTC)
            if entry is None and journalled.get((r.topic, r.partition), -1) < r.offset and \
                    time.monotonic() - item.arrived < wait_s:
                kept.append(item)
                continue
            at = entry.now if entry is not None else published
            out.append(Recorded(item.kind, r.topic, r.partition, r.offset, at, r.key,
                                r.value, entry))
        if kept:
            pending[partition] = kept
        return out

    async def _publish(self, producer: AIOKafkaProducer, partition: int, result: Result,
                       published: set[Any]) -> None:
        """The simulation's new sends and non-sends, on the partition they were decided
        on; those ``published`` already (before a restart) are skipped."""
        sends, audit = result.sends, result.audit
        result.sends, result.audit = [], []
        for kind, items in (("send", sends), ("not_sent", audit)):
            for item in items:
                value = orjson.dumps({"kind": kind, **item})
                if (item["message_id"] if kind == "send" else value) in published:
                    continue
                await producer.send(self.names.shadow, partition=partition,
                                    key=f"{item['account']}:{item['contact_id']}".encode(),
                                    value=value)
                self.published += 1


def _published(records: list[Any]) -> set[Any]:
    """What the shadow topic holds already: sends by message id, non-sends by bytes."""
    found: set[Any] = set()
    for r in records:
        if r.value is None:
            continue
        raw = orjson.loads(r.value)
        if raw.get("kind") == "send":
            found.add(raw["message_id"])
        elif raw.get("kind") == "not_sent":
            found.add(r.value)
    return found


def _marks(records: list[Any]) -> dict[int, datetime]:
    """Each partition's last ``progress`` watermark on the shadow topic."""
    marks: dict[int, datetime] = {}
    for r in records:
        if r.value is None:
            continue
        raw = orjson.loads(r.value)
        if raw.get("kind") == "progress" and (at := parse_time(raw.get("at"))) is not None:
            marks[r.partition] = max(at, marks.get(r.partition, at))
    return marks


@dataclass
class ShadowReport:
    """Live against shadow over a window: ``report`` (the summary, as ``dripstream
    simulate`` gives it, with the window and the shadows) and :meth:`lines`."""

    result: Result
    sends: list[dict[str, Any]]
    report: dict[str, Any]

    def lines(self) -> Any:
        return lines(self.result, self.sends)


async def shadow_report(settings: Settings, account: str, since: datetime | None = None,
                        until: datetime | None = None) -> ShadowReport:
    """What the account's shadow versions would have done (read from the shadow topic)
    against what went out (send and audit topics) in ``[since, until)``. ``since``
    defaults to the earliest shadow's publication; ``until`` is cut to where the shadow
    runner got on every partition (its ``progress`` marks)."""
    names = TopicNames.of(settings)
    every = list(range(settings.partitions))
    async with Reader(settings, every, extra=(names.shadow,)) as reader:
        registry, _ = await reader.definitions()
        shadows = registry.shadows(account)
        if since is None:
            since = min((registry.published("workflow", b) for b in shadows),
                        default=Clock(settings.clock_offset_file).now())
        records = await reader.read(names.shadow, every)
        marks = _marks(records)
        covered = min(marks.values()) if len(marks) == len(every) else None
        end = max(since, covered or since)
        if until is not None:
            end = max(since, min(until, end))
        result, seen = Result(), set()
        for r in records:
            if r.value is None or r.value in seen:
                continue
            seen.add(r.value)
            raw = orjson.loads(r.value)
            kind = raw.pop("kind", None)
            if kind not in ("send", "not_sent") or raw.get("account") != account:
                continue
            at = parse_time(raw.get("created_at" if kind == "send" else "at"))
            if at is None or not since <= at < end:
                continue
            if kind == "send":
                if raw["message_id"] not in seen:
                    seen.add(raw["message_id"])
                    result.sends.append(raw)
            else:
                result.audit.append(raw)
        sends, audit = await reader.outputs(every, since, end, account)
    result.sends.sort(key=lambda s: (s["created_at"], s["message_id"]))
    sends.sort(key=lambda s: (s["created_at"], s["message_id"]))
    report = {"account": account, "since": since.isoformat(), "until": end.isoformat(),
              # The runner has not got past the window's start: nothing to compare yet.
              "behind": end <= since,
              "reached": None if covered is None else covered.isoformat(),
              "shadows": [{"id": b["id"], "version": b["version"],
                           "published_at": registry.published("workflow", b).isoformat()}
                          for b in shadows],
              **summary(result, sends, audit)}
    for field_ in ("handled", "rebuilt_from", "contacts", "added_wakeups", "invalid",
                   "migrate"):
        report.pop(field_, None)
    return ShadowReport(result, sends, report)
