"""Failover with a standby replica (DRIPSTREAM_STANDBY_REPLICAS, rocksdb://): when a worker
dies, the other one already holds its partitions' contacts and takes them over from where
its copy was, not from the changelog's start. The times are measured by the bench
(``python -m bench --paths recovery``); this proves what happens, not how fast."""

from __future__ import annotations

import re
import signal

import pytest

from producers.publisher import build_event
from tables.store import partition_for
from tests.stack import Stack

pytestmark = pytest.mark.integration

CONTACTS = 400


async def test_the_standby_takes_over_a_dead_workers_partitions(stack: Stack) -> None:
    env = {"DRIPSTREAM_STORE": "rocksdb://", "DRIPSTREAM_STANDBY_REPLICAS": "1"}
    first = stack.start_worker({**env, "DRIPSTREAM_DATA_DIR": str(stack.tmp_path / "d0")})
    second = stack.start_worker({**env, "DRIPSTREAM_DATA_DIR": str(stack.tmp_path / "d1")})
    await stack.publisher.send_many([
        build_event("acme", f"c-{n}", "contact.created", {"attributes": {"n": n}},
                    event_id=f"signup-{n}") for n in range(CONTACTS)])
    for n in range(CONTACTS):
        await stack.wait_contact("acme", f"c-{n}", 1, timeout=60)

    stack.kill(first, signal.SIGKILL)
    await stack.publisher.send_many([
        build_event("acme", f"c-{n}", "contact.tagged", {"tag": "after"},
                    event_id=f"tag-{n}") for n in range(CONTACTS)])
    for n in range(CONTACTS):  # every contact, whoever owned it, with its whole state
        state = await stack.wait_contact("acme", f"c-{n}", 2, timeout=60)
        assert (state["attributes"], state["tags"]) == ({"n": n}, ["after"])
    assert second.exit_code is None

    # After the kill the survivor is active for every partition, and read each one from
    # where its copy was: none from the changelog's start (-1), the moved ones included.
    log = stack.worker_log(1)
    block = log.rsplit("active offsets at start of reading", 1)[-1].split("+ \n", 1)[0]
    starts = {int(p): int(o) for p, o in re.findall(r"\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|",
                                                   block)}
    assert (set(starts), min(starts.values()) > 0) == (
        set(range(stack.settings.partitions)), True), block
    moved = {partition_for(f"c-{n}", stack.settings.partitions) for n in range(CONTACTS)}
    assert len(moved) == stack.settings.partitions
