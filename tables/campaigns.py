"""Campaigns, per contact: who is in the audience, and one contact's delivery.

Pure: :func:`handle_delivery` takes the contact's state, a :class:`Delivery` (a campaign
and one of its occurrences), the handler :class:`~tables.handlers.Context` and ``now``,
and returns the :class:`~tables.effects.Outcome` with a :class:`Verdict` (what happened,
for the occurrence's progress counters). The scheduler that decides when an occurrence
fires and walks each partition's contacts is :mod:`agents.campaigns`.

A campaign reaches each contact through a workflow execution, so deferral (quiet hours,
caps), history, wake-ups and control work as for any workflow: a *content* campaign
runs a one-step workflow made from its content (:func:`content_workflow`, id
``campaign:<id>``), a campaign with ``workflow`` enrols the contact in that workflow.
The synthetic event that starts it is the contact's ``campaign.started``
(``run_id`` = the occurrence), with an id that is a hash of (account, campaign,
occurrence, contact) — so the execution id, and with it every ``message_id``, is the
same however often the delivery is redone.

Once per occurrence: the contact's state keeps, per campaign, the newest occurrence it
was delivered (``campaigns``); a delivery of an occurrence not newer than that changes
nothing. The mark is written with the delivery's effects' state (one table write).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from tables import executions
from tables.contacts import ContactState, copy_state
from tables.effects import Effects, Outcome, iso
from tables.schedule import (
    Occurrence,
    contact_instant,
    earliest_instant,
    latest_instant,
    occurrence_id,
    occurrences,
    parse_local,
    resolve,
)
from tables.triggers import criteria_hold

if TYPE_CHECKING:
    from tables.handlers import Context, Definitions

__all__ = [
    "CAMPAIGN_WORKFLOW",
    "COUNTERS",
    "NOT_SENT_WHY",
    "Delivery",
    "Due",
    "Throttle",
    "Verdict",
    "campaign_event",
    "campaign_state",
    "campaign_workflow",
    "campaign_zone",
    "content_workflow",
    "due",
    "enrol_joiners",
    "handle_delivery",
    "in_audience",
    "next_after",
    "not_sent",
    "progress_summary",
    "sends_content",
    "starts_at",
    "summarize",
]

#: The id prefix of the workflow a content campaign runs as (``:`` is not allowed in a
#: defined workflow's id, so no definition can take it).
CAMPAIGN_WORKFLOW = "campaign:"
#: The gate's reasons, as the progress counters group them.
_SUPPRESSED = frozenset({"suppressed", "opted_out", "no_consent", "category_unsubscribed"})
#: Sent nothing on purpose: an experiment's control group, the account's holdout.
_HELD_BACK = frozenset({"control_group", "holdout"})


def content_workflow(campaign: Mapping[str, Any], policy: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow a content campaign runs for each contact (never triggered by events:
    inactive; started only by the campaign's deliveries): one send step, or with
    ``variants`` a split (step ``variants``) to one send step per variant (``send:<name>``)
    — so a campaign's A/B test, control group and conversions are a workflow's
    (docs/experiments.md)."""

    def send(content: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "kind": f"send_{content['channel']}", "body": content["body"],
            "subject": content.get("subject"),
            "media_urls": list(content.get("media_urls", [])), "transactional": False,
            "max_lateness": content.get("max_lateness"),
            "expires_after": content.get("expires_after", "1d"), "next": None,
            "category": content.get("category")}

    variants = campaign.get("variants")
    if variants:
        steps: dict[str, Any] = {"variants": {"kind": "split", "next": None, "branches": [
            {"name": v["name"], "weight": v["weight"], "next": f"send:{v['name']}"}
            for v in variants]}}
        steps.update({f"send:{v['name']}": send(v["content"]) for v in variants})
        start = "variants"
    else:
        steps, start = {"send": send(campaign["content"])}, "send"
    made = {
        "kind": "workflow", "id": CAMPAIGN_WORKFLOW + campaign["id"],
        "account": campaign["account"], "name": campaign["name"],
        "version": campaign["version"], "active": False,
        "timezone": campaign_zone(campaign, policy).key,
        "trigger": {"event": "campaign.started", "keyword": None, "criteria": []},
        "goals": [], "reentry": {"policy": "every_time", "days": None},
        "on_capped": campaign["delivery"]["on_capped"], "start": start,
        "steps": steps, "campaign": campaign["id"],
    }
    if campaign.get("experiment"):
        made["experiment"] = campaign["experiment"]
    return made


