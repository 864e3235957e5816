"""The send gate: the one function every send passes before it leaves.

Pure: a decision from (send command, contact state, now). ``None`` means send; otherwise
the reason, which goes on ``<prefix>audit`` with the message id — no send is ever dropped
without a record. Workflows use it now; campaigns and keyword replies will, and the
compliance work adds frequency caps, quiet hours and suppression here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["REASONS", "check"]

#: Every reason the gate can give.
REASONS = ("no_destination", "no_consent", "opted_out", "expired")


def _consent(contact: dict[str, Any], channel: str) -> bool | None:
    consent = contact.get("consent", {})
    value = consent.get(channel)
    if value is None and channel == "mms":
        value = consent.get("sms")
    return value if isinstance(value, bool) else None


def check(command: dict[str, Any], contact: dict[str, Any], now: datetime) -> str | None:
    """Why ``command`` must not go out now, or None if it may.

    SMS and MMS need explicit consent (``consent.sms`` true; MMS falls back to it); email
    goes out unless the contact opted out (``consent.email`` false).
    """
    if not command.get("to"):
        return "no_destination"
    consent = _consent(contact, command["channel"])
    if consent is False:
        return "opted_out"
    if consent is None and command["channel"] in ("sms", "mms"):
        return "no_consent"
    if now >= datetime.fromisoformat(command["expires_at"]):
        return "expired"
    return None
