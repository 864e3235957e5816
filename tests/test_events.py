"""The wire contract: streams/events.py against docs/contract.md and the rejection reasons."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.commands import SendCommand
from streams.events import EVENT_TYPES, Rejected, parse_event

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "contract.md"


def _doc_blocks(section: str) -> list[dict[str, Any]]:
    """The ```json blocks of one `## ` section of docs/contract.md."""
    text = CONTRACT.read_text()
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```json\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)
    return [orjson.loads(b) for b in blocks]


def _doc_examples() -> list[dict[str, Any]]:
    return _doc_blocks("Contact events")


def test_documented_send_command_is_valid() -> None:
    """The channel-worker contract's example is a valid SendCommand."""
    (example,) = _doc_blocks("Send commands")
    command = SendCommand.model_validate(example)
    assert command.origin.workflow_id == "welcome"


def test_every_documented_example_parses() -> None:
    """Each JSON example in docs/contract.md is a valid event of the type it shows."""
    examples = _doc_examples()
    assert examples
    for example in examples:
        event = parse_event(orjson.dumps(example), example["subject"].encode())
        assert event.type == example["type"]
        # Unknown fields in `data` are kept, not dropped.
        assert event.data.model_dump(mode="json", by_alias=True).keys() >= example["data"].keys()


def test_every_type_is_documented() -> None:
    """The contract shows an example of every named type and of a custom one."""
    documented = {e["type"] for e in _doc_examples()}
    assert documented - {"custom.trial_expiring"} == set(EVENT_TYPES)
    assert "custom.trial_expiring" in documented
    assert len(EVENT_TYPES) == 18


def _valid(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0", "id": "e-1", "source": "urn:test", "type": "contact.updated",
        "subject": "c-1", "time": "2026-03-01T12:00:00+01:00", "account": "acme",
        "data": {"timezone": "Europe/Berlin"},
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        # not JSON at all
        (b"{nope", b"c-1", "malformed_json"),
        # JSON, but not an object
        (b"[1, 2]", b"c-1", "malformed_json"),
        # empty record value
        (b"", b"c-1", "malformed_json"),
        # each required attribute missing
        *[(orjson.dumps(_valid(**{a: None})), b"c-1", "invalid_envelope")
          for a in ("specversion", "id", "source", "type", "subject", "time", "account")],
        # CloudEvents 0.3 is not v1
        (orjson.dumps(_valid(specversion="0.3")), b"c-1", "invalid_envelope"),
        # a time without an offset is ambiguous
        (orjson.dumps(_valid(time="2026-03-01T12:00:00")), b"c-1", "invalid_envelope"),
        # ':' would make account keys ambiguous
        (orjson.dumps(_valid(account="ac:me")), b"c-1", "invalid_envelope"),
        # a negative causation depth
        (orjson.dumps(_valid(causationdepth=-1)), b"c-1", "invalid_envelope"),
        # `data` must be an object
        (orjson.dumps(_valid(data=[1])), b"c-1", "invalid_envelope"),
        # not a v1 type
        (orjson.dumps(_valid(type="contact.deleted")), b"c-1", "unknown_type"),
        # custom names are lowercase words
        (orjson.dumps(_valid(type="custom.Trial Expiring")), b"c-1", "unknown_type"),
        # keyed by another contact
        (orjson.dumps(_valid()), b"c-2", "key_mismatch"),
        # not an IANA zone
        (orjson.dumps(_valid(data={"timezone": "Mars/Olympus"})), b"c-1", "invalid_timezone"),
        # an abbreviation is not a zone name either
        (orjson.dumps(_valid(data={"timezone": "Europe/Nowhere"})), b"c-1", "invalid_timezone"),
        # phone must be E.164
        (orjson.dumps(_valid(data={"phone": "0415 555 0101"})), b"c-1", "invalid_data"),
        # consent keys are channels
        (orjson.dumps(_valid(data={"consent": {"fax": True}})), b"c-1", "invalid_data"),
        # purchase without currency
        (orjson.dumps(_valid(type="purchase.completed", data={"order_id": "o", "amount": 1})),
         b"c-1", "invalid_data"),
        # negative amount
        (orjson.dumps(_valid(type="purchase.completed",
                             data={"order_id": "o", "amount": -1, "currency": "USD"})),
         b"c-1", "invalid_data"),
        # message events need their message id
        (orjson.dumps(_valid(type="message.delivered", data={"channel": "sms"})),
         b"c-1", "invalid_data"),
        # a failure needs its reason
        (orjson.dumps(_valid(type="message.failed",
                             data={"message_id": "m", "channel": "sms"})), b"c-1", "invalid_data"),
        # keywords arrive by sms or mms only
        (orjson.dumps(_valid(type="keyword.received",
                             data={"keyword": "STOP", "text": "stop", "to": "+1",
                                   "channel": "email"})), b"c-1", "invalid_data"),
    ],
)
def test_rejections_carry_a_precise_reason(value: bytes, key: bytes, reason: str) -> None:
    """Invalid input is rejected with the machine-readable reason of its first fault."""
    with pytest.raises(Rejected) as caught:
        parse_event(value, key)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_unknown_fields_are_kept() -> None:
    """Extra attributes and extra `data` fields survive parsing."""
    raw = _valid(type="purchase.completed", traceparent="00-abc",
                 data={"order_id": "o-1", "amount": "19.90", "currency": "EUR", "coupon": "X"})
    event = parse_event(orjson.dumps(raw), b"c-1")
    assert event.envelope.model_extra == {"traceparent": "00-abc"}
    assert event.data.model_extra == {"coupon": "X"}
    assert event.data.amount == Decimal("19.90")  # type: ignore[attr-defined]


def test_key_is_optional_and_time_keeps_its_offset() -> None:
    """Without a key only the envelope is checked; `time` stays aware with its offset."""
    event = parse_event(orjson.dumps(_valid()))
    assert event.contact_id == "c-1"
    assert event.time.utcoffset() is not None
    assert event.time.isoformat() == "2026-03-01T12:00:00+01:00"
