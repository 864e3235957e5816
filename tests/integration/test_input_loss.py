"""The input-loss root cause (docs/reliability.md), reproduced deterministically against
the broker with dripstream's Faust consumer (tests/integration/seek_probe.py drives it),
and the gap guard that stays as its detector.

The first two fail with the consumer as it was before streams/compat.py counted position
moves: the first commits offset 31 with only 10..29 acked (and crawls one offset per
commit on the way), the second never reads 20..99 again."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from producers.publisher import build_event
from tests.conftest import Broker
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration

CONTACTS = 60


def probe(broker: Broker, scenario: str) -> dict[str, Any]:
    name = f"loss{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.seek_probe", scenario, broker.bootstrap,
         name, "embedded" if broker.embedded else "production", broker.kind],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_seek_to_the_committed_offset_while_the_drain_holds_a_fetch(broker: Broker) -> None:
    """Committed 10; the drain holds 20..29 of a fetch of 10..99 when Faust seeks to the
    committed offset. The agent acks 10..29 only: no commit may pass 30, and the agent is
    handed 10..99 again, contiguously, from the committed offset."""
    result = probe(broker, "seek")
    assert result["acked"] == list(range(10, 30))
    assert max(result["commits"]) == 30, result["commits"]  # not past what was acked
    assert result["commits"][0] == 30, "the first commit covers all that was acked"
    assert result["broker_committed"] == 30
    assert result["delivered"][:20] == list(range(10, 30))  # before the seek
    assert result["delivered"][20:] == list(range(10, 100))  # read again from 10, no gap


def test_records_faust_drops_on_an_uncommitted_partition_are_read_again(
    broker: Broker,
) -> None:
    """Nothing committed; the flow stops (a rebalance) while the drain holds a fetch of
    0..99: Faust drops 20..99 and seeks to the committed offset -- there is none. Every
    record still reaches the agent."""
    result = probe(broker, "uncommitted")
    assert set(result["delivered"]) == set(range(100))
    assert result["delivered"][:20] == list(range(20))


async def test_the_gap_guard_finds_rewinds_heals_and_counts_lost_records(stack: Stack) -> None:
    """Ten input records never reach the guard (``DRIPSTREAM_FAULT=lose_input``, as the
    consumer lost them before the fix): the broker holds them, so the guard rewinds, the
    records are read again, every contact is processed, and the liveness file counts each
    hole found, rewound and healed."""
    await stack.publisher.send_many([
        build_event("acme", f"c-{n}", "contact.created", {}, event_id=f"e-{n}")
        for n in range(CONTACTS)])
    stack.start_worker(env={"DRIPSTREAM_FAULT": "lose_input:20"})
    for n in range(CONTACTS):
        await stack.wait_contact("acme", f"c-{n}", 1, timeout=60)
    path = stack.settings.health_path

    async def counted() -> dict[str, int] | None:
        holes = json.loads(path.read_text())["input_holes"] if path.exists() else None
        return holes if holes and holes["healed"] else None

    holes = await eventually(counted, timeout=30, what="the liveness file's hole counts")
    assert holes["holes"] >= 1
    assert holes["healed"] == holes["rewinds"] == holes["holes"]
    assert (holes["explained"], holes["undelivered"], holes["stuck"]) == (0, 0, 0)
    log = stack.worker_log(0)
    assert "fault injection: lose_input" in log
    assert "never reached the agent (the broker holds a record at offset" in log
    assert "read again after 1 rewind(s)" in log
