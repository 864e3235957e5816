"""The chaos run's verifier: reads every output and checks every promise, record for record.

:func:`collect` reads the topics (input, sends, audit, dead letters, suppressions, the
contacts changelog) to their ends and the Redis read model; :func:`verify` is pure — from
the :class:`~bench.chaos_workload.Plan` and those records it computes what each contact is
owed and compares. Its model is its own: what a contact should get follows from its class
and its valid inputs in the order they were read back from the input topic (duplicates
dropped by event id), not from running the engine's handlers. The engine's pure logic is
used for arithmetic the checks need, never for decisions:
``tables.compliance.calendar_window`` (a cap window's bounds in a zone),
``tables.compliance.quiet_until`` (is a local time in quiet hours), and
``tables.contacts.decode`` to read states.

A *logical send* is what one step of one execution (or one keyword reply) sends: key
``(contact, execution id, step id)`` or ``(contact, "keyword", event id)``, from the
command's or audit record's ``origin``. Each check counts violations (see
:data:`CHECKS`); figures (repeats, lateness, races) are reported beside them. Repeats
are allowed at least once (a redone batch re-emits with the same ids) and a failure
under exactly-once (``verify(..., exactly_once=True)``: outputs read ``read_committed``
from Kafka transactions, where a redone batch leaves nothing visible of its first try).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from bench.chaos_workload import ACCOUNT, Contact, Plan, Planned, Workload, definitions
from tables.compliance import calendar_window, quiet_until
from tables.contacts import decode

__all__ = ["CHECKS", "Expect", "Observed", "Rec", "Verdict", "expectations", "verify"]

#: Every check, in report order: violations must be 0.
CHECKS: dict[str, str] = {
    "lost": "G1 a send the inputs imply is missing",
    "unexpected": "a send the model does not expect (over cap, after STOP, in quiet hours, "
                  "a step that should not run)",
    "conflicting_ids": "one logical send emitted with two message ids",
    "decided_twice": "one logical send both sent and audited as not sent",
    "after_stop": "G3 a marketing send created after the contact's STOP was processed",
    "early": "G4 a send after a wait created before the wait was due",
    "fired_twice": "G4 both outcomes of one wait_for_event sent",
    "missed_event": "a wait_for_event timed out although its event was applied in time",
    "quiet_hours": "a marketing SMS created inside the contact's quiet hours",
    "cap_count_wrong": "G5 a contact's counted sends differ from the distinct ids emitted",
    "over_cap": "G6 a marketing send over a cap window's limit",
    "audit_missing": "a send that did not go out recorded nowhere, or with the wrong reason",
    "audit_unexpected": "an audit record the model does not expect",
    "dead_letter_missing": "an invalid input record not dead-lettered",
    "dead_letter_wrong": "a dead letter for a valid record, or not its original bytes/reason",
    "applied_wrong": "a contact's final state differs from its valid inputs applied once "
                     "(version, dedupe marks, profile, consent, tags, groups, purchases)",
    "repeated": "exactly-once only: a send, audit record or dead letter a read_committed "
                "reader is handed twice (same message id, same input position)",
    "changelog_regressed": "a contact's changelog went back (revision or version fell)",
    "read_model_wrong": "the read model differs from the table (latest changelog) state",
    "unplanned_input": "an input record the workload never planned (harness error)",
    "assumption": "a workload assumption broken (a zone's quiet hours or cap day changed "
                  "during the run): the expectations are not exact",
}


@dataclass(frozen=True)
class Rec:
    """One record read back (a plain copy of aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode()
        return None


@dataclass
class Observed:
    """Everything the run left: records of each topic, and the read model's states."""

    inputs: list[Rec] = field(default_factory=list)  # <prefix>contact-events
    sends: list[Rec] = field(default_factory=list)  # <prefix>send.* (every channel)
    audit: list[Rec] = field(default_factory=list)
    dead_letters: list[Rec] = field(default_factory=list)
    suppressions: list[Rec] = field(default_factory=list)
    changelog: list[Rec] = field(default_factory=list)
    #: contact id → its state in Redis (decoded; None: missing).
    read_model: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Expect:
    """What one logical send must end as. ``want``: ``sent``; ``held`` / ``dropped``
    (audited with one of ``reasons``, action defer / drop, never sent); ``stop_race``
    (sent before the STOP was processed, or dropped for the opt-out); ``branch`` (one of a
    wait_for_event's two outcomes: judged from when its event was applied)."""

    key: tuple[str, str, str]
    want: str
    marketing: bool = True
    reasons: frozenset[str] = frozenset()
    #: G4: created at or after (the created_at of this logical send) + seconds.
    after: tuple[tuple[str, str, str], float] | None = None


@dataclass
class Verdict:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, check: str, example: str) -> None:
        self.counts[check] += 1
        if len(self.examples[check]) < 5:
            self.examples[check].append(example)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())


