"""The input gap guard's effects (:mod:`streams.gapguard` decides): ask the broker what a
hole holds, rewind the consumer, let Faust's commits pass a hole the broker explained,
and log every hole. Used by the contact agent for each input record (:func:`admit`) and by
its once-a-second timer (:func:`heal`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

from aiokafka.errors import IllegalStateError
from faust.types import TP

from streams import compat
from streams.compat import committed_offset

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["admit", "heal"]

log = logging.getLogger(__name__)


async def admit(worker: Worker, message: Any) -> Literal["process", "skip", "rewound"]:
    """Whether the agent processes ``message`` (of the current generation): ``skip`` it
    (processed already, or fetched before a rewind), or ``rewound`` -- the consumer reads
    its partition again from a hole before it, so the batch's later records of that
    partition come again too."""
    app, gaps = worker.app, worker.gaps
    tp, topic, partition = message.tp, message.topic, message.partition
    if _lost_by_fault(worker):
        return "skip"
    verdict = gaps.observe(topic, partition, message.offset, message.generation_id,
                           committed_offset(app, tp))
    if (healed := verdict.healed) is not None:
        log.info("input %s[%s]: offsets %s..%s read again after %d rewind(s)", topic,
                 partition, healed.start, healed.end - 1, healed.rewinds)
    if verdict.action != "check":
        return verdict.action
    start, end = verdict.offset, message.offset
    if compat.SKIPPED.covers(tp, start, end):
        # The fetcher passed over exactly these offsets as transaction markers or
        # aborted batches (read from the log in its last fetches): the usual hole on a
        # topic written in transactions (exactly-once writes one marker per commit).
        gaps.passed(topic, partition, start, end)
        compat.skip_offsets(app, tp, start, end)
        again = gaps.observe(topic, partition, message.offset, message.generation_id,
                             committed_offset(app, tp))
        return "process" if again.action == "process" else "skip"
    try:
        absent = await app.absent_offsets(tp, start, end)
    except Exception as exc:  # the broker did not answer: no proof, so no skipping
        absent = compat.Absent(False, detail=f"asking the broker failed: {exc!r}")
    if absent.proven:
        gaps.explained(topic, partition, start, end)
        compat.skip_offsets(app, tp, start, end)
        if absent.deleted:
            log.error("input %s[%s]: offsets %s..%s were deleted by retention before the "
                      "worker read them (%d records); going on [input hole %d]", topic,
                      partition, start, end - 1, absent.deleted, gaps.counts.holes)
        else:
            log.info("input %s[%s]: offsets %s..%s hold no records (%d transaction "
                     "markers); going on", topic, partition, start, end - 1, absent.markers)
        again = gaps.observe(topic, partition, message.offset, message.generation_id,
                             committed_offset(app, tp))
        return "process" if again.action == "process" else "skip"
    offset = gaps.missing(topic, partition, start, end, time.monotonic())
    if offset is not None:
        log.warning("input %s[%s]: offsets %s..%s never reached the agent (%s); reading "
                    "again [input hole %d]", topic, partition, start, end - 1,
                    absent.detail, gaps.counts.holes)
        await _seek(app, tp, offset)
    elif (hole := gaps.hole(topic, partition)) is not None:
        log.error("input %s[%s]: offsets %s..%s still missing after %d rewind(s) (%s); "
                  "reading again in %.0f s [input hole %d stuck]", topic, partition,
                  hole.start, hole.end - 1, hole.rewinds, absent.detail,
                  (hole.retry_at or 0.0) - time.monotonic(), gaps.counts.holes)
    return "rewound"


def _lost_by_fault(worker: Worker) -> bool:
    """Tests only (``DRIPSTREAM_FAULT=lose_input:N``): the Nth to N+9th input records to
    reach the agent never reach the guard, once."""
    spec = worker.settings.fault
    if not spec or not spec.startswith("lose_input"):
        return False
    first = int(spec.partition(":")[2] or 1)
    seen = worker.faults["lose_input"] = worker.faults.get("lose_input", 0) + 1
    if seen == first:
        log.critical("fault injection: lose_input at record %d", seen)
    return first <= seen < first + 10


async def heal(worker: Worker, *, idle: bool) -> None:
    """The timer's part: the rewinds of stuck holes that are due, and, while the agent is
    idle, partitions whose fetched records never reached it."""
    app, gaps = worker.app, worker.gaps
    if app.rebalancing or app.in_recovery:
        return  # the new generation reads from the committed offsets anyway
    now = time.monotonic()
    for hole in gaps.due(now):
        log.warning("input %s[%s]: reading offsets %s..%s again (rewind %d)", hole.topic,
                    hole.partition, hole.start, hole.end - 1, hole.rewinds)
        await _seek(app, TP(hole.topic, hole.partition), hole.start)
    if not idle:
        return
    for tp in app.assignor.assigned_actives():
        if tp.topic not in worker.batches.topics:
            continue
        fetched = app.fetch_position(tp)
        committed = committed_offset(app, tp) or 0
        expected = gaps.expected(tp.topic, tp.partition, committed)
        if (fetched is not None and expected is not None and fetched > expected
                and compat.SKIPPED.covers(tp, expected, fetched)):
            # The consumer stands past a trailing transaction marker (a topic written in
            # transactions ends with one): nothing went missing.
            gaps.passed(tp.topic, tp.partition, expected, fetched)
            compat.skip_offsets(app, tp, expected, fetched)
            continue
        offset = gaps.lost_behind(tp.topic, tp.partition, fetched, committed, now)
        if offset is not None:
            log.warning("input %s[%s]: fetched up to %s but the agent is at %s; reading "
                        "again [input hole %d]", tp.topic, tp.partition, fetched, offset,
                        gaps.counts.holes)
            await _seek(app, tp, offset)


async def _seek(app: Any, tp: TP, offset: int) -> None:
    """Rewind ``tp`` -- unless a rebalance took it away meanwhile: its next owner reads it
    from the committed offset, which never passed the hole."""
    try:
        await app.consumer.seek(tp, offset)
    except IllegalStateError:
        log.info("input %s[%s]: no longer assigned; not rewound", tp.topic, tp.partition)
