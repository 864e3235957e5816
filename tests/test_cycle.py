"""The contact agent's batch cycle (agents/contacts.py), step 1, without a broker: how
records become states, effects, dead letters and forwards. The durable steps run against
the real broker in tests/integration/test_batch_crash.py and the other integration tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agents.contacts import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_PREFIX_BYTES, Cycle
from agents.journal import Journal
from agents.timers import DueIndex
from producers.publisher import build_event
from streams.capabilities import TANSU
from streams.settings import Settings
from streams.topics import TopicNames
from tables.contacts import ContactState, decode
from tables.handlers import Context
from tables.journal import Entry, Replayer
from tables.store import partition_for
from tests.unit_workflows.support import Registry, definition

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
PARTITIONS = 4
SETTINGS = Settings(partitions=PARTITIONS, topic_prefix="t.")
NAMES = TopicNames.of(SETTINGS)


@dataclass
class Message:
    """A consumer record as the cycle reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Store:
    states: dict[str, ContactState] = field(default_factory=dict)

    def get(self, key: str) -> ContactState | None:
        return self.states.get(key)


class Suppressions:
    def __init__(self) -> None:
        self.listed: dict[tuple[str, str], str] = {}

    def reason(self, account: str, address: str) -> str | None:
        return self.listed.get((account, address))


