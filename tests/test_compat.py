"""streams/compat.py reaches inside faust-streaming, mode and aiokafka: these tests fail
when an upgrade moves what it relies on, so the upgrade is a conscious re-check.

Each internal is fingerprinted by the SHA-256 of its source. A mismatch means: read the
new version of that function, check what streams/compat.py (or agents/worker.py for the
spinner) assumes about it still holds, then update the fingerprint and ``CHECKED``.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib import import_module, metadata
from typing import Any, cast

import pytest

from streams import compat

FINGERPRINTS = {
    # Replaced by compat.BatchConsumer._drain_messages (its read-offset bookkeeping kept;
    # its gap handling is the input-loss cause, not copied).
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
    # Called by the batch drain and the agent: tracking, acks, rewinds, fetching. getmany
    # calls _wait_next_records -> _getmany once per fetch (BatchConsumer._getmany keeps the
    # fetch's position moves for the drain) and drops records when the flow stops, the
    # generation changes or a partition is paused, relying on perform_seek ->
    # seek_to_committed to read them again.
    "faust.transport.consumer:Consumer.track_message": "217d7f1399a4cd8e",
    "faust.transport.consumer:Consumer.ack": "5fcf41cf45153475",
    "faust.transport.consumer:Consumer.seek": "b86a9fe05f956b30",
    "faust.transport.consumer:Consumer.getmany": "4b168d84882a70d6",
    "faust.transport.consumer:Consumer._wait_next_records": "6218e1969a636b3f",
    "faust.transport.consumer:Consumer.perform_seek": "0e8c130ff4b0afd8",
    "faust.transport.consumer:ThreadDelegateConsumer._getmany": "f9d47aa9010b5ff2",
    "faust.transport.consumer:ThreadDelegateConsumer._seek": "4f95c631420410a5",
    # compat.skip_offsets writes the gap tree the way this reads it (whole intervals are
    # added to the acked offsets once an acked offset passes their start: the loss when a
    # gap is recorded over records not processed yet, docs/reliability.md).
    "faust.transport.consumer:Consumer._new_offset": "1d2c7ea89a7ad4f1",
    # Wrapped (position moves counted, the live active set) or replaced (seek to the
    # committed offset) by compat._ConsumerThread; getmany reaches _fetch_records.
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._fetch_records":
        "39a2c6c79fc1455a",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._seek_wait": "9d221e816d940467",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed":
        "775ab0adc4b052ab",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.getmany": "26fc5fc9f3b667e1",
    # The fetch wait is set on the consumer this builds; end offsets replace this one.
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer":
        "c2701bfc3e6f6cad",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": "a7f4f97d9f32aca2",
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread": "0870ec53dea75083",
    # compat.MemoryStore extends these (and use_memory_store builds it as this does).
    "faust.stores.memory:Store.persisted_offset": "fbba5c6544979388",
    "faust.tables.base:Collection._new_store_by_url": "343a8125107d3f69",
    # StoreAccess writes the stores the way these read them back.
    "faust.stores.memory:Store.apply_changelog_batch": "71863e3cd727aac2",
    "faust.stores.memory:Store.on_recovery_completed": "a00bef343e139602",
    "faust.stores.rocksdb:Store._set": "4227e561e288d941",
    "faust.stores.rocksdb:Store._db_for_partition": "cb7e67d5f9efc4bc",
    # agents/worker.py turns the terminal spinner off because of what this does.
    "faust.worker:Worker._setup_spinner_handler": "18cb28ef5b3de212",
    # Reads ``_fetch_max_wait_ms`` when it builds its fetcher, and the fetcher reads its
    # own for each request (the adaptive fetch wait sets it).
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "2f1ba70443327538",
    "aiokafka.consumer.fetcher:Fetcher._get_actions_per_node": "1dab2cf937d165d0",
    # compat._ConsumerThread._seek_to_committed imitates this one (which seeks only a
    # committed offset above 0); fetched_records reads an empty partition set as "every
    # partition" (hence compat._Live); seek_to drops the buffered fetch, so a record
    # fetched before a move is fetched again from the new position.
    "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed": "f6cd85c8b70a4ccf",
    "aiokafka.consumer.fetcher:Fetcher.fetched_records": "be4348896b9b66af",
    "aiokafka.consumer.fetcher:Fetcher.seek_to": "f0ba6aba6c22ef83",
    # compat._RecordingPartitionRecords wraps _unpack_records (offsets passed over: the
    # control and aborted batches it skips, advancing next_fetch_offset); __init__ calls
    # it; the fetcher builds the class by its module-global name (replaced by compat, so
    # the originals are reached through compat's own import of them). visible_ends builds
    # one itself with read_committed.
    "streams.compat:PartitionRecords._unpack_records": "b803e6d46480732c",
    "streams.compat:PartitionRecords.__init__": "8ec1c2ae6ea1af87",
    "aiokafka.consumer.fetcher:Fetcher._proc_fetch_request": "59bf948fff47eed5",
    # BatchConsumer.on_partitions_assigned runs the exactly-once fence before this
    # starts Faust's assignment chain (committed offsets, table recovery).
    "faust.transport.consumer:Consumer.on_partitions_assigned": "29ce96596f05a18c",
    # BatchConsumer._commit leaves the input partitions out with exactly-once (their
    # offsets commit in transactions); this calls it and records the offsets as committed
    # when it answers True.
    "faust.transport.consumer:Consumer._commit_offsets": "1a69799041188441",
    "faust.transport.consumer:ThreadDelegateConsumer._commit": "a20eec84e4b2ed50",
    # compat.leave_by_expiry (channel workers on the embedded broker) replaces the
    # coordinator's _maybe_leave_group, which close() calls to send LeaveGroup.
    "aiokafka.consumer.group_coordinator:GroupCoordinator._maybe_leave_group":
        "016cd88a16e6c4b5",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.close": "f30d831089456312",
    # compat._ConsumerThread.on_thread_stop: the same, for the stream worker's consumer,
    # before this stops it.
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.on_thread_stop":
        "8dfc004e258b6c25",
    # Resumes the input partitions *before* its seek to the committed offsets, so the
    # position aiokafka set at assignment is read first (hence BatchConsumer's seek after
    # the exactly-once fence); a seek made while aiokafka fetches the committed offset
    # for a position wins over that offset.
    "faust.tables.recovery:Recovery._resume_streams": "d986a6710c1aca98",
    "aiokafka.consumer.fetcher:Fetcher._update_fetch_positions": "d7774d8241dc6a7e",
}


def _resolve(target: str) -> Any:
    module, _, path = target.partition(":")
    obj: Any = import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("target", sorted(FINGERPRINTS))
def test_internal_unchanged(target: str) -> None:
    """The source of an internal compat relies on is the one it was checked against."""
    source = inspect.getsource(_resolve(target))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == FINGERPRINTS[target], (
        f"{target} changed: re-check streams/compat.py against it")


@pytest.mark.parametrize("dist", sorted(compat.CHECKED))
def test_installed_versions_are_the_checked_ones(dist: str) -> None:
    """The installed faust-streaming, mode and aiokafka are the versions compat names."""
    assert metadata.version(dist) == compat.CHECKED[dist]


def test_the_fetcher_builds_compats_partition_records() -> None:
    """aiokafka's fetcher reaches PartitionRecords by its module-global name, which compat
    replaced with the subclass that records passed-over offsets."""
    fetcher = import_module("aiokafka.consumer.fetcher")
    assert fetcher.PartitionRecords is compat._RecordingPartitionRecords
    assert "partition_records = PartitionRecords(" in inspect.getsource(
        fetcher.Fetcher._proc_fetch_request)


def test_attributes_compat_reads_exist() -> None:
    """Private attributes read (not called) by compat are set where it expects them."""
    from aiokafka import AIOKafkaClient, AIOKafkaConsumer
    from aiokafka.consumer.subscription_state import SubscriptionState

    consumer = inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in consumer
    assert "self._isolation_level = isolation_level" in consumer
    assert "self._client = AIOKafkaClient(" in consumer
    assert "self._subscription = SubscriptionState(" in consumer
    assert callable(AIOKafkaClient.force_metadata_update)
    assert isinstance(SubscriptionState.subscription, property)
    init = inspect.getsource(import_module("faust.transport.consumer").Consumer.__init__)
    for name in ("_read_offset", "_committed_offset", "_gap"):
        assert f"self.{name} = " in init, name
    fetcher = inspect.getsource(import_module("aiokafka.consumer.fetcher").Fetcher.__init__)
    assert "self._default_reset_strategy = " in fetcher
    memory = inspect.getsource(import_module("faust.stores.memory").Store.__post_init__)
    assert "self._key_partition" in memory and "self.data" in memory
    rocksdb = import_module("faust.stores.rocksdb").Store
    assert "self._key_index" in inspect.getsource(rocksdb.__init__)
    assert rocksdb.offset_key == b"__faust\0offset__"  # StoreAccess.items skips it


def _offsets_consumer(committed: int) -> Any:
    """The part of Faust's consumer its commit bookkeeping (``_new_offset``) reads."""
    from collections import defaultdict
    from types import SimpleNamespace

    from intervaltree import IntervalTree

    consumer = SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set),
                               _gap=defaultdict(IntervalTree),
                               _committed_offset=defaultdict(lambda: None))
    consumer._committed_offset[TP] = committed
    return consumer


