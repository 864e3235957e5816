"""The recorded log, read for the journey lab (``tables/simulation.py``): the input
records with the journal entries that say when and with which answers the worker decided
them, every definition version, the suppression list, and what actually went out.

A snapshot: each topic is read from its start to its end as of the call (``read_committed``
where the broker has transactions: an aborted batch's records were never decided on).
Nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from multiprocessing import get_context
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from producers.admin import read_registry
from streams.capabilities import probe
from streams.embedded import read_records, topic_ends
from streams.settings import Settings
from streams.topics import TopicNames
from tables.journal import Entry
from tables.preferences import Links
from tables.registry import Registry, Suppressions
from tables.simulation import Candidates, Recorded, Result, Simulator, lines, slim, summary

__all__ = ["Entries", "History", "Lab", "PartitionMismatch", "Reader", "parse_time",
           "read_outcomes", "run_simulation"]

#: Seconds to read one topic to its end before giving up.
READ_S = 300.0


class PartitionMismatch(ValueError):
    """The topics have another partition count than the settings say (a contact's
    partition would be computed wrong)."""


@dataclass
class History:
    """One partition's recorded input and output."""

    records: list[Recorded] = field(default_factory=list)
    #: Send commands and audit records whose time is in the window.
    sends: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: Input records the journal covered (decided at their batch's recorded ``now``).
    journalled: int = 0


class Entries:
    """Journal entries by (topic, partition): the newest covering an offset wins (as in a
    worker's replay, ``agents/journal.py``). Entries overlap only where a batch was redone,
    so a lookup walks back from the last span starting at or before the offset and stops
    where no earlier span reaches it (``_reach``: the highest end up to each span)."""

    def __init__(self, entries: list[tuple[int, Entry]]) -> None:
        spans: dict[tuple[str, int], list[tuple[int, int, int, Entry]]] = defaultdict(list)
        for n, (partition, entry) in enumerate(entries):
            for topic, (lo, hi) in entry.ranges.items():
                spans[(topic, partition)].append((lo, hi, n, entry))
        self._spans = {k: sorted(v, key=lambda s: s[0]) for k, v in spans.items()}
        self._starts = {k: [s[0] for s in v] for k, v in self._spans.items()}
        self._reach = {k: list(accumulate((s[1] for s in v), max))
                       for k, v in self._spans.items()}

    def covering(self, topic: str, partition: int, offset: int) -> Entry | None:
        key = (topic, partition)
        spans = self._spans.get(key)
        if not spans:
            return None
        reach = self._reach[key]
        best: tuple[int, Entry] | None = None
        i = bisect.bisect_right(self._starts[key], offset) - 1
        while i >= 0 and reach[i] >= offset:
            _, hi, n, entry = spans[i]
            if hi >= offset and (best is None or n > best[0]):
                best = (n, entry)
            i -= 1
        return None if best is None else best[1]


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class Reader:
    """One consumer reading the recorded log partition by partition (a partition's
    contacts are all on it: each is simulated on its own, in bounded memory). Where each
    topic partition begins and ends is asked once, for all of them: a partition with
    nothing on a topic costs no read."""

    def __init__(self, settings: Settings, partitions: list[int],
                 extra: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.names = TopicNames.of(settings)
        self.partitions = partitions
        #: More topics to read (their names), beside the recorded log's own.
        self.extra = extra
        self._consumer: AIOKafkaConsumer | None = None
        self._embedded = True
        #: (topic, partition) → (first offset, end offset), as of the start.
        self._spans: dict[TopicPartition, tuple[int, int]] = {}

    def _topics(self) -> list[str]:
        n = self.names
        return [n.suppressions, n.journal, n.events, n.routed, n.wakeups, n.control,
                *(n.send(c) for c in ("sms", "mms", "email")), n.audit, *self.extra]

    async def __aenter__(self) -> Reader:
        capabilities = await probe(self.settings)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
            enable_auto_commit=False, isolation_level="read_committed"
            if capabilities.transactions else "read_uncommitted",
            **self.settings.kafka_security())
        try:  # started inside: one cancelled or failing while starting is closed too
            await consumer.start()
            every = list(range(self.settings.partitions))
            tps = []
            for topic in self._topics():
                # A group-less consumer's client asks only for the topics it knows.
                await consumer._client._wait_on_metadata(topic)
                held = consumer.partitions_for_topic(topic) or set()
                if len(held) != self.settings.partitions:
                    raise PartitionMismatch(
                        f"{topic} has {len(held)} partitions, DRIPSTREAM_PARTITIONS says "
                        f"{self.settings.partitions}: set it to the topics' count")
                tps += [TopicPartition(topic, p) for p in (
                    every if topic == self.names.suppressions else self.partitions)]
            self._embedded = not capabilities.exact_end_offsets
            ends = await topic_ends(consumer, tps, embedded=self._embedded)
            starts = await consumer.beginning_offsets(tps)
        except BaseException:
            # aiokafka's group-less consumer stopped before its committed-offsets task ran
            # raises that task's CancelledError: the original error is what matters.
            with contextlib.suppress(asyncio.CancelledError):
                await consumer.stop()
            raise
        self._consumer = consumer
        self._spans = {tp: (starts.get(tp, 0), ends[tp]) for tp in tps}
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def refresh(self, topics: list[str]) -> None:
        """Move the spans of ``topics`` on: from where each ended to where its topic
        partition ends now (the next :meth:`read` gives what came since: a tail)."""
        assert self._consumer is not None
        for topic in topics:  # a read assigned others: the client forgot these
            await self._consumer._client._wait_on_metadata(topic)
        tps = [tp for tp in self._spans if tp.topic in topics]
        ends = await topic_ends(self._consumer, tps, embedded=self._embedded)
        for tp in tps:
            end = self._spans[tp][1]
            self._spans[tp] = (end, max(end, ends[tp]))

    async def read(self, topic: str, partitions: list[int]) -> list[Any]:
        assert self._consumer is not None
        spans = {tp: span for p in partitions
                 if (span := self._spans.get(tp := TopicPartition(topic, p))) is not None
                 and span[1] > span[0]}
        if not spans:
            return []
        return await read_records(self._consumer, {tp: end for tp, (_, end) in spans.items()},
                                  start={tp: start for tp, (start, _) in spans.items()},
                                  max_seconds=READ_S)

    async def definitions(self) -> tuple[Registry, Suppressions]:
        """Every definition version, and the suppression list as it is now."""
        registry = await read_registry(self.settings)
        suppressions = Suppressions()
        for record in await self.read(self.names.suppressions,
                                      list(range(self.settings.partitions))):
            suppressions.apply(record.key, record.value)
        return registry, suppressions

    async def partition(self, partition: int, since: datetime, until: datetime) -> History:
        """One partition's input (each record with the journal entry that covers it and
        when it was decided) and the sends and audit records of ``[since, until)``."""
        names, only = self.names, [partition]
        history = History()
        entries = Entries([(r.partition, Entry.decode(r.value))
                            for r in await self.read(names.journal, only)
                            if r.value is not None])
        kinds = {names.events: "event", names.routed: "event", names.wakeups: "wakeup",
                 names.control: "control"}
        for topic, kind in kinds.items():
            for r in await self.read(topic, only):
                if r.value is None:
                    continue
                entry = entries.covering(topic, r.partition, r.offset)
                at = (entry.now if entry is not None
                      else datetime.fromtimestamp(r.timestamp / 1000, UTC))
                history.journalled += entry is not None and since <= at < until
                if at < until:
                    history.records.append(Recorded(kind, topic, r.partition, r.offset, at,
                                                    r.key, r.value, entry))
        history.sends, history.audit = await self.outputs(only, since, until)
        return history

    async def outputs(self, partitions: list[int], since: datetime, until: datetime,
                      account: str | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The send commands (slim, :func:`tables.simulation.slim`) and audit records of
        ``[since, until)`` on ``partitions`` (of ``account``, or of every account)."""
        # A batch redone after a crash (at-least-once) writes its effects again, the same
        # (its journal gives it the same answers and ``now``): counted once.
        seen: set[Any] = set()
        sends, audit = [], []
        for channel in ("sms", "mms", "email"):
            for r in await self.read(self.names.send(channel), partitions):
                send = orjson.loads(r.value)
                made = parse_time(send.get("created_at"))
                if made is not None and since <= made < until and \
                        send["message_id"] not in seen and \
                        account in (None, send.get("account")):
                    seen.add(send["message_id"])
                    sends.append(slim(send))
        for r in await self.read(self.names.audit, partitions):
            record = orjson.loads(r.value)
            made = parse_time(record.get("at"))
            if made is not None and since <= made < until and r.value not in seen and \
                    account in (None, record.get("account")):
                seen.add(r.value)
                audit.append(record)
        return sends, audit


@dataclass
class Lab:
    """A simulation's outcome: the summary (``report``) and, per send and non-send,
    :meth:`lines`."""

    result: Result
    #: What actually went out in the window, and the audit of what did not.
    sends: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    report: dict[str, Any]

    def lines(self) -> Iterator[dict[str, Any]]:
        return lines(self.result, self.sends)


@dataclass
class _Part:
    result: Result = field(default_factory=Result)
    sends: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    journalled: int = 0


async def _simulate(settings: Settings, cand: Candidates, since: datetime, until: datetime,
                    accounts: set[str] | None, partitions: list[int], migrate: bool) -> _Part:
    """``partitions``, one after the other, in this process."""
    out = _Part()
    async with Reader(settings, partitions) as reader:
        registry, suppressions = await reader.definitions()
        for partition in partitions:
            history = await reader.partition(partition, since, until)
            sim = Simulator(registry, suppressions.reason, since=since, until=until,
                            partitions=settings.partitions, cand=cand,
                            max_depth=settings.max_causation_depth,
                            dedupe_window_s=settings.dedupe_window_s, accounts=accounts,
                            migrate=migrate, links=Links.of(settings))

            def run(sim: Simulator = sim, history: History = history) -> Result:
                sim.load(history.records)
                return sim.run()

            out.result.merge(await asyncio.to_thread(run))
            out.sends += [s for s in history.sends
                          if accounts is None or s["account"] in accounts]
            out.audit += [a for a in history.audit
                          if accounts is None or a["account"] in accounts]
            out.journalled += history.journalled
    return out


def _in_process(settings: Settings, cand: Candidates, since: datetime, until: datetime,
                accounts: set[str] | None, partitions: list[int], migrate: bool) -> _Part:
    # A replay's "no recorded answer" warnings are the simulation's business, not the
    # operator's (the parent process silences them too).
    logging.getLogger("tables.journal").disabled = True
    return asyncio.run(_simulate(settings, cand, since, until, accounts, partitions,
                                 migrate))


async def run_simulation(settings: Settings, cand: Candidates, since: datetime,
                         until: datetime, accounts: set[str] | None = None, *,
                         processes: int = 1, migrate: bool = False) -> Lab:
    """The candidates over the recorded ``[since, until)`` (``accounts``: only these; by
    default the candidates' accounts, or every account without candidates), partition
    by partition, the partitions shared among ``processes`` processes. The simulation
    itself runs off the event loop: an API serving it goes on answering. ``migrate``:
    also preview where the candidates would place the contacts inside other versions of
    their workflows when the window ends (:meth:`Simulator._migrations`)."""
    accounts = accounts or cand.accounts() or None
    every = list(range(settings.partitions))
    processes = max(1, min(processes, len(every)))
    if processes == 1:
        parts = [await _simulate(settings, cand, since, until, accounts, every, migrate)]
    else:
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            parts = await asyncio.gather(*(
                loop.run_in_executor(pool, _in_process, settings, cand, since, until,
                                     accounts, every[n::processes], migrate)
                for n in range(processes)))
    total = _Part()
    for part in parts:
        total.result.merge(part.result)
        total.sends += part.sends
        total.audit += part.audit
        total.journalled += part.journalled
    total.result.sends.sort(key=lambda s: (s["created_at"], s["message_id"]))
    total.sends.sort(key=lambda s: (s["created_at"], s["message_id"]))
    total.result.migrations.sort(key=lambda m: (m["account"], m["contact_id"]))
    report = {"since": since.isoformat(), "until": until.isoformat(),
              "accounts": None if accounts is None else sorted(accounts),
              "candidates": sorted(f"{a}/{i}" for a, i in cand.workflows)
              + sorted(f"{a}/keyword:{i}" for a, i in cand.keywords)
              + sorted(f"{a}/policy" for a in cand.policies),
              "journalled": total.journalled, "processes": processes,
              **summary(total.result, total.sends, total.audit)}
    return Lab(total.result, total.sends, total.audit, report)


async def read_outcomes(settings: Settings, account: str, workflow_id: str,
                        since: datetime | None = None, until: datetime | None = None
                        ) -> list[dict[str, Any]]:
    """The experiment outcomes of ``workflow_id`` (``<prefix>outcomes``, every partition)
    whose entry was in ``[since, until)`` (default: all retained), oldest entry first."""
    names = TopicNames.of(settings)
    every = list(range(settings.partitions))
    found = []
    async with Reader(settings, every, extra=(names.outcomes,)) as reader:
        for r in await reader.read(names.outcomes, every):
            if r.value is None:
                continue
            record = orjson.loads(r.value)
            entered = parse_time(record.get("entered_at"))
            if (record.get("account") != account or record.get("workflow_id") != workflow_id
                    or entered is None or (since is not None and entered < since)
                    or (until is not None and entered >= until)):
                continue
            found.append(record)
    found.sort(key=lambda o: (o["entered_at"], o["id"]))
    return found
