"""What the worker tells operators besides its log: Prometheus metrics and input lag.

:func:`install` puts two things on the app: the metrics server (``DRIPSTREAM_METRICS_PORT``,
:mod:`streams.metrics`; 0: none), started with the worker, and a timer that every
:data:`LAG_INTERVAL_S` writes each assigned input partition's lag — the broker's high
watermark less the group's committed offset, what the worker still has to make durable —
to the read model (``<prefix>lag``, one field per partition; the reader drops entries
older than a minute, a worker gone or no longer assigned) and to the lag gauge.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from streams import metrics
from streams.compat import committed_offset

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["LAG_INTERVAL_S", "install", "lag_entries"]

log = logging.getLogger(__name__)

#: How often each worker writes its partitions' lag.
LAG_INTERVAL_S = 5.0


async def lag_entries(worker: Worker, now: datetime) -> list[dict[str, Any]]:
    """The lag of each input partition assigned to this worker (empty while rebalancing
    or when the broker does not answer)."""
    app = worker.app
    inputs = worker.batches.topics
    tps = [tp for tp in app.assignor.assigned_actives() if tp.topic in inputs]
    if not tps or app.rebalancing:
        return []
    try:
        ends = await app.consumer.highwaters(*tps)
    except Exception as exc:  # the broker is away: nothing to say this time
        log.warning("lag: end offsets unavailable (%r)", exc)
        return []
    name = f"{socket.gethostname()}:{os.getpid()}"
    return [{"topic": tp.topic, "partition": tp.partition,
             "lag": max(0, end - (committed_offset(app, tp) or 0)), "worker": name,
             "at": now.isoformat()}
            for tp, end in sorted(ends.items())]


def install(worker: Worker) -> None:
    app, settings = worker.app, worker.settings
    labelled: set[tuple[str, str]] = set()

    if settings.metrics_port:
        @app.task  # type: ignore[untyped-decorator]
        async def serve_metrics() -> None:
            metrics.serve(settings.metrics_port)

    @app.timer(interval=LAG_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def report_lag() -> None:
        # Wall clock, not the workers' (test-shifted) clock: readers judge freshness by it.
        entries = await lag_entries(worker, datetime.now(UTC))
        current = {(e["topic"], str(e["partition"])) for e in entries}
        for labels in labelled - current:
            metrics.CONSUMER_LAG.remove(*labels)
        for e in entries:
            metrics.CONSUMER_LAG.labels(e["topic"], str(e["partition"])).set(e["lag"])
        labelled.clear()
        labelled.update(current)
        try:
            await worker.read_model.put_lag(entries)
        except (RedisError, OSError) as exc:
            log.warning("lag: read model write failed (%s)", exc)
