"""The worker's Prometheus metrics, on one registry of this module, served over HTTP.

``dripstream worker`` serves them on ``DRIPSTREAM_METRICS_PORT`` (``/metrics``; 0: off).
The contact agent counts a batch once its effects are acknowledged (a batch redone after
a crash counts again, as every Prometheus counter of an at-least-once pipeline does);
the lag gauge is set by the worker's lag timer (:mod:`agents.observe`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

__all__ = ["BATCH_SIZE", "CONSUMER_LAG", "COUNTERS", "DEAD_LETTERS", "EVENTS", "NONSENDS",
           "PROCESSING_SECONDS", "REGISTRY", "SENDS", "observe_batch", "serve"]

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

EVENTS = Counter("dripstream_events", "Valid contact events taken in by their contact's owner",
                 ["type"], registry=REGISTRY)
SENDS = Counter("dripstream_sends", "Send commands emitted (the gate let them go)",
                ["channel"], registry=REGISTRY)
NONSENDS = Counter("dripstream_nonsends", "Sends the gate did not let go now, by audit reason",
                   ["reason"], registry=REGISTRY)
DEAD_LETTERS = Counter("dripstream_dead_letters", "Input records dead-lettered, by reason",
                       ["reason"], registry=REGISTRY)
BATCH_SIZE = Histogram("dripstream_batch_size", "Input records per batch",
                       buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
                       registry=REGISTRY)
CONSUMER_LAG = Gauge("dripstream_consumer_lag",
                     "Records past the group's committed offset, per assigned input partition",
                     ["topic", "partition"], registry=REGISTRY)
PROCESSING_SECONDS = Histogram(
    "dripstream_processing_seconds",
    "From a record's broker timestamp to its batch's effects acknowledged",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY)


#: The counter of each kind of count a batch's activity has (tables/activity.py).
COUNTERS = {"events": EVENTS, "sends": SENDS, "nonsends": NONSENDS,
            "deadletters": DEAD_LETTERS}


def observe_batch(counts: Mapping[str, Mapping[str, int]], records: int,
                  latencies: Iterable[float]) -> None:
    """A batch whose effects are acknowledged: its counts (kind → label → n, kinds of
    :data:`COUNTERS`), its size, each record's latency (seconds; negative ones — a
    producer's clock ahead — count as 0)."""
    for kind, labels in counts.items():
        for label, n in labels.items():
            COUNTERS[kind].labels(label).inc(n)
    if records:
        BATCH_SIZE.observe(records)
    for seconds in latencies:
        PROCESSING_SECONDS.observe(max(seconds, 0.0))


def serve(port: int) -> bool:
    """Serve :data:`REGISTRY` on ``port`` (all interfaces); False if it is taken (logged:
    the worker runs on without metrics rather than not at all)."""
    try:
        start_http_server(port, registry=REGISTRY)
    except OSError as exc:
        log.error("metrics: cannot serve on port %d (%s); running without metrics", port, exc)
        return False
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
    return True