def sends_content(campaign: Mapping[str, Any]) -> bool:
    """Does the campaign send content of its own (``content`` or ``variants``), rather
    than enrol into a workflow?"""
    return campaign.get("workflow") is None


def campaign_zone(campaign: Mapping[str, Any], policy: Mapping[str, Any]) -> ZoneInfo:
    """The zone of a campaign's schedule: its own, else its account's."""
    return ZoneInfo(campaign["schedule"].get("timezone") or policy["timezone"])


def campaign_workflow(definitions: Definitions, campaign: Mapping[str, Any]
                      ) -> dict[str, Any] | None:
    """The workflow each contact runs: a content campaign's own (``campaign:<id>``), or
    the newest active version of the linked one (None: not defined, or not active)."""
    account = campaign["account"]
    if sends_content(campaign):
        return definitions.lookup(account, CAMPAIGN_WORKFLOW + campaign["id"],
                                  campaign["version"])
    linked = [wf for wf in definitions.active(account) if wf["id"] == campaign["workflow"]]
    return linked[0] if linked else None


def in_audience(audience: Mapping[str, Any], contact: Mapping[str, Any]) -> bool:
    """Is the contact in the audience, as its state is now?"""
    groups = contact.get("groups", ())
    if audience["groups"] and not any(g in groups for g in audience["groups"]):
        return False
    if any(g in groups for g in audience["exclude_groups"]):
        return False
    if audience["tags"]:
        tags = contact.get("tags", ())
        match = all if audience["tags_match"] == "all" else any
        if not match(t in tags for t in audience["tags"]):
            return False
    return criteria_hold(audience["criteria"], _NO_EVENT, contact)


_NO_EVENT: dict[str, Any] = {"type": "", "data": {}}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One occurrence of a campaign, for the contacts of one partition."""

    campaign: dict[str, Any]
    #: The occurrence: its id (the wall-clock time, ``YYYY-MM-DDTHH:MM``), that time, and
    #: the instant it resolves to in the schedule's zone.
    occurrence: str
    local: datetime
    at: datetime
    #: The workflow each contact runs (the content workflow, or the linked one).
    workflow: dict[str, Any]
    #: The zone of contacts without one (the schedule's, else the account's).
    zone: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a delivery did for one contact: ``outcome`` is ``sent``, ``deferred``,
    ``capped``, ``suppressed``, ``held_back`` (control group, holdout), ``dropped``
    (another gate reason), ``enrolled``,
    ``not_enrolled`` (the workflow's re-entry), ``later`` (their local time has not come:
    ``at``), ``done`` (this occurrence reached them before) or ``not_in_audience``."""

    outcome: str
    at: datetime | None = None


def campaign_event(
    contact: Mapping[str, Any], campaign_id: str, occurrence: str, event_type: str,
    now: datetime,
) -> dict[str, Any]:
    """The contact's ``campaign.started`` / ``campaign.completed`` for an occurrence,
    as the engine reads events (its id: a hash of what it is about)."""
    seed = "\x1f".join((contact["account"], campaign_id, occurrence, contact["contact_id"],
                        event_type))
    return {"id": "cmp-" + hashlib.sha256(seed.encode()).hexdigest()[:28],
            "type": event_type, "time": iso(now), "account": contact["account"],
            "causationdepth": 0, "data": {"campaign_id": campaign_id, "run_id": occurrence}}


def _tally(fx: Effects, started: str, content: bool) -> str:
    if started != "started":
        return "not_enrolled"
    if not content:
        return "enrolled"
    if fx.sends:
        return "sent"
    for record in fx.audit:
        reason = record.get("reason")
        if record.get("action") == "defer":
            return "deferred"
        if reason == "frequency_capped":
            return "capped"
        if reason in _HELD_BACK:
            return "held_back"
        if reason in _SUPPRESSED:
            return "suppressed"
    return "dropped"


