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
from typing import Any

import pytest

from streams import compat

FINGERPRINTS = {
    # Replaced by compat.BatchConsumer._drain_messages (read-offset and gap handling
    # copied from it).
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
    # Called by the batch drain and the agent: tracking, acks, holes, rewinds, fetching.
    "faust.transport.consumer:Consumer.track_message": "217d7f1399a4cd8e",
    "faust.transport.consumer:Consumer.ack": "5fcf41cf45153475",
    "faust.transport.consumer:Consumer._add_gap": "4df2573ded7c1c2c",
    "faust.transport.consumer:Consumer.seek": "b86a9fe05f956b30",
    "faust.transport.consumer:Consumer.getmany": "4b168d84882a70d6",
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


def test_attributes_compat_reads_exist() -> None:
    """Private attributes read (not called) by compat are set where it expects them."""
    from aiokafka import AIOKafkaClient, AIOKafkaConsumer
    from aiokafka.consumer.subscription_state import SubscriptionState

    consumer = inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in consumer
    assert "self._client = AIOKafkaClient(" in consumer
    assert "self._subscription = SubscriptionState(" in consumer
    assert callable(AIOKafkaClient.force_metadata_update)
    assert isinstance(SubscriptionState.subscription, property)
    init = inspect.getsource(import_module("faust.transport.consumer").Consumer.__init__)
    for name in ("_read_offset", "_committed_offset"):
        assert f"self.{name} = " in init, name
    memory = inspect.getsource(import_module("faust.stores.memory").Store.__post_init__)
    assert "self._key_partition" in memory and "self.data" in memory
    rocksdb = import_module("faust.stores.rocksdb").Store
    assert "self._key_index" in inspect.getsource(rocksdb.__init__)
    assert rocksdb.offset_key == b"__faust\0offset__"  # StoreAccess.items skips it
