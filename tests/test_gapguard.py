"""The input gap guard (streams/gapguard.py): every hole found and counted, none passed
unless the broker explained it."""

from __future__ import annotations

from streams.gapguard import BACKOFF_MAX_S, UNDELIVERED_AFTER_S, Counts, GapGuard, Verdict

T = "events"


def feed(guard: GapGuard, offsets: list[int], committed: int | None = 0,
         generation: int = 1) -> list[str]:
    out = []
    for offset in offsets:
        v = guard.observe(T, 0, offset, generation, committed)
        out.append(v.action if v.action != "check" else f"check:{v.offset}")
    return out


def test_contiguous_offsets_are_processed() -> None:
    """Offsets arriving in order from the committed one are all processed."""
    guard = GapGuard()
    assert feed(guard, [5, 6, 7], committed=5) == ["process"] * 3
    assert guard.counts == Counts()


def test_a_hole_is_checked_rewound_and_healed() -> None:
    """6 then 32, and the broker holds 7..31: rewind to 7, skip what was fetched before the
    rewind, go on when the re-read reaches 7 -- one hole, one rewind, healed."""
    guard = GapGuard()
    assert feed(guard, [6, 32], committed=6) == ["process", "check:7"]
    assert guard.missing(T, 0, 7, 32, now=0.0) == 7
    assert feed(guard, [33, 34]) == ["skip", "skip"]
    healed = guard.observe(T, 0, 7, 1, 6)
    assert healed.action == "process" and healed.healed is not None
    assert (healed.healed.start, healed.healed.end) == (7, 32)
    assert feed(guard, list(range(8, 35))) == ["process"] * 27
    assert guard.counts == Counts(holes=1, rewinds=1, healed=1)
    assert guard.stuck() == []


def test_a_first_record_past_the_commit_is_a_hole() -> None:
    """A partition whose first record is past its committed offset lost the ones between."""
    assert feed(GapGuard(), [32], committed=6) == ["check:6"]


def test_transaction_markers_are_explained_without_a_rewind() -> None:
    """7..9 are transaction markers (the broker shows control batches there): the agent
    goes on at 10, no rewind."""
    guard = GapGuard()
    assert feed(guard, [6, 10], committed=6) == ["process", "check:7"]
    guard.explained(T, 0, 7, 10)
    assert feed(guard, [10, 11]) == ["process", "process"]
    assert guard.counts == Counts(holes=1, explained=1)


def test_a_hole_that_comes_back_after_a_rewind_is_not_accepted() -> None:
    """The re-read starts past the hole again and the broker still holds records there:
    no giving up -- rewinds with backoff (1 s, 2 s, ...), records skipped meanwhile, the
    hole reported stuck, until the records arrive."""
    guard = GapGuard()
    assert feed(guard, [6, 10], committed=6) == ["process", "check:7"]
    assert guard.missing(T, 0, 7, 10, now=0.0) == 7  # first time: at once
    assert feed(guard, [11, 10]) == ["skip", "check:7"]  # the re-read starts at 10 again
    assert guard.missing(T, 0, 7, 10, now=1.0) is None  # not accepted; rewind later
    [stuck] = guard.stuck()
    assert (stuck.start, stuck.end, stuck.stuck_since) == (7, 10, 1.0)
    assert feed(guard, [12, 13]) == ["skip", "skip"]  # never processed while stuck
    assert guard.due(now=1.5) == []
    [due] = guard.due(now=2.0)  # 1 s after the failed check
    assert (due.start, due.rewinds) == (7, 2)
    assert feed(guard, [10]) == ["check:7"]  # still missing
    assert guard.missing(T, 0, 7, 10, now=2.5) is None
    assert guard.due(now=4.4) == [] and len(guard.due(now=4.5)) == 1  # 2 s this time
    assert feed(guard, [7, 8, 9, 10]) == ["process"] * 4  # finally there
    assert guard.stuck() == []
    assert guard.counts == Counts(holes=1, rewinds=3, healed=1)


