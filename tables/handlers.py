"""The contact engine: one pure handler per input kind, all of one shape.

    handle_event(state, event, context, now)     -> Outcome   (contact events, keywords)
    handle_wakeup(state, wakeup, context, now)   -> Outcome   (a due wait)
    handle_control(state, command, context, now) -> Outcome   (pause/resume/cancel…)

``state`` is the contact's stored :class:`~tables.contacts.ContactState` (None if it has
none) and is never changed; the :class:`~tables.effects.Outcome` holds the next state
(None when nothing changed) and the effects to emit. The :class:`Context` gives the
handlers what every worker holds in full: definitions, the suppression list, settings.
No clock, no I/O: the contact agent (``agents/contacts.py``) does those, per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from streams.commands import Control
from streams.events import ContactEvent
from tables import executions, experiments, inactivity
from tables.campaigns import enrol_joiners
from tables.compliance import report_suppression
from tables.contacts import ContactState, apply_event, copy_state
from tables.effects import Effects, Outcome
from tables.gate import Compliance
from tables.keywords import on_keyword, system_keyword
from tables.preferences import Links

__all__ = [
    "Context",
    "Definitions",
    "Wakeup",
    "event_dict",
    "handle_control",
    "handle_event",
    "handle_wakeup",
]


class Definitions(Protocol):
    """The definitions every worker holds (:class:`tables.registry.Registry`)."""

    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        ...

    def active(self, account: str) -> list[dict[str, Any]]:
        ...

    def keywords(self, account: str) -> list[dict[str, Any]]:
        ...

    def policy(self, account: str) -> dict[str, Any]:
        ...

    def campaigns(self, account: str) -> list[dict[str, Any]]:
        ...

    def campaign_status(self, account: str, campaign_id: str) -> str:
        ...

    def inactivity_thresholds(self, account: str) -> tuple[int, ...]:
        ...


@dataclass(frozen=True)
class Context:
    definitions: Definitions
    #: ``(account, address)`` → why the address is suppressed, or None.
    suppressed: Callable[[str, str], str | None]
    max_depth: int = 5
    dedupe_window_s: float = 24 * 3600
    links: Links | None = None

    def compliance(self, account: str) -> Compliance:
        reason = self.suppressed
        return Compliance(
            self.definitions.policy(account),
            lambda address: reason(account, address) is not None,
            lambda address: reason(account, address),
            self.links,
        )


@dataclass(frozen=True, slots=True)
class Wakeup:
    """A due wait: the timer tick's record on ``<prefix>wakeups``."""

    account: str
    contact_id: str


def event_dict(event: ContactEvent) -> dict[str, Any]:
    """The event as the engine reads it (plain values, as triggers and templates see it)."""
    env = event.envelope
    return {"id": env.id, "type": env.type, "source": env.source, "time": env.time.isoformat(),
            "account": env.account, "causationdepth": env.causationdepth,
            "data": event.data.model_dump(mode="json", by_alias=True, exclude_none=True)}


def handle_event(
    state: ContactState | None, event: ContactEvent, ctx: Context, now: datetime
) -> Outcome:
    """Profile, dedupe, inactivity period, keywords, suppression reports, workflows. A
    repeat of a recent event id changes nothing (``Outcome.duplicate``). Raises
    :class:`streams.events.Rejected` (``limit_exceeded``) before any change."""
    applied = apply_event(state, event, now, ctx.dedupe_window_s)
    if applied.duplicate:
        return Outcome(duplicate=True)
    new, account = applied.state, event.account
    ev = event_dict(event)
    rules = ctx.compliance(account)
    inactivity.track(new["inactivity"], event.type, event.time, now,
                     rules.policy["inactivity"]["activity_types"])
    fx, react = Effects(), True
    if event.type == "keyword.received":
        fx += on_keyword(new, ev, ctx.definitions.keywords(account), rules, now)
        react = not system_keyword(ev, rules.policy)
    elif event.type == "contact.inactive":
        react = not inactivity.is_stale(new, ev)
    if (change := report_suppression(new, ev, now)) is not None:
        fx.suppressions.append(change)
    experiments.convert(new, ev, now)
    if react:
        fx += executions.on_event(new, ev, ctx.definitions.active(account),
                                  ctx.definitions.lookup, now, ctx.max_depth, rules)
        fx += enrol_joiners(new, ctx, now)
    return Outcome(new, fx)


def handle_wakeup(
    state: ContactState | None, wakeup: Wakeup, ctx: Context, now: datetime
) -> Outcome:
    """Fire what is due — waits, and inactivity thresholds reached (nothing early; a
    repeated wake-up finds nothing left)."""
    if state is None:
        return Outcome()
    new = copy_state(state)
    account = wakeup.account
    fx = executions.on_wakeup(
        new, ctx.definitions.lookup, now, ctx.compliance(account),
        lambda campaign_id: ctx.definitions.campaign_status(account, campaign_id),
        lambda: ctx.definitions.active(account))
    inactive = inactivity.on_wakeup(new, ctx.definitions.inactivity_thresholds(account), now)
    if fx is None and inactive is None:
        return Outcome()
    fx = fx or Effects()
    if inactive is not None:
        fx += inactive
    return Outcome(new, fx)


def handle_control(
    state: ContactState | None, command: Control, ctx: Context, now: datetime
) -> Outcome:
    """Pause, resume or cancel an execution, or cancel the contact's executions of a
    workflow (``cancel_all``); a repeated command changes nothing."""
    if state is None:
        return Outcome()
    new = copy_state(state)
    if command.action == "cancel_all":
        assert command.workflow_id is not None
        fx = executions.cancel_all(new, command.workflow_id, now)
    else:
        assert command.execution_id is not None
        fx = executions.control(new, command.action, command.execution_id, now)
    return Outcome() if fx is None else Outcome(new, fx)
