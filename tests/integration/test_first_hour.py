"""A newcomer's first hour, at any hour of the day: the README's demo and its campaign
try-it, run with the CLI against a real worker whose clock is put at a chosen time
(streams/clock.py: the tests' clock offset file), not waited for."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.cli import DEMO_DEFINITIONS, DEMO_WORKFLOW
from tests.integration.test_cli import dripstream
from tests.stack import Stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]

#: A January day: Los Angeles is UTC-8, its quiet hours end at 08:00 = 16:00 UTC.
DAY = datetime(2027, 1, 15, tzinfo=UTC)


def readme_campaign(at: datetime) -> dict[str, Any]:
    """The README's campaign, `at` as its `date -u -d '+2 minutes'` makes it."""
    return {"kind": "campaign", "id": "hello", "account": "demo", "name": "Hello",
            "version": 1,
            "content": {"channel": "sms", "body": "Hi {{contact.first_name|there}}!"},
            "schedule": {"type": "once", "at": at.strftime("%Y-%m-%dT%H:%M"),
                         "timezone": "UTC"},
            "delivery": {"misfire_grace": "10m"}}


async def _first_hour(stack: Stack, utc_hour: int, definitions: tuple[dict[str, Any], ...]
                      ) -> dict[str, Any]:
    """`dev --demo`'s definitions and events, then the README's campaign two minutes
    later; the clock skips to past it. The campaign's status once it has finished."""
    stack.set_time(DAY.replace(hour=utc_hour))
    for definition in definitions:
        defined = await dripstream(stack.env, "define", "-", stdin=json.dumps(definition))
        assert 0 == defined.returncode, defined.stderr
    stack.start_worker()
    await stack.publisher.publish("demo", "c-1", "contact.created", {
        "phone": "+14155550101", "timezone": "America/Los_Angeles",
        "attributes": {"first_name": "Ada"}, "consent": {"sms": True}})
    await stack.wait_contact("demo", "c-1", 1)
    campaign = await dripstream(stack.env, "define", "-", stdin=json.dumps(
        readme_campaign(stack.now() + timedelta(minutes=2))))
    assert (0, "") == (campaign.returncode, campaign.stderr), campaign.stderr
    stack.skip(180)

    async def finished() -> dict[str, Any] | None:
        shown = await dripstream(stack.env, "campaign", "status", "hello", "--account", "demo")
        status: dict[str, Any] = json.loads(shown.stdout)
        return status if status["status"] == "completed" else None

    return await eventually(finished, timeout=60, what="the campaign completed")


@pytest.mark.parametrize("utc_hour", [
    # 02:00 in Los Angeles: the default quiet hours held this send ("deferred 1").
    10,
    # 12:00 in Los Angeles.
    20,
])
async def test_the_readme_campaign_sends_at_any_hour(stack: Stack, utc_hour: int) -> None:
    """With the demo's definitions, the README's campaign sends to the demo contact
    whatever the time of day, and its status says `completed` (it said `running`)."""
    status = await _first_hour(stack, utc_hour, DEMO_DEFINITIONS)

    [occurrence] = status["occurrences"]
    assert (1, 0, []) == (occurrence["sent"], occurrence["deferred"], status["not_sent"])
    assert status["next_occurrence"] is None


@pytest.mark.slow
async def test_a_deferred_send_says_why_and_until_when(stack: Stack) -> None:
    """With the default quiet hours (no demo policy) at 02:00 in Los Angeles, the send is
    deferred, and `campaign status` and `contact` say why and until when (08:00 there)."""
    status = await _first_hour(stack, 10, (DEMO_WORKFLOW,))

    [occurrence] = status["occurrences"]
    [held] = status["not_sent"]
    assert (0, 1) == (occurrence["sent"], occurrence["deferred"])
    assert ("quiet_hours_deferred", "defer", 1, "2027-01-15T16:00:00+00:00") == (
        held["reason"], held["action"], held["contacts"], held["until"])
    assert "quiet hours" in held["why"]
    shown = await dripstream(stack.env, "contact", "demo", "c-1")
    assert 0 == shown.returncode
    [line] = [line for line in shown.stderr.splitlines() if line.startswith("held: ")]
    assert line.startswith("held: execution ")
    assert "deferred until 2027-01-15T16:00:00+00:00 (quiet_hours_deferred: " in line
    # Completed: nothing is left to pause or resume (a cancel still drops the deferred
    # send); it was accepted and flipped the status to paused (the new-user trial).
    paused = await dripstream(stack.env, "campaign", "pause", "hello", "--account", "demo")
    assert (1, "campaign demo/hello is completed: no occurrence is left to pause\n") == (
        paused.returncode, paused.stderr)
