"""Workflow definitions (streams/definitions.py): what is accepted, and each problem's path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.definitions import DefinitionError, parse_definition, parse_duration
from tests.unit_workflows.support import docs_example, welcome_raw

Mutate = Callable[[dict[str, Any]], object]
TEMPLATE_HINT = ("use contact.<name>, event.data.<path> (event.type, event.id, event.time), "
                 "preferences_url, digest.count or digest.items")
DURATION_HINT = "use e.g. 30m, 2d, 1d12h, 1w"


def errors_of(mutate: Mutate) -> list[str]:
    """The errors parse_definition reports for the welcome flow changed by ``mutate``."""
    raw = copy.deepcopy(welcome_raw())
    mutate(raw)
    with pytest.raises(DefinitionError) as caught:
        parse_definition(raw)
    assert caught.value.errors, "a DefinitionError always lists its problems"
    assert str(caught.value) == "; ".join(caught.value.errors)
    return caught.value.errors


def step(name: str, **changes: Any) -> Mutate:
    return lambda raw: raw["steps"][name].update(changes)


def replace_step(name: str, new: dict[str, Any]) -> Mutate:
    return lambda raw: raw["steps"].__setitem__(name, new)


def top(**changes: Any) -> Mutate:
    return lambda raw: raw.update(changes)


def trigger(**changes: Any) -> Mutate:
    return lambda raw: raw["trigger"].update(changes)


def test_docs_example_is_accepted() -> None:
    """The documented example is a valid definition."""
    wf = parse_definition(docs_example())
    assert ("welcome", "hello", "once_ever") == (wf.id, wf.start, wf.reentry.policy)


def test_valid_example_is_accepted() -> None:
    """The welcome flow parses, keeps its steps, and its JSON dump parses to the same model."""
    wf = parse_definition(welcome_raw())
    assert ("workflow:acme:welcome", "hello", 5) == (wf.key, wf.start, len(wf.steps))
    assert wf == parse_definition(wf.model_dump(mode="json"))


WAIT_FOR_PURCHASE = {
    "kind": "wait_for_event", "event": "purchase.completed", "timeout": "3d",
    "next": "check", "timeout_next": "nope",
}

# Paths inside a step carry the step's kind (steps.pause.wait.duration), as pydantic reports
# them and docs/workflows.md shows them; test_step_error_path_is_a_json_path marks that.
ERRORS = [
    # `next` names a step that does not exist.
    pytest.param(step("hello", next="nope"), "steps.hello.next", "unknown step 'nope'",
                 id="unknown-next"),
    # A branch's `true` target does not exist.
    pytest.param(step("check", true="nope"), "steps.check.true", "unknown step 'nope'",
                 id="unknown-true"),
    # A branch's `false` target does not exist.
    pytest.param(step("check", false="nope"), "steps.check.false", "unknown step 'nope'",
                 id="unknown-false"),
    # A wait_for_event's `timeout_next` does not exist.
    pytest.param(replace_step("pause", WAIT_FOR_PURCHASE), "steps.pause.timeout_next",
                 "unknown step 'nope'", id="unknown-timeout-next"),
    # `start` names no step.
    pytest.param(top(start="nope"), "start", "unknown step 'nope'", id="unknown-start"),
    # A step nothing leads to.
    pytest.param(replace_step("orphan", {"kind": "exit"}), "steps.orphan",
                 "unreachable from start 'hello'", id="unreachable"),
    # A loop back to the start; the message names every step of it.
    pytest.param(step("thanks", next="hello"), "steps",
                 "cycle hello -> pause -> check -> thanks -> hello", id="cycle"),
    # A step that leads to itself.
    pytest.param(step("thanks", next="thanks"), "steps", "cycle thanks -> thanks",
                 id="self-loop"),
    # Not an IANA zone.
    pytest.param(top(timezone="Mars/Olympus_Mons"), "timezone",
                 "unknown IANA time zone 'Mars/Olympus_Mons'", id="bad-zone"),
    # A zero duration.
    pytest.param(step("pause", duration="0s"), "steps.pause.duration",
                 "duration '0s' must be longer than 0", id="duration-0s"),
    # An unknown unit.
    pytest.param(step("pause", duration="2x"), "steps.pause.duration",
                 f"invalid duration '2x': {DURATION_HINT}", id="duration-2x"),
    # An empty duration.
    pytest.param(step("pause", duration=""), "steps.pause.duration",
                 f"invalid duration '': {DURATION_HINT}", id="duration-empty"),
    # A zero wait_for_event timeout.
    pytest.param(replace_step("pause", {**WAIT_FOR_PURCHASE, "timeout": "0s",
                                        "timeout_next": "nudge"}),
                 "steps.pause.timeout", "duration '0s' must be longer than 0",
                 id="timeout-0s"),
    # A bad max_lateness on a send.
    pytest.param(step("hello", max_lateness="2x"), "steps.hello.max_lateness",
                 f"invalid duration '2x': {DURATION_HINT}", id="max-lateness-2x"),
    # An hour that does not exist.
    pytest.param(replace_step("pause", {"kind": "wait_until", "time": "25:00", "next": "check"}),
                 "steps.pause.time", "invalid time of day '25:00': use HH:MM",
                 id="wait-until-25h"),
    # Not HH:MM at all.
    pytest.param(replace_step("pause", {"kind": "wait_until", "time": "9am", "next": "check"}),
                 "steps.pause.time", "invalid time of day '9am': use HH:MM",
                 id="wait-until-9am"),
    # A typo in the root of a template field.
    pytest.param(step("hello", body="Hi {{contct.x}}"), "steps.hello.body",
                 f"unknown template field {{{{contct.x}}}}: {TEMPLATE_HINT}", id="template-root"),
    # event.<x> is only type, id, time or data.<path>.
    pytest.param(step("hello", body="Order {{event.foo}}"), "steps.hello.body",
                 f"unknown template field {{{{event.foo}}}}: {TEMPLATE_HINT}",
                 id="template-event-foo"),
    # Subjects are templates too.
    pytest.param(step("thanks", subject="Hi {{contct.x}}"), "steps.thanks.subject",
                 f"unknown template field {{{{contct.x}}}}: {TEMPLATE_HINT}",
                 id="template-subject"),
    # An opening {{ that never closes.
    pytest.param(step("hello", body="Hi {{contact.first_name"), "steps.hello.body",
                 "unbalanced or empty {{ }} in template", id="template-unclosed"),
    # An empty {{}}.
    pytest.param(step("hello", body="Hi {{}}"), "steps.hello.body",
                 "unbalanced or empty {{ }} in template", id="template-empty"),
    # A closing }} that was never opened would be sent to the contact as it is.
    pytest.param(step("hello", body="Hi contact.first_name}}"), "steps.hello.body",
                 "unbalanced or empty {{ }} in template", id="template-stray-close"),
    # An email needs a subject.
    pytest.param(lambda raw: raw["steps"]["thanks"].pop("subject"), "steps.thanks",
                 "send_email needs a subject", id="email-no-subject"),
    # An MMS needs media.
    pytest.param(replace_step("hello", {"kind": "send_mms", "body": "Hi", "next": "pause"}),
                 "steps.hello", "send_mms needs at least one media_urls entry",
                 id="mms-no-media"),
    # An SMS has no subject.
    pytest.param(step("hello", subject="Hi"), "steps.hello", "send_sms has no subject",
                 id="sms-subject"),
    # A keyword on a trigger that is not keyword.received.
    pytest.param(trigger(keyword="JOIN"), "trigger.keyword",
                 "only for trigger event keyword.received", id="keyword-wrong-trigger"),
    # An event type that v1 does not have.
    pytest.param(trigger(event="contact.deleted"), "trigger.event",
                 "unknown event type 'contact.deleted'", id="unknown-trigger-type"),
    # after_days without its days.
    pytest.param(top(reentry={"policy": "after_days"}), "reentry",
                 "days is required with (and only with) policy after_days",
                 id="after-days-no-days"),
    # A criterion on a field that is neither event.* nor contact.*.
    pytest.param(trigger(criteria=[{"field": "order.total", "op": "gt", "value": 1}]),
                 "trigger.criteria.0.field",
                 "unknown field 'order.total': use event.type, event.data.<path> or "
                 "contact.<name>", id="criterion-field"),
]


@pytest.mark.parametrize(("mutate", "path", "message"), ERRORS)
def test_each_problem_is_reported_with_its_path(mutate: Mutate, path: str, message: str) -> None:
    """Each invalid definition gets exactly one error, ``"<path>: <message>"``."""
    assert [f"{path}: {message}"] == errors_of(mutate)


def test_step_error_path_is_a_json_path() -> None:
    """An error inside a step names the JSON path of the bad field, without the step kind."""
    assert [f"steps.pause.duration: invalid duration '2x': {DURATION_HINT}"] == errors_of(
        step("pause", duration="2x"))


def test_every_graph_problem_is_listed_at_once() -> None:
    """Several problems in one definition are all reported, not just the first."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["start"] = "nope"
        raw["steps"]["hello"]["next"] = "gone"
        raw["steps"]["hello"]["body"] = "Hi {{contct.x}}"

    expected = [
        "start: unknown step 'nope'",
        "steps.hello.next: unknown step 'gone'",
        f"steps.hello.body: unknown template field {{{{contct.x}}}}: {TEMPLATE_HINT}",
    ]
    assert expected == errors_of(mutate)


