"""Workflow executions: the pure state machine behind the workflow agent.

A contact's executions live inside the contact's own state (the ``contacts`` table value),
so an event's effect on the profile, its dedupe mark and every execution it moved are one
table write. Functions here take that state (a fresh copy, which they update), the
workflow definitions as plain dicts, and ``now``; they return :class:`Effects` — send
commands, contact events and audit records for the agent to emit. They read no clock and
do no I/O, so a test drives days of waiting by passing later ``now`` values.

Idempotence: an execution only moves from the step it is at. A wake-up finds nothing due
if it comes twice, or early (``due_at`` is in the future: for example after a resume moved
it); a control command repeated finds the execution already paused/resumed/cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from typing import Any, Literal

from streams.definitions import TEMPLATE, parse_duration
from tables import experiments, gate
from tables.compliance import category_of, record_send
from tables.contacts import ContactState, DigestState, Execution, Pending
from tables.effects import (
    Draft,
    Effects,
    Origin,
    audit_record,
    contact_event,
    iso,
    message_id,
    send_command,
)
from tables.gate import DEFAULTS, Compliance
from tables.schedule import contact_zone, next_local_time
from tables.triggers import MISSING, criteria_hold, resolve, trigger_matches

__all__ = [
    "ACTIVE",
    "HISTORY_MAX",
    "HOLD",
    "KEEP_FINISHED",
    "MAX_ACTIVE",
    "Lookup",
    "cancel_all",
    "control",
    "enrol",
    "finish",
    "next_due",
    "on_event",
    "on_wakeup",
    "render",
    "trigger_fields",
]

#: Statuses of an execution that has not ended.
ACTIVE = ("running", "waiting", "paused")
#: Finished executions kept per contact (the newest); re-entry uses ``runs`` instead.
KEEP_FINISHED = 5
#: Step-history entries kept per execution (the newest).
HISTORY_MAX = 30
#: Template fields that are not paths into the contact or the event: a link made for the
#: contact, what a digest step collected (docs/preferences.md).
SPECIAL_FIELDS = frozenset({"preferences_url", "digest.count", "digest.items"})
#: A digest item is cut to this many characters.
DIGEST_ITEM_CHARS = 200
#: Active executions one contact may have: the contact's value is one changelog record,
#: so it must stay bounded (an every_time workflow with long waits could grow it forever).
MAX_ACTIVE = 100

Ended = Literal["completed", "cancelled", "failed"]

#: ``lookup(account, workflow_id, version)`` → the definition dict, or None.
Lookup = Callable[[str, str, int], dict[str, Any] | None]


@lru_cache(maxsize=1024)
def _parts(template: str) -> tuple[str | tuple[str, str], ...]:
    """A template as text and ``(path, default)`` parts, parsed once per template."""
    parts: list[str | tuple[str, str]] = []
    at = 0
    for match in TEMPLATE.finditer(template):
        parts += [template[at:match.start()], (match.group(1), match.group(2) or "")]
        at = match.end()
    parts.append(template[at:])
    return tuple(parts)


def render(template: str, contact: Any, event: dict[str, Any],
           special: Mapping[str, str] | None = None) -> str:
    """Fill ``{{contact.first_name}}`` / ``{{event.data.order_id | your order}}``;
    ``special``: the values of :data:`SPECIAL_FIELDS` (absent: their default shows)."""
    out = []
    for part in _parts(template):
        if isinstance(part, str):
            out.append(part)
            continue
        path, default = part
        if path in SPECIAL_FIELDS:
            out.append((special or {}).get(path) or default)
            continue
        value = resolve(path, event, contact)
        if value is MISSING or value is None or isinstance(value, dict | list):
            out.append(default)
        else:
            out.append(str(value) or default)
    return "".join(out)


def _history(ex: Execution, step: str, outcome: str, now: datetime, **extra: Any) -> None:
    history = ex["history"]
    history.append({"step": step, "outcome": outcome, "at": iso(now), **extra})  # type: ignore[typeddict-item]
    if len(history) > HISTORY_MAX:
        del history[: len(history) - HISTORY_MAX]


def _end(
    ex: Execution, status: Ended, reason: str, now: datetime,
    contact: ContactState | None = None, fx: Effects | None = None,
) -> None:
    ex.update({"status": status, "ended_reason": reason, "ended_at": iso(now),
               "due_at": None, "waiting_for": None, "remaining_s": None})
    _history(ex, ex["step"], status, now, reason=reason)
    deferred = ex.pop("deferred", None)
    if deferred and contact is not None and fx is not None:
        # A deferred send that will now never go out gets its final record.
        fx.audit.append(audit_record(contact, now, "execution_ended", message_id=deferred[
            "message_id"], origin=_origin(ex, ex["step"]), action="drop", ended_reason=reason))


def _goto(ex: Execution, target: str | None, now: datetime) -> None:
    if target is None:
        _end(ex, "completed", "end", now)
    else:
        ex["step"] = target


def _origin(ex: Execution, step_id: str) -> Origin:
    origin: Origin = {"kind": "workflow", "workflow_id": ex["workflow_id"],
                      "version": ex["version"], "execution_id": ex["id"], "step_id": step_id,
                      "depth": ex["depth"]}
    if ex["workflow_id"].startswith("campaign:"):  # a content campaign's (tables/campaigns.py)
        origin["kind"] = "campaign"
        origin["campaign_id"] = ex["workflow_id"][len("campaign:"):]
    return origin


def _send(
    ex: Execution, wf: dict[str, Any], sid: str, step: dict[str, Any],
    contact: ContactState, now: datetime, fx: Effects, compliance: Compliance,
) -> str:
    """Emit, defer or drop one send step; returns the gate's action."""
    channel = step["kind"].removeprefix("send_")
    to = contact.get("email") if channel == "email" else contact.get("phone")
    deferred = ex.pop("deferred", None)  # a deferred send keeps its id and lifetime
    if deferred:
        mid, created, expires = (deferred["message_id"], deferred["created_at"],
                                 deferred["expires_at"])
    else:
        mid = message_id(contact["account"], ex["id"], sid, ex["seq"])
        created = iso(now)
        expires = iso(now + timedelta(seconds=parse_duration(step["expires_after"])))
    links = {}
    if compliance.links is not None and "preferences_url" in step["body"] + (
            step.get("subject") or ""):
        links["preferences_url"] = compliance.links.preferences_url(
            contact["account"], contact["contact_id"], datetime.fromisoformat(created))
    if (collected := ex.get("digest")) is not None:
        links["digest.count"] = str(collected["count"])
        links["digest.items"] = ", ".join(collected["items"])
    variant = ex.get("variant")
    category = step.get("category")
    declared = category_of(compliance.policy, category)
    command: Draft = {
        "message_id": mid,
        "channel": channel,
        "account": contact["account"],
        "contact_id": contact["contact_id"],
        "to": to,
        "body": render(step["body"], contact, ex["trigger"], links),
        # A category makes a workflow's send transactional, never a campaign's: a
        # campaign is marketing (docs/campaigns.md).
        "transactional": bool(step.get("transactional") or (
            declared is not None and declared["transactional"] and "campaign" not in wf)),
        "origin": _origin(ex, sid),
        "created_at": created,
        "expires_at": expires,
    }
    if variant:
        command["variant"] = variant
    if category:
        command["category"] = category
    if channel == "email":
        command["subject"] = render(step["subject"], contact, ex["trigger"], links)
    if channel == "mms":
        command["media_urls"] = list(step["media_urls"])
    late = step.get("max_lateness")
    scheduled = datetime.fromisoformat(ex["scheduled_at"])
    if variant in experiments.HELD_BACK and not command["transactional"]:
        # counted, never sent
        decision = gate.Decision("drop", experiments.HELD_BACK[variant])
    elif late and now > scheduled + timedelta(seconds=parse_duration(late)):
        decision = gate.Decision("drop", "too_late")
    else:
        decision = gate.decide(command, contact, compliance.policy,
                               bool(to) and compliance.suppressed(str(to)), now,
                               wf.get("on_capped", "drop"), wf.get("timezone"))
    if decision.action == "send":
        fx.sends.append(send_command(command))
        record_send(contact, command, now)
        _history(ex, sid, "sent", now, message_id=mid)
    elif decision.action == "defer":
        assert decision.until is not None
        until = iso(decision.until)
        ex.update({"status": "waiting", "due_at": until, "deferred": {
            "message_id": mid, "created_at": created, "expires_at": expires}})
        fx.audit.append(audit_record(contact, now, decision.reason or "", message_id=mid,
                               channel=channel, origin=_origin(ex, sid), action="defer",
                               deferred_until=until))
        _history(ex, sid, "deferred", now, message_id=mid, reason=decision.reason,
                 until=until)
    else:
        fx.audit.append(audit_record(contact, now, decision.reason or "", message_id=mid,
                               channel=channel, origin=_origin(ex, sid), action="drop"))
        _history(ex, sid, "not_sent", now, message_id=mid, reason=decision.reason)
    # The entry reached a send step (an after-send window opens now, however the gate
    # answered: a deferral too, so that every arm opens at the same moment).
    experiments.note(contact, ex, now, sent=decision.action == "send")
    return decision.action


