"""The ``recovery`` path: how long a worker takes to process again after a restart, and a
partition to move to another worker when its owner dies, with N contacts in the table.

- **restart**: one worker applies ``--recovery-contacts`` contacts (one ``contact.created``
  each), its input committed; SIGKILL; a new worker starts (the same data directory: a
  ``rocksdb://`` store keeps what it had) and one probe event per partition is published
  at once. Measured from the start: the first probe applied (in the read model) and the
  last one — every partition processing again.
- **failover**: two workers in a group apply the contacts; SIGKILL one; one probe per
  partition. Measured from the kill: the first probe of the dead worker's partitions
  applied by the survivor and the last — with ``DRIPSTREAM_STANDBY_REPLICAS`` 0 and 1.

Each for the stores asked for (``--contacts-stores``, default memory; rocksdb needs
``rocksdict``). Times include the embedded broker's group timing (a 2 s session: a dead
member is noticed after ~2 s).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer

from bench.harness import (
    ACCOUNT,
    Bench,
    BenchWorker,
    Config,
    campaign_contacts,
    consumed_ends,
    murmur2_partition,
    prepare,
    produce_all,
    read_model_contacts,
    start_group,
    stop_all,
    tps_of,
)
from producers.publisher import build_event
from tables.readmodel import ReadModel

__all__ = ["RecoveryResult", "recovery"]

#: A probe applied later than this after the kill was on a partition that had to move.
MOVED_AFTER_S = 1.0


@dataclass
class RecoveryResult:
    label: str
    store: str
    contacts: int
    first_s: float | None = None
    all_s: float | None = None
    rss: int | None = None
    notes: list[str] = field(default_factory=list)


def _probes(cfg: Config, tag: str) -> dict[int, str]:
    """A fresh contact id on each partition."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < cfg.partitions:
        contact = f"{cfg.run_id}-{tag}-{n}"
        found.setdefault(murmur2_partition(contact.encode(), cfg.partitions), contact)
        n += 1
    return found


async def _publish_probes(cfg: Config, prefix: str, probes: dict[int, str]) -> None:
    records = [(c.encode(), orjson.dumps(build_event(ACCOUNT, c, "contact.updated",
                                                     {"attributes": {"probe": True}})))
               for c in probes.values()]
    await produce_all(cfg.bootstrap, f"{prefix}contact-events", records)


async def _applied(cfg: Config, prefix: str, probes: dict[int, str], since: float,
                   deadline: float) -> dict[int, float]:
    """Seconds from ``since`` until each probe's contact is in the read model."""
    from redis.asyncio import Redis

    redis = Redis.from_url(cfg.redis_url)
    model = ReadModel(redis, prefix)
    seen: dict[int, float] = {}
    try:
        while len(seen) < len(probes) and time.monotonic() < deadline:
            for partition, contact in probes.items():
                if partition not in seen and await model.get_state(ACCOUNT, contact):
                    seen[partition] = time.monotonic() - since
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
    return seen


async def _committed(cfg: Config, group: str, topic: str, deadline: float) -> None:
    """Until the group has committed every input record (a restart then replays none)."""
    tps = tps_of(topic, cfg.partitions)
    ends = await consumed_ends(cfg, tps)
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        while time.monotonic() < deadline:
            offsets = {tp: await consumer.committed(tp) for tp in tps}
            if all((offsets[tp] or 0) >= ends[tp] for tp in tps):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{group} did not commit {topic} to its end")
    finally:
        await consumer.stop()


async def _load(cfg: Config, prefix: str, workers: list[BenchWorker], deadline: float) -> None:
    await produce_all(cfg.bootstrap, f"{prefix}contact-events",
                      campaign_contacts(cfg.run_id, cfg.recovery_contacts, every=10**9))
    while await read_model_contacts(cfg.redis_url, prefix) < cfg.recovery_contacts:
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError("the contacts were not all applied")
        await asyncio.sleep(0.5)
    await _committed(cfg, f"{prefix}worker", f"{prefix}contact-events", deadline)


def _result(label: str, store: str, n: int, seen: dict[int, float], wanted: set[int]
            ) -> RecoveryResult:
    result = RecoveryResult(label, store, n)
    times = [seen[p] for p in wanted if p in seen]
    if times:
        result.first_s, result.all_s = min(times), max(times)
    if len(times) < len(wanted):
        result.notes.append(f"{len(wanted) - len(times)} of {len(wanted)} partitions did "
                            "not process a probe before the deadline")
    return result


async def _restart(bench: Bench, store: str) -> None:
    cfg = bench.cfg
    s = await prepare(cfg, cfg.prefix(f"restart-{store}"))
    prefix = s.topic_prefix
    deadline = time.monotonic() + cfg.timeout + cfg.recovery_contacts / 500
    worker = BenchWorker(cfg, prefix, store=f"{store}://").start()
    try:
        await _load(cfg, prefix, [worker], deadline)
    finally:
        await asyncio.to_thread(worker.process.kill, signal.SIGKILL)
    again = BenchWorker(cfg, prefix, store=f"{store}://").start()
    since = time.monotonic()
    try:
        probes = _probes(cfg, "restart")
        await _publish_probes(cfg, prefix, probes)
        seen = await _applied(cfg, prefix, probes, since, time.monotonic() + cfg.timeout)
        result = _result("restart", store, cfg.recovery_contacts, seen, set(probes))
        result.rss = again.rss()
        bench.recovery.append(result)
    finally:
        await again.stop()


async def _failover(bench: Bench, store: str, standbys: int) -> None:
    cfg = bench.cfg
    s = await prepare(cfg, cfg.prefix(f"failover-{store}-{standbys}"))
    prefix = s.topic_prefix
    deadline = time.monotonic() + cfg.timeout + cfg.recovery_contacts / 500
    workers = await start_group(cfg, prefix, 2, deadline, store=f"{store}://",
                                env={"DRIPSTREAM_STANDBY_REPLICAS": str(standbys)})
    try:
        await _load(cfg, prefix, workers, deadline)
        await asyncio.sleep(5)  # standbys read the last changelog records (bench only)
        rss = [w.rss() or 0 for w in workers]
        await asyncio.to_thread(workers[0].process.kill, signal.SIGKILL)
        since = time.monotonic()
        probes = _probes(cfg, f"failover{standbys}")
        await _publish_probes(cfg, prefix, probes)
        seen = await _applied(cfg, prefix, probes, since, time.monotonic() + cfg.timeout)
        # The survivor's own partitions answer at once; the dead worker's only once the
        # group has moved them (the broker notices the death after its 2 s session).
        moved = {p for p in probes if seen.get(p, float("inf")) > MOVED_AFTER_S}
        result = _result(f"failover, {standbys} standby", store, cfg.recovery_contacts, seen,
                         moved)
        result.rss = max(rss)
        result.notes.append(f"partitions {sorted(moved)} moved to the survivor; worker RSS "
                            f"before the kill {', '.join(f'{r / 1e6:.0f}' for r in rss)} MB")
        bench.recovery.append(result)
    finally:
        await stop_all(workers)


async def recovery(bench: Bench) -> None:
    for store in bench.cfg.contacts_stores:
        if store == "rocksdb":
            try:
                import rocksdict  # noqa: F401
            except ImportError:
                bench.notes.append("recovery: rocksdb skipped (pip install -e '.[rocksdb]')")
                continue
        await _restart(bench, store)
        for standbys in (0, 1):
            await _failover(bench, store, standbys)
