"""The journey lab's engine without a broker (tables/simulation.py): recorded records in,
what the candidates would have done out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from tables.journal import Entry
from tables.simulation import CandidateError, Candidates, Recorded, Simulator, summary
from tables.store import partition_for
from tests.unit_workflows.support import Registry, definition

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
PARTITIONS = 4


def flow(version: int, steps: dict[str, Any], start: str = "s", **extra: Any) -> dict[str, Any]:
    return definition({"id": "w", "account": "acme", "name": "W", "version": version,
                       "trigger": {"event": "contact.created"}, "start": start,
                       "steps": steps, **extra})


def signup(contact: str, at: datetime, offset: int, entry: Entry | None = None) -> Recorded:
    event = build_event("acme", contact, "contact.created",
                        {"phone": f"+1415555{offset:04d}", "consent": {"sms": True}},
                        event_id=f"signup-{contact}")
    return Recorded("event", "t.contact-events", partition_for(contact, PARTITIONS), offset,
                    at, contact.encode(), orjson.dumps(event), entry)


def wakeup(contact: str, at: datetime, offset: int) -> Recorded:
    return Recorded("wakeup", "t.wakeups", partition_for(contact, PARTITIONS), offset, at,
                    contact.encode(), orjson.dumps({"account": "acme", "contact_id": contact}))


def run(registry: Registry, records: list[Recorded], cand: Candidates | None = None, *,
        since: datetime = NOW, until: datetime = NOW + timedelta(days=3)) -> Simulator:
    sim = Simulator(registry, lambda account, address: None, since=since, until=until,
                    partitions=PARTITIONS, cand=cand)
    sim.load(records)
    sim.run()
    return sim


WAITS = {"a": {"kind": "send_sms", "body": "one", "next": "pause"},
         "pause": {"kind": "wait", "duration": "1d", "next": "b"},
         "b": {"kind": "send_sms", "body": "two"}}


def test_a_recorded_wakeup_serves_the_wait_and_keeps_its_time() -> None:
    """The live run's wake-up came 3 s after the due time: the second send is made then,
    as it was; no wake-up is added."""
    registry = Registry(flow(1, WAITS, start="a"))
    late = NOW + timedelta(days=1, seconds=3)
    sim = run(registry, [signup("ann", NOW, 0), wakeup("ann", late, 0)])
    assert [(s["body"], s["created_at"]) for s in sim.result.sends] == [
        ("one", NOW.isoformat().replace("+00:00", "Z")),
        ("two", late.isoformat().replace("+00:00", "Z"))]
    assert sim.result.added_wakeups == 0


def test_a_candidate_wait_without_a_recorded_wakeup_fires_at_its_due_time() -> None:
    """Live: one send, no wait, so no wake-up was ever recorded. The candidate waits a
    day: the simulation wakes the contact itself, exactly a day later."""
    registry = Registry(flow(1, {"s": {"kind": "send_sms", "body": "one"}}))
    cand = Candidates([flow(2, WAITS, start="a")])
    sim = run(registry, [signup("ann", NOW, 0)], cand)
    assert [(s["body"], s["origin"]["version"], s["created_at"]) for s in sim.result.sends] \
        == [("one", 2, "2026-03-02T14:00:00Z"), ("two", 2, "2026-03-03T14:00:00Z")]
    assert sim.result.added_wakeups == 1


def test_candidates_apply_from_since_and_the_state_before_is_rebuilt_live() -> None:
    """ann signed up before the window under v1 (her wait is v1's); bob inside it gets
    the candidate. Only the window's sends are reported."""
    registry = Registry(flow(1, WAITS, start="a"))
    cand = Candidates([flow(2, {"s": {"kind": "send_sms", "body": "v2"}})])
    sim = run(registry, [signup("ann", NOW - timedelta(hours=2), 0),
                         signup("bob", NOW + timedelta(hours=1), 1)], cand)
    assert sorted((s["contact_id"], s["body"]) for s in sim.result.sends) == [
        ("ann", "two"), ("bob", "v2")]
    assert (sim.result.warmup, sim.result.handled) == (1, 2)


def test_the_journal_entry_gives_the_answers_of_then() -> None:
    """The entry says v1 was active when the record was decided (v2 is newer now): the
    simulation of the live definitions decides with v1."""
    registry = Registry(flow(1, {"s": {"kind": "send_sms", "body": "v1"}}))
    registry.publish(flow(2, {"s": {"kind": "send_sms", "body": "v2"}}))
    at = NOW + timedelta(minutes=5)
    entry = Entry(at, {"t.contact-events": (0, 0)}, {("active", "acme"): [["w", 1]]})
    sim = run(registry, [signup("ann", at, 0, entry)])
    assert [(s["body"], s["created_at"]) for s in sim.result.sends] == [
        ("v1", "2026-03-02T14:05:00Z")]


def test_a_campaign_is_refused_as_a_candidate_with_the_reason() -> None:
    with pytest.raises(CandidateError, match="campaigns are not"):
        Candidates([{"kind": "campaign", "id": "c", "account": "acme", "name": "C",
                     "version": 1, "content": {"channel": "sms", "body": "x"},
                     "schedule": {"type": "once", "at": "2027-01-01T10:00:00",
                                  "timezone": "UTC"}, "audience": {}}])
    with pytest.raises(CandidateError, match="steps"):
        Candidates([{"id": "w", "account": "acme", "name": "W", "version": 1,
                     "trigger": {"event": "contact.created"}, "start": "s"}])


def test_the_summary_diffs_by_message_id_and_counts_displaced_sends() -> None:
    """A send in both at another time, one only simulated, one only actual; an actual
    send the simulation capped is budget taken from its journey."""
    sim = Simulator(Registry(), lambda a, b: None, since=NOW, until=NOW, partitions=1)

    def send(i: str, at: str, step: str = "s") -> dict[str, Any]:
        return {"message_id": i, "created_at": at, "channel": "sms",
                "origin": {"workflow_id": "w", "step_id": step}}

    sim.result.sends = [send("m1", "t1"), send("m2", "t1")]
    sim.result.audit = [{"reason": "frequency_capped", "message_id": "m3"}]
    out = summary(sim.result, [send("m1", "t2"), send("m3", "t1", "x")], [])
    assert (out["both"], out["both_at_other_times"], out["only_simulated"],
            out["only_actual"], out["displaced"]) == (1, 1, 1, 1, {"w/x": 1})


def test_migrate_previews_where_a_new_version_would_place_waiting_contacts() -> None:
    """ann waits in v1's "pause" when the window ends. v2 keeps a wait of that id
    (then sends another text): ann would continue there and get v2's text at her due
    time. v3 has no such step: she would end. Nobody is moved."""
    registry = Registry(flow(1, WAITS, start="a"))
    records = [signup("ann", NOW - timedelta(hours=2), 0)]
    v2 = flow(2, {**WAITS, "b": {"kind": "send_sms", "body": "two, v2"}}, start="a")
    sim = Simulator(registry, lambda a, b: None, since=NOW, until=NOW + timedelta(hours=1),
                    partitions=PARTITIONS, cand=Candidates([v2]), migrate=True)
    sim.load(records)
    [line] = sim.run().migrations
    assert (line["contact_id"], line["from"]["step"], line["to"]["outcome"],
            line["to"]["step"]) == ("ann", "pause", "continues", "pause")
    assert [s["body"] for s in line["next"]["sends"]] == ["two, v2"]
    assert line["next"]["at"] == (NOW + timedelta(hours=22)).isoformat()
    assert sim.states["acme:ann"]["executions"][line["execution_id"]]["version"] == 1

    v3 = flow(3, {"a": {"kind": "send_sms", "body": "only"}}, start="a")
    sim = Simulator(registry, lambda a, b: None, since=NOW, until=NOW + timedelta(hours=1),
                    partitions=PARTITIONS, cand=Candidates([v3]), migrate=True)
    sim.load(records)
    [line] = sim.run().migrations
    assert (line["to"]["outcome"], line["to"]["reason"]) == ("ends", "v3 has no step 'pause'")


def test_a_candidate_that_is_no_object_is_refused_with_the_reason() -> None:
    with pytest.raises(CandidateError, match="not int"):
        Candidates([1])  # type: ignore[list-item]


def test_one_candidate_per_workflow_keyword_or_policy() -> None:
    """Two versions of one workflow would leave which one runs to the order of the files."""
    with pytest.raises(CandidateError, match="given twice"):
        Candidates([flow(2, WAITS, start="a"), flow(3, WAITS, start="a")])


def test_a_keyword_reply_is_counted_under_its_purpose() -> None:
    sim = Simulator(Registry(), lambda a, b: None, since=NOW, until=NOW, partitions=1)
    sim.result.sends = [{"message_id": "m", "created_at": "t", "channel": "sms", "body": "x",
                         "origin": {"kind": "keyword"}, "purpose": "opt_out_confirmation"}]
    assert summary(sim.result, [], [])["per_step"] == {"keyword/opt_out_confirmation": 1}


def test_the_newest_journal_entry_covering_a_record_wins() -> None:
    """Entries overlap only where a batch was redone: the newest covering one answers; an
    offset no entry covers has none, however many entries come before it."""
    from streams.history import Entries

    def entry(lo: int, hi: int) -> Entry:
        return Entry(NOW, {"t.contact-events": (lo, hi)}, {})

    first, redone, later = entry(0, 9), entry(5, 12), entry(20, 29)
    found = Entries([(0, first), (0, redone), (0, later)])
    assert [found.covering("t.contact-events", 0, o) for o in (3, 7, 12, 15, 25, 30)] == [
        first, redone, redone, None, later, None]
    assert found.covering("t.wakeups", 0, 3) is None


def test_a_stream_fed_in_pieces_decides_as_a_window_at_once() -> None:
    """The shadow runner's way: records loaded as they come (one late, after its time was
    handled) and the simulation advanced to a watermark each time, the candidate from its
    start on: the same sends as one run over everything, but the late record counted."""
    registry = Registry(flow(1, {"s": {"kind": "send_sms", "body": "v1"}}))
    starts = {("acme", "w"): NOW + timedelta(hours=1)}
    records = [signup("ann", NOW, 0), signup("bob", NOW + timedelta(hours=2), 1),
               signup("cat", NOW + timedelta(hours=3), 2)]

    def sim() -> Simulator:
        return Simulator(registry, lambda account, address: None, since=NOW,
                         until=NOW + timedelta(days=3), partitions=PARTITIONS,
                         cand=Candidates([flow(2, WAITS, start="a")], starts))

    whole = sim()
    whole.load(records)
    whole.run()
    stream = sim()
    stream.load(records[:1])
    stream.advance(NOW + timedelta(hours=2, minutes=30))
    stream.load([records[2], records[1]])  # bob's came late; cat's in time
    for hours in (4, 30, 72):
        stream.advance(NOW + timedelta(hours=hours))

    def made(s: Simulator) -> list[tuple[str, str, str]]:
        return sorted((m["contact_id"], m["body"], m["created_at"]) for m in s.result.sends)

    # ann before the candidate's start: v1; bob and cat: v2's two sends, a day apart
    assert made(whole) == [("ann", "v1", "2026-03-02T14:00:00Z"),
                           ("bob", "one", "2026-03-02T16:00:00Z"),
                           ("bob", "two", "2026-03-03T16:00:00Z"),
                           ("cat", "one", "2026-03-02T17:00:00Z"),
                           ("cat", "two", "2026-03-03T17:00:00Z")]
    assert made(stream) == made(whole)
    assert (stream.late, whole.late) == (1, 0)


def test_a_recorded_wakeup_that_names_its_due_time_serves_it_however_late() -> None:
    """A backlog: the live worker's wake-up came 10 minutes after the due time. It says
    which due time it serves, so the second send is made when it came, as it was."""
    registry = Registry(flow(1, WAITS, start="a"))
    due = NOW + timedelta(days=1)
    late = due + timedelta(minutes=10)
    record = Recorded("wakeup", "t.wakeups", partition_for("ann", PARTITIONS), 0, late,
                      b"ann", orjson.dumps({"account": "acme", "contact_id": "ann",
                                            "due": due.isoformat()}))
    sim = run(registry, [signup("ann", NOW, 0), record])
    assert [s["created_at"] for s in sim.result.sends][1] == \
        late.isoformat().replace("+00:00", "Z")
    assert sim.result.added_wakeups == 0
    # One that does not name it is taken for it only within the lateness (120 s).
    unnamed = Recorded("wakeup", "t.wakeups", record.partition, 0, late, b"ann",
                       orjson.dumps({"account": "acme", "contact_id": "ann"}))
    sim = run(registry, [signup("ann", NOW, 0), unnamed])
    assert [s["created_at"] for s in sim.result.sends][1] == \
        due.isoformat().replace("+00:00", "Z")
    assert sim.result.added_wakeups == 1
