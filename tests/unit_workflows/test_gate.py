"""The send gate (tables/gate.py): every reason a send may not go out, and when it may."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tables.compliance import default_policy
from tables.gate import REASONS, decide

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POLICY = default_policy("acme")


def check(command: dict[str, Any], contact: dict[str, Any], now: datetime) -> str | None:
    """The gate's reason for a contact with no sends yet, inside the send window."""
    return decide(command, contact, POLICY, False, now).reason


def command(channel: str, **changes: Any) -> dict[str, Any]:
    """A send command that expires in a day."""
    to = "ada@example.com" if channel == "email" else "+14155550101"
    return {"message_id": "msg-1", "channel": channel, "to": to,
            "expires_at": (NOW + timedelta(days=1)).isoformat(), **changes}


GATE = [
    # SMS with consent: send.
    (command("sms"), {"sms": True}, None),
    # No phone number.
    (command("sms", to=None), {"sms": True}, "no_destination"),
    # An empty destination.
    (command("email", to=""), {}, "no_destination"),
    # No destination is reported before consent.
    (command("sms", to=None), {}, "no_destination"),
    # SMS without any consent recorded.
    (command("sms"), {}, "no_consent"),
    # SMS consent for another channel only.
    (command("sms"), {"email": True}, "no_consent"),
    # SMS opted out.
    (command("sms"), {"sms": False}, "opted_out"),
    # MMS without its own consent falls back to SMS consent.
    (command("mms"), {"sms": True}, None),
    # MMS falls back to an SMS opt-out.
    (command("mms"), {"sms": False}, "opted_out"),
    # MMS's own opt-out wins over SMS consent.
    (command("mms"), {"sms": True, "mms": False}, "opted_out"),
    # MMS's own consent wins over an SMS opt-out.
    (command("mms"), {"sms": False, "mms": True}, None),
    # MMS with no consent at all.
    (command("mms"), {}, "no_consent"),
    # Email needs no explicit consent.
    (command("email"), {}, None),
    # Email with consent.
    (command("email"), {"email": True}, None),
    # Email opted out.
    (command("email"), {"email": False}, "opted_out"),
    # Email is not stopped by an SMS opt-out.
    (command("email"), {"sms": False}, None),
    # Expired exactly now.
    (command("sms", expires_at=NOW.isoformat()), {"sms": True}, "expired"),
    # Expired a second ago.
    (command("email", expires_at=(NOW - timedelta(seconds=1)).isoformat()), {}, "expired"),
    # Expires in a second: still sent.
    (command("email", expires_at=(NOW + timedelta(seconds=1)).isoformat()), {}, None),
    # An opt-out is reported before expiry.
    (command("sms", expires_at=NOW.isoformat()), {"sms": False}, "opted_out"),
]


@pytest.mark.parametrize(("cmd", "consent", "expected"), GATE)
def test_gate(cmd: dict[str, Any], consent: dict[str, bool], expected: str | None) -> None:
    """The gate says why a send must not go out, or None when it may."""
    assert expected == check(cmd, {"consent": consent}, NOW)


def test_every_reason_is_listed() -> None:
    """Every reason this table produces is one the gate declares (the compliance reasons
    are covered in tests/unit_compliance)."""
    assert {row[2] for row in GATE} - {None} <= set(REASONS)
