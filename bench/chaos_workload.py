"""The chaos run's workload: what is published, when, and what each contact is owed.

Pure and deterministic: :func:`make_plan` turns a :class:`Workload` (contact count,
seed, timings) and the instant the workers' clock shows when the run starts into a
:class:`Plan` — every record to publish, with the second of the run it is due, and every
contact's class. The verifier (:mod:`bench.chaos_verify`) derives what each contact must
get from the records actually read back from the input topic and this plan.

Each contact's fate is decided by its own inputs and the clock, never by timing luck:

- the workers' clock is put at 14:00 UTC (:data:`START_HOUR_UTC`), where quiet hours
  (08:00-21:00 local) are certain for the *quiet* zones (Tokyo 23:00, Auckland 02:00/03:00)
  and certainly not for the *open* ones (UTC, São Paulo, Berlin, New York) for hours, and
  where no open zone's calendar day ends for hours (the cap window);
- every contact belongs to one class (:data:`CLASSES`) whose sends follow from its inputs
  in publication order — a contact's records all go to one partition, so that order is the
  processing order. Two races are inherent and the verifier judges them from what it can
  observe (see there): a STOP against a wait firing on the wake-ups topic, and a purchase
  against a ``wait_for_event`` timeout.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from producers.publisher import build_event

__all__ = [
    "ACCOUNT",
    "CLASSES",
    "INVALID_KINDS",
    "OPEN_ZONES",
    "QUIET_ZONES",
    "START_HOUR_UTC",
    "Contact",
    "Plan",
    "Planned",
    "Workload",
    "definitions",
    "make_plan",
    "start_instant",
]

ACCOUNT = "chaos"
#: The workers' clock shows this hour (UTC) when the run starts.
START_HOUR_UTC = 14
#: Zones in quiet hours (SMS 08:00-21:00 local) at 14:00 UTC and for the next 5 hours.
QUIET_ZONES = ("Asia/Tokyo", "Pacific/Auckland")
#: Zones in the send window at 14:00 UTC and for the next 5 hours, in one calendar day.
OPEN_ZONES = ("UTC", "America/Sao_Paulo", "Europe/Berlin", "America/New_York")
#: The short code inbound SMS are written to.
SHORT_CODE = "+15550000000"

#: (class, share of the contacts). What each class is published and owed:
#: drip       created (segment drip) → workflow ``drip``: send, 30 s wait, send
#: cart_buy   created, custom.cart_abandoned, purchase 2-5 s later → ``cart``: send, then
#:            wait_for_event(purchase, timeout) → the thanks send
#: cart_idle  created, custom.cart_abandoned → ``cart``: send, the timeout → the reminder
#: capped     created, ``promos`` custom.promo within 8 s → ``promo`` (every time): the first
#:            ``day_cap`` sent, the rest audited frequency_capped
#: stop       created (segment drip), two promos, STOP (and for half a second STOP), two
#:            promos: drip's first send, the two promos and one opt-out confirmation go; the
#:            later promos are dropped; drip's second send only if it fired before the STOP
#: churn      created, 3-8 profile/report events (tags, groups, updates, purchases,
#:            deliveries, opens, clicks, campaign events, custom, sometimes HELP): state only,
#:            and a HELP reply
#: Quiet-zone contacts get every marketing send deferred (audited), replies still go.
CLASSES: tuple[tuple[str, float], ...] = (
    ("drip", 0.20), ("cart_buy", 0.12), ("cart_idle", 0.12), ("capped", 0.20),
    ("stop", 0.12), ("churn", 0.24),
)
#: Invalid records, each with the dead-letter reason it must get.
INVALID_KINDS = ("malformed_json", "invalid_envelope", "key_mismatch", "unknown_type",
                 "invalid_timezone", "invalid_data")


@dataclass(frozen=True)
class Workload:
    """What the run publishes. Times are seconds of the run (0 = the workers start)."""

    contacts: int = 20_000
    seed: int = 1
    #: Contacts start between these seconds of the run (their records follow within ~25 s).
    first_s: float = 5.0
    last_s: float = 450.0
    drip_wait_s: int = 30
    cart_timeout_s: int = 90
    promos: int = 8
    day_cap: int = 5
    #: Share of valid events published a second time (an upstream retry, same bytes).
    duplicate_rate: float = 0.05
    #: Invalid records per contact (spread over the run, keyed by random contacts).
    invalid_per_contact: float = 0.05
    #: Share of contacts published with librdkafka's CRC32 partitioner (forwarded).
    crc32_rate: float = 0.10
    #: Share of contacts in a quiet-hours zone.
    quiet_rate: float = 0.25


@dataclass(frozen=True)
class Contact:
    id: str
    klass: str
    zone: str
    quiet: bool
    crc32: bool
    phone: str


@dataclass(frozen=True)
class Planned:
    """One record to publish at second ``at`` of the run."""

    at: float
    key: bytes | None
    value: bytes
    #: The contact whose partition it goes to (its key's contact; "" for none).
    contact: str
    valid: bool
    #: Valid records: the event's id and type. Invalid ones: the reason expected.
    event_id: str | None = None
    event_type: str | None = None
    reason: str | None = None
    #: A second publication of an earlier record (an upstream retry: the same bytes).
    retry: bool = False


@dataclass
class Plan:
    workload: Workload
    #: What the workers' clock shows at second 0 of the run.
    start: datetime
    contacts: dict[str, Contact] = field(default_factory=dict)
    records: list[Planned] = field(default_factory=list)

    def by_value(self) -> dict[bytes, Planned]:
        """Each distinct record's bytes → its first planned publication."""
        out: dict[bytes, Planned] = {}
        for record in self.records:
            out.setdefault(record.value, record)
        return out

    @property
    def last_at(self) -> float:
        return max((r.at for r in self.records), default=0.0)


