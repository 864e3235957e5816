"""What one batch did, for the dashboard: counts per account and the records worth listing.

Pure (no Redis, no Faust): the contact agent fills an :class:`Activity` while it computes a
batch, and once the batch's effects are acknowledged the read model adds it to the
per-minute stats and the recent lists (:meth:`tables.readmodel.ReadModel.put_many`) and
the worker's Prometheus counters take it (:mod:`streams.metrics`). A batch redone after a
crash counts again: these are operational figures, the topics are the record.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tables.gate import REASONS

__all__ = ["DEAD_LETTER_KEEP_BYTES", "NONSEND_REASONS", "UNKNOWN_ACCOUNT", "Activity",
           "dead_letter_entry", "minute_of"]

#: The account a dead letter is counted under when its record names none we can trust.
UNKNOWN_ACCOUNT = "_"
#: A recent dead letter keeps this much of the original bytes (the topic has all of them).
DEAD_LETTER_KEEP_BYTES = 4096
#: Audit reasons that are a send the gate did not let go now (``nonsends:<reason>``).
NONSEND_REASONS = frozenset(REASONS)


def minute_of(now: datetime) -> int:
    """The epoch second that starts ``now``'s minute (the stats hash it counts in)."""
    return int(now.timestamp()) // 60 * 60


def dead_letter_entry(
    account: str | None, reason: str, detail: str, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes, now: datetime,
) -> dict[str, Any]:
    """A dead letter as the recent list shows it: where it came from, why, and the first
    :data:`DEAD_LETTER_KEEP_BYTES` of the original value (base64) with ``truncated``."""
    kept = value[:DEAD_LETTER_KEEP_BYTES]
    return {"account": account or UNKNOWN_ACCOUNT, "reason": reason, "detail": detail[:500],
            "topic": topic, "partition": partition, "offset": offset,
            "key": None if key is None else key[:256].decode("utf-8", "replace"),
            "value": base64.b64encode(kept).decode(), "size": len(value),
            "truncated": len(kept) < len(value), "at": now.isoformat()}


@dataclass
class Activity:
    """One batch's counts (``(account, field) -> n``, fields ``events:<type>``,
    ``sends:<channel>``, ``nonsends:<reason>``, ``deadletters:<reason>``), its audit
    records and its dead letters, all stamped with the batch's minute."""

    now: datetime
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    audit: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    @property
    def minute(self) -> int:
        return minute_of(self.now)

    def __bool__(self) -> bool:
        return bool(self.counts or self.audit or self.dead_letters)

    def event(self, account: str, event_type: str) -> None:
        self.counts[account, f"events:{event_type}"] += 1

    def send(self, account: str, channel: str) -> None:
        self.counts[account, f"sends:{channel}"] += 1

    def audited(self, record: dict[str, Any]) -> None:
        self.audit.append(record)
        if record["reason"] in NONSEND_REASONS:
            self.counts[record["account"], f"nonsends:{record['reason']}"] += 1

    def dead_letter(self, entry: dict[str, Any]) -> None:
        self.dead_letters.append(entry)
        self.counts[entry["account"], f"deadletters:{entry['reason']}"] += 1

    def totals(self, kind: str) -> Counter[str]:
        """Counts of one kind (``events``, ``sends``…) over every account, by label."""
        out: Counter[str] = Counter()
        for (_, name), n in self.counts.items():
            head, _, label = name.partition(":")
            if head == kind:
                out[label] += n
        return out
