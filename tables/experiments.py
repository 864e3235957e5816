"""Experiments (``docs/experiments.md``): who goes down which branch of a ``split``, who is
in a workflow's control group, which entries converted, and the lift report. Pure: the
contact handler calls the first three with ``now``; the report reads outcome records.

**Assignment** hashes (account, contact, workflow, ``split``, step) — or (…, workflow,
``control``) for the control group — to a number in [0, 1) and reads it against the cumulative
weights: the same contact always lands in the same branch of the same step, in a replay,
a re-entry or on another worker; branches of different steps and workflows are
independent. Changing the weights of a split moves the contacts near the boundaries.

**Conversions**: a workflow with ``experiment.conversion`` opens a window per entry
(``contact["attribution"]``, kept apart from the execution, which may end and be pruned
first). The first matching event inside the window converts it (its revenue field, if
any, is taken); when the window closes — on the contact's own timer, like a wait — one
outcome record goes to ``<prefix>outcomes`` and the window is forgotten. The record's id
is the execution id: a batch redone after a crash writes the same record again, and the
report counts each id once.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from streams.definitions import parse_duration
from tables.contacts import Attribution, ContactState, Execution
from tables.effects import iso
from tables.triggers import MISSING, criteria_hold, resolve

__all__ = ["CONTROL", "HOLDOUT", "MAX_WINDOWS", "choose", "close_due", "close_unreached",
           "convert", "earliest_close", "in_control", "in_holdout", "note", "open_window",
           "report", "unit"]

CONTROL = "control"
#: The arm of the account holdout's members in an experiment (policy ``holdout``).
HOLDOUT = "holdout"
#: The arms sent no marketing: their sends are held back, audited with these reasons.
HELD_BACK = {CONTROL: "control_group", HOLDOUT: "holdout"}
#: Open conversion windows kept per contact; one more closes the oldest at once (its
#: outcome as it stands), so a state stays bounded under ``every_time`` re-entry.
MAX_WINDOWS = 50
#: The report's significance level (two-sided).
ALPHA = 0.05


def unit(*parts: str) -> float:
    """A number in [0, 1) from ``parts``: uniform, and the same on every machine."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_control(account: str, contact_id: str, workflow_id: str, percent: float) -> bool:
    return percent > 0 and unit(account, contact_id, workflow_id, CONTROL) * 100 < percent


def in_holdout(account: str, contact_id: str, percent: float) -> bool:
    """Is the contact in the account's holdout — kept out of every marketing send? A hash
    of (account, contact): stable while the percentage is; raising it only adds members,
    lowering it only releases some."""
    return percent > 0 and unit(account, contact_id, HOLDOUT) * 100 < percent


def choose(account: str, contact_id: str, workflow_id: str, step_id: str,
           branches: list[dict[str, Any]]) -> dict[str, Any]:
    """The branch of a split this contact goes down."""
    point = (unit(account, contact_id, workflow_id, "split", step_id)
             * sum(b["weight"] for b in branches))
    for branch in branches:
        point -= branch["weight"]
        if point < 0:
            return branch
    return branches[-1]


def open_window(contact: ContactState, ex: Execution, wf: Mapping[str, Any],
                now: datetime) -> dict[str, Any] | None:
    """Start the entry's conversion window (if the workflow counts one): now, or — with
    ``after: send`` — when the entry reaches its first send step (:func:`note`). Returns
    the outcome of a window closed early to make room (:data:`MAX_WINDOWS`), if any."""
    conversion = (wf.get("experiment") or {}).get("conversion")
    if not conversion:
        return None
    windows = contact.setdefault("attribution", {})
    closed = None
    if len(windows) >= MAX_WINDOWS:
        oldest = min(windows, key=lambda eid: windows[eid]["entered_at"])
        closed = _outcome(contact, oldest, windows.pop(oldest), now)
    span = parse_duration(conversion["window"])
    after_send = conversion.get("after", "entry") == "send"
    windows[ex["id"]] = {
        "workflow_id": wf["id"], "version": wf["version"], "variant": ex.get("variant"),
        "entered_at": iso(now),
        "until": None if after_send else iso(now + timedelta(seconds=span)),
        "event": conversion["event"], "criteria": list(conversion["criteria"]),
        "revenue_field": conversion.get("revenue"), "sends": 0, "converted_at": None,
        "revenue": None}
    if after_send:
        windows[ex["id"]]["window_s"] = span
    return closed


def note(contact: ContactState, ex: Execution, now: datetime | None = None, *,
         sent: bool = False) -> None:
    """Keep the window's arm and send count up to date with its execution. ``now``: the
    entry reached a send step (sent, held back, deferred or dropped), which opens an
    ``after: send`` window."""
    entry = contact.get("attribution", {}).get(ex["id"])
    if entry is not None:
        entry["variant"] = ex.get("variant")
        entry["sends"] += sent
        if now is not None and entry["until"] is None:
            entry["opened_at"] = iso(now)
            entry["until"] = iso(now + timedelta(seconds=entry.get("window_s", 0)))


def close_unreached(contact: ContactState) -> None:
    """An ``after: send`` window whose entry ended before any send step never opens: it
    closes (not converted) at the entry's end, on the next wake-up."""
    for eid, entry in contact.get("attribution", {}).items():
        if entry["until"] is None:
            ex = contact["executions"].get(eid)
            if ex is None or ex["status"] not in ("running", "waiting", "paused"):
                entry["until"] = (ex and ex["ended_at"]) or entry["entered_at"]


