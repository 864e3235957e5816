"""The Redis read model: contact state as operators, the admin API and the tests see it.

The worker that owns a contact writes it after every batch that changed it, and only once
the contact's changelog record is acknowledged: the read model never shows a state the
table could lose. A batch's contacts go in one pipeline. Writes carry the state's
``revision`` (a count of its table writes) and a Lua script keeps only the newest, so a
late write from a worker that just lost the partition can never overwrite a newer state.
The read model can always be rebuilt from the contacts table; the worker never reads it.

Keys (``<prefix>`` is ``DRIPSTREAM_TOPIC_PREFIX``):
- ``<prefix>contact:<account>:<contact id>`` hash: ``revision``, ``value`` (the table value
  as stored, see :func:`tables.contacts.encode`)
- ``<prefix>contacts:<account>`` set of the account's contact ids
- ``<prefix>campaign:<account>:<campaign id>`` hash: one field per partition, its
  progress record (JSON, ``agents/campaigns.py``); ``dripstream campaign status`` sums them
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from redis.asyncio import Redis

from tables.contacts import ContactState, Execution, decode, public_view, split_key

__all__ = ["ReadModel", "contact_hash"]

#: For each contact i: KEYS[2i-1] its hash, KEYS[2i] its account's id set; ARGV[3i-2..3i]
#: revision, value, contact id. Writes each contact unless a newer revision is there.
_WRITE_IF_NEWER = """
local written = 0
for i = 1, #KEYS / 2 do
  local key, revision = KEYS[2 * i - 1], ARGV[3 * i - 2]
  local current = redis.call('HGET', key, 'revision')
  if not current or tonumber(current) < tonumber(revision) then
    redis.call('HSET', key, 'revision', revision, 'value', ARGV[3 * i - 1])
    redis.call('SADD', KEYS[2 * i], ARGV[3 * i])
    written = written + 1
  end
end
return written
"""
#: Contacts per script call (a call blocks Redis while it runs: keep each one short).
_CHUNK = 500


def contact_hash(prefix: str, account: str, contact_id: str) -> str:
    """The Redis hash of a contact's state (field ``value``: the encoded table value), for
    readers that pipeline it with reads of their own (the channel-worker SDK)."""
    return f"{prefix}contact:{account}:{contact_id}"


class ReadModel:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._write = redis.register_script(_WRITE_IF_NEWER)

    def _key(self, account: str, contact_id: str) -> str:
        return contact_hash(self.prefix, account, contact_id)

    async def put_many(self, contacts: Iterable[tuple[str, int, bytes]]) -> int:
        """Store each ``(state key, revision, encoded state)`` unless a newer revision is
        there, in one round trip; how many were written."""
        rows = list(contacts)
        written = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(rows), _CHUNK):
                keys: list[str] = []
                args: list[Any] = []
                for key, revision, value in rows[start:start + _CHUNK]:
                    account, contact_id = split_key(key)
                    keys += [self._key(account, contact_id), f"{self.prefix}contacts:{account}"]
                    args += [revision, value, contact_id]
                await self._write(keys=keys, args=args, client=pipe)
            for count in await pipe.execute():
                written += int(count)
        return written

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
