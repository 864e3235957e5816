"""Definitions: the JSON operators publish, and its validation.

Four kinds: ``workflow`` (a drip workflow), ``account`` (an account's compliance policy:
caps, quiet hours, keyword lists, replies), ``keyword`` (an account keyword such as JOIN)
and ``campaign`` (a scheduled send or enrolment, ``docs/campaigns.md``). They travel on
the compacted ``<prefix>definitions`` topic, one record per version (key
``<kind>:<account>:<id>:<version>``), written by ``dripstream define`` now and the admin
API later. Operators pause, resume and cancel a campaign with a
:class:`CampaignControl` record on the same topic (the newest per campaign is kept).
:func:`parse_definition` validates one and raises :class:`DefinitionError` listing every
problem with its path (unknown step references, unreachable steps, cycles, bad time
zones, bad durations, templates naming unknown fields). Workers run only valid ones.
``docs/workflows.md`` documents the format with examples.
"""

from __future__ import annotations

import re
import string
from datetime import time as dtime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from streams.events import (
    ACCOUNT_PATTERN,
    CATEGORY_PATTERN,
    CUSTOM_TYPE,
    EVENT_TYPES,
    MAX_CAP,
    check_zone,
)
from tables.inactivity import DEFAULT_ACTIVITY_TYPES
from tables.schedule import check_cron, cron_min_interval, parse_local

__all__ = [
    "DEFAULT_MIN_INTERVAL",
    "AccountPolicy",
    "Campaign",
    "CampaignControl",
    "Criterion",
    "Definition",
    "DefinitionError",
    "Keyword",
    "Workflow",
    "definition_key",
    "parse_any",
    "parse_campaign",
    "parse_definition",
    "parse_duration",
    "template_fields",
]

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
#: ``{{ path }}`` or ``{{ path | default }}`` in a message template.
TEMPLATE = re.compile(r"\{\{\s*([^}|]+?)\s*(?:\|\s*([^}]*?)\s*)?\}\}")
_IDENT = r"^[A-Za-z0-9_.-]{1,64}$"
_CRITERION_FIELD = re.compile(r"^(event\.(type|data(\.[^.]+)+)|contact\.[^.]+(\.[^.]+)*)$")


