"""The input gap guard (streams/gapguard.py): no input record silently skipped."""

from __future__ import annotations

from streams.gapguard import GapGuard, Verdict

T = "events"


def feed(guard: GapGuard, offsets: list[int], committed: int | None = 0,
         generation: int = 1) -> list[str]:
    out = []
    for offset in offsets:
        v = guard.observe(T, 0, offset, generation, committed)
        out.append(v.action if v.action != "rewind" else f"rewind:{v.offset}")
    return out


def test_contiguous_offsets_are_processed() -> None:
    """Offsets arriving in order from the committed one are all processed."""
    assert feed(GapGuard(), [5, 6, 7], committed=5) == ["process"] * 3


def test_a_hole_rewinds_then_waits_for_the_missing_offset() -> None:
    """6 then 32: rewind to 7, skip what was fetched before the rewind, go on at 7."""
    reread = list(range(7, 35))
    assert feed(GapGuard(), [6, 32, 33, 34, 6, *reread], committed=6) == [
        "process", "rewind:7", "skip", "skip", "skip", *["process"] * len(reread)]


def test_a_first_record_past_the_commit_rewinds() -> None:
    """A partition whose first record is past its committed offset lost the ones between."""
    assert feed(GapGuard(), [32, 6], committed=6) == ["rewind:6", "process"]


def test_a_real_hole_is_accepted_after_one_rewind() -> None:
    """Nothing stored at 7..9 (e.g. transaction markers): the re-read starts at 10."""
    assert feed(GapGuard(), [6, 10, 11, 10, 11, 12], committed=6) == [
        "process", "rewind:7", "skip", "process", "process", "process"]


def test_records_processed_already_are_skipped() -> None:
    """A record delivered twice within a generation is handed to the agent once."""
    assert feed(GapGuard(), [0, 1, 1, 2], committed=0) == [
        "process", "process", "skip", "process"]


def test_a_rebalance_starts_over_from_the_commit() -> None:
    """After a new generation, the committed offset is the reference again."""
    guard = GapGuard()
    assert feed(guard, [0, 1, 2], committed=0, generation=1) == ["process"] * 3
    # Another worker processed 3..9 meanwhile; this one gets the partition back at 10.
    assert feed(guard, [10, 11], committed=10, generation=2) == ["process"] * 2


def test_unknown_commit_accepts_the_first_offset() -> None:
    """Without a committed offset (a new group), the first record sets the reference."""
    assert feed(GapGuard(), [3, 4], committed=None) == ["process", "process"]


def test_an_idle_agent_behind_the_fetch_position_rewinds_once() -> None:
    """Fetched up to 66 while the agent waits for 6: read again from 6, once."""
    guard = GapGuard()
    assert guard.lost_behind(T, 0, fetched=66, committed=6) == 6
    assert guard.lost_behind(T, 0, fetched=66, committed=6) is None  # already rewinding
    assert guard.observe(T, 0, 6, None, 6) == Verdict("process")
    assert guard.lost_behind(T, 0, fetched=7, committed=6) is None  # caught up


def test_an_idle_agent_level_with_the_fetch_position_is_fine() -> None:
    """Nothing fetched beyond what the agent wants: nothing lost."""
    assert GapGuard().lost_behind(T, 0, fetched=6, committed=6) is None
    assert GapGuard().lost_behind(T, 0, fetched=None, committed=6) is None