def test_the_backoff_stops_growing_at_its_maximum() -> None:
    guard = GapGuard()
    feed(guard, [6, 10], committed=6)
    guard.missing(T, 0, 7, 10, now=0.0)
    now = 0.0
    for _ in range(12):
        assert feed(guard, [10]) == ["check:7"]
        assert guard.missing(T, 0, 7, 10, now=now) is None
        hole = guard.hole(T, 0)
        assert hole is not None and hole.retry_at is not None
        assert hole.retry_at - now <= BACKOFF_MAX_S
        now = hole.retry_at
        assert len(guard.due(now)) == 1
    assert hole.retry_at is None and hole.rewinds == 13


def test_a_stuck_hole_the_broker_then_explains_is_counted_once() -> None:
    """Deleted by retention between two rewinds: explained, one hole."""
    guard = GapGuard()
    feed(guard, [6, 10], committed=6)
    guard.missing(T, 0, 7, 10, now=0.0)
    assert feed(guard, [10]) == ["check:7"]
    guard.explained(T, 0, 7, 10)
    assert feed(guard, [10, 11]) == ["process", "process"]
    assert guard.counts == Counts(holes=1, explained=1, rewinds=1)


def test_records_processed_already_are_skipped() -> None:
    """A record delivered twice within a generation is handed to the agent once."""
    assert feed(GapGuard(), [0, 1, 1, 2], committed=0) == [
        "process", "process", "skip", "process"]


def test_a_rebalance_starts_over_from_the_commit() -> None:
    """After a new generation, the committed offset is the reference again, and a hole
    pending in the old one is dropped: the new generation reads from the commit."""
    guard = GapGuard()
    assert feed(guard, [0, 1, 2, 9], committed=0, generation=1)[-1] == "check:3"
    guard.missing(T, 0, 3, 9, now=0.0)
    # Another worker processed 3..9 meanwhile; this one gets the partition back at 10.
    assert feed(guard, [10, 11], committed=10, generation=2) == ["process"] * 2
    assert guard.hole(T, 0) is None


def test_unknown_commit_accepts_the_first_offset() -> None:
    """Without a committed offset (a new group), the first record sets the reference."""
    assert feed(GapGuard(), [3, 4], committed=None) == ["process", "process"]


def test_an_idle_agent_behind_a_fetch_position_that_stays_put_rewinds_once() -> None:
    """Fetched up to 66 while the agent waits for 6, for UNDELIVERED_AFTER_S: read again
    from 6, once, counted as an undelivered hole."""
    guard = GapGuard()
    assert guard.lost_behind(T, 0, fetched=66, committed=6, now=0.0) is None  # first sight
    assert guard.lost_behind(T, 0, fetched=66, committed=6, now=1.0) is None
    assert guard.lost_behind(T, 0, 66, 6, now=UNDELIVERED_AFTER_S) == 6
    assert guard.lost_behind(T, 0, 66, 6, now=10.0) is None  # already rewinding
    hole = guard.hole(T, 0)
    assert hole is not None and (hole.start, hole.end) == (6, 66)
    assert guard.observe(T, 0, 6, None, 6) == Verdict("process", healed=hole)
    assert guard.lost_behind(T, 0, fetched=7, committed=6, now=11.0) is None  # caught up
    assert guard.counts == Counts(holes=1, rewinds=1, healed=1, undelivered=1)


def test_records_still_being_handed_over_are_not_a_hole() -> None:
    """The fetch position moves ahead as soon as the consumer's thread takes a fetch,
    before the agent has its records: while they arrive, no rewind."""
    guard = GapGuard()
    assert guard.lost_behind(T, 0, fetched=4400, committed=0, now=0.0) is None
    assert feed(guard, [0, 1], committed=0) == ["process", "process"]  # they arrive
    assert guard.lost_behind(T, 0, fetched=4400, committed=0, now=5.0) is None  # anew
    assert guard.lost_behind(T, 0, fetched=4900, committed=0, now=9.0) is None  # moving
    assert guard.counts == Counts()


def test_an_idle_agent_level_with_the_fetch_position_is_fine() -> None:
    """Nothing fetched beyond what the agent wants: nothing lost."""
    assert GapGuard().lost_behind(T, 0, fetched=6, committed=6, now=9.0) is None
    assert GapGuard().lost_behind(T, 0, fetched=None, committed=6, now=9.0) is None