class DefinitionError(ValueError):
    """An invalid definition; ``errors`` lists each problem as ``"path: message"``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@lru_cache(maxsize=1024)
def parse_duration(text: str) -> int:
    """``"2d"``, ``"1h30m"``, ``"45s"``, ``"1w"`` → seconds (> 0)."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not text or match is None or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30m, 2d, 1d12h, 1w")
    w, d, h, m, s = (int(g or 0) for g in match.groups())
    seconds = (((w * 7 + d) * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than 0")
    return seconds


@lru_cache(maxsize=1)
def _iana_names() -> frozenset[str]:
    """The canonical IANA names: what zoneinfo lists, less the files that are not zones
    (``localtime``, ``Factory``) — and ``posix/…``, ``right/…`` are not listed at all."""
    return frozenset(available_timezones() - {"localtime", "Factory", "posixrules"})


def _check_iana(value: str) -> str:
    check_zone(value)
    if value not in _iana_names():
        raise ValueError(f"{value!r} is not an IANA time zone name (e.g. Europe/Berlin)")
    return value


#: An IANA time zone name that definitions may use: stricter than the events' ``Zone``
#: (which accepts whatever zoneinfo can open), since a definition is written once and
#: applied to every contact.
Zone = Annotated[str, AfterValidator(_check_iana)]


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


#: A duration such as ``30m``, ``2d``, ``1d12h``, ``1w`` (checked).
Duration = Annotated[str, AfterValidator(_check_duration),
                     Field(description="e.g. 30m, 2d, 1d12h, 1w")]


def _check_time(value: str) -> str:
    try:
        parsed = dtime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid time of day {value!r}: use HH:MM") from None
    if parsed.tzinfo is not None:
        raise ValueError(f"time of day {value!r} must be local, without a UTC offset")
    return value


REPLY_FIELDS = ("brand", "support")


def _check_reply(value: str) -> str:
    """Reply texts may name {brand} and {support}, nothing else."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"invalid reply text: {exc}") from None
    if unknown := [n for n in names if n not in REPLY_FIELDS]:
        raise ValueError(f"reply text names {unknown}: only {{brand}} and {{support}} exist")
    return value


#: A reply text with optional {brand} / {support}.
ReplyText = Annotated[str, AfterValidator(_check_reply)]


#: A local time of day, ``HH:MM``.
TimeOfDay = Annotated[str, AfterValidator(_check_time)]


def _event_type(value: str) -> str:
    if value not in EVENT_TYPES and not CUSTOM_TYPE.match(value) and value != "contact.untagged":
        raise ValueError(f"unknown event type {value!r}")
    return value


class Criterion(BaseModel):
    """One condition. ``field`` is ``event.data.<path>``, ``event.type`` or
    ``contact.<field or attribute>``; ``in_group`` / ``has_tag`` take only ``value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str | None = None
    op: Literal[
        "eq", "ne", "gt", "gte", "lt", "lte", "contains", "in", "exists", "not_exists",
        "in_group", "not_in_group", "has_tag", "not_has_tag",
    ]
    value: Any = None

    @field_validator("field")
    @classmethod
    def _field_root(cls, value: str | None) -> str | None:
        if value is not None and not _CRITERION_FIELD.match(value):
            raise ValueError(
                f"unknown field {value!r}: use event.type, event.data.<path> or contact.<name>"
            )
        return value

    def model_post_init(self, __context: Any) -> None:
        membership = self.op in ("in_group", "not_in_group", "has_tag", "not_has_tag")
        if membership and not isinstance(self.value, str):
            raise ValueError(f"{self.op} needs a string value (the group or tag)")
        if not membership and self.field is None:
            raise ValueError(f"{self.op} needs a field")
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("in needs a list value")


class Additive(BaseModel):
    """A model whose fields added after its first release (``LATER_FIELDS``) are left out
    of its dump while they hold their defaults: a body written before they existed dumps
    as it did (the API's store compares bodies), and a worker of that time still reads the
    bodies that do not use them."""

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_later_defaults(self, handler: SerializerFunctionWrapHandler
                                ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.LATER_FIELDS:
            field = type(self).model_fields[name]
            if getattr(self, name) == field.get_default(call_default_factory=True):
                data.pop(name, None)
        return data


class Trigger(Additive):
    model_config = ConfigDict(extra="forbid", frozen=True)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("debounce", "throttle")

    event: str
    keyword: str | None = Field(None, description="keyword.received only; case-insensitive")
    inactive_days: int | None = Field(
        None, ge=1, le=3650,
        description="contact.inactive only: the threshold (days without activity) this "
                    "workflow reacts to; dripstream detects it for every contact")
    criteria: list[Criterion] = Field(default_factory=list)
    debounce: Duration | None = Field(
        None, description="start once the contact's matching events have been quiet this "
                          "long, with the latest of them (docs/workflows.md#debounce-and-"
                          "throttle)")
    throttle: Duration | None = Field(
        None, description="start at most once per this period per contact")

    _check_event = field_validator("event")(_event_type)

    def model_post_init(self, __context: Any) -> None:
        if self.debounce is not None and self.throttle is not None:
            raise ValueError("give debounce or throttle, not both")


class Goal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str
    criteria: list[Criterion] = Field(default_factory=list)

    _check_event = field_validator("event")(_event_type)


class Reentry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["once_at_a_time", "once_ever", "after_days", "every_time"] = (
        "once_at_a_time"
    )
    days: int | None = Field(None, ge=1)

    def model_post_init(self, __context: Any) -> None:
        if (self.policy == "after_days") != (self.days is not None):
            raise ValueError("days is required with (and only with) policy after_days")


class _Step(Additive):
    model_config = ConfigDict(extra="forbid", frozen=True)

    next: str | None = None


class Send(_Step):
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("category",)

    kind: Literal["send_sms", "send_mms", "send_email"]
    body: str = Field(min_length=1)
    subject: str | None = None
    media_urls: list[str] = Field(default_factory=list)
    transactional: bool = False
    max_lateness: Duration | None = None
    expires_after: Duration = "1d"
    category: str | None = Field(
        None, pattern=CATEGORY_PATTERN,
        description="the message category (the account policy's categories; "
                    "docs/preferences.md); none: the contact's preferences and category "
                    "caps do not apply")

    def model_post_init(self, __context: Any) -> None:
        if self.kind == "send_email" and not self.subject:
            raise ValueError("send_email needs a subject")
        if self.kind == "send_mms" and not self.media_urls:
            raise ValueError("send_mms needs at least one media_urls entry")
        if self.kind != "send_email" and self.subject:
            raise ValueError(f"{self.kind} has no subject")
        if self.kind != "send_mms" and self.media_urls:
            raise ValueError(f"{self.kind} has no media_urls")
        if any(not url.startswith("https://") for url in self.media_urls):
            raise ValueError("media_urls must be https:// URLs")


class Wait(_Step):
    kind: Literal["wait"]
    duration: Duration


class WaitUntil(_Step):
    kind: Literal["wait_until"]
    time: TimeOfDay = Field(description="local time of day, HH:MM")
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None


class Membership(_Step):
    kind: Literal["add_to_group", "remove_from_group"]
    group: str = Field(min_length=1, max_length=128)


class Tagging(_Step):
    kind: Literal["add_tag", "remove_tag"]
    tag: str = Field(min_length=1, max_length=128)


class Branch(_Step):
    kind: Literal["branch"]
    condition: list[Criterion] = Field(min_length=1, description="all must hold")
    true: str
    false: str


class WaitForEvent(_Step):
    kind: Literal["wait_for_event"]
    event: str
    criteria: list[Criterion] = Field(default_factory=list)
    timeout: Duration
    timeout_next: str | None = None

    _check_event = field_validator("event")(_event_type)


class Exit(_Step):
    kind: Literal["exit"]


class Digest(_Step):
    """Collect the matching events that come within ``window`` (the one that started the
    execution too, when it matches and the digest is its first stop), up to ``max``, then
    go on once: the sends after it see ``{{digest.count}}`` and ``{{digest.items}}``
    (docs/workflows.md#digest). Nothing collected: the execution ends."""

    kind: Literal["digest"]
    event: str
    criteria: list[Criterion] = Field(default_factory=list)
    window: Duration = Field(description="how long to collect, from reaching the step")
    max: int = Field(50, ge=1, le=100, description="released at once when this many came")
    item: str | None = Field(
        None, pattern=r"^event\.(type|id|data(\.[^.]+)+)$",
        description="what each event adds to {{digest.items}}, e.g. event.data.name")

    _check_event = field_validator("event")(_event_type)


class SplitBranch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_IDENT)
    weight: int = Field(ge=1, le=10_000, description="relative to the other branches'")
    next: str


class Split(_Step):
    """A/B/n: each contact goes down one branch, by a hash of (account, contact,
    workflow, step) against the weights (docs/experiments.md): the same every time."""

    kind: Literal["split"]
    branches: list[SplitBranch] = Field(min_length=2, max_length=10)

    def model_post_init(self, __context: Any) -> None:
        names = [b.name for b in self.branches]
        if len(set(names)) != len(names):
            raise ValueError("branch names must be unique")
        if "control" in names:
            raise ValueError("'control' is the control group's name (experiment.control)")
        if self.next is not None:
            raise ValueError("a split goes on through its branches' next, not its own")


Step = Annotated[
    Send | Wait | WaitUntil | Membership | Tagging | Branch | WaitForEvent | Exit | Split
    | Digest,
    Field(discriminator="kind"),
]


class Conversion(Additive):
    """What counts as converting, and for how long after entry or after the first send
    (docs/experiments.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("after",)

    event: str
    criteria: list[Criterion] = Field(default_factory=list)
    window: Duration = Field(description="how long a conversion counts, e.g. 7d")
    after: Literal["entry", "send"] = Field(
        "entry", description="the window opens at entry, or when the entry reaches its first "
                             "send step (sent, held back or dropped)")
    revenue: str | None = Field(
        None, pattern=r"^event\.data(\.[^.]+)+$",
        description="a numeric field of the conversion event, summed (event.data.<path>)")

    _check_event = field_validator("event")(_event_type)


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    control: float = Field(
        0, ge=0, le=50, description="percent of entries kept as a control group: they run "
                                    "the workflow and are counted, but get no marketing send")
    conversion: Conversion | None = None


class Workflow(Additive):
    model_config = ConfigDict(extra="forbid", frozen=True)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("shadow", "experiment")

    kind: Literal["workflow"] = "workflow"
    id: str = Field(pattern=_IDENT)
    account: str = Field(pattern=ACCOUNT_PATTERN)
    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    active: bool = True
    shadow: bool = Field(
        False, description="run beside the live version without sending (docs/simulation.md"
                           "#shadow-versions); promote it by publishing it without shadow"
    )
    timezone: Zone | None = Field(
        None, description="zone for contacts without one; default: the account policy's"
    )
    trigger: Trigger
    goals: list[Goal] = Field(default_factory=list)
    reentry: Reentry = Field(default_factory=Reentry)
    on_capped: Literal["drop", "defer"] = Field(
        "drop", description="a send over a frequency cap: dropped (audited) or deferred"
    )
    experiment: Experiment | None = Field(
        None, description="a control group and a conversion to count (docs/experiments.md)")
    start: str
    steps: dict[str, Step] = Field(min_length=1)

    @property
    def key(self) -> str:
        return f"workflow:{self.account}:{self.id}"


Channel = Literal["sms", "mms", "email"]
_QUIET_CHANNELS: tuple[Channel, ...] = ("sms", "mms")


def _words(values: list[str]) -> list[str]:
    """Upper case, single spaces: "opt  out" -> "OPT OUT"."""
    out = [" ".join(v.upper().split()) for v in values]
    if any(not w for w in out):
        raise ValueError("keywords must not be empty")
    return out


class Caps(BaseModel):
    """Sends per window; None means no cap for that window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: int | None = Field(None, ge=0, le=MAX_CAP)
    week: int | None = Field(None, ge=0, le=MAX_CAP)
    month: int | None = Field(None, ge=0, le=MAX_CAP)


class Category(BaseModel):
    """A message category of the account (docs/preferences.md): contacts subscribe to it
    or not, per channel, and it may have caps of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=CATEGORY_PATTERN)
    name: str = Field(min_length=1, max_length=128)
    subscribed_by_default: bool = Field(
        True, description="false: only contacts who subscribed get it (opt-in)")
    transactional: bool = Field(
        False, description="its sends are transactional: past quiet hours, caps and "
                           "preferences (consent and STOP still apply)")
    caps: Caps | None = Field(
        None, description="its own caps beside the account's, e.g. {\"week\": 2}")


class CapPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: Caps = Caps(day=5, week=20, month=50)
    channels: dict[Literal["sms", "mms", "email"], Caps] = Field(default_factory=dict)
    windows: Literal["calendar", "rolling"] = Field(
        "calendar", description="calendar: local day / ISO week / month; rolling: 24h/7d/30d"
    )


class QuietHours(BaseModel):
    """Marketing sends on ``channels`` go out only from ``send_from`` until ``send_until``,
    contact-local time (a window may cross midnight: 22:00 → 06:00)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    send_from: TimeOfDay = "08:00"
    send_until: TimeOfDay = "21:00"
    channels: list[Channel] = Field(default_factory=lambda: list(_QUIET_CHANNELS))
    policy: Literal["defer", "drop"] = "defer"


class KeywordLists(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    opt_out: list[str] = Field(default_factory=lambda: [
        "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
        "OPT OUT"])
    opt_in: list[str] = Field(default_factory=lambda: ["START", "UNSTOP", "YES", "SUBSCRIBE"])
    help: list[str] = Field(default_factory=lambda: ["HELP", "INFO"])

    _upper = field_validator("opt_out", "opt_in", "help")(_words)


class Replies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    opt_out: ReplyText = ("{brand}: You are unsubscribed and will receive no more messages. "
                    "Reply START to resubscribe.")
    opt_in: ReplyText = ("{brand}: You are subscribed again. Msg frequency varies. "
                   "Msg & data rates may apply. Reply HELP for help, STOP to cancel.")
    help: ReplyText = ("{brand}: Msg frequency varies. Msg & data rates may apply. "
                 "Reply STOP to cancel. Support: {support}")


def _event_types(values: list[str]) -> list[str]:
    return [_event_type(v) for v in values]


class InactivityPolicy(BaseModel):
    """What counts as activity for inactivity detection (``docs/workflows.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activity_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ACTIVITY_TYPES),
        min_length=1, description="event types that end an inactivity period")

    _check_types = field_validator("activity_types")(_event_types)


class AccountPolicy(Additive):
    """Per-account compliance settings (``kind: account``); defaults apply without one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("holdout", "categories")

    kind: Literal["account"] = "account"
    account: str = Field(pattern=ACCOUNT_PATTERN)
    version: int = Field(1, ge=1)
    brand: str = "dripstream"
    support: str = "your sender"
    timezone: Zone = Field("UTC", description="fallback zone for contacts without one")
    caps: CapPolicy = Field(default_factory=CapPolicy)
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    keywords: KeywordLists = Field(default_factory=KeywordLists)
    replies: Replies = Field(default_factory=Replies)
    categories: list[Category] = Field(
        default_factory=list, max_length=50,
        description="the account's message categories (docs/preferences.md)")
    holdout: float = Field(
        0, ge=0, le=50, description="percent of the account's contacts kept out of every "
                                    "marketing send (docs/experiments.md#the-account-holdout)")
    campaign_min_interval: Duration = Field(
        "1h", description="recurring campaigns may not fire more often than this")
    inactivity: InactivityPolicy = Field(default_factory=InactivityPolicy)

    @field_validator("categories")
    @classmethod
    def _unique_categories(cls, value: list[Category]) -> list[Category]:
        ids = [c.id for c in value]
        if len(set(ids)) != len(ids):
            raise ValueError("category ids must be unique")
        return value


class Keyword(BaseModel):
    """An account keyword such as JOIN or VIP (``kind: keyword``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["keyword"] = "keyword"
    id: str = Field(pattern=_IDENT)
    account: str = Field(pattern=ACCOUNT_PATTERN)
    version: int = Field(1, ge=1)
    active: bool = True
    words: list[str] = Field(min_length=1)
    to: list[str] = Field(default_factory=list, description="receiving numbers; empty: any")
    reply: ReplyText | None = Field(None, description="sent back (transactional)")
    group: str | None = Field(None, description="the opt-in group the contact joins")
    consent: bool = Field(False, description="set SMS consent (an opt-in keyword)")

    _upper = field_validator("words")(_words)


#: Recurring campaigns fire at most this often unless the account policy says otherwise.
DEFAULT_MIN_INTERVAL = 3600


def _check_local(value: str) -> str:
    parse_local(value)
    return value


#: A local wall-clock date-time, ``YYYY-MM-DDTHH:MM``, without a UTC offset.
LocalDateTime = Annotated[str, AfterValidator(_check_local)]


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: Zone | None = Field(
        None, description="the zone of the schedule's local times; default: the account's")


class OnceSchedule(_Schedule):
    type: Literal["once"]
    at: LocalDateTime


class RecurringSchedule(_Schedule):
    type: Literal["recurring"]
    cron: str = Field(description="5 fields: minute hour day-of-month month day-of-week")
    start: LocalDateTime | None = None
    end: LocalDateTime | None = None
    max_occurrences: int | None = Field(None, ge=1)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        check_cron(value)
        return value

    def model_post_init(self, __context: Any) -> None:
        if self.start and self.end and parse_local(self.end) < parse_local(self.start):
            raise ValueError("end is before start")


class DripSchedule(_Schedule):
    type: Literal["drip"]
    at: LocalDateTime = Field(description="when the audience is enrolled")
    until: LocalDateTime | None = Field(None, description="joiners are enrolled until then")
    enrol_joiners: bool = Field(
        False, description="also enrol each contact who joins the audience after `at`")

    def model_post_init(self, __context: Any) -> None:
        if self.until and parse_local(self.until) < parse_local(self.at):
            raise ValueError("until is before at")


Schedule = Annotated[OnceSchedule | RecurringSchedule | DripSchedule,
                     Field(discriminator="type")]


class Audience(BaseModel):
    """Who a campaign reaches, judged on each contact's state when it fires: all the
    account's contacts, narrowed by groups (any of), tags (all or any of), exclusion
    groups and criteria on contact fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: list[str] = Field(default_factory=list, description="in any of these")
    tags: list[str] = Field(default_factory=list)
    tags_match: Literal["all", "any"] = "all"
    exclude_groups: list[str] = Field(default_factory=list)
    criteria: list[Criterion] = Field(default_factory=list, description="contact.* only")

    @field_validator("criteria")
    @classmethod
    def _contact_only(cls, value: list[Criterion]) -> list[Criterion]:
        for criterion in value:
            if criterion.field is not None and not criterion.field.startswith("contact."):
                raise ValueError(f"audience criteria read contact fields only, not "
                                 f"{criterion.field!r}")
        return value


class Content(Additive):
    """What a content campaign sends (templates as in workflow sends; a campaign send is
    marketing: it passes consent, suppression, quiet hours and caps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("category",)

    channel: Channel
    body: str = Field(min_length=1)
    subject: str | None = None
    media_urls: list[str] = Field(default_factory=list)
    expires_after: Duration = "1d"
    max_lateness: Duration | None = Field(
        None, description="a send deferred longer than this past its time is dropped")
    category: str | None = Field(
        None, pattern=CATEGORY_PATTERN, description="the message category "
                                                    "(docs/preferences.md)")

    def model_post_init(self, __context: Any) -> None:
        if self.channel == "email" and not self.subject:
            raise ValueError("email needs a subject")
        if self.channel != "email" and self.subject:
            raise ValueError(f"{self.channel} has no subject")
        if self.channel == "mms" and not self.media_urls:
            raise ValueError("mms needs at least one media_urls entry")
        if self.channel != "mms" and self.media_urls:
            raise ValueError(f"{self.channel} has no media_urls")
        if any(not url.startswith("https://") for url in self.media_urls):
            raise ValueError("media_urls must be https:// URLs")


class DeliveryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    contact_local_time: bool = Field(
        False, description="each contact at the schedule's wall-clock time in their own zone")
    throttle_per_minute: int | None = Field(
        None, ge=1, description="campaign-wide ceiling on sends (enrolments) per minute")
    misfire: Literal["fire_once_now", "skip"] = Field(
        "fire_once_now", description="occurrences missed while no worker ran")
    misfire_grace: Duration = Field("5m", description="later than this is a misfire")
    on_capped: Literal["drop", "defer"] = "drop"
    publish_events: bool = Field(
        False, description="also publish campaign.started/completed to contact-events")


class Variant(BaseModel):
    """One arm of a campaign's A/B/n test: its content and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_IDENT)
    weight: int = Field(ge=1, le=10_000, description="relative to the other variants'")
    content: Content


class Campaign(Additive):
    """A scheduled campaign (``kind: campaign``): content to send (or ``variants`` of it,
    an A/B/n test), or a workflow to enrol the audience in (``workflow``, required for
    drip schedules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("variants", "experiment")

    kind: Literal["campaign"] = "campaign"
    id: str = Field(pattern=_IDENT)
    account: str = Field(pattern=ACCOUNT_PATTERN)
    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    active: bool = True
    content: Content | None = None
    variants: list[Variant] | None = Field(
        None, min_length=2, max_length=10,
        description="A/B/n: each contact gets one variant's content, by a hash (docs/"
                    "experiments.md)")
    workflow: str | None = Field(None, pattern=_IDENT, description="the linked workflow")
    audience: Audience = Field(default_factory=Audience)
    schedule: Schedule
    delivery: DeliveryOptions = Field(default_factory=DeliveryOptions)
    experiment: Experiment | None = Field(
        None, description="a control group and a conversion to count (docs/experiments.md)")

    def model_post_init(self, __context: Any) -> None:
        given = [self.content is not None, self.variants is not None,
                 self.workflow is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of content (what to send), variants (an A/B "
                             "test of contents) or workflow (the id of a workflow to enrol "
                             "each contact in)")
        if self.schedule.type == "drip" and self.workflow is None:
            raise ValueError("a drip campaign enrols into a workflow: give workflow")
        if self.workflow is not None and self.experiment is not None:
            raise ValueError("a campaign that enrols into a workflow counts that workflow's "
                             "experiment: give experiment in the workflow")
        if self.variants is not None:
            names = [v.name for v in self.variants]
            if len(set(names)) != len(names):
                raise ValueError("variant names must be unique")
            if "control" in names or "holdout" in names:
                raise ValueError("'control' and 'holdout' are the names of the groups sent "
                                 "nothing (experiment.control, the account's holdout)")


class CampaignControl(BaseModel):
    """Pause, resume or cancel a campaign (``kind: campaign_control``). A cancel is final;
    pause and resume share a record, so the newest of them wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["campaign_control"] = "campaign_control"
    account: str = Field(pattern=ACCOUNT_PATTERN)
    campaign_id: str = Field(pattern=_IDENT)
    action: Literal["pause", "resume", "cancel"]
    at: str | None = None


def template_fields(text: str) -> list[str]:
    return [m.group(1) for m in TEMPLATE.finditer(text)]


def _template_errors(where: str, text: str) -> list[str]:
    errors = []
    for field in template_fields(text):
        ok = field in ("preferences_url", "digest.count", "digest.items") or re.match(
            r"^contact\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$", field) or re.match(
            r"^event\.(type|id|time|data(\.[A-Za-z0-9_]+)+)$", field
        )
        if not ok:
            errors.append(
                f"{where}: unknown template field {{{{{field}}}}}: use contact.<name>, "
                "event.data.<path> (event.type, event.id, event.time), preferences_url, "
                "digest.count or digest.items"
            )
    count = len(template_fields(text))
    if text.count("{{") != count or text.count("}}") != count:
        errors.append(f"{where}: unbalanced or empty {{{{ }}}} in template")
    return errors


_STEP_KINDS = {"send_sms", "send_mms", "send_email", "wait", "wait_until", "add_to_group",
               "remove_from_group", "add_tag", "remove_tag", "branch", "wait_for_event", "exit",
               "split", "digest"}
_SEND_KINDS = {"send_sms", "send_mms", "send_email"}


def _targets(step: Any) -> tuple[list[tuple[str, str]], bool]:
    """A raw step's references as ``(field, step id)``, and whether all of them could be
    read (an unreadable step may lead anywhere, so reachability cannot be judged)."""
    kind = step.get("kind") if isinstance(step, dict) else None
    if not isinstance(kind, str) or kind not in _STEP_KINDS:
        return [], False
    branch = kind == "branch"
    fields = {"branch": ("true", "false"), "wait_for_event": ("next", "timeout_next")}
    targets, complete = [], True
    if kind == "split":
        branches = step.get("branches")
        if not isinstance(branches, list):
            return [], False
        for n, item in enumerate(branches):
            target = item.get("next") if isinstance(item, dict) else None
            if isinstance(target, str) and target:
                targets.append((f"branches.{n}.next", target))
            else:
                complete = False
        return targets, complete
    for field in fields.get(kind, ("next",)):
        target = step.get(field)
        if isinstance(target, str) and (target or branch):
            targets.append((field, target))
        elif branch or target not in (None, ""):
            complete = False
    return targets, complete


def _walk(edges: dict[str, list[str]], root: str, state: dict[str, int]) -> list[str]:
    """Depth-first from ``root`` over steps not seen yet (``state``: 1 = on the path,
    2 = done); the cycles found. Iterative: a long chain of steps is valid and must not
    hit Python's recursion limit."""
    cycles: list[str] = []
    if root in state:
        return cycles
    state[root] = 1
    path, pending = [root], [iter(edges[root])]
    while pending:
        target = next(pending[-1], None)
        if target is None:
            state[path.pop()] = 2
            pending.pop()
        elif state.get(target) == 1:
            cycles.append(" -> ".join([*path[path.index(target):], target]))
        elif target not in state:
            state[target] = 1
            path.append(target)
            pending.append(iter(edges[target]))
    return cycles


def _graph_errors(raw: dict[str, Any]) -> list[str]:
    """Step references, cycles, reachability, templates and the trigger keyword, read from
    the raw dict so they are reported beside any field error; parts that cannot be read
    are skipped (field validation reports them)."""
    errors: list[str] = []
    raw_steps = raw.get("steps")
    steps: dict[str, Any] = raw_steps if isinstance(raw_steps, dict) else {}
    start = raw.get("start")
    root = start if isinstance(start, str) and start in steps else None
    if isinstance(start, str) and root is None and isinstance(raw_steps, dict):
        errors.append(f"start: unknown step {start!r}")
    edges: dict[str, list[str]] = {}
    complete = root is not None
    for sid, step in steps.items():
        targets, readable = _targets(step)
        complete = complete and readable
        edges[sid] = []
        for attr, target in targets:
            if target in steps:
                edges[sid].append(target)
            else:
                errors.append(f"steps.{sid}.{attr}: unknown step {target!r}")
                complete = False
        kind = step.get("kind") if isinstance(step, dict) else None
        if isinstance(kind, str) and kind in _SEND_KINDS:
            for attr in ("body", "subject"):
                if isinstance(text := step.get(attr), str) and text:
                    errors += _template_errors(f"steps.{sid}.{attr}", text)
    trigger = raw.get("trigger")
    if isinstance(trigger, dict) and trigger.get("keyword") is not None:
        event = trigger.get("event")
        if isinstance(event, str) and event != "keyword.received":
            errors.append("trigger.keyword: only for trigger event keyword.received")
    if isinstance(trigger, dict) and trigger.get("inactive_days") is not None:
        event = trigger.get("event")
        if isinstance(event, str) and event != "contact.inactive":
            errors.append("trigger.inactive_days: only for trigger event contact.inactive")
    # Cycles from every step (start first), so a cycle shows even when start is unknown;
    # reachability only when start and every reference resolve: a dangling reference may
    # be a typo for the very step that then looks unreachable.
    state: dict[str, int] = {}
    cycles = _walk(edges, root, state) if root is not None else []
    reached = set(state)
    for sid in steps:
        cycles += _walk(edges, sid, state)
    errors += [f"steps: cycle {c}" for c in cycles]
    if complete:
        errors += [f"steps.{sid}: unreachable from start {root!r}" for sid in steps
                   if sid not in reached]
    return errors


def _path(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a JSON path (without the union's tag in steps.<id>)."""
    parts = list(loc)
    if len(parts) > 2 and parts[0] == "steps" and parts[2] in _STEP_KINDS:
        del parts[2]
    if len(parts) > 1 and parts[0] == "schedule" and parts[1] in ("once", "recurring", "drip"):
        del parts[1]
    return ".".join(str(p) for p in parts) or "(root)"


def _messages(exc: ValidationError) -> list[str]:
    return [f"{_path(e['loc'])}: " + e["msg"].removeprefix("Value error, ")
            for e in exc.errors(include_url=False)]


def _validate(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise DefinitionError(_messages(exc)) from None


def parse_campaign(raw: dict[str, Any], min_interval_s: int = DEFAULT_MIN_INTERVAL) -> Campaign:
    """Validate a campaign: fields, templates and, for a recurring one, that it never
    fires more often than ``min_interval_s`` (the account's setting)."""
    errors: list[str] = []
    campaign: Campaign | None = None
    try:
        campaign = Campaign.model_validate(raw)
    except ValidationError as exc:
        errors = _messages(exc)
    contents: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        contents.append(("content", raw.get("content")))
        if isinstance(variants := raw.get("variants"), list):
            contents += [(f"variants.{n}.content", v.get("content"))
                         for n, v in enumerate(variants) if isinstance(v, dict)]
    for where, content in contents:
        if isinstance(content, dict):
            for attr in ("body", "subject"):
                if isinstance(text := content.get(attr), str) and text:
                    errors += _template_errors(f"{where}.{attr}", text)
    if campaign is not None and campaign.schedule.type == "recurring":
        gap = cron_min_interval(campaign.schedule.cron)
        if gap.total_seconds() < min_interval_s:
            errors.append(f"schedule.cron: fires every {_span(gap.total_seconds())} at "
                          f"times, more often than the minimum interval of "
                          f"{_span(min_interval_s)}")
    if errors:
        raise DefinitionError(errors)
    assert campaign is not None
    return campaign


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def parse_definition(raw: dict[str, Any]) -> Workflow:
    """Validate a workflow definition; raise :class:`DefinitionError` with every problem:
    the field errors first, then the graph's, which are checked even when fields fail."""
    errors: list[str] = []
    try:
        wf = Workflow.model_validate(raw)
    except ValidationError as exc:
        errors = _messages(exc)
    graph = _graph_errors(raw) if isinstance(raw, dict) else []
    errors += [e for e in graph if e not in errors]
    if errors:
        raise DefinitionError(errors)
    return wf


Definition = Workflow | AccountPolicy | Keyword | Campaign | CampaignControl


def parse_any(raw: dict[str, Any], min_interval_s: int = DEFAULT_MIN_INTERVAL) -> Definition:
    """Validate a definition of any kind (``kind``: workflow, account, keyword, campaign,
    campaign_control); ``min_interval_s``: the account's campaign minimum interval."""
    kind = raw.get("kind", "workflow") if isinstance(raw, dict) else None
    if kind == "workflow":
        return parse_definition(raw)
    if kind == "campaign":
        return parse_campaign(raw, min_interval_s)
    if kind == "campaign_control":
        control: CampaignControl = _validate(CampaignControl, raw)
        return control
    if kind == "account":
        policy: AccountPolicy = _validate(AccountPolicy, raw)
        return policy
    if kind == "keyword":
        keyword: Keyword = _validate(Keyword, raw)
        return keyword
    raise DefinitionError([f"kind: unknown definition kind {kind!r}: workflow, account, "
                           "keyword, campaign, campaign_control"])


def definition_key(definition: Definition) -> str:
    """The record key on the definitions topic: one record per version (a campaign's
    controls: one for cancel, one shared by pause and resume)."""
    if isinstance(definition, CampaignControl):
        slot = "cancel" if definition.action == "cancel" else "pause"
        return f"campaign_control:{definition.account}:{definition.campaign_id}:{slot}"
    ident = "policy" if isinstance(definition, AccountPolicy) else definition.id
    return f"{definition.kind}:{definition.account}:{ident}:{definition.version}"
