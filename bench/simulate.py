"""The ``simulate`` path: how fast the journey lab (``dripstream simulate``,
:func:`streams.history.run_simulation`) replays a recorded window, against the worker that
recorded it.

One worker records ``--sim-events`` events over ``--sim-contacts`` contacts: a
``contact.created`` each first, then a mix of page views, deliveries, clicks, cart views,
purchases, tags and profile updates, through two workflows that send and wait (an
onboarding series: an SMS, a wait, a branch on purchases, another SMS; a cart reminder:
wait for a purchase, an SMS on the timeout) — so the log holds events, wake-ups, sends,
capped non-sends and the journal. Once the worker has decided everything (every input
committed, every wait fired), it is stopped and ``run_simulation`` with no candidates runs
over the whole window in a fresh process, with 1 and then 2 processes: its wall time,
records handled per second, CPU, peak RSS and fidelity (the simulation must make the very
sends the worker made: ``only_simulated``, ``only_actual``, ``both_at_other_times`` 0).

The events are produced first, as a backlog (the worker's capacity), or with
``--sim-rate`` at that rate while the worker runs (live traffic: its wake-ups on time).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from bench.harness import (
    ACCOUNT,
    FIRST_POLL_S,
    POLICY,
    Bench,
    BenchWorker,
    Config,
    PhaseCpu,
    Record,
    Result,
    count_records,
    keep_profile,
    prepare,
    produce_all,
    read_topic,
    reader,
    reader_ends,
    spy_for,
    start_group,
    stop_all,
    tps_of,
)
from producers.publisher import build_event
from streams.compat import visible_ends
from streams.settings import Settings
from streams.topics import TopicNames
from tables.journal import Entry

__all__ = ["SIM_CART", "SIM_ONBOARDING", "SimResult", "SimRun", "sim_events", "simulate"]

#: The longest wait of the workflows, s: every wait has fired this long after the last
#: event was decided.
SIM_WAIT_S = 60
#: Sign-up series: an SMS, a wait, then thanks (bought meanwhile) or a nudge.
SIM_ONBOARDING = {
    "kind": "workflow", "id": "sim-onboarding", "account": ACCOUNT, "name": "onboarding",
    "version": 1, "trigger": {"event": "contact.created"}, "start": "hello",
    "steps": {
        "hello": {"kind": "send_sms", "body": "Hi {{contact.first_name|there}}!",
                  "next": "pause"},
        "pause": {"kind": "wait", "duration": f"{SIM_WAIT_S}s", "next": "bought"},
        "bought": {"kind": "branch",
                   "condition": [{"field": "contact.purchases", "op": "gt", "value": 0}],
                   "true": "thanks", "false": "nudge"},
        "thanks": {"kind": "send_sms", "body": "Thanks for your order, {{contact.first_name}}."},
        "nudge": {"kind": "send_sms", "body": "10% off your first order: SAVE10"},
    },
}
#: Cart reminder: a viewed cart waits for a purchase; none within 45 s, an SMS.
SIM_CART = {
    "kind": "workflow", "id": "sim-cart", "account": ACCOUNT, "name": "cart reminder",
    "version": 1, "trigger": {"event": "custom.cart_viewed"}, "start": "hold",
    "steps": {
        "hold": {"kind": "wait_for_event", "event": "purchase.completed", "timeout": "45s",
                 "timeout_next": "remind"},
        "remind": {"kind": "send_sms",
                   "body": "Still thinking about your cart, {{contact.first_name|there}}?"},
    },
}
#: What follows a sign-up, with weights (sums to 100).
SIM_MIX: tuple[tuple[str, int], ...] = (
    ("custom.page_viewed", 30), ("message.delivered", 15), ("message.clicked", 15),
    ("custom.cart_viewed", 12), ("purchase.completed", 10), ("contact.tagged", 10),
    ("contact.updated", 8),
)
#: The wake-ups a tick may send (``DRIPSTREAM_TIMER_MAX_PER_TICK``, default 500): the
#: sign-ups of a 100k-contact backlog come due within seconds of each other, and at 500/s
#: their wake-ups would trail the due times by minutes — the live timer's backlog, not
#: what this path measures.
SIM_TICK = 5000
#: Processes of the simulation runs (``run_simulation(processes=...)``).
SIM_PROCESSES = (1, 2)


@dataclass
class SimRun:
    """One ``run_simulation`` over the window in a fresh process."""

    processes: int
    seconds: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    cpu_s: float | None = None  # the process and its pool's, utime + stime
    rss_self: int | None = None  # peak RSS (VmHWM) of the process that called it
    rss_children: int | None = None  # the largest of its pool's processes
    #: One process: wall seconds per part (:func:`_instrument`).
    phases: dict[str, float] = field(default_factory=dict)
    #: One process: its RSS after each partition's run, in the order simulated.
    rss_partitions: list[int] = field(default_factory=list)
    #: What the simulation printed (its log): distinct lines, numbers left out, counted.
    log_lines: Counter[str] = field(default_factory=Counter)

    @property
    def handled(self) -> int:
        return int(self.report.get("handled", 0))

    @property
    def events_per_s(self) -> float | None:
        return self.handled / self.seconds if self.seconds else None


@dataclass
class SimResult:
    """The recorded window (what the worker did) and the simulation runs over it."""

    events: int
    contacts: int
    partitions: int
    publish_s: float | None = None
    #: Input records the worker decided from its first batch to the one that decided
    #: the last event (events and the wake-ups that fell meanwhile), and over how long.
    worker_records: int = 0
    worker_seconds: float | None = None
    #: CPU seconds of the worker and (started here) the broker over that part.
    worker_cpu_s: float | None = None
    broker_cpu_s: float | None = None
    #: Over the whole window: the input records, sends and non-sends on the log.
    recorded: dict[str, int] = field(default_factory=dict)
    window_s: float | None = None
    #: Seconds the wake-ups waited in the worker's input: p50, p99, max.
    wakeup_wait_s: tuple[float, float, float] | None = None
    #: ``--sim-rate``: the events were produced at this rate while the worker ran (0: a
    #: backlog produced first).
    rate: float = 0.0
    runs: list[SimRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def worker_per_s(self) -> float | None:
        if not self.worker_seconds or not self.worker_records:
            return None
        return self.worker_records / self.worker_seconds

    def run(self, processes: int) -> SimRun | None:
        return next((r for r in self.runs if r.processes == processes), None)


# --------------------------------------------------------------------------- workload


def _follow_up(kind: str, j: int, round_: int) -> dict[str, Any]:
    if kind == "custom.page_viewed":
        return {"page": ("/pricing", "/features", "/blog", "/docs")[j % 4]}
    if kind in ("message.delivered", "message.clicked"):
        data: dict[str, Any] = {"message_id": f"m-{j}", "channel": "sms"}
        if kind == "message.clicked":
            data["url"] = "https://example.com/offer"
        return data
    if kind == "custom.cart_viewed":
        return {"items": 1 + j % 3}
    if kind == "purchase.completed":
        return {"order_id": f"o-{j}", "amount": "19.90", "currency": "EUR"}
    if kind == "contact.tagged":
        return {"tag": f"t{round_ % 5}"}
    return {"attributes": {"plan": ("free", "pro")[j % 2]}}


def sim_events(run_id: str, n: int, contacts: int, seed: int = 7) -> Iterator[Record]:
    """``n`` events over ``contacts`` contacts ``<run>-s<i>``, made as they are produced
    (a million do not sit in memory): every contact's ``contact.created`` (phone, SMS
    consent, a zone, a first name) first, then rounds of :data:`SIM_MIX` drawn with a
    fixed seed."""
    rng = random.Random(seed)
    kinds = [kind for kind, _ in SIM_MIX]
    weights = [weight for _, weight in SIM_MIX]
    base = datetime.now(UTC)
    for j in range(n):
        i, round_ = j % contacts, j // contacts
        contact_id = f"{run_id}-s{i}"
        if round_ == 0:
            kind = "contact.created"
            data: dict[str, Any] = {
                "phone": f"+1415{i % 10_000_000:07d}", "email": f"s{i}@example.com",
                "timezone": "Europe/Berlin", "attributes": {"first_name": f"Name{i}"},
                "consent": {"sms": True, "email": True}}
        else:
            kind = rng.choices(kinds, weights)[0]
            data = _follow_up(kind, j, round_)
        event = build_event(ACCOUNT, contact_id, kind, data,
                            time=base + timedelta(microseconds=j))
        yield contact_id.encode(), orjson.dumps(event)


async def _produce_paced(bootstrap: str, topic: str, records: Iterator[Record],
                         rate: float) -> float:
    """Produce ``records`` at ``rate``/s (live traffic: the worker decides them as they
    come); the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        start = time.monotonic()
        futures = []
        for k, (key, value) in enumerate(records):
            if k % 100 == 0 and (ahead := start + k / rate - time.monotonic()) > 0:
                await asyncio.sleep(ahead)  # pacing the offered rate
            futures.append(await producer.send(topic, value=value, key=key))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return time.monotonic() - start
    finally:
        await producer.stop()


