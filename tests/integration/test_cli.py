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

import httpx
import pytest

from producers.publisher import build_event
from streams.embedded import free_port
from streams.events import encode_event
from streams.topics import TOPICS
from tests.stack import ROOT, Stack

pytestmark = [pytest.mark.integration, pytest.mark.surface]


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
    assert [f"read from {_redis_at(stack)}"] == shown.stderr.splitlines()


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


def offline(*args: str, stdin: bytes | None = None, cwd: Path = ROOT,
            env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run the CLI against a broker (and Redis) address nothing listens on: exit code and
    stderr lines.

    Refusing bad input must not need a broker, so any attempt to connect fails loudly."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")},
           "DRIPSTREAM_BROKER": "kafka://127.0.0.1:1",
           "DRIPSTREAM_REDIS_URL": "redis://127.0.0.1:1/0", **(env or {})}
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


def _redis_at(stack: Stack, url: str | None = None) -> str:
    return (f"{url or stack.settings.redis_url} (DRIPSTREAM_REDIS_URL), key prefix "
            f"{stack.settings.topic_prefix!r}")


async def test_contact_unknown_exits_1(stack: Stack) -> None:
    """`contact` for a contact the read model does not have exits 1 and says so on stderr,
    naming the Redis and key prefix it asked (a wrong DRIPSTREAM_REDIS_URL shows)."""
    result = await dripstream(stack.env, "contact", "acme", "nobody")

    assert (1, "") == (result.returncode, result.stdout)
    assert [f"no contact acme:nobody in the read model at {_redis_at(stack)}"] == (
        result.stderr.splitlines())


WELCOME: dict[str, object] = {
    "kind": "workflow", "id": "welcome", "account": "acme", "name": "Welcome", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "hello",
    "steps": {"hello": {"kind": "send_sms", "body": "Hi"}},
}


@pytest.mark.slow
async def test_define_refuses_what_the_workers_would_ignore(stack: Stack) -> None:
    """A changed body at a published version and a version below the newest are refused
    (exit 3, what to publish instead) and never reach the topic; this very body again is
    `unchanged` (exit 0, nothing written). Before, the changed v1 was "published", exit 0,
    and the workers ignored it."""

    async def define(**change: object) -> tuple[int, str, str]:
        r = await dripstream(stack.env, "define", "-", stdin=json.dumps({**WELCOME, **change}))
        return r.returncode, r.stdout.strip(), r.stderr.strip()

    assert (0, "published workflow acme/welcome v1", "") == await define()
    assert (0, "unchanged: workflow acme/welcome v1 is published already with this very "
               "body", "") == await define()
    assert (3, "", "refused: workflow acme/welcome v1 is published already with another "
                   "body (the workers run the first one): publish your change as v2"
            ) == await define(name="Changed")
    assert (0, "published workflow acme/welcome v3", "") == await define(version=3,
                                                                         name="Three")
    assert (3, "", "refused: workflow acme/welcome is at v3: v2 would be an older version; "
                   "publish v4") == await define(version=2, name="Two")
    records = await stack.read_all("definitions")
    assert [(b"workflow:acme:welcome:1", "Welcome"), (b"workflow:acme:welcome:3", "Three")
            ] == sorted((r.key, json.loads(r.value)["name"]) for r in records)


async def test_a_publisher_that_lost_the_race_is_refused_and_keeps_the_winner(
    stack: Stack,
) -> None:
    """Another publisher's record for the same version lands between our check and our
    record: the read-back refuses ours and publishes the winner again, so the key's last
    record (the one compaction keeps) is the one the workers run."""
    from producers.admin import DefinitionConflict, check, confirm, following
    from streams.definitions import definition_key, parse_any

    mine = parse_any({**WELCOME, "name": "Mine"})
    key = definition_key(mine).encode()
    async with following(stack.settings) as registry:
        assert "new" == check(registry, mine)  # nothing there when we looked
        await stack.define(dict(WELCOME))  # the other publisher, first
        meta = await stack.producer.send_and_wait(
            stack.topic("definitions"), key=key,
            value=json.dumps(mine.model_dump(mode="json")).encode())
        with pytest.raises(DefinitionConflict, match="published meanwhile by someone else"):
            await confirm(stack.producer, stack.settings.topic_prefix, registry, mine,
                          meta.partition, meta.offset)
    records = sorted((r for r in await stack.read_all("definitions") if r.key == key),
                     key=lambda r: r.offset)
    assert ["Welcome", "Mine", "Welcome"] == [json.loads(r.value)["name"] for r in records]


