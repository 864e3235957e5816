"""What a handler asks the agent to emit, and the one builder for each kind of record.

Every input kind (event, keyword, wake-up, control) is handled by a pure function of the
shape ``(state, input, context, now) -> Outcome`` (:mod:`tables.handlers`). An
:class:`Outcome` carries the contact's next state and the :class:`Effects` to emit:

- send commands — :class:`streams.commands.SendCommand`, the contract's own model, built
  here by :func:`send_command` from a :class:`Draft` once the send gate let it go;
- contact events dripstream emits (state steps, keywords) — :func:`contact_event`;
- audit records (every send that did not go out, loop-guard stops…) — :func:`audit_record`;
- suppression-list changes (STOP, hard bounces, complaints) — :func:`suppression`.

Ids are deterministic (a hash of what caused the record), so a replayed input emits the
same ids again and consumers can drop the repeat.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, TypedDict

from streams.commands import SendCommand
from tables.contacts import ContactState

__all__ = [
    "Draft",
    "Effects",
    "Outcome",
    "audit_record",
    "contact_event",
    "iso",
    "message_id",
    "send_command",
    "suppression",
]


@dataclass
class Effects:
    """Records to emit, in order: send commands, contact events, audit records,
    suppression-list changes, experiment outcomes (tables/experiments.py)."""

    sends: list[SendCommand] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    suppressions: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def __iadd__(self, other: Effects) -> Effects:
        self.sends += other.sends
        self.events += other.events
        self.audit += other.audit
        self.suppressions += other.suppressions
        self.outcomes += other.outcomes
        return self

    def __bool__(self) -> bool:
        return bool(self.sends or self.events or self.audit or self.suppressions
                    or self.outcomes)


@dataclass
class Outcome:
    """A handler's result: the contact's next state (None: unchanged) and its effects.
    ``duplicate``: the input was a repeat (nothing to do but make sure the read model has
    the state)."""

    state: ContactState | None = None
    effects: Effects = field(default_factory=Effects)
    duplicate: bool = False


class Origin(TypedDict, total=False):
    kind: Literal["workflow", "keyword", "campaign"]
    campaign_id: str
    workflow_id: str
    version: int
    execution_id: str
    step_id: str
    keyword: str
    event_id: str
    depth: int


class Draft(TypedDict, total=False):
    """A send before the gate has decided: what :func:`tables.gate.decide` reads, and
    what :func:`send_command` turns into the contract's :class:`SendCommand`."""

    message_id: str
    channel: str
    account: str
    contact_id: str
    to: str | None
    body: str
    subject: str
    media_urls: list[str]
    transactional: bool
    purpose: str
    reply_from: str | None
    origin: Origin
    created_at: str
    expires_at: str
    variant: str
    category: str


@lru_cache(maxsize=64)
def iso(t: datetime) -> str:
    """ISO text of ``t``: a handler stamps the same ``now`` on many records, made once."""
    return t.isoformat()


def send_command(draft: Draft) -> SendCommand:
    """The send command the channel workers get (validated: a bug fails here, loudly)."""
    return SendCommand.model_validate(draft)


def message_id(account: str, execution_id: str, step_id: str, seq: int) -> str:
    """The same logical send always gets the same id; a retry never a new one."""
    digest = hashlib.sha256(f"{account}\x1f{execution_id}\x1f{step_id}\x1f{seq}".encode())
    return "msg-" + digest.hexdigest()[:32]


def audit_record(
    contact: Any, now: datetime, reason: str, **extra: Any
) -> dict[str, Any]:
    """An ``<prefix>audit`` record about ``contact``."""
    return {"account": contact["account"], "contact_id": contact["contact_id"],
            "reason": reason, "at": iso(now), **extra}


def contact_event(
    contact: Any, seed: str, source: str, event_type: str, data: dict[str, Any],
    depth: int, now: datetime,
) -> dict[str, Any]:
    """A contact event dripstream emits (state steps, keywords). Its id is a hash of
    ``seed``: the same cause always emits the same id, and it is short whatever the seed."""
    return {
        "specversion": "1.0",
        "id": "ds-" + hashlib.sha256(seed.encode()).hexdigest()[:32],
        "source": source,
        "type": event_type,
        "subject": contact["contact_id"],
        "time": iso(now),
        "account": contact["account"],
        "causationdepth": depth,
        "data": data,
    }


def suppression(
    contact: Any, address: str, reason: str, now: datetime, *, remove: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A change to the account's suppression list (``remove`` lifts one of ``reason``)."""
    return {"account": contact["account"], "address": address, "reason": reason,
            "contact_id": contact["contact_id"], "at": iso(now), "remove": remove,
            **extra}