def start_instant(real: datetime) -> datetime:
    """The workers' clock at the run's start: the next day's :data:`START_HOUR_UTC`."""
    day = real.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, START_HOUR_UTC, tzinfo=UTC)


def definitions(w: Workload) -> list[dict[str, Any]]:
    """The account policy (5/day cap, quiet hours as default, deferred) and the three
    workflows."""
    return [
        {"kind": "account", "account": ACCOUNT, "version": 1, "brand": "Chaos",
         "timezone": "UTC",
         "caps": {"limits": {"day": w.day_cap, "week": 50, "month": 100},
                  "windows": "calendar"},
         "quiet_hours": {"send_from": "08:00", "send_until": "21:00",
                         "channels": ["sms", "mms"], "policy": "defer"}},
        {"kind": "workflow", "id": "drip", "account": ACCOUNT, "name": "drip", "version": 1,
         "trigger": {"event": "contact.created",
                     "criteria": [{"field": "contact.segment", "op": "eq", "value": "drip"}]},
         "start": "hello",
         "steps": {"hello": {"kind": "send_sms", "body": "Hi {{contact.first_name|there}}",
                             "next": "pause"},
                   "pause": {"kind": "wait", "duration": f"{w.drip_wait_s}s", "next": "again"},
                   "again": {"kind": "send_sms", "body": "Still there?"}}},
        {"kind": "workflow", "id": "cart", "account": ACCOUNT, "name": "cart", "version": 1,
         "trigger": {"event": "custom.cart_abandoned"}, "start": "nudge",
         "steps": {"nudge": {"kind": "send_sms", "body": "You left {{event.data.item}}",
                             "next": "wait"},
                   "wait": {"kind": "wait_for_event", "event": "purchase.completed",
                            "timeout": f"{w.cart_timeout_s}s", "next": "thanks",
                            "timeout_next": "remind"},
                   "thanks": {"kind": "send_sms", "body": "Thanks for your order"},
                   "remind": {"kind": "send_sms", "body": "Still want {{event.data.item}}?"}}},
        {"kind": "workflow", "id": "promo", "account": ACCOUNT, "name": "promo", "version": 1,
         "trigger": {"event": "custom.promo"}, "reentry": {"policy": "every_time"},
         "start": "offer", "steps": {"offer": {"kind": "send_sms",
                                               "body": "Offer {{event.data.n}}"}}},
    ]


