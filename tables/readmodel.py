"""The Redis read model: contact state as operators, the admin API and the tests see it.

The worker that owns a contact writes it after every batch that changed it, and only once
the contact's changelog record is acknowledged: the read model never shows a state the
table could lose. A batch's contacts go in one pipeline. Writes carry the state's
``revision`` (a count of its table writes) and a Lua script keeps only the newest, so a
late write from a worker that just lost the partition can never overwrite a newer state.
The read model can always be rebuilt from the contacts table; the worker never reads it.

The same script keeps the **execution index** (the admin API's lists by workflow): the
contact hash carries ``index``, the contact's executions as compact rows, and a write
diffs the stored rows against the new ones, so an execution pruned from the state (the
state keeps the newest 5 finished) leaves the index too: the index is bounded by the
states. Index and state change in one script call: they never disagree.

The same pipeline adds the batch's :class:`tables.activity.Activity`: per-minute counts
and the recent audit records and dead letters. A batch redone after a crash (or a
pipeline retried after a Redis error) counts again: these are operational figures, the
topics are the record.

Keys (``<prefix>`` is ``DRIPSTREAM_TOPIC_PREFIX``):
- ``<prefix>contact:<account>:<contact id>`` hash: ``revision``, ``value`` (the table value
  as stored, see :func:`tables.contacts.encode`), ``index`` (JSON list of ``[workflow id,
  execution id, status, step, started ms]``), ``projected_ms`` (wall clock of the write)
- ``<prefix>contacts:<account>`` set of the account's contact ids
- ``<prefix>exec:<account>:<workflow id>:<status>`` sorted set (score: started ms,
  member ``<contact id>\\x1f<execution id>``); ``…:all`` every status
- ``<prefix>exec-steps:<account>:<workflow id>`` hash step → executions not finished there
- ``<prefix>exec-workflows:<account>`` hash workflow id → indexed executions
- ``<prefix>stats:<account>:<minute epoch s>`` hash ``events:<type>``, ``sends:<channel>``,
  ``nonsends:<reason>``, ``deadletters:<reason>`` → count (expires after 2 h)
- ``<prefix>recent-audit:<account>``, ``<prefix>recent-deadletters:<account or _>`` streams
  (about the newest 1000, field ``r``: the record as JSON)
- ``<prefix>lag`` hash ``<topic>:<partition>`` → each worker's input lag (JSON, with ``at``)
- ``<prefix>campaign:<account>:<campaign id>`` hash: one field per partition, its
  progress record (JSON, ``agents/campaigns.py``); ``dripstream campaign status`` sums them

The scripts name the index keys they compute (not in ``KEYS``): one Redis server, not a
cluster.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, get_args, get_type_hints

import orjson
from redis.asyncio import Redis

from tables.activity import Activity, minute_of
from tables.contacts import ContactState, Execution, decode, public_view, split_key

__all__ = ["LAG_MAX_AGE_S", "RECENT_MAX", "STATS_TTL_S", "STATUSES", "TERMINAL", "ReadModel",
           "contact_hash", "execution_index"]

#: Every status an execution can have, in Execution's order.
STATUSES: tuple[str, ...] = get_args(get_type_hints(Execution)["status"])
#: Statuses an execution never leaves (not counted at a step).
TERMINAL = frozenset({"completed", "cancelled", "failed"})
#: The per-minute stats hashes live this long (the dashboard shows the last hour).
STATS_TTL_S = 2 * 3600
#: The recent lists keep about this many entries each (XADD MAXLEN ~).
RECENT_MAX = 1000
#: A worker's lag entry older than this is a worker gone (or no longer assigned it).
LAG_MAX_AGE_S = 60.0

#: ARGV[1] the prefix, ARGV[2] the wall clock (ms); for each contact i: KEYS[2i-1] its hash,
#: KEYS[2i] its account's id set, ARGV[5i-2..5i+2] revision, value, contact id, account,
#: index. Writes each contact unless a newer revision is there, and moves its executions'
#: index entries from the stored index to the new one (only the rows that differ).
_WRITE_IF_NEWER = """
local prefix, projected = ARGV[1], ARGV[2]
local terminal = {completed = true, cancelled = true, failed = true}
local function rows(raw)
  local out = {}
  if raw then
    for _, e in ipairs(cjson.decode(raw)) do out[e[2]] = e end
  end
  return out
