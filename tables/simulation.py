"""The journey lab's engine: the recorded input replayed through the same pure handlers,
with candidate definitions in place of (or beside) the live ones. No I/O, no clock.

What is replayed (``docs/simulation.md``): every input record the worker decided on —
contact events (on the contact's own partition: a record the worker forwarded is read
from ``routed``), wake-ups and execution controls — in the order and at the ``now`` the
worker decided it: the batch's ``now`` from its journal entry (``tables/journal.py``)
where one covers the record, else the record's broker timestamp. The answers the
handlers got (definitions as of then, the suppression list) come from the same entry;
without one, from the definitions as they are now.

What is simulated rather than read:

* **Events dripstream emitted** (state steps, keywords, inactivity: ids ``ds-…``): the
  recorded ones are the live definitions' doing, so they are dropped from the input and
  the simulation's own are fed back — at the ``now`` the recorded copy was decided at when
  the live run emitted the same id, else at once.
* **Wake-ups**: the recorded ones are fed as they came (a wake-up with nothing due does
  nothing); a contact whose simulated timer falls due with no recorded wake-up serving
  that due time gets one at it. A recorded wake-up names the due time it serves (older
  ones do not: one within :data:`WAKEUP_LATENESS` after the due time is taken for it).

Candidates apply from ``since``; before it the live definitions rebuild each contact's
state. Effects are collected in ``[since, until)``.
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from streams.commands import Control
from streams.definitions import AccountPolicy, Keyword, Workflow, parse_any
from streams.events import Rejected, parse_event
from tables.contacts import ContactState, contact_key, copy_state, split_key
from tables.effects import Outcome
from tables.handlers import (
    Context,
    Definitions,
    Wakeup,
    handle_control,
    handle_event,
    handle_wakeup,
)
from tables.inactivity import earliest, thresholds
from tables.journal import Entry, Replayer, Versions
from tables.preferences import Links
from tables.store import partition_for

__all__ = ["WAKEUP_LATENESS", "Candidates", "Recorded", "Result", "Simulator", "lines", "slim",
           "summary"]

log = logging.getLogger(__name__)

#: A recorded wake-up this long after a simulated due time is taken for the one that
#: served it (the live timer's latency); none within it, and the due time is used.
WAKEUP_LATENESS = timedelta(seconds=120)

#: Ids of events dripstream itself emits (tables/effects.py: contact_event).
EMITTED = "ds-"


class CandidateError(ValueError):
    """A candidate definition the simulator cannot take (invalid, or of a kind it does not
    simulate)."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """One input record as the log holds it, and when the worker decided it."""

    kind: str  # "event" | "wakeup" | "control"
    topic: str
    partition: int
    offset: int
    at: datetime
    key: bytes | None
    value: bytes
    #: The journal entry covering it (the answers its handlers got), if any.
    entry: Entry | None = None


class Candidates:
    """Workflows, keywords and account policies to use instead of the live versions of
    the same id (or besides them, for new ids). ``starts``: a workflow candidate that
    applies only from a time on (a shadow version, from its publication), not from the
    simulation's ``since``."""

    def __init__(self, definitions: Iterable[dict[str, Any]] = (),
                 starts: Mapping[tuple[str, str], datetime] | None = None) -> None:
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.keywords: dict[tuple[str, str], dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.starts = dict(starts or {})
        for definition in definitions:
            self.add(definition)

    def add(self, raw: dict[str, Any]) -> None:
        if not isinstance(raw, dict):
            raise CandidateError(f"a candidate is a JSON object (a definition), not "
                                 f"{type(raw).__name__}")
        try:
            parsed = parse_any(raw)
        except (ValidationError, ValueError) as exc:
            raise CandidateError(f"candidate {raw.get('kind', 'workflow')} "
                                 f"{raw.get('id', '?')!s}: {exc}") from exc
        body = parsed.model_dump(mode="json")
        ident = (parsed.account, getattr(parsed, "id", "policy"))
        if ((isinstance(parsed, Workflow) and ident in self.workflows)
                or (isinstance(parsed, Keyword) and ident in self.keywords)
                or (isinstance(parsed, AccountPolicy) and parsed.account in self.policies)):
            raise CandidateError(f"{parsed.kind} {ident[0]}/{ident[1]}: given twice (one "
                                 "candidate per workflow, keyword or policy)")
        if isinstance(parsed, Workflow):
            # A shadow version taken as a candidate runs as it would once promoted.
            body.pop("shadow", None)
            self.workflows[(parsed.account, parsed.id)] = body
        elif isinstance(parsed, Keyword):
            self.keywords[(parsed.account, parsed.id)] = body
        elif isinstance(parsed, AccountPolicy):
            self.policies[parsed.account] = body
        else:
            raise CandidateError(f"{parsed.kind} {getattr(parsed, 'id', '')}: only workflows, "
                                 "keywords and account policies are simulated yet "
                                 "(campaigns are not: docs/simulation.md)")

    def __bool__(self) -> bool:
        return bool(self.workflows or self.keywords or self.policies)

    def accounts(self) -> set[str]:
        return ({a for a, _ in self.workflows} | {a for a, _ in self.keywords}
                | set(self.policies))


class Overlay:
    """``base`` (a journal replay or the registry) with the candidates in place (at
    ``at``: those with a start after it are not yet)."""

    def __init__(self, base: Definitions, cand: Candidates, at: datetime | None = None
                 ) -> None:
        self.base = base
        self.cand = cand
        self.at = at

    def _started(self, ident: tuple[str, str]) -> bool:
        start = self.cand.starts.get(ident)
        return start is None or self.at is None or start <= self.at

    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        wf = self.cand.workflows.get((account, workflow_id))
        if wf is not None and wf["version"] == version:
            return wf
        return self.base.lookup(account, workflow_id, version)

    def active(self, account: str) -> list[dict[str, Any]]:
        mine = {i: wf for (a, i), wf in self.cand.workflows.items()
                if a == account and self._started((a, i))}
        if not mine:
            return self.base.active(account)
        kept = [wf for wf in self.base.active(account) if wf["id"] not in mine]
        return kept + [wf for wf in mine.values() if wf["active"]]

    def keywords(self, account: str) -> list[dict[str, Any]]:
        mine = {i: kw for (a, i), kw in self.cand.keywords.items() if a == account}
        if not mine:
            return self.base.keywords(account)
        kept = [kw for kw in self.base.keywords(account) if kw["id"] not in mine]
        return kept + [kw for kw in mine.values() if kw["active"]]

    def policy(self, account: str) -> dict[str, Any]:
        return self.cand.policies.get(account) or self.base.policy(account)

    def campaigns(self, account: str) -> list[dict[str, Any]]:
        return self.base.campaigns(account)

    def campaign_status(self, account: str, campaign_id: str) -> str:
        return self.base.campaign_status(account, campaign_id)

    def inactivity_thresholds(self, account: str) -> tuple[int, ...]:
        if any(a == account and self._started((a, i)) for a, i in self.cand.workflows):
            return thresholds(self.active(account))
        return self.base.inactivity_thresholds(account)


@dataclass
class Result:
    """What the simulation would have done in the window, in the order it did it."""

    #: Send commands (as their wire JSON, with ``message_id`` and ``created_at``).
    sends: list[dict[str, Any]] = field(default_factory=list)
    #: Audit records: every send that did not go out, with its reason.
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: Input records handled (in the window / before it, rebuilding state).
    handled: int = 0
    warmup: int = 0
    #: Wake-ups the simulation added (no recorded one served the due time).
    added_wakeups: int = 0
    #: Invalid records (dead-lettered live as well), skipped.
    invalid: int = 0
    contacts: int = 0
    #: ``--migrate``: per contact inside another version of a candidate workflow at the
    #: end of the window, where the candidate would place it and what it would send next.
    migrations: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: Result) -> None:
        """Add another partition's (contacts never span partitions)."""
        self.sends += other.sends
        self.audit += other.audit
        self.handled += other.handled
        self.warmup += other.warmup
        self.added_wakeups += other.added_wakeups
        self.invalid += other.invalid
        self.contacts += other.contacts
        self.migrations += other.migrations