_STATE_EVENTS = {
    "add_tag": ("contact.tagged", "tag"),
    "remove_tag": ("contact.untagged", "tag"),
    "add_to_group": ("contact.added_to_group", "group"),
    "remove_from_group": ("contact.removed_from_group", "group"),
}


def _run(
    ex: Execution, wf: dict[str, Any], contact: ContactState, now: datetime,
    compliance: Compliance,
) -> Effects:
    """Advance a running execution until it waits or ends (the graph has no cycles)."""
    fx = Effects()
    while ex["status"] == "running":
        sid = ex["step"]
        step = wf["steps"][sid]
        kind = step["kind"]
        if not ex.get("deferred"):  # a deferred send is re-run under its original seq
            ex["seq"] += 1
        if kind.startswith("send_"):
            if _send(ex, wf, sid, step, contact, now, fx, compliance) != "defer":
                _goto(ex, step.get("next"), now)
        elif kind in ("wait", "wait_until", "wait_for_event"):
            if kind == "wait":
                due = now + timedelta(seconds=parse_duration(step["duration"]))
            elif kind == "wait_until":
                zone = contact_zone(contact, wf.get("timezone") or compliance.policy["timezone"])
                due = next_local_time(now, zone, dtime.fromisoformat(step["time"]),
                                      step.get("weekdays"))
            else:
                due = now + timedelta(seconds=parse_duration(step["timeout"]))
                ex["waiting_for"] = {"event": step["event"], "criteria": step["criteria"]}
            ex.update({"status": "waiting", "due_at": iso(due)})
            _history(ex, sid, "waiting", now, until=iso(due))
        elif kind in _STATE_EVENTS:
            event_type, attr = _STATE_EVENTS[kind]
            fx.events.append(contact_event(
                contact, f"{ex['id']}\x1f{sid}\x1f{ex['seq']}",
                f"urn:dripstream:workflow:{wf['id']}", event_type, {attr: step[attr]},
                ex["depth"] + 1, now))
            _history(ex, sid, "emitted", now, event=event_type)
            _goto(ex, step.get("next"), now)
        elif kind == "branch":
            result = criteria_hold(step["condition"], ex["trigger"], contact)
            _history(ex, sid, "true" if result else "false", now)
            ex["step"] = step["true"] if result else step["false"]
        elif kind == "digest":
            _digest(ex, sid, step, contact, now)
        elif kind == "split":  # a control or holdout member goes on too, sent nothing
            branch = experiments.choose(contact["account"], contact["contact_id"], wf["id"],
                                        sid, step["branches"])
            if (arm := ex.get("variant")) not in experiments.HELD_BACK:
                ex["variant"] = f"{arm}/{branch['name']}" if arm else branch["name"]
                experiments.note(contact, ex)
            _history(ex, sid, "split", now, variant=branch["name"])
            ex["step"] = branch["next"]
        else:  # exit
            _end(ex, "completed", "exit", now)
    return fx


