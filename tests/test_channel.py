"""The channel-worker SDK's pure parts: retry schedule, the skip decision and its races,
reports, liveness, configuration checks, signatures, callbacks, the file provider's
faults. No services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka.structs import TopicPartition

from producers.channel import (
    ChannelWorker,
    Entry,
    Liveness,
    Outcome,
    SuppressionTimes,
    _Batch,
    audit_skip,
    backoff_delay,
    outcome_event,
    skip_reason,
)
from producers.providers import (
    FileFaults,
    SignatureError,
    WebhookProvider,
    callback_event,
    sign,
    verify,
)
from streams.commands import AuditRecord, SendCommand
from streams.events import parse_event
from streams.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def command(**over: Any) -> SendCommand:
    fields: dict[str, Any] = {
        "message_id": "msg-1", "channel": "sms", "account": "acme", "contact_id": "c-1",
        "to": "+14155550101", "body": "hi",
        "origin": {"kind": "workflow", "workflow_id": "w", "version": 1,
                   "execution_id": "w/e", "step_id": "s"},
        "created_at": T0.isoformat(), "expires_at": (T0 + timedelta(days=1)).isoformat()}
    fields.update(over)
    return SendCommand.model_validate(fields)


def state(updated: datetime, consent: dict[str, bool]) -> dict[str, Any]:
    return {"updated_at": updated.isoformat(), "consent": consent}


@pytest.mark.parametrize(("attempt", "rand", "expected"), [
    (1, 1.0, 0.5),     # first retry: up to the base
    (2, 1.0, 1.0),     # doubling
    (4, 1.0, 4.0),
    (10, 1.0, 30.0),   # capped
    (3, 0.25, 0.5),    # full jitter: a fraction of the step
    (3, 0.0, 0.0),
])
def test_backoff_delay(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, 0.5, 30.0, rand) == expected


LATER = T0 + timedelta(seconds=1)
SOON = T0 + timedelta(minutes=1)


@pytest.mark.parametrize(("over", "contact", "suppression", "now", "expected"), [
    # nothing against it
    ({}, None, None, SOON, None),
    # expired: at or past expires_at, whatever else
    ({}, None, None, T0 + timedelta(days=1), "expired"),
    ({"purpose": "help", "transactional": True}, None, None, T0 + timedelta(days=2),
     "expired"),
    # a STOP after the command left the gate: its suppression is newer than created_at
    ({}, None, ("opted_out", LATER), SOON, "suppressed"),
    # the same batch as the send (the engine stamps one time on both): still wins
    ({}, None, ("opted_out", T0), SOON, "suppressed"),
    # an old suppression the gate had seen: a lift this worker has not read yet
    ({}, None, ("opted_out", T0 - timedelta(days=3)), SOON, None),
    # ... but one within the margin may be one the gate's follower had not read
    ({}, None, ("bounced", T0 - timedelta(seconds=2)), SOON, "suppressed"),
    # the read model shows a state newer than the command with consent withdrawn
    ({}, state(LATER, {"sms": False}), None, SOON, "opted_out"),
    ({}, state(T0, {"sms": False}), None, SOON, "opted_out"),
    ({"channel": "mms"}, state(LATER, {"sms": False}), None, SOON, "opted_out"),
    ({}, state(LATER, {}), None, SOON, "no_consent"),
    # a state older than the command: the gate saw a newer one (projection lags)
    ({}, state(T0 - timedelta(seconds=1), {"sms": False}), None, SOON, None),
    # email goes unless consent is false
    ({"channel": "email", "to": "a@example.com"}, state(LATER, {}), None, SOON, None),
    ({"channel": "email", "to": "a@example.com"}, state(LATER, {"email": False}), None,
     SOON, "opted_out"),
    # compliance replies skip suppression and consent
    ({"purpose": "opt_out_confirmation", "transactional": True},
     state(LATER, {"sms": False}), ("opted_out", LATER), SOON, None),
    ({"purpose": "help", "transactional": True}, None, ("opted_out", LATER), SOON, None),
    # an opt-in confirmation is not exempt: a newer opt-out stops it
    ({"purpose": "opt_in_confirmation", "transactional": True}, None,
     ("opted_out", LATER), SOON, "suppressed"),
])
def test_skip_reason(over: dict[str, Any], contact: dict[str, Any] | None,
                     suppression: tuple[str, datetime] | None, now: datetime,
                     expected: str | None) -> None:
    assert skip_reason(command(**over), contact, suppression, now, margin_s=5) == expected


def test_margin_zero_trusts_every_older_suppression() -> None:
    """With no margin only a suppression at or after created_at vetoes."""
    old = ("bounced", T0 - timedelta(milliseconds=1))
    assert skip_reason(command(), None, old, SOON, margin_s=0) is None
    assert skip_reason(command(), None, ("bounced", T0), SOON, margin_s=0) == "suppressed"


@pytest.mark.parametrize(("status", "extra", "data"), [
    ("sent", {"provider_id": "p-1"}, {"provider_id": "p-1"}),
    ("sent", {"assumed": True}, {"assumed": True}),
    ("failed", {"code": "21211", "reason": "invalid number"},
     {"code": "21211", "reason": "invalid number", "provider_accepted": False}),
    ("failed", {"code": "30003", "provider_accepted": True},
     {"code": "30003", "reason": "30003", "provider_accepted": True}),
    ("bounced", {"reason": "no mailbox", "bounce_type": "hard"},
     {"reason": "no mailbox", "bounce_type": "hard"}),
])
def test_outcome_events_are_contract_events(status: str, extra: dict[str, Any],
                                            data: dict[str, Any]) -> None:
    event = outcome_event(command(), status, SOON, "urn:test", **extra)
    parsed = parse_event(orjson.dumps(event), b"c-1")
    assert parsed.type == f"message.{status}"
    assert event["id"] == f"msg-1:{status}"
    assert event["time"] == SOON.isoformat()
    assert event["data"] == {"message_id": "msg-1", "channel": "sms", **data}


@pytest.mark.parametrize(("depth", "expected"), [(None, 1), (0, 1), (3, 4)])
def test_a_report_is_one_hop_deeper_than_what_sent_it(depth: int | None, expected: int
                                                      ) -> None:
    """The engine's loop guard counts the channel hop (a message.failed that starts a
    workflow whose send fails again … stops at the guard's depth)."""
    origin = {"kind": "workflow", "workflow_id": "w", "version": 1, "execution_id": "w/e",
              "step_id": "s", "depth": depth}
    event = outcome_event(command(origin=origin), "failed", SOON, "urn:test", code="x")
    assert parse_event(orjson.dumps(event), b"c-1").envelope.causationdepth == expected