class Worker:
    """What a Cycle reads of agents.worker.Worker."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.settings = SETTINGS
        self.names = NAMES
        self.store = Store()
        self.due_index = DueIndex()
        self.registry = registry or Registry()
        self.suppressions = Suppressions()
        self.journal = Journal(self)  # type: ignore[arg-type]  # a stand-in worker
        self.app = None
        self.capabilities = TANSU
        self.transactions = None  # at-least-once (exactly-once: its own tests below)
        self.healed: dict[int, int] = {}

    def context(self, definitions: Any = None, suppressed: Any = None) -> Context:
        return Context(definitions or self.registry, suppressed or self.suppressions.reason)


def event(contact: str, event_type: str, data: dict[str, Any], *, ident: str,
          partition: int | None = None, offset: int = 0) -> Message:
    value = orjson.dumps(build_event("acme", contact, event_type, data, event_id=ident,
                                     time=NOW))
    where = partition_for(contact, PARTITIONS) if partition is None else partition
    return Message(NAMES.events, where, offset, contact.encode(), value)


def cycle(worker: Worker | None = None) -> Cycle:
    return Cycle(worker or Worker(), NOW)  # type: ignore[arg-type]  # a stand-in worker


def written(c: Cycle, key: str = "acme:c-1") -> ContactState:
    """The state step 3 would write for ``key``, as the table would hold it."""
    c.seal()
    value = c.encoded[key]
    return decode(value)


def test_records_of_one_contact_make_one_write_in_order() -> None:
    """Three events for one contact in a batch: one changed state, every event applied in
    order, the revision one past the stored one."""
    c = cycle()
    for n, tag in enumerate(("a", "b", "c")):
        c.event(event("c-1", "contact.tagged", {"tag": tag}, ident=f"e{n}", offset=n))
    assert c.changed == {"acme:c-1"}
    state = written(c)
    assert (state["tags"], state["version"], state["revision"]) == (["a", "b", "c"], 3, 1)
    assert c.records == []


def test_a_repeat_in_the_same_batch_changes_nothing_more() -> None:
    """The same event id twice in one batch: applied once."""
    c = cycle()
    c.event(event("c-1", "contact.tagged", {"tag": "a"}, ident="e0"))
    c.event(event("c-1", "contact.tagged", {"tag": "b"}, ident="e0", offset=1))
    assert written(c)["tags"] == ["a"]


def test_an_invalid_record_is_dead_lettered_with_its_bytes_and_origin() -> None:
    """Bytes that are not JSON: a dead letter with the same key and bytes, the reason and
    the coordinates in headers; nothing else is written."""
    c = cycle()
    c.event(Message(NAMES.events, 2, 17, b"c-1", b"{nope"))
    ((topic, partition, key, value, headers),) = c.records
    names = dict(headers or [])
    # On the partition Kafka's default partitioner gives its key.
    assert (topic, key, value, partition) == (NAMES.dead_letter, b"c-1", b"{nope",
                                              partition_for("c-1", PARTITIONS))
    assert (names["dripstream.reason"], names["dripstream.partition"],
            names["dripstream.offset"]) == (b"malformed_json", b"2", b"17")
    assert c.changed == set()


def test_an_original_too_big_for_a_record_is_kept_as_prefix_size_and_digest() -> None:
    """A 2 MiB record: the dead letter holds its first bytes, its size and SHA-256."""
    value = b"{" + b"x" * (2 << 20)
    c = cycle()
    c.event(Message(NAMES.events, 0, 5, b"c-1", value))
    ((_, _, key, kept, headers),) = c.records
    names = dict(headers or [])
    assert len(value) > DEAD_LETTER_MAX_BYTES
    assert (key, kept) == (b"c-1", value[:DEAD_LETTER_PREFIX_BYTES])
    assert (names["dripstream.reason"], names["dripstream.truncated"]) == (b"too_large", b"true")
    assert names["dripstream.original_size"] == str(len(value)).encode()
    assert names["dripstream.original_sha256"] == hashlib.sha256(value).hexdigest().encode()


def test_an_event_on_another_partition_is_forwarded_unchanged() -> None:
    """A valid event on the wrong partition: forwarded to ``routed`` on the contact's
    partition with its key, bytes and headers, plus where it came from; not applied here."""
    home = partition_for("c-1", PARTITIONS)
    message = event("c-1", "contact.tagged", {"tag": "a"}, ident="e0",
                    partition=(home + 1) % PARTITIONS, offset=9)
    message.headers = [("traceparent", b"00-abc")]
    c = cycle()
    c.event(message)
    ((topic, partition, key, value, headers),) = c.records
    assert (topic, key, value, partition) == (NAMES.routed, b"c-1", message.value, home)
    assert headers == [("traceparent", b"00-abc"),
                       ("dripstream.origin.topic", NAMES.events.encode()),
                       ("dripstream.origin.partition", str(message.partition).encode()),
                       ("dripstream.origin.offset", b"9")]
    assert c.changed == set()


def test_a_routed_record_on_the_wrong_partition_is_a_dead_letter_not_a_loop() -> None:
    """Forwarding never forwards again: a routed record elsewhere is dead-lettered."""
    message = event("c-1", "contact.tagged", {"tag": "a"}, ident="e0")
    message.topic, message.partition = NAMES.routed, (message.partition + 1) % PARTITIONS
    c = cycle()
    c.event(message)
    ((topic, *_, headers),) = c.records
    assert (topic, dict(headers or [])["dripstream.reason"]) == (
        NAMES.dead_letter, b"wrong_partition")


def test_an_event_past_a_limit_leaves_the_contact_as_it_was() -> None:
    """The 257th tag is refused (limit_exceeded, dead-lettered); the tags before stay."""
    c = cycle()
    for n in range(256):
        c.event(event("c-1", "contact.tagged", {"tag": f"t{n}"}, ident=f"e{n}", offset=n))
    c.event(event("c-1", "contact.tagged", {"tag": "one-too-many"}, ident="x", offset=256))
    assert len(written(c)["tags"]) == 256
    ((topic, *_, headers),) = c.records
    assert (topic, dict(headers or [])["dripstream.reason"]) == (
        NAMES.dead_letter, b"limit_exceeded")


def test_a_handler_that_raises_dead_letters_the_record_and_goes_on() -> None:
    """A bug in a handler: the record is dead-lettered (processing_error), the contact's
    state is untouched, and the next record is handled."""
    c = cycle()
    c.event(event("c-1", "contact.tagged", {"tag": "a"}, ident="e0"))

    def broken(state: ContactState | None) -> Any:
        raise ZeroDivisionError("boom")

    c.apply("acme:c-1", Message(NAMES.events, 0, 1, b"c-1", b"{}"), broken, event=True)
    c.event(event("c-1", "contact.tagged", {"tag": "b"}, ident="e2", offset=2))
    assert written(c)["tags"] == ["a", "b"]
    ((topic, *_, headers),) = c.records
    names = dict(headers or [])
    assert (topic, names["dripstream.reason"]) == (NAMES.dead_letter, b"processing_error")
    assert b"ZeroDivisionError: boom" in names["dripstream.detail"]


def test_the_batch_before_is_read_while_its_write_is_in_flight() -> None:
    """A batch computed while the one before is still being written sees that one's
    states, and counts its own write as the next revision."""
    worker = Worker()
    first = cycle(worker)
    first.event(event("c-1", "contact.tagged", {"tag": "a"}, ident="e0"))
    second = Cycle(worker, NOW, first)  # type: ignore[arg-type]
    second.event(event("c-1", "contact.tagged", {"tag": "b"}, ident="e1", offset=1))
    state = written(second)
    assert (state["tags"], state["version"], state["revision"]) == (["a", "b"], 2, 2)


# -- replays decide the same (tables/journal.py) ------------------------------------------------

WELCOME = definition({"id": "welcome", "account": "acme", "name": "Welcome", "version": 1,
                      "trigger": {"event": "contact.created"}, "start": "hi",
                      "steps": {"hi": {"kind": "send_sms", "body": "v1"}}})


def signup_message(offset: int = 4) -> Message:
    return event("c-1", "contact.created", {"phone": "+14155550101", "consent": {"sms": True}},
                 ident="signup", offset=offset)


def test_a_batch_records_what_its_handlers_read_and_a_replay_reads_it_back() -> None:
    """The first time: v1's SMS goes out, and the answers (the active v1, no suppression)
    are recorded with the offsets they cover. Replayed from that entry after v2 was
    published and the address suppressed, an hour later: the same send, on v1, counted."""
    registry = Registry(WELCOME)
    worker = Worker(registry)
    first = cycle(worker)
    message = signup_message()
    first.event(message)
    [sent] = [orjson.loads(r[3]) for r in first.records if r[0] == NAMES.send("sms")]
    [(_, partition, _, value, _)] = worker.journal.records(first.recorders)
    entry = Entry.decode(value)
    assert (partition, entry.now, entry.ranges[NAMES.events]) == (
        message.partition, NOW, (4, 4))
    assert [["welcome", 1]] == entry.answers[("active", "acme")]
    assert entry.answers[("suppressed", "acme", "+14155550101")] is None

    registry.publish(definition({**WELCOME, "version": 2,
                                 "steps": {"hi": {"kind": "send_sms", "body": "v2"}}}))
    worker.suppressions.listed[("acme", "+14155550101")] = "manual"
    worker.journal.generation = 0
    worker.journal.entries = {message.partition: [
        (entry, Replayer(entry, registry, worker.suppressions.reason))]}
    again = Cycle(worker, NOW + timedelta(hours=1))  # type: ignore[arg-type]
    again.event(message)
    [resent] = [orjson.loads(r[3]) for r in again.records if r[0] == NAMES.send("sms")]
    state = written(again)
    assert (resent, [s["id"] for s in state["sends"]], again.recorders) == (
        sent, [sent["message_id"]], {})
    # A record the entry does not cover is decided afresh: v2, and suppressed.
    later = Cycle(worker, NOW + timedelta(hours=1))  # type: ignore[arg-type]
    later.event(event("c-1", "contact.created", {"phone": "+14155550101",
                                                  "consent": {"sms": True}},
                      ident="signup-2", offset=5))
    assert ([], ["suppressed"]) == (
        [r for r in later.records if r[0] == NAMES.send("sms")],
        [orjson.loads(r[3])["reason"] for r in later.records if r[0] == NAMES.audit])


async def test_a_batch_without_effects_queues_its_journal_and_the_next_waits_for_it(
        monkeypatch: Any) -> None:
    """The first batch only tags (no effects): its journal record is queued, not waited
    for (nobody saw what it decided; the journey lab needs its ``now``). The next batch
    sends: before its effects it waits for its own entry and the first's acknowledgement —
    unless the first is stored by then."""
    written: list[list[Any]] = []
    waited: list[int] = []

    async def send_batches(app: Any, records: Any) -> Any:
        written.append(list(records))
        n = len(written)

        async def acked() -> dict[Any, int]:
            waited.append(n)
            return {}

        return acked

    monkeypatch.setattr("agents.contacts.send_batches", send_batches)
    worker = Worker(Registry(WELCOME))
    quiet = cycle(worker)
    quiet.event(event("c-1", "contact.tagged", {"tag": "a"}, ident="t", offset=3))
    await quiet.journal()
    assert ([[{NAMES.events: (3, 3)}]], []) == (
        [[Entry.decode(r[3]).ranges for r in batch] for batch in written], waited)
    loud = Cycle(worker, NOW, quiet)  # type: ignore[arg-type]
    loud.event(signup_message(offset=4))
    await loud.journal()
    assert [{NAMES.events: (4, 4)}] == [Entry.decode(r[3]).ranges for r in written[1]]
    assert waited == [2, 1]
    quiet.stored.set()
    again = Cycle(worker, NOW, quiet)  # type: ignore[arg-type]
    again.event(signup_message(offset=5))
    await again.journal()
    assert [{NAMES.events: (5, 5)}] == [Entry.decode(r[3]).ranges for r in written[2]]
    assert waited == [2, 1, 3]


async def test_a_worker_thrown_out_of_the_group_writes_no_effects_and_no_state(
        monkeypatch: Any) -> None:
    """Expelled (a batch waited past the rebalance timeout): before its effects the cycle
    finds out and stops the worker (Fatal: exit 70), so nothing lands behind the new
    owner; only the journal entry went out, which the new owner reads for its replay."""
    from agents.contacts import Fatal

    written: list[str] = []

    async def send_batches(app: Any, records: Any) -> Any:
        written.extend(topic for topic, *_ in records)

        async def acked() -> dict[Any, int]:
            return {}

        return acked

    monkeypatch.setattr("agents.contacts.send_batches", send_batches)
    monkeypatch.setattr("agents.contacts.expelled", lambda app: True)
    c = cycle(Worker(Registry(WELCOME)))
    c.event(signup_message())
    c.seal()
    try:
        await c.finish()
    except Fatal as exc:
        assert "expelled" in str(exc)
    else:
        raise AssertionError("an expelled worker went on writing")
    assert written == [NAMES.journal]


# -- exactly-once: a batch's share per input partition ----------------------------------

class FakeProducer:
    def __init__(self, partition: int) -> None:
        self.partition = partition


class Transactions:
    """What the cycle reads of agents.transactions.Transactions: every transaction's
    records, changelog values and offsets, by partition; ``lost`` partitions are not
    this worker's."""

    def __init__(self, lost: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.lost = lost
        self.records: dict[int, list[tuple[str, int]]] = {}
        self.values: dict[int, set[str]] = {}
        self.offsets: dict[int, dict[Any, int]] = {}

    @asynccontextmanager
    async def transaction(self, partition: int) -> AsyncIterator[FakeProducer]:
        from agents.transactions import NotOwned

        if partition in self.lost:
            raise NotOwned(partition)
        yield FakeProducer(partition)

    async def commit(self, producer: FakeProducer, offsets: dict[Any, int]) -> None:
        self.offsets[producer.partition] = offsets


class TxStore(Store):
    def __init__(self, tx: Transactions) -> None:
        super().__init__()
        self.tx = tx
        self.applied: list[str] = []
        self.table = type("Table", (), {"changelog_topic_name": "changelog"})()
        #: The changelog's next offset per partition.
        self.ends: dict[int, int] = {}

    def partition(self, key: str) -> int:
        return partition_for(key.split(":", 1)[1], PARTITIONS)

    async def send(self, values: dict[str, bytes], *, producer: FakeProducer) -> Any:
        self.tx.values.setdefault(producer.partition, set()).update(values)
        end = self.ends.get(producer.partition, 0) + len(values)
        self.ends[producer.partition] = end

        async def written() -> Any:
            return ([(k.encode(), producer.partition, v) for k, v in values.items()],
                    {("changelog", producer.partition): end - 1})

        return written

    def apply(self, written: Any) -> None:
        self.applied += [key.decode() for key, _, _ in written[0]]


class Acks:
    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []

    def ack(self, message: Message) -> None:
        self.acked.append((message.partition, message.offset))


class ReadModel:
    def __init__(self) -> None:
        self.marks: list[dict[int, int]] = []

    async def put_many(self, rows: Any, **kwargs: Any) -> int:
        return len(rows)

    async def put_progress(self, progress: Any) -> None:
        pass

    async def mark_projected(self, marks: Any) -> None:
        self.marks.append(dict(marks))


def exactly_once_worker(tx: Transactions, monkeypatch: Any) -> Worker:
    worker = Worker(Registry(WELCOME))
    worker.transactions = tx  # type: ignore[assignment]
    worker.store = TxStore(tx)
    worker.app = type("App", (), {"consumer": Acks(),  # type: ignore[assignment]
                                  "consumer_generation_id": 3})()
    worker.read_model = ReadModel()  # type: ignore[attr-defined]

    async def send_batches(app: Any, records: Any, *, producer: FakeProducer) -> Any:
        tx.records.setdefault(producer.partition, []).extend(
            (topic, partition) for topic, partition, *_ in records)

        async def acked() -> dict[Any, int]:
            return {}

        return acked

    monkeypatch.setattr("agents.contacts.send_batches", send_batches)
    monkeypatch.setattr("agents.contacts.expelled", lambda app: False)
    monkeypatch.setattr("agents.contacts.metrics.observe_batch", lambda *a: None)
    return worker


def two_partitions() -> tuple[str, str]:
    """Two contacts on different partitions."""
    first = "c-1"
    other = next(f"c-{n}" for n in range(2, 50)
                 if partition_for(f"c-{n}", PARTITIONS) != partition_for(first, PARTITIONS))
    return first, other


def take_signups(c: Cycle, contacts: tuple[str, ...], offset: int) -> None:
    """Each contact's signup at ``offset`` of its partition, taken as compute() does."""
    profile = {"phone": "+14155550101", "consent": {"sms": True}}
    for n, contact in enumerate(contacts):
        message = event(contact, "contact.created", profile, ident=f"s-{n}", offset=offset)
        c.source = message.partition
        c.acks.append(message)
        c.event(message)


async def test_each_input_partition_commits_its_own_share(monkeypatch: Any) -> None:
    """Two signups on two partitions and an event that arrived on the wrong one: each
    partition's transaction holds its contacts' sends and states and its input offsets;
    the forward belongs to the partition it arrived on, and the journal entry (when and
    how its records were decided, for the journey lab) to its own; records are acked
    after."""
    tx = Transactions()
    worker = exactly_once_worker(tx, monkeypatch)
    first, other = two_partitions()
    p1, p2 = partition_for(first, PARTITIONS), partition_for(other, PARTITIONS)
    c = cycle(worker)
    take_signups(c, (first, other), offset=7)
    stray = event(first, "contact.tagged", {"tag": "x"}, ident="t", partition=p2, offset=8)
    c.source = p2
    c.acks.append(stray)
    c.event(stray)
    c.seal()
    await c.finish()
    assert tx.records[p1] == [(NAMES.journal, p1), (NAMES.send("sms"), p1)]
    assert sorted(tx.records[p2]) == sorted([(NAMES.journal, p2), (NAMES.send("sms"), p2),
                                             (NAMES.routed, p1)])
    assert tx.values == {p1: {f"acme:{first}"}, p2: {f"acme:{other}"}}
    assert tx.offsets == {p1: {(NAMES.events, p1): 8}, p2: {(NAMES.events, p2): 9}}
    assert sorted(worker.app.consumer.acked) == sorted([(p1, 7), (p2, 7), (p2, 8)])


async def test_a_partition_taken_away_writes_and_acks_nothing(monkeypatch: Any) -> None:
    """The batch's share of a partition no longer this worker's is not written, its
    states are not applied and its records are not acked: its new owner redoes them."""
    first, other = two_partitions()
    p1, p2 = partition_for(first, PARTITIONS), partition_for(other, PARTITIONS)
    tx = Transactions(lost={p2})
    worker = exactly_once_worker(tx, monkeypatch)
    c = cycle(worker)
    take_signups(c, (first, other), offset=3)
    c.seal()
    await c.finish()
    assert set(tx.offsets) == {p1} and p2 not in tx.records
    assert worker.store.applied == [f"acme:{first}"]  # type: ignore[attr-defined]
    assert worker.app.consumer.acked == [(p1, 3)]


async def test_a_new_owner_moves_no_projection_mark_before_it_checked_it(
    monkeypatch: Any,
) -> None:
    """A partition's mark says how far its committed states are in the read model. The
    first batches of a worker just given the partition commit before its check
    (heal_projection) has run: had they moved the mark, the states a dead owner committed
    and never projected would be hidden behind it for good (the three-broker chaos run:
    contacts missing from the read model). Once checked in this generation, they move it."""
    tx = Transactions()
    worker = exactly_once_worker(tx, monkeypatch)
    first, _ = two_partitions()
    p1 = partition_for(first, PARTITIONS)
    c = cycle(worker)
    take_signups(c, (first,), offset=0)
    c.seal()
    await c.finish()
    assert worker.read_model.marks == []  # type: ignore[attr-defined]
    worker.healed[p1] = 2  # checked, but in the generation before
    c = cycle(worker)
    take_signups(c, (first,), offset=1)
    c.seal()
    await c.finish()
    assert worker.read_model.marks == []  # type: ignore[attr-defined]
    worker.healed[p1] = 3  # checked in this generation (the fake app's)
    c = cycle(worker)
    take_signups(c, (first,), offset=2)
    c.seal()
    await c.finish()
    assert worker.read_model.marks == [{p1: 2}]  # type: ignore[attr-defined]
