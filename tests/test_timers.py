"""The timer's due index (agents/timers.py) and the liveness judgement (agents/worker.py):
plain bookkeeping, tested with values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.timers import DueIndex, InputClock
from agents.worker import Health

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def test_due_contacts_pop_in_time_order_and_only_once() -> None:
    """Contacts come out when their time has come, earliest first, once each."""
    index = DueIndex()
    index.schedule("acme:b", T0 + 2 * SECOND)
    index.schedule("acme:a", T0 + SECOND)
    index.schedule("acme:c", T0 + 10 * SECOND)
    assert index.pop_due(T0, 10) == []
    assert index.pop_due(T0 + 5 * SECOND, 10) == ["acme:a", "acme:b"]
    assert index.pop_due(T0 + 5 * SECOND, 10) == []
    assert len(index) == 1


def test_a_moved_or_cleared_due_time_wins() -> None:
    """The newest schedule of a contact counts: moved later, it is not due at the old
    time; cleared, it never comes."""
    index = DueIndex()
    index.schedule("acme:a", T0)
    index.schedule("acme:a", T0 + 60 * SECOND)
    index.schedule("acme:b", T0)
    index.schedule("acme:b", None)
    assert index.pop_due(T0 + SECOND, 10) == []
    assert index.pop_due(T0 + 60 * SECOND, 10) == ["acme:a"]


def test_the_heap_stays_about_the_size_of_the_waiting_contacts() -> None:
    """A contact rescheduled many times does not grow the heap without bound."""
    index = DueIndex()
    for n in range(10_000):
        index.schedule("acme:a", T0 + n * SECOND)
    assert len(index) == 1
    assert len(index._heap) <= 2 * len(index) + 1024


def test_a_catch_up_is_bounded_per_tick() -> None:
    """After an outage, at most ``limit`` contacts come out per tick."""
    index = DueIndex()
    for n in range(50):
        index.schedule(f"acme:c{n}", T0)
    assert [len(index.pop_due(T0, 20)) for _ in range(4)] == [20, 20, 10, 0]


def test_partitions_no_longer_owned_are_forgotten() -> None:
    """After a rebalance, contacts of partitions that moved away are dropped."""
    from tables.store import partition_for

    index = DueIndex()
    keys = [f"acme:c{n}" for n in range(40)]
    for key in keys:
        index.schedule(key, T0)
    index.drop_partitions({0, 1}, 4)
    kept = index.pop_due(T0, 100)
    assert sorted(kept) == sorted(k for k in keys if partition_for(k[5:], 4) in {0, 1})


def test_a_partition_lost_and_regained_between_ticks_is_read_again() -> None:
    """A partition owned, lost to another worker (who changed its contacts' timers) and
    owned again, all between two ticks, looks unchanged by its set: the new generation
    makes it be read from the table again (found by the chaos run: waits never fired)."""
    index = DueIndex()
    assert index.assigned({3, 5, 7}, generation=1, partitions=8) == {3, 5, 7}
    assert index.assigned({3, 5, 7}, generation=1, partitions=8) == set()
    assert index.assigned({0, 3, 5}, generation=1, partitions=8) == {0}
    # Expelled while a batch was stuck, 7 was another worker's, then ours again.
    assert index.assigned({0, 3, 5, 7}, generation=8, partitions=8) == {0, 3, 5, 7}
    assert index.partitions == {0, 3, 5, 7}


def test_partitions_given_up_in_a_rebalance_are_forgotten() -> None:
    """A new assignment without a partition drops its contacts' timers."""
    from tables.store import partition_for

    index = DueIndex()
    index.assigned({0, 1, 2, 3}, generation=1, partitions=4)
    keys = [f"acme:c{n}" for n in range(40)]
    for key in keys:
        index.schedule(key, T0)
    index.assigned({0, 1}, generation=2, partitions=4)
    assert sorted(index.pop_due(T0, 100)) == sorted(
        k for k in keys if partition_for(k[5:], 4) in {0, 1})


@pytest.mark.parametrize(
    ("lag", "rebalancing", "idle_for", "expected"),
    [
        # Nothing waiting: idle, however long since the last batch.
        (0, False, 1000.0, "idle"),
        # Input waiting, a batch finished recently: making progress.
        (50, False, 10.0, "ok"),
        # Input waiting and no batch for longer than the limit: stalled.
        (50, False, 61.0, "stalled"),
        # A rebalance that just began is not a stall.
        (50, True, 1000.0, "rebalancing"),
    ],
)
def test_health_judgement(lag: int, rebalancing: bool, idle_for: float, expected: str) -> None:
    """Stalled means input waiting and no progress for ``stall_after_s``."""
    health = Health(stall_after_s=60.0, last_progress=0.0)
    assert health.judge(lag, rebalancing, idle_for) == expected


def test_a_rebalance_that_never_ends_is_a_stall() -> None:
    """Rebalancing for longer than the limit (a member stuck joining) is stalled too."""
    health = Health(stall_after_s=60.0, last_progress=0.0)
    assert health.judge(0, True, 100.0) == "rebalancing"
    assert health.judge(0, True, 170.0) == "stalled"
    assert health.judge(0, False, 171.0) == "idle"


def test_an_input_hole_stuck_for_the_limit_is_a_stall() -> None:
    """A hole the gap guard cannot close (streams/gapguard.py) stalls the worker once stuck
    for ``stall_after_s``, though its other partitions make progress."""
    health = Health(stall_after_s=60.0, last_progress=0.0)
    assert health.judge(50, False, 30.0, stuck_since=0.0) == "ok"
    health.last_progress = 60.0  # batches of other partitions finish
    assert health.judge(50, False, 61.0, stuck_since=0.0) == "stalled"
    assert health.judge(50, False, 62.0, stuck_since=None) == "ok"  # the hole closed


# -- waits fire on the input's clock (InputClock) ------------------------------------------

EVENTS, ROUTED = "t.contact-events", "t.routed"


def test_a_partition_level_with_its_input_is_applied_up_to_now() -> None:
    """Every input record the broker has was taken: nothing can still overtake a wait."""
    clock = InputClock((EVENTS, ROUTED))
    clock.took(EVENTS, 0, 41, 1000.0, generation=3, now=1990.0)
    assert clock.applied_until(0, 3, {EVENTS: 42, ROUTED: 7}, {EVENTS: 30, ROUTED: 7},
                               now=2000.0, hold=60) == 2000.0


def test_a_backlog_holds_waits_at_its_newest_taken_record_for_a_while() -> None:
    """Records still waiting on the broker: up to the newest timestamp taken — a wait due
    later than that waits for the backlog (the STOP in it) — and once the generation is
    ``hold`` old, never more than ``hold`` behind now."""
    clock = InputClock((EVENTS, ROUTED))
    clock.took(EVENTS, 0, 10, 1990.0, generation=3, now=2000.0)
    backlog = {EVENTS: 500, ROUTED: 0}
    assert clock.applied_until(0, 3, backlog, {}, now=2000.0, hold=60) == 1990.0
    assert clock.applied_until(1, 3, backlog, {}, now=2030.0, hold=60) == 0.0  # took none
    assert clock.applied_until(0, 3, backlog, {}, now=2100.0, hold=60) == 2040.0
    assert clock.applied_until(1, 3, backlog, {}, now=2100.0, hold=60) == 2040.0


def test_a_restart_gets_the_whole_hold_to_drain_its_backlog() -> None:
    """A wait due long ago (the worker was down) still waits for the STOP before it: the
    hold counts from the generation's start, not from the wait's due time."""
    clock = InputClock((EVENTS, ROUTED))
    assert clock.applied_until(0, 7, {EVENTS: 500, ROUTED: 0}, {EVENTS: 100},
                               now=5000.0, hold=60) == 0.0
    assert clock.applied_until(0, 7, {EVENTS: 500, ROUTED: 0}, {EVENTS: 100},
                               now=5061.0, hold=60) == 5001.0


def test_a_new_generation_forgets_what_was_taken() -> None:
    """After a rebalance the committed offsets are the reference again."""
    clock = InputClock((EVENTS, ROUTED))
    clock.took(EVENTS, 0, 99, 1999.0, generation=3, now=1999.0)
    clock.took(ROUTED, 5, 0, 1000.0, generation=4, now=2000.0)
    assert clock.applied_until(0, 4, {EVENTS: 100, ROUTED: 0}, {EVENTS: 50}, 2000.0, 60) == 0.0
    assert clock.applied_until(0, 4, {EVENTS: 100, ROUTED: 0}, {EVENTS: 100}, 2000.0,
                               60) == 2000.0


def test_waits_not_ready_stay_due_and_do_not_block_the_others() -> None:
    """Contacts of a lagging partition are passed over (kept, in order); the others come."""
    index = DueIndex()
    index.schedule("acme:lagging", T0)
    index.schedule("acme:fine", T0 + SECOND)
    out = index.pop_due(T0 + 5 * SECOND, 10, lambda key, due: key != "acme:lagging")
    assert (out, len(index)) == (["acme:fine"], 1)
    assert index.pop_due(T0 + 5 * SECOND, 10) == ["acme:lagging"]