def test_audit_skip_is_an_audit_record() -> None:
    record = audit_skip(command(), "suppressed", SOON)
    AuditRecord.model_validate(record)
    assert record["stage"] == "channel"
    assert record["origin"] == {"kind": "workflow", "workflow_id": "w", "version": 1,
                                "execution_id": "w/e", "step_id": "s"}


def test_commit_offsets_stop_at_the_first_unfinished() -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    batch = _Batch(offsets={a: [10, 11, 12, 13], b: [5, 6]})
    batch.done |= {(a, 10), (a, 11), (a, 13), (b, 6)}
    assert batch.commit_offsets() == {a: 12}  # b's first record is not finished
    batch.done |= {(a, 12), (b, 5)}
    assert batch.commit_offsets() == {a: 14, b: 7}


@pytest.mark.parametrize(("joining_since", "last_progress", "waiting", "now", "expected"), [
    # joining the group for less than the stall time: a rebalance, not a stall
    (100.0, 0.0, False, 159.0, None),
    # no partitions for the stall time: stalled, whatever the input
    (100.0, 0.0, False, 160.0, "no partitions assigned for 60 s (joining the group)"),
    (100.0, 150.0, True, 175.0, "no partitions assigned for 75 s (joining the group)"),
    # input waiting, nothing finished for the stall time: stalled
    (None, 100.0, True, 160.0, "input waiting, no progress for 60 s"),
    # input waiting, progress within the stall time: working
    (None, 100.0, True, 159.0, None),
    # nothing waiting, however long since the last progress: idle
    (None, 0.0, False, 1000.0, None),
])
def test_liveness(joining_since: float | None, last_progress: float, waiting: bool,
                  now: float, expected: str | None) -> None:
    liveness = Liveness(60.0, last_progress, joining_since)
    assert expected == liveness.judge(now, waiting)
    assert (now if expected else None) == liveness.stalled_since


def test_liveness_counts_a_stall_from_when_it_was_judged_and_idle_time_is_no_stall() -> None:
    """Stalled at 160 and still at 170: stalled since 160; progress ends it. Input that
    arrives after an hour idle has its full stall time before it counts as stalled."""
    liveness = Liveness(60.0, 100.0)
    assert (liveness.judge(160.0, True), liveness.judge(170.0, True)) == (
        "input waiting, no progress for 60 s", "input waiting, no progress for 70 s")
    assert liveness.stalled_since == 160.0
    liveness.progress(171.0)
    assert (liveness.judge(172.0, True), liveness.stalled_since) == (None, None)
    assert liveness.judge(3772.0, False) is None  # an hour with nothing to do
    assert (liveness.judge(3831.0, True), liveness.judge(3832.0, True)) == (
        None, "input waiting, no progress for 60 s")