def _classes(n: int, rng: random.Random) -> list[str]:
    """``n`` classes in :data:`CLASSES`' shares (rounded), shuffled."""
    out: list[str] = []
    for name, share in CLASSES:
        out += [name] * round(n * share)
    while len(out) < n:
        out.append("churn")
    del out[n:]
    rng.shuffle(out)
    return out


class _Builder:
    def __init__(self, plan: Plan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = rng
        self.w = plan.workload

    def event(self, c: Contact, at: float, n: int, event_type: str, data: dict[str, Any]
              ) -> None:
        event_id = f"{c.id}-{n}"
        when = self.plan.start + timedelta(seconds=at)
        value = orjson.dumps(build_event(ACCOUNT, c.id, event_type, data, event_id=event_id,
                                         time=when, source="urn:chaos:upstream"))
        record = Planned(at, c.id.encode(), value, c.id, True, event_id, event_type)
        self.plan.records.append(record)
        if self.rng.random() < self.w.duplicate_rate:  # the upstream retries it
            later = at + (0.0 if self.rng.random() < 0.5 else self.rng.uniform(1, 20))
            self.plan.records.append(Planned(later, record.key, value, c.id, True, event_id,
                                             event_type, retry=True))

    def contact(self, c: Contact, t0: float) -> None:
        first = f"F{c.id.rsplit('-', 1)[1]}"
        segment = "drip" if c.klass in ("drip", "stop") else c.klass
        self.event(c, t0, 0, "contact.created", {
            "phone": c.phone, "timezone": c.zone, "consent": {"sms": True},
            "attributes": {"first_name": first, "segment": segment}})
        n = 1
        rng = self.rng
        if c.klass in ("cart_buy", "cart_idle"):
            self.event(c, t0 + 1, n, "custom.cart_abandoned", {"item": f"sku-{n}"})
            n += 1
            if c.klass == "cart_buy":
                self.event(c, t0 + 1 + rng.uniform(1, 4), n, "purchase.completed",
                           {"order_id": f"o-{c.id}", "amount": "19.90", "currency": "USD"})
        elif c.klass == "capped":
            for k in range(self.w.promos):
                self.event(c, t0 + 1 + k, n, "custom.promo", {"n": k})
                n += 1
        elif c.klass == "stop":
            for k, at in enumerate((0.5, 1.0)):
                self.event(c, t0 + at, n, "custom.promo", {"n": k})
                n += 1
            self.event(c, t0 + 2, n, "keyword.received", self.inbound("STOP", c))
            n += 1
            if rng.random() < 0.5:  # a second STOP: no second confirmation
                self.event(c, t0 + 2.5, n, "keyword.received", self.inbound("stop", c))
                n += 1
            for k, at in enumerate((3.0, 4.0), start=2):
                self.event(c, t0 + at, n, "custom.promo", {"n": k})
                n += 1
        elif c.klass == "churn":
            for at in sorted(rng.uniform(1, 20) for _ in range(rng.randint(3, 8))):
                kind, data = self.churn_event(c, n)
                self.event(c, t0 + at, n, kind, data)
                n += 1

    def inbound(self, text: str, c: Contact) -> dict[str, Any]:
        return {"keyword": text.split()[0], "text": text, "channel": "sms", "to": SHORT_CODE,
                "from": c.phone}

    def churn_event(self, c: Contact, n: int) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        kind = rng.choice(("contact.updated", "contact.tagged", "contact.untagged",
                           "contact.added_to_group", "contact.removed_from_group",
                           "purchase.completed", "message.delivered", "message.opened",
                           "message.clicked", "message.bounced", "campaign.started",
                           "campaign.completed", "custom.visit", "keyword.received"))
        tag, group = rng.choice(("vip", "new", "eu")), rng.choice(("news", "beta"))
        mid = f"msg-{c.id}-{n}"
        options: dict[str, dict[str, Any]] = {
            "contact.updated": {"attributes": {"plan": rng.choice(("free", "pro"))}},
            "contact.tagged": {"tag": tag}, "contact.untagged": {"tag": tag},
            "contact.added_to_group": {"group": group},
            "contact.removed_from_group": {"group": group},
            "purchase.completed": {"order_id": f"o-{c.id}-{n}", "amount": "5",
                                   "currency": "EUR"},
            "message.delivered": {"message_id": mid, "channel": "sms"},
            "message.opened": {"message_id": mid, "channel": "email"},
            "message.clicked": {"message_id": mid, "channel": "sms", "url": "https://x.test/"},
            "message.bounced": {"message_id": mid, "channel": "sms", "reason": "busy",
                                "bounce_type": "soft"},
            "campaign.started": {"campaign_id": "spring"},
            "campaign.completed": {"campaign_id": "spring"},
            "custom.visit": {"page": "/pricing"},
            "keyword.received": self.inbound("HELP", c),
        }
        return kind, options[kind]

    def invalid(self, n: int, kind: str, c: Contact, at: float) -> None:
        tag = f"bad-{n}"
        when = (self.plan.start + timedelta(seconds=at)).isoformat()
        key = c.id.encode()
        event = build_event(ACCOUNT, c.id, "custom.visit", {"n": n}, event_id=tag,
                            source="urn:chaos:upstream")
        event["time"] = when
        if kind == "malformed_json":
            value = b'{"specversion": "1.0", "id": "' + tag.encode() + b'", "subject": '
        else:
            if kind == "invalid_envelope":
                event["time"] = when[:19]  # a naive time
            elif kind == "key_mismatch":
                key = f"{c.id}-elsewhere".encode()
            elif kind == "unknown_type":
                event["type"] = "contact.teleported"
            elif kind == "invalid_timezone":
                event.update(type="contact.updated", data={"timezone": "Mars/Olympus_Mons"})
            else:  # invalid_data
                event.update(type="purchase.completed",
                             data={"order_id": tag, "amount": "lots", "currency": "USD"})
            value = orjson.dumps(event)
        record = Planned(at, key, value, c.id, False, reason=kind)
        self.plan.records.append(record)
        if self.rng.random() < self.w.duplicate_rate:  # retried: dead-lettered twice
            self.plan.records.append(Planned(at + self.rng.uniform(0, 10), key, value, c.id,
                                             False, reason=kind, retry=True))


def _zones(n: int, quiet_rate: float, rng: random.Random) -> Iterator[tuple[str, bool]]:
    for _ in range(n):
        quiet = rng.random() < quiet_rate
        yield rng.choice(QUIET_ZONES if quiet else OPEN_ZONES), quiet


def make_plan(w: Workload, start: datetime) -> Plan:
    """Every contact and record of the run, from the workload and its seed."""
    rng = random.Random(w.seed)
    plan = Plan(w, start)
    builder = _Builder(plan, rng)
    classes = _classes(w.contacts, rng)
    for i, (klass, (zone, quiet)) in enumerate(zip(classes, _zones(w.contacts, w.quiet_rate,
                                                                    rng), strict=True)):
        c = Contact(f"c-{i}", klass, zone, quiet, rng.random() < w.crc32_rate,
                    f"+1415{i:07d}")
        plan.contacts[c.id] = c
        builder.contact(c, rng.uniform(w.first_s, w.last_s))
    ids = list(plan.contacts)
    for n in range(max(len(INVALID_KINDS), round(w.contacts * w.invalid_per_contact))):
        c = plan.contacts[rng.choice(ids)]
        builder.invalid(n, INVALID_KINDS[n % len(INVALID_KINDS)], c,
                        rng.uniform(w.first_s, w.last_s + 20))
    plan.records.sort(key=lambda r: r.at)
    return plan
