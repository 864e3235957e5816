"""Apache Kafka for tests and ``dripstream dev --broker kafka``: the real broker, started here.

The broker's jars come from Maven Central (``org.apache.kafka:kafka_2.13``, with a log4j2
binding) through ``mvn dependency:copy-dependencies`` into a cache outside the repo
(``$DRIPSTREAM_KAFKA_CACHE``, default ``~/.cache/dripstream/kafka-<version>``), once per
machine. :class:`KafkaCluster` formats KRaft storage and starts one or three combined
broker+controller nodes (``java -cp <jars> kafka.Kafka``) on free ports, each a process of
its own that a fault test may SIGKILL and start again.

Options a test or the dev stack needs, and nothing more:

- ``nodes=3`` gives a cluster with replication factor 3 and ``min.insync.replicas=2`` for
  the internal topics (the chaos run's broker kills); one node otherwise.
- ``sasl_ssl=True`` adds a ``SASL_SSL`` listener with SCRAM-SHA-512 for clients, its
  certificate signed by a local CA (``trustme``), the user created at format time
  (``--add-scram``); brokers and controllers talk PLAINTEXT among themselves.
- ``group.min.session.timeout.ms`` is lowered so that the ``embedded`` profile's 2 s
  sessions are accepted: a test's worker joins and fails over in seconds, as on Tansu.

Needs ``java`` (17+) and ``mvn`` on ``PATH``; without them :class:`KafkaUnavailable` says
so in one line (tests skip with it, ``dripstream dev --broker kafka`` exits 2 with it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from streams.embedded import free_port, wait_for_port

__all__ = ["KAFKA_VERSION", "KafkaCluster", "KafkaPrerequisitesMissing", "KafkaUnavailable",
           "Node", "kafka_classpath"]

#: The broker version fetched (a 4.x release; the tests and the bench ran on it).
KAFKA_VERSION = os.environ.get("DRIPSTREAM_KAFKA_VERSION", "4.1.1")
_LOG4J_VERSION = "2.25.3"
_SLF4J_VERSION = "2.0.17"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dripstream</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# Brokers log to their process's stdout (the node's log file); INFO is needed for the
# "started" line the start-up waits for, and request logs stay quiet.
_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot be run here (no Java or Maven, the fetch failed, a node did not
    start)."""


class KafkaPrerequisitesMissing(KafkaUnavailable):
    """This machine has no Java or no Maven: the one case tests skip on (anything else,
    a node that does not start, is a failure)."""


def _cache_dir(version: str) -> Path:
    root = os.environ.get("DRIPSTREAM_KAFKA_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "dripstream"
    return base / f"kafka-{version}"


def kafka_classpath(version: str = KAFKA_VERSION) -> Path:
    """The folder of the broker's jars, fetched from Maven Central on first use.

    Safe to call from several processes at once (a file lock around the fetch)."""
    cache = _cache_dir(version)
    lib, stamp = cache / "lib", cache / ".complete"
    if stamp.exists():
        return lib
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise KafkaPrerequisitesMissing(f"Apache Kafka needs Java 17+ and Maven on PATH; missing: "
                               f"{', '.join(missing)}")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return lib
        (cache / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION,
                                                   slf4j=_SLF4J_VERSION))
        shutil.rmtree(lib, ignore_errors=True)
        done = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(cache / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
            capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise KafkaUnavailable(f"mvn could not fetch org.apache.kafka:kafka_2.13:{version}: "
                                   + " | ".join(tail))
        (cache / "log4j2.properties").write_text(_LOG4J2)
        stamp.write_text(version)
    return lib


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 — never one starting with
    "-", which the storage tool's argument parser takes for an option (one in 64 did:
    ``kafka-storage: error: argument --cluster-id/-t: expected one argument``; Kafka's own
    ``Uuid.randomUuid`` draws again for the same reason)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


