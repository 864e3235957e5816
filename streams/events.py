"""Wire contract v1: contact events as CloudEvents 1.0 (structured JSON mode).

Upstream publishers write these to ``<prefix>contact-events`` with the contact id as the
Kafka key. :func:`parse_event` turns the raw bytes into a :class:`ContactEvent` or raises
:class:`Rejected` with a machine-readable reason, which the contact agent puts on the
dead-letter topic beside the original bytes. ``docs/contract.md`` documents every type
with an example; a test parses each example with these models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "ContactEvent",
    "Envelope",
    "RejectReason",
    "Rejected",
    "data_model",
    "encode_event",
    "parse_event",
]

Channel = Literal["sms", "mms", "email"]

ACCOUNT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
CUSTOM_TYPE = re.compile(r"^custom\.[a-z0-9_]+(\.[a-z0-9_]+)*$")

#: The largest event (record value) accepted; a larger one is dead-lettered ``too_large``.
MAX_EVENT_BYTES = 256 * 1024

RejectReason = Literal[
    "too_large",  # the record is over MAX_EVENT_BYTES
    "malformed_json",  # the bytes are not a JSON object
    "invalid_envelope",  # a CloudEvents attribute is missing or has the wrong form
    "unknown_type",  # `type` is none of the v1 types nor custom.<name>
    "invalid_data",  # `data` does not fit the type's model
    "invalid_timezone",  # `data.timezone` is not an IANA zone name
    "key_mismatch",  # the Kafka key is not the event's `subject`
    "wrong_partition",  # internal: a routed record not on its contact's partition
    "limit_exceeded",  # valid, but it would take the contact past a documented limit
    "processing_error",  # valid, but processing it raised (a bug): kept for a replay
]


def check_zone(value: str) -> str:
    """An IANA zone name that this Python's zoneinfo knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


#: An IANA time zone name, e.g. ``Europe/Berlin``.
Zone = Annotated[str, AfterValidator(check_zone)]


class Rejected(Exception):
    """Input that cannot be accepted; ``reason`` is stable, ``detail`` is for people."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


class _Data(BaseModel):
    """Base of every ``data`` model: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", frozen=True)


#: The highest frequency cap per window (an account's or a contact's own): a contact
#: remembers its newest 256 sends (tables/compliance.py ``MAX_SENDS``), so every cap up to
#: this is counted exactly.
MAX_CAP = 200
CapLimit = Annotated[int, Field(ge=0, le=MAX_CAP)]


