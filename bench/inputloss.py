"""``python -m bench.inputloss``: does a consumer lose fetched input when workers are
SIGKILLed and restarted with a backlog under CPU load? Checked record for record.

The same load for every mode: a topic with a backlog, two consumer processes in one group,
more records produced all along, one of the two SIGKILLed and restarted every few seconds
(each restart is a rebalance for the survivor and a join with a backlog for the new
process), and ``--busy`` busy loops taking CPU beside them. Then no more kills, the two
drain the topic until the group has committed every partition's end, and every offset of
the topic is looked up in what the processes say they processed: an offset nobody
processed, below a committed offset, is a **lost record**.

Modes (``--modes``):

- ``raw`` — a plain aiokafka consumer (``getmany``, process, ``commit`` after processing):
  is the broker (Tansu) losing records?
- ``faust`` — faust-streaming alone, its own per-record path (an agent iterating
  ``stream.events()``), with a table like the engine's so recovery runs the same way;
- ``engine`` — ``dripstream worker`` processes as they are (batch drain, gap guard); an
  event is processed when its contact is in the read model. Its gap-guard log lines (holes
  found and rewound) are counted too: each is a loss the guard had to repair.

Each processed record is written (``partition offset``, one ``os.write`` of an
``O_APPEND`` file) before it can be acked, so a SIGKILL never hides one. ``--trace`` makes
the Faust workers log their seeks, commits, gaps and acks of unprocessed records (for
finding the cause; see docs/reliability.md).

    .venv/bin/python -m bench.inputloss                      # every mode, 3 runs each
    .venv/bin/python -m bench.inputloss --modes faust --runs 5 --trace --keep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("raw", "faust", "engine")
ACCOUNT = "loss"
#: The engine's gap-guard log lines (agents/contacts.py).
GUARD_LINE = re.compile(r"never reached the agent|but the agent is at|still missing after")


# ----------------------------------------------------------------------------- workers
# Run as ``python -m bench.inputloss worker MODE BOOTSTRAP TOPIC GROUP PARTITIONS OUT``.

def _append(out: str) -> Any:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(partition: int, offset: int) -> None:
        os.write(fd, b"%d %d\n" % (partition, offset))

    return write


def raw_worker(bootstrap: str, topic: str, group: str, out: str) -> None:
    """Consume, write each record, commit what was written; a failed commit (the group
    rebalanced) leaves the records to be read again."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
    from aiokafka.structs import OffsetAndMetadata

    write = _append(out)

    async def main() -> None:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=2000, heartbeat_interval_ms=500,
            rebalance_timeout_ms=2000, request_timeout_ms=5000, fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                offsets = {}
                for tp, records in batch.items():
                    for record in records:
                        write(tp.partition, record.offset)
                    offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
                if offsets:
                    with contextlib.suppress(CommitFailedError, IllegalStateError, KafkaError):
                        await consumer.commit(offsets)
        finally:
            await consumer.stop()

    asyncio.run(main())


