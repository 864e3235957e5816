"""The contact agent: everything that happens to a contact, in order, a batch at a time.

It consumes four co-partitioned topics keyed by contact id — ``contact-events`` (from
upstream), ``routed`` (events forwarded here from another partition), ``wakeups`` (due
waits, from :mod:`agents.timers`) and ``control`` (operators) — as batches of records
(:class:`streams.compat.Batches`: up to ``DRIPSTREAM_BATCH_MAX`` records, whatever the
consumer fetched). For each batch, a :class:`Cycle`:

1. runs every record, in input order, through the pure handler of its kind
   (:mod:`tables.handlers`) against the contact's latest state — a contact touched by ten
   records sees all ten, in order — collecting the effects (send commands, contact
   events, audit records, suppressions), the dead letters and the forwards;
2. produces all of them and waits once for the broker's acknowledgements;
3. writes each changed contact's state once (one changelog record per contact), and waits
   for those acknowledgements;
4. projects the changed contacts to Redis in one pipeline;
5. only then acks the batch's records, so Faust may commit their offsets.

A crash before 3 redoes the batch: the same effects with the same ids (a send may be
repeated with its original ``message_id``, none is lost). A crash after 3 finds the
dedupe marks and does nothing but re-project. There are no transactions (the embedded
broker has none): this ordering is the guarantee. A record the logic cannot handle is
dead-lettered (``processing_error``) and the batch goes on; an error of the broker or
of the process itself exits the worker (status 70) so the batch is redone after the
restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.types import TP
from pydantic import ValidationError
from redis.exceptions import RedisError

from agents import inputguard
from agents.timers import state_due
from agents.transactions import NotOwned
from streams import compat, metrics
from streams.app import MAX_REQUEST_BYTES
from streams.commands import Control
from streams.compat import expelled, send_batches
from streams.events import ACCOUNT_PATTERN, Rejected, parse_event
from tables.activity import Activity, dead_letter_entry
from tables.campaigns import handle_delivery
from tables.contacts import (
    MAX_STATE_BYTES,
    ContactState,
    contact_key,
    decode,
    encode_json,
    split_key,
)
from tables.effects import Effects, Outcome, audit_record
from tables.handlers import Context, Wakeup, handle_control, handle_event, handle_wakeup
from tables.journal import Recorder, Replayer
from tables.store import partition_for

if TYPE_CHECKING:
    from agents.campaigns import Slice
    from agents.worker import Worker

#: The exit status of every fatal error (EX_SOFTWARE): restart the worker, the batch is
#: redone. (agents.worker re-exports it.)
EXIT_FATAL = 70

__all__ = ["DEAD_LETTER_MAX_BYTES", "Cycle", "compute_slice", "install"]

log = logging.getLogger(__name__)

#: The largest value one record may carry: the producer's request limit less room for the
#: key, headers and batch framing (900 KiB).
RECORD_MAX_BYTES = MAX_REQUEST_BYTES - 124 * 1024
#: A dead letter keeps the original bytes up to this size; a larger original keeps its
#: first :data:`DEAD_LETTER_PREFIX_BYTES`, with its size and SHA-256 in the headers.
DEAD_LETTER_MAX_BYTES = RECORD_MAX_BYTES
DEAD_LETTER_PREFIX_BYTES = 64 * 1024
#: Batches whose durable part may be running at once (see ``contact_agent``).
IN_FLIGHT = 2
#: The largest state a wake-up or a control command may leave (events stop at
#: MAX_STATE_BYTES); past it the change cannot be stored and is audited instead.
HARD_STATE_BYTES = RECORD_MAX_BYTES

Handler = Callable[[ContactState | None], Outcome]


class Fatal(Exception):
    """The worker cannot go on safely: exit, and redo the batch after the restart."""


class Cycle:
    """One batch, from records to acknowledged effects, state and read model."""

    def __init__(self, worker: Worker, now: datetime, previous: Cycle | None = None) -> None:
        self.w = worker
        self.now = now
        #: The batch before, while its durable part is still running: its states are the
        #: newest (the store has them only once that part is done). None once done.
        self.previous = previous
        #: The chain points of ``finish``: effects queued (the producer keeps each
        #: partition's order), changelog records queued, local store written, all done.
        self.effects_queued = asyncio.Event()
        self.state_queued = asyncio.Event()
        self.stored = asyncio.Event()
        self.done = asyncio.Event()
        self.ctx = worker.context()
        self.partitions = worker.settings.partitions
        #: The latest state of every contact the batch touched (None: has none).
        self.states: dict[str, ContactState | None] = {}
        #: Each changed key's latest state as JSON (made once, when its size is checked;
        #: the state itself is in ``states``), and encoded by :meth:`seal` for step 3.
        self.json: dict[str, bytes] = {}
        self.encoded: dict[str, bytes] = {}
        #: Duplicates: contacts whose read model is refreshed though nothing changed.
        self.reproject: set[str] = set()
        #: Contacts the timer index must look at again (changed, or an early wake-up).
        self.rearm: set[str] = set()
        self.records: list[compat.Record] = []
        #: Per record of ``records``: the input partition whose transaction it belongs to
        #: (exactly-once: agents/transactions.py); ``source`` is the one being handled.
        self.sources: list[int | None] = []
        self.source: int | None = None
        self.acks: list[Any] = []
        #: A campaign slice this cycle runs (agents/campaigns.py), told when it is done.
        self.slice: Slice | None = None
        #: Per input partition: the answers its records' handlers got (tables/journal.py),
        #: journalled before the effects leave.
        self.recorders: dict[int, Recorder] = {}
        #: The answers the record being handled reads (its recorder, or its replay's).
        self.deciding: Recorder | Replayer | None = None
        #: The acknowledgement of this batch's journal records when it had no effects:
        #: queued, not waited for before its states (nobody saw anything it decided), but
        #: by the next batch with effects, unless this one's states are stored by then.
        self.journal_acked: Callable[[], Awaitable[Any]] | None = None
        #: What the batch did, for the read model's stats and recent lists and the metrics.
        self.activity = Activity(now)

    @property
    def changed(self) -> set[str]:
        """The keys the batch changed."""
        return set(self.json)

    # -- state ---------------------------------------------------------------------
    def state(self, key: str) -> ContactState | None:
        if key not in self.states:
            before = self.previous
            while before is not None and key not in before.states:
                before = before.previous
            if before is not None:
                self.states[key] = before.states[key]  # handlers never change their input
            else:
                self.states[key] = self.w.store.get(key)
        return self.states[key]

    def apply(self, key: str, message: Any, handler: Handler, *, event: bool,
              heal: bool = False) -> None:
        """Run one record's handler against the contact's latest state and keep the
        outcome — or dead-letter the record, leaving the contact as it was. ``heal``
        (wake-ups, controls): a record that changes nothing re-projects the contact, as a
        duplicate event does — it may be the redo of one whose state was written but never
        reached the read model (a crash between steps 3 and 4)."""
        before = self.state(key)
        try:
            outcome = handler(before)
        except Rejected as error:
            self.dead_letter(message, error, split_key(key)[0])
            return
        except Exception as exc:  # a bug, or input the logic cannot handle: keep the record
            log.exception("processing %s[%s]@%s failed", message.topic, message.partition,
                          message.offset)
            self.dead_letter(message, Rejected("processing_error",
                                               f"{type(exc).__name__}: {exc}"),
                             split_key(key)[0])
            return
        if outcome.duplicate:
            self.reproject.add(key)
            return
        new = outcome.state
        if new is None:
            self.rearm.add(key)
            if heal and before is not None:
                self.reproject.add(key)
            return
        stored = before["revision"] if before is not None else 0
        new["revision"] = stored if key in self.json else stored + 1
        limit = MAX_STATE_BYTES if event else HARD_STATE_BYTES
        data = orjson.dumps(new)  # the size the limits count, and what seal compresses
        if (grown := len(data)) > limit:
            reason = Rejected("limit_exceeded", f"the contact's state would be {grown} "
                              f"bytes, over the limit of {limit}")
            if event:
                self.dead_letter(message, reason, split_key(key)[0])
            else:
                log.critical("%s: %s; the change is not stored", key, reason.detail)
                self.emit_audit(audit_record(new, self.now, "limit_exceeded",
                                             detail=reason.detail, topic=message.topic))
            return
        self.states[key] = new
        self.json[key] = data
        self.rearm.add(key)
        self.effects(outcome.effects, new["contact_id"])

    # -- records in ------------------------------------------------------------------
    def decide_with(self, message: Any) -> tuple[Context, datetime]:
        """What a record's handler reads besides its state: the answers and ``now`` it was
        handled with before (a replay, from the journal), or this batch's, recorded."""
        w = self.w
        # With exactly-once nothing a reader saw is ever redone: no replay, but the journal
        # is still written (in the partition's transaction): the journey lab decides every
        # record at its ``now`` (tables/simulation.py).
        replay = (None if w.transactions is not None
                  else w.journal.replay(message.topic, message.partition, message.offset))
        if replay is not None:
            entry, replayer = replay
            self.deciding = replayer
            return w.context(replayer, replayer.suppressed), entry.now
        recorder = self.recorders.get(message.partition)
        if recorder is None:
            recorder = self.recorders[message.partition] = Recorder(
                w.registry, w.suppressions.reason, self.now)
        recorder.cover(message.topic, message.offset)
        self.deciding = recorder
        return w.context(recorder, recorder.suppressed), self.now

    def event(self, message: Any) -> None:
        names = self.w.names
        try:
            if message.key is None:
                raise Rejected("key_mismatch", "the record has no key (must be the contact id)")
            event = parse_event(message.value, message.key)
        except Rejected as error:
            self.dead_letter(message, error)
            return
        expected = partition_for(message.key, self.partitions)
        if message.partition != expected:
            if message.topic == names.routed:  # forwarded with the wrong partition: a bug
                self.dead_letter(message, Rejected(
                    "wrong_partition", f"routed to {message.partition}, belongs on {expected}"))
            else:
                self.forward(message, expected)
            return
        ctx, now = self.decide_with(message)
        rejected = len(self.activity.dead_letters)
        self.apply(contact_key(event.account, event.contact_id), message,
                   lambda state: handle_event(state, event, ctx, now), event=True)
        if len(self.activity.dead_letters) == rejected:
            self.activity.event(event.account, event.type)

    def wakeup(self, message: Any) -> None:
        try:
            raw = orjson.loads(message.value)
            wakeup = Wakeup(str(raw["account"]), str(raw["contact_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.dead_letter(message, Rejected("invalid_data", f"wake-up: {exc!r}"))
            return
        ctx, now = self.decide_with(message)
        self.apply(contact_key(wakeup.account, wakeup.contact_id), message,
                   lambda state: handle_wakeup(state, wakeup, ctx, now), event=False,
                   heal=True)

    def control(self, message: Any) -> None:
        try:
            command = Control.model_validate_json(message.value)
        except ValidationError as exc:
            self.dead_letter(message, Rejected("invalid_data", str(exc)))
            return

        ctx, now = self.decide_with(message)

        def handle(state: ContactState | None) -> Outcome:
            return handle_control(state, command, ctx, now)

        if command.action != "cancel_all":
            assert command.contact_id is not None
            key = contact_key(command.account, command.contact_id)
            if self.state(key) is None:
                log.warning("control %s for %s: no such contact", command.action, key)
            self.apply(key, message, handle, event=False, heal=True)
            return
        # Sent to every partition; each owner cancels the executions it holds.
        prefix = f"{command.account}:"
        keys = {k for k, _ in self.w.store.items({message.partition}, prefix)}
        cycle: Cycle | None = self  # and those only the batches in flight know yet
        while cycle is not None:
            keys |= {k for k in cycle.states if k.startswith(prefix)
                     and partition_for(split_key(k)[1], self.partitions) == message.partition}
            cycle = cycle.previous
        for key in sorted(keys):
            self.apply(key, message, handle, event=False)

    # -- records out -----------------------------------------------------------------
    def effects(self, fx: Effects, contact_id: str) -> None:
        names, key = self.w.names, contact_id.encode()
        partition = partition_for(key, self.partitions)
        for command in fx.sends:
            self.activity.send(command.account, command.channel)
            self.out(names.send(command.channel), key,
                     command.model_dump_json(exclude_none=True).encode(), partition)
        for event in fx.events:  # back to the contact's own partition, in order
            self.out(names.events, key, orjson.dumps(event), partition)
        for outcome in fx.outcomes:
            self.out(names.outcomes, key, orjson.dumps(outcome), partition)
        for record in fx.audit:
            self.emit_audit(record)
        for change in fx.suppressions:
            listed = f"{change['account']}:{change['address']}".encode()
            value = orjson.dumps(change)
            # Read our own writes: the follower brings the change back a fetch wait later,
            # and the next record (a send right after a START) must already see it. Safe
            # before it is durable: a batch that fails takes this process with it.
            self.w.suppressions.apply(listed, value)
            if self.deciding is not None:  # and the answers the batch's records read
                self.deciding.own(change)
            self.out(names.suppressions, listed, value)

    def out(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
        """A record for step 2, on ``partition`` or the one Kafka's default partitioner
        picks for the key (every topic has the same count; keyless ones spread)."""
        if partition is None:
            partition = (partition_for(key, self.partitions) if key
                         else len(self.records) % self.partitions)
        self.records.append((topic, partition, key, value, headers))
        self.sources.append(self.source)

    def emit_audit(self, record: dict[str, Any]) -> None:
        log.info("audit %s %s:%s %s", record["reason"], record["account"],
                 record["contact_id"], record.get("message_id", ""))
        self.activity.audited(record)
        self.out(self.w.names.audit, record["contact_id"].encode(), orjson.dumps(record))

    def dead_letter(self, message: Any, error: Rejected, account: str | None = None) -> None:
        """The original key and bytes (or, when they cannot fit in a record, their first
        bytes with the size and SHA-256), with the reason and where they came from.
        ``account``: whose recent dead letters list it (default: the one the record names,
        if valid, else ``_``)."""
        value: bytes = message.value or b""
        key: bytes | None = message.key
        self.activity.dead_letter(dead_letter_entry(
            account or _account_named(value), error.reason, error.detail, str(message.topic),
            message.partition, message.offset, key, value, self.now))
        headers = [
            ("dripstream.reason", error.reason.encode()),
            ("dripstream.detail", error.detail.encode()[:2000]),
            ("dripstream.topic", str(message.topic).encode()),
            ("dripstream.partition", str(message.partition).encode()),
            ("dripstream.offset", str(message.offset).encode()),
            ("dripstream.rejected_at", self.now.isoformat().encode()),
        ]
        headers += [(k, v) for k, v in (message.headers or ()) if k.startswith("dripstream.origin")]
        if len(value) + len(key or b"") > DEAD_LETTER_MAX_BYTES:
            headers += [("dripstream.truncated", b"true"),
                        ("dripstream.original_size", str(len(value)).encode()),
                        ("dripstream.original_sha256", hashlib.sha256(value).hexdigest().encode())]
            value, key = value[:DEAD_LETTER_PREFIX_BYTES], (key or b"")[:1024]
        self.out(self.w.names.dead_letter, key, value, headers=headers)
        log.warning("dead-lettered %s[%s]@%s: %s", message.topic, message.partition,
                    message.offset, error)

    def forward(self, message: Any, partition: int) -> None:
        """A valid event on another partition than its contact's (a publisher with another
        partitioner): unchanged to ``routed`` on the contact's partition."""
        headers = [*list(message.headers or ()),
                   ("dripstream.origin.topic", str(message.topic).encode()),
                   ("dripstream.origin.partition", str(message.partition).encode()),
                   ("dripstream.origin.offset", str(message.offset).encode())]
        self.out(self.w.names.routed, message.key, message.value, partition, headers)

    def seal(self) -> None:
        """Encode each changed key's final state, once."""
        self.encoded = {key: encode_json(data) for key, data in self.json.items()}

    # -- the durable part ----------------------------------------------------------
    async def finish(self) -> None:
        """Steps 2-5, chained to the batch before at three points, so each contact's
        records keep the input order: this batch's effects are queued after the batch
        before's; its changelog records after the batch before's (which that one queues
        only once its effects are acknowledged, so a state is never durable before the
        effects it counts); its local store writes after the batch before's."""
        if self.w.transactions is not None:
            await self.finish_exactly_once()
            return
        w, previous = self.w, self.previous
        writes = bool(self.records or self.json)
        await fault(w, "stall", writes)
        await fault(w, "crash", writes)
        try:
            await self.journal()
            if previous is not None:
                await previous.effects_queued.wait()
            self.still_member()
            acknowledged = await send_batches(w.app, self.records)
            self.effects_queued.set()
            await acknowledged()
            self.observe()
            await fault(w, "after_effects", writes)
            if previous is not None:
                await previous.state_queued.wait()
            self.still_member()
            written = await w.store.send(self.encoded)
            self.state_queued.set()
            states = await written()
            if self.journal_acked is not None:
                await self.journal_acked()
        except (KafkaError, TimeoutError, OSError) as exc:
            raise Fatal(f"broker error while writing the batch: {exc!r}") from exc
        if previous is not None:
            await previous.stored.wait()
        w.store.apply(states)
        for key in self.rearm:
            state = self.states.get(key)
            if state is not None and key[0] != "~":
                w.due_index.schedule(key, state_due(w, key, state))
        self.stored.set()
        await fault(w, "after_state", writes)
        await self.project()  # the revision check orders batches' projections
        consumer = w.app.consumer
        for message in self.acks:
            consumer.ack(message)  # Faust commits only offsets without holes before them
        self.previous = None  # the store has everything before: let the chain go
        self.done.set()
        if self.slice is not None:
            self.slice.done.set()

    async def finish_exactly_once(self) -> None:
        """Steps 2-5 with transactions (agents/transactions.py): each input partition's
        share of the batch — its effects, its contacts' changelog records and its input
        offsets — commits in one transaction of that partition's producer; only then is
        the local store written, the read model projected and the records acked (Faust's
        own commit of the same offsets follows, a no-op). A batch waits for the one
        before to be committed and stored (a partition has one transaction at a time).
        A partition taken from this worker meanwhile writes nothing: its records come
        again at its new owner."""
        w, previous = self.w, self.previous
        writes = bool(self.records or self.json)
        await fault(w, "stall", writes)
        await fault(w, "crash", writes)
        kill = [point for point in ("after_effects", "after_state", "zombie")
                if fault_due(w, point, writes)]
        if previous is not None:
            await previous.stored.wait()
        self.still_member()
        parts: dict[int, _Part] = {}
        for record in w.journal.records(self.recorders):  # the journey lab's record
            parts.setdefault(record[1], _Part()).records.append(record)
        for source, record in zip(self.sources, self.records, strict=True):
            assert source is not None, f"a record without its input partition: {record[:2]}"
            parts.setdefault(source, _Part()).records.append(record)
        for key, value in self.encoded.items():
            parts.setdefault(w.store.partition(key), _Part()).values[key] = value
        for message in self.acks:
            part = parts.setdefault(message.partition, _Part())
            tp = TopicPartition(message.topic, message.partition)
            part.offsets[tp] = max(part.offsets.get(tp, 0), message.offset + 1)
            part.acks.append(message)
        results = await asyncio.gather(
            *(self._commit(partition, part, kill) for partition, part in parts.items()),
            return_exceptions=True)
        lost: set[int] = set()
        for (partition, part), result in zip(parts.items(), results, strict=True):
            if isinstance(result, NotOwned):
                lost.add(partition)
                log.info("partition %d is no longer this worker's: its part of the batch "
                         "(%d records) is left to its new owner", partition, len(part.acks))
            elif isinstance(result, (KafkaError, TimeoutError, OSError)):
                raise Fatal(f"broker error in the transaction of partition {partition}: "
                            f"{result!r}") from result
            elif isinstance(result, BaseException):
                raise result
            else:
                w.store.apply(result)
        if lost:
            self.forget(lost)
        self.observe()
        for key in self.rearm:
            state = self.states.get(key)
            if state is not None and key[0] != "~":
                w.due_index.schedule(key, state_due(w, key, state))
        self.stored.set()
        await self.project()
        await self.mark_projected(results, lost)
        consumer = w.app.consumer
        for partition, part in parts.items():
            if partition not in lost:
                for message in part.acks:
                    consumer.ack(message)
        self.previous = None
        self.done.set()
        if self.slice is not None:
            if self.slice.partition in lost:
                self.slice.aborted = True
            self.slice.done.set()

    async def _commit(self, partition: int, part: _Part, kill: list[str]) -> Any:
        """One partition's transaction; the changelog rows written (ContactStore.apply)."""
        w = self.w
        assert w.transactions is not None
        async with w.transactions.transaction(partition) as producer:
            await (await send_batches(w.app, part.records, producer=producer))()
            if "after_effects" in kill:
                kill_now("after_effects")
            if "zombie" in kill:
                kill.remove("zombie")  # once: the batch's other partitions go on when resumed
                kill_now("zombie", signal.SIGSTOP)  # a pause; the test resumes it
            states = await (await w.store.send(part.values, producer=producer))()
            if "after_state" in kill:
                kill_now("after_state")
            await w.transactions.commit(producer, part.offsets)
        return states

    async def mark_projected(self, results: list[Any], lost: set[int]) -> None:
        """How far each partition's committed states are in the read model: a worker
        that dies between a commit and the projection leaves the mark behind, and the
        partition's next owner projects its contacts again (:func:`heal_projection`)."""
        changelog = self.w.store.table.changelog_topic_name
        # Only partitions checked since this worker got them (Worker.healed): the first
        # batches of a new owner commit before the check's first tick, and their mark
        # would hide what a dead owner committed and never projected.
        generation = self.w.app.consumer_generation_id
        marks = {partition: offset for result in results
                 if isinstance(result, tuple)
                 for (topic, partition), offset in result[1].items()
                 if topic == changelog and partition not in lost
                 and self.w.healed.get(partition) == generation}
        if marks:
            await retrying_redis("read model mark", lambda: self.w.read_model.mark_projected(
                marks))

    def forget(self, partitions: set[int]) -> None:
        """Drop what the batch changed on ``partitions`` (not committed: not this
        worker's any more) from what it projects and indexes."""
        store = self.w.store
        for key in [k for k in self.encoded if store.partition(k) in partitions]:
            del self.encoded[key]
            self.rearm.discard(key)
        self.reproject = {k for k in self.reproject if store.partition(k) not in partitions}

    def observe(self) -> None:
        """The batch's metrics, once its effects are acknowledged (what a user sees)."""
        wall = time.time()
        metrics.observe_batch({kind: self.activity.totals(kind) for kind in metrics.COUNTERS},
                              len(self.acks), (wall - m.timestamp for m in self.acks))

    def still_member(self) -> None:
        """Before the effects and before the table write: a worker the group has thrown
        out (a batch that waited longer than the rebalance timeout, for Redis say) must
        not write behind the partition's new owner, which has recovered the table and
        redoes the input (with this batch's journal). There are no transactions to fence
        it: it exits. (A member thrown out between this check and the write it guards
        still writes once: the window is a heartbeat, not a rebalance.)"""
        if expelled(self.w.app):
            raise Fatal("the group has expelled this worker (its partitions may be another "
                        "worker's now)")

    async def journal(self) -> None:
        """Make what the batch's decisions read durable before its effects leave
        (tables/journal.py). A batch without effects leaves it to the next batch that has
        some: a replay only has to agree with effects someone may have seen, and those of
        a later batch depend on this one's states too (unless these are stored by then)."""
        records = self.w.journal.records(self.recorders)
        if not self.records:
            self.journal_acked = await send_batches(self.w.app, records)
            return
        earlier = []
        before = self.previous
        while before is not None and not before.stored.is_set():
            if before.journal_acked is not None:
                earlier.append(before.journal_acked)
            before = before.previous
        await (await send_batches(self.w.app, records))()
        for acked in earlier:  # queued before ours: acknowledged by now, or failed
            await acked()

    async def project(self) -> None:
        """Changed and re-seen contacts to the read model, retrying while Redis is away
        (the batch is not acked until it is there)."""
        rows: list[tuple[str, int, bytes]] = []
        states: dict[str, ContactState] = {}
        progress: list[dict[str, Any]] = []
        for key, value in self.encoded.items():
            state = self.states[key]
            assert state is not None
            if key[0] == "~":  # a partition's campaign progress (agents/campaigns.py)
                progress.append(dict(state))
                continue
            rows.append((key, state["revision"], value))
            states[key] = state
        for key in self.reproject.difference(self.json):
            raw, state = self.w.store.get_raw(key), self.state(key)
            if raw is not None and state is not None:
                rows.append((key, state["revision"], raw))
                states[key] = state
        activity = self.activity  # the batch's stats and recent lists, in the same pipeline

        async def write() -> None:
            await self.w.read_model.put_many(rows, states=states, activity=activity)
            await self.w.read_model.put_progress(progress)

        if rows or progress or activity:
            await retrying_redis("read model write", write)


async def retrying_redis(what: str, call: Callable[[], Awaitable[Any]]) -> None:
    """``call`` until Redis answers (backoff 0.1 s doubling to 5 s): the batch is not
    acked before its read model is written."""
    delay = 0.1
    while True:
        try:
            await call()
            return
        except (RedisError, OSError) as exc:
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _account_named(value: bytes) -> str | None:
    """The account a rejected record names, if it names a valid one (it may be no JSON)."""
    try:
        account = orjson.loads(value).get("account")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return account if isinstance(account, str) and _ACCOUNT.match(account) else None


_ACCOUNT = re.compile(ACCOUNT_PATTERN)


def fault_due(worker: Worker, point: str, writes: bool) -> bool:
    """Tests only (``DRIPSTREAM_FAULT=point:N``): is this the Nth batch that writes
    anything to reach ``point``? (Counts the batch.)"""
    spec = worker.settings.fault
    if not spec or not writes or spec.partition(":")[0] != point:
        return False
    wanted = int(spec.partition(":")[2] or 1)
    worker.faults[point] = worker.faults.get(point, 0) + 1
    return worker.faults[point] == wanted


def kill_now(point: str, sig: int = signal.SIGKILL) -> None:
    log.critical("fault injection: %s", point)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), sig)


async def fault(worker: Worker, point: str, writes: bool) -> None:
    """Tests only (``DRIPSTREAM_FAULT=point:N``): misbehave at ``point`` of the Nth batch
    that writes anything — SIGKILL (after_effects, after_state), fail the Faust app
    (crash) or stop the agent for good (stall)."""
    if not fault_due(worker, point, writes):
        return
    log.critical("fault injection: %s at batch %s", point, worker.faults[point])
    if point == "crash":
        await worker.app.crash(RuntimeError("fault injection: crash"))
    elif point == "stall":
        await asyncio.Event().wait()
    else:
        os.kill(os.getpid(), signal.SIGKILL)


class _Part:
    """One input partition's share of a batch (exactly-once)."""

    def __init__(self) -> None:
        self.records: list[compat.Record] = []
        self.values: dict[str, bytes] = {}
        self.offsets: dict[TopicPartition, int] = {}
        self.acks: list[Any] = []


async def compute(worker: Worker, batch: list[Any], previous: Cycle | None = None) -> Cycle:
    """Step 1 of a batch (see the module doc): every record through its handler."""
    app, names = worker.app, worker.names
    cycle = Cycle(worker, worker.clock.now(), previous)
    generation, wall = app.consumer_generation_id, time.time()
    await worker.journal.prepare({m.partition for m in batch
                                  if m.generation_id == generation}, generation)
    rewound: set[TP] = set()
    for n, message in enumerate(batch):
        if n % 100 == 99:
            await asyncio.sleep(0)  # let the batch before get on with its acks meanwhile
        tp = message.tp
        if message.generation_id != generation or tp in rewound:
            continue  # fetched before a rebalance or a rewind: it comes again, unacked
        admitted = await inputguard.admit(worker, message)
        if admitted == "rewound":
            rewound.add(tp)
        if admitted != "process":
            continue
        worker.input_clock.took(message.topic, message.partition, message.offset,
                                message.timestamp, generation, wall)
        cycle.acks.append(message)
        cycle.source = message.partition
        if message.topic == names.events or message.topic == names.routed:
            cycle.event(message)
        elif message.topic == names.wakeups:
            cycle.wakeup(message)
        else:
            cycle.control(message)
    cycle.seal()
    return cycle


async def compute_slice(worker: Worker, work: Slice, previous: Cycle | None = None) -> Cycle:
    """Step 1 for a campaign slice: each contact through :func:`handle_delivery` (until
    the throttle's budget is spent), then the partition's progress record. A slice for a
    partition this worker no longer owns (or of an older consumer generation) is
    aborted: the new owner goes on from the stored progress."""
    app = worker.app
    cycle = Cycle(worker, worker.clock.now(), previous)
    cycle.slice = work
    cycle.source = work.partition
    owned = (not worker.stopping and not app.rebalancing
             and work.generation == app.consumer_generation_id
             and any(tp.topic == worker.names.events and tp.partition == work.partition
                     for tp in app.assignor.assigned_actives()))
    if not owned:
        work.aborted = True
        cycle.seal()
        work.computed.set()
        return cycle
    delivery, now = work.delivery, cycle.now
    verdicts: list[Any] = []

    def handle(state: ContactState | None) -> Outcome:
        assert delivery is not None
        outcome, verdict = handle_delivery(state, delivery, cycle.ctx, now)
        verdicts.append(verdict)
        return outcome

    for n, key in enumerate(work.keys):
        if work.budget is not None and work.paced >= work.budget:
            break
        if n % 100 == 99:
            await asyncio.sleep(0)
        verdicts.clear()
        cycle.apply(key, work.record(key), handle, event=False)
        work.consumed += 1
        if verdicts:
            verdict = verdicts[0]
            work.tally(verdict.outcome, verdict.at)
    for record in work.audit:
        cycle.emit_audit(record)
    data = orjson.dumps(work.progress)  # a snapshot: the fan-out goes on changing it
    cycle.states[work.progress_key] = orjson.loads(data)
    cycle.json[work.progress_key] = data
    cycle.seal()
    work.computed.set()
    return cycle


def install(worker: Worker) -> None:
    """The contact agent and its input-loss check, on ``worker.app``."""
    app, names, settings = worker.app, worker.names, worker.settings
    inputs = app.topic(names.events, names.routed, names.wakeups, names.control,
                       key_type=bytes, value_type=bytes, partitions=settings.partitions)
    app.deliver_batches(worker.batches)
    busy_until = [0.0]  # the agent is busy, or was until this monotonic time
    unfinished: deque[tuple[Cycle, asyncio.Task[None]]] = deque()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def finish_in_flight(app: Any, **kwargs: Any) -> None:
        """On a clean stop, let the batches already computed finish before the producer
        closes. Faust waits for its input records to be acked first, but campaign slices
        have none (a slice cut off is redone after the restart; this only spares the
        restart its work and the log its 'broker error')."""
        worker.stopping = True  # no new slices: their writes would outlive the producer
        pending = [task for _, task in unfinished if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=10.0)
        if worker.transactions is not None:
            await worker.transactions.stop()

    @app.agent(inputs, name="contacts")
    async def contact_agent(stream: Any) -> None:
        # The records arrive as batches (streams/compat.py), not through ``stream``.
        await worker.registry.ready.wait()
        await worker.suppressions.ready.wait()
        worker.health.progress()  # start-up is not a stall
        # Batches overlap: while the ones before wait for the broker and Redis, the next
        # is computed against their states (Cycle.state), and its effects may leave once
        # theirs are queued (Cycle.finish). At most IN_FLIGHT batches are unfinished.
        in_flight = unfinished
        async for batch in worker.batches:
            busy_until[0] = float("inf")
            while in_flight and in_flight[0][0].done.is_set():
                in_flight.popleft()
            previous = in_flight[-1][0] if in_flight else None
            try:
                if isinstance(batch, list):
                    cycle = await compute(worker, batch, previous)
                else:  # a campaign slice (agents/campaigns.py)
                    cycle = await compute_slice(worker, batch, previous)
            except Exception:
                log.critical("the batch failed; exiting so it is redone", exc_info=True)
                os._exit(EXIT_FATAL)
            # Let go of the batch's records now, not when the next batch comes: those it
            # skipped (of an older generation, fetched before a rewind) stay unacked, and
            # Faust's rebalance waits for every unacked record still alive (wait_empty,
            # a weak set) with the consumer paused, so no next batch would ever come.
            del batch
            in_flight.append((cycle, asyncio.ensure_future(finished(cycle))))
            await asyncio.sleep(0)  # its first writes leave before the next batch is computed
            if len(in_flight) > IN_FLIGHT:
                await in_flight.popleft()[1]
            busy_until[0] = time.monotonic()

    async def finished(cycle: Cycle) -> None:
        try:
            await cycle.finish()
        except Fatal as exc:
            log.critical("%s; exiting so the batch is redone", exc)
            os._exit(EXIT_FATAL)
        except Exception:
            log.critical("the batch failed; exiting so it is redone", exc_info=True)
            os._exit(EXIT_FATAL)
        worker.health.progress()

    healed = worker.healed  # partition -> the consumer generation it was checked in

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def heal_projection() -> None:
        """Exactly-once: a partition this worker was given whose committed states are
        further than the read model's mark (its last owner died between a commit and the
        projection) has its contacts projected again, once recovered. Until then the
        batches do not move its mark (Cycle.mark_projected)."""
        if worker.transactions is None or app.rebalancing or app.in_recovery:
            return
        generation = app.consumer_generation_id
        new = {tp.partition for tp in app.assignor.assigned_actives()
               if tp.topic == names.events and healed.get(tp.partition) != generation}
        if not new:
            return
        try:
            marks = await worker.read_model.projected(new)
            for partition in sorted(new):
                persisted = worker.store.persisted(partition)
                if persisted is not None and persisted > marks[partition]:
                    count = await reproject(worker, partition)
                    await worker.read_model.mark_projected({partition: persisted})
                    log.warning("partition %d: committed states past the read model's mark "
                                "(%d < %d): %d contacts projected again", partition,
                                marks[partition], persisted, count)
                healed[partition] = generation  # from now on its batches move the mark
        except (RedisError, OSError) as exc:  # Redis away: checked again at the next tick
            log.warning("read model check of partitions %s failed (%s); trying again",
                        sorted(new), exc)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def heal_lost_input() -> None:
        """The gap guard's timer: stuck holes' rewinds; fetched records never handed over."""
        idle = time.monotonic() - busy_until[0] >= 2.0 and worker.batches.empty()
        await inputguard.heal(worker, idle=idle)


async def reproject(worker: Worker, partition: int) -> int:
    """Every contact of ``partition`` from the local store to the read model (its revision
    guard keeps anything newer a batch has written meanwhile); how many."""
    rows: list[tuple[str, int, bytes]] = []
    count = 0
    for key, value in worker.store.items({partition}):
        if key[0] == "~":
            continue  # a campaign's progress there, not a contact
        rows.append((key, decode(value)["revision"], value))
        if len(rows) >= 1000:
            count += await worker.read_model.put_many(rows)
            rows = []
    if rows:
        count += await worker.read_model.put_many(rows)
    return count