class ContactProfile(_Data):
    """``contact.created`` / ``contact.updated``: the fields present are set, absent ones kept."""

    phone: str | None = Field(None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    timezone: Zone | None = Field(None, description="IANA zone name, e.g. Europe/Berlin")
    locale: str | None = Field(None, max_length=35,
                               pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
    attributes: dict[str, Any] = Field(default_factory=dict)
    consent: dict[Channel, bool] = Field(default_factory=dict)
    caps: dict[Literal["day", "week", "month"], CapLimit] | None = Field(
        None, description="this contact's own frequency caps (override the account's)"
    )


class Tagged(_Data):
    tag: str = Field(min_length=1, max_length=128)


class GroupMembership(_Data):
    group: str = Field(min_length=1, max_length=128)


class MessageEvent(_Data):
    """``message.sent`` / ``delivered`` / ``opened``: a channel worker's report on a send."""

    message_id: str = Field(min_length=1)
    channel: Channel


class MessageClicked(MessageEvent):
    url: str | None = None


class MessageFailed(MessageEvent):
    """``message.failed``; ``provider_accepted`` false means it never reached the provider."""

    reason: str = Field(min_length=1)
    provider_accepted: bool = False


class MessageBounced(MessageEvent):
    reason: str = Field(min_length=1)
    bounce_type: Literal["hard", "soft", "complaint"] = Field(
        "hard", description="hard and complaint suppress the address; soft does not"
    )


class CampaignEvent(_Data):
    campaign_id: str = Field(min_length=1)
    run_id: str | None = None


class KeywordReceived(_Data):
    """An inbound SMS/MMS: first word as ``keyword``, the whole message as ``text``."""

    keyword: str = Field(min_length=1)
    text: str
    channel: Literal["sms", "mms"] = "sms"
    to: str = Field(min_length=1, description="the receiving number or short code")
    from_: str | None = Field(
        None, alias="from", pattern=r"^\+[1-9][0-9]{6,14}$",
        description="the sender's number (E.164); replies and opt-outs go to it",
    )


class PurchaseCompleted(_Data):
    order_id: str = Field(min_length=1)
    amount: Decimal = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")


class ContactInactive(_Data):
    last_activity_at: AwareDatetime | None = None
    threshold_days: int = Field(ge=1)


#: A message category's id (an account policy's ``categories``; docs/preferences.md).
CATEGORY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class PreferenceChange(BaseModel):
    """One subscription change: a category, on one channel or (no channel) all of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str = Field(pattern=CATEGORY_PATTERN)
    channel: Channel | None = Field(None, description="one channel; absent: every channel")
    subscribed: bool


class PreferencesUpdated(_Data):
    """``contact.preferences_updated``: the contact subscribed to or unsubscribed from
    message categories (docs/preferences.md)."""

    preferences: list[PreferenceChange] = Field(
        min_length=1, max_length=150, description="every category (at most 50) on each of "
                                                  "the 3 channels")
    source: str | None = Field(
        None, min_length=1, max_length=128,
        description="where the change was made (preference_page, api, a CRM…); default: "
                    "the event's source")


class CustomData(_Data):
    """``custom.<name>``: free-form."""


_DATA_MODELS: dict[str, type[_Data]] = {
    "contact.created": ContactProfile,
    "contact.updated": ContactProfile,
    "contact.tagged": Tagged,
    "contact.untagged": Tagged,
    "contact.added_to_group": GroupMembership,
    "contact.removed_from_group": GroupMembership,
    "message.sent": MessageEvent,
    "message.delivered": MessageEvent,
    "message.failed": MessageFailed,
    "message.bounced": MessageBounced,
    "message.clicked": MessageClicked,
    "message.opened": MessageEvent,
    "campaign.started": CampaignEvent,
    "campaign.completed": CampaignEvent,
    "keyword.received": KeywordReceived,
    "purchase.completed": PurchaseCompleted,
    "contact.inactive": ContactInactive,
    "contact.preferences_updated": PreferencesUpdated,
}

#: The named v1 types: the original system's 16, ``contact.untagged`` (what a workflow's
#: remove_tag step emits) and ``contact.preferences_updated``; ``custom.<name>`` is the
#: open-ended one.
EVENT_TYPES: tuple[str, ...] = tuple(_DATA_MODELS)


def data_model(event_type: str) -> type[_Data] | None:
    """The ``data`` model for a type, or None if the type is not part of v1."""
    if CUSTOM_TYPE.match(event_type):
        return CustomData
    return _DATA_MODELS.get(event_type)


class Envelope(BaseModel):
    """The CloudEvents attributes; other extension attributes are kept as they came."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    subject: str = Field(min_length=1, max_length=256, description="the contact id")
    time: AwareDatetime
    account: str = Field(pattern=ACCOUNT_PATTERN, description="the tenant id")
    datacontenttype: Literal["application/json"] = "application/json"
    causationdepth: int = Field(0, ge=0, description="how many events led to this one")
    data: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContactEvent:
    """A validated event: the envelope and its typed ``data``."""

    envelope: Envelope
    data: _Data

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def account(self) -> str:
        return self.envelope.account

    @property
    def contact_id(self) -> str:
        return self.envelope.subject

    @property
    def time(self) -> datetime:
        return self.envelope.time


def _describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_event(value: bytes | None, key: bytes | None = None) -> ContactEvent:
    """Validate one Kafka record of ``contact-events``; raise :class:`Rejected` if invalid.

    ``key`` is checked against ``subject`` when given: an event keyed by another contact
    would be processed on the wrong partition, out of order with that contact's events.
    """
    if value is not None and len(value) > MAX_EVENT_BYTES:
        raise Rejected("too_large", f"{len(value)} bytes, over the limit of {MAX_EVENT_BYTES}")
    try:
        raw = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise Rejected("malformed_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise Rejected("malformed_json", f"expected a JSON object, got {type(raw).__name__}")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise Rejected("invalid_envelope", _describe(exc)) from None
    model = data_model(envelope.type)
    if model is None:
        raise Rejected("unknown_type", f"unknown event type {envelope.type!r}")
    if key is not None and key.decode("utf-8", "replace") != envelope.subject:
        raise Rejected(
            "key_mismatch",
            f"Kafka key {key.decode('utf-8', 'replace')!r} != subject {envelope.subject!r}",
        )
    try:
        data = model.model_validate(envelope.data)
    except ValidationError as exc:
        zone_error = any(err["loc"][:1] == ("timezone",) for err in exc.errors())
        reason: RejectReason = "invalid_timezone" if zone_error else "invalid_data"
        raise Rejected(reason, "data." + _describe(exc)) from None
    return ContactEvent(envelope=envelope, data=data)


def encode_event(envelope: dict[str, Any]) -> bytes:
    """Serialize an event dict for the wire (used by the publisher SDK and the CLI)."""
    return orjson.dumps(envelope, default=str)