def faust_worker(bootstrap: str, topic: str, group: str, partitions: int, out: str,
                 *, trace: bool) -> None:
    """faust-streaming's own path: an agent iterating ``stream.events()``, with a table
    (updated per record, so recovery and the changelog run as in the engine)."""
    import logging

    import faust
    from faust.worker import Worker

    write = _append(out)
    if trace:
        _trace_faust(logging.getLogger("inputloss.trace"))
    app = faust.App(
        group, broker=f"kafka://{bootstrap}", store="memory://", topic_partitions=partitions,
        consumer_auto_offset_reset="earliest", key_serializer="raw", value_serializer="raw",
        broker_session_timeout=2.0, broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=2.0, broker_request_timeout=5.0, web_enabled=False,
        autodiscover=False, table_standby_replicas=0,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, partitions=partitions)
    seen = app.Table("seen", default=int, partitions=partitions, key_type=bytes,
                     value_type=int)

    @app.agent(source)
    async def process(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            write(message.partition, message.offset)
            seen[event.key] = message.offset

    class Quiet(Worker):  # type: ignore[misc]
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            self.spinner = None

    Quiet(app, loglevel="info").execute_from_commandline()


def engine_worker(trace: bool) -> int:
    """``dripstream worker`` (the engine as it is), with the Faust trace if asked."""
    import asyncio
    import logging

    from agents.worker import build, run
    from streams.capabilities import probe
    from streams.settings import Settings

    if trace:
        _trace_faust(logging.getLogger("inputloss.trace"))
        _trace_engine(logging.getLogger("inputloss.trace"))
    settings = Settings()
    return run(build(settings, asyncio.run(probe(settings))))


def _trace_engine(log: Any) -> None:
    """Log the batches between the drain and the agent (source topic only)."""
    from agents import contacts
    from streams import compat

    put, take, compute = compat.Batches.put, compat.Batches.__anext__, contacts.compute

    def ranges(batch: list[Any]) -> str:
        seen: dict[int, list[int]] = {}
        for m in batch:
            if m.topic.endswith("contact-events"):
                seen.setdefault(m.partition, []).append(m.offset)
        return " ".join(f"{p}:{v[0]}..{v[-1]}" for p, v in sorted(seen.items()))

    async def traced_put(self: Any, batch: list[Any]) -> None:
        log.warning("TRACE put %d (queue %d) %s", len(batch), self._queue.qsize(),
                    ranges(batch))
        await put(self, batch)

    async def traced_take(self: Any) -> Any:
        batch = await take(self)
        log.warning("TRACE take %s", len(batch) if isinstance(batch, list) else "slice")
        return batch

    async def traced_compute(worker: Any, batch: list[Any], previous: Any = None) -> Any:
        cycle = await compute(worker, batch, previous)
        gen = worker.app.consumer_generation_id
        log.warning("TRACE compute %d records, %d acked, %d of another generation (%s)",
                    len(batch), len(cycle.acks),
                    sum(1 for m in batch if m.generation_id != gen),
                    {m.generation_id for m in batch})
        return cycle

    compat.Batches.put, compat.Batches.__anext__ = traced_put, traced_take  # type: ignore
    contacts.compute = traced_compute  # type: ignore[assignment]


def _trace_faust(log: Any) -> None:
    """Log what moves a Faust consumer's offsets, for the source topic only: records
    fetched for a partition Faust does not consider active (getmany drops them), seeks,
    commits, gaps, and acks of records never handed to the agent."""
    from faust.transport import consumer as base

    cls = base.Consumer
    seek, add_gap, commit_offsets, ack = (cls.seek, cls._add_gap, cls._commit_offsets,
                                          cls.ack)
    perform_seek, wait_next = cls.perform_seek, cls._wait_next_records

    def source(self: Any, tp: Any) -> bool:
        return "changelog" not in tp.topic and "__assignor" not in tp.topic

    def show(self: Any, offsets: Any) -> dict[str, Any]:
        return {f"{tp.topic[-6:]}/{tp.partition}": o for tp, o in sorted(offsets.items())
                if source(self, tp)}

    async def traced_wait_next(self: Any, timeout: float) -> Any:  # noqa: ASYNC109
        records, active = await wait_next(self, timeout)
        if records:
            dropped = {f"{tp.topic[-6:]}/{tp.partition}": f"{r[0].offset}..{r[-1].offset}"
                       for tp, r in records.items() if source(self, tp) and (
                           not self.flow_active or (active is not None and tp not in active
                                                    and tp not in self._buffered_partitions))}
            if dropped:
                log.warning("TRACE fetched-then-dropped %s flow=%s active=%d", dropped,
                            self.flow_active, len(active or ()))
        return records, active

    async def traced_seek(self: Any, partition: Any, offset: int) -> None:
        log.warning("TRACE seek %s -> %s", partition, offset)
        await seek(self, partition, offset)

    async def traced_perform_seek(self: Any) -> None:
        await perform_seek(self)
        consumer = self._thread._consumer
        assignment = consumer._subscription.subscription.assignment
        positions = {} if assignment is None else {
            tp: assignment.state_value(tp).position for tp in assignment.tps
            if assignment.state_value(tp).has_valid_position}
        log.warning("TRACE perform_seek read_offset=%s committed=%s positions=%s",
                    show(self, self._read_offset), show(self, self._committed_offset),
                    show(self, positions))

    async def traced_add_gap(self: Any, tp: Any, start: int, end: int) -> None:
        log.warning("TRACE gap %s %s..%s (committed %s)", tp, start, end,
                    self._committed_offset[tp])
        await add_gap(self, tp, start, end)

    async def traced_commit(self: Any, offsets: Any, **kwargs: Any) -> bool:
        log.warning("TRACE commit %s gen=%s", show(self, offsets),
                    self.app.consumer_generation_id)
        return bool(await commit_offsets(self, offsets, **kwargs))

    def traced_ack(self: Any, message: Any) -> bool:
        app = self.app
        if (message.generation_id != app.consumer_generation_id
                or not app.flow_control.is_active()):
            log.warning("TRACE ack-unprocessed %s@%s gen=%s/%s flow=%s", message.tp,
                        message.offset, message.generation_id, app.consumer_generation_id,
                        app.flow_control.is_active())
        return bool(ack(self, message))

    cls.seek, cls._add_gap, cls._commit_offsets = traced_seek, traced_add_gap, traced_commit
    cls.ack, cls.perform_seek = traced_ack, traced_perform_seek
    cls._wait_next_records = traced_wait_next


# ------------------------------------------------------------------------------ runner

@dataclass
class Run:
    mode: str
    records: int = 0
    lost: dict[int, list[int]] = field(default_factory=dict)
    guard_lines: int = 0
    kills: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def lost_count(self) -> int:
        return sum(len(v) for v in self.lost.values())


def _ranges(offsets: list[int]) -> str:
    out: list[str] = []
    for offset in sorted(offsets):
        if out and offset == int(out[-1].split("..")[-1]) + 1:
            out[-1] = f"{out[-1].split('..')[0]}..{offset}"
        else:
            out.append(str(offset))
    return ", ".join(out[:6]) + (" …" if len(out) > 6 else "")


def _busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    """The CPU load: ``count`` processes spinning."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


class Harness:
    def __init__(self, args: argparse.Namespace, bootstrap: str, workdir: Path) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.workdir = workdir

    def _env(self, prefix: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update({
            "DRIPSTREAM_BROKER": f"kafka://{self.bootstrap}",
            "DRIPSTREAM_PROFILE": "embedded" if self.args.embedded else "production",
            "DRIPSTREAM_TOPIC_PREFIX": prefix,
            "DRIPSTREAM_PARTITIONS": str(self.args.partitions),
            "DRIPSTREAM_REDIS_URL": self.args.redis,
            "DRIPSTREAM_METRICS_PORT": "0",  # several workers on one host
            "DRIPSTREAM_LOG_LEVEL": "info",
        })
        return env

    def _spawn(self, mode: str, prefix: str, name: str, tag: str) -> subprocess.Popen[bytes]:
        env = self._env(prefix)
        log = open(self.workdir / f"{tag}-{name}.log", "ab")
        if mode == "engine":
            env["DRIPSTREAM_DATA_DIR"] = str(self.workdir / f"data-{tag}-{name}")
            cmd = [sys.executable, "-m", "bench.inputloss", "worker", "engine"] + (
                ["--trace"] if self.args.trace else [])
        else:
            out = self.workdir / f"{tag}-{name}.out"
            cmd = [sys.executable, "-m", "bench.inputloss", "worker", mode, self.bootstrap,
                   f"{prefix}contact-events", f"{prefix}group", str(self.args.partitions),
                   str(out)] + (["--trace"] if self.args.trace else [])
        try:
            return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    async def run(self, mode: str, n: int) -> Run:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        from producers.publisher import Publisher, build_event
        from streams.embedded import read_to_end, topic_ends
        from streams.settings import Settings
        from streams.topics import ensure_topics

        args = self.args
        prefix = f"il{uuid.uuid4().hex[:8]}."
        tag = f"{mode}-{n}"
        settings = Settings(broker=f"kafka://{self.bootstrap}", topic_prefix=prefix,
                            partitions=args.partitions, redis_url=args.redis,
                            profile="embedded" if args.embedded else "production")
        await ensure_topics(settings)
        result = Run(mode)
        started = time.monotonic()
        publisher = Publisher(self.bootstrap, topic_prefix=prefix)
        await publisher.__aenter__()
        sent = [0]

        async def produce(count: int) -> None:
            base = sent[0]
            sent[0] += count
            await publisher.send_many([
                build_event(ACCOUNT, f"c-{base + i}", "contact.created", {},
                            event_id=f"e-{base + i}") for i in range(count)])

        await produce(args.backlog)
        names = [f"w{i}" for i in range(args.workers)]
        procs = {name: self._spawn(mode, prefix, name, tag) for name in names}
        incarnation = dict.fromkeys(names, 0)
        busy = _busy_loops(args.busy)
        stop_producing = asyncio.Event()

        async def trickle() -> None:
            while not stop_producing.is_set():
                await produce(max(1, int(args.rate / 10)))
                await asyncio.sleep(0.1)

        trickler = asyncio.ensure_future(trickle())
        try:
            rng = random.Random(n)
            await asyncio.sleep(args.first_kill)
            for k in range(args.kills):
                name = names[k % len(names)]
                procs[name].kill()
                procs[name].wait()
                result.kills += 1
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                incarnation[name] += 1
                procs[name] = self._spawn(mode, prefix, f"{name}.{incarnation[name]}", tag)
                await asyncio.sleep(rng.uniform(args.kill_every / 2, args.kill_every))
            stop_producing.set()
            await trickler
            for proc in busy:
                proc.kill()
            busy = []
            await publisher.flush()
            # Drain: both processes run on until the group committed every partition's end.
            topic = f"{prefix}contact-events"
            tps = [TopicPartition(topic, p) for p in range(args.partitions)]
            probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                     group_id=settings.group_id if mode == "engine"
                                     else f"{prefix}group", enable_auto_commit=False)
            await probe.start()
            try:
                ends = await topic_ends(probe, tps, embedded=args.embedded)
                deadline = time.monotonic() + args.drain_timeout
                while True:
                    committed = {tp: (await probe.committed(tp)) or 0 for tp in tps}
                    if all(committed[tp] >= ends[tp] for tp in tps):
                        break
                    if time.monotonic() > deadline:
                        result.error = ("drain timed out: committed "
                                        f"{sum(committed.values())} of {sum(ends.values())}")
                        break
                    for name, proc in procs.items():  # a worker that exited: restart it
                        if proc.poll() is not None:
                            incarnation[name] += 1
                            procs[name] = self._spawn(mode, prefix,
                                                      f"{name}.{incarnation[name]}", tag)
                    await asyncio.sleep(1.0)
            finally:
                await probe.stop()
            if mode == "engine":
                await asyncio.sleep(1.0)  # the read model follows the commit's batch
            records = await read_to_end(self.bootstrap, topic, args.partitions,
                                        embedded=args.embedded, max_seconds=60)
            result.records = len(records)
            processed = await self._processed(mode, prefix, tag, records)
            lost: dict[int, list[int]] = defaultdict(list)
            for record in records:
                tp = TopicPartition(topic, record.partition)
                if (record.partition, record.offset) not in processed and \
                        record.offset < committed[tp]:
                    lost[record.partition].append(record.offset)
            result.lost = dict(lost)
        finally:
            stop_producing.set()
            trickler.cancel()
            for proc in [*busy, *procs.values()]:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            await publisher.__aexit__(None, None, None)
            await self._clean(mode, prefix)
        result.guard_lines = sum(
            len(GUARD_LINE.findall(path.read_text(errors="replace")))
            for path in self.workdir.glob(f"{tag}-*.log"))
        result.seconds = time.monotonic() - started
        return result

    async def _processed(self, mode: str, prefix: str, tag: str,
                         records: list[Any]) -> set[tuple[int, int]]:
        if mode != "engine":
            done: set[tuple[int, int]] = set()
            for path in self.workdir.glob(f"{tag}-*.out"):
                for line in path.read_bytes().splitlines():
                    p, o = line.split()
                    done.add((int(p), int(o)))
            return done
        from redis.asyncio import Redis

        from tables.readmodel import ReadModel

        redis = Redis.from_url(self.args.redis)
        try:
            ids = await ReadModel(redis, prefix).contact_ids(ACCOUNT)
        finally:
            await redis.aclose()
        return {(r.partition, r.offset) for r in records if r.key.decode() in ids}

    async def _clean(self, mode: str, prefix: str) -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(self.args.redis)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await redis.unlink(*keys[start:start + 1000])
        finally:
            await redis.aclose()


def report(results: dict[str, list[Run]]) -> str:
    lines = ["", "mode          runs  with loss  lost records  guard lines  records/run  "
             "kills/run"]
    for mode, runs in results.items():
        lossy = sum(1 for r in runs if r.lost_count)
        lines.append(
            f"{mode:<12}  {len(runs):>4}  {lossy:>4}/{len(runs):<4}  "
            f"{sum(r.lost_count for r in runs):>12}  {sum(r.guard_lines for r in runs):>11}  "
            f"{sum(r.records for r in runs) // max(1, len(runs)):>11}  "
            f"{sum(r.kills for r in runs) // max(1, len(runs)):>9}")
    for mode, runs in results.items():
        for n, r in enumerate(runs):
            detail = "; ".join(f"p{p}: {_ranges(v)}" for p, v in sorted(r.lost.items()))
            note = f" ERROR {r.error}" if r.error else ""
            lines.append(f"  {mode} #{n}: {r.records} records, {r.lost_count} lost"
                         f"{' (' + detail + ')' if detail else ''}, {r.guard_lines} guard "
                         f"lines, {r.seconds:.0f} s{note}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.inputloss",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--runs", type=int, default=3, help="runs per mode (3)")
    p.add_argument("--kills", type=int, default=6, help="SIGKILLs per run (6)")
    p.add_argument("--kill-every", type=float, default=6.0,
                   help="seconds between kills, at most (6; at least half of it)")
    p.add_argument("--first-kill", type=float, default=2.0,
                   help="seconds to the first kill (2: before the first commit, like a "
                        "worker that crashes on its first batch)")
    p.add_argument("--backlog", type=int, default=20000, help="records before the start")
    p.add_argument("--rate", type=float, default=1500.0, help="records/s produced meanwhile")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--busy", type=int, default=2, help="busy-loop processes (2)")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--broker", help="bootstrap host:port (default: a fresh embedded Tansu)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--trace", action="store_true", help="Faust workers log seeks, commits, …")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    args.embedded = args.broker is None
    return args


async def main(args: argparse.Namespace) -> int:
    from streams.embedded import EmbeddedBroker

    workdir = Path(tempfile.mkdtemp(prefix="inputloss-"))
    broker = None
    if args.broker is None:
        broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    bootstrap = args.broker or broker.bootstrap  # type: ignore[union-attr]
    results: dict[str, list[Run]] = {}
    try:
        harness = Harness(args, bootstrap, workdir)
        for n in range(args.runs):  # interleaved: the machine's load changes over time
            for mode in args.modes:
                run = await harness.run(mode, n)
                results.setdefault(mode, []).append(run)
                print(f"{mode} #{n}: {run.records} records, {run.lost_count} lost, "
                      f"{run.guard_lines} guard lines{' ERROR ' + run.error if run.error else ''}",
                      flush=True)
    finally:
        if broker is not None:
            broker.stop()
        print(report(results))
        if args.keep or any(r.lost_count or r.error for rs in results.values() for r in rs):
            print(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _worker(argv: list[str]) -> None:
    if argv[0] == "engine":
        sys.exit(engine_worker("--trace" in argv))
    mode, bootstrap, topic, group, partitions, out, *rest = argv
    # Faust reads sys.argv for its own command line ("worker").
    sys.argv = [sys.argv[0], "worker"]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if mode == "raw":
        raw_worker(bootstrap, topic, group, out)
    else:
        faust_worker(bootstrap, topic, group, int(partitions), out, trace="--trace" in rest)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker(sys.argv[2:])
    else:
        sys.exit(asyncio.run(main(parse_args())))