def _digest(ex: Execution, sid: str, step: dict[str, Any], contact: ContactState,
            now: datetime) -> None:
    """Reach a digest step: start collecting (the event that started the execution counts
    when it matches and this is its first stop) and wait for the window, or go on at once
    when that already makes ``max``."""
    ex["digest"] = {"step": sid, "count": 0, "items": []}
    trigger = ex["trigger"]
    if (ex["started_at"] == iso(now) and trigger["type"] == step["event"]
            and criteria_hold(step["criteria"], trigger, contact)):
        ex["digest"] = _collected(ex["digest"], step, trigger, contact)
    if ex["digest"]["count"] >= step["max"]:
        _history(ex, sid, "released", now, count=ex["digest"]["count"])
        _goto(ex, step.get("next"), now)
        return
    due = now + timedelta(seconds=parse_duration(step["window"]))
    ex.update({"status": "waiting", "due_at": iso(due),
               "waiting_for": {"event": step["event"], "criteria": step["criteria"],
                               "digest": True}})
    _history(ex, sid, "collecting", now, until=iso(due))


def _release(ex: Execution, wf: dict[str, Any], contact: ContactState, now: datetime,
             scheduled: datetime, compliance: Compliance) -> Effects:
    """A digest's window is over (or it is full): go on with what it collected, or end
    when it collected nothing."""
    step = wf["steps"][ex["step"]]
    count = ex["digest"]["count"]
    _history(ex, ex["step"], "released", now, count=count)
    ex.update({"status": "running", "due_at": None, "waiting_for": None,
               "scheduled_at": iso(scheduled)})
    if count:
        _goto(ex, step.get("next"), now)
    else:  # nothing came: nothing to send
        _end(ex, "completed", "digest_empty", now)
    return _run(ex, wf, contact, now, compliance)