def test_keyword_problem_is_listed_beside_an_unknown_step() -> None:
    """A misplaced keyword is reported even when a step reference is also wrong."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["trigger"]["keyword"] = "JOIN"
        raw["steps"]["hello"]["next"] = "gone"

    expected = [
        "steps.hello.next: unknown step 'gone'",
        "trigger.keyword: only for trigger event keyword.received",
    ]
    assert expected == errors_of(mutate)


def test_field_and_graph_problems_are_listed_together() -> None:
    """Field errors do not hide the graph's: a bad zone, a bad duration, an unknown start
    and a cycle are all reported (the cycle found without start; no step is called
    unreachable from a start that does not exist)."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["timezone"] = "Mars/Base"
        raw["start"] = "x"
        raw["steps"] = {"a": {"kind": "wait", "duration": "2x", "next": "b"},
                        "b": {"kind": "send_sms", "body": "Hi", "next": "a"}}

    expected = [
        "timezone: unknown IANA time zone 'Mars/Base'",
        f"steps.a.duration: invalid duration '2x': {DURATION_HINT}",
        "start: unknown step 'x'",
        "steps: cycle a -> b -> a",
    ]
    assert expected == errors_of(mutate)


def test_cycle_away_from_start_is_reported_beside_a_field_error() -> None:
    """A cycle that start does not lead to is found too, and its steps are unreachable."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["timezone"] = "Mars/Base"
        raw["steps"]["x"] = {"kind": "add_tag", "tag": "t", "next": "y"}
        raw["steps"]["y"] = {"kind": "exit", "next": "x"}

    expected = [
        "timezone: unknown IANA time zone 'Mars/Base'",
        "steps: cycle x -> y -> x",
        "steps.x: unreachable from start 'hello'",
        "steps.y: unreachable from start 'hello'",
    ]
    assert expected == errors_of(mutate)


@pytest.mark.parametrize(
    ("bad_step", "message"),
    [
        # Not an object at all.
        pytest.param("oops", "Input should be a valid dictionary or object to extract fields "
                     "from", id="not-an-object"),
        # A kind that does not exist: where it leads cannot be known.
        pytest.param({"kind": "sleep", "next": "check"}, "Input tag 'sleep' found using 'kind' "
                     "does not match any of the expected tags", id="unknown-kind"),
    ],
)
def test_unreadable_step_is_skipped_and_the_rest_still_checked(
    bad_step: object, message: str
) -> None:
    """A step that cannot be read gets its field error; the other steps are still checked,
    and no step is called unreachable (the unreadable one may lead to it)."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["steps"]["pause"] = bad_step
        raw["steps"]["hello"]["body"] = "Hi {{contct.x}}"

    errors = errors_of(mutate)

    assert 2 == len(errors), errors
    assert errors[0].startswith(f"steps.pause: {message}")
    assert f"steps.hello.body: unknown template field {{{{contct.x}}}}: {TEMPLATE_HINT}" == (
        errors[1])


