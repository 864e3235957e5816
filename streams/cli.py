"""The ``dripstream`` command: everything an operator does, as thin wrappers.

Commands import the Faust app lazily: ``dev`` sets the environment for the processes it
starts before anything reads the settings.

What a command prints: its result on stdout, each problem as one line on stderr, and
nothing else — the clients' and frameworks' own logs (aiokafka, Faust, uvicorn) only
with ``-v`` (``dripstream -v publish …``, ``dripstream dev -v``). Exit statuses, the same
for every command: 0 done; 1 a service it needs cannot be reached (the broker, Redis), or
what it names does not exist or cannot take the command; 2 invalid input or settings; 3
refused because it conflicts with what is published (``define``). ``worker`` and
``channel`` also exit 70 on a fatal error (restart them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

__all__ = ["main"]

T = TypeVar("T")

cli = typer.Typer(help="dripstream: Kafka-native marketing automation.", no_args_is_help=True)

#: The exit status of a publication refused as a conflict (``define``).
EXIT_CONFLICT = 3
#: Where ``dev`` serves the admin API unless that port is taken (or DRIPSTREAM_API_PORT).
DEV_API_PORT = 8080


class _Options:
    #: ``-v``: the clients' and frameworks' own logs too.
    verbose = False


@cli.callback()
def _options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="also print the clients' and frameworks' own logs (INFO)")
    ] = False,
) -> None:
    """dripstream: Kafka-native marketing automation."""
    _Options.verbose = verbose


@cli.command()
def worker() -> None:
    """Run a stream worker (agents and tables) against DRIPSTREAM_BROKER.

    Exit status: 0 after SIGTERM/SIGINT, 70 on any fatal error or an unreachable broker
    (restart it), 2 on invalid settings (also: credentials or a certificate the broker
    refuses, a guarantee it cannot give)."""
    from aiokafka.errors import KafkaError

    from agents.worker import EXIT_FATAL, build, run
    from streams.capabilities import BrokerRefused, GuaranteeError, guarantee, probe

    settings = _settings_or_exit()
    if settings.clock_offset_file is not None:
        typer.echo(f"WARNING: test clock shifted by {settings.clock_offset_file}", err=True)
    if settings.fault is not None:
        typer.echo(f"WARNING: fault injection {settings.fault!r} (tests only)", err=True)
    try:
        with _quiet("aiokafka"):  # its errors are said below, in one line
            capabilities = asyncio.run(probe(settings))
        chosen = guarantee(settings, capabilities)
    except GuaranteeError as exc:
        typer.echo(f"invalid DRIPSTREAM_GUARANTEE: {exc}", err=True)
        raise typer.Exit(2) from None
    except BrokerRefused as exc:
        typer.echo(f"the broker refused this worker: {exc}", err=True)
        raise typer.Exit(2) from None
    except (KafkaError, OSError) as exc:
        typer.echo(f"cannot reach the broker at {settings.broker} (DRIPSTREAM_BROKER): {exc}",
                   err=True)
        raise typer.Exit(EXIT_FATAL) from None
    typer.echo(f"broker: {capabilities.describe()}; guarantee: {chosen}", err=True)
    raise typer.Exit(run(build(settings, capabilities)))


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """No log records of ``logger`` while inside (the caller reports what went wrong)."""
    log = logging.getLogger(logger)
    disabled, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = disabled


def _settings_or_exit() -> Any:
    """The settings; invalid ones are printed and exit 2."""
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = ".".join(str(p) for p in error["loc"]).upper()
            where = f"DRIPSTREAM_{name}" if name else "settings"
            typer.echo(f"invalid {where}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


def _one_shot() -> Any:
    """The settings of a command that does one thing and exits; the clients' own logs
    kept out of its output unless ``-v`` (a broker that cannot be reached is the
    command's own one line, not a page of reconnection errors before it)."""
    import logging

    settings = _settings_or_exit()
    if _Options.verbose:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return settings


@cli.command()
def channel(
    name: Annotated[str, typer.Argument(help="sms | mms | email")],
    provider: Annotated[str, typer.Option(help="console | file | webhook")] = "console",
    policy: Annotated[str | None, typer.Option(
        help="unknown outcomes: lookup | assume_sent (default: lookup if the provider can)")
    ] = None,
) -> None:
    """Run a channel worker: deliver <prefix>send.<name> through a reference provider,
    each message id at most once, and report back (docs/channel-workers.md).

    Exit status: 0 after SIGTERM/SIGINT, 70 on a fatal error, 2 on invalid settings (also:
    credentials or a certificate the broker refuses)."""
    import logging

    from producers.channel import ChannelWorker
    from producers.providers import build_provider

    settings = _settings_or_exit()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    if settings.channel_file_faults:
        typer.echo(f"WARNING: provider faults {settings.channel_file_faults!r} (tests only)",
                   err=True)
    secret = settings.channel_callback_secret or settings.channel_webhook_secret
    try:
        if policy not in (None, "lookup", "assume_sent"):
            raise ValueError(f"unknown policy {policy!r} (lookup, assume_sent)")
        worker = ChannelWorker(settings, name, build_provider(settings, provider),
                               policy="lookup" if policy == "lookup" else
                               "assume_sent" if policy else None,
                               callback_secret=secret.get_secret_value().encode()
                               if secret else None)
    except ValueError as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(worker.run())


@cli.command("api")
def api_command() -> None:
    """Serve the admin API (docs/api.md) on DRIPSTREAM_API_HOST:DRIPSTREAM_API_PORT.

    Exit status: 2 on invalid settings (also: no DRIPSTREAM_API_BOOTSTRAP_KEY outside dev)."""
    import uvicorn
    from pydantic import ValidationError

    from api.app import create_app
    from api.settings import ApiSettings

    settings = _settings_or_exit()
    try:
        api_settings = ApiSettings()
        app = create_app(settings, api_settings)
    except (ValidationError, RuntimeError) as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(2) from None
    if api_settings.fault is not None:
        typer.echo(f"WARNING: API fault injection {api_settings.fault!r} (tests only)",
                   err=True)
    uvicorn.run(app, host=api_settings.host, port=api_settings.port,
                log_level=settings.log_level.lower(), access_log=False)


@cli.command()
def health(
    max_age: Annotated[float, typer.Option(help="seconds the liveness file may be old")] = 30.0,
) -> None:
    """Exit 0 if the worker's liveness file is fresh, 1 if not (a probe for supervisors)."""
    path = _settings_or_exit().health_path
    try:
        age = time.time() - path.stat().st_mtime
        status = json.loads(path.read_text()).get("status", "?")
    except (OSError, ValueError) as exc:
        typer.echo(f"unhealthy: cannot read {path}: {exc}", err=True)
        raise typer.Exit(1) from None
    if age > max_age:
        typer.echo(f"unhealthy: {path} is {age:.0f} s old (status {status})", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: {status}, {age:.0f} s ago")


@cli.command()
def topics(
    create: Annotated[bool, typer.Option(help="create missing topics first")] = True,
) -> None:
    """Create (if missing) and describe dripstream's topics."""
    from streams.topics import describe_topics, ensure_topics

    settings = _one_shot()

    async def run() -> list[dict[str, object]]:
        if create:
            for name in await ensure_topics(settings):
                typer.echo(f"created {name}")
        return await describe_topics(settings)

    for row in _reaching_the_broker(settings, lambda: asyncio.run(run())):
        typer.echo(json.dumps(row))


@cli.command()
def publish(
    event: Annotated[str, typer.Argument(help="a CloudEvents JSON object, or - for stdin")],
) -> None:
    """Validate one JSON event and publish it to <prefix>contact-events.

    Exit status: 0 published, 1 the broker cannot be reached, 2 an invalid event."""
    import orjson

    from producers.publisher import Publisher
    from streams.events import Rejected, encode_event, parse_event

    # Bytes, not text (an argument's original bytes via fsencode): orjson then refuses bad
    # UTF-8 and nesting deeper than 1024 as errors instead of a traceback.
    data = sys.stdin.buffer.read() if event == "-" else os.fsencode(event)
    try:
        envelope = orjson.loads(data)
        # What Publisher.send validates, before any connection is made.
        parse_event(encode_event(envelope))
    except orjson.JSONDecodeError as exc:
        typer.echo(f"rejected: not JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    except orjson.JSONEncodeError as exc:  # loads nests 1024 deep, dumps only about 250
        typer.echo(f"rejected: nested too deeply: {exc}", err=True)
        raise typer.Exit(2) from None
    except Rejected as exc:
        typer.echo(f"rejected: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = _one_shot()

    async def run() -> None:
        # One event with its own id, sent once: dripstream's dedupe drops a repeat by its
        # id, so the idempotent producer adds nothing here, and asking a broker that
        # cannot (Tansu) for it only printed an error on every publish.
        async with Publisher(settings.bootstrap_servers, topic_prefix=settings.topic_prefix,
                             idempotence=False, **settings.kafka_security()) as pub:
            await pub.send(envelope)

    _reaching_the_broker(settings, lambda: asyncio.run(run()))
    typer.echo(f"published {envelope.get('type')} {envelope.get('id')}")


def _reaching_the_broker(settings: Any, call: Callable[[], T]) -> T:
    """``call()``; a broker that cannot be reached (or its definitions topic not read) is
    one line and exit 1, not a trace."""
    from aiokafka.errors import KafkaError

    from producers.admin import TopicUnreadable

    try:
        return call()
    except TopicUnreadable as exc:
        typer.echo(f"cannot read the definitions at {settings.broker} (DRIPSTREAM_BROKER): "
                   f"{exc}", err=True)
        raise typer.Exit(1) from None
    except (KafkaError, OSError) as exc:
        typer.echo(f"cannot reach the broker at {settings.broker} "
                   f"(DRIPSTREAM_BROKER): {exc}", err=True)
        raise typer.Exit(1) from None


def _redis_at(settings: Any) -> str:
    """The read model's address as the operator set it, without a password."""
    url = re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", settings.redis_url)
    return f"{url} (DRIPSTREAM_REDIS_URL), key prefix {settings.topic_prefix!r}"


def _reading_redis(settings: Any, call: Callable[[], T]) -> T:
    """``call()``; Redis that cannot be reached is one line and exit 1, an invalid URL
    exit 2."""
    from redis.exceptions import RedisError

    try:
        return call()
    except ValueError as exc:  # redis-py's words for a URL it cannot use
        typer.echo(f"invalid DRIPSTREAM_REDIS_URL: {exc}", err=True)
        raise typer.Exit(2) from None
    except (RedisError, OSError) as exc:
        typer.echo(f"cannot reach Redis at {_redis_at(settings)}: {exc}", err=True)
        raise typer.Exit(1) from None


@asynccontextmanager
async def _producer(settings: Any) -> AsyncIterator[Any]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.kafka_security())
    try:  # started inside: one that fails to start is closed too
        await producer.start()
        yield producer
    finally:
        await producer.stop()


def _producer_run(settings: Any, coro_factory: Callable[[Any, str], Any]) -> Any:
    async def run() -> Any:
        async with _producer(settings) as producer:
            return await coro_factory(producer, settings.topic_prefix)

    return _reaching_the_broker(settings, lambda: asyncio.run(run()))


def _now(settings: Any) -> Any:
    """Now, as the workers read it (with the tests' clock offset file, if set)."""
    from streams.clock import Clock

    return Clock(settings.clock_offset_file).now()


def _by() -> str:
    """Who publishes, for the record's header (the API shows it as ``created_by``)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (OSError, KeyError):
        return "cli"


def _definition_errors(errors: list[str], code: int = 2) -> typer.Exit:
    for error in errors:
        typer.echo(f"invalid: {error}", err=True)
    return typer.Exit(code)


@cli.command()
def define(
    path: Annotated[str, typer.Argument(help="a definition JSON file, or - for stdin")],
) -> None:
    """Validate a definition (workflow, account policy, keyword, campaign) and publish it
    as the next version, checked against what the workers hold.

    Exit status: 0 published (or this very version is published already: "unchanged");
    1 the broker cannot be reached; 2 an invalid definition (every problem listed); 3
    refused: another body is published at that version, the version is older than the
    newest, or another publisher's record for it won meanwhile."""
    import orjson

    from producers.admin import DefinitionConflict, NotConfirmed, Published, following
    from producers.admin import define as publish_checked
    from streams.definitions import (
        DEFAULT_MIN_INTERVAL,
        DefinitionError,
        parse_any,
        parse_duration,
    )

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        typer.echo(f"invalid: cannot read {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    try:
        definition = orjson.loads(data)
        # Every problem before any connection; and what is published must encode
        # (orjson reads 1024 levels deep but writes only about 250).
        orjson.dumps(definition)
        parse_any(definition, min_interval_s=0)  # the interval: against the account's, below
    except orjson.JSONDecodeError as exc:
        typer.echo(f"invalid: not JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    except orjson.JSONEncodeError as exc:
        typer.echo(f"invalid: nested too deeply: {exc}", err=True)
        raise typer.Exit(2) from None
    except DefinitionError as exc:
        raise _definition_errors(exc.errors) from None
    settings = _one_shot()

    async def run() -> Published:
        async with following(settings) as registry, _producer(settings) as producer:
            interval = DEFAULT_MIN_INTERVAL
            if definition.get("kind") == "campaign":  # against the account's own minimum
                interval = parse_duration(registry.policy(definition["account"])[
                    "campaign_min_interval"])
            parsed = parse_any(definition, interval)
            if parsed.kind == "campaign":
                for warning in _campaign_warnings(parsed.model_dump(mode="json"), registry,
                                                  _now(settings)):
                    typer.echo(f"warning: {warning}", err=True)
            return await publish_checked(producer, settings, registry, parsed, by=_by())

    try:
        done = _reaching_the_broker(settings, lambda: asyncio.run(run()))
    except DefinitionError as exc:
        raise _definition_errors(exc.errors) from None
    except DefinitionConflict as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(EXIT_CONFLICT) from None
    except NotConfirmed as exc:
        typer.echo(f"published, but not confirmed: {exc}", err=True)
        raise typer.Exit(1) from None
    wf = done.definition
    name = f"{wf.kind} {wf.account}/{getattr(wf, 'id', 'policy')} v{getattr(wf, 'version', '')}"
    if done.outcome == "unchanged":
        typer.echo(f"unchanged: {name} is published already with this very body")
    elif getattr(wf, "shadow", False):
        typer.echo(f"published {name} in shadow: nothing is sent from it, the live version "
                   f"stays (`dripstream shadow report {wf.account}`)")
    else:
        typer.echo(f"published {name}")


#: ``control``'s arguments by the Control model's field names (its errors name fields).
_FLAGS = {"action": "ACTION", "account": "--account", "contact_id": "--contact",
          "execution_id": "--execution", "workflow_id": "--workflow"}
#: The statuses each per-execution action changes (tables/executions.py: control).
@cli.command()
def control(
    action: Annotated[str, typer.Argument(help="pause | resume | cancel | cancel_all")],
    account: Annotated[str, typer.Option()],
    contact: Annotated[str | None, typer.Option(help="contact id (not for cancel_all)")] = None,
    execution: Annotated[str | None, typer.Option(help="execution id")] = None,
    workflow: Annotated[str | None, typer.Option(help="workflow id (cancel_all)")] = None,
) -> None:
    """Pause, resume or cancel an execution, or cancel all executions of a workflow.

    Exit status: 0 sent; 1 the execution is not in the read model or its status is one
    the action does not change (nothing sent), or the broker or Redis cannot be reached;
    2 invalid arguments."""
    from pydantic import ValidationError

    from producers.admin import send_control
    from streams.commands import APPLIES_TO, Control

    if action not in ("pause", "resume", "cancel", "cancel_all"):
        typer.echo(f"invalid ACTION {action!r}: pause, resume, cancel or cancel_all", err=True)
        raise typer.Exit(2)
    needs = ["--workflow"] if action == "cancel_all" else ["--contact", "--execution"]
    given = {"--contact": contact, "--execution": execution, "--workflow": workflow}
    if any(not given[flag] for flag in needs):
        typer.echo(f"invalid: {action} needs {' and '.join(needs)}", err=True)
        raise typer.Exit(2)
    try:
        command = Control(action=action, account=account, contact_id=contact,
                          execution_id=execution, workflow_id=workflow)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            flag = ", ".join(_FLAGS.get(str(p), str(p)) for p in error["loc"])
            typer.echo(f"invalid {flag or 'arguments'}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    settings = _one_shot()
    if action == "cancel_all":
        _producer_run(settings, lambda p, prefix: send_control(p, prefix, command))
        typer.echo(f"sent cancel_all for workflow {account}/{workflow} to every partition")
        return
    assert contact is not None and execution is not None
    found = _execution(settings, account, contact, execution)
    status = found["status"]
    if status not in APPLIES_TO[action]:
        typer.echo(f"not sent: execution {execution} of {account}:{contact} is {status}; "
                   f"{action} changes only a {' or '.join(APPLIES_TO[action])} one", err=True)
        raise typer.Exit(1)
    _producer_run(settings, lambda p, prefix: send_control(p, prefix, command))
    typer.echo(f"sent {action} for execution {execution} of {account}:{contact} "
               f"({status}; the contact's worker applies it in order with its events)")


def _execution(settings: Any, account: str, contact_id: str, execution_id: str
               ) -> dict[str, Any]:
    """One execution from the read model; exit 1 if it is not there."""
    from redis.asyncio import Redis

    from tables.readmodel import ReadModel

    async def run() -> dict[str, Any]:
        redis = Redis.from_url(settings.redis_url)
        try:
            found: dict[str, Any] = dict(await ReadModel(redis, settings.topic_prefix)
                                         .get_executions(account, contact_id))
            return found
        finally:
            await redis.aclose()

    executions = _reading_redis(settings, lambda: asyncio.run(run()))
    if execution_id not in executions:
        known = ", ".join(sorted(executions)) or "none"
        typer.echo(f"no execution {execution_id!r} of {account}:{contact_id} in the read "
                   f"model at {_redis_at(settings)} (its executions: {known})", err=True)
        raise typer.Exit(1)
    found: dict[str, Any] = executions[execution_id]
    return found


#: What ``suppress`` takes as an address: an E.164 phone number or an email address (the
#: contract's own patterns for a contact's phone and email).
_ADDRESS = re.compile(r"^\+[1-9][0-9]{6,14}$|^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SUPPRESSION_REASONS = ("manual", "opted_out", "bounced", "complained")


@cli.command()
def suppress(
    account: str,
    address: Annotated[str, typer.Argument(help="E.164 phone or email address")],
    reason: Annotated[str, typer.Option(help="manual, opted_out, bounced, complained")] = "manual",
    remove: Annotated[bool, typer.Option(help="lift a suppression of this reason")] = False,
) -> None:
    """Add an address to an account's suppression list (or lift it with --remove).

    Exit status: 0 sent, 1 the broker cannot be reached, 2 invalid arguments."""
    from producers.admin import suppress as send
    from streams.events import ACCOUNT_PATTERN

    problems = []
    if not re.match(ACCOUNT_PATTERN, account):
        problems.append(f"invalid ACCOUNT {account!r}: letters, digits, '_', '.', '-' (1-64)")
    if not _ADDRESS.match(address):
        problems.append(f"invalid ADDRESS {address!r}: an E.164 phone number (+14155550101) "
                        "or an email address")
    if reason not in _SUPPRESSION_REASONS:
        problems.append(f"invalid --reason {reason!r}: {', '.join(_SUPPRESSION_REASONS)}")
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(2)
    settings = _one_shot()
    _producer_run(settings, lambda p, prefix: send(p, prefix, account, address, reason,
                                                   remove=remove))
    typer.echo(f"{'lifted' if remove else 'suppressed'} {account}:{address} ({reason})")


def _campaign_warnings(campaign: dict[str, Any], registry: Any, now: Any) -> list[str]:
    """What is valid but probably not meant: a schedule with nothing left to fire, a
    linked workflow the workers do not have (yet)."""
    from tables.campaigns import campaign_workflow, campaign_zone, next_after

    warnings = []
    account = campaign["account"]
    zone = campaign_zone(campaign, registry.policy(account))
    if next_after(campaign, zone, now, None) is None:
        warnings.append("schedule: no occurrence after now: it will never fire (a time in "
                        "the past does not fire; see docs/campaigns.md)")
    if campaign["workflow"] and campaign_workflow(registry, campaign) is None:
        warnings.append(f"workflow: {campaign['workflow']!r} is not an active workflow of "
                        f"{account} (yet): an occurrence without it fails")
    return warnings


def _registry(settings: Any) -> Any:
    """The definitions as the workers hold them (the topic read to its end)."""
    from producers.admin import read_registry

    return _reaching_the_broker(settings, lambda: asyncio.run(read_registry(settings)))


def _moment(value: str, option: str, now: Any) -> Any:
    """An aware datetime from ``--since``/``--until``: ISO 8601 (UTC if no offset), or a
    duration back from now (``7d``, ``36h``, ``90m``)."""
    from datetime import UTC, datetime, timedelta

    from streams.definitions import DefinitionError, parse_duration

    if value == "now":
        return now
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(value))
        except (DefinitionError, ValueError):
            typer.echo(f"invalid {option}: {value!r} is neither an ISO 8601 time nor a "
                       "duration back from now (7d, 36h, 90m)", err=True)
            raise typer.Exit(2) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@cli.command()
def simulate(
    definitions: Annotated[list[Path], typer.Argument(
        help="candidate definitions (JSON files: one definition or a list); none: the "
             "live ones, a check that the simulation reproduces what happened")] = [],  # noqa: B006
    since: Annotated[str, typer.Option(
        help="start of the window: ISO 8601, or a duration back from now")] = "1d",
    until: Annotated[str, typer.Option(help="end of the window: ISO 8601, a duration back "
                                            "from now, or now")] = "now",
    account: Annotated[str | None, typer.Option(
        help="only this account (default: the candidates' accounts, or every one)")] = None,
    lines: Annotated[bool, typer.Option(
        "--lines", help="one JSON line per send and non-send, then the summary")] = False,
    processes: Annotated[int, typer.Option(
        min=1, help="processes sharing the partitions (each simulates whole partitions)")
    ] = 1,
    migrate: Annotated[bool, typer.Option(
        "--migrate", help="also show, per contact inside another version of a candidate "
                          "workflow at the window's end, where the candidate would place "
                          "it and what it would send next")] = False,
) -> None:
    """What the candidate definitions would have done over the recorded log: the same
    handlers, with each record decided when (and with the answers) the worker decided it,
    the candidates in place of the live versions of the same id. Publishes nothing.

    Exit status: 0, 1 the broker cannot be reached, 2 an invalid candidate or window."""
    import orjson

    from streams.history import PartitionMismatch, run_simulation
    from tables.simulation import CandidateError, Candidates

    cand = Candidates()
    for path in definitions:
        try:
            raw = orjson.loads(path.read_bytes())
        except OSError as exc:
            typer.echo(f"invalid: cannot read {path}: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None
        except orjson.JSONDecodeError as exc:
            typer.echo(f"invalid: {path} is not JSON: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            for item in raw if isinstance(raw, list) else [raw]:
                cand.add(item)
        except CandidateError as exc:
            typer.echo(f"invalid: {path}: {exc}", err=True)
            raise typer.Exit(2) from None
    settings = _one_shot()
    now = _now(settings)
    start, end = _window(since, until, now)  # --since has a default: a time
    if end > now:
        typer.echo(f"invalid window: --until {end.isoformat()} is after now: the log ends "
                   "now (what would happen later is not recorded yet)", err=True)
        raise typer.Exit(2)
    if account and (others := sorted(cand.accounts() - {account})):
        typer.echo(f"invalid: candidates of {', '.join(others)} with --account {account}: a "
                   "simulation of one account takes only its candidates", err=True)
        raise typer.Exit(2)
    accounts = {account} if account else None
    try:
        with _quiet("tables.journal"):
            lab = _reaching_the_broker(settings, lambda: asyncio.run(
                run_simulation(settings, cand, start, end, accounts, processes=processes,
                               migrate=migrate)))
    except PartitionMismatch as exc:
        typer.echo(f"invalid DRIPSTREAM_PARTITIONS: {exc}", err=True)
        raise typer.Exit(2) from None
    if lines:
        for line in lab.lines():
            typer.echo(orjson.dumps(line).decode())
        typer.echo(orjson.dumps({"summary": lab.report}).decode())
        return
    typer.echo(_summary_table(lab.report))


def _window(since: str | None, until: str, now: Any) -> tuple[Any, Any]:
    """``--since`` (None: left out) and ``--until`` as times; exit 2 when the window does
    not end after it starts."""
    start = None if since is None else _moment(since, "--since", now)
    end = _moment(until, "--until", now)
    if start is not None and start >= end:
        typer.echo(f"invalid window: --since {start.isoformat()} is not before --until "
                   f"{end.isoformat()}", err=True)
        raise typer.Exit(2)
    return start, end


def _summary_table(report: dict[str, Any]) -> str:
    """The simulation's summary as an operator reads it."""
    same = (report["only_simulated"] == report["only_actual"] == 0
            and report["both_at_other_times"] == report["both_with_other_body"] == 0
            and report["not_sent"] == report["actual_not_sent"])
    if report["candidates"]:
        verdict = "the same as what happened" if same else "differs from what happened"
    else:  # the live definitions: a check of the simulation itself
        verdict = ("matches what happened" if same and not report["added_wakeups"] else
                   "does NOT match what happened (a campaign in the window, history before "
                   "the retention, or a bug: docs/simulation.md)")
    out = [f"window      {report['since']} .. {report['until']}",
           f"candidates  {', '.join(report['candidates']) or '(none: the live definitions)'}",
           f"verdict     {verdict}",
           f"replayed    {report['handled']} records and wake-ups in the window "
           f"({report['journalled']} recorded ones decided at their journal's time; "
           f"{report['added_wakeups']} wake-ups added; {report['invalid']} invalid), "
           f"{report['rebuilt_from']} before it rebuilding the state of "
           f"{report['contacts']} contacts",
           f"sends       {report['sends']} simulated, {report['actual_sends']} actual: "
           f"{report['both']} in both ({report['both_at_other_times']} at another time, "
           f"{report['both_with_other_body']} with another text), "
           f"{report['only_simulated']} only simulated, {report['only_actual']} only actual"]
    for title, key in (("not sent (simulated)", "not_sent"), ("not sent (actual)",
                                                             "actual_not_sent"),
                       ("displaced (sent, capped in the simulation)", "displaced"),
                       ("sends per workflow/step", "per_step"),
                       ("sends per channel", "per_channel"), ("sends per hour", "per_hour"),
                       ("in-flight contacts in the candidate (--migrate)", "migrate")):
        if report[key]:
            out.append(f"{title}:")
            out += [f"  {name:<40} {count:>8}" for name, count in report[key].items()]
    return "\n".join(out)


@cli.command()
def report(
    account: Annotated[str, typer.Argument(help="the account")],
    workflow: Annotated[str, typer.Argument(help="the workflow id (a campaign's with "
                                                 "--campaign)")],
    campaign: Annotated[bool, typer.Option(
        "--campaign", help="the id is a campaign's (its variants and control group)")] = False,
    since: Annotated[str | None, typer.Option(
        help="only entries from: ISO 8601, or a duration back from now (default: all "
             "retained)")] = None,
    until: Annotated[str, typer.Option(help="only entries before (default: now)")] = "now",
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
) -> None:
    """The experiment report of a workflow or campaign with a conversion: per arm
    (control, holdout, each split branch or campaign variant) entered, sent, converted,
    the rate with its 95 % interval, revenue, and the lift over the control group with its
    interval and p-value. Entries are counted once their conversion window has closed
    (docs/experiments.md).

    Exit status: 0, 1 no such workflow or campaign or the broker cannot be reached, 2 an
    invalid window."""
    from streams.history import read_outcomes
    from tables.campaigns import CAMPAIGN_WORKFLOW
    from tables.experiments import report as lift_report

    settings = _one_shot()
    start, end = _window(since, until, _now(settings))
    registry = _registry(settings)
    if campaign:
        bodies = [_campaign(registry, account, workflow)]
        workflow = CAMPAIGN_WORKFLOW + workflow
    else:
        bodies = list(registry.versions("workflow", account, workflow).values())
        if not bodies:
            hint = (" (a campaign's? add --campaign)"
                    if registry.campaign(account, workflow) is not None else "")
            typer.echo(f"no workflow {account}/{workflow}{hint}", err=True)
            raise typer.Exit(1)
    if not any((b.get("experiment") or {}).get("conversion") for b in bodies):
        typer.echo(f"{workflow} has no experiment.conversion: no entry is counted "
                   "(docs/experiments.md)", err=True)
    found = _reaching_the_broker(settings, lambda: asyncio.run(
        read_outcomes(settings, account, workflow, start, end)))
    result = lift_report(found, workflow)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(_report_table(result))


def _report_table(result: dict[str, Any]) -> str:
    ident = str(result["workflow_id"])
    name = f"campaign {ident.split(':', 1)[1]}" if ident.startswith("campaign:") else ident
    if not result["arms"]:
        return (f"{name}: no closed conversion window yet (entries are counted when their "
                "window closes)")
    out = [f"{name}: {result['entries']} entries, against "
           f"{result['baseline']} (95 % intervals)",
           f"{'arm':<12} {'entered':>8} {'sent':>7} {'conv.':>6} {'rate':>21} "
           f"{'lift':>27} {'p':>7} {'revenue/contact':>16}"]
    for arm in result["arms"]:
        low, high = arm["rate_interval"]
        rate = f"{arm['rate']:.1%} [{low:.1%}, {high:.1%}]"
        if arm.get("lift") is not None:
            lift = f"{arm['lift']:+.1%}"
            if arm["lift_interval"] is not None:
                llow, lhigh = arm["lift_interval"]
                lift += f" [{llow:+.1%}, {lhigh:+.1%}]"
            p = f"{arm['p_value']:.3f}"
        else:
            lift, p = ("(baseline)" if arm["baseline"] else "—"), ""
        out.append(f"{arm['variant']:<12} {arm['entered']:>8} {arm['sent']:>7} "
                   f"{arm['converted']:>6} {rate:>21} {lift:>27} {p:>7} "
                   f"{arm['revenue_per_contact']:>16.2f}")
        if arm.get("verdict") and arm.get("lift") is not None:
            out[-1] += f"  {arm['verdict']}"
    return "\n".join(out)


shadow_cli = typer.Typer(help="Shadow versions: run them beside the live ones, report.",
                         no_args_is_help=True)
cli.add_typer(shadow_cli, name="shadow")


@shadow_cli.command("run")
def shadow_run() -> None:
    """Run every shadow workflow version on the live stream, DRIPSTREAM_SHADOW_LAG_S
    behind it: what each would have sent and not sent goes to <prefix>shadow; nothing is
    sent (docs/simulation.md, Shadow versions). One process for every partition.

    Exit status: 0 after SIGTERM/SIGINT, 1 the broker cannot be reached, 2 invalid
    settings."""
    import logging

    from streams.shadow import ShadowRunner

    settings = _settings_or_exit()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    logging.getLogger("tables.journal").disabled = True  # the replay's own business

    async def main() -> None:
        task = asyncio.ensure_future(ShadowRunner(settings).run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    _reaching_the_broker(settings, lambda: asyncio.run(main()))


@shadow_cli.command("report")
def shadow_report_command(
    account: Annotated[str, typer.Argument(help="the account")],
    since: Annotated[str | None, typer.Option(
        help="start of the window: ISO 8601, or a duration back from now (default: when "
             "the earliest shadow version was published)")] = None,
    until: Annotated[str, typer.Option(
        help="end of the window (cut to where the shadow runner got)")] = "now",
    lines: Annotated[bool, typer.Option(
        "--lines", help="one JSON line per send and non-send, then the summary")] = False,
) -> None:
    """The account's shadow versions against what went out live over a window: the
    sends in both, at other times or with other texts, only in one, the non-sends.

    Exit status: 0, 1 the broker cannot be reached, 2 an invalid window."""
    import orjson

    from streams.shadow import shadow_report

    settings = _one_shot()
    start, end = _window(since, until, _now(settings))
    with _quiet("tables.journal"):
        found = _reaching_the_broker(settings, lambda: asyncio.run(
            shadow_report(settings, account, start, end)))
    if lines:
        for line in found.lines():
            typer.echo(orjson.dumps(line).decode())
        typer.echo(orjson.dumps({"summary": found.report}).decode())
        return
    report = found.report
    shadows = ", ".join(f"{s['id']} v{s['version']} (since {s['published_at']})"
                        for s in report["shadows"]) or "(none in shadow now)"
    window = f"{report['since']} .. {report['until']} (where the shadow runner got)"
    if report["behind"]:
        window = (f"{report['since']} .. (nothing yet: the shadow runner decides "
                  f"DRIPSTREAM_SHADOW_LAG_S behind the live clock, and has got to "
                  f"{report['reached'] or 'nowhere yet'})")
    out = [f"window      {window}",
           f"shadows     {shadows}",
           f"sends       {report['sends']} shadow, {report['actual_sends']} live: "
           f"{report['both']} in both ({report['both_at_other_times']} at another time, "
           f"{report['both_with_other_body']} with another text), "
           f"{report['only_simulated']} only in shadow, {report['only_actual']} only live"]
    for title, key in (("not sent (shadow)", "not_sent"), ("not sent (live)",
                                                          "actual_not_sent"),
                       ("displaced (sent live, capped in shadow)", "displaced"),
                       ("shadow sends per workflow/step", "per_step")):
        if report[key]:
            out.append(f"{title}:")
            out += [f"  {name:<40} {count:>8}" for name, count in report[key].items()]
    rewritten = [line for line in found.lines() if line["kind"] == "send"
                 and line["diff"] == "both" and line["body"] != line["actual_body"]]
    if rewritten:
        out.append("another text (the first 5; --lines: every send and non-send):")
        for line in rewritten[:5]:
            out.append(f"  {line['contact_id']} at {line['created_at']}:")
            out.append(f"    shadow  {line['body']}")
            out.append(f"    live    {line['actual_body']}")
    typer.echo("\n".join(out))


campaign_cli = typer.Typer(help="Campaigns: status, preview, pause, resume, cancel.",
                           no_args_is_help=True)
cli.add_typer(campaign_cli, name="campaign")
Account = Annotated[str, typer.Option(help="the campaign's account")]


def _campaign(registry: Any, account: str, campaign_id: str) -> dict[str, Any]:
    campaign: dict[str, Any] | None = registry.campaign(account, campaign_id)
    if campaign is None:
        typer.echo(f"no campaign {account}/{campaign_id}", err=True)
        raise typer.Exit(1)
    return campaign


@campaign_cli.command("status")
def campaign_status(campaign_id: str, account: Account) -> None:
    """Its status (running, paused, cancelled, completed), next occurrence, each
    occurrence's progress summed over the partitions, and why sends did not go out (yet):
    per reason, how many contacts and until when (from the recent audit).

    Exit status: 0, 1 no such campaign or the broker or Redis cannot be reached."""
    from redis.asyncio import Redis

    from tables.campaigns import not_sent, progress_summary
    from tables.readmodel import ReadModel

    settings = _one_shot()
    registry = _registry(settings)
    campaign = _campaign(registry, account, campaign_id)

    async def run() -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
        redis = Redis.from_url(settings.redis_url)
        try:
            model = ReadModel(redis, settings.topic_prefix)
            return (await model.get_progress(account, campaign_id),
                    await model.recent_audit(account, limit=1000))
        finally:
            await redis.aclose()

    progress, audit = _reading_redis(settings, lambda: asyncio.run(run()))
    summary = progress_summary(registry, campaign, progress, settings.partitions,
                               _now(settings))
    typer.echo(json.dumps({
        "campaign": campaign_id, "account": account, "version": campaign["version"],
        "active": campaign["active"], "status": summary["status"],
        "next_occurrence": summary["next_occurrence"], "partitions": settings.partitions,
        "occurrences": summary["occurrences"], "not_sent": not_sent(campaign_id, audit)},
        indent=2))


@campaign_cli.command("preview")
def campaign_preview(
    campaign_id: str, account: Account,
    limit: Annotated[int, typer.Option(help="contacts to list")] = 10,
) -> None:
    """The audience as it is now (from the read model): its size and its first contacts.
    Sends nothing.

    Exit status: 0, 1 no such campaign or the broker or Redis cannot be reached."""
    from redis.asyncio import Redis

    from tables.campaigns import in_audience
    from tables.readmodel import ReadModel

    settings = _one_shot()
    campaign = _campaign(_registry(settings), account, campaign_id)

    async def run() -> list[str]:
        redis = Redis.from_url(settings.redis_url)
        model = ReadModel(redis, settings.topic_prefix)
        try:
            found = []
            for contact_id in sorted(await model.contact_ids(account)):
                state = await model.get_state(account, contact_id)
                if state is not None and in_audience(campaign["audience"], state):
                    found.append(contact_id)
            return found
        finally:
            await redis.aclose()

    found = _reading_redis(settings, lambda: asyncio.run(run()))
    typer.echo(json.dumps({"campaign": campaign_id, "account": account,
                           "audience": len(found), "first": found[:limit]}, indent=2))


def _campaign_summary(settings: Any, registry: Any, campaign: dict[str, Any]
                      ) -> dict[str, Any]:
    """The campaign's status and progress summed over its partitions (the read model's
    progress records), as ``campaign status`` shows them."""
    from redis.asyncio import Redis

    from tables.campaigns import progress_summary
    from tables.readmodel import ReadModel

    async def run() -> dict[int, dict[str, Any]]:
        redis = Redis.from_url(settings.redis_url)
        try:
            found: dict[int, dict[str, Any]] = await ReadModel(
                redis, settings.topic_prefix).get_progress(campaign["account"], campaign["id"])
            return found
        finally:
            await redis.aclose()

    progress = _reading_redis(settings, lambda: asyncio.run(run()))
    summary: dict[str, Any] = progress_summary(registry, campaign, progress,
                                               settings.partitions, _now(settings))
    return summary


def _control(action: str, campaign_id: str, account: str) -> None:
    from producers.admin import control_campaign

    settings = _one_shot()
    registry = _registry(settings)
    campaign = _campaign(registry, account, campaign_id)
    if registry.campaign_status(account, campaign_id) == "cancelled":
        typer.echo(f"campaign {account}/{campaign_id} is cancelled (final)", err=True)
        raise typer.Exit(1)
    if action != "cancel" and _campaign_summary(settings, registry, campaign)[
            "status"] == "completed":
        typer.echo(f"campaign {account}/{campaign_id} is completed: no occurrence is left "
                   f"to {action}", err=True)
        raise typer.Exit(1)
    _producer_run(settings, lambda p, prefix: control_campaign(
        p, prefix, account, campaign_id, action, by=_by()))
    typer.echo(f"sent {action} for campaign {account}/{campaign_id}")


@campaign_cli.command("pause")
def campaign_pause(campaign_id: str, account: Account) -> None:
    """Stop sending: each partition stops after the slice it is on."""
    _control("pause", campaign_id, account)


@campaign_cli.command("resume")
def campaign_resume(campaign_id: str, account: Account) -> None:
    """Go on where it stopped (contacts already reached are not reached again)."""
    _control("resume", campaign_id, account)


@campaign_cli.command("cancel")
def campaign_cancel(campaign_id: str, account: Account) -> None:
    """Stop for good: no further sends or occurrences; deferred sends are cancelled."""
    _control("cancel", campaign_id, account)


@cli.command()
def contact(account: str, contact_id: str) -> None:
    """Print a contact's state from the Redis read model (stdout); on stderr, which Redis
    it read and each send held back or not sent: why, and until when.

    Exit status: 0, 1 no such contact in that read model or Redis cannot be reached, 2
    invalid settings."""
    from redis.asyncio import Redis

    from tables.readmodel import ReadModel

    settings = _one_shot()

    async def run() -> tuple[dict[str, Any] | None, dict[str, Any]]:
        redis = Redis.from_url(settings.redis_url)
        try:
            model = ReadModel(redis, settings.topic_prefix)
            state = await model.get_contact(account, contact_id)
            executions = await model.get_executions(account, contact_id) if state else {}
            return state, dict(executions)
        finally:
            await redis.aclose()

    state, executions = _reading_redis(settings, lambda: asyncio.run(run()))
    if state is None:
        typer.echo(f"no contact {account}:{contact_id} in the read model at "
                   f"{_redis_at(settings)}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(state, indent=2))
    typer.echo(f"read from {_redis_at(settings)}", err=True)
    for line in _held(executions):
        typer.echo(line, err=True)


def _held(executions: dict[str, Any]) -> list[str]:
    """A line for each execution whose newest step outcome is a send held back (still
    waiting) or not sent: what, why and until when."""
    from tables.campaigns import NOT_SENT_WHY

    lines = []
    for ex in executions.values():
        last = (ex.get("history") or [{}])[-1]
        reason = last.get("reason") or ""
        why = NOT_SENT_WHY.get(reason, reason)
        where = (f"execution {ex['id']} of {ex['workflow_id']} v{ex['version']}, step "
                 f"{last.get('step')}")
        if last.get("outcome") == "deferred" and ex["status"] == "waiting":
            lines.append(f"held: {where}: deferred until {last.get('until')} ({reason}: {why})")
        elif last.get("outcome") == "not_sent":
            lines.append(f"not sent: {where} ({reason}: {why})")
    return lines


def _port_taken(host: str, port: int) -> bool:
    """Would a server fail to listen on ``host:port`` (something else holds it)?"""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _api_address(env: dict[str, str]) -> tuple[str, int, str]:
    """``dev``: where the API listens: DRIPSTREAM_API_PORT if set (exit 2 if it is taken
    or invalid), else 8080, else (taken) a free port; and a note on the choice."""
    from streams.embedded import free_port

    host = env.get("DRIPSTREAM_API_HOST", "127.0.0.1")
    if (given := env.get("DRIPSTREAM_API_PORT")) is not None:
        if not given.isdigit() or not 0 < int(given) < 65536:
            typer.echo(f"invalid DRIPSTREAM_API_PORT: {given!r} is not a port", err=True)
            raise typer.Exit(2)
        if _port_taken(host, int(given)):
            typer.echo(f"invalid DRIPSTREAM_API_PORT: {host}:{given} is in use by another "
                       "process (unset it and dev picks a free port)", err=True)
            raise typer.Exit(2)
        return host, int(given), ""
    if not _port_taken(host, DEV_API_PORT):
        return host, DEV_API_PORT, ""
    return host, free_port(), f"; {DEV_API_PORT} is taken"


def _start_api(env: dict[str, str], data_dir: Path, host: str, port: int
               ) -> tuple[subprocess.Popen[bytes], str, str]:
    """``dev``: the admin API on SQLite under the data dir, with a fresh bootstrap key."""
    import secrets

    key = env.get("DRIPSTREAM_API_BOOTSTRAP_KEY") or f"ds_boot_{secrets.token_urlsafe(32)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    api_env = {"DRIPSTREAM_API_DEV": "true", "DRIPSTREAM_API_BOOTSTRAP_KEY": key,
               "DRIPSTREAM_API_DATABASE_URL":
                   f"sqlite+aiosqlite:///{(data_dir / 'api.db').resolve()}", **env}
    api_env.update({"DRIPSTREAM_API_BOOTSTRAP_KEY": key, "DRIPSTREAM_API_HOST": host,
                    "DRIPSTREAM_API_PORT": str(port)})
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], env=api_env,
                            start_new_session=True)
    return proc, f"http://{host}:{port}", key


def _start_channels(env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """``dev``: a console SMS and email worker, so a send shows up in the terminal."""
    return [subprocess.Popen([sys.executable, "-m", "streams.cli", "channel", name,
                              "--provider", "console"], env=env, start_new_session=True)
            for name in ("sms", "email")]


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then wait (SIGKILL after 15 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _start_broker(kind: str, port: int, data_dir: Path) -> tuple[Any, str]:
    """``dev``: the embedded Tansu broker, or Apache Kafka (one node, from the Maven
    cache; exit 2 with its one-line reason when Java or Maven is missing)."""
    if kind == "tansu":
        from streams.embedded import EmbeddedBroker

        tansu = EmbeddedBroker(port or None, new_session=True).start()
        return tansu, f"{tansu.url}  (Tansu, in memory; pid {tansu.pid})"
    from streams.apache_kafka import KAFKA_VERSION, KafkaCluster, KafkaUnavailable

    work = data_dir / "kafka"
    shutil.rmtree(work, ignore_errors=True)  # a fresh cluster, as Tansu starts empty
    cluster = KafkaCluster(work.resolve(), nodes=1)
    try:
        cluster.start()
    except KafkaUnavailable as exc:
        cluster.stop()
        typer.echo(f"cannot start Apache Kafka: {exc}", err=True)
        raise typer.Exit(2) from None
    except BaseException:
        cluster.stop()
        raise
    pids = ", ".join(str(n.proc.pid) for n in cluster.nodes if n.proc is not None)
    return cluster, (f"{cluster.url}  (Apache Kafka {KAFKA_VERSION}, one node, in {work}; "
                     f"pid {pids})")


@cli.command()
def dev(
    demo: Annotated[bool, typer.Option(help="publish sample events and show their effect")] = False,
    port: Annotated[int, typer.Option(help="broker port (0: a free one; tansu only)")] = 0,
    broker: Annotated[str, typer.Option(
        help="tansu: the embedded broker, in memory; kafka: Apache Kafka 4 from Maven "
             "Central (needs Java 17+ and Maven; cached in ~/.cache/dripstream)")] = "tansu",
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="the worker's, API's and clients' own logs too (INFO)")
    ] = False,
) -> None:
    """Run everything on this machine: a broker, Redis (unless DRIPSTREAM_REDIS_URL), a
    worker, console SMS and email channel workers, the shadow runner and the admin API
    (8080, or a free port if that is taken). Prints where each listens; Ctrl-C stops everything.

    Exit status: 0 after Ctrl-C/SIGTERM, 2 invalid settings or --broker kafka without
    Java or Maven."""
    from streams.embedded import EmbeddedRedis, free_port

    if broker not in ("tansu", "kafka"):
        typer.echo(f"invalid --broker {broker!r}: tansu or kafka", err=True)
        raise typer.Exit(2)
    verbose = verbose or _Options.verbose
    env = dict(os.environ)
    # The workers, channel workers and API log at WARNING unless asked: what an operator
    # needs is the banner, the sends and what goes wrong, not Faust's start-up tables.
    if not verbose:
        env.setdefault("DRIPSTREAM_LOG_LEVEL", "warning")
    os.environ.update(env)
    _one_shot()  # invalid settings: exit 2 before anything starts
    api_host, api_port, api_note = _api_address(env)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM and SIGHUP (a supervisor, a closed terminal) stop everything as Ctrl-C does;
    # and Ctrl-C works even when started with SIGINT ignored (as a background job).
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, stop)
    started: list[Any] = []
    procs: list[subprocess.Popen[bytes]] = []
    worker_proc: subprocess.Popen[bytes] | None = None
    try:
        # The broker and the worker run in sessions of their own, and Redis with SIGINT
        # blocked: a terminal's Ctrl-C reaches only this process, which stops the worker
        # first (it needs the broker and Redis to finish its batch), then the services.
        from streams.settings import Settings

        data_dir = Settings().data_dir
        service, broker_line = _start_broker(broker, port, data_dir)
        started.append(service)
        env["DRIPSTREAM_BROKER"] = service.url
        # Fast group joins and short fetch waits (the Kafka nodes accept 2 s sessions).
        env["DRIPSTREAM_PROFILE"] = "embedded"
        # The worker's metrics on a free port unless one is set: the default 9464 may be
        # taken by another worker on this host.
        env.setdefault("DRIPSTREAM_METRICS_PORT", str(free_port()))
        # {{preferences_url}} links to this API's preference page, signed with a secret
        # made for this run (the worker signs, the API verifies: docs/preferences.md).
        env.setdefault("DRIPSTREAM_PREFERENCES_URL", f"http://{api_host}:{api_port}")
        env.setdefault("DRIPSTREAM_PREFERENCES_SECRET", secrets.token_urlsafe(32))
        if "DRIPSTREAM_REDIS_URL" not in env:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                redis = EmbeddedRedis().start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            started.append(redis)
            env["DRIPSTREAM_REDIS_URL"] = redis.url
        os.environ.update(env)
        from streams.topics import ensure_topics

        settings = Settings()
        asyncio.run(ensure_topics(settings))
        # The broker starts empty: so must the worker's local table files (a rocksdb://
        # store would otherwise bring back contacts of an earlier run).
        shutil.rmtree(settings.data_dir / f"{settings.group_id}-data", ignore_errors=True)
        if "DRIPSTREAM_API_DATABASE_URL" not in env:
            # And so must the API's store: definitions and keys of an earlier run would be
            # listed there, unknown to the new broker and its workers.
            (settings.data_dir / "api.db").unlink(missing_ok=True)
        if demo:  # before the worker starts: it loads every definition before any event
            asyncio.run(_define_demo(settings))
        worker_proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                       env=env, start_new_session=True)
        procs += _start_channels(env)  # console sms + email workers: sends print here
        # Shadow versions run beside the live ones (idle while there is none).
        procs.append(subprocess.Popen([sys.executable, "-m", "streams.cli", "shadow", "run"],
                                      env=env, start_new_session=True))
        api_proc, api_url, api_key = _start_api(env, settings.data_dir, api_host, api_port)
        procs.append(api_proc)
        api_line = _wait_api(api_proc, api_port)
        banner = [
            f"broker    {broker_line}",
            f"redis     {env['DRIPSTREAM_REDIS_URL']}",
            f"data      {settings.data_dir.resolve()}  (liveness file: "
            f"{settings.health_path.resolve()})",
            f"worker    pid {worker_proc.pid}; metrics http://127.0.0.1:"
            f"{env['DRIPSTREAM_METRICS_PORT']}/metrics",
            f"channels  sms, email (console) pids {[p.pid for p in procs[:2]]}",
            f"shadow    pid {procs[2].pid} (`dripstream shadow report <account>`)",
            f"api       {api_url}/v1  (pid {api_proc.pid}{api_note}; docs {api_url}/docs, "
            f"metrics {api_url}/metrics){api_line}",
            f"dashboard {api_url}/dashboard  (log in with the api key)",
            f"api key   {api_key}  (bootstrap admin of every account: "
            f"Authorization: Bearer <key>)",
            "env       export DRIPSTREAM_BROKER=" + env["DRIPSTREAM_BROKER"]
            + " DRIPSTREAM_REDIS_URL=" + env["DRIPSTREAM_REDIS_URL"]
            + "  (for dripstream commands in another shell)",
            f"logs      {'INFO (-v)' if verbose else 'warnings and errors only (-v: all)'}; "
            "Ctrl-C stops everything",
        ]
        typer.echo("\n".join(banner))
        if demo:
            _demo()
            typer.echo("\n" + "\n".join(banner))  # the addresses again, below the demo
        worker_proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_all(procs)
        if worker_proc is not None and worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(15)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        for service in reversed(started):
            service.stop()
        if started:
            typer.echo("stopped")


def _wait_api(proc: subprocess.Popen[bytes], port: int) -> str:
    """``dev``: until the API listens (its banner line then works); a note if it does not."""
    from streams.embedded import wait_for_port

    try:
        wait_for_port(port, timeout=60, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        return f"\n          NOT RUNNING: {exc} (its error is above)"
    return ""


#: The demo's account policy: quiet hours off, so that what the README tries (a campaign
#: a minute from now to a contact in Los Angeles) sends at any hour of the day; the
#: default policy would hold it until 08:00 there (docs/compliance.md).
DEMO_POLICY: dict[str, Any] = {"kind": "account", "account": "demo", "version": 1,
                               "brand": "dripstream demo", "quiet_hours": None}
#: The demo's workflow: an order confirmation (transactional: quiet hours and caps never
#: hold it), which the console SMS worker prints as it reaches the "provider".
DEMO_WORKFLOW: dict[str, Any] = {
    "kind": "workflow", "id": "order-confirmation", "account": "demo", "version": 1,
    "name": "Order confirmation", "trigger": {"event": "purchase.completed"},
    "reentry": {"policy": "every_time"}, "start": "thanks",
    "steps": {"thanks": {"kind": "send_sms", "transactional": True,
                         "body": "Thanks {{ contact.first_name | there }}, your order "
                                 "is confirmed."}},
}
DEMO_DEFINITIONS = (DEMO_POLICY, DEMO_WORKFLOW)


async def _define_demo(settings: Any) -> None:
    from producers.admin import define as publish_checked
    from producers.admin import following
    from streams.definitions import parse_any

    async with following(settings) as registry, _producer(settings) as producer:
        for definition in DEMO_DEFINITIONS:
            await publish_checked(producer, settings, registry, parse_any(definition),
                                  by="dev")


def _demo() -> None:
    """Publish a signup and a purchase, then wait for the contact in the read model."""
    from redis.asyncio import Redis

    from producers.publisher import Publisher
    from streams.settings import Settings
    from tables.readmodel import ReadModel

    settings = Settings()

    async def run() -> dict[str, Any] | None:
        async with Publisher(settings.bootstrap_servers, topic_prefix=settings.topic_prefix,
                             idempotence=False) as p:
            await p.publish("demo", "c-1", "contact.created", {
                "phone": "+14155550101", "timezone": "America/Los_Angeles",
                "attributes": {"first_name": "Ada"}, "consent": {"sms": True},
            })
            await p.publish("demo", "c-1", "purchase.completed",
                            {"order_id": "o-1", "amount": "19.90", "currency": "USD"})
        redis = Redis.from_url(settings.redis_url)
        model = ReadModel(redis, settings.topic_prefix)
        # Version 2: both events applied; 3: the console worker's message.sent came back
        # too (its line is then printed above the state, not below the banner).
        applied, reported = time.monotonic() + 60, time.monotonic() + 75
        found = None
        try:
            while time.monotonic() < (reported if found else applied):
                state = await model.get_contact("demo", "c-1")
                if state and state["version"] >= 2:
                    found = state
                    if state["version"] >= 3:
                        break
                await asyncio.sleep(0.2)
            return found
        finally:
            await redis.aclose()

    typer.echo("\ndemo: defined account policy demo (quiet hours off) and workflow "
               "demo/order-confirmation; published contact.created and purchase.completed "
               "for demo:c-1 (the console SMS worker prints the confirmation) …")
    state = asyncio.run(run())
    if state is None:
        typer.echo("demo: the worker did not apply the events within 60 s", err=True)
    else:
        typer.echo("demo: contact state from the read model (`dripstream contact demo c-1`):")
        typer.echo(json.dumps(state, indent=2))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