def _collected(state: DigestState, step: dict[str, Any], event: dict[str, Any],
               contact: ContactState) -> DigestState:
    """``state`` with ``event`` counted (a new dict: executions' values are shared)."""
    items = state["items"]
    if step.get("item"):
        value = resolve(step["item"], event, contact)
        if value is not MISSING and value is not None and not isinstance(value, dict | list):
            items = [*items, str(value)[:DIGEST_ITEM_CHARS]]
    return {"step": state["step"], "count": state["count"] + 1, "items": items}


def _prune(contact: ContactState) -> None:
    if len(contact["executions"]) <= KEEP_FINISHED:
        return
    finished = [e for e in contact["executions"].values() if e["status"] not in ACTIVE]
    finished.sort(key=lambda e: e["ended_at"] or "")
    for ex in finished[: max(0, len(finished) - KEEP_FINISHED)]:
        del contact["executions"][ex["id"]]


def next_due(contact: ContactState) -> str | None:
    """The earliest wake-up any of the contact's executions waits for, or a conversion
    window closes at."""
    dues = [e["due_at"] for e in contact["executions"].values()
            if e["status"] == "waiting" and e["due_at"]]
    if (closes := experiments.earliest_close(contact)) is not None:
        dues.append(closes)
    dues += [p["due"] for p in (contact.get("debounced") or {}).values()]
    return min(dues, key=datetime.fromisoformat) if dues else None


def finish(contact: ContactState) -> None:
    """Prune finished executions and set the contact's ``next_due``: after any change."""
    experiments.close_unreached(contact)
    _prune(contact)
    contact["next_due"] = next_due(contact)


def _may_start(contact: ContactState, wf: dict[str, Any], now: datetime) -> bool:
    running = any(e["workflow_id"] == wf["id"] and e["status"] in ACTIVE
                  for e in contact["executions"].values())
    runs = contact["runs"].get(wf["id"])
    if (period := wf["trigger"].get("throttle")) is not None and runs is not None and (
            now < datetime.fromisoformat(runs["last_started_at"])
            + timedelta(seconds=parse_duration(period))):
        return False  # started less than a period ago
    policy = wf["reentry"]
    if policy["policy"] == "every_time":
        return True
    if policy["policy"] == "once_ever":
        return runs is None
    if running:
        return False
    if policy["policy"] == "after_days" and runs is not None:
        last = datetime.fromisoformat(runs["last_started_at"])
        return now >= last + timedelta(days=policy["days"])
    return True


#: id(definition) → (the definition, its trigger fields): the registry's definition dicts
#: live as long as the worker and are never changed, so each is read once (the entry holds
#: the dict, so its id is not reused while remembered).
_TRIGGER_FIELDS: dict[int, tuple[dict[str, Any], list[list[str]]]] = {}


