"""The ingest agent against a real broker and Redis, with the worker as a real process."""

from __future__ import annotations

import signal
from typing import Any

import orjson
import pytest

from producers.publisher import build_event
from tests.stack import Stack, eventually

pytestmark = pytest.mark.integration

ACCOUNT = "acme"

# One valid event of every v1 type, in the order they are published for contact c-1.
VALID: list[tuple[str, dict[str, Any]]] = [
    ("contact.created", {"phone": "+14155550101", "email": "ada@example.com",
                         "timezone": "America/Los_Angeles", "locale": "en-US",
                         "attributes": {"first_name": "Ada"}, "consent": {"sms": True}}),
    ("contact.updated", {"attributes": {"plan": "pro"}, "consent": {"email": False}}),
    ("contact.tagged", {"tag": "vip"}),
    ("contact.added_to_group", {"group": "newsletter"}),
    ("contact.added_to_group", {"group": "beta"}),
    ("contact.removed_from_group", {"group": "beta"}),
    ("message.sent", {"message_id": "m-1", "channel": "sms"}),
    ("message.delivered", {"message_id": "m-1", "channel": "sms"}),
    ("message.failed", {"message_id": "m-2", "channel": "sms", "reason": "carrier"}),
    ("message.bounced", {"message_id": "m-3", "channel": "email", "reason": "no mailbox"}),
    ("message.clicked", {"message_id": "m-1", "channel": "sms", "url": "https://x.test"}),
    ("message.opened", {"message_id": "m-3", "channel": "email"}),
    ("campaign.started", {"campaign_id": "cmp-1"}),
    ("campaign.completed", {"campaign_id": "cmp-1"}),
    ("keyword.received", {"keyword": "JOIN", "text": "join vip", "channel": "sms",
                          "to": "+14155550000"}),
    ("purchase.completed", {"order_id": "o-1", "amount": "19.90", "currency": "USD",
                            "items": [{"sku": "a"}]}),
    ("contact.inactive", {"threshold_days": 30}),
    ("custom.trial_expiring", {"days_left": 3}),
]


def _event(contact: str, event_type: str, data: dict[str, Any], n: int) -> dict[str, Any]:
    return build_event(
        ACCOUNT, contact, event_type, data, event_id=f"{contact}-{n}",
        time=__import__("datetime").datetime.fromisoformat(f"2026-03-0{1 + n % 9}T12:00:00+00:00"),
    )


async def test_every_type_applied_and_invalid_neighbours_dead_lettered(stack: Stack) -> None:
    """Valid events of every type change state as documented; each invalid neighbour lands
    in the dead-letter topic with its reason, original bytes and source coordinates."""
    good = orjson.dumps(_event("c-1", "contact.tagged", {"tag": "x"}, 99))
    bad_zone = orjson.dumps(_event("c-1", "contact.updated", {"timezone": "Mars/Base"}, 98))
    no_subject = orjson.loads(good)
    del no_subject["subject"]
    invalid: list[tuple[bytes, bytes, str]] = [
        (b"{not json", b"c-1", "malformed_json"),
        (orjson.dumps(no_subject), b"c-1", "invalid_envelope"),
        (orjson.dumps({**orjson.loads(good), "type": "contact.exploded"}), b"c-1",
         "unknown_type"),
        (good, b"c-2", "key_mismatch"),
        (bad_zone, b"c-1", "invalid_timezone"),
        (orjson.dumps(_event("c-1", "purchase.completed", {"order_id": "o"}, 97)), b"c-1",
         "invalid_data"),
    ]
    sent: dict[str, Any] = {}
    for n, (event_type, data) in enumerate(VALID):
        await stack.publisher.send(_event("c-1", event_type, data, n))
        if n < len(invalid):
            value, key, reason = invalid[n]
            sent[reason] = (value, key, await stack.publisher.send_raw(value, key))
    stack.start_worker()

    state = await stack.wait_contact(ACCOUNT, "c-1", len(VALID), timeout=60)
    assert state["version"] == len(VALID)
    assert state["phone"] == "+14155550101"
    assert state["email"] == "ada@example.com"
    assert state["timezone"] == "America/Los_Angeles"
    assert state["locale"] == "en-US"
    assert state["attributes"] == {"first_name": "Ada", "plan": "pro"}
    assert state["consent"] == {"sms": True, "email": False}
    assert state["tags"] == ["vip"]
    assert state["groups"] == ["newsletter"]
    # Activity: the newest of created/clicked/opened/keyword/purchase/custom event times.
    assert state["last_activity_at"] == "2026-03-09T12:00:00+00:00"
    assert "seen" not in state

    records = await stack.read_topic("dead-letter", len(invalid))
    assert len(records) == len(invalid)
    by_reason = {dict(r.headers)["dripstream.reason"].decode(): r for r in records}
    assert set(by_reason) == set(sent)
    for reason, (value, key, meta) in sent.items():
        record = by_reason[reason]
        headers = {k: v.decode() for k, v in record.headers}
        assert record.value == value, reason
        assert record.key == key, reason
        assert headers["dripstream.topic"] == stack.topic("contact-events")
        assert int(headers["dripstream.partition"]) == meta.partition
        assert int(headers["dripstream.offset"]) == meta.offset
        assert headers["dripstream.detail"]


