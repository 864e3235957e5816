"""Admin producer helpers: definitions, campaign controls, execution controls and
suppressions, as ``dripstream define`` / ``control`` / ``suppress`` and the admin API
publish them.

:func:`define` is how a tool publishes a definition: the definitions topic is the record
the workers run (first record per key wins, ``tables/registry.py``), so it checks the
topic's current view first (:func:`check`: a changed body at an existing version, or a
version lower than the newest, is a :class:`DefinitionConflict`), publishes, and reads the
topic back to confirm that its record is the one that won its key. A lost race (another
publisher's record for the same version got there first) is a conflict too; the loser
then re-publishes the winner's body, so that compaction, which keeps a key's *last*
record, keeps the one the workers run. :func:`publish_definition` writes without any of
that (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer

from streams.commands import Control
from streams.definitions import (
    DEFAULT_MIN_INTERVAL,
    AccountPolicy,
    CampaignControl,
    Definition,
    definition_key,
    parse_any,
)
from streams.settings import Settings
from tables.campaigns import CAMPAIGN_WORKFLOW
from tables.registry import Registry

__all__ = [
    "BY_HEADER",
    "DefinitionConflict",
    "NotConfirmed",
    "Published",
    "TopicUnreadable",
    "check",
    "confirm",
    "control_campaign",
    "define",
    "following",
    "publish_definition",
    "read_registry",
    "send_control",
    "suppress",
]

#: The record header naming who published a definition (``cli:<user>``, ``api:<key id>``):
#: the admin API's projection shows it as the version's ``created_by``.
BY_HEADER = "dripstream.by"
#: How long a publisher waits to read its own record back.
READ_BACK_S = 30.0


class TopicUnreadable(Exception):
    """The definitions topic cannot be read (it does not exist yet, or it is not served)."""


class NotConfirmed(Exception):
    """Published, but the record did not come back from the topic in time (whether it
    won its key is unknown: run the same publication again to find out)."""


class DefinitionConflict(Exception):
    """The publication is refused: it would be ignored by the workers (or was: it lost a
    race). ``str()`` says what is there and what to publish instead."""


@dataclass(frozen=True)
class Published:
    """What :func:`define` did: ``published`` a new version, or found exactly this body
    at that version already (``unchanged``: nothing written)."""

    definition: Definition
    outcome: Literal["published", "unchanged"]


def _ident(definition: Definition) -> str:
    if isinstance(definition, AccountPolicy):
        return "policy"
    if isinstance(definition, CampaignControl):
        return definition.campaign_id
    return definition.id


def _name(definition: Definition) -> str:
    return f"{definition.kind} {definition.account}/{_ident(definition)}"


def check(registry: Registry, definition: Definition) -> Literal["new", "unchanged"]:
    """Is ``definition`` a publication the workers would take? ``new``: a version above
    the newest; ``unchanged``: this very body is that version already (publishing it again
    changes nothing). Raises :class:`DefinitionConflict` for another body at an existing
    version and for a version lower than the newest (one version sequence per
    definition, whoever publishes). Campaign controls are not versioned: always new."""
    if isinstance(definition, CampaignControl):
        return "new"
    versions = registry.versions(definition.kind, definition.account, _ident(definition))
    body = definition.model_dump(mode="json")
    version = definition.version
    newest = max(versions, default=0)
    if (held := versions.get(version)) is not None:
        if held == body:
            return "unchanged"
        raise DefinitionConflict(
            f"{_name(definition)} v{version} is published already with another body (the "
            f"workers run the first one): publish your change as v{newest + 1}")
    if version < newest:
        raise DefinitionConflict(
            f"{_name(definition)} is at v{newest}: v{version} would be an older version; "
            f"publish v{newest + 1}")
    return "new"


@asynccontextmanager
async def following(settings: Settings, registry: Registry | None = None,
                    missing_s: float = 5.0) -> AsyncIterator[Registry]:
    """The definitions topic read to its end and followed while the block runs (a quiet
    registry unless one is given); what stopped the follower is raised, and
    :class:`TopicUnreadable` if the topic still does not exist after ``missing_s``."""
    registry = registry if registry is not None else Registry(quiet=True)
    topic = f"{settings.topic_prefix}definitions"
    follower = asyncio.ensure_future(registry.follow(settings, topic))
    ready = asyncio.ensure_future(registry.ready.wait())
    try:
        await asyncio.wait({follower, ready}, timeout=missing_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not follower.done() and not ready.done():
            if registry.topic_missing:
                # Publishing now would let the broker auto-create it, uncompacted.
                raise TopicUnreadable(f"{topic} does not exist (`dripstream topics` or a "
                                      "worker creates it)")
            await asyncio.wait({follower, ready}, return_when=asyncio.FIRST_COMPLETED)
        if follower.done():
            follower.result()  # raises what stopped it
        yield registry
    finally:
        for task in (follower, ready):
            task.cancel()
        await asyncio.gather(follower, ready, return_exceptions=True)


async def read_registry(settings: Settings) -> Registry:
    """Every definition as the workers hold them: the definitions topic read to its end."""
    async with following(settings) as registry:
        return registry


async def confirm(producer: AIOKafkaProducer, topic_prefix: str, registry: Registry,
                  definition: Definition, partition: int, offset: int,
                  within_s: float = READ_BACK_S) -> None:
    """Read the topic back up to our record (``partition``, ``offset``) and check that
    the version the workers hold is ours. If another body won, re-publish the winner
    (compaction keeps the last record of a key) and raise :class:`DefinitionConflict`;
    :class:`NotConfirmed` if the record does not come back within ``within_s``."""
    if not await registry.reached(partition, offset, within_s):
        raise NotConfirmed(f"could not read the definitions topic back to offset {offset} "
                           f"of partition {partition} within {within_s:.0f} s")
    if isinstance(definition, CampaignControl):
        return
    version = definition.version
    held = registry.versions(definition.kind, definition.account, _ident(definition)
                             ).get(version)
    if held is None or held == definition.model_dump(mode="json"):
        return
    await producer.send_and_wait(f"{topic_prefix}definitions",
                                 key=definition_key(definition).encode(),
                                 value=orjson.dumps(held))
    raise DefinitionConflict(
        f"{_name(definition)} v{version} was published meanwhile by someone else with "
        f"another body, which the workers run: yours is refused; publish it as "
        f"v{max(registry.versions(definition.kind, definition.account, _ident(definition))) + 1}")


async def define(
    producer: AIOKafkaProducer, settings: Settings, registry: Registry,
    definition: Definition, *, by: str | None = None, within_s: float = READ_BACK_S,
) -> Published:
    """Publish a validated definition the checked way: :func:`check` against
    ``registry`` (a follower of the topic, :func:`following`), publish, :func:`confirm`.
    ``by`` goes into the record's :data:`BY_HEADER`."""
    if check(registry, definition) == "unchanged":
        return Published(definition, "unchanged")
    meta = await producer.send_and_wait(
        f"{settings.topic_prefix}definitions", key=definition_key(definition).encode(),
        value=orjson.dumps(definition.model_dump(mode="json")),
        headers=[(BY_HEADER, by.encode())] if by else None)
    await confirm(producer, settings.topic_prefix, registry, definition, meta.partition,
                  meta.offset, within_s)
    return Published(definition, "published")


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
    action: str, *, by: str | None = None,
) -> Any:
    """Pause, resume or cancel a campaign on every worker. A cancel also cancels the
    campaign's sends still deferred (quiet hours, caps) on every partition. Returns the
    control record's metadata (its partition and offset: for a read-back)."""
    control = CampaignControl(account=account, campaign_id=campaign_id, action=action,
                              at=datetime.now(UTC).isoformat())
    meta = await producer.send_and_wait(
        f"{topic_prefix}definitions", key=definition_key(control).encode(),
        value=orjson.dumps(control.model_dump(mode="json")),
        headers=[(BY_HEADER, by.encode())] if by else None)
    if action == "cancel":
        await send_control(producer, topic_prefix, Control(
            action="cancel_all", account=account,
            workflow_id=CAMPAIGN_WORKFLOW + campaign_id))
    return meta
