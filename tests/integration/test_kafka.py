"""What only Apache Kafka can show: compaction, fencing a zombie worker's transaction, and a
SASL_SSL broker with SCRAM-SHA-512 and a local CA.

Marked ``kafka``: collected on the Kafka leg only (``make test-kafka``, which ``.ci/run``
runs); the embedded Tansu broker has neither compaction nor transactions nor SASL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from api.app import create_app
from producers.providers import read_calls
from producers.publisher import build_event
from streams import capabilities
from streams.apache_kafka import KafkaCluster, KafkaPrerequisitesMissing
from tests.api.conftest import Databases, api_settings
from tests.conftest import Postgres
from tests.stack import ROOT, Stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

POLICY = {"kind": "account", "account": "acme", "quiet_hours": None}
FLOW = {
    "id": "hello", "account": "acme", "name": "Hello", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "sms",
    "steps": {"sms": {"kind": "send_sms", "body": "Hello {{contact.first_name}}"}},
}


def signups(count: int) -> list[dict[str, Any]]:
    return [build_event("acme", f"c-{n}", "contact.created",
                        {"phone": f"+1415555{n:04d}", "consent": {"sms": True},
                         "attributes": {"first_name": f"N{n}"}}, event_id=f"signup-{n}")
            for n in range(count)]


# -- compaction ---------------------------------------------------------------------------

#: Topic settings that let a test see the cleaner work within seconds (a segment rolls
#: every half second, any dirty ratio is worth cleaning).
QUICK_COMPACTION = {"segment.ms": "500", "min.cleanable.dirty.ratio": "0.001",
                    "min.compaction.lag.ms": "0", "delete.retention.ms": "100"}


async def compact_quickly(stack: Stack, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs=QUICK_COMPACTION)
                                   for topic in topics])
    finally:
        await admin.close()


def newest_per_key(records: list[Any]) -> dict[bytes, bytes | None]:
    newest: dict[bytes, bytes | None] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        newest[record.key] = record.value
    return newest


async def test_compacted_topics_keep_the_newest_record_per_key_and_a_worker_restores_from_them(
    stack: Stack,
) -> None:
    """Definitions, suppressions and the contacts changelog are cleaned by Kafka (fewer
    records, the newest per key kept), and a worker started afresh from the compacted
    changelog holds every contact whole."""
    changelog = stack.settings.group_id + "-contacts-changelog"
    await compact_quickly(stack, [stack.topic("definitions"), stack.topic("suppressions"),
                                  changelog])
    contacts, updates = 20, 15
    await stack.define(POLICY)
    for _ in range(3):  # the same version again: one record per key survives compaction
        await stack.define(FLOW)
    stack.start_worker()
    await stack.publisher.send_many(signups(contacts))
    for n in range(updates):
        await stack.publisher.send_many([
            build_event("acme", f"c-{c}", "contact.tagged", {"tag": f"t{n}"},
                        event_id=f"tag-{c}-{n}") for c in range(contacts)])
    for n in range(3):  # STOP, START, STOP: one suppression key, three records
        word = "STOP" if n % 2 == 0 else "START"
        await stack.publisher.send(build_event(
            "acme", "c-0", "keyword.received",
            {"keyword": word, "text": word, "channel": "sms", "to": "+14155550000"},
            event_id=f"kw-{n}"))
    for c in range(contacts):
        await stack.wait_contact("acme", f"c-{c}", 1 + updates + (3 if c == 0 else 0),
                                 timeout=60)
    written = {name: newest_per_key(await stack.read_all(name))
               for name in ("definitions", "suppressions")}
    written[changelog] = newest_per_key(await read_changelog(stack, changelog))

    rolled = [0.0]

    async def compacted() -> dict[str, int] | None:
        # A record after a segment's age rolls it; the cleaner takes the closed segments.
        if time.monotonic() - rolled[0] > 1.0:
            rolled[0] = time.monotonic()
            await stack.define(POLICY)
            await stack.publisher.send(build_event(
                "acme", "c-roll", "contact.tagged", {"tag": "roll"},
                event_id=os.urandom(8).hex()))
        counts = {"definitions": len(await stack.read_all("definitions")),
                  "suppressions": len(await stack.read_all("suppressions")),
                  changelog: len(await read_changelog(stack, changelog))}
        return counts if all(counts[name] <= len(written[name]) + 5 for name in counts) \
            else None

    await eventually(compacted, timeout=90, what="compaction of the three topics")
    for name in ("definitions", "suppressions"):
        now = newest_per_key(await stack.read_all(name))
        for key, value in written[name].items():
            assert now.get(key) == value, f"{name}: {key!r} is not its newest value"
    now = newest_per_key(await read_changelog(stack, changelog))
    for key, value in written[changelog].items():
        assert now.get(key) == value, f"changelog: {key!r} is not its newest value"

    # A new worker process (memory store: it rebuilds everything from the changelog).
    stack.kill(stack.workers[0], signal.SIGKILL)
    stack.start_worker()
    await stack.publisher.send_many([
        build_event("acme", f"c-{c}", "contact.tagged", {"tag": "after"}, event_id=f"a-{c}")
        for c in range(contacts)])
    for c in range(contacts):
        state = await stack.wait_contact("acme", f"c-{c}", 2 + updates + (3 if c == 0 else 0),
                                         timeout=60)
        assert len(state["tags"]) == updates + 1, state["tags"]


async def read_changelog(stack: Stack, topic: str) -> list[Any]:
    from streams.embedded import read_to_end

    return await read_to_end(stack.bootstrap, topic, stack.settings.partitions,
                             embedded=False, isolation_level="read_committed")


# -- the capabilities probe ------------------------------------------------------------

async def test_workers_probing_at_once_all_find_transactions(stack: Stack) -> None:
    """Every worker of a prefix probes the same transactional id; probes at once get
    CONCURRENT_TRANSACTIONS from the coordinator (for seconds while a broker fails over).
    Each must still find transactions: one taken for "no" ran at least once, reading
    uncommitted, in an exactly-once group (docs/reliability.md, the chaos run)."""
    prefix = f"{stack.settings.topic_prefix}probe."  # a prefix nobody has probed yet
    settings = stack.settings.model_copy(update={"topic_prefix": prefix})
    found = await asyncio.gather(*(capabilities.probe(settings) for _ in range(6)))
    assert [c.transactions for c in found] == [True] * 6


# -- fencing ------------------------------------------------------------------------------

async def test_a_zombie_worker_cannot_commit_behind_its_successor(stack: Stack) -> None:
    """A worker frozen in the middle of a transaction (its effects written, not committed)
    loses its partitions; the next worker fences it and redoes the batch. Thawed, the
    zombie's commit is refused and it exits 70: a read_committed reader sees every send
    once, though the zombie's attempt is in the log."""
    assert stack.exactly_once
    await stack.define(POLICY)
    await stack.define(FLOW)
    await stack.publisher.send_many(signups(40))
    zombie = stack.start_worker(env={"DRIPSTREAM_FAULT": "zombie:1"})

    async def frozen() -> bool:
        return "fault injection: zombie" in stack.worker_log(0)

    await eventually(frozen, timeout=60, what="the worker to freeze mid-transaction")
    stack.start_worker()
    for n in range(40):
        await stack.wait_contact("acme", f"c-{n}", 1, timeout=60)
    zombie.send_signal(signal.SIGCONT)
    assert await asyncio.to_thread(zombie.wait, 60) == 70
    assert "fenced" in stack.worker_log(0).lower()
    sends = Counter(orjson.loads(r.value)["contact_id"] for r in await stack.read_all("send.sms"))
    assert sends == Counter({f"c-{n}": 1 for n in range(40)})
    from streams.embedded import read_to_end

    everything = await read_to_end(stack.bootstrap, stack.topic("send.sms"),
                                   stack.settings.partitions, embedded=False)
    assert len(everything) > 40, "the zombie's aborted attempt should be in the log"