async def test_define_without_the_definitions_topic_says_so(stack: Stack) -> None:
    """A prefix whose topics were never created: `define` says the topic does not exist,
    exit 1, instead of waiting for it for ever (or letting the broker create it
    uncompacted)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."

    result = await dripstream({**stack.env, "DRIPSTREAM_TOPIC_PREFIX": prefix}, "define",
                              "-", stdin=json.dumps(WELCOME))

    assert (1, [f"cannot read the definitions at {stack.settings.broker} (DRIPSTREAM_BROKER): "
                f"{prefix}definitions does not exist (`dripstream topics` or a worker "
                "creates it)"]) == (result.returncode, result.stderr.splitlines())


async def test_other_accounts_old_conflicts_print_nothing(stack: Stack) -> None:
    """A refused record of another account on the topic (a race lost long ago) is not
    printed by every later command (it was: `ignoring a changed b'…'`)."""
    await stack.define({**WELCOME, "account": "globex"})
    await stack.define({**WELCOME, "account": "globex", "name": "Changed"})

    result = await dripstream(stack.env, "define", "-", stdin=json.dumps(WELCOME))

    assert (0, "") == (result.returncode, result.stderr)


CAMPAIGN: dict[str, object] = {
    "kind": "campaign", "id": "spring", "account": "acme", "name": "Spring", "version": 1,
    "content": {"channel": "sms", "body": "Sale!"},
    "schedule": {"type": "once", "at": "2030-03-01T10:00", "timezone": "UTC"},
}


@pytest.mark.parametrize("args", [
    pytest.param(("contact", "acme", "c-1"), id="contact"),
    pytest.param(("campaign", "preview", "spring", "--account", "acme"), id="preview"),
    pytest.param(("campaign", "status", "spring", "--account", "acme"), id="status"),
])
async def test_unreachable_redis_is_one_line_and_exit_1(stack: Stack, args: tuple[str, ...]
                                                        ) -> None:
    """A wrong DRIPSTREAM_REDIS_URL is one line naming it, exit 1 (it was a 276-line
    traceback)."""
    await stack.define(dict(CAMPAIGN))
    url = "redis://127.0.0.1:1/0"

    result = await dripstream({**stack.env, "DRIPSTREAM_REDIS_URL": url}, *args)

    assert (1, "") == (result.returncode, result.stdout)
    lines = result.stderr.splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith(f"cannot reach Redis at {_redis_at(stack, url)}: Error 111")


async def test_publish_prints_only_its_result(stack: Stack) -> None:
    """A successful publish prints one line and nothing on stderr, also without the
    embedded profile (as the README's shell has it): the embedded broker's refusal of
    an idempotent producer printed an aiokafka ERROR and a warning each time."""
    event = build_event("acme", "c-1", "contact.tagged", {"tag": "vip"}, event_id="quiet-1")
    env = {**stack.env, "DRIPSTREAM_PROFILE": "production"}

    result = await dripstream(env, "publish", json.dumps(event))

    assert (0, "published contact.tagged quiet-1", "") == (
        result.returncode, result.stdout.strip(), result.stderr)


def _valid_event() -> str:
    return json.dumps(build_event("acme", "c-1", "contact.tagged", {"tag": "a"}))


@pytest.mark.parametrize("args", [
    pytest.param(("publish", _valid_event()), id="publish"),
    pytest.param(("define", "-"), id="define"),
    pytest.param(("suppress", "acme", "+14155550101"), id="suppress"),
    pytest.param(("topics",), id="topics"),
    pytest.param(("campaign", "pause", "spring", "--account", "acme"), id="campaign-pause"),
])
def test_unreachable_broker_is_one_line_and_exit_1(args: tuple[str, ...]) -> None:
    """Without a broker, valid input gets one line naming DRIPSTREAM_BROKER, exit 1 —
    not client reconnection errors and a message about idempotence before it."""
    stdin = json.dumps(WELCOME).encode() if args[0] == "define" else None

    code, stderr = offline(*args, stdin=stdin)

    assert 1 == code
    assert 1 == len(stderr), stderr
    assert stderr[0].startswith("cannot reach the broker at kafka://127.0.0.1:1 "
                                "(DRIPSTREAM_BROKER): ")


@pytest.mark.parametrize(("env", "args", "expected"), [
    # Invalid settings are exit 2 for every command (`worker` did it, `topics` traced).
    pytest.param({"DRIPSTREAM_PARTITIONS": "abc"}, ("topics",),
                 "invalid DRIPSTREAM_PARTITIONS: Input should be a valid integer, unable to "
                 "parse string as an integer", id="partitions-abc"),
    pytest.param({"DRIPSTREAM_PARTITIONS": "abc"}, ("contact", "acme", "c-1"),
                 "invalid DRIPSTREAM_PARTITIONS: Input should be a valid integer", id="contact"),
    pytest.param({"DRIPSTREAM_REDIS_URL": "nowhere"}, ("contact", "acme", "c-1"),
                 "invalid DRIPSTREAM_REDIS_URL: Redis URL must specify one of the following "
                 "schemes", id="redis-url"),
    # An address that is neither a phone number nor an email address.
    pytest.param({}, ("suppress", "demo", "not-an-address"),
                 "invalid ADDRESS 'not-an-address': an E.164 phone number (+14155550101) "
                 "or an email address", id="suppress-address"),
    pytest.param({}, ("suppress", "demo", "+14155550101", "--reason", "bored"),
                 "invalid --reason 'bored': manual, opted_out, bounced, complained",
                 id="suppress-reason"),
    # Errors name the flags, not the model's fields.
    pytest.param({}, ("control", "pause", "--account", "acme"),
                 "invalid: pause needs --contact and --execution", id="control-missing"),
    pytest.param({}, ("control", "cancel_all", "--account", "acme"),
                 "invalid: cancel_all needs --workflow", id="cancel-all-missing"),
    pytest.param({}, ("control", "pause", "--account", "a b", "--contact", "c",
                      "--execution", "e"),
                 "invalid --account: String should match pattern", id="control-account"),
    pytest.param({}, ("control", "stop", "--account", "acme"),
                 "invalid ACTION 'stop': pause, resume, cancel or cancel_all",
                 id="control-action"),
])
def test_invalid_arguments_and_settings_exit_2_with_one_line(
    env: dict[str, str], args: tuple[str, ...], expected: str,
) -> None:
    """Bad arguments or settings: one line, exit 2, nothing sent (no broker needed)."""
    code, stderr = offline(*args, env=env)

    assert (2, 1) == (code, len(stderr)), stderr
    assert stderr[0].startswith(expected), stderr


def test_a_six_field_cron_is_offered_the_five_field_form() -> None:
    """`define` of a Quartz-style cron says which 5-field cron to write, as the docs
    promise."""
    weekly = {**CAMPAIGN, "schedule": {"type": "recurring", "cron": "0 0 9 * * MON",
                                       "timezone": "UTC"}}

    code, stderr = offline("define", "-", stdin=json.dumps(weekly).encode())

    assert (2, 1) == (code, len(stderr)), stderr
    assert stderr[0].endswith("(seconds and years fields are not supported): write "
                              "'0 9 * * MON'")


WAITING: dict[str, object] = {
    "kind": "workflow", "id": "drip", "account": "acme", "name": "Drip", "version": 1,
    "trigger": {"event": "contact.created"}, "start": "wait",
    "steps": {"wait": {"kind": "wait", "duration": "1d", "next": "hello"},
              "hello": {"kind": "send_sms", "body": "Hi"}},
}


@pytest.mark.slow
async def test_control_checks_the_execution_before_sending(stack: Stack) -> None:
    """An execution the read model does not have is refused, exit 1, nothing sent (it
    said "sent pause"); one whose status the action does not change too; a waiting one
    is paused."""
    await stack.define(dict(WAITING))
    stack.start_worker()
    await stack.publisher.publish("acme", "c-1", "contact.created", {"phone": "+14155550101"})
    waiting = await stack.wait_execution("acme", "c-1", lambda ex: ex["status"] == "waiting")
    base = ("control", "--account", "acme", "--contact", "c-1", "--execution")

    unknown = await dripstream(stack.env, base[0], "pause", *base[1:], "nope")
    resume = await dripstream(stack.env, base[0], "resume", *base[1:], waiting["id"])
    pause = await dripstream(stack.env, base[0], "pause", *base[1:], waiting["id"])

    assert (1, "") == (unknown.returncode, unknown.stdout)
    assert unknown.stderr.startswith(f"no execution 'nope' of acme:c-1 in the read model at "
                                     f"{_redis_at(stack)} (its executions: {waiting['id']})")
    assert (1, f"not sent: execution {waiting['id']} of acme:c-1 is waiting; resume changes "
               "only a paused one") == (resume.returncode, resume.stderr.strip())
    assert (0, f"sent pause for execution {waiting['id']} of acme:c-1 (waiting; the "
               "contact's worker applies it in order with its events)") == (
        pause.returncode, pause.stdout.strip())
    await stack.wait_execution("acme", "c-1", lambda ex: ex["status"] == "paused")
    assert 1 == len(await stack.read_all("control"))


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
    """The pids of what `dev` printed it started (its banner, printed twice with --demo)."""
    pids = {int(m) for m in re.findall(r"(?:broker|worker|shadow|api)\s+.*?pid (\d+)",
                                       output)}
    for found in re.findall(r"channels .* pids \[([0-9, ]+)\]", output):  # console workers
        pids |= {int(p) for p in found.split(",")}
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kafka_or_skip() -> None:
    from streams.apache_kafka import KafkaPrerequisitesMissing, kafka_classpath

    try:
        kafka_classpath()
    except KafkaPrerequisitesMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize(("broker", "stop"), [
    ("tansu", "ctrl-c"), ("tansu", "sigterm"),
    # The same stack and demo on Apache Kafka (its jars from the Maven cache).
    ("kafka", "ctrl-c"),
])
@pytest.mark.slow
def test_dev_demo_runs_everything_and_stops_on_sigint(tmp_path: Path, broker: str,
                                                      stop: str) -> None:
    """`dev --demo` starts its own broker, Redis and worker, shows the demo contact at
    version 2 and its order confirmation reaching the console SMS worker, and on a
    terminal's Ctrl-C (SIGINT to its process group) — or a SIGTERM to it alone, as a
    supervisor sends — stops everything, worker first, and says so. Quietly: no
    framework INFO logs, and the banner (addresses, key) is printed again after the
    demo; the API answers where the banner says (8080, or a free port if taken), on a
    store of its own run."""
    if broker == "kafka":
        _kafka_or_skip()
    env: dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("DRIPSTREAM_")}
    env["DRIPSTREAM_TOPIC_PREFIX"] = f"t{uuid.uuid4().hex[:10]}."
    env["DRIPSTREAM_DATA_DIR"] = str(tmp_path / "data")
    if (broker, stop) != ("tansu", "ctrl-c"):
        # One variant takes dev's default port; the others run beside it in a parallel
        # run (make test), each on a port of its own.
        env["DRIPSTREAM_API_PORT"] = str(free_port())
    # An earlier run's API store: a fresh broker's dev must not bring it back (found by
    # the new-user trial: old definitions and keys listed, unknown to the new workers).
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api.db").write_bytes(b"not the store of this run")
    stderr = tmp_path / "dev.stderr"
    started: list[int] = []
    answered = 0
    # A session of its own, like a terminal's job: the SIGINT goes to the whole group.
    with open(stderr, "w") as err, subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "dev", "--demo", "--broker", broker],
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
            # The banner again, below the demo's output.
            assert lines.read_until("Ctrl-C stops everything", time.monotonic() + 10)
            api = re.findall(r"^api\s+(http://\S+)/v1", "".join(lines.seen), re.M)[-1]
            answered = httpx.get(f"{api}/openapi.json", timeout=10).status_code

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
    # broker, worker, shadow runner, API, the sms and email channel workers
    assert len(started) == 6, output
    assert f"data      {(tmp_path / 'data').resolve()}" in output
    assert 200 == answered
    # Everything dev printed before the state: the banner, twice, around the demo.
    state_at = output.index("\n{\n")
    assert 2 == output.count("api key   ds_boot_"), output
    assert output.index("api key") < state_at < output.rindex("api key")
    logs = stderr.read_text()
    assert ("ERROR" not in logs and "INFO" not in logs), logs[-3000:]


def test_dev_api_port_taken_picks_a_free_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dev`'s default API port held by another process: a free port instead, and the
    banner says why (it failed with an ERROR line and no API)."""
    import socket

    from streams import cli

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        monkeypatch.setattr(cli, "DEV_API_PORT", taken)

        host, port, note = cli._api_address({})

    assert ("127.0.0.1", f"; {taken} is taken") == (host, note)
    assert port != taken


def test_dev_refuses_a_given_api_port_that_is_taken(tmp_path: Path) -> None:
    """DRIPSTREAM_API_PORT set to a port in use: one line, exit 2, nothing started."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]

        code, stderr = offline("dev", cwd=tmp_path, env={"DRIPSTREAM_API_PORT": str(taken)})

    assert (2, [f"invalid DRIPSTREAM_API_PORT: 127.0.0.1:{taken} is in use by another "
                "process (unset it and dev picks a free port)"]) == (code, stderr)
    assert not (tmp_path / "data").exists()


def test_dev_broker_kafka_without_java_or_maven_exits_2(tmp_path: Path) -> None:
    """`dev --broker kafka` where neither Java nor Maven is on PATH (and nothing is
    cached): the module's one-line reason, exit 2, nothing left running."""
    (tmp_path / "bin").mkdir()
    env = {"PATH": str(tmp_path / "bin"), "DRIPSTREAM_KAFKA_CACHE": str(tmp_path / "cache")}

    code, stderr = offline("dev", "--broker", "kafka", cwd=tmp_path, env=env)

    assert (2, ["cannot start Apache Kafka: Apache Kafka needs Java 17+ and Maven on PATH; "
                "missing: java, mvn"]) == (code, stderr)
