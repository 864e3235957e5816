"""The ``dripstream`` command as an operator runs it: a real process against real services."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from producers.publisher import build_event
from streams.events import encode_event
from streams.topics import TOPICS
from tests.stack import ROOT, Stack

pytestmark = pytest.mark.integration


async def dripstream(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streams.cli ARGS`` to completion (off the event loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", *args],
        env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "fresh_prefix",
    [
        # The topics exist already (the stack created them): only described.
        False,
        # A prefix never used: every topic is created first, then described.
        True,
    ],
)
async def test_topics_prints_one_json_line_per_topic(stack: Stack, fresh_prefix: bool) -> None:
    """`topics` creates what is missing and prints each topic with its partition count."""
    prefix = f"t{uuid.uuid4().hex[:10]}." if fresh_prefix else stack.settings.topic_prefix
    names = [f"{prefix}{spec.suffix}" for spec in TOPICS]

    result = await dripstream({**stack.env, "DRIPSTREAM_TOPIC_PREFIX": prefix}, "topics")

    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    created = [line.removeprefix("created ") for line in lines if line.startswith("created ")]
    rows = [json.loads(line) for line in lines if not line.startswith("created ")]
    assert (names if fresh_prefix else []) == created
    assert {n: (True, stack.settings.partitions) for n in names} == {
        row["topic"]: (row["exists"], row["partitions"]) for row in rows
    }
    assert len(names) == len(rows)


async def test_publish_reaches_the_worker_and_contact_shows_it(stack: Stack) -> None:
    """An event published as an argument or on stdin is applied by the worker; `contact`
    prints the resulting state."""
    stack.start_worker()
    created = build_event("acme", "c-1", "contact.created", {"phone": "+14155550101"},
                          event_id="cli-1")
    tagged = build_event("acme", "c-1", "contact.tagged", {"tag": "vip"}, event_id="cli-2")

    by_argument = await dripstream(stack.env, "publish", json.dumps(created))
    by_stdin = await dripstream(stack.env, "publish", "-", stdin=json.dumps(tagged))

    assert (0, "published contact.created cli-1") == (
        by_argument.returncode, by_argument.stdout.strip()
    ), by_argument.stderr
    assert (0, "published contact.tagged cli-2") == (
        by_stdin.returncode, by_stdin.stdout.strip()
    ), by_stdin.stderr
    state = await stack.wait_contact("acme", "c-1", 2)
    assert ("+14155550101", ["vip"]) == (state["phone"], state["tags"])

    shown = await dripstream(stack.env, "contact", "acme", "c-1")

    assert 0 == shown.returncode, shown.stderr
    assert state == json.loads(shown.stdout)


def _unknown_type() -> str:
    return json.dumps({**build_event("acme", "c-1", "contact.tagged", {"tag": "a"}),
                       "type": "contact.exploded"})


@pytest.mark.parametrize(
    ("argument", "expected_stderr"),
    [
        # A type that is not part of the contract.
        (_unknown_type(), "rejected: unknown_type"),
        # A known type whose data does not fit its model.
        (json.dumps(build_event("acme", "c-1", "purchase.completed", {"order_id": "o"})),
         "rejected: invalid_data"),
        # Not JSON at all: a usage error, before any connection is made.
        ("{not json", "not JSON"),
    ],
)
async def test_publish_invalid_event_exits_2_and_sends_nothing(
    stack: Stack, argument: str, expected_stderr: str
) -> None:
    """An invalid event is refused with exit code 2, the reason on stderr, and not produced."""
    result = await dripstream(stack.env, "publish", argument)

    assert 2 == result.returncode
    assert expected_stderr in result.stderr
    assert "published" not in result.stdout
    # Nothing went out: a marker for the same contact (same partition) is the first record.
    marker = build_event("acme", "c-1", "contact.tagged", {"tag": "m"}, event_id="marker")
    await stack.publisher.send(marker)
    records = await stack.read_topic("contact-events", 1)
    assert [(0, encode_event(marker))] == [(r.offset, r.value) for r in records]


def offline(*args: str, stdin: bytes | None = None, cwd: Path = ROOT) -> tuple[int, list[str]]:
    """Run the CLI against a broker address nothing listens on: exit code and stderr lines.

    Refusing bad input must not need a broker, so any attempt to connect fails loudly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")}
    env["DRIPSTREAM_BROKER"] = "kafka://127.0.0.1:1"
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env, cwd=cwd, input=stdin, capture_output=True, timeout=60,
    )
    assert b"" == result.stdout
    return result.returncode, result.stderr.decode("utf-8", "replace").splitlines()


