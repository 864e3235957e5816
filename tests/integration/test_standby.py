"""Failover and standby replicas (DRIPSTREAM_STANDBY_REPLICAS): when a worker dies, the
survivor takes its partitions over, and reads from the changelog only what it has not got:
nothing again of the partitions it kept, and — with a standby copy — of the moved ones
only the tail. Faust's own memory store re-read every partition from the start on every
rebalance (streams/compat.py: MemoryStore). The times are measured by the bench
(``python -m bench --paths recovery``); this proves what is read, not how fast."""

from __future__ import annotations

import re
import signal

import pytest

from producers.publisher import build_event
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

CONTACTS = 400


def reading_starts(log: str) -> dict[int, int]:
    """The changelog offset each active partition's reading started at in the worker's
    last recovery (Faust's table in its log; -1: from the start)."""
    block = log.rsplit("active offsets at start of reading", 1)[-1].split("+ \n", 1)[0]
    return {int(p): int(o) for p, o in re.findall(r"\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|", block)}


@pytest.mark.parametrize(("store", "standbys"), [("memory", 0), ("memory", 1), ("rocksdb", 1)])
async def test_the_survivor_reads_only_what_it_has_not_got(stack: Stack, store: str,
                                                           standbys: int) -> None:
    env = {"DRIPSTREAM_STORE": f"{store}://", "DRIPSTREAM_STANDBY_REPLICAS": str(standbys)}
    first = stack.start_worker({**env, "DRIPSTREAM_DATA_DIR": str(stack.tmp_path / "d0")})
    second = stack.start_worker({**env, "DRIPSTREAM_DATA_DIR": str(stack.tmp_path / "d1")})

    async def shared() -> bool:  # both in the group: the survivor has half the partitions
        return 0 < len(reading_starts(stack.worker_log(1))) < stack.settings.partitions

    await eventually(shared, timeout=60, what="the two workers sharing the partitions")
    await stack.publisher.send_many([
        build_event("acme", f"c-{n}", "contact.created", {"attributes": {"n": n}},
                    event_id=f"signup-{n}") for n in range(CONTACTS)])
    for n in range(CONTACTS):
        await stack.wait_contact("acme", f"c-{n}", 1, timeout=60)
    kept = set(reading_starts(stack.worker_log(1)))  # the survivor's before the kill

    stack.kill(first, signal.SIGKILL)
    await stack.publisher.send_many([
        build_event("acme", f"c-{n}", "contact.tagged", {"tag": "after"},
                    event_id=f"tag-{n}") for n in range(CONTACTS)])
    for n in range(CONTACTS):  # every contact, whoever owned it, with its whole state
        state = await stack.wait_contact("acme", f"c-{n}", 2, timeout=60)
        assert (state["attributes"], state["tags"]) == ({"n": n}, ["after"])
    assert second.exit_code is None

    starts = reading_starts(stack.worker_log(1))
    assert set(starts) == set(range(stack.settings.partitions))
    moved = {p: o for p, o in starts.items() if p not in kept}
    assert all(starts[p] > 0 for p in kept), starts  # nothing read again of its own
    if standbys:
        assert all(o > 0 for o in moved.values()), starts  # from its copy onwards
    else:
        assert all(o == -1 for o in moved.values()), starts  # no copy: from the start