async def _deliver(cmd: SendCommand) -> Outcome:
    return Outcome.sent()


def test_callbacks_without_a_secret_are_refused_before_anything_connects() -> None:
    """A configuration error (``dripstream channel`` exits 2 with this line), raised when
    the worker is made: nothing has connected yet."""
    settings = Settings(channel_callback_port=0, broker="kafka://127.0.0.1:1")
    with pytest.raises(ValueError, match="DRIPSTREAM_CHANNEL_CALLBACK_SECRET"):
        ChannelWorker(settings, "sms", _deliver, policy="assume_sent")
    ChannelWorker(settings, "sms", _deliver, policy="assume_sent", callback_secret=b"s")


def test_suppression_times_follow_the_records() -> None:
    view = SuppressionTimes()
    at = (T0 - timedelta(hours=1)).isoformat()
    view.apply(b"acme:+1", orjson.dumps({"reason": "opted_out", "at": at}), 0)
    assert view.since("acme", "+1") == ("opted_out", T0 - timedelta(hours=1))
    # a manual suppression without `at`: the record's broker timestamp
    view.apply(b"acme:+2", orjson.dumps({"reason": "manual"}), int(T0.timestamp() * 1000))
    assert view.since("acme", "+2") == ("manual", T0)
    # a lift of another reason keeps it and its time; a lift of its own removes it
    view.apply(b"acme:+1", orjson.dumps({"reason": "bounced", "remove": True}), 0)
    assert view.since("acme", "+1") == ("opted_out", T0 - timedelta(hours=1))
    view.apply(b"acme:+1", orjson.dumps({"reason": "opted_out", "remove": True,
                                         "at": T0.isoformat()}), 0)
    assert view.since("acme", "+1") is None
    view.apply(b"acme:+2", None, 0)  # tombstone
    assert view.since("acme", "+2") is None


def test_entry_from_a_script_list_and_a_dict() -> None:
    flat = [b"state", b"sent", b"owner", b"w-1", b"reserved_at", b"12.5",
            b"provider_accepted", b"1", b"provider_id", b"p"]
    entry = Entry.of(flat)
    assert entry == Entry.of(dict(zip(flat[::2], flat[1::2], strict=True)))
    assert entry is not None and entry.final and entry.reserved_at == 12.5
    assert entry.provider_accepted and entry.provider_id == "p"
    assert Entry.of([]) is None and Entry.of({}) is None
    assert not Entry("reserved").final and not Entry("pending").final


# -- signatures ---------------------------------------------------------------------

SECRET = b"k3y"
BODY = b'{"status":"delivered"}'


def test_signature_round_trip() -> None:
    verify(SECRET, sign(SECRET, int(T0.timestamp()), BODY), BODY, T0)
    # during a rotation the sender may sign with both keys
    both = sign(b"old", int(T0.timestamp()), BODY) + "," + sign(
        SECRET, int(T0.timestamp()), BODY).split(",")[1]
    verify(SECRET, both, BODY, T0)


