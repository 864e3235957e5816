"""Replays decide the same: the answers a batch's handlers got, recorded before its effects.

The contact agent makes a batch's effects durable before its states (``agents/contacts.py``),
so a crash in between replays the batch's records against the same stored states. The
handlers are pure, but besides the record and the state they read ``now``, the
definitions and the suppression list, and those move on: replayed a minute later, after a
new workflow version, a suppression or the start of quiet hours, a record could be decided
otherwise — a send already emitted re-judged deferred or dropped, uncounted in the caps,
its history saying it never went.

So every answer a batch's handlers get is *recorded* (:class:`Recorder`, standing in for
the registry and the suppression list), per input partition, with the batch's ``now``,
and written to ``<prefix>journal`` before any of the batch's effects leave. A record the
journal covers (same topic and partition, offset in the entry's range) is handled with a
:class:`Replayer` giving the same answers and the same ``now`` — the way Temporal replays a
workflow against its recorded history. Definitions are recorded as the (id, version) they
were (versions are write-once, every version is kept), not copied.

Pure: no I/O. The agent (``agents/journal.py``) writes entries and reads them back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson

from tables.compliance import default_policy
from tables.handlers import Definitions

__all__ = ["Entry", "Recorder", "Replayer", "Versions"]

log = logging.getLogger(__name__)

Answer = Any
Key = tuple[Any, ...]


class Versions(Definitions, Protocol):
    """What a worker's registry answers, and one definition by its exact version
    (``kind`` workflow / account / keyword / campaign; an account policy's id is
    ``policy``)."""

    def version(self, kind: str, account: str, ident: str, version: int
                ) -> dict[str, Any] | None:
        ...


def _ids(definitions: list[dict[str, Any]]) -> list[list[Any]]:
    return [[d["id"], d["version"]] for d in definitions]


class Recorder:
    """The definitions and suppression list as one batch's handlers on one partition see
    them: live the first time a question is asked, the same answer for the rest of the
    batch (but for the batch's own suppression changes, :meth:`own`), every answer kept
    for the journal (:meth:`entry`)."""

    def __init__(self, live: Versions, suppressed: Callable[[str, str], str | None],
                 now: datetime) -> None:
        self.live = live
        self._suppressed = suppressed
        self.now = now
        self.answers: dict[Key, Answer] = {}
        #: topic → [lowest, highest] offset handled with these answers.
        self.ranges: dict[str, list[int]] = {}
        #: Answers as the handlers got them (the dicts themselves), by the same keys.
        self._given: dict[Key, Any] = {}
        #: The batch's own suppression changes so far: (account, address) → reason.
        self._own: dict[tuple[str, str], str | None] = {}

    def cover(self, topic: str, offset: int) -> None:
        span = self.ranges.get(topic)
        if span is None:
            self.ranges[topic] = [offset, offset]
        else:
            span[0], span[1] = min(span[0], offset), max(span[1], offset)

    def _ask(self, key: Key, get: Callable[[], Any], record: Callable[[Any], Answer]) -> Any:
        if key not in self._given:
            value = get()
            self._given[key] = value
            self.answers[key] = record(value)
        return self._given[key]

    # -- the Definitions protocol ------------------------------------------------------
    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._ask(
            ("lookup", account, workflow_id, version),
            lambda: self.live.lookup(account, workflow_id, version), lambda v: v is not None)
        return found

    def active(self, account: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._ask(("active", account),
                                                lambda: self.live.active(account), _ids)
        return found

    def keywords(self, account: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._ask(("keywords", account),
                                                lambda: self.live.keywords(account), _ids)
        return found

    def campaigns(self, account: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._ask(("campaigns", account),
                                                lambda: self.live.campaigns(account), _ids)
        return found

    def policy(self, account: str) -> dict[str, Any]:
        def version(policy: dict[str, Any]) -> int | None:
            stored = self.live.version("account", account, "policy", policy["version"])
            return policy["version"] if stored is policy or stored == policy else None

        found: dict[str, Any] = self._ask(("policy", account),
                                          lambda: self.live.policy(account), version)
        return found

    def campaign_status(self, account: str, campaign_id: str) -> str:
        found: str = self._ask(("campaign_status", account, campaign_id),
                               lambda: self.live.campaign_status(account, campaign_id),
                               lambda v: v)
        return found

    def inactivity_thresholds(self, account: str) -> tuple[int, ...]:
        found: tuple[int, ...] = self._ask(
            ("thresholds", account), lambda: self.live.inactivity_thresholds(account), list)
        return found

    # -- the suppression list ----------------------------------------------------------
    def suppressed(self, account: str, address: str) -> str | None:
        if (account, address) in self._own:
            return self._own[(account, address)]
        found: str | None = self._ask(("suppressed", account, address),
                                      lambda: self._suppressed(account, address),
                                      lambda v: v)
        return found

    def own(self, change: dict[str, Any]) -> None:
        """A suppression change a record of this batch made: the records after it see it
        (a send right after a START goes out), here and in a replay."""
        _own(self._own, self.suppressed, change)

    def entry(self) -> Entry:
        return Entry(self.now, {t: (lo, hi) for t, (lo, hi) in self.ranges.items()},
                     dict(self.answers))


class Entry:
    """One journal record: a batch's ``now``, the offsets it covers on one partition (per
    input topic) and its answers."""

    __slots__ = ("answers", "now", "ranges")

    def __init__(self, now: datetime, ranges: dict[str, tuple[int, int]],
                 answers: dict[Key, Answer]) -> None:
        self.now = now
        self.ranges = ranges
        self.answers = answers

    def covers(self, topic: str, offset: int) -> bool:
        span = self.ranges.get(topic)
        return span is not None and span[0] <= offset <= span[1]

    def encode(self) -> bytes:
        return orjson.dumps({"v": 1, "now": self.now.isoformat(),
                             "ranges": {t: list(r) for t, r in self.ranges.items()},
                             "answers": [[list(k), v] for k, v in self.answers.items()]})

    @classmethod
    def decode(cls, value: bytes) -> Entry:
        raw = orjson.loads(value)
        return cls(datetime.fromisoformat(raw["now"]),
                   {t: (int(r[0]), int(r[1])) for t, r in raw["ranges"].items()},
                   {tuple(k): v for k, v in raw["answers"]})


class Replayer:
    """The answers of a journal entry, as the handlers got them the first time. A question
    the entry has no answer for (it never should: the handlers ask the same questions of
    the same record and state) gets the live answer, and is logged."""

    def __init__(self, entry: Entry, live: Versions,
                 suppressed: Callable[[str, str], str | None]) -> None:
        self.entry = entry
        self.live = live
        self._suppressed = suppressed
        self.unanswered = 0
        self._own: dict[tuple[str, str], str | None] = {}

    def _answer(self, key: Key) -> tuple[bool, Any]:
        if key in self.entry.answers:
            return True, self.entry.answers[key]
        self.unanswered += 1
        log.warning("replay: no recorded answer for %r; asking the live registry", key)
        return False, None

    def _versions(self, kind: str, account: str, ids: list[list[Any]]) -> list[dict[str, Any]]:
        out = []
        for ident, version in ids:
            found = self.live.version(kind, account, ident, int(version))
            if found is not None:
                out.append(found)
        return out

    def lookup(self, account: str, workflow_id: str, version: int) -> dict[str, Any] | None:
        known, found = self._answer(("lookup", account, workflow_id, version))
        if known and not found:
            return None
        return self.live.lookup(account, workflow_id, version)

    def active(self, account: str) -> list[dict[str, Any]]:
        known, ids = self._answer(("active", account))
        return self._versions("workflow", account, ids) if known else self.live.active(account)

    def keywords(self, account: str) -> list[dict[str, Any]]:
        known, ids = self._answer(("keywords", account))
        return self._versions("keyword", account, ids) if known else self.live.keywords(account)

    def campaigns(self, account: str) -> list[dict[str, Any]]:
        known, ids = self._answer(("campaigns", account))
        return (self._versions("campaign", account, ids) if known
                else self.live.campaigns(account))

    def policy(self, account: str) -> dict[str, Any]:
        known, version = self._answer(("policy", account))
        if not known:
            return self.live.policy(account)
        if version is None:
            return default_policy(account)
        return self.live.version("account", account, "policy", int(version)) or \
            default_policy(account)

    def campaign_status(self, account: str, campaign_id: str) -> str:
        known, status = self._answer(("campaign_status", account, campaign_id))
        return str(status) if known else self.live.campaign_status(account, campaign_id)

    def inactivity_thresholds(self, account: str) -> tuple[int, ...]:
        known, days = self._answer(("thresholds", account))
        return tuple(days) if known else self.live.inactivity_thresholds(account)

    def suppressed(self, account: str, address: str) -> str | None:
        if (account, address) in self._own:
            return self._own[(account, address)]
        known, reason = self._answer(("suppressed", account, address))
        if not known:
            return self._suppressed(account, address)
        return None if reason is None else str(reason)

    def own(self, change: dict[str, Any]) -> None:
        _own(self._own, self.suppressed, change)


def _own(own: dict[tuple[str, str], str | None],
         current: Callable[[str, str], str | None], change: dict[str, Any]) -> None:
    """Apply a suppression-list change as :class:`tables.registry.Suppressions` does: a
    removal lifts only a suppression of its own reason."""
    key = (change["account"], change["address"])
    if change.get("remove"):
        if current(*key) == change["reason"]:
            own[key] = None
    else:
        own[key] = str(change["reason"])
