"""The RocksDB table store (``DRIPSTREAM_STORE=rocksdb://``): the same engine, the state on
local disk, a restart that replays only what the disk missed."""

from __future__ import annotations

import signal

import pytest

from producers.publisher import build_event
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

ROCKSDB = {"DRIPSTREAM_STORE": "rocksdb://"}


async def test_rocksdb_worker_applies_events_and_survives_sigkill(stack: Stack) -> None:
    """Contacts written through a RocksDB store: after SIGKILL and a restart on the same
    data directory, every contact is whole and new events apply on top."""
    contacts, per_contact = 30, 8
    await stack.publisher.send_many([
        build_event("acme", f"c-{c}", "contact.tagged", {"tag": f"t{n}"}, event_id=f"e-{c}-{n}")
        for n in range(per_contact) for c in range(contacts)])
    first = stack.start_worker(env=ROCKSDB)
    for c in range(contacts):
        await stack.wait_contact("acme", f"c-{c}", per_contact, timeout=60)
    assert any((stack.settings.data_dir).rglob("*.sst")) or any(
        (stack.settings.data_dir).rglob("CURRENT")), "RocksDB files on disk"
    await eventually(stack.committed_any, what="input offsets committed")
    stack.kill(first, signal.SIGKILL)

    stack.start_worker(env=ROCKSDB)
    await stack.publisher.send_many([
        build_event("acme", f"c-{c}", "contact.tagged", {"tag": "after"}, event_id=f"a-{c}")
        for c in range(contacts)])
    for c in range(contacts):
        state = await stack.wait_contact("acme", f"c-{c}", per_contact + 1, timeout=60)
        assert state["version"] == per_contact + 1
        assert state["tags"] == sorted([*(f"t{n}" for n in range(per_contact)), "after"])
