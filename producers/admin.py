"""Admin producer helpers: publish workflow definitions and control commands.

The admin API (a later release) will call these; until then ``dripstream define`` and
``dripstream control`` do, and tests.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.commands import Control
from streams.definitions import (
    DEFAULT_MIN_INTERVAL,
    CampaignControl,
    Definition,
    definition_key,
    parse_any,
)
from streams.settings import Settings
from tables.campaigns import CAMPAIGN_WORKFLOW
from tables.registry import Registry

__all__ = ["control_campaign", "publish_definition", "read_registry", "send_control",
           "suppress"]


async def read_registry(settings: Settings) -> Registry:
    """Every definition as the workers hold them: the definitions topic read to its end."""
    registry = Registry()
    follower = asyncio.ensure_future(registry.follow(settings, f"{settings.topic_prefix}"
                                                               "definitions"))
    ready = asyncio.ensure_future(registry.ready.wait())
    try:
        await asyncio.wait({follower, ready}, return_when=asyncio.FIRST_COMPLETED)
        if follower.done():
            follower.result()  # raises what stopped it
    finally:
        for task in (follower, ready):
            task.cancel()
        await asyncio.gather(follower, ready, return_exceptions=True)
    return registry


async def publish_definition(
    producer: AIOKafkaProducer, topic_prefix: str, definition: dict[str, Any],
    min_interval_s: int = DEFAULT_MIN_INTERVAL,
) -> Definition:
    """Validate any kind (raises :class:`streams.definitions.DefinitionError`) and publish.
    ``min_interval_s``: the account's minimum interval for recurring campaigns."""
    parsed = parse_any(definition, min_interval_s)
    await producer.send_and_wait(f"{topic_prefix}definitions",
                                 key=definition_key(parsed).encode(),
                                 value=orjson.dumps(parsed.model_dump(mode="json")))
    return parsed


async def suppress(
    producer: AIOKafkaProducer, topic_prefix: str, account: str, address: str,
    reason: str = "manual", *, remove: bool = False,
) -> None:
    """Add an address to (or lift it from) an account's suppression list."""
    record = {"account": account, "address": address, "reason": reason, "remove": remove,
              "at": datetime.now(UTC).isoformat()}
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


async def control_campaign(
    producer: AIOKafkaProducer, topic_prefix: str, account: str, campaign_id: str,
    action: str,
) -> None:
    """Pause, resume or cancel a campaign on every worker. A cancel also cancels the
    campaign's sends still deferred (quiet hours, caps) on every partition."""
    control = CampaignControl(account=account, campaign_id=campaign_id, action=action,
                              at=datetime.now(UTC).isoformat())
    await producer.send_and_wait(f"{topic_prefix}definitions",
                                 key=definition_key(control).encode(),
                                 value=orjson.dumps(control.model_dump(mode="json")))
    if action == "cancel":
        await send_control(producer, topic_prefix, Control(
            action="cancel_all", account=account,
            workflow_id=CAMPAIGN_WORKFLOW + campaign_id))