@dataclass
class _Send:
    command: dict[str, Any]
    created: datetime
    first: tuple[int, int]  # (partition, offset) of its first record: the emission order
    records: int = 1


_OPT_OUT = frozenset({"opted_out", "suppressed"})


def _key_of(contact: str, origin: Mapping[str, Any]) -> tuple[str, str, str]:
    if origin.get("kind") == "keyword":
        return contact, "keyword", str(origin.get("event_id"))
    return contact, str(origin.get("execution_id")), str(origin.get("step_id"))


def expectations(c: Contact, events: list[Planned], w: Workload
                 ) -> tuple[list[Expect], dict[str, Any]]:
    """The logical sends contact ``c`` is owed from its valid ``events`` (distinct, in
    processing order), and its final profile: ``version``, ``consent_sms``, ``tags``,
    ``groups``, ``purchases``, ``plan`` (the attribute).

    In an open zone: drip's two sends (the second ``drip_wait_s`` after the first; for a
    STOP contact a race with the STOP), the cart's nudge and then its thanks (after a
    purchase: judged in :func:`verify`) or its reminder (``cart_timeout_s`` after the
    nudge), the first ``day_cap`` promos (the rest capped; none after a STOP), one
    confirmation for the first STOP, a reply to every HELP. In a quiet zone every
    marketing send is deferred (and a wait behind one never starts)."""
    out: list[Expect] = []
    held = frozenset({"quiet_hours_deferred"})

    def marketing(key: tuple[str, str, str], after: tuple[tuple[str, str, str], float]
                  | None = None) -> None:
        out.append(Expect(key, "held", reasons=held) if c.quiet else
                   Expect(key, "sent", after=after))

    stopped = False
    promos = 0
    tags: set[str] = set()
    groups: set[str] = set()
    purchases = 0
    plan_attr: str | None = None
    for e in events:
        data = orjson.loads(e.value)["data"]
        kind, eid = e.event_type, str(e.event_id)
        if kind == "contact.created" and c.klass in ("drip", "stop"):
            ex = f"drip/{eid}"
            marketing((c.id, ex, "hello"))
            if not c.quiet:  # the wait starts only once the first send went
                wait = float(w.drip_wait_s)
                if c.klass == "drip":
                    out.append(Expect((c.id, ex, "again"), "sent",
                                      after=((c.id, ex, "hello"), wait)))
                else:
                    out.append(Expect((c.id, ex, "again"), "stop_race", reasons=_OPT_OUT,
                                      after=((c.id, ex, "hello"), wait)))
        elif kind == "custom.cart_abandoned":
            ex = f"cart/{eid}"
            marketing((c.id, ex, "nudge"))
            if c.quiet:
                pass
            elif c.klass == "cart_buy":
                out.append(Expect((c.id, ex, "thanks"), "branch",
                                  after=((c.id, ex, "nudge"), 0.0)))
            else:
                out.append(Expect((c.id, ex, "remind"), "sent",
                                  after=((c.id, ex, "nudge"), float(w.cart_timeout_s))))
        elif kind == "custom.promo":
            key = (c.id, f"promo/{eid}", "offer")
            if stopped:
                out.append(Expect(key, "dropped", reasons=_OPT_OUT))
            elif c.quiet:
                out.append(Expect(key, "held", reasons=held))
            elif promos < w.day_cap:
                out.append(Expect(key, "sent"))
            else:
                out.append(Expect(key, "dropped", reasons=frozenset({"frequency_capped"})))
            promos += 1
        elif kind == "keyword.received":
            word = str(data["keyword"]).upper()
            if word == "STOP":
                if not stopped:  # one confirmation: the first STOP only
                    out.append(Expect((c.id, "keyword", eid), "sent", marketing=False))
                stopped = True
            elif word == "HELP":
                out.append(Expect((c.id, "keyword", eid), "sent", marketing=False))
        elif kind == "purchase.completed":
            purchases += 1
        elif kind == "contact.tagged":
            tags.add(data["tag"])
        elif kind == "contact.untagged":
            tags.discard(data["tag"])
        elif kind == "contact.added_to_group":
            groups.add(data["group"])
        elif kind == "contact.removed_from_group":
            groups.discard(data["group"])
        elif kind == "contact.updated":
            plan_attr = data.get("attributes", {}).get("plan", plan_attr)
    profile = {"version": len(events), "consent_sms": not stopped, "tags": sorted(tags),
               "groups": sorted(groups), "purchases": purchases, "plan": plan_attr}
    return out, profile


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(values), "p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(values), 3)}


