"""The composition root: one function builds a worker from :class:`Settings`.

:func:`build` makes the Faust app and every part the agents use — the contacts table,
the definitions registry and the suppression list (held in full on every worker), the
Redis read model, the timer's due index, the input gap guard, the liveness file — puts
them on one :class:`Worker`, and installs the agents, tasks and timers on the app. Nothing
is created at import time; ``dripstream worker`` is ``run(build(settings, capabilities))``
with the broker's capabilities probed first (:mod:`streams.capabilities`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from agents import campaigns, contacts, observe, timers
from agents.journal import Journal
from agents.timers import DueIndex, InputClock
from agents.transactions import Transactions
from streams.app import MAX_REQUEST_BYTES, build_app
from streams.capabilities import Capabilities, guarantee
from streams.clock import Clock
from streams.compat import App, Batches, committed_offset
from streams.gapguard import GapGuard
from streams.settings import Settings
from streams.topics import TopicNames
from tables.handlers import Context, Definitions
from tables.preferences import Links
from tables.readmodel import ReadModel
from tables.registry import Registry, Suppressions
from tables.store import ContactStore

__all__ = ["EXIT_FATAL", "Health", "Worker", "build", "run"]

log = logging.getLogger(__name__)

#: The worker's exit status on every fatal error (EX_SOFTWARE): the record it was on is
#: redone after a restart. 0 is a clean stop (SIGTERM, SIGINT).
EXIT_FATAL = contacts.EXIT_FATAL


@dataclass
class Health:
    """Liveness: progress of the contact agent, judged against the input it has waiting.

    The worker is *stalled* when input is waiting on one of its partitions — records past
    the committed offset (commits follow finished batches within Faust's commit interval)
    — or it has been rebalancing, and no batch has finished for ``stall_after_s``. While
    it is not stalled the liveness file is rewritten every few seconds; a stalled worker
    stops touching it, so a probe that checks the file's age (``dripstream health``)
    fails.
    """

    stall_after_s: float
    last_progress: float = field(default_factory=time.monotonic)
    rebalancing_since: float | None = None
    stalled_since: float | None = None

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def judge(self, lag: int, rebalancing: bool, now: float,
              stuck_since: float | None = None) -> str:
        """``ok``, ``idle``, ``rebalancing`` or ``stalled``. ``stuck_since``: when the
        oldest input hole the gap guard cannot close became stuck (streams/gapguard.py);
        one stuck for ``stall_after_s`` is a stall whatever else progresses."""
        if stuck_since is not None and now - stuck_since >= self.stall_after_s:
            self.stalled_since = self.stalled_since or now
            return "stalled"
        if rebalancing:
            self.rebalancing_since = self.rebalancing_since or now
            if now - self.rebalancing_since < self.stall_after_s:
                self.stalled_since = None
                return "rebalancing"
        else:
            self.rebalancing_since = None
            if lag == 0:
                self.stalled_since = None
                return "idle"
            if now - self.last_progress < self.stall_after_s:
                self.stalled_since = None
                return "ok"
        self.stalled_since = self.stalled_since or now
        return "stalled"


@dataclass
class Worker:
    """Everything one worker process runs, built once by :func:`build`."""

    settings: Settings
    capabilities: Capabilities
    #: The transactional producers, with exactly-once (agents/transactions.py); else None.
    transactions: Transactions | None
    app: App
    clock: Clock
    names: TopicNames
    store: ContactStore
    registry: Registry
    suppressions: Suppressions
    read_model: ReadModel
    gaps: GapGuard
    health: Health
    batches: Batches
    due_index: DueIndex = field(default_factory=lambda: DueIndex())
    #: Set by :func:`build`: how far each partition's input is applied (the timers wait
    #: for it: agents/timers.py).
    input_clock: InputClock = field(init=False)
    #: Set by :func:`build` (it needs the worker's names and settings).
    journal: Journal = field(init=False)
    #: Exactly-once: partition -> the consumer generation in which its read model was
    #: last checked against its committed states (agents/contacts.py: heal_projection).
    #: A batch moves a partition's projection mark only once it has been: a mark moved
    #: first would cover states a dead owner committed and never projected.
    healed: dict[int, int] = field(default_factory=dict)
    #: Tests only (DRIPSTREAM_FAULT): batches that reached each fault point.
    faults: dict[str, int] = field(default_factory=dict)
    #: Set when a clean stop begins: campaign slices are no longer run (their progress
    #: is stored; the next owner goes on from it).
    stopping: bool = False

    def context(self, definitions: Definitions | None = None,
                suppressed: Callable[[str, str], str | None] | None = None) -> Context:
        """What the handlers read: the registry and the suppression list (live), or what a
        batch recorded or a replay gives back (tables/journal.py)."""
        return Context(definitions or self.registry, suppressed or self.suppressions.reason,
                       self.settings.max_causation_depth, self.settings.dedupe_window_s,
                       Links.of(self.settings))


def build(settings: Settings, capabilities: Capabilities) -> Worker:
    """The app and its parts, with the agents, tasks and timers installed, for a broker
    with ``capabilities`` (:func:`streams.capabilities.probe`)."""
    exactly_once = guarantee(settings, capabilities) == "exactly_once"
    app = build_app(settings, capabilities)
    names = TopicNames.of(settings)
    worker = Worker(
        settings=settings,
        capabilities=capabilities,
        transactions=Transactions(settings, MAX_REQUEST_BYTES) if exactly_once else None,
        app=app,
        clock=Clock(settings.clock_offset_file),
        names=names,
        store=ContactStore(app, settings.partitions,
                           rocksdb=settings.store.startswith("rocksdb")),
        registry=Registry(),
        suppressions=Suppressions(),
        read_model=ReadModel(Redis.from_url(settings.redis_url), settings.topic_prefix),
        gaps=GapGuard(),
        health=Health(settings.stall_after_s),
        batches=Batches((names.events, names.routed, names.wakeups, names.control),
                        settings.batch_max),
    )

    worker.journal = Journal(worker)
    worker.input_clock = InputClock((names.events, names.routed))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_journal(app: Any, **kwargs: Any) -> None:
        await worker.journal.stop()

    # Tansu wedges a group whose leader sends LeaveGroup while it re-forms (compat.py):
    # a worker started for it leaves by session expiry (2 s in this profile) instead.
    app.leave_by_expiry = settings.embedded
    if worker.transactions is not None:  # the fence comes before offsets and state
        app.before_assignment = worker.transactions.assign
        app.commits_in_transactions = True

    @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def follow_definitions() -> None:
        await worker.registry.follow(settings, names.definitions, capabilities,
                                     read_committed=capabilities.transactions)

    @app.task  # type: ignore[untyped-decorator]
    async def follow_suppressions() -> None:
        await worker.suppressions.follow(settings, names.suppressions, capabilities,
                                         read_committed=capabilities.transactions)

    contacts.install(worker)
    timers.install(worker)
    campaigns.install(worker)
    observe.install(worker)
    _install_health(worker)
    return worker


def _install_health(worker: Worker) -> None:
    app, settings, health = worker.app, worker.settings, worker.health
    inputs = worker.batches.topics
    path = settings.health_path

    @app.timer(interval=settings.health_interval_s)  # type: ignore[untyped-decorator]
    async def liveness() -> None:
        lag = 0
        tps = [tp for tp in app.assignor.assigned_actives() if tp.topic in inputs]
        if tps and not app.rebalancing:
            try:
                ends = await app.consumer.highwaters(*tps)
            except Exception as exc:  # the broker is away: judged on progress alone
                log.warning("liveness: end offsets unavailable (%r)", exc)
                ends = {}
            for tp, end in ends.items():
                # Committed, not merely seen: a batch taken but never made durable is lag.
                lag += max(0, end - (committed_offset(app, tp) or 0))
        now = time.monotonic()
        stuck = worker.gaps.stuck()
        stuck_since = min((h.stuck_since for h in stuck if h.stuck_since), default=None)
        status = health.judge(lag, bool(app.rebalancing), now, stuck_since)
        holes = asdict(worker.gaps.counts) | {"stuck": len(stuck)}
        if status != "stalled":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"status": status, "lag": lag, "pid": os.getpid(),
                                        "input_holes": holes,
                                        "at": datetime.now(UTC).isoformat()}))
            return
        stalled = now - (health.stalled_since or now)
        if stuck:
            log.warning("stalled: %d input hole(s) stuck (%s); input holes %s", len(stuck),
                        ", ".join(f"{h.topic}[{h.partition}] {h.start}..{h.end - 1}"
                                  for h in stuck), holes)
        else:
            log.warning("stalled: %d input records waiting, no progress for %.0f s", lag,
                        now - health.last_progress)
        if settings.stall_exit_s and stalled >= settings.stall_exit_s:
            log.critical("stalled for %.0f s; exiting (%d) so a supervisor restarts the worker",
                         stalled, EXIT_FATAL)
            os._exit(EXIT_FATAL)


def run(worker: Worker) -> int:
    """Run the worker until it is stopped; the process exit status."""
    from faust.worker import Worker as FaustWorker

    from streams.topics import ensure_topics

    class Quiet(FaustWorker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # Faust's terminal spinner sets the root logger to DEBUG (so it spins on every
            # record): every library's debug call then builds a LogRecord -- 9 % of the
            # worker's time in a profile. A service has no spinner.
            self.spinner = None

    from aiokafka.errors import KafkaError

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(ensure_topics(worker.settings))
    except (KafkaError, OSError) as exc:  # a broker down at start: restart, not a trace
        print(f"dripstream worker: creating topics failed ({exc!r}); exiting {EXIT_FATAL}",
              file=sys.stderr)
        return EXIT_FATAL
    # Everything built so far lives as long as the process: keep it out of the cyclic GC's
    # scans, and collect the young generation every 50k allocations instead of 700 (a batch
    # allocates that many in a few ms). Measured: ingest +15-40 % (docs/performance.md).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        Quiet(worker.app, loglevel=worker.settings.log_level,
              loop=loop).execute_from_commandline()
    except SystemExit as exc:
        if exc.code in (0, None):
            return 0
        print(f"dripstream worker: fatal error (exit {exc.code}); exiting {EXIT_FATAL}",
              file=sys.stderr)
        return EXIT_FATAL
    except Exception:  # Faust's own crashes (seen: its standby recovery, its fetcher on a
        # stop during a rebalance) escape as exceptions: the documented status, not 1.
        log.critical("the worker crashed; exiting %d", EXIT_FATAL, exc_info=True)
        return EXIT_FATAL
    return 0