# -- SASL_SSL -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-sasl"), sasl_ssl=True)
    try:
        cluster.start()
    except KafkaPrerequisitesMissing as exc:
        pytest.skip(f"Apache Kafka cannot run here: {exc}")
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def credentials(cluster: KafkaCluster, **changes: str) -> dict[str, str]:
    assert cluster.scram is not None
    return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": cluster.scram.username, "sasl_password": cluster.scram.password,
            "ssl_cafile": str(cluster.scram.cafile), **changes}


@pytest.fixture
async def secure_stack(secured: KafkaCluster, redis_url: str,
                       tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(secured.bootstrap, redis_url, tmp_path, embedded=True,
              security=credentials(secured))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def cli(env: dict[str, str], *args: str, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
async def test_everything_connects_to_a_sasl_ssl_broker(secure_stack: Stack,
                                                        postgres: Postgres) -> None:
    """Worker, channel worker, publisher SDK, CLI and admin API on SCRAM-SHA-512 over TLS
    with a local CA: a signup defined with the CLI becomes a send the channel worker
    delivers; a workflow made through the API does too."""
    stack = secure_stack
    for definition in (POLICY, FLOW):  # `dripstream define -`, the definition on stdin
        done = await asyncio.to_thread(cli, stack.env, "define", "-",
                                       stdin=orjson.dumps(definition).decode())
        assert done.returncode == 0, done.stderr[-2000:]
    stack.start_worker()
    stack.start_channel("sms")
    await stack.publisher.send_many(signups(3))  # the SDK, with the security options

    async def delivered() -> list[dict[str, Any]] | None:
        calls = read_calls(stack.calls_path) if stack.calls_path.exists() else []
        return calls if len(calls) >= 3 else None

    calls = await eventually(delivered, timeout=60, what="three deliveries")
    assert sorted(c["contact_id"] for c in calls) == ["c-0", "c-1", "c-2"]
    assert "guarantee: exactly_once" in stack.worker_log(0)

    # The admin API: its relay publishes a workflow over the same secured listener, and
    # its projection lists the CLI's.
    dbs = Databases(postgres, f"dripstream_sasl_{uuid.uuid4().hex[:8]}")
    settings = api_settings(dbs.empty())
    app = create_app(stack.settings, settings, clock=stack.now)
    assert settings.bootstrap_key is not None
    boot = {"Authorization": f"Bearer {settings.bootstrap_key.get_secret_value()}"}
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            r = await client.post("/v1/accounts/acme/keys", headers=boot,
                                  json={"role": "editor", "name": "sasl"})
            assert r.status_code == 201, r.text
            key = {"Authorization": f"Bearer {r.json()['key']}"}
            later = {**FLOW, "id": "later", "trigger": {"event": "custom.later"}}
            del later["account"], later["version"]
            r = await client.post("/v1/accounts/acme/workflows", headers=key, json=later)
            assert r.status_code == 201, r.text

            async def listed() -> bool:
                r = await client.get("/v1/accounts/acme/workflows/hello", headers=key)
                return r.status_code == 200

            await eventually(listed, what="the CLI's workflow in the API")
            await stack.publisher.send(build_event("acme", "c-0", "custom.later", {},
                                                   event_id="later-0"))
            calls = await eventually(lambda: _calls_at_least(stack, 4), timeout=60,
                                     what="the API's workflow's send")
            assert [c["contact_id"] for c in calls].count("c-0") == 2
    finally:
        dbs.drop_all()


async def _calls_at_least(stack: Stack, count: int) -> list[dict[str, Any]] | None:
    calls = read_calls(stack.calls_path) if stack.calls_path.exists() else []
    return calls if len(calls) >= count else None


@pytest.mark.slow  # collected beside the other test of the secured broker (one fixture)
@pytest.mark.parametrize(("change", "expected"), [
    ({"sasl_password": "not-the-password"}, "refused the credentials"),
    ({"ssl_cafile": "/etc/ssl/certs/ca-certificates.crt"}, "TLS failed"),
])
async def test_wrong_credentials_give_one_clear_line_and_exit_2(
    secured: KafkaCluster, tmp_path: Path, change: dict[str, str], expected: str,
) -> None:
    """A wrong password or CA: the stream worker and a channel worker say so in one line
    and exit 2 — no hang, no traceback."""
    env = {**os.environ, "DRIPSTREAM_BROKER": secured.url, "DRIPSTREAM_TOPIC_PREFIX": "wrong.",
           "DRIPSTREAM_DATA_DIR": str(tmp_path), "DRIPSTREAM_METRICS_PORT": "0",
           **{f"DRIPSTREAM_{k.upper()}": v for k, v in credentials(secured, **change).items()}}
    for command in (("worker",), ("channel", "sms", "--provider", "file")):
        done = await asyncio.to_thread(cli, env, *command, timeout=60)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        lines = [line for line in done.stderr.splitlines() if expected in line]
        assert len(lines) == 1, (command, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