async def test_duplicates_processed_once_and_tenants_kept_apart(stack: Stack) -> None:
    """A repeated event id changes nothing; two accounts' c-1 are two contacts."""
    first = build_event("acme", "c-1", "contact.tagged", {"tag": "a"}, event_id="dup-1")
    await stack.publisher.send(first)
    await stack.publisher.send(first)  # an upstream retry
    await stack.publisher.send(build_event("acme", "c-1", "contact.tagged", {"tag": "b"},
                                           event_id="dup-2"))
    await stack.publisher.send(first)
    await stack.publisher.send(build_event("globex", "c-1", "contact.tagged", {"tag": "z"},
                                           event_id="dup-1"))
    stack.start_worker()

    globex = await stack.wait_contact("globex", "c-1", 1)
    acme = await stack.wait_contact("acme", "c-1", 2)
    # Nothing after dup-2 may raise acme's version: publish a marker and wait for it.
    await stack.publisher.send(build_event("acme", "c-1", "contact.tagged", {"tag": "c"},
                                           event_id="marker"))
    acme = await stack.wait_contact("acme", "c-1", 3)
    assert acme["version"] == 3
    assert acme["tags"] == ["a", "b", "c"]
    assert globex["tags"] == ["z"]
    assert await stack.read_model.contact_ids("acme") == {"c-1"}


async def test_worker_sigkilled_mid_stream_loses_nothing(stack: Stack) -> None:
    """A worker killed with SIGKILL mid-stream resumes: every event applied exactly once."""
    contacts, per_contact = 20, 15
    batch = [
        build_event(ACCOUNT, f"c-{c}", "contact.tagged", {"tag": f"t{n}"},
                    event_id=f"e-{c}-{n}")
        for n in range(per_contact)
        for c in range(contacts)
    ]
    half = len(batch) // 2
    for event in batch[:half]:
        await stack.publisher.send(event)
    worker = stack.start_worker()

    async def some_applied() -> bool:
        state = await stack.contact(ACCOUNT, "c-0")
        return bool(state and state["version"] >= 2)

    await eventually(some_applied, timeout=60, what="the first events applied")
    for event in batch[half:]:
        await stack.publisher.send(event)
    stack.kill(worker, signal.SIGKILL)
    stack.start_worker()

    for c in range(contacts):
        state = await stack.wait_contact(ACCOUNT, f"c-{c}", per_contact, timeout=60)
        assert state["tags"] == sorted(f"t{n}" for n in range(per_contact))
    # Replayed events after the crash were deduped, not counted again.
    marker = build_event(ACCOUNT, "c-0", "contact.tagged", {"tag": "end"}, event_id="end")
    await stack.publisher.send(marker)
    state = await stack.wait_contact(ACCOUNT, "c-0", per_contact + 1)
    assert state["version"] == per_contact + 1


async def test_a_broken_internal_record_is_dead_lettered_not_lost(stack: Stack) -> None:
    """A wake-up record that cannot be read goes to the dead-letter topic with its bytes
    and reason invalid_data, and the worker goes on with the next records."""
    stack.start_worker()
    await stack.publisher.send(build_event(ACCOUNT, "c-1", "contact.tagged", {"tag": "a"}))
    await stack.wait_contact(ACCOUNT, "c-1", 1)
    # A wake-up record (an internal topic) that is not JSON.
    meta = await stack.producer.send_and_wait(stack.topic("wakeups"), b"not json", key=b"c-1")
    await stack.publisher.send(build_event(ACCOUNT, "c-1", "contact.tagged", {"tag": "b"}))
    state = await stack.wait_contact(ACCOUNT, "c-1", 2)
    assert state["tags"] == ["a", "b"]
    (broken,) = await stack.read_topic("dead-letter", 1)
    headers = {k: v.decode() for k, v in broken.headers}
    assert headers["dripstream.reason"] == "invalid_data"
    assert broken.value == b"not json"
    assert headers["dripstream.topic"] == stack.topic("wakeups")
    assert int(headers["dripstream.offset"]) == meta.offset
    assert "JSONDecodeError" in headers["dripstream.detail"]