@dataclass
class Node:
    """One combined broker+controller process."""

    node_id: int
    port: int  # the clients' listener (PLAINTEXT, or SASL_SSL with ``sasl_ssl``)
    internal_port: int  # broker to broker, PLAINTEXT
    controller_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class Scram:
    """The client credentials of a ``sasl_ssl`` cluster."""

    username: str
    password: str
    cafile: Path


class KafkaCluster:
    """One or three Apache Kafka KRaft nodes under ``work_dir``, on free ports.

    ``start()`` formats (once) and starts every node and waits until each says it has
    started; ``stop()`` stops them all. :meth:`kill_node` and :meth:`start_node` are for
    fault tests (a SIGKILLed node keeps its log dir and rejoins)."""

    def __init__(self, work_dir: Path, *, nodes: int = 1, sasl_ssl: bool = False,
                 heap: str = "384m", version: str = KAFKA_VERSION,
                 extra_config: dict[str, str] | None = None) -> None:
        if nodes not in (1, 3):
            raise ValueError("a cluster of 1 or 3 nodes")
        self.work_dir = work_dir
        self.version = version
        self.heap = heap
        self.sasl_ssl = sasl_ssl
        self.extra_config = dict(extra_config or {})
        self.cluster_id = _cluster_id()
        self.scram: Scram | None = None
        self.nodes = [
            Node(i, free_port(), free_port(), free_port(), work_dir / f"node-{i}",
                 work_dir / f"node-{i}.log")
            for i in range(1, nodes + 1)
        ]

    @property
    def bootstrap(self) -> str:
        """``host:port,…`` of the clients' listeners."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def url(self) -> str:
        """The Faust broker URL (``;``-separated)."""
        return ";".join(f"kafka://127.0.0.1:{n.port}" for n in self.nodes)

    def _properties(self, node: Node) -> str:
        replicas = len(self.nodes)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        client = "SASL_SSL" if self.sasl_ssl else "PLAINTEXT"
        config = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"CLIENT://127.0.0.1:{node.port},INTERNAL://127.0.0.1:"
                         f"{node.internal_port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.port},"
                                    f"INTERNAL://127.0.0.1:{node.internal_port}",
            "listener.security.protocol.map":
                f"CLIENT:{client},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(2, replicas)),
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, replicas)),
            "transaction.state.log.num.partitions": "8",
            "group.initial.rebalance.delay.ms": "0",
            # The embedded profile's 2 s sessions (Kafka's floor is 6 s by default).
            "group.min.session.timeout.ms": "500",
            # Compaction soon enough for a test to see it (production keeps the defaults).
            "log.cleaner.backoff.ms": "1000",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "auto.create.topics.enable": "false",
        }
        if self.sasl_ssl:
            tls = self.work_dir / "tls"
            config |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.client.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(tls / "broker.pem"),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(tls / "ca.pem"),
                "ssl.client.auth": "none",
            }
        config |= self.extra_config
        return "".join(f"{key}={value}\n" for key, value in config.items())

    def _tls(self) -> None:
        """A local CA and the brokers' certificate (PEM keystore: key and chain in one)."""
        import trustme
        from cryptography.hazmat.primitives import serialization

        tls = self.work_dir / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        cert = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
        ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
        with open(tls / "broker.pem", "wb") as out:
            # Kafka's PEM keystore reads PKCS#8 keys only.
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())
        self.scram = Scram("dripstream", f"secret-{uuid.uuid4().hex[:12]}", tls / "ca.pem")

    def _java(self, lib: Path, *args: str) -> list[str]:
        log4j = lib.parent / "log4j2.properties"
        return ["java", f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
                "-cp", f"{lib}/*", *args]

    def _format(self, lib: Path, node: Node, props: Path) -> None:
        args = ["kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(props),
                "--ignore-formatted"]
        if self.scram is not None:
            args += ["--add-scram", f"SCRAM-SHA-512=[name={self.scram.username},"
                                    f"password={self.scram.password}]"]
        done = subprocess.run(self._java(lib, *args), capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise KafkaUnavailable(f"formatting node {node.node_id} failed: "
                                   f"{(done.stdout + done.stderr).strip()[-500:]}")

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        lib = kafka_classpath(self.version)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.sasl_ssl and self.scram is None:
            self._tls()
        for node in self.nodes:
            props = self.work_dir / f"node-{node.node_id}.properties"
            props.write_text(self._properties(node))
            self._format(lib, node, props)
        for node in self.nodes:
            self._launch(lib, node)
        for node in self.nodes:
            self._wait_started(node, timeout)
        self._wait_coordinators(timeout)
        return self

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for this cluster's client listener."""
        if self.scram is None:
            return {}
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": self.scram.username,
                "sasl_plain_password": self.scram.password,
                "ssl_context": ssl.create_default_context(cafile=str(self.scram.cafile))}

    def _wait_coordinators(self, timeout: float) -> None:
        """Until a group and a transaction coordinator answer: a new cluster creates its
        offsets and transaction logs on their first use, and the first client would wait
        for them (a test's first consumer group, seconds of GroupCoordinatorNotAvailable)."""
        from aiokafka.client import AIOKafkaClient
        from aiokafka.errors import KafkaError

        async def ready() -> None:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap, **self.client_options())
            await client.bootstrap()
            deadline = time.monotonic() + timeout
            try:
                for kind in (0, 1):  # group, transaction
                    while True:
                        try:
                            await client.coordinator_lookup(kind, "dripstream-ready")
                            break
                        except KafkaError:
                            if time.monotonic() > deadline:
                                raise
                            await asyncio.sleep(0.2)
            finally:
                await client.close()

        # In a thread of its own: the caller may be inside an event loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, ready()).result()

    def _launch(self, lib: Path, node: Node) -> None:
        node._log = open(node.log_path, "ab")
        props = self.work_dir / f"node-{node.node_id}.properties"
        node.proc = subprocess.Popen(self._java(lib, "kafka.Kafka", str(props)),
                                     stdout=node._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def _wait_started(self, node: Node, timeout: float) -> None:
        """Until the node logs that it started (its listener answers before it can serve)."""
        assert node.proc is not None
        deadline = time.monotonic() + timeout
        wait_for_port(node.port, timeout=timeout, proc=node.proc)
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise KafkaUnavailable(f"Kafka node {node.node_id} exited with "
                                       f"{node.proc.returncode}; see {node.log_path}")
            if b"Kafka Server started" in node.log_path.read_bytes()[-200_000:]:
                return
            time.sleep(0.1)
        raise KafkaUnavailable(f"Kafka node {node.node_id} did not start in {timeout:.0f}s; "
                               f"see {node.log_path}")

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (a crash: no controlled shutdown)."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(30)
        self._close_log(node)

    def start_node(self, node_id: int, timeout: float = 120.0) -> None:
        """Start a stopped node again (same ports, same log dir)."""
        node = self.node(node_id)
        if node.running:
            return
        # Its log file only grows: wait for a "started" line after this point.
        mark = node.log_path.stat().st_size if node.log_path.exists() else 0
        self._launch(kafka_classpath(self.version), node)
        assert node.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise KafkaUnavailable(f"Kafka node {node_id} exited on restart; "
                                       f"see {node.log_path}")
            with open(node.log_path, "rb") as log:
                log.seek(mark)
                if b"Kafka Server started" in log.read():
                    return
            time.sleep(0.1)
        raise KafkaUnavailable(f"Kafka node {node_id} did not restart in {timeout:.0f}s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every node (a controlled shutdown), SIGKILL what lingers."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            self._close_log(node)

    @staticmethod
    def _close_log(node: Node) -> None:
        if node._log is not None:
            with contextlib.suppress(OSError):
                node._log.close()
            node._log = None

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