#: What a report keeps of a send command.
SEND_FIELDS = ("message_id", "account", "contact_id", "channel", "created_at", "origin",
               "body", "purpose")


def slim(send: Mapping[str, Any]) -> dict[str, Any]:
    return {k: send[k] for k in SEND_FIELDS if k in send}


@dataclass(order=True)
class _Item:
    at: datetime
    seq: int
    kind: str = field(compare=False)
    key: str = field(compare=False)
    payload: Any = field(compare=False)
    entry: Entry | None = field(compare=False, default=None)


class Simulator:
    """Replays ``records`` (any order: they are sorted by when they were decided) through
    the handlers with ``candidates`` from ``since``; :meth:`run` gives the result.

    ``live``: every definition version (the registry read from the definitions topic);
    ``suppressed``: the suppression list as it is now (used where no journal entry
    answers)."""

    def __init__(self, live: Versions, suppressed: Callable[[str, str], str | None], *,
                 since: datetime, until: datetime, partitions: int,
                 cand: Candidates | None = None, max_depth: int = 5,
                 dedupe_window_s: float = 24 * 3600, accounts: set[str] | None = None,
                 migrate: bool = False, lateness: timedelta = WAKEUP_LATENESS,
                 links: Links | None = None) -> None:
        self.live = live
        self._suppressed = suppressed
        self.since, self.until = since, until
        self.partitions = partitions
        self.cand = cand or Candidates()
        self.max_depth, self.dedupe_window_s = max_depth, dedupe_window_s
        self.accounts = accounts
        self.migrate = migrate
        self.lateness = lateness
        self.links = links
        self.states: dict[str, ContactState] = {}
        #: Suppression changes the simulation made: they hold for the rest of it.
        self.own: dict[tuple[str, str], str | None] = {}
        self.result = Result()
        self._recorded: list[_Item] = []
        #: The next recorded item to handle, and the time handled up to (:meth:`advance`).
        self._next = 0
        self.reached: datetime | None = None
        #: Recorded items that came after their time was handled (a stream's late ones).
        self.late = 0
        self._queue: list[_Item] = []
        self._seq = 0
        #: Contact key → the due times its recorded wake-ups named; and when each was
        #: decided, ascending.
        self._recorded_dues: dict[str, set[datetime]] = defaultdict(set)
        self._recorded_wakeups: dict[str, list[datetime]] = defaultdict(list)
        #: Id of an event dripstream emitted → when the live worker decided it.
        self._emitted_at: dict[str, tuple[datetime, Entry | None]] = {}
        #: Ids of the events the simulation emitted, and when.
        self._emitted_seen: dict[str, datetime] = {}
        #: Contact key → the due time a simulated wake-up is queued for.
        self._armed: dict[str, datetime] = {}

    # -- input -----------------------------------------------------------------------
    def _push(self, at: datetime, kind: str, key: str, payload: Any,
              entry: Entry | None = None) -> None:
        """An item the simulation makes (an emitted event, a wake-up it adds)."""
        self._seq += 1
        heapq.heappush(self._queue, _Item(at, self._seq, kind, key, payload, entry))

    def _record(self, at: datetime, kind: str, key: str, payload: Any,
                entry: Entry | None) -> None:
        """A recorded item (loaded in time order: a list, not the heap)."""
        self._seq += 1
        self._recorded.append(_Item(at, self._seq, kind, key, payload, entry))

    def load(self, records: Iterable[Recorded]) -> None:
        """Queue the recorded input (events the worker emitted are set aside: the
        simulation emits its own). Called again with more (a stream, :meth:`advance`):
        the new records are merged in time order with those not handled yet; one whose
        time was handled already comes next (counted in :attr:`late`)."""
        ordered = sorted(records, key=lambda r: (r.at, r.partition, r.offset))
        del self._recorded[:self._next]  # handled: not needed any more
        self._next = 0
        kept = len(self._recorded)
        self._load(ordered)
        new = self._recorded[kept:]
        if self.reached is not None:
            self.late += sum(1 for item in new if item.at < self.reached)
        if kept and new and new[0] < self._recorded[kept - 1]:
            self._recorded.sort()

    def _load(self, ordered: list[Recorded]) -> None:
        for r in ordered:
            if r.kind == "event":
                try:
                    event = parse_event(r.value, r.key)
                except Rejected:
                    self.result.invalid += 1
                    continue
                if partition_for(r.key or b"", self.partitions) != r.partition:
                    continue  # forwarded: its copy on routed is the one decided
                if not self._wanted(event.account):
                    continue
                if event.id.startswith(EMITTED):
                    self._emitted_at.setdefault(event.id, (r.at, r.entry))
                    continue
                self._record(r.at, "event", contact_key(event.account, event.contact_id),
                             event, r.entry)
            elif r.kind == "wakeup":
                try:
                    raw = orjson.loads(r.value)
                    wakeup = Wakeup(str(raw["account"]), str(raw["contact_id"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.result.invalid += 1
                    continue
                if not self._wanted(wakeup.account):
                    continue
                key = contact_key(wakeup.account, wakeup.contact_id)
                if isinstance(raw.get("due"), str):
                    self._recorded_dues[key].add(datetime.fromisoformat(raw["due"]))
                bisect.insort(self._recorded_wakeups[key], r.at)
                self._record(r.at, "wakeup", key, wakeup, r.entry)
            else:
                try:
                    command = Control.model_validate_json(r.value)
                except ValidationError:
                    self.result.invalid += 1
                    continue
                if not self._wanted(command.account):
                    continue
                self._record(r.at, "control", f"~{r.partition}", command, r.entry)

    def _wanted(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    # -- the run ---------------------------------------------------------------------
    def run(self) -> Result:
        """The recorded items in order, merged with those the simulation makes, up to
        ``until``."""
        self.advance(self.until)
        self.result.contacts = len(self.states)
        if self.migrate:
            self.result.migrations = list(self._migrations())
        return self.result

    def advance(self, to: datetime) -> None:
        """Handle every item before ``to`` (at most ``until``): all of them, for a
        window; up to a watermark, for a stream that :meth:`load` feeds as it goes."""
        to = min(to, self.until)
        recorded, queue = self._recorded, self._queue
        while True:
            n = self._next
            if queue and (n == len(recorded) or queue[0] < recorded[n]):
                if queue[0].at >= to:
                    break
                item = heapq.heappop(queue)
            elif n < len(recorded):
                if recorded[n].at >= to:
                    break
                item, self._next = recorded[n], n + 1
            else:
                break
            if item.kind == "armed":
                if self._armed.get(item.key) != item.at:
                    continue  # re-armed since
                del self._armed[item.key]
                if self._served(item.key, item.at):
                    continue  # a recorded wake-up came for it: that one is handled
                self.result.added_wakeups += item.at >= self.since
                account, contact_id = split_key(item.key)
                item.payload = Wakeup(account, contact_id)
                item.kind = "wakeup"
            self._handle(item)
        self.reached = to if self.reached is None else max(self.reached, to)

    def forget(self, before: datetime) -> None:
        """A stream's bookkeeping older than ``before`` (less the lateness, and a day for
        emitted events' ids): what :meth:`advance` will not look at again."""
        horizon = before - self.lateness
        for key in list(self._recorded_wakeups):
            times = self._recorded_wakeups[key]
            del times[:bisect.bisect_left(times, horizon)]
            if not times:
                del self._recorded_wakeups[key]
        for key in list(self._recorded_dues):
            dues = {d for d in self._recorded_dues[key] if d >= horizon}
            if dues:
                self._recorded_dues[key] = dues
            else:
                del self._recorded_dues[key]
        day = before - timedelta(seconds=self.dedupe_window_s)
        self._emitted_at = {i: v for i, v in self._emitted_at.items() if v[0] >= day}
        self._emitted_seen = {i: at for i, at in self._emitted_seen.items() if at >= day}

    def _served(self, key: str, due: datetime) -> bool:
        """A recorded wake-up for ``key`` serves ``due``: it names it, however late it
        came; or it came within :attr:`lateness` after it (one written before wake-ups
        named their due time, or one that named the due time the stored state had while
        a batch in flight was changing it)."""
        if due in self._recorded_dues.get(key, ()):
            return True
        recorded = self._recorded_wakeups.get(key, [])
        i = bisect.bisect_left(recorded, due)
        return i < len(recorded) and recorded[i] - due <= self.lateness

    def _context(self, item: _Item) -> Context:
        base: Definitions
        if item.entry is not None:
            base = Replayer(item.entry, self.live, self._suppressed)
        else:
            base = self.live
        definitions = (Overlay(base, self.cand, item.at) if self.cand and item.at >= self.since
                       else base)

        def suppressed(account: str, address: str) -> str | None:
            if (account, address) in self.own:
                return self.own[(account, address)]
            if isinstance(base, Replayer):
                return base.suppressed(account, address)
            return self._suppressed(account, address)

        return Context(definitions, suppressed, self.max_depth, self.dedupe_window_s,
                       self.links)

    def _keys(self, item: _Item) -> Iterator[str]:
        if item.kind != "control" or item.payload.action != "cancel_all":
            if item.kind == "control":
                yield contact_key(item.payload.account, item.payload.contact_id)
            else:
                yield item.key
            return
        partition = int(item.key[1:])  # sent to every partition: each owner's contacts
        prefix = f"{item.payload.account}:"
        for key in sorted(self.states):
            if key.startswith(prefix) and partition_for(
                    split_key(key)[1], self.partitions) == partition:
                yield key

    def _handle(self, item: _Item) -> None:
        ctx, now = self._context(item), item.at
        for key in list(self._keys(item)):
            before = self.states.get(key)
            try:
                if item.kind == "event":
                    outcome = handle_event(before, item.payload, ctx, now)
                elif item.kind == "wakeup":
                    outcome = handle_wakeup(before, item.payload, ctx, now)
                else:
                    outcome = handle_control(before, item.payload, ctx, now)
            except Rejected:
                self.result.invalid += 1
                continue
            except Exception:  # the worker dead-letters it (processing_error): so here
                log.exception("simulating %s for %s failed", item.kind, key)
                self.result.invalid += 1
                continue
            self._count(item)
            if outcome.state is not None:
                self.states[key] = outcome.state
            self._effects(outcome, item, ctx)
            self._arm(key, item.at)

    def _count(self, item: _Item) -> None:
        if item.at >= self.since:
            self.result.handled += 1
        else:
            self.result.warmup += 1

    def _effects(self, outcome: Outcome, item: _Item, ctx: Context) -> None:
        fx, now = outcome.effects, item.at
        collect = now >= self.since
        for change in fx.suppressions:
            key = (change["account"], change["address"])
            if change.get("remove"):
                if ctx.suppressed(*key) == change["reason"]:
                    self.own[key] = None
            else:
                self.own[key] = str(change["reason"])
        if collect:
            self.result.sends += [slim(orjson.loads(c.model_dump_json(exclude_none=True)))
                                  for c in fx.sends]
            self.result.audit += fx.audit
        for event in fx.events:  # back to the contact, when the live run decided it
            if event["id"] in self._emitted_seen:
                continue
            self._emitted_seen[event["id"]] = now
            at, entry = self._emitted_at.get(event["id"], (now, None))
            try:
                parsed = parse_event(orjson.dumps(event), event["subject"].encode())
            except Rejected:
                continue
            self._push(max(at, now), "event", contact_key(parsed.account, parsed.contact_id),
                       parsed, entry if at >= now else None)

    def _arm(self, key: str, now: datetime) -> None:
        """A wake-up at the contact's due time, unless a recorded one serves it. The
        inactivity thresholds are the current ones, as the worker's timer reads them."""
        state = self.states.get(key)
        if state is None:
            return
        record = state.get("inactivity")
        timers: Definitions = (Overlay(self.live, self.cand, now)
                               if self.cand and now >= self.since else self.live)
        due = earliest(state["next_due"],
                       None if record is None else (record["since"], record["fired"]),
                       timers.inactivity_thresholds(split_key(key)[0]))
        if due is None or due >= self.until:
            return
        if self._armed.get(key) == due:
            return
        self._armed[key] = due
        self._push(due, "armed", key, None)


    # -- the in-flight preview -------------------------------------------------------
    def _migrations(self) -> Iterator[dict[str, Any]]:
        """Contacts inside another version of a candidate workflow when the window ends:
        where the candidate would place each (the step of the same id and kind, a wait
        keeping its due time; else it would end) and what it would send when it goes on.
        Nothing is migrated: a new version leaves running executions where they are."""
        for key, state in sorted(self.states.items()):
            for ex in state["executions"].values():
                wf = self.cand.workflows.get((state["account"], ex["workflow_id"]))
                if (wf is None or ex["version"] == wf["version"]
                        or ex["status"] not in ("running", "waiting", "paused")):
                    continue
                yield self._place(key, state, ex["id"], wf)

    def _place(self, key: str, state: ContactState, execution_id: str,
               wf: dict[str, Any]) -> dict[str, Any]:
        ex = state["executions"][execution_id]
        old = self.live.lookup(state["account"], ex["workflow_id"], ex["version"])
        kind = None if old is None else old["steps"].get(ex["step"], {}).get("kind")
        line: dict[str, Any] = {
            "kind": "migrate", "account": state["account"], "contact_id": state["contact_id"],
            "execution_id": execution_id, "workflow_id": ex["workflow_id"],
            "from": {"version": ex["version"], "step": ex["step"], "status": ex["status"],
                     "due_at": ex["due_at"]},
            "to": {"version": wf["version"]}}
        step = wf["steps"].get(ex["step"])
        if step is None or step["kind"] != kind:
            line["to"].update(outcome="ends", reason=(
                f"v{wf['version']} has no step {ex['step']!r}" if step is None else
                f"step {ex['step']!r} is a {step['kind']} in v{wf['version']}, not a {kind}"))
            return line
        line["to"].update(outcome="continues", step=ex["step"])
        if ex["status"] != "waiting" or not ex["due_at"]:
            return line
        moved = copy_state(state)
        mex = moved["executions"][execution_id]
        mex["version"] = wf["version"]
        moved["executions"] = {execution_id: mex}
        at = max(datetime.fromisoformat(ex["due_at"]), self.until)
        ctx = self._context(_Item(at, 0, "wakeup", key, None))
        outcome = handle_wakeup(moved, Wakeup(state["account"], state["contact_id"]), ctx, at)
        line["next"] = {
            "at": at.isoformat(),
            "sends": [slim(orjson.loads(c.model_dump_json(exclude_none=True)))
                      for c in outcome.effects.sends],
            "not_sent": [{"reason": a["reason"], "message_id": a.get("message_id")}
                         for a in outcome.effects.audit]}
        return line


# -- the report -----------------------------------------------------------------------
def _origin(record: Mapping[str, Any]) -> tuple[str, str]:
    """``(workflow, step)``; a send of no workflow (a keyword's reply) is ``(kind,
    purpose)``, e.g. ``("keyword", "opt_out_confirmation")``."""
    origin = record.get("origin") or {}
    if origin.get("workflow_id"):
        return str(origin["workflow_id"]), str(origin.get("step_id", ""))
    return str(origin.get("kind", "")), str(record.get("purpose") or "")


def summary(result: Result, actual_sends: list[dict[str, Any]],
            actual_audit: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates and the diff against what happened (``actual_*``: the send commands
    and audit records of the window, as read from their topics)."""
    sim_ids = {s["message_id"]: s for s in result.sends}
    act_ids = {s["message_id"]: s for s in actual_sends}
    moved = sum(1 for i in sim_ids.keys() & act_ids.keys()
                if sim_ids[i]["created_at"] != act_ids[i]["created_at"])
    # The same logical send (execution, step) with another text: a candidate's new body.
    rewritten = sum(1 for i in sim_ids.keys() & act_ids.keys()
                    if sim_ids[i].get("body") != act_ids[i].get("body"))
    # Sends that went out but that the simulation held back for a cap: budget the
    # candidates took from other journeys.
    capped = {a["message_id"]: a for a in result.audit
              if a.get("message_id") and a["reason"] == "frequency_capped"}
    displaced = Counter("/".join(_origin(act_ids[i])) for i in act_ids.keys() & capped.keys())
    per_step = Counter("/".join(_origin(s)) for s in result.sends)
    per_channel = Counter(s["channel"] for s in result.sends)
    per_hour = Counter(s["created_at"][:13] + ":00" for s in result.sends)
    reasons = Counter(str(a["reason"]) for a in result.audit)
    actual_reasons = Counter(str(a["reason"]) for a in actual_audit)
    return {
        "handled": result.handled, "rebuilt_from": result.warmup,
        "contacts": result.contacts, "added_wakeups": result.added_wakeups,
        "invalid": result.invalid,
        "sends": len(result.sends), "actual_sends": len(actual_sends),
        "only_simulated": len(sim_ids.keys() - act_ids.keys()),
        "only_actual": len(act_ids.keys() - sim_ids.keys()),
        "both": len(sim_ids.keys() & act_ids.keys()), "both_at_other_times": moved,
        "both_with_other_body": rewritten,
        "not_sent": dict(sorted(reasons.items())),
        "actual_not_sent": dict(sorted(actual_reasons.items())),
        "displaced": dict(sorted(displaced.items())),
        "per_step": dict(sorted(per_step.items())),
        "per_channel": dict(sorted(per_channel.items())),
        "per_hour": dict(sorted(per_hour.items())),
        "migrate": dict(sorted(Counter(m["to"]["outcome"] for m in result.migrations
                                       ).items())),
    }


def lines(result: Result, actual_sends: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One JSON-able line per simulated send and non-send, and per actual send the
    simulation did not make (``"diff"``: ``both`` / ``simulated`` / ``actual``)."""
    act = {s["message_id"]: s for s in actual_sends}
    sim = set()
    for s in result.sends:
        sim.add(s["message_id"])
        live = act.get(s["message_id"])
        yield {"kind": "send", "diff": "both" if live else "simulated",
               "actual_at": live["created_at"] if live else None,
               "actual_body": live.get("body") if live else None,
               **slim(s)}
    for a in result.audit:
        yield {"kind": "not_sent", **a}
    yield from result.migrations
    for i, s in act.items():
        if i not in sim:
            yield {"kind": "send", "diff": "actual", "actual_at": s["created_at"],
                   "actual_body": s.get("body"), **slim(s)}