# --------------------------------------------------------------------------- the recording


async def _ends(cfg: Config, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
                ) -> dict[TopicPartition, int]:
    """Where a group that consumed everything of ``tps`` has committed (as
    :func:`bench.harness.consumed_ends`, on one consumer for the whole wait)."""
    if cfg.exactly_once:
        return await visible_ends(consumer, tps)
    return await reader_ends(cfg, consumer, tps)


async def _record(cfg: Config, s: Settings, worker: BenchWorker, result: SimResult,
                  deadline: float, produced: Callable[[], bool] = lambda: True) -> float:
    """Until the worker has decided every event and every wait has fired: its group has
    committed every input to the end, :data:`SIM_WAIT_S` after the events (all
    ``produced``) and for three looks in a row with nothing new. The CPU of the events'
    part (first journal entry → the events committed) goes to ``result``; returns when
    the events were committed (wall clock)."""
    names = TopicNames.of(s)
    inputs = [tp for t in (names.events, names.routed, names.wakeups, names.control)
              for tp in tps_of(t, cfg.partitions)]
    events = tps_of(names.events, cfg.partitions)
    journal = tps_of(names.journal, cfg.partitions)
    cpu, spent = PhaseCpu(cfg, [worker.pid]), Result("simulate: the recording")
    events_done: float | None = None
    started = False
    quiet, last = 0, None
    group = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=s.group_id,
                             enable_auto_commit=False)
    ends_of = reader(cfg)
    await group.start()
    await ends_of.start()
    try:
        ends_of.assign(inputs + journal)
        while True:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not decide every event and wait in time"
                                   + ("" if events_done else " (events still queued)"))
            if not started:  # the first batch's journal entries: the CPU window opens
                if any((await reader_ends(cfg, ends_of, journal)).values()):
                    started = True
                    cpu.begin()
            else:
                # Until the events are decided only their partitions are looked at.
                looked = inputs if events_done is not None else events
                ends = await _ends(cfg, ends_of, looked)
                level = all([(await group.committed(tp) or 0) >= ends[tp] for tp in looked])
                if events_done is None and level and produced():
                    events_done = time.time()
                    cpu.end(spent)
                    result.worker_cpu_s = spent.cpu_s.get("worker")
                    result.broker_cpu_s = spent.cpu_s.get("broker")
                elif events_done is not None and time.time() > events_done + SIM_WAIT_S + 2:
                    quiet = quiet + 1 if level and ends == last else 0
                    if quiet >= 3:
                        return events_done
                last = ends
            await asyncio.sleep(1.0 if started else FIRST_POLL_S)
    finally:
        await ends_of.stop()
        await group.stop()