def verify(plan: Plan, obs: Observed, run_end: datetime | None = None, *,
           exactly_once: bool = False) -> Verdict:
    """Every check of :data:`CHECKS` over what the run left (see the module doc).
    ``run_end``: the workers' clock when the records were read (for the assumptions).
    ``exactly_once``: the workers committed each batch in a transaction and ``obs`` was
    read ``read_committed``, so a repeat is a failure (``repeated``); otherwise
    (at-least-once) a repeat with its id is allowed and only counted."""
    v = Verdict()
    w = plan.workload
    policy = definitions(w)[0]
    quiet_rules = policy["quiet_hours"]
    limits = policy["caps"]["limits"]
    contacts = plan.contacts
    planned = plan.by_value()

    # -- inputs: what was really published, in the order it was processed -------------
    events: dict[str, list[Planned]] = defaultdict(list)
    seen_ids: dict[str, set[str]] = defaultdict(set)
    invalid_inputs: dict[tuple[int, int], tuple[Rec, Planned]] = {}
    inputs_at: dict[tuple[int, int], Rec] = {}
    duplicates = 0
    for rec in sorted(obs.inputs, key=lambda r: (r.partition, r.offset)):
        inputs_at[(rec.partition, rec.offset)] = rec
        p = planned.get(rec.value)
        if p is None:
            v.fail("unplanned_input", f"{rec.partition}@{rec.offset}: {rec.value[:80]!r}")
            continue
        if not p.valid:
            invalid_inputs[(rec.partition, rec.offset)] = (rec, p)
        elif p.event_id in seen_ids[p.contact]:
            duplicates += 1
        else:
            seen_ids[p.contact].add(str(p.event_id))
            events[p.contact].append(p)
    published = {r.value for r in obs.inputs}
    unpublished = sum(1 for value in planned if value not in published)

    # -- sends -------------------------------------------------------------------------
    sends: dict[str, _Send] = {}
    by_key: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    records = 0
    for rec in sorted(obs.sends, key=lambda r: (r.partition, r.offset)):
        records += 1
        command = orjson.loads(rec.value)
        mid = command["message_id"]
        if mid in sends:
            sends[mid].records += 1
            continue
        sends[mid] = _Send(command, datetime.fromisoformat(command["created_at"]),
                           (rec.partition, rec.offset))
        by_key[_key_of(command["contact_id"], command["origin"])].add(mid)
    per_contact: dict[str, list[_Send]] = defaultdict(list)
    for send in sorted(sends.values(), key=lambda s: s.first):
        per_contact[send.command["contact_id"]].append(send)

    # -- audit ----------------------------------------------------------------------
    audits: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    audit_ids: Counter[str] = Counter()
    for rec in obs.audit:
        record = orjson.loads(rec.value)
        if record.get("message_id") and record.get("origin"):
            audit_ids[record["message_id"]] += 1
            if audit_ids[record["message_id"]] == 1:
                audits[_key_of(record["contact_id"], record["origin"])].append(record)
        else:
            v.fail("audit_unexpected", f"{record.get('reason')} {record.get('contact_id')}")

    # -- suppressions: when each contact's STOP was processed -------------------------
    stop_at: dict[str, datetime] = {}
    for rec in obs.suppressions:
        s = orjson.loads(rec.value)
        if s.get("reason") == "opted_out" and not s.get("remove"):
            at = datetime.fromisoformat(s["at"])
            cid = str(s.get("contact_id"))
            stop_at[cid] = min(at, stop_at.get(cid, at))

    # -- the changelog: the table's states, their history -------------------------------
    latest: dict[str, bytes] = {}
    last_rev: dict[str, tuple[int, int]] = {}
    purchase_applied: dict[str, datetime] = {}
    for rec in sorted(obs.changelog, key=lambda r: (r.partition, r.offset)):
        if rec.key is None or rec.key.startswith(b"~"):
            continue  # a partition's campaign progress, not a contact
        key = rec.key.decode()
        written: Any = decode(rec.value)
        rev = (int(written["revision"]), int(written["version"]))
        was = last_rev.get(key)
        if was is not None and (rev[0] < was[0] or rev[1] < was[1]):
            v.fail("changelog_regressed", f"{key}: {was} then {rev} at "
                                          f"{rec.partition}@{rec.offset}")
        last_rev[key] = rev if was is None else max(rev, was)
        latest[key] = rec.value
        if written.get("purchases", 0) >= 1 and key not in purchase_applied:
            purchase_applied[key] = datetime.fromisoformat(written["updated_at"])

    # -- the model, contact by contact ------------------------------------------------
    lateness: list[float] = []
    late_purchases = stop_races = 0
    expected_keys: set[tuple[str, str, str]] = set()
    for cid, c in contacts.items():
        zone = ZoneInfo(c.zone)
        owed, profile = expectations(c, events.get(cid, []), w)
        for e in owed:
            expected_keys.add(e.key)
            mids = by_key.get(e.key, set())
            audited = audits.get(e.key, [])
            if len(mids) > 1:
                v.fail("conflicting_ids", f"{e.key}: {sorted(mids)}")
            sent = sends[min(mids)] if mids else None
            if e.want in ("sent", "branch", "stop_race") and sent is not None and audited:
                v.fail("decided_twice", f"{e.key}: sent and audited {audited[0]['reason']}")
            if e.want == "sent":
                if sent is None:
                    why = f" (audited {audited[0]['reason']})" if audited else ""
                    v.fail("lost", f"{e.key} {c.klass}{why}")
            elif e.want in ("held", "dropped"):
                if sent is not None:
                    v.fail("unexpected", f"{e.key} {c.klass}: sent, wanted {e.want} "
                                         f"{sorted(e.reasons)}")
                elif not any(a["reason"] in e.reasons for a in audited):
                    v.fail("audit_missing", f"{e.key} {c.klass}: wanted {sorted(e.reasons)}, "
                                            f"audit says {[a['reason'] for a in audited]}")
            elif e.want == "stop_race":
                if sent is not None:
                    stop_races += 1
                elif not any(a["reason"] in e.reasons for a in audited):
                    v.fail("audit_missing", f"{e.key}: neither sent nor dropped for the STOP")
            elif e.want == "branch":  # the thanks, or the reminder if the purchase was late
                remind_key = (e.key[0], e.key[1], "remind")
                expected_keys.add(remind_key)
                nudge = by_key.get((e.key[0], e.key[1], "nudge"))
                remind = by_key.get(remind_key)
                if nudge is None:
                    continue  # lost: counted with the nudge
                due = sends[min(nudge)].created + timedelta(seconds=w.cart_timeout_s)
                applied_at = purchase_applied.get(f"{ACCOUNT}:{cid}")
                if sent is not None and sent.created >= due:
                    v.fail("early", f"{e.key}: the thanks after the timeout was due")
                if remind:
                    reminded = sends[min(remind)].created
                    if reminded < due:
                        v.fail("early", f"{remind_key}: created {reminded.isoformat()} "
                                        f"before due {due.isoformat()}")
                    if applied_at is not None and applied_at < due:
                        v.fail("missed_event", f"{e.key}: purchase applied "
                                               f"{applied_at.isoformat()} before the timeout "
                                               f"{due.isoformat()}")
                    elif sent is None:
                        late_purchases += 1
                elif sent is None:
                    v.fail("lost", f"{e.key} {c.klass}: neither the thanks nor the reminder")
            if sent is None or e.after is None:
                continue
            # G4: due = the send before the wait + the wait (both from the same step run).
            before = by_key.get(e.after[0])
            if not before:
                v.fail("lost", f"{e.after[0]}: missing, though {e.key} was sent")
                continue
            due = sends[min(before)].created + timedelta(seconds=e.after[1])
            if sent.created < due:
                v.fail("early", f"{e.key}: created {sent.created.isoformat()} before due "
                                f"{due.isoformat()}")
            elif e.after[1]:
                lateness.append((sent.created - due).total_seconds())
        # A wait_for_event fires one outcome.
        for ex in {e.key[1] for e in owed if e.key[2] == "nudge"}:
            if by_key.get((cid, ex, "thanks")) and by_key.get((cid, ex, "remind")):
                v.fail("fired_twice", f"{cid} {ex}: both the thanks and the reminder")
        # G3: nothing marketing after the STOP was processed.
        stopped = stop_at.get(cid)
        mine = per_contact.get(cid, [])
        if c.klass == "stop" and stopped is None:
            v.fail("applied_wrong", f"{cid}: no opted_out suppression for its STOP")
        for send in mine:
            marketing = not send.command.get("transactional")
            if stopped is not None and marketing and send.created > stopped:
                v.fail("after_stop", f"{cid} {send.command['message_id']} created "
                                     f"{send.created.isoformat()} > STOP {stopped.isoformat()}")
            if marketing and quiet_until(quiet_rules, send.command["channel"], zone,
                                         send.created) is not None:
                v.fail("quiet_hours", f"{cid} {send.command['message_id']} at "
                                      f"{send.created.astimezone(zone).isoformat()}")
        # G6: at each marketing send, fewer sends than the limit before it in its windows.
        for i, send in enumerate(mine):
            if send.command.get("transactional"):
                continue
            for kind, limit in limits.items():
                lo, hi = calendar_window(send.created, zone, kind)
                prior = sum(1 for s in mine[:i] if lo <= s.created < hi)
                if prior >= limit:
                    v.fail("over_cap", f"{cid} {send.command['message_id']}: {prior} sends "
                                       f"before it in its {kind} ({limit})")
        # The final state: applied once, counted once, projected.
        raw = latest.get(f"{ACCOUNT}:{cid}")
        if raw is None:
            v.fail("applied_wrong", f"{cid}: no state in the changelog")
            continue
        state: Any = decode(raw)
        got = {"version": state["version"], "consent_sms": state["consent"].get("sms"),
               "tags": sorted(state["tags"]), "groups": sorted(state["groups"]),
               "purchases": state["purchases"], "plan": state["attributes"].get("plan")}
        if got != profile:
            v.fail("applied_wrong", f"{cid} {c.klass}: state {got} != inputs {profile}")
        missing = seen_ids[cid] - set(state["seen"])
        if missing:
            v.fail("applied_wrong", f"{cid}: no dedupe mark for {sorted(missing)[:3]}")
        counted = {s["id"] for s in state["sends"]}
        emitted = {s.command["message_id"] for s in mine}
        if counted != emitted:
            v.fail("cap_count_wrong", f"{cid}: counted-not-emitted "
                                      f"{sorted(counted - emitted)[:2]}, emitted-not-counted "
                                      f"{sorted(emitted - counted)[:2]}")
        projected = obs.read_model.get(cid)
        if projected is None:
            v.fail("read_model_wrong", f"{cid}: not in the read model")
        elif projected != state:
            v.fail("read_model_wrong", f"{cid}: read model revision "
                                       f"{projected.get('revision')} != table "
                                       f"{state['revision']}")
    # Sends nobody owes.
    for logical, mids in by_key.items():
        if logical not in expected_keys:
            owner = contacts.get(logical[0])
            v.fail("unexpected", f"{logical} {owner.klass if owner else '?'} {sorted(mids)[0]}")
    for logical, found in audits.items():
        if logical not in expected_keys:
            v.fail("audit_unexpected", f"{logical}: {found[0]['reason']}")

    # -- dead letters -------------------------------------------------------------------
    lettered: Counter[tuple[int, int]] = Counter()
    for rec in obs.dead_letters:
        if rec.header("dripstream.origin.partition") is not None:  # came through routed
            where = (rec.header("dripstream.origin.partition"),
                     rec.header("dripstream.origin.offset"))
        else:
            where = (rec.header("dripstream.partition"), rec.header("dripstream.offset"))
        try:
            source_at = (int(where[0] or ""), int(where[1] or ""))
        except ValueError:
            v.fail("dead_letter_wrong", f"no source in {rec.headers}")
            continue
        source = invalid_inputs.get(source_at)
        if source is None:
            original = inputs_at.get(source_at)
            v.fail("dead_letter_wrong", f"{source_at} is not an invalid input: "
                                        f"{(original.value if original else b'?')[:80]!r} "
                                        f"{rec.header('dripstream.reason')}")
            continue
        lettered[source_at] += 1
        original_rec, p = source
        if (rec.value, rec.key) != (original_rec.value, original_rec.key):
            v.fail("dead_letter_wrong", f"{source_at}: not the original bytes")
        if rec.header("dripstream.reason") != p.reason:
            v.fail("dead_letter_wrong", f"{source_at}: reason {rec.header('dripstream.reason')}, "
                                        f"wanted {p.reason}")
    for where_, (_, p) in invalid_inputs.items():
        if not lettered[where_]:
            v.fail("dead_letter_missing", f"{where_} {p.reason}")

    # -- repeats: allowed at least once (same ids), none under exactly-once -------------
    if exactly_once:
        for mid, send in sends.items():
            if send.records > 1:
                v.fail("repeated", f"send {mid} x{send.records}")
        for mid, n in audit_ids.items():
            if n > 1:
                v.fail("repeated", f"audit {mid} x{n}")
        for where_, n in lettered.items():
            if n > 1:
                v.fail("repeated", f"dead letter of {where_} x{n}")

    # -- assumptions: each zone's quiet hours and cap day held for the whole run ---------
    if run_end is not None:
        for zone_name in {c.zone for c in contacts.values()}:
            zone = ZoneInfo(zone_name)
            quiet = [quiet_until(quiet_rules, "sms", zone, t) is not None
                     for t in (plan.start, run_end)]
            days = {calendar_window(t, zone, "day") for t in (plan.start, run_end)}
            if len(set(quiet)) > 1 or (not quiet[0] and len(days) > 1):
                v.fail("assumption", f"{zone_name}: quiet {quiet}, days {len(days)}")

    v.figures.update({
        "contacts": len(contacts),
        "input_records": len(obs.inputs),
        "valid_events": sum(len(e) for e in events.values()),
        "duplicate_inputs": duplicates,
        "invalid_inputs": len(invalid_inputs),
        "unpublished": unpublished,
        "send_records": records,
        "sends": len(sends),
        "send_repeats": records - len(sends),
        "contacts_with_repeats": len({s.command["contact_id"] for s in sends.values()
                                      if s.records > 1}),
        "audit_records": len(obs.audit),
        "audit_repeats": sum(n - 1 for n in audit_ids.values()),
        "dead_letters": len(obs.dead_letters),
        "dead_letter_repeats": sum(n - 1 for n in lettered.values()),
        "changelog_records": len(obs.changelog),
        "stops": len(stop_at),
        "stop_races": stop_races,
        "late_purchases": late_purchases,
        "wait_lateness_s": _percentiles(lateness),
    })
    return v


def as_recs(records: Iterable[Any]) -> list[Rec]:
    """aiokafka ConsumerRecords as :class:`Rec`."""
    return [Rec(r.topic, r.partition, r.offset, r.key, r.value or b"",
                tuple((k, bytes(v)) for k, v in (r.headers or ())), r.timestamp)
            for r in records]