def test_long_chain_of_steps_is_accepted() -> None:
    """The graph walk does not recurse per step: thousands of steps in a row are fine."""
    raw = welcome_raw()
    raw["steps"] = {f"s{i}": {"kind": "add_tag", "tag": "t", "next": f"s{i + 1}"}
                    for i in range(3000)}
    raw["steps"]["s3000"] = {"kind": "exit"}
    raw["start"] = "s0"
    assert 3001 == len(parse_definition(raw).steps)


def test_keyword_on_keyword_trigger_is_accepted() -> None:
    """A keyword belongs on a keyword.received trigger."""
    raw = welcome_raw()
    raw["trigger"] = {"event": "keyword.received", "keyword": "join"}
    assert "join" == parse_definition(raw).trigger.keyword


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),  # seconds
        ("30m", 1800),  # minutes
        ("2h", 7200),  # hours
        ("2d", 172800),  # days
        ("1w", 604800),  # a week
        ("1h30m", 5400),  # units combine
        ("1d12h", 129600),  # days and hours
        ("1w1d1h1m1s", 694861),  # every unit, in order
        (" 2d ", 172800),  # surrounding whitespace is ignored
        ("0d1s", 1),  # a zero part is fine while the total is positive
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    """A duration is weeks, days, hours, minutes and seconds, in that order, in seconds."""
    assert seconds == parse_duration(text)


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty
        "0s",  # zero
        "0d0h",  # zero in several units
        "2x",  # unknown unit
        "2",  # no unit
        "2D",  # units are lower case
        "30m1h",  # units out of order
        "-1d",  # negative
        "1.5h",  # fractions
        "2 d",  # a space inside
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    """Anything but a positive whole number of ordered units is a ValueError."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.lists(st.integers(0, 99), min_size=5, max_size=5))
def test_parse_duration_sums_its_units(parts: list[int]) -> None:
    """Any combination of units is the sum of its parts (or rejected when that is 0)."""
    text = "".join(f"{n}{unit}" for n, unit in zip(parts, "wdhms", strict=True))
    w, d, h, m, s = parts
    total = (((w * 7 + d) * 24 + h) * 60 + m) * 60 + s
    if total == 0:
        with pytest.raises(ValueError):
            parse_duration(text)
    else:
        assert total == parse_duration(text)