DEEP = b"[" * 100_000
NOT_UTF8 = b'{"a":"\xff"}'


def _event(**data: object) -> bytes:
    return json.dumps(build_event("acme", "c-1", "contact.tagged", {"tag": "a", **data},
                                  event_id="e-1")).encode()


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Deeper than any JSON parser should follow.
        pytest.param(DEEP, "rejected: not JSON: depth limit exceeded", id="deep"),
        # Bytes that are not UTF-8.
        pytest.param(NOT_UTF8, "rejected: not JSON: str is not valid UTF-8", id="not-utf8"),
        # Readable, but deeper than the publisher can write back.
        pytest.param(_event(x=_nested(300)), "rejected: nested too deeply", id="too-deep-to-send"),
        # Well-formed JSON that is not an event object.
        pytest.param(b"[1]", "rejected: malformed_json: expected a JSON object, got list",
                     id="not-an-object"),
        # A valid envelope of a type the contract does not have: refused before connecting.
        pytest.param(json.dumps({**json.loads(_event()), "type": "contact.exploded"}).encode(),
                     "rejected: unknown_type", id="unknown-type"),
    ],
)
@pytest.mark.parametrize("via", ["stdin", "argument"])
def test_publish_bad_input_exits_2_with_one_line_and_no_broker(
    data: bytes, expected: str, via: str
) -> None:
    """Whatever the bytes, `publish` refuses them with exit 2 and one `rejected:` line on
    stderr, never a traceback, and without connecting to the broker."""
    if via == "stdin":
        code, stderr = offline("publish", "-", stdin=data)
    else:
        code, stderr = offline("publish", os.fsdecode(data))

    assert (2, 1) == (code, len(stderr)), stderr
    assert stderr[0].startswith(expected), stderr


FOUR_PROBLEMS = {
    "id": "loop", "account": "acme", "name": "Loop", "version": 1, "timezone": "Mars/Base",
    "trigger": {"event": "contact.created"}, "start": "x",
    "steps": {"a": {"kind": "wait", "duration": "2x", "next": "b"},
              "b": {"kind": "send_sms", "body": "Hi", "next": "a"}},
}