def _acked(consumer: Any, *offsets: int) -> None:
    for offset in offsets:  # what Consumer.ack records
        consumer._acked_index[TP].add(offset)
        consumer._acked[TP].append(offset)


TP = ("events", 0)


def _commit(consumer: Any) -> int:
    from faust.transport.consumer import Consumer

    offset = Consumer._new_offset(consumer, TP)
    if offset is not None and Consumer._should_commit(consumer, TP, offset):
        consumer._committed_offset[TP] = offset
    committed: int = consumer._committed_offset[TP]
    return committed


async def test_faust_commits_past_a_gap_recorded_over_records_in_flight() -> None:
    """Upstream behaviour the fix avoids: once a gap is recorded over records that were
    delivered (the jump after perform_seek), commits crawl one offset at a time while the
    duplicates last, then pass records nobody acked (500..502 acked, 503..1249 not)."""
    from faust.transport.consumer import Consumer

    consumer = _offsets_consumer(500)
    await Consumer._add_gap(consumer, TP, 501, 1250)
    _acked(consumer, 500, 501, 502)
    assert [_commit(consumer) for _ in range(3)] == [502, 503, 1251]


def test_skip_offsets_lets_commits_pass_exactly_the_hole() -> None:
    """A proven hole at the committed offset itself (two transaction markers at 10, 11):
    commits pass it once a record after it is acked, and stop at the first record after
    it that is not."""
    from types import SimpleNamespace

    consumer = _offsets_consumer(10)
    compat.skip_offsets(cast(Any, SimpleNamespace(consumer=consumer)), cast(Any, TP), 10, 12)
    assert _commit(consumer) == 10  # nothing acked yet: nothing to commit
    _acked(consumer, 13)  # 12 not acked
    assert _commit(consumer) == 12
    _acked(consumer, 12)
    assert _commit(consumer) == 14