def handle_delivery(
    state: ContactState | None, delivery: Delivery, ctx: Context, now: datetime
) -> tuple[Outcome, Verdict]:
    """Deliver one occurrence of a campaign to one contact: if it is in the audience, its
    local time has come (contact-local campaigns) and this occurrence has not reached it
    before, start the campaign's workflow for it (the send gate decides each send) and
    mark the occurrence delivered."""
    if state is None:
        return Outcome(), Verdict("not_in_audience")
    campaign = delivery.campaign
    cid, occurrence = campaign["id"], delivery.occurrence
    marks = state.get("campaigns") or {}
    if marks.get(cid, "") >= occurrence:
        return Outcome(), Verdict("done")
    if not in_audience(campaign["audience"], state):
        return Outcome(), Verdict("not_in_audience")
    scheduled = delivery.at
    if campaign["delivery"]["contact_local_time"]:
        zone = state.get("timezone") or delivery.zone
        scheduled = contact_instant(delivery.local, zone)
        if scheduled > now:
            return Outcome(), Verdict("later", scheduled)
    new = copy_state(state)
    fx, verdict = _reach(new, campaign, occurrence, delivery.workflow, ctx, now, scheduled)
    return Outcome(new, fx), Verdict(verdict)


def _reach(
    contact: ContactState, campaign: Mapping[str, Any], occurrence: str,
    workflow: dict[str, Any], ctx: Context, now: datetime, scheduled: datetime,
) -> tuple[Effects, str]:
    """Mark the occurrence delivered and start the campaign's workflow for the contact
    (changed in place). Its ``campaign.started`` reaches the contact's other workflows
    (triggers, waits, goals), and so does ``campaign.completed`` once a content campaign's
    send has gone out or been dropped for good; with ``publish_events`` both are also
    published for a contact the campaign reached."""
    cid = campaign["id"]
    contact["campaigns"] = {**(contact.get("campaigns") or {}), cid: occurrence}
    account = contact["account"]
    rules = ctx.compliance(account)
    started = campaign_event(contact, cid, occurrence, "campaign.started", now)
    fx, how = executions.enrol(contact, workflow, started, now, 0, rules, scheduled)
    verdict = _tally(fx, how, sends_content(campaign))
    publish = campaign["delivery"]["publish_events"] and verdict in (
        "sent", "deferred", "enrolled")
    active = ctx.definitions.active(account)
    react = _reacts(contact, active)
    if react or publish:
        happened = [started]
        if verdict not in ("deferred", "enrolled", "not_enrolled"):
            happened.append(campaign_event(contact, cid, occurrence, "campaign.completed",
                                           now))
        for event in happened if react else ():
            fx += executions.on_event(contact, event, active, ctx.definitions.lookup, now,
                                      ctx.max_depth, rules)
        if publish:
            fx.events += [_published(contact, event, now) for event in happened]
    executions.finish(contact)
    return fx, verdict


def _reacts(contact: ContactState, active: list[dict[str, Any]]) -> bool:
    """Could a campaign event change anything for the contact: an active workflow of the
    account that starts on one, or an execution of a workflow that might wait for one or
    have it as a goal (not a content campaign's own)? Most contacts of a big campaign have
    neither, and skip the work."""
    if any(wf["trigger"]["event"].startswith("campaign.") for wf in active):
        return True
    return any(ex["status"] in executions.ACTIVE and not ex["workflow_id"].startswith(
        CAMPAIGN_WORKFLOW) for ex in contact["executions"].values())


