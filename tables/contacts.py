"""Contact state: what dripstream knows about one contact of one account.

Pure logic, no Faust: :func:`apply_event` takes the stored state, a validated event and
``now``, and returns the next state. The duplicate-event marks live inside the same
value, so a state change and its dedupe mark are one table write: a crash can never store
one without the other.

The state is one :class:`ContactState` per contact (profile, consent, groups, tags, the
sends of the cap windows, dedupe marks, workflow executions). The table holds it encoded
by :func:`encode`: its JSON, compressed with zstd against a fixed dictionary of what every
state shares (key names, structure, the usual values), behind a format byte. A realistic
contact (profile, tags, a group, two sends, one waiting and one finished execution) is
~2.7 KB of JSON and ~0.5 KB encoded; compressing costs ~5 us and decompressing ~2 us on
top of the JSON. The same bytes are the changelog record and the Redis value.
:func:`decode` also reads plain JSON (a first byte ``{``).

State key: ``"<account>:<contact id>"``. Account ids cannot contain ``:``, so two accounts'
``c-1`` never share a key.

Limits (``docs/contract.md``): a publisher controls attributes, tags and groups, so each is
bounded; an event that would take a contact past a limit is rejected with reason
``limit_exceeded`` before anything changes, and the contact keeps working.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict, cast

import orjson
import zstandard

from streams.events import (
    ContactEvent,
    ContactProfile,
    GroupMembership,
    PreferencesUpdated,
    PurchaseCompleted,
    Rejected,
    Tagged,
)

__all__ = [
    "ACTIVITY_TYPES",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTES_BYTES",
    "MAX_GROUPS",
    "MAX_MARK_CHARS",
    "MAX_SEEN",
    "MAX_STATE_BYTES",
    "MAX_TAGS",
    "Applied",
    "ContactState",
    "Execution",
    "Inactivity",
    "SendRecord",
    "apply_event",
    "contact_key",
    "copy_state",
    "decode",
    "encode",
    "encode_json",
    "peek_next_due",
    "peek_timers",
    "public_view",
    "seen_mark",
    "split_key",
]

#: Events that show the contact doing something; they move ``last_activity_at``.
#: System reports (message.sent/delivered/failed/bounced, campaign.*, contact.inactive)
#: and operator actions (tags, groups, profile updates) do not.
ACTIVITY_TYPES = frozenset(
    {"contact.created", "keyword.received", "purchase.completed", "message.clicked",
     "message.opened"}
)

#: At most this many event ids are remembered per contact (the newest), whatever the
#: window: the marks travel with every state write, so they must stay small.
MAX_SEEN = 256
#: An event id longer than this is remembered by a digest (34 characters) instead: ids
#: may be 256 characters, and 256 of those would be half of a state's room.
MAX_MARK_CHARS = 64
MAX_TAGS = 256
MAX_GROUPS = 256
#: Categories a contact holds preferences for (an account declares at most 50).
MAX_PREFERENCES = 64
MAX_ATTRIBUTES = 256
#: The contact's attributes, as JSON.
MAX_ATTRIBUTES_BYTES = 32 * 1024
#: The whole state as JSON (before compression): one changelog record and one Redis
#: value, kept well under Kafka's default 1 MiB message limit.
MAX_STATE_BYTES = 128 * 1024


class SendRecord(TypedDict):
    """One send of the cap windows (:func:`tables.compliance.record_send`)."""

    id: str
    at: str
    channel: str
    to: str | None
    transactional: bool
    #: The send's message category, if it had one (category caps count these).
    category: NotRequired[str]


class Preference(TypedDict):
    """A contact's subscription to a category on a channel (``*``: every channel)."""

    subscribed: bool
    at: str
    source: str


class HistoryEntry(TypedDict, total=False):
    step: str
    outcome: str
    at: str
    message_id: str
    reason: str
    until: str
    due_at: str
    event: str
    event_id: str