def _criterion_value(value: object) -> bytes:
    """A valid workflow whose trigger criterion compares with ``value``."""
    raw = {**FOUR_PROBLEMS, "start": "a", "steps": {"a": {"kind": "exit"}}}
    raw["trigger"] = {"event": "contact.created",
                      "criteria": [{"field": "event.data.x", "op": "eq", "value": value}]}
    del raw["timezone"]
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # Deeper than any JSON parser should follow.
        pytest.param(DEEP, ["invalid: not JSON: depth limit exceeded"], id="deep"),
        # Bytes that are not UTF-8.
        pytest.param(NOT_UTF8, ["invalid: not JSON: str is not valid UTF-8"], id="not-utf8"),
        # Valid, but deeper than the definition could be written to the topic.
        pytest.param(_criterion_value(_nested(300)), ["invalid: nested too deeply"],
                     id="too-deep-to-send"),
        # Four problems of both sorts, fields and graph: each on its own line.
        pytest.param(json.dumps(FOUR_PROBLEMS).encode(), [
            "invalid: timezone: unknown IANA time zone 'Mars/Base'",
            "invalid: steps.a.duration: invalid duration '2x'",
            "invalid: start: unknown step 'x'",
            "invalid: steps: cycle a -> b -> a",
        ], id="four-problems"),
    ],
)
@pytest.mark.parametrize("via", ["stdin", "file"])
def test_define_bad_input_exits_2_listing_every_problem_and_no_broker(
    tmp_path: Path, content: bytes, expected: list[str], via: str
) -> None:
    """`define` refuses bad input with exit 2 and one `invalid:` line per problem, never a
    traceback, and without connecting to the broker."""
    if via == "stdin":
        code, stderr = offline("define", "-", stdin=content)
    else:
        (tmp_path / "def.json").write_bytes(content)
        code, stderr = offline("define", str(tmp_path / "def.json"))

    assert (2, len(expected)) == (code, len(stderr)), stderr
    assert all(line.startswith(e) for line, e in zip(stderr, expected, strict=True)), stderr


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # No such file.
        pytest.param("missing.json", "No such file or directory", id="missing"),
        # A directory.
        pytest.param("dir", "Is a directory", id="directory"),
        # A path through a regular file.
        pytest.param("file/x.json", "Not a directory", id="under-a-file"),
    ],
)
def test_define_unreadable_file_exits_2_and_says_why(
    tmp_path: Path, name: str, reason: str
) -> None:
    """A file `define` cannot read is `invalid: cannot read FILE: <reason>`, exit 2."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("{}")
    path = tmp_path / name

    code, stderr = offline("define", str(path))

    assert (2, [f"invalid: cannot read {path}: {reason}"]) == (code, stderr)


async def test_contact_unknown_exits_1(stack: Stack) -> None:
    """`contact` for a contact the read model does not have exits 1 and says so on stderr."""
    result = await dripstream(stack.env, "contact", "acme", "nobody")

    assert (1, "") == (result.returncode, result.stdout)
    assert "no contact acme:nobody" in result.stderr


class _Lines:
    """A process's stdout, line by line, readable with a deadline (a thread drains the pipe)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def drain() -> None:
            for line in stdout:
                self._queue.put(line)
            self._queue.put(None)

        self.thread = threading.Thread(target=drain, daemon=True)
        self.thread.start()

    def read_until(self, text: str, deadline: float) -> bool:
        """True once ``text`` has been printed; False at EOF or when the deadline passes."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                return False
            self.seen.append(line)
            if text in "".join(self.seen):
                return True
        return False

    def rest(self) -> str:
        """Everything printed, once the process has closed its stdout."""
        self.thread.join(10)
        while not self._queue.empty():
            if (line := self._queue.get()) is not None:
                self.seen.append(line)
        return "".join(self.seen)


def _started(output: str) -> list[int]:
    """The pids of what `dev` printed it started (the broker by port, the rest by pid)."""
    pids = [int(m) for m in re.findall(r"(?:worker|api)\s+.*?pid (\d+)", output)]
    for found in re.findall(r"channels .* pids \[([0-9, ]+)\]", output):  # console workers
        pids += [int(p) for p in found.split(",")]
    for port in re.findall(r"broker\s+kafka://127\.0\.0\.1:(\d+)", output):
        found = subprocess.run(["pgrep", "-f", f"listener-url tcp://127.0.0.1:{port}"],
                               capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in found]
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_dev_demo_runs_everything_and_stops_on_sigint(tmp_path: Path, stop: str) -> None:
    """`dev --demo` starts its own broker, Redis and worker, shows the demo contact at
    version 2 and its order confirmation reaching the console SMS worker, and on a
    terminal's Ctrl-C (SIGINT to its process group) — or a SIGTERM to it alone, as a
    supervisor sends — stops everything, worker first, and says so."""
    env: dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")}
    env["DRIPSTREAM_TOPIC_PREFIX"] = f"t{uuid.uuid4().hex[:10]}."
    env["DRIPSTREAM_DATA_DIR"] = str(tmp_path / "data")
    stderr = tmp_path / "dev.stderr"
    started: list[int] = []
    # A session of its own, like a terminal's job: the SIGINT goes to the whole group.
    with open(stderr, "w") as err, subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "dev", "--demo"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True,
        start_new_session=True,
    ) as proc:
        lines = _Lines(proc)
        try:
            shown = lines.read_until('"version": ', time.monotonic() + 60)
            started = _started("".join(lines.seen))
            assert shown, (
                f"no demo state in 60 s; stdout: {''.join(lines.seen)!r}; stderr: "
                + stderr.read_text()[-3000:]
            )
            # The state JSON ends with its closing brace; read up to it before stopping.
            assert lines.read_until("\n}\n", time.monotonic() + 10)
            # The demo workflow's confirmation, printed by the console SMS worker.
            thanks = "Thanks Ada, your order is confirmed."
            assert thanks in "".join(lines.seen) or lines.read_until(
                thanks, time.monotonic() + 30), "".join(lines.seen)[-3000:]

            if stop == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGTERM)
            returncode = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            leftovers = [pid for pid in started if _alive(pid)]
            for pid in leftovers:
                os.kill(pid, signal.SIGKILL)
        output = lines.rest()

    state = json.loads(output[output.index("{\n"):output.index("\n}\n") + 2])
    # Version 2 (the two events), or 3 once the console worker's message.sent came back.
    assert ("demo", "c-1", 1) == (state["account"], state["contact_id"], state["purchases"])
    assert state["version"] in (2, 3)
    assert "+14155550101" == state["phone"]
    assert "stopped" == output.splitlines()[-1]
    assert (0, []) == (returncode, leftovers)
    assert len(started) == 5, output  # broker, worker, API, the sms and email channel workers
    assert f"data     {(tmp_path / 'data').resolve()}" in output
    assert "ERROR" not in stderr.read_text()
