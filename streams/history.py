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
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from tables.registry import Registry, Suppressions
from tables.simulation import Candidates, Recorded, Result, Simulator, lines, summary

__all__ = ["History", "Lab", "read_history", "run_simulation"]

#: Seconds to read one topic to its end before giving up.
READ_S = 300.0


@dataclass
class History:
    registry: Registry
    suppressions: Suppressions
    records: list[Recorded] = field(default_factory=list)
    #: Send commands and audit records whose time is in the window.
    sends: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: Input records the journal covered (decided at their batch's recorded ``now``).
    journalled: int = 0


class _Entries:
    """Journal entries by (topic, partition): the newest covering an offset wins (as in a
    worker's replay, ``agents/journal.py``)."""

    def __init__(self, entries: list[tuple[int, Entry]]) -> None:
        spans: dict[tuple[str, int], list[tuple[int, int, int, Entry]]] = defaultdict(list)
        for n, (partition, entry) in enumerate(entries):
            for topic, (lo, hi) in entry.ranges.items():
                spans[(topic, partition)].append((lo, hi, n, entry))
        self._spans = {k: sorted(v, key=lambda s: s[0]) for k, v in spans.items()}
        self._starts = {k: [s[0] for s in v] for k, v in self._spans.items()}

    def covering(self, topic: str, partition: int, offset: int) -> Entry | None:
        spans = self._spans.get((topic, partition))
        if not spans:
            return None
        best: tuple[int, Entry] | None = None
        for lo, hi, n, entry in spans[:bisect.bisect_right(self._starts[(topic, partition)],
                                                            offset)]:
            if lo <= offset <= hi and (best is None or n > best[0]):
                best = (n, entry)
        return None if best is None else best[1]


async def _read(consumer: AIOKafkaConsumer, topic: str, partitions: int, *,
                exact: bool) -> list[Any]:
    # A group-less consumer's client asks for the metadata of the topics it was assigned
    # (the last read's): this one's leaders first.
    await consumer._client._wait_on_metadata(topic)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = await topic_ends(consumer, tps, embedded=not exact)
    return await read_records(consumer, ends, max_seconds=READ_S)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


async def read_history(settings: Settings, since: datetime, until: datetime) -> History:
    """Everything the simulation of ``[since, until)`` reads (see the module doc)."""
    capabilities = await probe(settings)
    names = TopicNames.of(settings)
    registry = await read_registry(settings)
    suppressions = Suppressions()
    history = History(registry, suppressions)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed" if capabilities.transactions else "read_uncommitted",
        **settings.kafka_security())
    await consumer.start()
    try:
        def read(topic: str) -> Any:
            return _read(consumer, topic, settings.partitions,
                         exact=capabilities.exact_end_offsets)

        for record in await read(names.suppressions):
            suppressions.apply(record.key, record.value)
        entries = _Entries([(r.partition, Entry.decode(r.value))
                            for r in await read(names.journal)
                            if r.value is not None])
        kinds = {names.events: "event", names.routed: "event", names.wakeups: "wakeup",
                 names.control: "control"}
        for topic, kind in kinds.items():
            for r in await read(topic):
                if r.value is None:
                    continue
                entry = entries.covering(topic, r.partition, r.offset)
                at = (entry.now if entry is not None
                      else datetime.fromtimestamp(r.timestamp / 1000, UTC))
                history.journalled += entry is not None
                if at < until:
                    history.records.append(Recorded(kind, topic, r.partition, r.offset, at,
                                                    r.key, r.value, entry))
        # A batch redone after a crash (at-least-once) writes its effects again, the same
        # (its journal gives it the same answers and ``now``): counted once.
        seen: set[Any] = set()
        for channel in ("sms", "mms", "email"):
            for r in await read(names.send(channel)):
                send = orjson.loads(r.value)
                made = _time(send.get("created_at"))
                if made is not None and since <= made < until and \
                        send["message_id"] not in seen:
                    seen.add(send["message_id"])
                    history.sends.append(send)
        for r in await read(names.audit):
            audit = orjson.loads(r.value)
            made = _time(audit.get("at"))
            if made is not None and since <= made < until and r.value not in seen:
                seen.add(r.value)
                history.audit.append(audit)
    finally:
        await consumer.stop()
    return history


@dataclass
class Lab:
    """A simulation's outcome: the summary (``report``) and, per send and non-send,
    :meth:`lines`."""

    history: History
    simulator: Simulator
    result: Result
    report: dict[str, Any]

    def lines(self) -> Iterator[dict[str, Any]]:
        return lines(self.result, self.history.sends)


async def run_simulation(settings: Settings, cand: Candidates, since: datetime,
                         until: datetime, accounts: set[str] | None = None) -> Lab:
    """The candidates over the recorded ``[since, until)`` (``accounts``: only these; by
    default the candidates' accounts, or every account without candidates). The
    simulation itself runs in a thread: an API serving it goes on answering."""
    accounts = accounts or cand.accounts() or None
    history = await read_history(settings, since, until)
    sim = Simulator(history.registry, history.suppressions.reason, since=since,
                    until=until, partitions=settings.partitions, cand=cand,
                    max_depth=settings.max_causation_depth,
                    dedupe_window_s=settings.dedupe_window_s, accounts=accounts)

    def run() -> Result:
        sim.load(history.records)
        return sim.run()

    result = await asyncio.to_thread(run)
    if accounts is not None:
        history.sends = [s for s in history.sends if s["account"] in accounts]
        history.audit = [a for a in history.audit if a["account"] in accounts]
    report = {"since": since.isoformat(), "until": until.isoformat(),
              "accounts": None if accounts is None else sorted(accounts),
              "candidates": sorted(f"{a}/{i}" for a, i in cand.workflows)
              + sorted(f"{a}/keyword:{i}" for a, i in cand.keywords)
              + sorted(f"{a}/policy" for a in cand.policies),
              "journalled": history.journalled,
              **summary(result, history.sends, history.audit)}
    return Lab(history, sim, result, report)