def trigger_fields(wf: dict[str, Any]) -> list[list[str]]:
    """The ``event.data`` paths the workflow reads from its triggering event (templates and
    branch conditions): an execution keeps only those, not the whole event."""
    known = _TRIGGER_FIELDS.get(id(wf))
    if known is None or known[0] is not wf:
        if len(_TRIGGER_FIELDS) > 10_000:
            _TRIGGER_FIELDS.clear()
        known = _TRIGGER_FIELDS[id(wf)] = (wf, _trigger_fields(wf))
    return known[1]


def _trigger_fields(wf: dict[str, Any]) -> list[list[str]]:
    paths: set[tuple[str, ...]] = set()
    for step in wf["steps"].values():
        texts = [step.get("body") or "", step.get("subject") or ""]
        fields = [m.group(1).strip() for t in texts for m in TEMPLATE.finditer(t)]
        fields += [c.get("field") or "" for c in step.get("condition") or []]
        if step["kind"] == "digest":  # the trigger may be its first item
            fields += [c.get("field") or "" for c in step["criteria"]]
            fields.append(step.get("item") or "")
        for name in fields:
            parts = name.split(".")
            if len(parts) > 2 and parts[:2] == ["event", "data"]:
                paths.add(tuple(parts[2:]))
    return [list(p) for p in sorted(paths)]


