"""The chaos run's verifier (bench/chaos_verify.py) against a faultless offline run of the
engine's own handlers, and against that run with one violation put in at a time: each
promise's check passes the clean run and catches its violation (a checker that never
fails proves nothing). The offline run also cross-checks the verifier's independent model
against the handlers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from bench.chaos_verify import Observed, Rec, Verdict, verify
from bench.chaos_workload import ACCOUNT, Plan, Workload, definitions, make_plan
from streams.definitions import AccountPolicy
from streams.events import Rejected, parse_event
from tables.contacts import ContactState, decode, encode
from tables.effects import Effects
from tables.handlers import Context, Wakeup, handle_event, handle_wakeup
from tables.store import partition_for
from tests.unit_workflows.support import Registry, definition

START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # what the chaos run's clock shows
P = 8
PREFIX = "t."
LAG = timedelta(milliseconds=300)  # processing a record this long after it is published


def offline_run(plan: Plan) -> Observed:
    """The plan's records through the pure handlers in publication order, waits fired
    when due: the outputs a faultless deployment leaves (no broker, no Redis)."""
    defs = definitions(plan.workload)
    policy = AccountPolicy.model_validate(defs[0]).model_dump(mode="json")
    registry = Registry(*(definition(d) for d in defs[1:]), policy=policy)
    suppressed: dict[tuple[str, str], str] = {}
    ctx = Context(registry, lambda account, address: suppressed.get((account, address)))
    states: dict[str, ContactState] = {}
    obs = Observed()
    offsets: dict[str, int] = {}

    def rec(topic: str, key: bytes | None, value: bytes, partition: int,
            headers: tuple[tuple[str, bytes], ...] = ()) -> Rec:
        offset = offsets.get(f"{topic}{partition}", 0)
        offsets[f"{topic}{partition}"] = offset + 1
        return Rec(topic, partition, offset, key, value, headers)

    def emit(fx: Effects, cid: str) -> None:
        part = partition_for(cid.encode(), P)
        for send in fx.sends:
            obs.sends.append(rec(f"{PREFIX}send.sms", cid.encode(),
                                 send.model_dump_json(exclude_none=True).encode(), part))
        for audit in fx.audit:
            obs.audit.append(rec(f"{PREFIX}audit", cid.encode(), orjson.dumps(audit), part))
        for change in fx.suppressions:
            suppressed[(change["account"], change["address"])] = change["reason"]
            obs.suppressions.append(rec(f"{PREFIX}suppressions", None, orjson.dumps(change), 0))

    def store(cid: str, state: ContactState | None) -> None:
        if state is None:
            return
        key = f"{ACCOUNT}:{cid}"
        before = states.get(key)
        state["revision"] = (before["revision"] if before else 0) + 1
        states[key] = state
        obs.changelog.append(rec(f"{PREFIX}changelog", key.encode(), encode(state),
                                 partition_for(cid.encode(), P)))

    def wake_until(now: datetime) -> None:
        while True:
            due = sorted((datetime.fromisoformat(s["next_due"]), s["contact_id"])
                         for s in states.values() if s["next_due"])
            if not due or due[0][0] > now:
                return
            at, cid = due[0]
            out = handle_wakeup(states[f"{ACCOUNT}:{cid}"], Wakeup(ACCOUNT, cid), ctx,
                                at + LAG)
            emit(out.effects, cid)
            store(cid, out.state)

    for planned in plan.records:
        now = plan.start + timedelta(seconds=planned.at) + LAG
        wake_until(now)
        key = planned.key or b""
        part = partition_for(key, P)
        record = rec(f"{PREFIX}contact-events", planned.key, planned.value, part)
        obs.inputs.append(record)
        try:
            event = parse_event(planned.value, planned.key)
        except Rejected as error:
            headers = (("dripstream.reason", error.reason.encode()),
                       ("dripstream.partition", str(part).encode()),
                       ("dripstream.offset", str(record.offset).encode()))
            obs.dead_letters.append(rec(f"{PREFIX}dead-letter", planned.key, planned.value,
                                        part, headers))
            continue
        state_key = f"{ACCOUNT}:{event.contact_id}"
        out = handle_event(states.get(state_key), event, ctx, now)
        emit(out.effects, event.contact_id)
        store(event.contact_id, out.state)
    wake_until(plan.start + timedelta(seconds=plan.last_at + 600))
    obs.read_model = {k.split(":", 1)[1]: copy.deepcopy(dict(v)) for k, v in states.items()}
    return obs


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(Workload(contacts=240, seed=5, first_s=1, last_s=60, drip_wait_s=30,
                              cart_timeout_s=90), START)


@pytest.fixture(scope="module")
def clean(plan: Plan) -> Observed:
    return offline_run(plan)


def failing(verdict: Verdict) -> dict[str, int]:
    return {name: n for name, n in verdict.counts.items() if n}


def mutated(obs: Observed, **changes: Any) -> Observed:
    fresh = copy.copy(obs)
    for name, value in changes.items():
        setattr(fresh, name, value)
    return fresh


def test_a_faultless_run_passes_every_check(plan: Plan, clean: Observed) -> None:
    """The handlers' outputs, no faults: every check 0, nothing repeated; the workload
    exercised what it is meant to (sends, caps, STOPs, quiet hours, dead letters)."""
    verdict = verify(plan, clean, START + timedelta(minutes=20))
    assert failing(verdict) == {}
    f = verdict.figures
    assert f["send_repeats"] == 0 and f["dead_letter_repeats"] == 0
    assert f["invalid_inputs"] >= 6 and f["stops"] > 0 and f["duplicate_inputs"] > 0
    reasons = {orjson.loads(r.value)["reason"] for r in clean.audit}
    assert {"frequency_capped", "quiet_hours_deferred"} <= reasons
    assert reasons & {"opted_out", "suppressed"}


def _sends_of(obs: Observed, pick: Callable[[dict[str, Any]], bool]) -> list[Rec]:
    return [r for r in obs.sends if pick(orjson.loads(r.value))]


def _step(step: str) -> Callable[[dict[str, Any]], bool]:
    return lambda c: c["origin"].get("step_id") == step


def test_a_lost_send_is_found(plan: Plan, clean: Observed) -> None:
    """One drip follow-up missing from the output (its state still counts it)."""
    gone = _sends_of(clean, _step("again"))[0]
    verdict = verify(plan, mutated(clean, sends=[r for r in clean.sends if r is not gone]))
    assert failing(verdict) == {"lost": 1, "cap_count_wrong": 1}


def test_a_repeat_with_its_id_is_counted_and_allowed(plan: Plan, clean: Observed) -> None:
    """A send re-emitted with the same message id (a redone batch) is a repeat, no fault."""
    again = clean.sends[0]
    repeat = Rec(again.topic, again.partition, 10_000, again.key, again.value)
    verdict = verify(plan, mutated(clean, sends=[*clean.sends, repeat]))
    assert failing(verdict) == {}
    assert verdict.figures["send_repeats"] == 1


def test_under_exactly_once_every_repeat_is_a_failure(plan: Plan, clean: Observed) -> None:
    """Read committed from Kafka transactions nothing may come twice: a send, an audit
    record and a dead letter repeated with their ids each fail ``repeated``; the clean
    run passes as it is."""
    assert failing(verify(plan, clean, exactly_once=True)) == {}

    def again(records: list[Rec]) -> list[Rec]:
        r = records[0]
        return [*records, Rec(r.topic, r.partition, 10_000, r.key, r.value, r.headers)]

    repeated = mutated(clean, sends=again(clean.sends), audit=again(clean.audit),
                       dead_letters=again(clean.dead_letters))
    assert failing(verify(plan, repeated)) == {}  # at least once: counted, allowed
    verdict = verify(plan, repeated, exactly_once=True)
    assert failing(verdict) == {"repeated": 3}
    assert verdict.figures["send_repeats"] == 1 and verdict.figures["audit_repeats"] == 1


def _resend(r: Rec, offset: int, **fields: Any) -> Rec:
    command = {**orjson.loads(r.value), **fields}
    return Rec(r.topic, r.partition, offset, r.key, orjson.dumps(command))


def test_one_logical_send_with_two_ids_is_found(plan: Plan, clean: Observed) -> None:
    """The same step of the same execution emitted again under another message id."""
    twin = _resend(clean.sends[0], 10_000, message_id="msg-another")
    assert "conflicting_ids" in failing(verify(plan, mutated(clean, sends=[*clean.sends,
                                                                          twin])))


def test_a_send_after_stop_is_found(plan: Plan, clean: Observed) -> None:
    """A marketing send to a STOP contact created after its opt-out was processed."""
    stops = {orjson.loads(r.value)["contact_id"]: r for r in clean.suppressions}
    hello = next(r for r in _sends_of(clean, _step("hello"))
                 if orjson.loads(r.value)["contact_id"] in stops)
    at = datetime.fromisoformat(orjson.loads(stops[orjson.loads(hello.value)[
        "contact_id"]].value)["at"])
    late = _resend(hello, 10_000, message_id="msg-late",
                   origin={**orjson.loads(hello.value)["origin"], "step_id": "again"},
                   created_at=(at + timedelta(seconds=40)).isoformat())
    found = failing(verify(plan, mutated(clean, sends=[*clean.sends, late])))
    assert found["after_stop"] == 1 and "decided_twice" in found


def test_an_early_wait_is_found(plan: Plan, clean: Observed) -> None:
    """A drip follow-up created 1 s before its 30 s wait was due."""
    hello = {orjson.loads(r.value)["contact_id"]: orjson.loads(r.value)
             for r in _sends_of(clean, _step("hello"))}
    sends = []
    changed = False
    for r in clean.sends:
        command = orjson.loads(r.value)
        if not changed and command["origin"].get("step_id") == "again":
            first = datetime.fromisoformat(hello[command["contact_id"]]["created_at"])
            r = _resend(r, r.offset, created_at=(first + timedelta(seconds=29)).isoformat())
            changed = True
        sends.append(r)
    assert failing(verify(plan, mutated(clean, sends=sends))) == {"early": 1}


def test_an_over_cap_send_is_found(plan: Plan, clean: Observed) -> None:
    """A sixth promo of one day sent instead of capped."""
    capped = next(orjson.loads(r.value) for r in clean.audit
                  if orjson.loads(r.value)["reason"] == "frequency_capped")
    sent = next(orjson.loads(r.value) for r in _sends_of(
        clean, lambda c: c["contact_id"] == capped["contact_id"]))
    extra = {**sent, "message_id": capped["message_id"], "origin": capped["origin"]}
    rec = Rec(clean.sends[0].topic, partition_for(capped["contact_id"].encode(), P), 10_000,
              capped["contact_id"].encode(), orjson.dumps(extra))
    found = failing(verify(plan, mutated(clean, sends=[*clean.sends, rec])))
    assert found["over_cap"] == 1 and found["unexpected"] == 1


def test_a_cap_count_that_misses_a_send_is_found(plan: Plan, clean: Observed) -> None:
    """A contact's final state forgot one of its emitted sends (a window undercounted)."""
    changelog = list(clean.changelog)
    last = {r.key: i for i, r in enumerate(changelog)}
    i = next(i for i in last.values() if decode(changelog[i].value)["sends"])
    r = changelog[i]
    state: Any = decode(r.value)
    state["sends"] = state["sends"][1:]
    changelog[i] = Rec(r.topic, r.partition, r.offset, r.key, encode(state))
    model = {**clean.read_model, (r.key or b"").decode().split(":", 1)[1]: state}
    found = failing(verify(plan, mutated(clean, changelog=changelog, read_model=model)))
    assert found == {"cap_count_wrong": 1}