end
local function same(a, b)
  for j = 1, 5 do
    if a[j] ~= b[j] then return false end
  end
  return true
end
local function move(account, contact, e, by)
  local wf, status, step = e[1], e[3], e[4]
  local base = prefix .. 'exec:' .. account .. ':' .. wf .. ':'
  local member = contact .. '\\31' .. e[2]
  local workflows = prefix .. 'exec-workflows:' .. account
  local steps = prefix .. 'exec-steps:' .. account .. ':' .. wf
  if by > 0 then
    redis.call('ZADD', base .. status, e[5], member)
    redis.call('ZADD', base .. 'all', e[5], member)
  else
    redis.call('ZREM', base .. status, member)
    redis.call('ZREM', base .. 'all', member)
  end
  if redis.call('HINCRBY', workflows, wf, by) <= 0 then redis.call('HDEL', workflows, wf) end
  if not terminal[status] and redis.call('HINCRBY', steps, step, by) <= 0 then
    redis.call('HDEL', steps, step)
  end
end
local written = 0
for i = 1, #KEYS / 2 do
  local key, a = KEYS[2 * i - 1], 5 * i - 2
  local revision = ARGV[a]
  local current = redis.call('HGET', key, 'revision')
  if not current or tonumber(current) < tonumber(revision) then
    local contact, account, index = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    local old, new = rows(redis.call('HGET', key, 'index')), rows(index)
    for id, e in pairs(old) do
      if not new[id] or not same(e, new[id]) then move(account, contact, e, -1) end
    end
    for id, e in pairs(new) do
      if not old[id] or not same(old[id], e) then move(account, contact, e, 1) end
    end
    redis.call('HSET', key, 'revision', revision, 'value', ARGV[a + 1], 'index', index,
               'projected_ms', projected)
    redis.call('SADD', KEYS[2 * i], contact)
    written = written + 1
  end
