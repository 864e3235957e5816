"""The Redis read model: contact state as operators, the admin API and the tests see it.

The worker that owns a contact writes the contact's profile and executions after every
change. Writes carry the state's ``revision`` (a count of its table writes) and a Lua
script keeps only the newest, so a late write from a worker that just lost the
partition can never overwrite a newer state. The read model can always be rebuilt from
the contacts table; it is never read back by the worker.

Keys (``<prefix>`` is ``DRIPSTREAM_TOPIC_PREFIX``):
- ``<prefix>contact:<account>:<contact id>`` hash: ``revision``, ``state`` (profile JSON),
  ``executions`` (JSON: execution id → execution, with its step history)
- ``<prefix>contacts:<account>`` set of the account's contact ids
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis

__all__ = ["ReadModel"]

_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'revision')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[1], 'state', ARGV[2], 'executions', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""


class ReadModel:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._write = redis.register_script(_WRITE_IF_NEWER)

    def _key(self, account: str, contact_id: str) -> str:
        return f"{self.prefix}contact:{account}:{contact_id}"

    async def put_contact(
        self, profile: dict[str, Any], executions: dict[str, Any], revision: int
    ) -> bool:
        """Store a contact unless a newer revision is there; True if written."""
        account, contact_id = profile["account"], profile["contact_id"]
        written = await self._write(
            keys=[self._key(account, contact_id), f"{self.prefix}contacts:{account}"],
            args=[revision, orjson.dumps(profile), contact_id, orjson.dumps(executions)],
        )
        return bool(written)

    async def get_contact(self, account: str, contact_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self._key(account, contact_id), "state")
        return None if raw is None else cast(dict[str, Any], orjson.loads(raw))

    async def get_executions(self, account: str, contact_id: str) -> dict[str, Any]:
        raw = await self.redis.hget(self._key(account, contact_id), "executions")
        return {} if raw is None else cast(dict[str, Any], orjson.loads(raw))

    async def contact_ids(self, account: str) -> set[str]:
        members = await self.redis.smembers(f"{self.prefix}contacts:{account}")
        return {m.decode() if isinstance(m, bytes) else m for m in members}