def test_a_lost_dead_letter_and_a_valid_one_dead_lettered_are_found(
    plan: Plan, clean: Observed,
) -> None:
    """An invalid record never dead-lettered; a valid record dead-lettered."""
    kept = clean.dead_letters[1:]
    valid = next(r for r in clean.inputs if r.value.startswith(b'{"specversion"')
                 and b'"id":"c-' in r.value)
    wrong = Rec(f"{PREFIX}dead-letter", valid.partition, 10_000, valid.key, valid.value, (
        ("dripstream.reason", b"processing_error"),
        ("dripstream.partition", str(valid.partition).encode()),
        ("dripstream.offset", str(valid.offset).encode())))
    found = failing(verify(plan, mutated(clean, dead_letters=[*kept, wrong])))
    assert found == {"dead_letter_missing": 1, "dead_letter_wrong": 1}


def test_an_event_applied_twice_and_a_stale_read_model_are_found(
    plan: Plan, clean: Observed,
) -> None:
    """A contact's version one above its distinct events; another's read model behind."""
    changelog = list(clean.changelog)
    r = changelog[-1]
    state: Any = decode(r.value)
    state["version"] += 1
    changelog[-1] = Rec(r.topic, r.partition, r.offset, r.key, encode(state))
    key = (r.key or b"").decode().split(":", 1)[1]
    other = next(k for k in clean.read_model if k != key)
    stale = {**clean.read_model[other], "revision": 0}
    model = {**clean.read_model, key: state, other: stale}
    found = failing(verify(plan, mutated(clean, changelog=changelog, read_model=model)))
    assert found == {"applied_wrong": 1, "read_model_wrong": 1}


def test_a_send_in_quiet_hours_is_found(plan: Plan, clean: Observed) -> None:
    """A quiet-zone contact's deferred send emitted anyway, at 23:00 in Tokyo."""
    held = next(orjson.loads(r.value) for r in clean.audit
                if orjson.loads(r.value)["reason"] == "quiet_hours_deferred")
    cid = held["contact_id"]
    command = {"message_id": held["message_id"], "channel": "sms", "account": ACCOUNT,
               "contact_id": cid, "to": plan.contacts[cid].phone, "body": "x",
               "transactional": False, "origin": held["origin"],
               "created_at": held["at"], "expires_at": held["at"]}
    rec = Rec(f"{PREFIX}send.sms", partition_for(cid.encode(), P), 10_000, cid.encode(),
              orjson.dumps(command))
    found = failing(verify(plan, mutated(clean, sends=[*clean.sends, rec])))
    assert found["quiet_hours"] == 1 and found["unexpected"] == 1
