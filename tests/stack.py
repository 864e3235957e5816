"""A per-test dripstream deployment: its own topics, worker processes and Redis keys."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from redis.asyncio import Redis

from producers.admin import publish_definition, send_control
from producers.publisher import Publisher
from streams.capabilities import guarantee as streams_guarantee
from streams.capabilities import probe
from streams.clock import Clock
from streams.commands import Control
from streams.embedded import WorkerProcess, read_to_end
from streams.settings import Settings
from streams.topics import ensure_topics, topic_name
from tables.readmodel import ReadModel

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Stack:
    def __init__(
        self, bootstrap: str, redis_url: str, tmp_path: Path, *, embedded: bool,
        partitions: int = 4, security: Mapping[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        #: ``DRIPSTREAM_SECURITY_PROTOCOL``, ``_SASL_*``, ``_SSL_*`` of a secured broker
        #: (without the prefix, lower case): for the workers, the CLI and this stack's
        #: own clients.
        self.security = dict(security or {})
        self.settings = Settings(
            broker=";".join(f"kafka://{b}" for b in bootstrap.split(",")),
            topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
            partitions=partitions,
            redis_url=redis_url,
            profile="embedded" if embedded else "production",
            data_dir=tmp_path / "data",
            clock_offset_file=tmp_path / "clock-offset",
            timer_interval_s=0.2,
            **self.security,  # type: ignore[arg-type]
        )
        self.workers: list[WorkerProcess] = []
        self.channels: list[WorkerProcess] = []
        self.redis = Redis.from_url(redis_url)
        self.read_model = ReadModel(self.redis, self.settings.topic_prefix)
        self.publisher = Publisher(bootstrap.split(","), topic_prefix=self.settings.topic_prefix,
                                   **self.settings.kafka_security())

    @cached_property
    def env(self) -> dict[str, str]:
        """The workers' environment: one dict, so a test may add to it (``stack.env.update``)
        for the workers and CLI runs that follow."""
        s = self.settings
        return {
            **os.environ,
            "DRIPSTREAM_BROKER": s.broker,
            "DRIPSTREAM_TOPIC_PREFIX": s.topic_prefix,
            "DRIPSTREAM_PARTITIONS": str(s.partitions),
            "DRIPSTREAM_REDIS_URL": s.redis_url,
            "DRIPSTREAM_PROFILE": s.profile,
            "DRIPSTREAM_DATA_DIR": str(s.data_dir),
            "DRIPSTREAM_LOG_LEVEL": "info",
            "DRIPSTREAM_CLOCK_OFFSET_FILE": str(s.clock_offset_file),
            "DRIPSTREAM_TIMER_INTERVAL_S": str(s.timer_interval_s),
            # Several workers share the host: no metrics server unless a test asks for one.
            "DRIPSTREAM_METRICS_PORT": "0",
            **{f"DRIPSTREAM_{name.upper()}": value for name, value in self.security.items()},
        }

    def topic(self, suffix: str) -> str:
        return topic_name(self.settings, suffix)

    async def start(self) -> None:
        # The workers' clock starts at the next 12:00 UTC: quiet hours (08:00-21:00 in the
        # contact's zone, UTC by default) never depend on when the suite runs.
        real = datetime.now(UTC)
        noon = real.replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(days=1)
        self.set_time(noon)
        await ensure_topics(self.settings)
        #: What the broker can do, and the guarantee the workers choose from it: with
        #: exactly-once, the tests read as the channel workers do (read_committed).
        self.capabilities = await probe(self.settings)
        self.exactly_once = streams_guarantee(self.settings,
                                              self.capabilities) == "exactly_once"
        await self.publisher.__aenter__()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap.split(","),
                                         acks="all", **self.settings.kafka_security())
        await self.producer.start()

    # -- the workers' clock (streams/clock.py): tests skip time instead of waiting ------
    def skip(self, seconds: float) -> None:
        """Move the workers' clock ``seconds`` ahead."""
        path = self.settings.clock_offset_file
        assert path is not None
        current = float(path.read_text()) if path.exists() else 0.0
        path.write_text(str(current + seconds))

    def set_time(self, when: datetime) -> None:
        """Put the workers' clock at ``when`` (it runs on from there)."""
        path = self.settings.clock_offset_file
        assert path is not None
        path.write_text(str((when - datetime.now(UTC)).total_seconds()))

    def now(self) -> datetime:
        return Clock(self.settings.clock_offset_file).now()

    # -- admin ----------------------------------------------------------------------
    async def define(self, definition: dict[str, Any]) -> None:
        await publish_definition(self.producer, self.settings.topic_prefix, definition)

    async def control(self, **command: Any) -> None:
        await send_control(self.producer, self.settings.topic_prefix, Control(**command))

    async def executions(self, account: str, contact_id: str) -> dict[str, Any]:
        return await self.read_model.get_executions(account, contact_id)

    async def wait_execution(
        self, account: str, contact_id: str, predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0, what: str = "execution state",
    ) -> dict[str, Any]:
        """The contact's only execution once ``predicate`` holds for it."""

        async def probe() -> dict[str, Any] | None:
            found = list((await self.executions(account, contact_id)).values())
            return found[0] if len(found) == 1 and predicate(found[0]) else None

        return await eventually(probe, timeout=timeout, what=f"{account}:{contact_id} {what}")

    async def committed_any(self) -> bool:
        """Has the workers' group committed an input offset on contact-events yet?"""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap.split(","),
                                    group_id=self.settings.group_id, enable_auto_commit=False,
                                    **self.settings.kafka_security())
        await consumer.start()  # not subscribed: reads the group's offsets without joining
        try:
            topic = self.topic("contact-events")
            for p in range(self.settings.partitions):
                if await consumer.committed(TopicPartition(topic, p)) is not None:
                    return True
            return False
        finally:
            await consumer.stop()

    def use_guarantee(self, guarantee: str) -> None:
        """The workers started from now on run with ``DRIPSTREAM_GUARANTEE=guarantee``
        (before any worker starts: a group's workers must agree)."""
        assert not self.workers, "set the guarantee before starting workers"
        self.env["DRIPSTREAM_GUARANTEE"] = guarantee
        self.settings = self.settings.model_copy(update={"guarantee": guarantee})
        self.exactly_once = streams_guarantee(self.settings, self.capabilities) == "exactly_once"

    @property
    def isolation_level(self) -> str:
        """How the tests read the workers' output: as a channel worker would."""
        return "read_committed" if self.exactly_once else "read_uncommitted"

    async def read_all(self, suffix: str) -> list[Any]:
        """Every record of a topic up to its current end (a snapshot, no waiting)."""
        try:
            return await read_to_end(self.bootstrap, self.topic(suffix),
                                     self.settings.partitions,
                                     embedded=not self.capabilities.exact_end_offsets,
                                     isolation_level=self.isolation_level,
                                     **self.settings.kafka_security())
        except TimeoutError as exc:
            raise AssertionError(f"{suffix}: could not read to the end ({exc})") from None

    async def stop(self) -> None:
        for worker in [*self.channels, *self.workers]:
            if worker.exit_code is None:
                worker.kill()
        await self.publisher.__aexit__(None, None, None)
        await self.producer.stop()
        # The developer's Redis keeps nothing of the test (its keys share the prefix).
        keys = [key async for key in self.redis.scan_iter(
            match=f"{self.settings.topic_prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self.redis.unlink(*keys[start:start + 1000])
        await self.redis.aclose()

    def start_worker(self, env: Mapping[str, str] | None = None) -> WorkerProcess:
        """A ``dripstream worker`` process with :attr:`env` plus ``env``; its log is
        ``worker-<n>.log`` (:meth:`worker_log`)."""
        n = len(self.workers)
        worker = WorkerProcess({**self.env, **(env or {})}, self.tmp_path / f"worker-{n}.log",
                               cwd=ROOT).start()
        self.workers.append(worker)
        return worker

    def start_channel(self, channel: str, provider: str = "file",
                      env: Mapping[str, str] | None = None) -> WorkerProcess:
        """A ``dripstream channel`` process (fast heartbeats and retries for tests); its
        log is ``channel-<n>.log``; the file provider writes :attr:`calls_path`."""
        n = len(self.channels)
        extra = {"DRIPSTREAM_CHANNEL_FILE": str(self.calls_path),
                 "DRIPSTREAM_CHANNEL_HEARTBEAT_S": "0.3",
                 "DRIPSTREAM_CHANNEL_BACKOFF_S": "0.05",
                 "DRIPSTREAM_CHANNEL_BACKOFF_MAX_S": "0.2", **(env or {})}
        worker = WorkerProcess({**self.env, **extra}, self.tmp_path / f"channel-{n}.log",
                               cwd=ROOT, command=("channel", channel, "--provider", provider))
        self.channels.append(worker.start())
        return worker

    @property
    def calls_path(self) -> Path:
        return self.tmp_path / "provider-calls.jsonl"

    def channel_log(self, n: int = 0) -> str:
        return (self.tmp_path / f"channel-{n}.log").read_text(errors="replace")

    def kill(self, worker: WorkerProcess, sig: int = signal.SIGKILL) -> None:
        worker.kill(sig, timeout=30)

    def worker_log(self, n: int = 0) -> str:
        return (self.tmp_path / f"worker-{n}.log").read_text(errors="replace")

    async def contact(self, account: str, contact_id: str) -> dict[str, Any] | None:
        return await self.read_model.get_contact(account, contact_id)

    async def wait_contact(
        self, account: str, contact_id: str, version: int, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The contact's read-model state once it has reached ``version``."""
        seen: list[dict[str, Any] | None] = [None]

        async def probe() -> dict[str, Any] | None:
            seen[0] = state = await self.contact(account, contact_id)
            return state if state and state["version"] >= version else None

        try:
            return await eventually(probe, timeout=timeout, what=f"version {version}")
        except AssertionError:
            raise AssertionError(
                f"{account}:{contact_id} did not reach version {version} in {timeout}s; "
                f"read model has {seen[0]!r}"
            ) from None

    async def read_topic(self, suffix: str, count: int, timeout: float = 30.0) -> list[Any]:
        """The first ``count`` records of a topic, read from the start by a fresh consumer."""
        consumer = AIOKafkaConsumer(
            self.topic(suffix), bootstrap_servers=self.bootstrap.split(","),
            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
            isolation_level=self.isolation_level, **self.settings.kafka_security(),
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while len(records) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records.extend(part)
        finally:
            await consumer.stop()
        assert len(records) >= count, f"{suffix}: {len(records)} records, wanted {count}"
        return records
