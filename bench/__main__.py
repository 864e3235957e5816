"""``python -m bench`` (``make bench``): dripstream's paths against the Python ceiling.

Every path runs on one broker in one invocation and the report prints figures and ratios
(see ``bench/README.md``). Every wait has a deadline; nothing asserts on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from bench.harness import (
    Bench,
    Config,
    clean_redis,
    delete_topics,
    guarantee_mismatches,
    machine_cpu,
    make_events,
    pick_redis,
)
from bench.paths import DEFAULT_PATHS, PATHS, contacts
from bench.report import report
from streams.apache_kafka import KAFKA_VERSION, KafkaCluster, KafkaUnavailable
from streams.capabilities import Capabilities, GuaranteeError, guarantee, probe
from streams.embedded import EmbeddedBroker
from streams.settings import Settings


def _numbers(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"want positive numbers: {text!r}")
    return values


def _stores(text: str) -> tuple[str, ...]:
    stores = tuple(x.strip() for x in text.split(",") if x.strip())
    if not stores or set(stores) - {"memory", "rocksdb"}:
        raise argparse.ArgumentTypeError(f"stores are memory and/or rocksdb: {text!r}")
    return stores


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split(
        "\n\n")[0])
    p.add_argument("--paths", nargs="*", choices=tuple(PATHS), default=list(DEFAULT_PATHS),
                   help=f"paths to run (default: {' '.join(DEFAULT_PATHS)}; none: only "
                        "--contacts)")
    p.add_argument("--events", type=int, default=20000, help="throughput events (20000)")
    p.add_argument("--partitions", type=int, default=8, help="partitions (8)")
    p.add_argument("--rate", type=float, default=500.0,
                   help="latency phase events/s of raw and the ingest paths (500)")
    p.add_argument("--workflow-rates", type=_numbers, default=(100.0, 2000.0, 5000.0),
                   help="offered rates of the workflow latency phases (100,2000,5000)")
    p.add_argument("--latency-events", type=int, default=2000,
                   help="events of a latency phase, at least (2000)")
    p.add_argument("--latency-seconds", type=float, default=4.0,
                   help="... and enough to last this long at the phase's rate (4)")
    p.add_argument("--workers", type=int, default=2,
                   help="ingest and workflow throughput and the campaign fan-out again with "
                        "N workers in one group (2; 1 = off)")
    p.add_argument("--contacts", type=int, default=0,
                   help="memory mode: N contacts of realistic state through one worker "
                        "(0 = off; e.g. 100000)")
    p.add_argument("--campaign-contacts", type=int, default=100_000,
                   help="campaign path: contacts of the account, ingested before the "
                        "campaign fires (100000)")
    p.add_argument("--recovery-contacts", type=int, default=200_000,
                   help="contacts in the table for the recovery path (200000)")
    p.add_argument("--sim-events", type=int, default=1_000_000,
                   help="simulate path: events of the recorded window (1000000)")
    p.add_argument("--sim-contacts", type=int, default=100_000,
                   help="simulate path: contacts they are for, a contact.created each "
                        "first (100000)")
    p.add_argument("--sim-rate", type=float, default=0.0,
                   help="simulate path: produce the events at this rate while the worker "
                        "runs (0 = a backlog produced first, the worker's capacity)")
    p.add_argument("--contacts-stores", type=_stores, default=("memory",),
                   help="table stores of the memory mode: memory,rocksdb (memory)")
    p.add_argument("--idle-seconds", type=float, default=30.0,
                   help="idle path: CPU sampling window per fetch wait (30)")
    p.add_argument("--idle-fetch-waits", type=_numbers, default=(10.0, 50.0, 100.0, 250.0),
                   help="idle path: DRIPSTREAM_FETCH_MAX_WAIT_MS values besides the "
                        "default (10,50,100,250)")
    p.add_argument("--pyspy", type=float, default=0.0, metavar="SECONDS",
                   help="record the worker with py-spy for SECONDS during the ingest and "
                        "workflow throughput phases (0 = off)")
    p.add_argument("--broker", help="kafka: start an Apache Kafka node here (needs Java 17+ "
                                    "and Maven); HOST:PORT: use that broker (default: start "
                                    "an embedded Tansu)")
    p.add_argument("--profile", choices=("embedded", "production"), default="embedded",
                   help="DRIPSTREAM_PROFILE of the workers (embedded; a given production "
                        "Kafka: production)")
    p.add_argument("--guarantee", choices=("auto", "exactly_once", "at_least_once"),
                   default="auto", help="DRIPSTREAM_GUARANTEE of the workers (auto: "
                                        "exactly-once where the broker has transactions)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                   help="read-model Redis; an embedded Valkey is started if it does not answer")
    p.add_argument("--timeout", type=float, default=180.0, help="deadline of each phase, s (180)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    p.add_argument("--categories", action="store_true",
                   help="workflow paths: the policy declares message categories (one with "
                        "caps) and the send names one, so the gate reads the contact's "
                        "preferences and the category's caps (docs/preferences.md)")
    args = p.parse_args(argv)
    if min(args.events, args.latency_events, args.partitions, args.workers,
           args.campaign_contacts) < 1 or min(
            args.rate, args.timeout, args.latency_seconds, args.idle_seconds) <= 0:
        p.error("--events, --latency-events, --partitions, --workers, --campaign-contacts, "
                "--rate, --timeout, --latency-seconds and --idle-seconds must be positive")
    if not 1 <= args.sim_contacts <= args.sim_events or args.sim_rate < 0:
        p.error("--sim-contacts must be positive and at most --sim-events, --sim-rate not "
                "negative")
    if args.contacts < 0 or args.pyspy < 0:
        p.error("--contacts and --pyspy must not be negative")
    return args


@dataclasses.dataclass(frozen=True)
class Broker:
    """The broker of a run: its bootstrap, kind (``Config.broker``), description and, if
    this run started it, its process."""

    bootstrap: str
    kind: str
    desc: str
    pid: int | None = None


async def choose_guarantee(bootstrap: str, run_id: str, wanted: str
                           ) -> tuple[Capabilities, str]:
    """What the workers will run with ``DRIPSTREAM_GUARANTEE=wanted`` on this broker,
    decided as they decide it (:mod:`streams.capabilities`: the broker is asked, not
    guessed from its name). Raises :class:`GuaranteeError` (exactly_once on Tansu)."""
    settings = Settings(broker=f"kafka://{bootstrap}", topic_prefix=f"bench{run_id}.",
                        guarantee=cast(Any, wanted))
    log = logging.getLogger("aiokafka")  # a refused InitProducerId is an answer here
    disabled, log.disabled = log.disabled, True
    try:
        capabilities = await probe(settings)
    finally:
        log.disabled = disabled
    return capabilities, guarantee(settings, capabilities)


async def run(args: argparse.Namespace, broker: Broker, workdir: Path, run_id: str,
              capabilities: Capabilities, chosen: str) -> tuple[str, bool]:
    """The report, and whether a step failed."""
    redis_url, embedded_redis = await pick_redis(args.redis)
    redis_desc = (f"{redis_url}" if embedded_redis is None
                  else f"embedded Valkey {redis_url} (nothing answered at {args.redis})")
    cfg = Config(
        bootstrap=broker.bootstrap, redis_url=redis_url, redis_desc=redis_desc,
        events=args.events, partitions=args.partitions, latency_events=args.latency_events,
        latency_seconds=args.latency_seconds, rate=args.rate,
        workflow_rates=args.workflow_rates, timeout=args.timeout, profile=args.profile,
        workdir=workdir, run_id=run_id, workers=args.workers,
        contacts=args.contacts, contacts_stores=args.contacts_stores,
        idle_seconds=args.idle_seconds,
        idle_fetch_waits=tuple(round(w) for w in args.idle_fetch_waits), pyspy=args.pyspy,
        categories=args.categories,
        broker=broker.kind, broker_pid=broker.pid, campaign_contacts=args.campaign_contacts,
        recovery_contacts=args.recovery_contacts, sim_events=args.sim_events,
        sim_contacts=args.sim_contacts, sim_rate=args.sim_rate, guarantee=args.guarantee,
        exactly_once=chosen == "exactly_once",
        exact_ends=capabilities.exact_end_offsets)
    desc = f"{broker.desc} ({capabilities.describe()})"
    bench = Bench(cfg, make_events(cfg.events, cfg.run_id), desc)
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (name, functools.partial(PATHS[name], bench)) for name in args.paths]
    if cfg.contacts:
        steps += [(f"contacts ({store})", functools.partial(contacts, bench, store))
                  for store in cfg.contacts_stores]
    try:
        for name, step in steps:
            print(f"... {name}", file=sys.stderr, flush=True)
            busy, own = machine_cpu()
            started = time.monotonic()
            try:
                await step()
            except Exception as exc:  # a crashed worker: report it, measure the rest
                bench.failures.append(f"{name} FAILED: {type(exc).__name__}: {exc}")
                print(f"... {name} failed: {exc}", file=sys.stderr, flush=True)
            finally:
                busy_after, own_after = machine_cpu()
                others = (busy_after - busy) - (own_after - own)
                bench.others.append((name, others / max(1e-9, time.monotonic() - started)))
        bench.failures += guarantee_mismatches(cfg)
        return report(bench), bool(bench.failures)
    finally:
        with contextlib.suppress(Exception):
            await clean_redis(redis_url, cfg.run_id)
        if cfg.broker_given:
            with contextlib.suppress(Exception):
                await delete_topics(broker.bootstrap, cfg.run_id)
        if embedded_redis is not None:
            await asyncio.to_thread(embedded_redis.stop)


def start_broker(args: argparse.Namespace, workdir: Path,
                 started: list[EmbeddedBroker | KafkaCluster]) -> Broker:
    """The run's broker: given, an Apache Kafka node or an embedded Tansu started here
    (appended to ``started``, for the caller to stop)."""
    if args.broker == "kafka":
        cluster = KafkaCluster(workdir / "kafka", nodes=1)
        started.append(cluster)
        cluster.start()
        node = cluster.nodes[0]
        return Broker(cluster.bootstrap, "kafka",
                      f"Apache Kafka {KAFKA_VERSION}, one KRaft node started here "
                      f"{cluster.bootstrap} (heap {cluster.heap})",
                      node.proc.pid if node.proc else None)
    if args.broker:
        bootstrap = args.broker.split("://")[-1]
        return Broker(bootstrap, "given", f"{bootstrap} (given)")
    tansu = EmbeddedBroker(log_path=workdir / "tansu.log")
    started.append(tansu)
    tansu.start()
    return Broker(tansu.bootstrap, "tansu", f"embedded Tansu {tansu.bootstrap}", tansu.pid)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dripstream-bench-"))
    started: list[EmbeddedBroker | KafkaCluster] = []
    ok = refused = False
    try:
        run_id = uuid.uuid4().hex[:8]
        broker = start_broker(args, workdir, started)
        capabilities, chosen = asyncio.run(choose_guarantee(broker.bootstrap, run_id,
                                                            args.guarantee))
        text, failed = asyncio.run(run(args, broker, workdir, run_id, capabilities, chosen))
        print(text)
        ok = not failed
    except (KafkaUnavailable, GuaranteeError) as exc:
        # One line, exit 2: Java or Maven missing (or the node would not start: its log is
        # kept), or --guarantee exactly_once on a broker without transactions.
        print(f"python -m bench: {exc}", file=sys.stderr)
        refused = True
    finally:
        for broker_process in reversed(started):
            broker_process.stop()
        if (ok and not args.keep) or (refused and not (workdir / "kafka").exists()):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return 2 if refused else 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