def test_faust_commits_one_past_an_unacked_committed_offset() -> None:
    """Upstream (faust-streaming#606): with 14 committed and 15 acked, Faust commits 16
    though 14 was never acked. The agent acks each partition's records in input order,
    so this never happens to it; a change that acks out of order must handle it."""
    consumer = _offsets_consumer(14)
    _acked(consumer, 15)
    assert _commit(consumer) == 16


def test_the_active_partitions_aiokafka_sees_are_never_empty() -> None:
    """aiokafka's fetched_records reads an empty set as every partition; compat hands it
    Faust's live set (changes show through) that is never falsy."""
    live: set[Any] = set()
    view = compat._Live(live)
    assert view and ("t", 0) not in view
    live.add(("t", 0))
    assert ("t", 0) in view


def _batch(base: int, count: int, *, control: bool = False) -> bytes:
    """A v2 record batch of ``count`` records from offset ``base`` (a control batch: one
    commit marker, as a transaction coordinator writes it)."""
    import struct

    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as Builder

    class Marker(Builder):  # type: ignore[misc]
        def _get_attributes(self, include_compression_type: bool = True) -> int:
            attributes: int = super()._get_attributes(include_compression_type)
            return attributes | self.CONTROL_MASK

    builder = (Marker if control else Builder)(2, 0, int(control), -1, -1, -1, 1 << 20)
    for n in range(count):
        key, value = (struct.pack(">hh", 0, 1), struct.pack(">hi", 0, 0)) if control else (
            None, b"v")
        builder.append(n, timestamp=None, key=key, value=value, headers=[])
    data = builder.build()
    struct.pack_into(">q", data, 0, base)  # the base offset (outside the CRC)
    return bytes(data)


def test_offsets_in_a_control_batch_are_transaction_markers() -> None:
    """Records 0..4, a commit marker at 5, records 6..8: 5 holds no record; 2 and 3 do;
    and an offset no batch covers is never taken for a marker."""
    log = _batch(0, 5) + _batch(5, 1, control=True) + _batch(6, 3)
    assert compat._walk(log, 5, 6) == (6, 1, "")
    assert compat._walk(log, 2, 4) == (2, 0, "the broker holds a record at offset 2")
    holed = _batch(0, 5) + _batch(7, 2)
    assert compat._walk(holed, 5, 7)[2] == "no record batch holds offsets 5..6"
    assert compat._walk(b"", 5, 6)[2] == "nothing fetched at offset 5"