async def _worker_rate(cfg: Config, s: Settings, result: SimResult) -> None:
    """From the journal (one entry per partition per batch: its ``now`` and the offsets
    it decided): the records decided from the first batch to the last batch that decided
    an event, and the time between the two batches; and how long the tick's wake-ups
    waited in the worker's input (their broker timestamp → the ``now`` of the batch that
    decided them: the simulation takes a recorded wake-up within ``WAKEUP_LATENESS`` of a
    due time for the one that served it)."""
    names = TopicNames.of(s)
    journal = [(r.partition, Entry.decode(r.value))
               for r in await read_topic(cfg, names.journal, 120.0) if r.value is not None]
    entries = sorted((e for _, e in journal), key=lambda e: e.now)
    last_event = max((e.now for e in entries if names.events in e.ranges), default=None)
    if not entries or last_event is None:
        result.notes.append("the journal holds no entry for the events: no worker rate")
        return
    result.worker_records = sum(hi - lo + 1 for e in entries if e.now <= last_event
                                for lo, hi in e.ranges.values())
    result.worker_seconds = (last_event - entries[0].now).total_seconds()
    by_topic: Counter[str] = Counter()
    for e in entries:
        for topic, (lo, hi) in e.ranges.items():
            by_topic[topic.removeprefix(s.topic_prefix)] += hi - lo + 1
    result.recorded.update({f"decided {t}": n for t, n in sorted(by_topic.items())})
    result.recorded["journal entries"] = len(entries)
    spans: dict[int, list[tuple[int, int, datetime]]] = {}
    for partition, e in journal:
        if (span := e.ranges.get(names.wakeups)) is not None:
            spans.setdefault(partition, []).append((span[0], span[1], e.now))
    waited = []
    for r in await read_topic(cfg, names.wakeups, 120.0):
        for lo, hi, now in spans.get(r.partition, []):
            if lo <= r.offset <= hi:
                waited.append(now.timestamp() - r.timestamp / 1000)
                break
    if waited:
        waited.sort()
        result.wakeup_wait_s = (waited[len(waited) // 2], waited[int(len(waited) * 0.99)],
                                waited[-1])


# --------------------------------------------------------------------------- the simulation


def _peak(pid: int) -> int | None:
    """A process's peak resident memory so far (``VmHWM``), bytes; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


async def _watch_pool(pid: int, peaks: dict[int, int]) -> None:
    """Until cancelled: the peak RSS of each of ``pid``'s child processes (its pool),
    looked at every second (a high-water mark: a look misses only its last second)."""
    while True:
        for child in _children(pid):
            if (peak := _peak(child)) is not None:
                peaks[child] = max(peak, peaks.get(child, 0))
        await asyncio.sleep(1.0)


def _rss() -> int:
    """This process's resident memory now (``/proc/self/statm``), bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _instrument() -> tuple[dict[str, float], list[int]]:
    """Wall seconds of the parts of a one-process simulation, by wrapping the methods
    that do them in this process only (nothing of the lab is changed): ``definitions``
    (the registry and suppressions), ``broker`` (:meth:`Reader.read`: fetching and
    decoding the records), ``partition`` (all of :meth:`Reader.partition`: the reads,
    journal entries decoded and matched to records, sends decoded), ``load`` and ``run``
    (:class:`Simulator`: parsing and ordering the input, the handlers); and the RSS at
    the end of each partition's run (its input still held, the earlier ones' results
    kept)."""
    from streams import history
    from tables import simulation

    spent = dict.fromkeys(("definitions", "broker", "partition", "load", "run"), 0.0)
    rss: list[int] = []

    def timed_async(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
                if name == "run":
                    rss.append(_rss())
        return wrapper

    for cls, method, name, wrap in (
            (history.Reader, "definitions", "definitions", timed_async),
            (history.Reader, "read", "broker", timed_async),
            (history.Reader, "partition", "partition", timed_async),
            (simulation.Simulator, "load", "load", timed),
            (simulation.Simulator, "run", "run", timed)):
        setattr(cls, method, wrap(name, getattr(cls, method)))
    return spent, rss


#: The report's keys a run keeps (the per-hour and per-step tables are left out).
_KEPT = ("handled", "rebuilt_from", "contacts", "added_wakeups", "invalid", "journalled",
         "sends", "actual_sends", "both", "only_simulated", "only_actual",
         "both_at_other_times", "not_sent", "actual_not_sent", "processes")


def _child(settings: Settings, since: datetime, until: datetime, processes: int,
           instrument: bool, log: str, ready: Any, out: Any) -> None:
    """Entry point of a simulation's own process: ``run_simulation`` with no candidates,
    timed; its CPU from ``getrusage`` (the pool's processes are reaped by then, so
    ``RUSAGE_CHILDREN`` holds theirs), its peak RSS from ``VmHWM``. What it and its pool
    print goes to ``log`` (they inherit the descriptor)."""
    from streams.history import run_simulation
    from tables.simulation import Candidates

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    phases, rss = _instrument() if instrument else ({}, [])
    ready.set()

    async def main() -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        lab = await run_simulation(settings, Candidates(), since, until, processes=processes)
        return time.perf_counter() - t0, lab.report

    before = resource.getrusage(resource.RUSAGE_SELF)  # the imports are not the lab's
    try:
        seconds, report = asyncio.run(main())
    except Exception as exc:  # the parent reports it
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    me, pool = (resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN))
    out.put({"seconds": seconds, "report": {k: report.get(k) for k in _KEPT},
             "cpu_s": me.ru_utime + me.ru_stime - before.ru_utime - before.ru_stime
             + pool.ru_utime + pool.ru_stime,
             # Not ru_maxrss: Linux keeps in it the peak of the memory before exec, i.e.
             # of the forked copy of the bench (or of this process, for the pool's).
             "rss_self": _peak(os.getpid()), "phases": phases, "rss_partitions": rss})


async def _simulate_once(bench: Bench, s: Settings, since: datetime, until: datetime,
                         processes: int, limit_s: float, *, profile: bool = False) -> SimRun:
    """One simulation in a fresh (spawned) process; ``profile``: recorded with py-spy
    (``--pyspy``) from when its imports are done."""
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    # Not a daemon: it starts a process pool of its own with processes > 1.
    log = bench.cfg.workdir / f"simulate-{processes}p{'-pyspy' if profile else ''}.log"
    child = ctx.Process(target=_child, args=(s, since, until, processes, processes == 1,
                                             str(log), ready, out))
    spy = spy_for(bench, f"simulate {processes} process(es)") if profile else None
    child.start()
    run = SimRun(processes)
    try:
        # Imports only, but a machine shared with test suites has taken a minute.
        if not await asyncio.to_thread(ready.wait, bench.cfg.timeout):
            raise RuntimeError(f"the simulation's process did not start within "
                               f"{bench.cfg.timeout:.0f} s")
        if spy is not None and child.pid is not None:
            await spy.start(child.pid)
        pool: dict[int, int] = {}
        watch = asyncio.create_task(_watch_pool(child.pid or 0, pool))
        try:
            got = await asyncio.to_thread(out.get, True, limit_s)
        except Exception:  # queue.Empty: over the deadline
            raise TimeoutError(f"simulate, {processes} process(es): no result in "
                               f"{limit_s:.0f} s") from None
        finally:
            watch.cancel()
        run.rss_children = max(pool.values()) if pool and processes > 1 else None
        if "error" in got:
            raise RuntimeError(f"simulate, {processes} process(es): {got['error']}")
        run.seconds, run.report, run.cpu_s = got["seconds"], got["report"], got["cpu_s"]
        run.rss_self = got["rss_self"]
        run.phases, run.rss_partitions = got["phases"], got["rss_partitions"]
        run.log_lines = _log_lines(log)
    finally:
        await asyncio.to_thread(child.join, 30)
        if child.is_alive():
            child.kill()
            await asyncio.to_thread(child.join, 5)
        if spy is not None:
            await spy.finish()
            keep_profile(bench, spy)
    return run


def _log_lines(path: Path) -> Counter[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return Counter()
    return Counter(re.sub(r"\d+", "N", line)[:200] for line in text.splitlines() if line)


def _fidelity(bench: Bench, run: SimRun) -> None:
    """With the live definitions, anything but the very sends and non-sends the worker
    made is a failure (of the lab, or of the recording)."""
    r = run.report
    off = {k: r.get(k) for k in ("only_simulated", "only_actual", "both_at_other_times",
                                 "added_wakeups", "invalid")}
    if any(off.values()) or r.get("sends") != r.get("actual_sends") or \
            r.get("not_sent") != r.get("actual_not_sent"):
        bench.failures.append(
            f"simulate, {run.processes} process(es): not faithful to what the worker did: "
            f"{off}; sends {r.get('sends')} simulated, {r.get('actual_sends')} actual; not "
            f"sent {r.get('not_sent')} simulated, {r.get('actual_not_sent')} actual")


async def simulate(bench: Bench) -> None:
    """Record the window with one worker, then simulate it with 1 and 2 processes."""
    cfg = bench.cfg
    n, contacts = cfg.sim_events, cfg.sim_contacts
    result = SimResult(n, contacts, cfg.partitions)
    bench.simulations.append(result)
    s = await prepare(cfg, cfg.prefix("simulate"), [POLICY, SIM_ONBOARDING, SIM_CART])
    names = TopicNames.of(s)
    # The window opens before anything is decided: nothing is rebuilt, all is handled.
    since = datetime.now(UTC) - timedelta(seconds=1)
    events = sim_events(cfg.run_id, n, contacts)
    deadline = time.monotonic() + cfg.timeout + n / 1000 + (n / cfg.sim_rate
                                                             if cfg.sim_rate else 0.0)
    env = {"DRIPSTREAM_TIMER_MAX_PER_TICK": str(SIM_TICK)}
    result.notes.append(f"the worker ran with DRIPSTREAM_TIMER_MAX_PER_TICK={SIM_TICK} (default "
                        "500): the sign-ups' waits come due within seconds of each other")
    if not cfg.sim_rate:  # a backlog: the worker's capacity
        print(f"... simulate: producing {n:,} events over {contacts:,} contacts",
              file=sys.stderr, flush=True)
        result.publish_s = await produce_all(cfg.bootstrap, names.events, events)
        workers = [BenchWorker(cfg, s.topic_prefix, env=env).start()]
    else:  # live traffic: the worker decides them as they come
        result.rate = cfg.sim_rate
        workers = await start_group(cfg, s.topic_prefix, 1, deadline, env=env)
    try:
        print("... simulate: the worker records the window", file=sys.stderr, flush=True)
        if not cfg.sim_rate:
            await _record(cfg, s, workers[0], result, deadline)
        else:
            producing = asyncio.create_task(_produce_paced(cfg.bootstrap, names.events,
                                                           events, cfg.sim_rate))
            try:
                await _record(cfg, s, workers[0], result, deadline, producing.done)
            finally:
                producing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    result.publish_s = await producing
        until = datetime.now(UTC)
    finally:
        await stop_all(workers)
    result.window_s = (until - since).total_seconds()
    await _worker_rate(cfg, s, result)
    for label, topic in (("sends", names.send("sms")), ("audit", names.audit),
                         ("wake-ups", names.wakeups), ("dead letters", names.dead_letter)):
        result.recorded[label] = await count_records(cfg, topic)
    for processes in SIM_PROCESSES:
        if processes > cfg.partitions:
            continue
        print(f"... simulate: run_simulation, {processes} process(es)", file=sys.stderr,
              flush=True)
        run = await _simulate_once(bench, s, since, until, processes,
                                   cfg.timeout + n / 1000)
        result.runs.append(run)
        _fidelity(bench, run)
        if run.log_lines:
            result.notes.append(
                f"{processes} process(es): the simulation printed {run.log_lines.total():,} "
                "lines; " + "; ".join(f"{n:,}x {line}"
                                      for line, n in run.log_lines.most_common(3)))
    if cfg.pyspy > 0:
        # Once more under py-spy, which pauses the process to sample: not in the table.
        print("... simulate: run_simulation, 1 process, under py-spy", file=sys.stderr,
              flush=True)
        await _simulate_once(bench, s, since, until, 1, cfg.timeout + n / 1000, profile=True)
    one, two = result.run(1), result.run(2)
    if one and two:
        a = {k: v for k, v in one.report.items() if k != "processes"}
        b = {k: v for k, v in two.report.items() if k != "processes"}
        if a != b:
            result.notes.append(f"1 and 2 processes disagree: {a} vs {b}")