@pytest.mark.parametrize(("header", "body", "now", "message"), [
    (None, BODY, T0, "no signature"),
    ("v1=abc", BODY, T0, "no timestamp"),
    ("t=soon,v1=abc", BODY, T0, "no timestamp"),
    (sign(b"other", int(T0.timestamp()), BODY), BODY, T0, "mismatch"),
    (sign(SECRET, int(T0.timestamp()), BODY), BODY + b" ", T0, "mismatch"),  # tampered
    (sign(SECRET, int(T0.timestamp()), BODY), BODY, T0 + timedelta(seconds=301),
     "tolerance"),  # replayed later
    (sign(SECRET, int(T0.timestamp()) + 400, BODY), BODY, T0, "tolerance"),  # future
])
def test_bad_signatures(header: str | None, body: bytes, now: datetime, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(SECRET, header, body, now)


# -- callbacks ----------------------------------------------------------------------

ENTRY = Entry("sent", account="acme", contact_id="c-1", channel="email", provider_id="p-9")


@pytest.mark.parametrize(("payload", "kind", "ident", "data"), [
    ({"status": "delivered"}, "message.delivered", "m:delivered", {}),
    ({"status": "bounced", "bounce_type": "hard", "reason": "no mailbox"},
     "message.bounced", "m:bounced:hard", {"bounce_type": "hard", "reason": "no mailbox"}),
    ({"status": "bounced", "bounce_type": "soft"}, "message.bounced", "m:bounced:soft",
     {"bounce_type": "soft", "reason": "soft"}),
    ({"status": "complained"}, "message.bounced", "m:bounced:complaint",
     {"bounce_type": "complaint", "reason": "complaint"}),
    ({"status": "failed", "code": "550"}, "message.failed", "m:failed",
     {"code": "550", "reason": "550", "provider_accepted": True}),
    ({"status": "opened", "event_id": "ev-1"}, "message.opened", "m:opened:ev-1", {}),
    ({"status": "clicked", "url": "https://x.example/a"}, "message.clicked", None,
     {"url": "https://x.example/a"}),
])
def test_callback_events(payload: dict[str, Any], kind: str, ident: str | None,
                         data: dict[str, Any]) -> None:
    event = callback_event(payload, "m", ENTRY, T0, "urn:test")
    parsed = parse_event(orjson.dumps(event), b"c-1")
    assert parsed.type == kind
    assert event["account"] == "acme"
    assert event["data"] == {"message_id": "m", "channel": "email", "provider_id": "p-9",
                             **data}
    if ident is not None:
        assert event["id"] == ident


def test_clicks_on_two_links_are_two_events_and_a_repeat_is_one() -> None:
    def click(url: str) -> str:
        return str(callback_event({"status": "clicked", "url": url}, "m", ENTRY, T0,
                                  "urn:test")["id"])

    assert click("https://a.example") == click("https://a.example")
    assert click("https://a.example") != click("https://b.example")


@pytest.mark.parametrize("payload", [
    {"status": "read"}, {"status": "bounced", "bounce_type": "weird"},
    {"status": "delivered", "at": "2026-03-01T12:00:00"},  # naive
])
def test_callbacks_that_are_not_reports(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        callback_event(payload, "m", ENTRY, T0, "urn:test")


def test_callback_time_is_the_providers() -> None:
    event = callback_event({"status": "delivered", "at": "2026-03-01T11:00:00+00:00"}, "m",
                           ENTRY, T0, "urn:test")
    assert event["time"] == "2026-03-01T11:00:00+00:00"


# -- providers ----------------------------------------------------------------------

def test_file_faults_are_reproducible_fractions() -> None:
    faults = FileFaults.parse("transient=0.1,permanent=0.05,drop=0.05,delay_ms=3,seed=2")
    assert (faults.transient, faults.permanent, faults.drop, faults.delay_ms) == (
        0.1, 0.05, 0.05, 3.0)
    hits = [faults.hit(0.05, f"msg-{n}", "drop") for n in range(4000)]
    assert 0.035 < sum(hits) / len(hits) < 0.065
    assert hits == [faults.hit(0.05, f"msg-{n}", "drop") for n in range(4000)]
    assert not FileFaults().hit(0.0, "msg-1") and FileFaults().hit(1.0, "msg-1")


def test_webhook_wants_https_and_a_secret() -> None:
    with pytest.raises(ValueError, match="https"):
        WebhookProvider("http://example.com/hook", b"s")
    with pytest.raises(ValueError, match="secret"):
        WebhookProvider("https://example.com/hook", b"")
    WebhookProvider("http://127.0.0.1:1/hook", b"s", allow_http=True)  # dev/tests only


async def test_console_provider_prints_the_send() -> None:
    import io

    from producers.providers import ConsoleProvider

    out = io.StringIO()
    outcome = await ConsoleProvider(out).deliver(command(body="Hi Ada!"))
    assert outcome.status == "sent" and (outcome.provider_id or "").startswith("console-")
    assert out.getvalue() == "sms → +14155550101: Hi Ada!  (acme/c-1, msg-1)\n"


async def test_file_provider_records_every_call_and_looks_up_its_own(tmp_path: Any) -> None:
    from producers.channel import PermanentError, TransientError
    from producers.providers import FileProvider, read_calls

    provider = FileProvider(tmp_path / "calls.jsonl", FileFaults.parse("transient=1"))
    await provider.start()
    with pytest.raises(TransientError):
        await provider.deliver(command())
    provider.faults = FileFaults.parse("permanent=1")
    with pytest.raises(PermanentError):
        await provider.deliver(command())
    provider.faults = FileFaults.parse("drop=1")
    with pytest.raises(ConnectionResetError):  # recorded, then the answer is lost
        await provider.deliver(command())
    found = await provider.lookup(command())
    assert await provider.lookup(command(message_id="msg-2")) is None
    await provider.close()
    calls = read_calls(tmp_path / "calls.jsonl")
    assert [c["result"] for c in calls] == ["transient", "permanent", "accepted"]
    assert found is not None and found.provider_id == calls[2]["provider_id"]