class Execution(TypedDict):
    """One run of a workflow for this contact (:mod:`tables.executions`)."""

    id: str
    workflow_id: str
    version: int
    status: Literal["running", "waiting", "paused", "completed", "cancelled", "failed"]
    step: str
    seq: int
    depth: int
    started_at: str
    scheduled_at: str
    ended_at: str | None
    ended_reason: str | None
    due_at: str | None
    remaining_s: float | None
    waiting_for: dict[str, Any] | None
    trigger: dict[str, Any]
    history: list[HistoryEntry]
    deferred: NotRequired[dict[str, str]]
    #: The experiment arm: ``control``, or the branch names its splits chose
    #: (``a``, ``a/x`` after two splits); absent outside experiments.
    variant: NotRequired[str]
    #: What its ``digest`` step collected (replaced whole on every change, never changed
    #: in place: copies of the state share it).
    digest: NotRequired[DigestState]


class DigestState(TypedDict):
    step: str
    count: int
    items: list[str]


class Pending(TypedDict):
    """A debounced trigger waiting for quiet: the latest matching event (trimmed as an
    execution's trigger), its causation depth, and when the workflow starts with it."""

    event: dict[str, Any]
    depth: int
    due: str


class Inactivity(TypedDict):
    """The contact's inactivity period (:mod:`tables.inactivity`): ``since`` its start
    (the newest activity, or the creation), ``fired`` the thresholds (days) reported in
    it, ``active`` whether the contact was ever active. It follows ``next_due`` in the
    value, so the timer index reads both without decoding the rest (:func:`peek_timers`)."""

    since: str
    fired: list[int]
    active: bool


class Attribution(TypedDict):
    """One entry into a workflow with a conversion, counted when its window closes
    (:mod:`tables.experiments`); kept apart from the execution, which may end first."""

    workflow_id: str
    version: int
    variant: str | None
    entered_at: str
    #: When the window closes; None while an ``after: send`` window waits for the entry's
    #: first send step (``window_s`` long from then, ``opened_at``).
    until: str | None
    event: str
    criteria: list[dict[str, Any]]
    revenue_field: str | None
    sends: int
    converted_at: str | None
    revenue: float | None
    window_s: NotRequired[int]
    opened_at: NotRequired[str]


class Run(TypedDict):
    count: int
    last_started_at: str


class ContactState(TypedDict):
    """The contacts table value (decoded)."""

    #: The earliest wake-up any execution waits for (first, so the timer index can read it
    #: without decoding the rest: :func:`peek_next_due`).
    next_due: str | None
    #: Second, for the same reason (absent only in states written before it existed).
    inactivity: NotRequired[Inactivity]
    account: str
    contact_id: str
    phone: str | None
    email: str | None
    timezone: str | None
    locale: str | None
    attributes: dict[str, Any]
    consent: dict[str, bool]
    groups: list[str]
    tags: list[str]
    created_at: str
    updated_at: str
    last_event_at: str | None
    last_activity_at: str | None
    caps: dict[str, int] | None
    sends: list[SendRecord]
    purchases: int
    last_purchase_at: str | None
    #: Accepted events.
    version: int
    #: Table writes: the read model keeps the highest (see tables/readmodel.py).
    revision: int
    seen: dict[str, float]
    executions: dict[str, Execution]
    runs: dict[str, Run]
    #: Campaign id → the newest occurrence delivered to the contact (tables/campaigns.py).
    campaigns: NotRequired[dict[str, str]]
    #: Execution id → its open conversion window (tables/experiments.py).
    attribution: NotRequired[dict[str, Attribution]]
    #: Category → channel (or ``*``) → the contact's subscription (docs/preferences.md).
    preferences: NotRequired[dict[str, dict[str, Preference]]]
    #: Workflow id → its debounced start (docs/workflows.md#debounce-and-throttle).
    debounced: NotRequired[dict[str, Pending]]


def contact_key(account: str, contact_id: str) -> str:
    return f"{account}:{contact_id}"


def split_key(key: str) -> tuple[str, str]:
    """``(account, contact id)`` of a state key."""
    account, _, contact_id = key.partition(":")
    return account, contact_id