def _trigger(event: dict[str, Any], wf: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for path in trigger_fields(wf):
        value: Any = event["data"]
        for part in path:
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    return {"id": event["id"], "type": event["type"], "time": event["time"], "data": data}


def on_event(
    contact: ContactState, event: dict[str, Any], workflows: list[dict[str, Any]],
    lookup: Lookup, now: datetime, max_depth: int, compliance: Compliance = DEFAULTS,
) -> Effects:
    """Apply an accepted contact event to the contact's executions (``contact`` already
    holds the profile change this event made). ``workflows``: the account's active
    definitions, newest version of each."""
    fx = Effects()
    collected: set[str] = set()  # workflows whose digest took the event: it starts no other
    for ex in list(contact["executions"].values()):
        if ex["status"] not in ACTIVE:
            continue
        wf = lookup(contact["account"], ex["workflow_id"], ex["version"])
        if wf is None:
            continue
        waiting = ex.get("waiting_for")
        due_at = ex["due_at"]
        if ex["status"] == "waiting" and waiting and waiting.get("digest"):
            assert due_at is not None
            step = wf["steps"][ex["step"]]
            if datetime.fromisoformat(due_at) <= now:
                # Its window ended before this event (the wake-up is late): what it has
                # goes now, and the event may start the next digest.
                fx += _release(ex, wf, contact, now, datetime.fromisoformat(due_at),
                               compliance)
            elif (waiting["event"] == event["type"]
                    and criteria_hold(waiting["criteria"], event, contact)):
                ex["digest"] = _collected(ex["digest"], step, event, contact)
                collected.add(wf["id"])
                if ex["digest"]["count"] >= step["max"]:  # full: released now
                    fx += _release(ex, wf, contact, now, now, compliance)
        elif (ex["status"] == "waiting" and waiting and waiting["event"] == event["type"]
                and due_at is not None
                and datetime.fromisoformat(due_at) > now  # else it timed out already
                and criteria_hold(waiting["criteria"], event, contact)):
            step = wf["steps"][ex["step"]]
            _history(ex, ex["step"], "event_received", now, event_id=event["id"])
            ex.update({"status": "running", "due_at": None, "waiting_for": None,
                       "scheduled_at": iso(now)})
            _goto(ex, step.get("next"), now)
            fx += _run(ex, wf, contact, now, compliance)
        if ex["status"] in ACTIVE and any(
            g["event"] == event["type"] and criteria_hold(g["criteria"], event, contact)
            for g in wf["goals"]
        ):
            _end(ex, "completed", "goal_reached", now, contact, fx)

    _forget_debounced(contact, workflows, event)
    matching = [wf for wf in workflows
                if wf["id"] not in collected and trigger_matches(wf, event, contact)]
    depth = int(event.get("causationdepth", 0))
    if matching and depth >= max_depth:
        fx.audit.append(audit_record(contact, now, "loop_guard", event_id=event["id"],
                                     event_type=event["type"], depth=depth,
                                     workflows=[wf["id"] for wf in matching]))
        matching = []
    for wf in matching:
        if (quiet := wf["trigger"].get("debounce")) is not None:
            # Start later, with the latest event, once they stop coming for ``quiet``.
            contact.setdefault("debounced", {})[wf["id"]] = {
                "event": _trigger(event, wf), "depth": depth,
                "due": iso(now + timedelta(seconds=parse_duration(quiet)))}
            continue
        fx += enrol(contact, wf, event, now, depth, compliance)[0]
    finish(contact)
    return fx


def _forget_debounced(contact: ContactState, workflows: list[dict[str, Any]],
                      event: dict[str, Any]) -> None:
    """A goal of a workflow reached while its debounced start waits: it will not start
    (the cart was bought before the reminder)."""
    pending = contact.get("debounced")
    if not pending:
        return
    for wf in workflows:
        if wf["id"] in pending and any(
                g["event"] == event["type"] and criteria_hold(g["criteria"], event, contact)
                for g in wf["goals"]):
            del pending[wf["id"]]
    if not pending:
        del contact["debounced"]


def _quiet(contact: ContactState, now: datetime) -> list[tuple[str, Pending]]:
    """The debounced starts due at ``now``, taken out of the contact (oldest first)."""
    pending = contact.get("debounced")
    if not pending:
        return []
    due = sorted(((wf_id, p) for wf_id, p in pending.items()
                  if datetime.fromisoformat(p["due"]) <= now), key=lambda item: item[1]["due"])
    for wf_id, _ in due:
        del pending[wf_id]
    if not pending:
        del contact["debounced"]
    return due


def enrol(
    contact: ContactState, wf: dict[str, Any], event: dict[str, Any], now: datetime,
    depth: int, compliance: Compliance = DEFAULTS, scheduled_at: datetime | None = None,
) -> tuple[Effects, str]:
    """Start ``wf`` for the contact because of ``event`` (its trigger, or a campaign's
    synthetic ``campaign.started``) and run it until it waits or ends. Returns the
    effects and ``started``, or why not: ``reentry`` (its re-entry policy),
    ``too_many_executions`` (audited) or ``already_started`` (by this event: a replay).
    ``scheduled_at``: when the first step was meant to run (default ``now``; a send's
    ``max_lateness`` counts from it). Call :func:`finish` once done with the contact."""
    fx = Effects()
    if not _may_start(contact, wf, now):
        return fx, "reentry"
    active = sum(1 for e in contact["executions"].values() if e["status"] in ACTIVE)
    if active >= MAX_ACTIVE:
        fx.audit.append(audit_record(contact, now, "too_many_executions",
                                     event_id=event["id"], workflow_id=wf["id"],
                                     active=active))
        return fx, "too_many_executions"
    eid = f"{wf['id']}/{event['id']}"
    if eid in contact["executions"]:
        return fx, "already_started"
    new: Execution = {
        "id": eid, "workflow_id": wf["id"], "version": wf["version"],
        "status": "running", "step": wf["start"], "seq": 0, "depth": depth,
        "started_at": iso(now), "scheduled_at": iso(scheduled_at or now),
        "ended_at": None, "ended_reason": None, "due_at": None, "remaining_s": None,
        "waiting_for": None, "trigger": _trigger(event, wf), "history": [],
    }
    if (experiment := wf.get("experiment")) is not None:
        account, cid = contact["account"], contact["contact_id"]
        if experiments.in_holdout(account, cid, compliance.policy.get("holdout", 0)):
            new["variant"] = experiments.HOLDOUT
        elif experiments.in_control(account, cid, wf["id"], experiment.get("control", 0)):
            new["variant"] = experiments.CONTROL
    contact["executions"][eid] = new
    runs = contact["runs"].setdefault(wf["id"], {"count": 0, "last_started_at": ""})
    runs.update({"last_started_at": iso(now), "count": runs["count"] + 1})
    if (closed := experiments.open_window(contact, new, wf, now)) is not None:
        fx.outcomes.append(closed)
    fx += _run(new, wf, contact, now, compliance)
    return fx, "started"


#: A deferred send of a paused campaign is looked at again this much later.
HOLD = timedelta(minutes=15)


def on_wakeup(
    contact: ContactState, lookup: Lookup, now: datetime, compliance: Compliance = DEFAULTS,
    campaign_status: Callable[[str], str] = lambda campaign_id: "running",
    active: Callable[[], list[dict[str, Any]]] = list,
) -> Effects | None:
    """Fire every wait that is due at ``now`` (none early); None if nothing was due (a
    repeated or early wake-up). A content campaign's deferred send waits while its
    campaign is paused (``campaign_status``: campaign id → running, paused, cancelled)
    and ends if it was cancelled."""
    fx, fired = Effects(), False
    fx.outcomes += experiments.close_due(contact, now)
    fired = bool(fx.outcomes)
    if debounced := _quiet(contact, now):  # debounced triggers whose quiet came
        fired = True
        workflows = {wf["id"]: wf for wf in active()}
        for wf_id, pending in debounced:
            if (wf := workflows.get(wf_id)) is not None:  # else deactivated meanwhile
                fx += enrol(contact, wf, pending["event"], now, pending["depth"], compliance,
                            datetime.fromisoformat(pending["due"]))[0]
    for ex in list(contact["executions"].values()):
        if ex["status"] != "waiting" or not ex["due_at"]:
            continue
        due = datetime.fromisoformat(ex["due_at"])
        if due > now:
            continue
        fired = True
        wf = lookup(contact["account"], ex["workflow_id"], ex["version"])
        if wf is None:
            _end(ex, "failed", "definition_missing", now, contact, fx)
            continue
        if (campaign := wf.get("campaign")) is not None:
            status = campaign_status(campaign)
            if status == "cancelled":
                _end(ex, "cancelled", "campaign_cancelled", now, contact, fx)
                continue
            if status == "paused":
                ex["due_at"] = iso(now + HOLD)
                _history(ex, ex["step"], "held", now, until=ex["due_at"])
                continue
        step = wf["steps"][ex["step"]]
        if step["kind"].startswith("send_"):  # a deferred send: try it again
            _history(ex, ex["step"], "retrying", now, due_at=ex["due_at"])
            ex.update({"status": "running", "due_at": None})
            fx += _run(ex, wf, contact, now, compliance)
            continue
        if step["kind"] == "digest":
            fx += _release(ex, wf, contact, now, due, compliance)
            continue
        timed_out = step["kind"] == "wait_for_event"
        _history(ex, ex["step"], "timed_out" if timed_out else "waited", now,
                 due_at=ex["due_at"])
        ex.update({"status": "running", "due_at": None, "waiting_for": None,
                   "scheduled_at": iso(due)})
        _goto(ex, step.get("timeout_next") if timed_out else step.get("next"), now)
        fx += _run(ex, wf, contact, now, compliance)
    if not fired:
        return None
    finish(contact)
    return fx


def control(
    contact: ContactState, action: str, execution_id: str, now: datetime
) -> Effects | None:
    """Pause, resume or cancel one execution; None if it was not in a state to do so
    (a repeated command). The effects: a deferred send that a cancel ends is audited."""
    ex = contact["executions"].get(execution_id)
    if ex is None:
        return None
    fx = Effects()
    if action == "pause" and ex["status"] == "waiting" and ex["due_at"]:
        remaining = datetime.fromisoformat(ex["due_at"]) - now
        ex.update({"status": "paused", "due_at": None,
                   "remaining_s": max(remaining.total_seconds(), 0.0)})
        _history(ex, ex["step"], "paused", now)
    elif action == "resume" and ex["status"] == "paused":
        due = now + timedelta(seconds=ex["remaining_s"] or 0.0)
        ex.update({"status": "waiting", "due_at": iso(due), "remaining_s": None})
        _history(ex, ex["step"], "resumed", now, until=iso(due))
    elif action == "cancel" and ex["status"] in ACTIVE:
        _end(ex, "cancelled", "cancelled", now, contact, fx)
    else:
        return None
    finish(contact)
    return fx


def cancel_all(contact: ContactState, workflow_id: str, now: datetime) -> Effects | None:
    """Cancel every active execution of ``workflow_id`` and its debounced start; None if
    there was none."""
    fx, count = Effects(), 0
    for ex in contact["executions"].values():
        if ex["workflow_id"] == workflow_id and ex["status"] in ACTIVE:
            _end(ex, "cancelled", "cancelled_all", now, contact, fx)
            count += 1
    if (pending := contact.get("debounced")) and pending.pop(workflow_id, None) is not None:
        count += 1
        if not pending:
            del contact["debounced"]
    if not count:
        return None
    finish(contact)
    return fx