def enrol_joiners(
    contact: ContactState, ctx: Context, now: datetime
) -> Effects:
    """Drip campaigns with ``enrol_joiners``: a contact that is in the audience after one
    of its events, between the campaign's ``at`` and ``until``, and was not enrolled
    yet, is enrolled now (``contact`` is changed in place, like the executions').
    Called for every accepted event; an account without such campaigns costs a lookup."""
    fx = Effects()
    definitions = ctx.definitions
    for campaign in definitions.campaigns(contact["account"]):
        schedule = campaign["schedule"]
        if (schedule["type"] != "drip" or not schedule["enrol_joiners"]
                or not campaign["active"]):
            continue
        cid = campaign["id"]
        occurrence = occurrence_id(parse_local(schedule["at"]))
        marks = contact.get("campaigns") or {}
        if marks.get(cid, "") >= occurrence or not in_audience(campaign["audience"], contact):
            continue
        zone = campaign_zone(campaign, definitions.policy(contact["account"]))
        begins = resolve(parse_local(occurrence), zone)
        until = schedule.get("until")
        if now < begins or (until and now > resolve(parse_local(until), zone)):
            continue
        if definitions.campaign_status(contact["account"], cid) != "running":
            continue
        if (workflow := campaign_workflow(definitions, campaign)) is not None:
            fx += _reach(contact, campaign, occurrence, workflow, ctx, now, now)[0]
    return fx


