"""The answers a batch's handlers read, recorded and given back (tables/journal.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tables.journal import Entry, Recorder, Replayer
from tests.unit_compliance.support import policy
from tests.unit_workflows.support import Registry, definition

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def flow(version: int, body: str = "hi") -> dict[str, Any]:
    return definition({"id": "w", "account": "acme", "name": "W", "version": version,
                       "trigger": {"event": "contact.created"}, "start": "s",
                       "steps": {"s": {"kind": "send_sms", "body": body}}})


def test_the_first_answer_holds_for_the_batch_and_is_recorded() -> None:
    """A version published mid-batch is not seen by the batch's later records; the entry
    keeps (id, version), the offsets and now, and survives encoding."""
    registry = Registry(flow(1))
    listed: dict[str, str] = {}
    recorder = Recorder(registry, lambda account, address: listed.get(address), NOW)
    recorder.cover("t.contact-events", 7)
    assert [1] == [wf["version"] for wf in recorder.active("acme")]
    registry.publish(flow(2))
    recorder.cover("t.contact-events", 9)
    assert ([1], None) == ([wf["version"] for wf in recorder.active("acme")],
                           recorder.suppressed("acme", "+1"))
    entry = Entry.decode(recorder.entry().encode())
    assert (entry.now, entry.ranges, entry.answers) == (
        NOW, {"t.contact-events": (7, 9)},
        {("active", "acme"): [["w", 1]], ("suppressed", "acme", "+1"): None})
    assert (entry.covers("t.contact-events", 8), entry.covers("t.contact-events", 10),
            entry.covers("t.wakeups", 8)) == (True, False, False)


def test_a_replay_gives_the_recorded_answers_whatever_changed() -> None:
    """v2 published and the address suppressed since: the replay still answers v1, not
    suppressed, the policy it had; a question never recorded gets the live answer."""
    registry = Registry(flow(1), policy=policy(brand="First"))
    recorder = Recorder(registry, lambda account, address: None, NOW)
    recorder.active("acme")
    recorder.suppressed("acme", "+1")
    recorder.policy("acme")
    entry = Entry.decode(recorder.entry().encode())
    registry.publish(flow(2, "v2"))
    replay = Replayer(entry, registry, lambda account, address: "manual")
    assert ([1], None, "First") == ([wf["version"] for wf in replay.active("acme")],
                                    replay.suppressed("acme", "+1"),
                                    replay.policy("acme")["brand"])
    assert ("manual", 1) == (replay.suppressed("acme", "+2"), replay.unanswered)


def test_a_default_policy_replays_as_the_default() -> None:
    """An account without a policy the first time gets the defaults again, even if one
    was published since."""
    registry = Registry()
    recorder = Recorder(registry, lambda account, address: None, NOW)
    default = recorder.policy("acme")
    entry = Entry.decode(recorder.entry().encode())
    assert entry.answers[("policy", "acme")] is None
    registry._policy = policy(brand="Later")
    assert default == Replayer(entry, registry, lambda a, b: None).policy("acme")


def test_the_batch_s_own_suppression_changes_are_seen_after_them_and_replayed() -> None:
    """A STOP then a START in one batch: the records after each see it, in the recording
    and in its replay; a removal of another reason lifts nothing."""
    def sequence(answers: Recorder | Replayer) -> list[str | None]:
        seen = [answers.suppressed("acme", "+1")]
        answers.own({"account": "acme", "address": "+1", "reason": "opted_out"})
        seen.append(answers.suppressed("acme", "+1"))
        answers.own({"account": "acme", "address": "+1", "reason": "bounced", "remove": True})
        seen.append(answers.suppressed("acme", "+1"))
        answers.own({"account": "acme", "address": "+1", "reason": "opted_out",
                     "remove": True})
        seen.append(answers.suppressed("acme", "+1"))
        return seen

    recorder = Recorder(Registry(), lambda account, address: None, NOW)
    first = sequence(recorder)
    entry = Entry.decode(recorder.entry().encode())
    again = sequence(Replayer(entry, Registry(), lambda a, b: "manual"))
    assert [None, "opted_out", "opted_out", None] == first == again
