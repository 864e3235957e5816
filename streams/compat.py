"""Every place dripstream reaches inside faust-streaming, mode and aiokafka, in one module.

Checked against the versions in :data:`CHECKED`; ``tests/test_compat.py`` fails when an
internal used here moves or changes shape (it fingerprints the source of each method this
module replaces or imitates), so an upgrade is a conscious re-check, not a silent drift.

What is here, and why:

- **Batch delivery** (:class:`BatchConsumer`). Faust hands every record to a stream as its
  own event: an ``asyncio.wait`` of two tasks per record in ``Consumer._drain_messages``,
  a lock, an ``Event``, a queue hop, sensors and an ack each. Measured here (2 cores,
  embedded broker), that path tops out at ~14k records/s doing nothing (~22k with
  ``take_events`` and a lighter drain); the same consumer handing each fetched batch
  to the agent as one list moved ~100k/s. So the drain below collects the records of
  the agent's input topics into lists (at most ``batch_max`` each) and puts them on a
  :class:`Batches` queue that the contact agent reads; records of every other topic
  (table changelogs during recovery and standby) still take Faust's own path. Input
  records are tracked (``track_message``) when fetched and acked by the agent only after
  their batch is durable, so Faust's commit, rebalance (``wait_empty``) and shutdown
  logic see them exactly as they see stream events.

  Unlike Faust's stream, records fetched under an older consumer generation are dropped
  *without* an ack (Faust's stream acks them, "otherwise the lag would increase"), and the
  drain never tells Faust a range of offsets is a gap: only the gap guard does, once the
  broker has shown those offsets hold no records (:func:`skip_offsets`).
- **Fetch positions: the input-loss root cause** (docs/reliability.md). Faust's
  ``Consumer._drain_messages`` keeps a "read offset" per partition and, when a record's
  offset is more than one past it, records the offsets in between as a gap that commits
  may pass (``_add_gap``; meant for transaction markers). ``perform_seek`` (the end of
  every recovery) sets the read offset back to the committed offset while the drain may
  still be handing over records fetched *before* the seek: the next of those looks like a
  jump, so a "gap" is recorded over records that were delivered and are not processed
  yet, and the records fetched again from the committed offset are dropped as already
  read. ``Consumer._new_offset`` then adds the whole gap to the acked offsets: commits
  crawl one offset at a time while the duplicates last, then jump past records nobody
  acked -- after a SIGKILL or a rebalance those are never read again
  (tests/integration/test_input_loss.py, bench/inputloss.py). Here instead: every move of
  a partition's position (a seek, a seek to the committed offset) is counted in the
  consumer's thread, each fetch remembers the counts it was made at, and the drain drops
  a record fetched before its partition last moved -- aiokafka fetches it again from the
  new position, so the offsets the agent sees are contiguous and no gap is invented. With
  it: seeks happen in the consumer's thread (Faust calls aiokafka's ``seek`` from the main
  thread, where the thread's hand-over of a fetch can overwrite it), the seek to the
  committed offset also moves an input partition that has no committed offset (aiokafka
  leaves it where it is, past whatever Faust dropped there), and aiokafka is never asked
  for the records of an empty set of partitions (it reads that as "all of them", and
  Faust then drops what it did not ask for).
- **Exactly-once input positions**: aiokafka reads the committed offsets for a new
  assignment's positions at once, beside the fence (agents/transactions.py) that lets
  the previous owner's last transaction finish, and Faust resumes the input partitions
  before its own seek to the committed offsets (``Recovery._resume_streams``): records
  from a position older than that transaction's offsets reached the agent and were
  committed a second time (the three-broker chaos run, docs/reliability.md). So the
  input partitions are sought to their committed offsets again once the fence is done,
  before Faust's assignment chain goes on.
- **Fetch wait**: Faust hard-codes ``fetch_max_wait_ms=1500``; the embedded broker holds
  a fetch for about half of it even when data arrives, so it is set from settings — and
  adapted: the short wait while records flow, a long one once the input has been quiet
  for a second (every empty fetch costs the broker CPU; measured in docs/performance.md).
- **End offsets on the embedded broker**: Tansu answers ListOffsets(latest) with the
  first offset of the last record batch + 1. :func:`end_offsets` reads the true end from
  a Fetch response's high watermark; Faust's table recovery uses it (embedded profile
  only), and so do the compacted-topic followers, the tests and the bench.
- **Offsets Faust keeps**: the committed offset per partition (no public API), the
  consumer's fetch position, and what the broker stores at given offsets
  (:func:`absent_offsets`), for the gap guard.
- **Table store access by partition**: the contact agent writes a batch's changed
  contacts itself (one changelog record per contact, acknowledged before the read model
  is written). Faust's stores pick a partition from the "current event", which a batch
  has none of; :class:`StoreAccess` reads and writes the memory and RocksDB stores with an
  explicit partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiokafka.consumer.fetcher as aiokafka_fetcher
import faust
import faust.stores.memory
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import READ_COMMITTED, OffsetResetStrategy, PartitionRecords
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

__all__ = [
    "CHECKED",
    "SKIPPED",
    "Absent",
    "App",
    "Batches",
    "MemoryStore",
    "Record",
    "StoreAccess",
    "abandon",
    "absent_offsets",
    "committed_offset",
    "end_offsets",
    "expelled",
    "highwater",
    "leave_by_expiry",
    "refresh_metadata",
    "send_batches",
    "set_fetch_wait",
    "skip_offsets",
    "use_memory_store",
    "visible_ends",
]

log = logging.getLogger(__name__)

#: The versions this module was checked against.
CHECKED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class Batches:
    """Batches of input records from the consumer to the contact agent.

    Bounded (``depth`` batches): when the agent is busy the consumer stops fetching, so
    memory stays bounded and the broker keeps the backlog.
    """

    def __init__(self, topics: Iterable[str], batch_max: int, depth: int = 2) -> None:
        self.topics = frozenset(topics)
        self.batch_max = batch_max
        self._queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=depth)

    async def put(self, batch: list[Any]) -> None:
        await self._queue.put(batch)

    def empty(self) -> bool:
        return self._queue.empty()

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[Any]:
        return await self._queue.get()


class BatchConsumer(driver.Consumer):
    """Faust's aiokafka consumer, delivering the agent's input records in batches."""

    _thread: _ConsumerThread
    #: The position moves (:attr:`_ConsumerThread.moves`) the records being drained were
    #: fetched at; set by :meth:`_getmany` for each fetch.
    _fetched_moves: Mapping[TP, int] = {}

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Faust's commit, without the agent's input partitions when their offsets commit
        in the batches' transactions (exactly-once): a plain commit of an older offset
        landing after a transaction's would move the group back, and the batches after it
        would be redone. Faust's bookkeeping of committed offsets goes on as before."""
        app = cast(App, self.app)
        if app.commits_in_transactions and app.batches is not None:
            inputs = app.batches.topics
            offsets = {tp: offset for tp, offset in offsets.items() if tp.topic not in inputs}
            if not offsets:
                return True
        done: bool = await super()._commit(offsets)
        return done

    async def on_partitions_assigned(  # Faust's signature
        self, assigned: set[TP], generation_id: int = 0,
    ) -> None:
        app = cast(App, self.app)
        if app.before_assignment is not None and app.batches is not None:
            inputs = {tp for tp in assigned if tp.topic in app.batches.topics}
            await app.before_assignment({tp.partition for tp in inputs})
            # The positions aiokafka took from the committed offsets at assignment may
            # predate the previous owner's last transaction, which the fence has just let
            # finish; Faust feeds the inputs before its own seek (see the module doc).
            await self._thread.seek_to_committed(only=inputs)
        await super().on_partitions_assigned(assigned, generation_id)

    async def _getmany(  # Faust's signature
        self, active_partitions: set[TP] | None, timeout: float,  # noqa: ASYNC109
    ) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        self._fetched_moves = getattr(records, "moves", {})
        return records

    async def _seek(self, partition: TP, offset: int) -> None:
        # Faust calls aiokafka's seek from this thread; in the consumer's thread instead.
        await self._thread.seek_in_thread(partition, offset)

    async def _drain_messages(self, fetcher: Any) -> None:  # the replaced Faust method
        batches: Batches | None = cast(App, self.app).batches
        if batches is None:  # no batch agent: Faust's own path
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        read_offset = self._read_offset
        moves = self._thread.moves
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        inputs, batch_max = batches.topics, batches.batch_max
        app = cast(App, self.app)
        quiet_since: float | None = None
        while not (stopped() or fetcher_stopped()):
            batch: list[Any] = []
            await asyncio.sleep(0)
            if self.should_stop:
                break
            fetched = False
            async for tp, message in self.getmany(timeout=1.0):
                fetched = True
                if self._fetched_moves.get(tp, 0) != moves.get(tp, 0):
                    # Fetched before its partition moved (a seek): aiokafka fetches it again
                    # from the new position. Delivered, it would make the records fetched
                    # again look like a jump back, or a hole to skip (see the module doc).
                    continue
                read_offset[tp] = message.offset
                if tp.topic in inputs:
                    self.track_message(message)
                    batch.append(message)
                    if len(batch) >= batch_max:
                        await batches.put(batch)
                        batch = []
                else:
                    await self.wait_first(callback(message), self.suspend_flow.wait())
            if batch:
                await batches.put(batch)
            # Adaptive fetch wait: short while records flow, long once quiet for a second.
            now = time.monotonic()
            quiet_since = None if fetched else (quiet_since or now)
            idle = quiet_since is not None and now - quiet_since > 1.0
            self._set_fetch_wait(app.idle_fetch_wait_ms if idle else app.fetch_wait_ms)

    def _set_fetch_wait(self, wait_ms: int) -> None:
        """The wait of the aiokafka fetcher's next requests (it reads it per request)."""
        consumer = getattr(getattr(self, "_thread", None), "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and fetcher._fetch_max_wait_ms != wait_ms:
            fetcher._fetch_max_wait_ms = wait_ms


async def abandon(consumer: AIOKafkaConsumer) -> None:
    """Close what a consumer whose ``stop()`` was given up on left open: its fetcher and
    its client's connections. ``stop()`` first waits for the group coordinator's routine,
    and a member in a JoinGroup the broker holds (another member that does not rejoin)
    waits up to that member's rebalance timeout: cancelled, ``stop()`` never reaches the
    fetcher and the client (aiokafka 0.14)."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None:
        await fetcher.close()
    await consumer._client.close()


def leave_by_expiry(consumer: AIOKafkaConsumer) -> None:
    """Make ``consumer.stop()`` send no LeaveGroup: the member leaves when its session
    expires (2 s on the embedded broker). Embedded broker only.

    Tansu 0.6.0 keeps the leader of a group that is re-forming (a member joined or left
    and the leader has not synced yet) as its leader when that leader sends LeaveGroup:
    ``Inner<Forming>::leave`` removes the member but not ``state.leader`` (the stable
    state's ``leave`` does clear it), and a member's session expiry is checked only for
    members still listed. Every member that joins afterwards is a follower whose
    SyncGroup is refused with REBALANCE_IN_PROGRESS, for ever: the channel delivers
    nothing again, and no restart helps, the group keeps its departed leader. A leader
    that expires instead is dropped with its leadership. Reaches into aiokafka's
    coordinator (``_maybe_leave_group``, called by ``close``; aiokafka 0.14)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_maybe_leave_group"):
        return

    async def expire() -> None:
        coordinator.reset_generation()

    coordinator._maybe_leave_group = expire


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """A plain aiokafka consumer's fetch wait from its next request on (the channel
    workers' adaptive wait; the fetcher reads ``_fetch_max_wait_ms`` per request)."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and fetcher._fetch_max_wait_ms != wait_ms:
        fetcher._fetch_max_wait_ms = wait_ms


class _Fetched(dict[TP, list[Any]]):
    """Faust's record map, with the position moves of its partitions when fetched."""

    moves: dict[TP, int]


class _Live:
    """Faust's live set of active partitions, as aiokafka's ``fetched_records`` reads it:
    never empty (an empty set there means every assigned partition)."""

    def __init__(self, tps: set[TP]) -> None:
        self.tps = tps

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self.tps


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def __post_init__(self) -> None:
        super().__post_init__()
        #: Moves of each partition's fetch position (seeks, seeks to the committed
        #: offset), counted in the consumer's thread before the position changes.
        self.moves: defaultdict[TP, int] = defaultdict(int)
        #: Where a partition with no committed offset was started (its log start): the
        #: first offset the agent must see there (:func:`committed_offset`).
        self.starts: dict[TP, int] = {}

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
        consumer._fetch_max_wait_ms = cast(App, self.app).fetch_wait_ms
        if cast(App, self.app).read_committed:
            consumer._isolation_level = "read_committed"
        return consumer

    async def _fetch_records(
        self, consumer: AIOKafkaConsumer, active_partitions: set[TP] | None,
        timeout: float | None = None,  # noqa: ASYNC109 (Faust's signature)
        max_records: int | None = None,
    ) -> _Fetched:
        # Faust passes its live set of active partitions: it may empty while the fetcher
        # waits for records (recovery pauses the changelogs), and aiokafka would then hand
        # over every partition's records, which Faust's getmany drops (positions past
        # them) because it did not ask for them.
        wanted = None if active_partitions is None else _Live(active_partitions)
        records = await super()._fetch_records(consumer, cast(Any, wanted), timeout=timeout,
                                               max_records=max_records)
        fetched = _Fetched(records)
        fetched.moves = {tp: self.moves[tp] for tp in records}  # no await since the fetch
        return fetched

    async def on_thread_stop(self) -> None:
        if self._consumer is not None and cast(App, self.app).leave_by_expiry:
            leave_by_expiry(self._consumer)  # the embedded broker's group bug, see there
        await super().on_thread_stop()

    async def seek_in_thread(self, tp: TP, offset: int) -> None:
        await self.call_thread(self._seek_now, tp, offset)

    async def _seek_now(self, tp: TP, offset: int) -> None:
        self.moves[tp] += 1
        self._ensure_consumer().seek(tp, offset)

    async def _seek_wait(self, consumer: AIOKafkaConsumer, partitions: Mapping[TP, int]) -> None:
        for tp in partitions:
            self.moves[tp] += 1
        await super()._seek_wait(consumer, partitions)

    async def seek_to_committed(self, only: set[TP] | None = None) -> Mapping[TP, int]:
        result: Mapping[TP, int] = await self.call_thread(self._seek_to_committed, only)
        return result

    async def _seek_to_committed(self, only: set[TP] | None = None) -> dict[TP, int | None]:
        """aiokafka's ``seek_to_committed``, but for every partition the group commits:
        aiokafka seeks only a partition whose committed offset is above 0, so one with no
        commit yet stays past the records Faust dropped there before the seek (a
        rebalance, a new generation) and those are never read. Such a partition goes back
        to where the group would start it (the reset policy, ``earliest`` here).
        ``only``: just these of the assigned partitions."""
        consumer = self._ensure_consumer()
        committed_by_group = self.app.topics.acks_enabled_for
        strategy = consumer._fetcher._default_reset_strategy
        committed: dict[TP, int | None] = {}
        for tp in consumer._subscription.assigned_partitions():
            if only is not None and tp not in only:
                continue
            offset = await consumer.committed(tp)
            committed[tp] = offset
            if offset is not None:
                self.moves[tp] += 1
                consumer.seek(tp, offset)
            elif committed_by_group(tp.topic) and strategy != OffsetResetStrategy.NONE:
                self.moves[tp] += 1
                if strategy == OffsetResetStrategy.EARLIEST:
                    await consumer.seek_to_beginning(tp)
                    self.starts[tp] = (await consumer.beginning_offsets([tp]))[tp]
                else:
                    await consumer.seek_to_end(tp)
        return committed

    async def absent(self, tp: TP, start: int, end: int) -> Absent:
        """:func:`absent_offsets` with this consumer's client (in its thread)."""
        result: Absent = await self.call_thread(
            lambda: absent_offsets(self._ensure_consumer(), tp, start, end))
        return result

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        app = cast(App, self.app)
        if not app.exact_end_offsets:
            return await end_offsets(self._ensure_consumer(), partitions)
        if app.read_committed:
            return await visible_ends(self._ensure_consumer(), partitions)
        result: Mapping[TP, int] = await super()._highwaters(partitions)
        return result


class _Transport(driver.Transport):
    Consumer = BatchConsumer


class App(faust.App):
    """faust.App with dripstream's consumer (batch delivery, fetch wait, end offsets)."""

    def __init__(
        self, *args: Any, fetch_wait_ms: int, idle_fetch_wait_ms: int,
        exact_end_offsets: bool, read_committed: bool, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_wait_ms = fetch_wait_ms
        self.idle_fetch_wait_ms = idle_fetch_wait_ms
        #: False on a broker whose ListOffsets(latest) is short (streams/capabilities.py).
        self.exact_end_offsets = exact_end_offsets
        #: Exactly-once: the consumer reads only committed transactions.
        self.read_committed = read_committed
        #: A clean stop leaves the group by session expiry, not LeaveGroup (the embedded
        #: broker's group bug: :func:`leave_by_expiry`).
        self.leave_by_expiry = False
        #: Exactly-once: the input offsets commit in the batches' transactions, not Faust's.
        self.commits_in_transactions = False
        #: Awaited with the input partitions assigned, before Faust reads their committed
        #: offsets or recovers their tables (exactly-once: the transactional producers'
        #: fence, agents/transactions.py).
        self.before_assignment: Callable[[set[int]], Awaitable[None]] | None = None
        #: Set by :meth:`deliver_batches`; None: every record takes Faust's own path.
        self.batches: Batches | None = None

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)

    def deliver_batches(self, batches: Batches) -> None:
        """Hand the records of ``batches.topics`` to the agent in lists (see module doc)."""
        self.batches = batches

    async def absent_offsets(self, tp: TP, start: int, end: int) -> Absent:
        """:func:`absent_offsets` for ``tp``, asked with the consumer's own client."""
        return await cast(BatchConsumer, self.consumer)._thread.absent(tp, start, end)

    def fetch_position(self, tp: TP) -> int | None:
        """The next offset the underlying aiokafka consumer will hand over for ``tp``."""
        thread = getattr(self.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        if consumer is None:
            return None
        assignment = consumer._subscription.subscription.assignment
        if assignment is None or tp not in assignment.tps:
            return None
        state = assignment.state_value(tp)
        return int(state.position) if state.has_valid_position else None


#: (topic, partition, key, value, headers)
Record = tuple[str, int, bytes | None, bytes, list[tuple[str, bytes]] | None]


async def send_batches(
    app: faust.App, records: Iterable[Record], *, producer: AIOKafkaProducer | None = None,
) -> Callable[[], Awaitable[dict[tuple[str, int], int]]]:
    """Queue ``records`` (in this order per partition) as record batches of aiokafka's
    producer; returns a coroutine function that waits for the broker to acknowledge them
    all and gives the last offset written per (topic, partition). One future per batch
    instead of one per record: about a quarter of ``send``'s cost per record. Faust's
    producer does not expose batches. Nothing to send touches no producer (one that has
    stopped, say). ``producer``: another than the app's (a transactional one, begun)."""
    records = list(records)
    if not records:
        async def nothing() -> dict[tuple[str, int], int]:
            return {}

        return nothing
    if producer is None:
        producer = cast(Any, app.producer)._ensure_producer()
    open_: dict[tuple[str, int], Any] = {}
    counts: dict[tuple[str, int], int] = defaultdict(int)
    pending: list[tuple[tuple[str, int], int, Any]] = []
    for topic, partition, key, value, headers in records:
        where = (topic, partition)
        builder = open_.get(where)
        if builder is None or builder.append(timestamp=None, key=key, value=value,
                                             headers=headers or []) is None:
            if builder is not None:
                pending.append((where, counts.pop(where),
                                await producer.send_batch(builder, topic, partition=partition)))
            builder = open_[where] = producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value,
                              headers=headers or []) is None:
                raise ValueError(f"a record for {topic}[{partition}] is larger than a batch")
        counts[where] += 1
    for (topic, partition), builder in open_.items():
        if counts.get((topic, partition)):
            pending.append(((topic, partition), counts[(topic, partition)],
                            await producer.send_batch(builder, topic, partition=partition)))

    async def acknowledged() -> dict[tuple[str, int], int]:
        acked = await asyncio.gather(*(future for _, _, future in pending))
        last: dict[tuple[str, int], int] = {}
        for (where, count, _), meta in zip(pending, acked, strict=True):
            last[where] = max(last.get(where, -1), meta.offset + count - 1)
        return last

    return acknowledged


def expelled(app: faust.App) -> bool:
    """Has the group thrown this member out (its heartbeat or commit answered
    UnknownMemberId / IllegalGeneration: aiokafka's coordinator then resets its
    generation and member id)? Its partitions may already be another worker's."""
    consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    return bool(coordinator.generation < 0 or not coordinator.member_id)


def highwater(app: faust.App, tp: TP) -> int | None:
    """The high watermark of an assigned partition as the consumer's last fetch saw it
    (None: not known yet)."""
    try:
        if cast(App, app).read_committed:  # the end a read_committed position reaches
            consumer = cast(Any, app.consumer)._thread._consumer
            found = consumer.last_stable_offset(tp)
        else:
            found = app.consumer.highwater(tp)
    except Exception:  # not assigned (any more), or no consumer yet
        return None
    return int(found) if found is not None and found >= 0 else None


def committed_offset(app: faust.App, tp: TP) -> int | None:
    """The committed offset of ``tp`` as Faust's consumer knows it (no public API) — or,
    where the group has committed nothing yet, the log start it was started from: the
    first offset the agent must see (without it, records lost before the first one to
    arrive would leave no hole to find)."""
    consumer = cast(Any, app.consumer)
    offset: int | None = consumer._committed_offset.get(tp)
    if offset is None:
        offset = getattr(getattr(consumer, "_thread", None), "starts", {}).get(tp)
    return offset


def skip_offsets(app: faust.App, tp: TP, start: int, end: int) -> None:
    """Let Faust's commits pass offsets ``start..end-1`` of ``tp`` -- only once the broker
    has shown they hold no records (:func:`absent_offsets`). Into Faust's gap tree as
    ``Consumer._new_offset`` reads it; not through ``_add_gap``, which leaves out the
    committed offset itself, so a hole starting there would hold commits back forever."""
    gaps = cast(Any, app.consumer)._gap[tp]
    gaps.addi(start, end)
    gaps.merge_overlaps()


@dataclass(frozen=True, slots=True)
class Absent:
    """What the broker stores at a range of offsets the agent never saw records at."""

    proven: bool  # no record is stored at any of them
    deleted: int = 0  # offsets below the log start offset (removed by retention)
    markers: int = 0  # offsets held by control batches (transaction markers)
    detail: str = ""  # why not proven


async def absent_offsets(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> Absent:
    """Whether the broker holds no record at offsets ``start..end-1`` of ``tp``, read from
    the log itself: offsets below the log start offset were deleted by retention; offsets
    inside a control batch are transaction markers (aiokafka skips those batches, so a
    consumer of a transactional producer's topic sees one offset missing per
    transaction). Anything else -- a data record stored there, an offset no batch covers,
    a fetch that returns nothing -- is not proof: on a delete-policy topic records are
    never removed from inside the log, so the consumer dropped them. Run in the
    consumer's own event loop (its client's)."""
    client = consumer._client
    leader = client.cluster.leader_for_partition(tp)
    if leader is None or leader == -1:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(tp)
    if leader is None or leader == -1:
        return Absent(False, detail=f"no leader known for {tp}")
    first = (await consumer.beginning_offsets([tp])).get(tp, 0)
    deleted = max(0, min(end, first) - start)
    cursor, markers = max(start, first), 0
    limit = 1024 * 1024
    while cursor < end:
        request = FetchRequest(
            max_wait_time=10, min_bytes=1, max_bytes=limit, isolation_level=0,
            topics=[(tp.topic, [(tp.partition, cursor, limit)])],
        )
        response = await client.send(leader, request)
        parts = [part for topic, answers in response.topics if topic == tp.topic
                 for part in answers if part[0] == tp.partition]
        if not parts:
            return Absent(False, deleted, markers, f"no answer for {tp} at {cursor}")
        _, error_code, _, *data = parts[0]
        if error_code:
            return Absent(False, deleted, markers,
                          f"{for_code(error_code).__name__} fetching {tp} at {cursor}")
        cursor, found, why = _walk(data[-1], cursor, end)
        markers += found
        if why:
            return Absent(False, deleted, markers, why)
    return Absent(True, deleted, markers)


def _walk(data: bytes, cursor: int, end: int) -> tuple[int, int, str]:
    """Walk a fetch's record batches from offset ``cursor`` towards ``end``: (where it
    got to, how many of the offsets passed are transaction markers, why the walk stopped
    short -- empty if it did not)."""
    records = MemoryRecords(data)
    start, markers = cursor, 0
    while cursor < end and records.has_next():
        batch = cast(Any, records.next_batch())
        if batch is None or batch.next_offset <= cursor:
            continue
        if batch.base_offset > cursor:
            return cursor, markers, (f"no record batch holds offsets {cursor}.."
                                     f"{batch.base_offset - 1}")
        if not batch.is_control_batch:
            held = next((r.offset for r in batch if cursor <= r.offset < end), None)
            if held is not None:
                return cursor, markers, f"the broker holds a record at offset {held}"
            return cursor, markers, (f"a data batch at {batch.base_offset} has no record "
                                     f"at {cursor} (compacted?)")
        markers += min(end, batch.next_offset) - cursor
        cursor = batch.next_offset
    if cursor == start:
        return cursor, markers, f"nothing fetched at offset {cursor}"
    return cursor, markers, ""


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Make a plain consumer learn topics created since it started."""
    await consumer._client.force_metadata_update()


async def end_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """True end offsets (high watermarks) of ``partitions`` on the embedded broker.

    Tansu's ListOffsets(latest) is short (the first offset of the last batch + 1), the
    high watermark in a Fetch response is right: one one-byte, 10 ms Fetch per leader.
    Never less than the broker's own answer. Real Kafka never needs this.
    """
    partitions = list(partitions)
    result = await fetch_highwaters(consumer, partitions)
    listed = await consumer.end_offsets(partitions)
    return {tp: max(result.get(tp, 0), listed.get(tp, 0)) for tp in partitions}


async def fetch_highwaters(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The high watermark of each of ``partitions`` as a Fetch response gives it."""
    client = consumer._client
    by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for tp in partitions:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            raise RuntimeError(f"no leader known for {tp}")
        by_leader[leader][tp.topic].append((tp.partition, 0, 1))

    result: dict[TopicPartition, int] = {}
    for leader, topics in by_leader.items():
        # Tansu answers a zero-wait Fetch with no partitions at all; 10 ms is enough.
        request = FetchRequest(
            max_wait_time=10, min_bytes=0, max_bytes=1, isolation_level=0,
            topics=list(topics.items()),
        )
        response = await client.send(leader, request)
        for topic, parts in response.topics:
            for partition, error_code, highwater, *_ in parts:
                error = for_code(error_code)
                # OffsetOutOfRange still carries the high watermark; anything else is real.
                if error_code and error.__name__ != "OffsetOutOfRangeError":
                    raise error(f"fetching high watermark of {topic}[{partition}]")
                result[TopicPartition(topic, partition)] = highwater
    if missing := [tp for tp in partitions if tp not in result]:
        raise RuntimeError(f"the broker's Fetch response left out {missing}")
    return result


async def visible_ends(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """One past the last record a ``read_committed`` reader sees below the last stable
    offset, per partition — where a reader that has seen everything stands, in the
    offsets it is handed. On a topic written in transactions the log ends with a commit
    marker (and may hold aborted batches), which no reader is ever handed: Faust's table
    recovery waits for a record at ``end - 1`` and would wait forever for a marker, and
    a lag counted to the last stable offset never reaches 0. Read from the log itself,
    forwards from a little before the end (further back while nothing is visible)."""
    partitions = list(partitions)
    stable = await consumer.end_offsets(partitions)  # read_committed: the LSO
    starts = await consumer.beginning_offsets(partitions)
    result: dict[TopicPartition, int] = {}
    for tp in partitions:
        end, first = stable[tp], starts.get(tp, 0)
        window, found = 16, None
        while found is None:
            start = max(first, end - window)
            found = await _last_visible(consumer, tp, start, end)
            if start <= first:
                break
            window *= 8
        result[tp] = first if found is None else found + 1
    return result


async def _last_visible(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int,
                        end: int) -> int | None:
    """The offset of the last record at ``start..end-1`` a read_committed reader is handed."""
    client = consumer._client
    last: int | None = None
    cursor = start
    while cursor < end:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
        limit = 4 * 1024 * 1024
        request = FetchRequest(max_wait_time=10, min_bytes=1, max_bytes=limit,
                               isolation_level=1,
                               topics=[(tp.topic, [(tp.partition, cursor, limit)])])
        response = await client.send(leader, request)
        parts = [part for topic, answers in response.topics if topic == tp.topic
                 for part in answers if part[0] == tp.partition]
        if not parts or parts[0][1]:
            code = parts[0][1] if parts else -1
            raise for_code(code)(f"reading the end of {tp} at {cursor}")
        # After (partition, error, high watermark), as aiokafka's fetcher reads it: v11+
        # [lso, log start, aborted, preferred replica, records], v4-v10 [lso, (log
        # start,) aborted, records].
        rest = parts[0][3:]
        aborted = rest[2] if response.API_VERSION >= 11 else rest[-2]
        data = rest[-1]
        records = PartitionRecords(tp, MemoryRecords(data), aborted, cursor, None, None,
                                   False, READ_COMMITTED)
        for record in records:
            if record.offset >= end:
                return last
            last = record.offset
        if records.next_fetch_offset <= cursor:
            break  # nothing more to read at or after the cursor
        cursor = records.next_fetch_offset
    return last


class _Skipped:
    """Offsets aiokafka's fetcher passed over without handing a record: transaction
    markers, and with read_committed the batches of aborted transactions. Recorded in
    the consumer's thread as the fetcher parses a response, read by the input gap guard
    (a hole made only of these needs no broker round trip: the fetcher read them from
    the log). A few thousand ranges per partition are kept."""

    def __init__(self) -> None:
        self._ranges: defaultdict[TopicPartition, deque[tuple[int, int]]] = defaultdict(
            lambda: deque(maxlen=4096))

    def add(self, tp: TopicPartition, start: int, end: int) -> None:
        self._ranges[tp].append((start, end))

    def covers(self, tp: TopicPartition, start: int, end: int) -> bool:
        """Whether every offset of ``start..end-1`` was passed over."""
        ranges = sorted(r for r in list(self._ranges.get(tp, ())) if r[1] > start
                        and r[0] < end)
        cursor = start
        for low, high in ranges:
            if low > cursor:
                return False
            cursor = max(cursor, high)
            if cursor >= end:
                return True
        return cursor >= end


#: Every consumer's passed-over offsets in this process (see :class:`_Skipped`).
SKIPPED = _Skipped()


class _RecordingPartitionRecords(PartitionRecords):  # type: ignore[misc]
    """aiokafka's parsed partition data, noting the offsets it passes over in
    :data:`SKIPPED` (its behaviour is unchanged)."""

    def _unpack_records(self) -> Iterator[Any]:
        expected = self.next_fetch_offset
        for record in super()._unpack_records():
            if record.offset > expected:
                SKIPPED.add(self._tp, expected, record.offset)
            expected = record.offset + 1
            yield record
        if self.next_fetch_offset > expected:
            SKIPPED.add(self._tp, expected, self.next_fetch_offset)


aiokafka_fetcher.PartitionRecords = _RecordingPartitionRecords


class MemoryStore(faust.stores.memory.Store[bytes, bytes]):
    """Faust's memory store, which also knows the changelog offset of what it holds (as
    the RocksDB store does).

    Faust's own returns no persisted offset, so every rebalance re-reads every partition
    the worker is given from the changelog's start — the ones it keeps included — and a
    promoted standby copy too; and it drops standby keys after each recovery. Measured
    with 200k contacts: ~40 s of re-reading per rebalance. With offsets kept in memory
    (empty in a new process: a restart still reads everything) a rebalance reads only the
    tail of the partitions kept and of standby copies. Keys and offsets of a partition
    neither active nor standby are dropped together after a recovery."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._offsets: dict[int, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._offsets.get(tp.partition)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self._offsets[tp.partition] = offset

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        offsets = self._offsets
        for event in events:
            partition, offset = event.message.partition, event.message.offset
            if offset > offsets.get(partition, -1):
                offsets[partition] = offset

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        keep = {tp.partition for tp in active_tps} | {tp.partition for tp in standby_tps}
        gone = [k for k, p in self._key_partition.items() if p not in keep]
        for key in gone:
            self.data.pop(key, None)
            self._key_partition.pop(key, None)
        for partition in [p for p in self._offsets if p not in keep]:
            del self._offsets[partition]


def use_memory_store(table: Any) -> None:
    """Make a table build a :class:`MemoryStore` where Faust would build its own: when the
    store is first used, in the running loop (a mode service built earlier would belong
    to no loop and never stop), with the arguments ``Table._new_store_by_url`` passes."""

    def new_store_by_url(url: Any) -> MemoryStore:
        return MemoryStore(
            url, table.app, table, table_name=table.name, key_type=table.key_type,
            key_serializer=table.key_serializer, value_serializer=table.value_serializer,
            value_type=table.value_type, loop=table.loop, options=table.options)

    table._new_store_by_url = new_store_by_url


class StoreAccess:
    """Read and write a raw-serialized Faust table's store with an explicit partition.

    Keys and values are bytes (the table is declared with raw serializers). The memory
    store is one dict for all partitions; the RocksDB store has one database per
    partition, which Faust chooses from the current stream event — a batch has none.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def _store(self) -> Any:
        return self.table.data

    @property
    def rocksdb(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if self.rocksdb:
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        return cast(bytes | None, store.data.get(key))

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        store = self._store
        if self.rocksdb:
            store._db_for_partition(partition).put(key, value)
            store._key_index[key] = partition
        else:
            store.data[key] = value
            # What the memory store drops when the partition is revoked.
            store._key_partition[key] = partition

    def persisted(self, tp: TP, offset: int) -> None:
        """Record the newest changelog offset written (RocksDB recovers from there)."""
        self._store.set_persisted_offset(tp, offset)

    def known_partition(self, key: bytes) -> int | None:
        """The partition a stored key was written to or recovered from, if known (the
        stores keep it: memory for every key, RocksDB for recent ones)."""
        store = self._store
        index = store._key_index if self.rocksdb else store._key_partition
        found: int | None = index.get(key)
        return found

    def items(self, partitions: set[int]) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) stored for ``partitions``. The memory store is one dict for
        all partitions: its key → partition map (which Faust keeps to drop a revoked
        partition's keys) says which are ``partitions``'; taken as a list first, so the
        store may change while the caller goes through them."""
        store = self._store
        if self.rocksdb:
            for partition in sorted(partitions):
                db = store._db_for_partition(partition)
                iterator = db.items() if hasattr(db, "items") else db.iteritems()
                # Faust keeps the partition's persisted changelog offset in the same db.
                yield from ((k, v) for k, v in iterator if k != store.offset_key)
        else:
            data = store.data
            keys = [k for k, p in store._key_partition.items() if p in partitions]
            yield from [(k, v) for k in keys if (v := data.get(k)) is not None]