end
return written
"""

#: One page of an index set, newest first. KEYS[1] the set; ARGV limit, the cursor's score
#: ('' on the first page) and member, the account's contact hash prefix. The page starts
#: right after the cursor's place — found by its rank while it is still there, else by
#: counting what sorts before it — so inserts and moves elsewhere never shift a page.
#: Returns {member, score, the member's contact index or '', ...} and 1 if there is more.
_PAGE = """
local key, limit = KEYS[1], tonumber(ARGV[1])
local function greater(a, b)
  for j = 1, math.min(#a, #b) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local start = 0
if ARGV[2] ~= '' then
  local s, m = ARGV[2], ARGV[3]
  local score = redis.call('ZSCORE', key, m)
  if score and tonumber(score) == tonumber(s) then
    start = redis.call('ZREVRANK', key, m) + 1
  else
    start = redis.call('ZCOUNT', key, '(' .. s, '+inf')
    for _, t in ipairs(redis.call('ZRANGEBYSCORE', key, s, s)) do
      if greater(t, m) then start = start + 1 end
    end
  end
end
local page = redis.call('ZREVRANGE', key, start, start + limit, 'WITHSCORES')
local out = {}
for j = 1, math.min(#page, 2 * limit), 2 do
  local member = page[j]
  local contact = string.sub(member, 1, string.find(member, '\\31', 1, true) - 1)
  out[#out + 1] = member
  out[#out + 1] = page[j + 1]
  out[#out + 1] = redis.call('HGET', ARGV[4] .. contact, 'index') or ''
end
if #page > 2 * limit then return {out, 1} end
return {out, 0}
"""
#: Contacts per script call (a call blocks Redis while it runs: keep each one short).
_CHUNK = 500


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def execution_index(state: ContactState) -> list[list[Any]]:
    """The contact's index rows: ``[workflow id, execution id, status, step, started ms]``
    per execution, in id order."""
    return [[e["workflow_id"], e["id"], e["status"], e["step"], _ms(e["started_at"])]
            for _, e in sorted(state["executions"].items())]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _encode_cursor(score: int, member: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([score, member])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, member = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(score, int) or not isinstance(member, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    return score, member


def contact_hash(prefix: str, account: str, contact_id: str) -> str:
    """The Redis hash of a contact's state (field ``value``: the encoded table value), for
    readers that pipeline it with reads of their own (the channel-worker SDK)."""
    return f"{prefix}contact:{account}:{contact_id}"


class ReadModel:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._write = redis.register_script(_WRITE_IF_NEWER)
        self._page = redis.register_script(_PAGE)

    def _key(self, account: str, contact_id: str) -> str:
        return contact_hash(self.prefix, account, contact_id)

    async def put_many(
        self, contacts: Iterable[tuple[str, int, bytes]], *,
        states: Mapping[str, ContactState] | None = None, activity: Activity | None = None,
        projected_ms: int | None = None,
    ) -> int:
        """Store each ``(state key, revision, encoded state)`` unless a newer revision is
        there, with its execution index (from ``states`` when given, else decoded), and
        the batch's ``activity``, in one round trip; how many contacts were written.
        ``projected_ms``: the write's wall clock (default: now)."""
        rows = list(contacts)
        stamp = int(time.time() * 1000) if projected_ms is None else projected_ms
        written = 0
        calls = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(rows), _CHUNK):
                keys: list[str] = []
                args: list[Any] = [self.prefix, stamp]
                for key, revision, value in rows[start:start + _CHUNK]:
                    account, contact_id = split_key(key)
                    state = states.get(key) if states is not None else None
                    if state is None:
                        state = decode(value)
                    keys += [self._key(account, contact_id), f"{self.prefix}contacts:{account}"]
                    args += [revision, value, contact_id, account,
                             orjson.dumps(execution_index(state))]
                await self._write(keys=keys, args=args, client=pipe)
                calls += 1
            if activity:
                self._add_activity(pipe, activity)
            results = await pipe.execute()
        for count in results[:calls]:
            written += int(count)
        return written

    def _add_activity(self, pipe: Any, activity: Activity) -> None:
        minute = activity.minute
        touched: set[str] = set()
        for (account, name), n in activity.counts.items():
            key = self.stats_key(account, minute)
            pipe.hincrby(key, name, n)
            touched.add(key)
        for key in touched:
            pipe.expire(key, STATS_TTL_S)
        for record in activity.audit:
            pipe.xadd(self.recent_key("audit", record["account"]), {"r": orjson.dumps(record)},
                      maxlen=RECENT_MAX, approximate=True)
        for entry in activity.dead_letters:
            pipe.xadd(self.recent_key("deadletters", entry["account"]),
                      {"r": orjson.dumps(entry)}, maxlen=RECENT_MAX, approximate=True)

    # -- keys ----------------------------------------------------------------------
    def exec_key(self, account: str, workflow_id: str, status: str | None = None) -> str:
        """The index set of a workflow's executions of ``status`` (None: all of them)."""
        return f"{self.prefix}exec:{account}:{workflow_id}:{status or 'all'}"

    def steps_key(self, account: str, workflow_id: str) -> str:
        return f"{self.prefix}exec-steps:{account}:{workflow_id}"

    def workflows_key(self, account: str) -> str:
        return f"{self.prefix}exec-workflows:{account}"

    def stats_key(self, account: str, minute: int) -> str:
        return f"{self.prefix}stats:{account}:{minute}"

    def recent_key(self, kind: str, account: str) -> str:
        """``kind``: ``audit`` or ``deadletters``."""
        return f"{self.prefix}recent-{kind}:{account}"

    @property
    def lag_key(self) -> str:
        return f"{self.prefix}lag"

    # -- the execution index ---------------------------------------------------------
    async def list_executions(
        self, account: str, workflow_id: str, status: str | None = None,
        cursor: str | None = None, limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the workflow's executions (of ``status``, or all), newest started
        first, and the cursor of the next page (None: no more). A cursor stays valid
        while executions are added or change status: the next page starts right after
        the last item returned. Raises ValueError for an unknown status or a bad cursor."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        limit = max(1, min(limit, 1000))
        score, member = ("", "") if cursor is None else _decode_cursor(cursor)
        out, more = await self._page(
            keys=[self.exec_key(account, workflow_id, status)],
            args=[limit, str(score), member, self._key(account, "")])
        items: list[dict[str, Any]] = []
        last: tuple[int, str] | None = None
        for j in range(0, len(out), 3):
            member_text, raw_score, raw_index = _text(out[j]), _text(out[j + 1]), out[j + 2]
            contact_id, _, execution_id = member_text.partition("\x1f")
            started = int(float(raw_score))
            row = next((e for e in (orjson.loads(raw_index) if raw_index else ())
                        if e[1] == execution_id), None)
            items.append({
                "contact_id": contact_id, "execution_id": execution_id,
                "workflow_id": workflow_id,
                "status": row[2] if row else status, "step": row[3] if row else None,
                "started_at": datetime.fromtimestamp(started / 1000, UTC).isoformat()})
            last = (started, member_text)
        return items, (_encode_cursor(*last) if more and last is not None else None)

    async def execution_counts(self, account: str, workflow_id: str) -> dict[str, int]:
        """Executions of the workflow in the index, per status (every status, 0 if none)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.zcard(self.exec_key(account, workflow_id, status))
            counts = await pipe.execute()
        return {status: int(n) for status, n in zip(STATUSES, counts, strict=True)}

    async def step_counts(self, account: str, workflow_id: str) -> dict[str, int]:
        """Executions of the workflow not finished (running, waiting, paused), per step."""
        raw = await self.redis.hgetall(self.steps_key(account, workflow_id))
        return {_text(k): int(v) for k, v in raw.items() if int(v) > 0}

    async def workflow_ids(self, account: str) -> set[str]:
        """The workflows with executions in the index."""
        return {_text(k) for k in await self.redis.hkeys(self.workflows_key(account))}

    # -- stats and recent lists -------------------------------------------------------
    async def stats(self, account: str, now: datetime, minutes: int = 60) -> list[dict[str, Any]]:
        """The account's counts for each of the ``minutes`` minutes up to ``now``'s, oldest
        first (a minute with nothing has empty maps): ``{"minute": iso, "events": {type:
        n}, "sends": {channel: n}, "nonsends": {reason: n}, "deadletters": {reason: n}}``.
        Approximate: a batch redone after a crash counts twice."""
        minutes = max(1, min(minutes, STATS_TTL_S // 60))
        last = minute_of(now)
        starts = [last - 60 * (minutes - 1 - n) for n in range(minutes)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in starts:
                pipe.hgetall(self.stats_key(account, minute))
            hashes = await pipe.execute()
        rows: list[dict[str, Any]] = []
        for minute, raw in zip(starts, hashes, strict=True):
            row: dict[str, Any] = {"minute": datetime.fromtimestamp(minute, UTC).isoformat(),
                                   "events": {}, "sends": {}, "nonsends": {},
                                   "deadletters": {}}
            for name, n in raw.items():
                kind, _, label = _text(name).partition(":")
                if kind in row and kind != "minute":
                    row[kind][label] = int(n)
            rows.append(row)
        return rows

    async def _recent(self, key: str, reason: str | None, limit: int) -> list[dict[str, Any]]:
        limit = max(1, min(limit, RECENT_MAX))
        entries = await self.redis.xrevrange(key, count=limit if reason is None else None)
        out: list[dict[str, Any]] = []
        for _, fields in entries or ():
            if not fields:
                continue
            record = orjson.loads(fields.get(b"r") or fields.get("r") or b"{}")
            if reason is None or record.get("reason") == reason:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    async def recent_audit(self, account: str, reason: str | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        """The account's newest audit records (as on the audit topic), newest first."""
        return await self._recent(self.recent_key("audit", account), reason, limit)

    async def recent_dead_letters(self, account: str, reason: str | None = None,
                                  limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of ``account`` (``_``: records naming no valid account),
        newest first: reason, detail, topic, partition, offset, key, ``value`` (base64 of
        the first 4 KiB), ``size``, ``truncated``, ``at``."""
        return await self._recent(self.recent_key("deadletters", account), reason, limit)

    # -- lag and staleness ------------------------------------------------------------
    async def put_lag(self, entries: Iterable[dict[str, Any]]) -> None:
        """A worker's input partitions' lag (``topic``, ``partition``, ``lag``, ``worker``,
        ``at``), one field each."""
        mapping = {f"{e['topic']}:{e['partition']}": orjson.dumps(e) for e in entries}
        if mapping:
            await self.redis.hset(self.lag_key, mapping=mapping)  # type: ignore[arg-type]

    async def lag(self, now: datetime) -> list[dict[str, Any]]:
        """Each input partition's lag as its worker last wrote it, by topic and partition;
        entries older than :data:`LAG_MAX_AGE_S` at ``now`` are left out (and removed)."""
        raw = await self.redis.hgetall(self.lag_key)
        fresh: list[dict[str, Any]] = []
        stale: list[bytes | str] = []
        oldest = now - timedelta(seconds=LAG_MAX_AGE_S)
        for name, value in raw.items():
            entry = orjson.loads(value)
            if datetime.fromisoformat(entry["at"]) < oldest:
                stale.append(name)
            else:
                fresh.append(entry)
        if stale:
            await self.redis.hdel(self.lag_key, *stale)
        return sorted(fresh, key=lambda e: (e["topic"], e["partition"]))

    async def projected_at(self, account: str, contact_id: str) -> datetime | None:
        """When the contact's state was last written to the read model (wall clock)."""
        raw = await self.redis.hget(self._key(account, contact_id), "projected_ms")
        return None if raw is None else datetime.fromtimestamp(int(raw) / 1000, UTC)

    async def put_progress(self, records: Iterable[dict[str, Any]]) -> None:
        """Partitions' campaign progress records (written by the partition's owner only)."""
        rows = list(records)
        if not rows:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in rows:
                pipe.hset(self.campaign_key(record["account"], record["campaign_id"]),
                          str(record["partition"]), orjson.dumps(record))
            await pipe.execute()

    def campaign_key(self, account: str, campaign_id: str) -> str:
        return f"{self.prefix}campaign:{account}:{campaign_id}"

    async def get_progress(self, account: str, campaign_id: str) -> dict[int, dict[str, Any]]:
        """Each partition's progress record for the campaign."""
        raw = await self.redis.hgetall(self.campaign_key(account, campaign_id))
        return {int(k): orjson.loads(v) for k, v in raw.items()}

    async def get_state(self, account: str, contact_id: str) -> ContactState | None:
        raw = await self.redis.hget(self._key(account, contact_id), "value")
        return None if raw is None else decode(raw.encode() if isinstance(raw, str) else raw)

    async def get_contact(self, account: str, contact_id: str) -> dict[str, Any] | None:
        """The profile (no dedupe marks, no executions)."""
        state = await self.get_state(account, contact_id)
        return None if state is None else public_view(state)

    async def get_executions(self, account: str, contact_id: str) -> dict[str, Execution]:
        state = await self.get_state(account, contact_id)
        return {} if state is None else state["executions"]

    async def count_contacts(self, account: str) -> int:
        return int(await self.redis.scard(f"{self.prefix}contacts:{account}"))

    async def contact_ids(self, account: str) -> set[str]:
        members = await self.redis.smembers(f"{self.prefix}contacts:{account}")
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    # -- exactly-once: how far each partition's committed states are projected -----------
    async def mark_projected(self, offsets: Mapping[int, int]) -> None:
        """Each partition's newest changelog offset whose state is projected (written
        after the projection: behind, never ahead)."""
        if offsets:
            await self.redis.hset(f"{self.prefix}projected",
                                  mapping={str(p): o for p, o in offsets.items()})

    async def projected(self, partitions: Iterable[int]) -> dict[int, int]:
        """The marks of :meth:`mark_projected` (-1: none)."""
        wanted = sorted(partitions)
        if not wanted:
            return {}
        found = await self.redis.hmget(f"{self.prefix}projected", [str(p) for p in wanted])
        return {p: int(v) if v is not None else -1 for p, v in zip(wanted, found, strict=True)}

