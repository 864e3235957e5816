"""The send gate with compliance (tables/gate.py ``decide``): the order of its checks, what
transactional sends and compliance replies skip, and drop versus defer."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tables.gate import REASONS, Decision, decide
from tests.unit_compliance.support import HOUR, LA, caps, local, policy, records, utc

DAY_TIME = local(LA, 2026, 3, 4, 12)  # Wednesday noon in Los Angeles: inside the window
NIGHT = local(LA, 2026, 3, 4, 22)  # 22:00: quiet hours
MORNING = local(LA, 2026, 3, 5, 8)  # when the window opens again
MIDNIGHT = local(LA, 2026, 3, 5)
FULL_DAY = records(*[local(LA, 2026, 3, 4, h) for h in (1, 2, 3, 4, 5)])  # five sends today
PHONE = "+14155550101"


def command(channel: str = "sms", **changes: Any) -> dict[str, Any]:
    """A marketing send that expires a day after Wednesday noon."""
    return {"message_id": "msg-1", "channel": channel,
            "to": "ada@example.com" if channel == "email" else PHONE,
            "expires_at": (DAY_TIME + timedelta(days=1)).isoformat(), **changes}


def contact(*, sms: bool | None = True, sends: list[dict[str, Any]] | None = None,
            timezone: str | None = "America/Los_Angeles", **changes: Any) -> dict[str, Any]:
    consent = {} if sms is None else {"sms": sms}
    return {"consent": consent, "sends": sends or [], "timezone": timezone, **changes}


EXPIRED = (NIGHT - HOUR).isoformat()
TRANSACTIONAL: dict[str, Any] = {"transactional": True}
STOP_REPLY: dict[str, Any] = {"transactional": True, "purpose": "opt_out_confirmation"}
HELP_REPLY: dict[str, Any] = {"transactional": True, "purpose": "help"}

GATE: list[tuple[dict[str, Any], dict[str, Any], bool, datetime, str, Decision]] = [
    # --- the order of the checks ----------------------------------------------------------
    # Everything wrong at once: no destination comes first.
    (command(to=None, expires_at=EXPIRED), contact(sms=False, sends=FULL_DAY), True, NIGHT,
     "drop", Decision("drop", "no_destination")),
    # Then the suppression list.
    (command(expires_at=EXPIRED), contact(sms=False, sends=FULL_DAY), True, NIGHT, "drop",
     Decision("drop", "suppressed")),
    # Then consent: an opt-out...
    (command(expires_at=EXPIRED), contact(sms=False, sends=FULL_DAY), False, NIGHT, "drop",
     Decision("drop", "opted_out")),
    # ...or no consent at all.
    (command(expires_at=EXPIRED), contact(sms=None, sends=FULL_DAY), False, NIGHT, "drop",
     Decision("drop", "no_consent")),
    # Then expiry.
    (command(expires_at=EXPIRED), contact(sends=FULL_DAY), False, NIGHT, "drop",
     Decision("drop", "expired")),
    # Then quiet hours (before caps): deferred to 08:00 local.
    (command(), contact(sends=FULL_DAY), False, NIGHT, "drop",
     Decision("defer", "quiet_hours_deferred", MORNING)),
    # Then caps: dropped by default...
    (command(), contact(sends=FULL_DAY), False, DAY_TIME, "drop",
     Decision("drop", "frequency_capped")),
    # ...or deferred to the next local midnight when the workflow asks for it.
    (command(), contact(sends=FULL_DAY), False, DAY_TIME, "defer",
     Decision("defer", "frequency_capped", MIDNIGHT)),
    # Nothing wrong: sent.
    (command(), contact(sends=FULL_DAY[:4]), False, DAY_TIME, "drop", Decision("send")),
    # --- transactional sends skip quiet hours and caps only -------------------------------
    # At night: sent.
    (command(**TRANSACTIONAL), contact(), False, NIGHT, "drop", Decision("send")),
    # Over the cap: sent.
    (command(**TRANSACTIONAL), contact(sends=FULL_DAY), False, DAY_TIME, "drop",
     Decision("send")),
    # Suppressed: dropped.
    (command(**TRANSACTIONAL), contact(), True, DAY_TIME, "drop", Decision("drop", "suppressed")),
    # Opted out: dropped.
    (command(**TRANSACTIONAL), contact(sms=False), False, DAY_TIME, "drop",
     Decision("drop", "opted_out")),
    # Expired: dropped.
    (command(expires_at=EXPIRED, **TRANSACTIONAL), contact(), False, NIGHT, "drop",
     Decision("drop", "expired")),
    # --- compliance replies also skip suppression and consent ------------------------------
    # The STOP confirmation reaches a number just suppressed and opted out, at night.
    (command(**STOP_REPLY), contact(sms=False, sends=FULL_DAY), True, NIGHT, "drop",
     Decision("send")),
    # The HELP reply reaches a number that never consented.
    (command(**HELP_REPLY), contact(sms=None), True, NIGHT, "drop", Decision("send")),
    # A compliance reply still needs a destination.
    (command(to=None, **STOP_REPLY), contact(), False, DAY_TIME, "drop",
     Decision("drop", "no_destination")),
    # A compliance reply still expires.
    (command(expires_at=EXPIRED, **HELP_REPLY), contact(), False, NIGHT, "drop",
     Decision("drop", "expired")),
    # Another purpose (a keyword's reply) gets no such pass.
    (command(transactional=True, purpose="keyword_reply"), contact(), True, DAY_TIME, "drop",
     Decision("drop", "suppressed")),
    # --- channels ---------------------------------------------------------------------------
    # Email at night: no quiet hours for email.
    (command("email"), contact(sms=None), False, NIGHT, "drop", Decision("send")),
    # Email over the all-channel cap: capped like any marketing send.
    (command("email"), contact(sms=None, sends=FULL_DAY), False, DAY_TIME, "drop",
     Decision("drop", "frequency_capped")),
    # MMS at night: deferred like SMS.
    (command("mms", media_urls=["https://x"]), contact(), False, NIGHT, "drop",
     Decision("defer", "quiet_hours_deferred", MORNING)),
]


@pytest.mark.parametrize(("cmd", "who", "suppressed", "now", "on_capped", "expected"), GATE)
def test_decide(
    cmd: dict[str, Any], who: dict[str, Any], suppressed: bool, now: datetime, on_capped: str,
    expected: Decision,
) -> None:
    """The gate reports the first check a send fails, in the documented order."""
    assert expected == decide(cmd, who, policy(), suppressed, now, on_capped)


POLICIES: list[tuple[dict[str, Any], dict[str, Any], datetime, str, Decision]] = [
    # A policy that drops in quiet hours: dropped with ``quiet_hours``.
    (policy(quiet_hours={"policy": "drop"}), contact(), NIGHT, "defer",
     Decision("drop", "quiet_hours")),
    # No quiet hours at all: sent at night.
    (policy(quiet_hours=None), contact(), NIGHT, "drop", Decision("send")),
    # A cap of 0: dropped even when the workflow would defer (there is no time to wait for).
    (policy(caps=caps(day=0)), contact(), DAY_TIME, "defer",
     Decision("drop", "frequency_capped")),
    # The contact's own cap of 0: the same.
    (policy(), contact(caps={"day": 0}), DAY_TIME, "defer", Decision("drop", "frequency_capped")),
    # A contact with no zone is judged in the account's zone: 22:00 in Los Angeles.
    (policy(timezone="America/Los_Angeles"), contact(timezone=None), NIGHT, "drop",
     Decision("defer", "quiet_hours_deferred", MORNING)),
    # ...the same instant is 06:00 UTC in the default account zone: still quiet until 08:00Z.
    (policy(), contact(timezone=None), NIGHT, "drop",
     Decision("defer", "quiet_hours_deferred", utc("2026-03-05T08:00"))),
    # The contact's own zone wins over the account's: 19:00 in Auckland, open.
    (policy(timezone="America/Los_Angeles"), contact(timezone="Pacific/Auckland"), NIGHT,
     "drop", Decision("send")),
    # A day cap in Auckland: the five sends made between 01:00 and 05:00 LA are yesterday
    # there (22:00-02:00 NZDT spans two Auckland days), so there is room.
    (policy(), contact(timezone="Pacific/Auckland", sends=FULL_DAY), NIGHT, "drop",
     Decision("send")),
    # Rolling windows per account: the same five sends are in the last 24 hours.
    (policy(caps=caps("rolling")), contact(sends=FULL_DAY), DAY_TIME, "defer",
     Decision("defer", "frequency_capped", local(LA, 2026, 3, 5, 1))),
]


@pytest.mark.parametrize(("rules", "who", "now", "on_capped", "expected"), POLICIES)
def test_decide_follows_the_policy(
    rules: dict[str, Any], who: dict[str, Any], now: datetime, on_capped: str,
    expected: Decision,
) -> None:
    """Quiet hours, caps and zones come from the account's policy and the contact."""
    assert expected == decide(command(), who, rules, False, now, on_capped)


def test_every_reason_is_declared() -> None:
    """Every reason the gate gives in these tables is one it declares."""
    reasons = {row[-1].reason for row in GATE} | {row[-1].reason for row in POLICIES}
    assert set() == reasons - {None, *REASONS}