#: What encoded states are deflated against. Never change it: a new dictionary is a new
#: format byte (and this one stays, to read what was written with it). Pinned by a test.
_TEMPLATE_V1: dict[str, Any] = {
    "runs": {"welcome": {"count": 1, "last_started_at": "2026-01-01T00:00:00+00:00"}},
    "seen": {"00000000-0000-0000-0000-000000000000": 1767225600.0},
    "executions": {"welcome/00000000-0000-0000-0000-000000000000": {
        "id": "welcome/00000000-0000-0000-0000-000000000000", "workflow_id": "welcome",
        "version": 1, "status": "completed", "step": "wait", "seq": 1, "depth": 0,
        "started_at": "2026-01-01T00:00:00+00:00", "scheduled_at": "2026-01-01T00:00:00+00:00",
        "ended_at": "2026-01-01T00:00:00+00:00", "ended_reason": "end", "due_at": None,
        "remaining_s": None, "waiting_for": None,
        "trigger": {"id": "00000000-0000-0000-0000-000000000000", "type": "contact.created",
                    "time": "2026-01-01T00:00:00+00:00", "data": {}},
        "history": [
            {"step": "send", "outcome": "sent", "at": "2026-01-01T00:00:00+00:00",
             "message_id": "msg-00000000000000000000000000000000"},
            {"step": "wait", "outcome": "waiting", "at": "2026-01-01T00:00:00+00:00",
             "until": "2026-01-01T00:00:00+00:00"},
            {"step": "wait", "outcome": "waited", "at": "2026-01-01T00:00:00+00:00",
             "due_at": "2026-01-01T00:00:00+00:00"},
            {"step": "send", "outcome": "completed", "at": "2026-01-01T00:00:00+00:00",
             "reason": "end"}]}},
    "sends": [{"id": "msg-00000000000000000000000000000000",
               "at": "2026-01-01T00:00:00+00:00", "channel": "sms", "to": "+14155550000",
               "transactional": False}],
    "next_due": "2026-01-01T00:00:00+00:00", "account": "acme",
    "contact_id": "contact-000000", "phone": "+14155550000", "email": "user@example.com",
    "timezone": "America/New_York", "locale": "en-US",
    "attributes": {"first_name": "Ada", "last_name": "Lovelace", "plan": "free"},
    "consent": {"sms": True, "email": True}, "groups": ["customers"], "tags": ["vip"],
    "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
    "last_event_at": "2026-01-01T00:00:00+00:00",
    "last_activity_at": "2026-01-01T00:00:00+00:00", "caps": None, "purchases": 0,
    "last_purchase_at": None, "version": 1, "revision": 1,
}
ZDICT_V1 = orjson.dumps(_TEMPLATE_V1)
_V1 = b"\x01"
_DICT = zstandard.ZstdCompressionDict(ZDICT_V1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_DICT.precompute_compress(level=3)
# No checksum (the Kafka record has a CRC of its own), no dictionary id (the format byte
# says which), the content size (so a decompression allocates once).
_PACK = zstandard.ZstdCompressor(level=3, dict_data=_DICT, write_checksum=False,
                                 write_dict_id=False, write_content_size=True)
_UNPACK = zstandard.ZstdDecompressor(dict_data=_DICT)


def encode(state: ContactState) -> bytes:
    return _V1 + _PACK.compress(orjson.dumps(state))


def encode_json(data: bytes) -> bytes:
    """:func:`encode` of a state already serialized (``orjson.dumps(state)``)."""
    return _V1 + _PACK.compress(data)


def decode(value: bytes) -> ContactState:
    if value[:1] == _V1:
        value = _UNPACK.decompress(value[1:])
    return cast(ContactState, orjson.loads(value))


_TIMERS = re.compile(rb'^\{"next_due":(null|"([^"]+)")(?:,"inactivity":\{"since":"([^"]+)",'
                     rb'"fired":\[([0-9,]*)\])?')


def peek_timers(value: bytes) -> tuple[str | None, tuple[str, list[int]] | None]:
    """``next_due`` and the inactivity record's ``(since, fired)`` of an encoded state:
    they are its first fields, so nothing else is decoded."""
    if value[:1] == _V1:
        value = _UNPACK.decompressobj().decompress(value[1:])
    match = _TIMERS.match(value)
    if match is None or match.group(3) is None:  # another shape: decode it all
        state = decode(value)
        record = state.get("inactivity")
        return state.get("next_due"), (None if record is None
                                       else (record["since"], list(record["fired"])))
    due = None if match.group(2) is None else match.group(2).decode()
    fired = match.group(4)
    return due, (match.group(3).decode(), [int(n) for n in fired.split(b",")] if fired else [])


def peek_next_due(value: bytes) -> str | None:
    """``next_due`` of an encoded state (the executions' earliest wait)."""
    return peek_timers(value)[0]


@dataclass(frozen=True, slots=True)
class Applied:
    state: ContactState
    duplicate: bool


def seen_mark(event_id: str) -> str:
    """How an applied event id is remembered: itself, or a digest of a long one."""
    if len(event_id) <= MAX_MARK_CHARS:
        return event_id
    return "h:" + hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()


def _new_state(event: ContactEvent, now: datetime) -> ContactState:
    stamp = now.isoformat()
    return {
        "next_due": None,
        "inactivity": {"since": stamp, "fired": [], "active": False},
        "account": event.account,
        "contact_id": event.contact_id,
        "phone": None,
        "email": None,
        "timezone": None,
        "locale": None,
        "attributes": {},
        "consent": {},
        "groups": [],
        "tags": [],
        "created_at": stamp,
        "updated_at": stamp,
        "last_event_at": None,
        "last_activity_at": None,
        "caps": None,
        "sends": [],
        "purchases": 0,
        "last_purchase_at": None,
        "version": 0,
        "revision": 0,
        "seen": {},
        # Workflow executions (tables/executions.py) live in the same value, so one table
        # write covers an event's effect on the profile, its dedupe mark and its workflows.
        "executions": {},
        "runs": {},
    }


def _later(current: str | None, candidate: datetime) -> str:
    """The later of a stored time and ``candidate``. Stored times are UTC ISO strings,
    which compare in time order as strings (``+`` sorts before ``.`` and the digits)."""
    text = candidate.astimezone(UTC).isoformat()
    if current is None or (current > text if current.endswith("+00:00") else
                           datetime.fromisoformat(current) > candidate):
        return current if current is not None else text
    return text


def _limit(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise Rejected("limit_exceeded", f"{what}: {count} would exceed the limit of {limit}")


def apply_event(
    state: ContactState | None, event: ContactEvent, now: datetime, dedupe_window_s: float
) -> Applied:
    """Return the contact's state after ``event``; a repeat of a recent event id changes nothing.

    An event for a contact never seen before creates it: upstream systems may report a
    purchase or a delivery before (or without) a ``contact.created``. Raises
    :class:`Rejected` (``limit_exceeded``) if the event would take the contact past a
    limit; ``state`` is never changed.
    """
    horizon = now.timestamp() - dedupe_window_s
    mark = seen_mark(event.id)
    if state is not None and state["seen"].get(mark, -1.0) >= horizon:
        return Applied(state, duplicate=True)
    new = _new_state(event, now) if state is None else copy_state(state)

    data = event.data
    if isinstance(data, ContactProfile):
        for name in ("phone", "email", "timezone", "locale", "caps"):
            if name in data.model_fields_set:
                new[name] = getattr(data, name)
        if data.attributes:
            attributes = {**new["attributes"], **data.attributes}
            _limit("attributes", len(attributes), MAX_ATTRIBUTES)
            _limit("attributes bytes", len(orjson.dumps(attributes)), MAX_ATTRIBUTES_BYTES)
            new["attributes"] = attributes
        new["consent"].update({str(k): v for k, v in data.consent.items()})
    elif isinstance(data, Tagged):
        new["tags"] = _with(new["tags"], data.tag, event.type == "contact.tagged")
        _limit("tags", len(new["tags"]), MAX_TAGS)
    elif isinstance(data, PurchaseCompleted):
        new["purchases"] = new.get("purchases", 0) + 1
        new["last_purchase_at"] = _later(new.get("last_purchase_at"), event.time)
    elif isinstance(data, GroupMembership):
        new["groups"] = _with(new["groups"], data.group, event.type == "contact.added_to_group")
        _limit("groups", len(new["groups"]), MAX_GROUPS)
    elif isinstance(data, PreferencesUpdated):
        # The newest change (by event time, never later than now: a publisher's clock
        # ahead of ours must not lock later changes out) wins: an older one arriving late
        # is ignored; one for every channel replaces the channels' own older choices.
        source, at = data.source or event.envelope.source, min(event.time, now)
        preferences = new.setdefault("preferences", {})
        for change in data.preferences:
            per = preferences.setdefault(change.category, {})
            slot = change.channel or "*"
            # Older than what it would replace, or than a change for every channel
            # (which replaced the channels' own): a late arrival, ignored.
            if any(s in per and datetime.fromisoformat(per[s]["at"]) > at
                   for s in {slot, "*"}):
                continue
            if change.channel is None:
                for channel in [c for c, p in per.items()
                                if datetime.fromisoformat(p["at"]) <= at]:
                    del per[channel]
            per[slot] = {"subscribed": change.subscribed, "at": at.isoformat(),
                         "source": source}
        _limit("preferences", len(preferences), MAX_PREFERENCES)

    seen = [(k, t) for k, t in new["seen"].items() if t >= horizon][-(MAX_SEEN - 1):]
    new["seen"] = dict(seen)
    new["seen"][mark] = now.timestamp()
    new["updated_at"] = now.isoformat()
    new["last_event_at"] = _later(new["last_event_at"], event.time)
    if event.type in ACTIVITY_TYPES or event.type.startswith("custom."):
        new["last_activity_at"] = _later(new["last_activity_at"], event.time)
    new["version"] += 1
    return Applied(new, duplicate=False)


def _with(members: list[str], item: str, present: bool) -> list[str]:
    """``members`` as a sorted set, with ``item`` added (present) or removed."""
    return sorted({*members, item} if present else set(members) - {item})


def copy_state(state: ContactState) -> ContactState:
    """A copy that can be changed without touching ``state`` (the table's value)."""
    if "inactivity" in state:
        new = state.copy()
        new["inactivity"] = state["inactivity"].copy()
    else:  # written before inactivity existed: put its record second, where peeks look
        new = cast(ContactState, {"next_due": state["next_due"], "inactivity": {
            "since": state["last_activity_at"] or state["created_at"], "fired": [],
            "active": state["last_activity_at"] is not None}, **state})
    new["attributes"] = dict(state["attributes"])
    new["consent"] = dict(state["consent"])
    new["seen"] = dict(state["seen"])
    new["groups"] = list(state["groups"])
    new["tags"] = list(state["tags"])
    # Executions are changed in place (their fields, their history); their trigger,
    # waiting_for and deferred values are replaced whole, never changed: shared safely.
    new["executions"] = {eid: _copy_execution(ex) for eid, ex in state["executions"].items()}
    new["runs"] = {wf: run.copy() for wf, run in state["runs"].items()}
    new["sends"] = list(state["sends"])
    if "campaigns" in state:
        new["campaigns"] = dict(state["campaigns"])
    if "attribution" in state:
        new["attribution"] = {eid: entry.copy() for eid, entry in state["attribution"].items()}
    if "preferences" in state:
        new["preferences"] = {c: dict(per) for c, per in state["preferences"].items()}
    if "debounced" in state:
        new["debounced"] = dict(state["debounced"])  # entries are replaced whole
    return new


def _copy_execution(ex: Execution) -> Execution:
    new = ex.copy()
    new["history"] = list(ex["history"])
    return new


_PRIVATE = ("seen", "executions", "runs", "next_due", "attribution", "debounced")


def public_view(state: ContactState) -> dict[str, Any]:
    """The profile as operators and the read model see it (no dedupe marks, no executions)."""
    return {k: v for k, v in state.items() if k not in _PRIVATE}