async def test_offsets_below_the_log_start_were_deleted_by_retention() -> None:
    """The broker's log starts at 5: offsets 2..4 no longer exist."""
    from types import SimpleNamespace

    async def beginning_offsets(tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 5)

    cluster = SimpleNamespace(leader_for_partition=lambda tp: 1)
    consumer = SimpleNamespace(_client=SimpleNamespace(cluster=cluster),
                               beginning_offsets=beginning_offsets)
    absent = await compat.absent_offsets(cast(Any, consumer), cast(Any, TP), 2, 5)
    assert absent == compat.Absent(True, deleted=3)


def test_the_fetcher_notes_the_offsets_it_passes_over() -> None:
    """Records 0..4, a marker at 5, records 6..8, a marker at 9 (a log written in
    transactions ends with one): every record is handed over as before, and 5 and 9 are
    noted as passed over — the input gap guard's proof that they hold no record."""
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    tp = TopicPartition(f"passed-{id(object())}", 0)
    log = _batch(0, 5) + _batch(5, 1, control=True) + _batch(6, 3) + _batch(9, 1, control=True)
    records = compat._RecordingPartitionRecords(tp, MemoryRecords(log), [], 0, None, None,
                                                False, 0)
    assert [r.offset for r in records] == [0, 1, 2, 3, 4, 6, 7, 8]
    assert records.next_fetch_offset == 10
    assert compat.SKIPPED.covers(tp, 5, 6) and compat.SKIPPED.covers(tp, 9, 10)
    assert not compat.SKIPPED.covers(tp, 4, 6)  # 4 is a record


def test_a_partition_never_committed_starts_at_its_log_start() -> None:
    """With nothing committed the agent must still see the partition from its log start
    (where the group was started): a first record lost on the way is then a hole before
    the second, found like any other (it was taken for the start and lost for good)."""
    from types import SimpleNamespace

    from streams.gapguard import GapGuard

    tp = ("t", 0)
    app = SimpleNamespace(consumer=SimpleNamespace(
        _committed_offset={}, _thread=SimpleNamespace(starts={tp: 0})))
    assert compat.committed_offset(app, tp) == 0  # type: ignore[arg-type]
    app.consumer._committed_offset[tp] = 7
    assert compat.committed_offset(app, tp) == 7  # type: ignore[arg-type]
    verdict = GapGuard().observe("t", 0, 1, generation=1, committed=0)
    assert (verdict.action, verdict.offset) == ("check", 0)


async def test_after_the_fence_the_inputs_are_sought_to_their_committed_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exactly-once: the positions aiokafka took from the committed offsets at assignment
    may predate the previous owner's last transaction (the fence lets it finish), and
    Faust resumes the inputs before its own seek. So the input partitions (not the
    changelogs) are sought again after the fence and before Faust's chain: records the
    previous owner committed are not handed over again (the three-broker chaos run:
    dead letters twice). At least once nothing changes."""
    from types import SimpleNamespace

    from aiokafka.structs import TopicPartition
    from faust.transport.consumer import Consumer

    calls: list[str] = []

    async def fence(partitions: set[int]) -> None:
        calls.append(f"fence {sorted(partitions)}")

    async def seek_to_committed(only: set[Any] | None = None) -> dict[Any, int]:
        calls.append(f"seek {sorted((tp.topic, tp.partition) for tp in only or ())}")
        return {}

    async def faust_chain(self: Any, assigned: set[Any], generation_id: int = 0) -> None:
        calls.append("faust")

    monkeypatch.setattr(Consumer, "on_partitions_assigned", faust_chain)
    assigned = {TopicPartition("events", 0), TopicPartition("events", 1),
                TopicPartition("worker-contacts-changelog", 0)}
    for exactly_once, expected in [
        (True, ["fence [0, 1]", "seek [('events', 0), ('events', 1)]", "faust"]),
        (False, ["faust"]),
    ]:
        consumer: Any = compat.BatchConsumer.__new__(compat.BatchConsumer)
        consumer.__dict__.update(
            app=SimpleNamespace(before_assignment=fence if exactly_once else None,
                                batches=SimpleNamespace(topics=frozenset({"events"}))),
            _thread=SimpleNamespace(seek_to_committed=seek_to_committed))
        calls.clear()
        await consumer.on_partitions_assigned(assigned)
        assert calls == expected
