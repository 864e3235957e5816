"""Admin producer helpers: publish workflow definitions and control commands.

The admin API (a later release) will call these; until then ``dripstream define`` and
``dripstream control`` do, and tests.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.commands import Control
from streams.definitions import Definition, definition_key, parse_any

__all__ = ["publish_definition", "send_control", "suppress"]


async def publish_definition(
    producer: AIOKafkaProducer, topic_prefix: str, definition: dict[str, Any]
) -> Definition:
    """Validate any kind (raises :class:`streams.definitions.DefinitionError`) and publish."""
    parsed = parse_any(definition)
    await producer.send_and_wait(f"{topic_prefix}definitions",
                                 key=definition_key(parsed).encode(),
                                 value=orjson.dumps(parsed.model_dump(mode="json")))
    return parsed


async def suppress(
    producer: AIOKafkaProducer, topic_prefix: str, account: str, address: str,
    reason: str = "manual", *, remove: bool = False,
) -> None:
    """Add an address to (or lift it from) an account's suppression list."""
    record = {"account": account, "address": address, "reason": reason, "remove": remove}
    await producer.send_and_wait(f"{topic_prefix}suppressions",
                                 key=f"{account}:{address}".encode(), value=orjson.dumps(record))


async def send_control(producer: AIOKafkaProducer, topic_prefix: str, command: Control) -> None:
    """Per-execution commands go to the contact's partition (keyed by contact id, Kafka's
    default partitioner); ``cancel_all`` goes to every partition."""
    topic = f"{topic_prefix}control"
    value = command.model_dump_json(exclude_none=True).encode()
    if command.action != "cancel_all":
        assert command.contact_id is not None
        await producer.send_and_wait(topic, key=command.contact_id.encode(), value=value)
        return
    partitions = await producer.partitions_for(topic)
    for partition in sorted(partitions):
        await producer.send_and_wait(topic, key=(command.workflow_id or "").encode(),
                                     value=value, partition=partition)