def _published(contact: ContactState, event: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``event`` as a contact event on ``<prefix>contact-events``, already marked seen, so
    the copy that comes back changes nothing."""
    contact["seen"][event["id"]] = now.timestamp()
    return {"specversion": "1.0", "id": event["id"],
            "source": f"urn:dripstream:campaign:{event['data']['campaign_id']}",
            "type": event["type"], "subject": contact["contact_id"], "time": event["time"],
            "account": contact["account"], "causationdepth": 1, "data": event["data"]}


# -- when an occurrence fires -------------------------------------------------------------
#: How many missed occurrences a misfire looks through (a minutely-dense backlog of a
#: schedule down for years stops here; the newest of them is what matters).
MISFIRE_SCAN_MAX = 10_000
#: From the first zone's wall clock to the last's (UTC+14 to UTC-12).
_SPAN = timedelta(hours=26)


def starts_at(campaign: Mapping[str, Any], occurrence: Occurrence) -> datetime:
    """When an occurrence begins: its instant, or for contact-local delivery the first
    instant any zone's clock shows its wall-clock time (UTC+14)."""
    if campaign["delivery"]["contact_local_time"]:
        return earliest_instant(occurrence.local)
    return occurrence.at


def _deadline(campaign: Mapping[str, Any], occurrence: Occurrence, grace: float) -> datetime:
    """Past this, a not-yet-started occurrence is a misfire."""
    end = (latest_instant(occurrence.local) if campaign["delivery"]["contact_local_time"]
           else occurrence.at)
    return end + timedelta(seconds=grace)


def next_after(
    campaign: Mapping[str, Any], zone: ZoneInfo, origin: datetime, last: str | None
) -> Occurrence | None:
    """The first occurrence after ``origin`` (the version's publication) whose id is
    after ``last`` (the newest one already started or skipped); None: no more."""
    local = campaign["delivery"]["contact_local_time"]
    # A contact-local occurrence counts while any zone's wall clock has still to reach it.
    since = origin - _SPAN if local else origin
    for occurrence in occurrences(campaign["schedule"], zone, since):
        if local and latest_instant(occurrence.local) <= origin:
            continue
        if last is None or occurrence.id > last:
            return occurrence
    return None


@dataclass(frozen=True, slots=True)
class Due:
    """What to do now: fire ``occurrence`` (None: fire nothing) and record ``skipped``
    (missed occurrences the misfire policy passes over)."""

    occurrence: Occurrence | None
    skipped: tuple[Occurrence, ...] = ()


def due(
    campaign: Mapping[str, Any], zone: ZoneInfo, origin: datetime, first: Occurrence,
    now: datetime, grace_s: float,
) -> Due | None:
    """``first`` is the next occurrence not yet started (:func:`next_after`). None while
    it has not begun. Started within its deadline (its instant, or the last zone's for
    contact-local delivery, plus the grace), it fires. Past it — no worker ran it in
    time — it is a misfire, and so is every later occurrence that has also begun: with
    ``fire_once_now`` the newest of them fires now and the others are skipped; with
    ``skip`` all are skipped, except a newest one still within its own deadline."""
    if starts_at(campaign, first) > now:
        return None
    if now <= _deadline(campaign, first, grace_s):
        return Due(first)
    missed = [first]
    since = origin - _SPAN if campaign["delivery"]["contact_local_time"] else origin
    for occurrence in occurrences(campaign["schedule"], zone, since):
        if occurrence.id <= first.id:
            continue
        if starts_at(campaign, occurrence) > now or len(missed) >= MISFIRE_SCAN_MAX:
            break
        missed.append(occurrence)
    newest = missed[-1]
    if campaign["delivery"]["misfire"] == "fire_once_now" or (
            now <= _deadline(campaign, newest, grace_s)):
        return Due(newest, tuple(missed[:-1]))
    return Due(None, tuple(missed))


@dataclass
class Throttle:
    """A campaign-wide ceiling of ``rate`` sends per minute, split fairly across
    partitions without any coordination. The campaign's send slots are ``60 / rate``
    seconds apart from ``anchor`` (the occurrence's start: the same on every worker), and
    partition ``p`` of ``P`` owns every ``P``-th slot, starting at the ``p``-th; a send
    uses one slot and goes out at or after it. A slot older than ``tolerance`` seconds
    is forfeited, not used late (after a restart, a pause, a slow slice), so sends never
    bunch up: any minute holds at most ``rate`` sends plus ``tolerance`` seconds' worth."""

    rate: float
    partition: int
    partitions: int
    anchor: float
    tolerance: float = 1.0
    spent: int = 0

    @property
    def gap(self) -> float:
        return 60.0 / self.rate

    def _slots(self, until: float) -> int:
        """This partition's slots at or before ``until`` (POSIX seconds)."""
        elapsed = (until - self.anchor) / self.gap - self.partition
        return 0 if elapsed < 0 else int(elapsed // self.partitions) + 1

    def allowed(self, now: float) -> int:
        """Sends this partition may make at ``now``; call :meth:`use` with those made."""
        self.spent = max(self.spent, self._slots(now - self.tolerance))
        return max(0, self._slots(now) - self.spent)

    def use(self, sends: int) -> None:
        self.spent += sends

    def next_slot(self) -> float:
        return self.anchor + (self.spent * self.partitions + self.partition) * self.gap


#: The progress counters, by the outcome of each contact's delivery.
COUNTERS = ("sent", "deferred", "capped", "suppressed", "held_back", "dropped", "enrolled",
            "not_enrolled")


def summarize(records: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each occurrence's counters summed over the partitions' progress records (what
    ``dripstream campaign status`` and the API's progress route show)."""
    occurrences: dict[str, dict[str, Any]] = {}
    for record in records.values():
        for entry in [*record.get("history", []), *record.get("running", {}).values()]:
            total = occurrences.setdefault(entry["id"], {
                "occurrence": entry["id"], "at": entry.get("at"),
                "version": entry.get("version"), "partitions": 0, "statuses": {},
                **dict.fromkeys(COUNTERS, 0), "remaining": 0})
            total["partitions"] += 1
            total["statuses"][entry["status"]] = total["statuses"].get(entry["status"], 0) + 1
            for name in (*COUNTERS, "remaining"):
                total[name] += entry.get(name, 0)
    for total in occurrences.values():
        total["targeted"] = sum(total[n] for n in (*COUNTERS, "remaining"))
    return sorted(occurrences.values(), key=lambda o: o["occurrence"])


def campaign_state(
    control: str, campaign: Mapping[str, Any], zone: ZoneInfo,
    upcoming: Occurrence | None, occurrences: Sequence[Mapping[str, Any]], partitions: int,
    now: datetime,
) -> str:
    """The status an operator reads: ``cancelled`` or ``paused`` (its controls),
    ``completed`` (no occurrence left, and each one fired has finished — completed or
    skipped — on every partition), else ``running``. ``control`` is the controls' status
    (``Registry.campaign_status``), ``upcoming`` the next occurrence (:func:`next_after`),
    ``occurrences`` :func:`summarize`'s."""
    if control != "running":
        return control
    if upcoming is not None or not occurrences:
        return "running"
    schedule = campaign["schedule"]
    if schedule["type"] == "drip" and schedule.get("enrol_joiners"):
        # Joiners are enrolled until ``until`` (for ever without one).
        until = schedule.get("until")
        if until is None or now <= resolve(parse_local(until), zone):
            return "running"
    for occurrence in occurrences:
        if occurrence["partitions"] < partitions or set(occurrence["statuses"]) - {
                "completed", "skipped"}:
            return "running"
    return "completed"


def progress_summary(
    definitions: Any, campaign: Mapping[str, Any], records: Mapping[int, Mapping[str, Any]],
    partitions: int, now: datetime,
) -> dict[str, Any]:
    """A campaign's ``status`` (:func:`campaign_state`), ``next_occurrence`` and
    ``occurrences`` (:func:`summarize`) from the partitions' progress records, as
    ``dripstream campaign status`` and the API's progress route show them.
    ``definitions``: a :class:`tables.registry.Registry` (policies, controls, when each
    version was published)."""
    account, cid = campaign["account"], campaign["id"]
    zone = campaign_zone(campaign, definitions.policy(account))
    control: str = definitions.campaign_status(account, cid)
    occurrences = summarize(records)
    upcoming = None
    if control != "cancelled" and campaign["active"]:
        last = max((r["last"] for r in records.values() if r.get("last")), default=None)
        # A version not on the topic yet has no publication time: it counts from now.
        held = definitions.campaign(account, cid, campaign["version"]) is not None
        origin = definitions.published_at(campaign) if held else now
        upcoming = next_after(campaign, zone, origin, last)
    return {"status": campaign_state(control, campaign, zone, upcoming, occurrences,
                                     partitions, now),
            "next_occurrence": upcoming and {"occurrence": upcoming.id,
                                             "at": upcoming.at.isoformat()},
            "occurrences": occurrences}


#: Why a campaign's send did not go out (yet), by the gate's reason (docs/compliance.md).
NOT_SENT_WHY = {
    "quiet_hours_deferred": "outside the account's quiet hours in the contact's time zone "
                            "(policy quiet_hours): it goes out when they end, at the time in until",
    "quiet_hours": "outside the account's quiet hours in the contact's time zone; the "
                   "policy drops such sends",
    "frequency_capped": "the contact reached a frequency cap (policy caps)",
    "suppressed": "the address is on the account's suppression list",
    "opted_out": "the contact opted out of the channel (consent false)",
    "no_consent": "SMS and MMS need the contact's consent (consent.sms true)",
    "no_destination": "the contact has no phone (SMS, MMS) or email address",
    "expired": "past the send's expiry (deferred too long)",
    "too_late": "past the content's max_lateness",
    "execution_ended": "the deferred send's execution ended before it could go out",
    "control_group": "the contact is in the campaign's control group (experiment.control): "
                     "counted, sent nothing",
    "holdout": "the contact is in the account's holdout (policy holdout): sent no marketing",
    "category_unsubscribed": "the contact unsubscribed from the message's category "
                             "(docs/preferences.md)",
}


def not_sent(campaign_id: str, audit: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Why the campaign's sends did not go out, from audit records (newest first, as the
    read model's recent audit): per reason and action, how many contacts, until when the
    newest deferral holds (``until``), and what it means."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in audit:
        origin = record.get("origin") or {}
        if origin.get("campaign_id") != campaign_id:
            continue
        reason, action = record.get("reason", ""), record.get("action", "drop")
        entry = found.setdefault((reason, action), {
            "reason": reason, "action": action, "contacts": set(), "until": None,
            "why": NOT_SENT_WHY.get(reason, reason)})
        entry["contacts"].add(record.get("contact_id"))
        until = record.get("deferred_until")
        if until and (entry["until"] is None or until > entry["until"]):
            entry["until"] = until
    return [{**entry, "contacts": len(entry["contacts"])}
            for _, entry in sorted(found.items())]
