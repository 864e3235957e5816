"""``python -m bench`` (``make bench``): dripstream's paths against the Python ceiling.

Every path runs on one broker in one invocation and the report prints figures and ratios
(see ``bench/README.md``). Every wait has a deadline; nothing asserts on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench.harness import (
    Bench,
    Config,
    clean_redis,
    delete_topics,
    make_events,
    pick_redis,
)
from bench.paths import DEFAULT_PATHS, PATHS, contacts
from bench.report import report
from streams.embedded import EmbeddedBroker


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
    p.add_argument("--broker", help="use this bootstrap host:port instead of an embedded Tansu")
    p.add_argument("--profile", choices=("embedded", "production"), default="embedded",
                   help="DRIPSTREAM_PROFILE of the workers (embedded; real Kafka: production)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                   help="read-model Redis; an embedded Valkey is started if it does not answer")
    p.add_argument("--timeout", type=float, default=180.0, help="deadline of each phase, s (180)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    args = p.parse_args(argv)
    if min(args.events, args.latency_events, args.partitions, args.workers,
           args.campaign_contacts) < 1 or min(
            args.rate, args.timeout, args.latency_seconds, args.idle_seconds) <= 0:
        p.error("--events, --latency-events, --partitions, --workers, --campaign-contacts, "
                "--rate, --timeout, --latency-seconds and --idle-seconds must be positive")
    if args.contacts < 0 or args.pyspy < 0:
        p.error("--contacts and --pyspy must not be negative")
    return args


async def run(args: argparse.Namespace, bootstrap: str, broker: EmbeddedBroker | None,
              workdir: Path) -> tuple[str, bool]:
    """The report, and whether a step failed."""
    redis_url, embedded_redis = await pick_redis(args.redis)
    redis_desc = (f"{redis_url}" if embedded_redis is None
                  else f"embedded Valkey {redis_url} (nothing answered at {args.redis})")
    cfg = Config(
        bootstrap=bootstrap, redis_url=redis_url, redis_desc=redis_desc, events=args.events,
        partitions=args.partitions, latency_events=args.latency_events,
        latency_seconds=args.latency_seconds, rate=args.rate,
        workflow_rates=args.workflow_rates, timeout=args.timeout, profile=args.profile,
        workdir=workdir, run_id=uuid.uuid4().hex[:8], workers=args.workers,
        contacts=args.contacts, contacts_stores=args.contacts_stores,
        idle_seconds=args.idle_seconds,
        idle_fetch_waits=tuple(round(w) for w in args.idle_fetch_waits), pyspy=args.pyspy,
        broker_given=broker is None, campaign_contacts=args.campaign_contacts,
        recovery_contacts=args.recovery_contacts)
    desc = f"embedded Tansu {bootstrap}" if broker else f"{bootstrap} (given)"
    bench = Bench(cfg, make_events(cfg.events, cfg.run_id), desc,
                  broker.pid if broker else None)
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (name, functools.partial(PATHS[name], bench)) for name in args.paths]
    if cfg.contacts:
        steps += [(f"contacts ({store})", functools.partial(contacts, bench, store))
                  for store in cfg.contacts_stores]
    try:
        for name, step in steps:
            print(f"... {name}", file=sys.stderr, flush=True)
            try:
                await step()
            except Exception as exc:  # a crashed worker: report it, measure the rest
                bench.failures.append(f"{name} FAILED: {type(exc).__name__}: {exc}")
                print(f"... {name} failed: {exc}", file=sys.stderr, flush=True)
        return report(bench), bool(bench.failures)
    finally:
        with contextlib.suppress(Exception):
            await clean_redis(redis_url, cfg.run_id)
        if broker is None:
            with contextlib.suppress(Exception):
                await delete_topics(bootstrap, cfg.run_id)
        if embedded_redis is not None:
            await asyncio.to_thread(embedded_redis.stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dripstream-bench-"))
    broker: EmbeddedBroker | None = None
    ok = False
    try:
        if args.broker:
            bootstrap = args.broker.split("://")[-1]
        else:
            broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
            bootstrap = broker.bootstrap
        text, failed = asyncio.run(run(args, bootstrap, broker, workdir))
        print(text)
        ok = not failed
    finally:
        if broker is not None:
            broker.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