def convert(contact: ContactState, event: dict[str, Any], now: datetime) -> None:
    """An accepted event: it converts every open window it matches (the first only)."""
    for entry in contact.get("attribution", {}).values():
        if (entry["converted_at"] is None and entry["event"] == event["type"]
                and entry["until"] is not None
                and now < datetime.fromisoformat(entry["until"])
                and criteria_hold(entry["criteria"], event, contact)):
            entry["converted_at"] = iso(now)
            if entry["revenue_field"]:
                entry["revenue"] = _amount(resolve(entry["revenue_field"], event, contact))


def _amount(value: Any) -> float | None:
    if value is MISSING or isinstance(value, bool):
        return None
    try:
        number = float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None
    return number if math.isfinite(number) else None


def earliest_close(contact: ContactState) -> str | None:
    windows = contact.get("attribution")
    if not windows:
        return None
    closes = [w["until"] for w in windows.values() if w["until"] is not None]
    return min(closes, key=datetime.fromisoformat) if closes else None


def close_due(contact: ContactState, now: datetime) -> list[dict[str, Any]]:
    """The outcome records of the windows closed at ``now`` (they are forgotten)."""
    windows = contact.get("attribution")
    if not windows:
        return []
    due = sorted((eid for eid, w in windows.items()
                  if w["until"] is not None and datetime.fromisoformat(w["until"]) <= now),
                 key=lambda eid: (str(windows[eid]["until"]), eid))
    return [_outcome(contact, eid, windows.pop(eid), now) for eid in due]


def _outcome(contact: ContactState, eid: str, entry: Attribution,
             now: datetime) -> dict[str, Any]:
    until = entry["until"] or iso(now)  # one closed early to make room may not be open
    out = {"id": eid, "account": contact["account"], "contact_id": contact["contact_id"],
           "workflow_id": entry["workflow_id"], "version": entry["version"],
           "variant": entry["variant"] or "all", "entered_at": entry["entered_at"],
           "closed_at": min(until, iso(now), key=datetime.fromisoformat),
           "sends": entry["sends"], "converted": entry["converted_at"] is not None,
           "converted_at": entry["converted_at"], "revenue": entry["revenue"]}
    if "window_s" in entry:  # after: send — when it opened (None: no send step reached)
        out["opened_at"] = entry.get("opened_at")
    return out


# -- the report -----------------------------------------------------------------------
def report(outcomes: Iterable[Mapping[str, Any]], workflow_id: str) -> dict[str, Any]:
    """Per arm of ``workflow_id``: entered, sent, converted, the rate and its 95 %
    interval (Wilson), revenue; and each arm against the baseline — the control group,
    else the account holdout, else the first arm by name — its lift (relative, with the
    interval of the rate ratio) and the two-sided p-value of a two-proportion test. Each
    outcome (contact, execution id) once."""
    from statsmodels.stats.proportion import (
        confint_proportions_2indep,
        proportion_confint,
        test_proportions_2indep,
    )

    arms: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    for o in outcomes:
        ident = (str(o.get("contact_id")), str(o["id"]))
        if o["workflow_id"] != workflow_id or ident in seen:
            continue
        seen.add(ident)
        arm = arms.setdefault(o["variant"], {"entered": 0, "sent": 0, "converted": 0,
                                             "revenue": 0.0})
        arm["entered"] += 1
        arm["sent"] += o["sends"] > 0
        arm["converted"] += bool(o["converted"])
        arm["revenue"] += o["revenue"] or 0.0
    baseline = next((a for a in (CONTROL, HOLDOUT) if a in arms), min(arms, default=None))
    out = []
    for name in sorted(arms, key=lambda n: (n != baseline, n)):
        arm = arms[name]
        n, k = arm["entered"], arm["converted"]
        low, high = proportion_confint(k, n, alpha=ALPHA, method="wilson")
        row: dict[str, Any] = {
            "variant": name, **arm, "revenue": round(arm["revenue"], 2),
            "rate": k / n, "rate_interval": [float(low), float(high)],
            "revenue_per_contact": round(arm["revenue"] / n, 4), "baseline": name == baseline}
        base = arms.get(baseline) if baseline is not None else None
        if base is not None and name != baseline:
            n0, k0 = base["entered"], base["converted"]
            row.update(_versus(k, n, k0, n0, confint_proportions_2indep,
                               test_proportions_2indep))
        out.append(row)
    return {"workflow_id": workflow_id, "baseline": baseline, "alpha": ALPHA,
            "entries": len(seen), "arms": out}


def _versus(k: int, n: int, k0: int, n0: int, confint: Any, test: Any) -> dict[str, Any]:
    """``k`` of ``n`` against ``k0`` of ``n0``: the lift and whether it is significant."""
    if k0 == 0 or (k == n and k0 == n0) or (k == 0 and k0 == 0):
        return {"lift": None, "lift_interval": None, "p_value": None,
                "verdict": "not enough conversions to compare"}
    import numpy  # with statsmodels, only for a report: not on every worker's start

    lift = (k / n) / (k0 / n0) - 1
    with warnings.catch_warnings(), numpy.errstate(all="ignore"):
        # A rate of 0 or 1 divides by zero inside; the answers stay defined.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = confint(k, n, k0, n0, compare="ratio", method="log-adjusted",
                            alpha=ALPHA)
        p = float(test(k, n, k0, n0, compare="diff", method="score").pvalue)
    # An arm without conversions has no ratio interval worth showing (it would not even
    # hold its own -100 %).
    interval = None if k == 0 else [float(low) - 1, float(high) - 1]
    verdict = ("significant" if p < ALPHA else "not yet significant")
    return {"lift": lift, "lift_interval": interval, "p_value": p, "verdict": verdict}
