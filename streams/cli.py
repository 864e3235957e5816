"""The ``dripstream`` command: everything an operator does, as thin wrappers.

Commands import the Faust app lazily: ``dev`` sets the environment for the processes it
starts before anything reads the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["main"]

cli = typer.Typer(help="dripstream: Kafka-native marketing automation.", no_args_is_help=True)


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
        typer.echo(f"cannot reach the broker at {settings.broker}: {exc}", err=True)
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


def _start_api(env: dict[str, str], data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``dev``: the admin API on SQLite under the data dir, with a fresh bootstrap key."""
    import secrets

    key = env.get("DRIPSTREAM_API_BOOTSTRAP_KEY") or f"ds_boot_{secrets.token_urlsafe(32)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    api_env = {"DRIPSTREAM_API_DEV": "true", "DRIPSTREAM_API_BOOTSTRAP_KEY": key,
               "DRIPSTREAM_API_DATABASE_URL":
                   f"sqlite+aiosqlite:///{(data_dir / 'api.db').resolve()}", **env}
    api_env["DRIPSTREAM_API_BOOTSTRAP_KEY"] = key
    host = api_env.get("DRIPSTREAM_API_HOST", "127.0.0.1")
    port = api_env.get("DRIPSTREAM_API_PORT", "8080")
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


@cli.command()
def health(
    max_age: Annotated[float, typer.Option(help="seconds the liveness file may be old")] = 30.0,
) -> None:
    """Exit 0 if the worker's liveness file is fresh (a probe for supervisors)."""
    from streams.settings import Settings

    path = Settings().health_path
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
    from streams.settings import Settings
    from streams.topics import describe_topics, ensure_topics

    settings = Settings()

    async def run() -> list[dict[str, object]]:
        if create:
            for name in await ensure_topics(settings):
                typer.echo(f"created {name}")
        return await describe_topics(settings)

    for row in asyncio.run(run()):
        typer.echo(json.dumps(row))


@cli.command()
def publish(
    event: Annotated[str, typer.Argument(help="a CloudEvents JSON object, or - for stdin")],
) -> None:
    """Validate one JSON event and publish it to <prefix>contact-events."""
    import orjson

    from producers.publisher import Publisher
    from streams.events import Rejected, encode_event, parse_event
    from streams.settings import Settings

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
    settings = Settings()

    async def run() -> None:
        async with Publisher(
            settings.bootstrap_servers, topic_prefix=settings.topic_prefix,
            idempotence=False if settings.embedded else None,  # Tansu cannot
            **settings.kafka_security(),
        ) as pub:
            await pub.send(envelope)

    _reaching_the_broker(settings, lambda: asyncio.run(run()))
    typer.echo(f"published {envelope.get('type')} {envelope.get('id')}")


def _reaching_the_broker(settings: Any, call: Any) -> Any:
    """``call()``; a broker that cannot be reached is one line and exit 1, not a trace."""
    from aiokafka.errors import KafkaError

    try:
        return call()
    except (KafkaError, OSError) as exc:
        typer.echo(f"cannot reach the broker at {settings.broker} "
                   f"(DRIPSTREAM_BROKER): {exc}", err=True)
        raise typer.Exit(1) from None


def _producer_run(coro_factory: Any) -> Any:
    from aiokafka import AIOKafkaProducer

    from streams.settings import Settings

    settings = Settings()

    async def run() -> Any:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", **settings.kafka_security()
        )
        await producer.start()
        try:
            return await coro_factory(producer, settings.topic_prefix)
        finally:
            await producer.stop()

    return _reaching_the_broker(settings, lambda: asyncio.run(run()))


@cli.command()
def define(
    path: Annotated[str, typer.Argument(help="a definition JSON file, or - for stdin")],
) -> None:
    """Validate a definition (workflow, account policy, keyword, campaign) and publish it."""
    import orjson

    from producers.admin import publish_definition
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
        # Every problem before any connection; and what publish_definition writes must
        # encode (orjson reads 1024 levels deep but writes only about 250).
        orjson.dumps(definition)
        parse_any(definition, min_interval_s=0)  # the interval: against the account's, below
    except orjson.JSONDecodeError as exc:
        typer.echo(f"invalid: not JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    except orjson.JSONEncodeError as exc:
        typer.echo(f"invalid: nested too deeply: {exc}", err=True)
        raise typer.Exit(2) from None
    except DefinitionError as exc:
        for error in exc.errors:
            typer.echo(f"invalid: {error}", err=True)
        raise typer.Exit(2) from None
    interval = DEFAULT_MIN_INTERVAL
    if definition.get("kind") == "campaign":  # checked against the account's own minimum
        registry = _registry()
        interval = parse_duration(registry.policy(definition["account"])[
            "campaign_min_interval"])
        try:
            full = parse_any(definition, interval).model_dump(mode="json")
        except DefinitionError as exc:
            for error in exc.errors:
                typer.echo(f"invalid: {error}", err=True)
            raise typer.Exit(2) from None
        for warning in _campaign_warnings(full, registry):
            typer.echo(f"warning: {warning}", err=True)
    wf = _producer_run(lambda p, prefix: publish_definition(p, prefix, definition, interval))
    ident = getattr(wf, "id", "policy")
    typer.echo(f"published {wf.kind} {wf.account}/{ident} v{getattr(wf, 'version', '')}")


@cli.command()
def control(
    action: Annotated[str, typer.Argument(help="pause | resume | cancel | cancel_all")],
    account: Annotated[str, typer.Option()],
    contact: Annotated[str | None, typer.Option(help="contact id (not for cancel_all)")] = None,
    execution: Annotated[str | None, typer.Option(help="execution id")] = None,
    workflow: Annotated[str | None, typer.Option(help="workflow id (cancel_all)")] = None,
) -> None:
    """Pause, resume or cancel an execution, or cancel all executions of a workflow."""
    from pydantic import ValidationError

    from producers.admin import send_control
    from streams.commands import Control

    try:
        command = Control(action=action, account=account, contact_id=contact,
                          execution_id=execution, workflow_id=workflow)
    except ValidationError as exc:
        typer.echo(f"invalid: {exc.errors(include_url=False)[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    _producer_run(lambda p, prefix: send_control(p, prefix, command))
    typer.echo(f"sent {action}")


@cli.command()
def suppress(
    account: str,
    address: Annotated[str, typer.Argument(help="E.164 phone or email address")],
    reason: Annotated[str, typer.Option(help="manual, opted_out, bounced, complained")] = "manual",
    remove: Annotated[bool, typer.Option(help="lift a suppression of this reason")] = False,
) -> None:
    """Add an address to an account's suppression list (or lift it with --remove)."""
    from producers.admin import suppress as send

    _producer_run(lambda p, prefix: send(p, prefix, account, address, reason, remove=remove))
    typer.echo(f"{'lifted' if remove else 'suppressed'} {account}:{address} ({reason})")


def _campaign_warnings(campaign: dict[str, Any], registry: Any) -> list[str]:
    """What is valid but probably not meant: a schedule with nothing left to fire, a
    linked workflow the workers do not have (yet)."""
    from datetime import UTC, datetime

    from tables.campaigns import campaign_workflow, campaign_zone, next_after

    warnings = []
    account = campaign["account"]
    known = registry.campaign(account, campaign["id"])  # its newest version, if any
    zone = campaign_zone(campaign, registry.policy(account))
    if next_after(campaign, zone, datetime.now(UTC), None) is None:
        warnings.append("schedule: no occurrence after now: it will never fire (a time in "
                        "the past does not fire; see docs/campaigns.md)")
    if campaign["workflow"] and campaign_workflow(registry, campaign) is None:
        warnings.append(f"workflow: {campaign['workflow']!r} is not an active workflow of "
                        f"{account} (yet): an occurrence without it fails")
    if known is not None and known["version"] >= campaign["version"] and known != campaign:
        warnings.append(f"version: {account}/{campaign['id']} is at v{known['version']} "
                        "already; the workers ignore a changed version: publish a higher one")
    return warnings


def _registry() -> Any:
    """The definitions as the workers hold them (the topic read to its end)."""
    from producers.admin import read_registry
    from streams.settings import Settings

    settings = Settings()
    return _reaching_the_broker(settings, lambda: asyncio.run(read_registry(settings)))


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
    """Each occurrence's progress, summed over the partitions that report it."""

    from redis.asyncio import Redis

    from streams.settings import Settings
    from tables.campaigns import campaign_zone, next_after, summarize
    from tables.readmodel import ReadModel

    settings = Settings()
    registry = _registry()
    campaign = _campaign(registry, account, campaign_id)

    async def run() -> dict[int, dict[str, Any]]:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await ReadModel(redis, settings.topic_prefix).get_progress(account,
                                                                            campaign_id)
        finally:
            await redis.aclose()

    progress = asyncio.run(run())
    records = progress.values()
    status = registry.campaign_status(account, campaign_id)
    upcoming = None
    if status != "cancelled" and campaign["active"]:
        zone = campaign_zone(campaign, registry.policy(account))
        last = max((r["last"] for r in records if r["last"]), default=None)
        found = next_after(campaign, zone, registry.published_at(campaign), last)
        upcoming = found and {"occurrence": found.id, "at": found.at.isoformat()}
    typer.echo(json.dumps({
        "campaign": campaign_id, "account": account, "version": campaign["version"],
        "active": campaign["active"], "status": status, "next_occurrence": upcoming,
        "partitions": settings.partitions,
        "occurrences": summarize(progress)},
        indent=2))


@campaign_cli.command("preview")
def campaign_preview(
    campaign_id: str, account: Account,
    limit: Annotated[int, typer.Option(help="contacts to list")] = 10,
) -> None:
    """The audience as it is now (from the read model): its size and its first contacts.
    Sends nothing."""
    from redis.asyncio import Redis

    from streams.settings import Settings
    from tables.campaigns import in_audience
    from tables.readmodel import ReadModel

    settings = Settings()
    campaign = _campaign(_registry(), account, campaign_id)

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

    found = asyncio.run(run())
    typer.echo(json.dumps({"campaign": campaign_id, "account": account,
                           "audience": len(found), "first": found[:limit]}, indent=2))


def _control(action: str, campaign_id: str, account: str) -> None:
    from producers.admin import control_campaign

    registry = _registry()
    _campaign(registry, account, campaign_id)
    if registry.campaign_status(account, campaign_id) == "cancelled":
        typer.echo(f"campaign {account}/{campaign_id} is cancelled (final)", err=True)
        raise typer.Exit(1)
    _producer_run(lambda p, prefix: control_campaign(p, prefix, account, campaign_id, action))
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
    """Print a contact's state from the Redis read model."""
    from redis.asyncio import Redis

    from streams.settings import Settings
    from tables.readmodel import ReadModel

    settings = Settings()

    async def run() -> dict[str, Any] | None:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await ReadModel(redis, settings.topic_prefix).get_contact(account, contact_id)
        finally:
            await redis.aclose()

    state = asyncio.run(run())
    if state is None:
        typer.echo(f"no contact {account}:{contact_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(state, indent=2))


@cli.command()
def dev(
    demo: Annotated[bool, typer.Option(help="publish sample events and show their effect")] = False,
    port: Annotated[int, typer.Option(help="broker port (0: a free one)")] = 0,
) -> None:
    """Run everything on this machine: Tansu broker, Redis (unless DRIPSTREAM_REDIS_URL), worker."""
    from streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM and SIGHUP (a supervisor, a closed terminal) stop everything as Ctrl-C does;
    # and Ctrl-C works even when started with SIGINT ignored (as a background job).
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, stop)
    env = dict(os.environ)
    started: list[Any] = []
    # The broker and the worker run in sessions of their own, and Redis with SIGINT
    # blocked: a terminal's Ctrl-C reaches only this process, which stops the worker first
    # (it needs the broker and Redis to finish its batch), then the services.
    broker = EmbeddedBroker(port or None, new_session=True).start()
    started.append(broker)
    env["DRIPSTREAM_BROKER"] = broker.url
    env["DRIPSTREAM_PROFILE"] = "embedded"
    # The worker's metrics on a free port unless one is set: the default 9464 may be taken
    # by another worker on this host.
    env.setdefault("DRIPSTREAM_METRICS_PORT", str(free_port()))
    if "DRIPSTREAM_REDIS_URL" not in env:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            redis = EmbeddedRedis().start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        started.append(redis)
        env["DRIPSTREAM_REDIS_URL"] = redis.url
    from streams.settings import Settings
    from streams.topics import ensure_topics

    settings = Settings(broker=broker.url, profile="embedded")
    asyncio.run(ensure_topics(settings))
    # The broker starts empty: so must the worker's local table files (a rocksdb:// store
    # would otherwise bring back contacts of an earlier run).
    tables = settings.data_dir / f"{settings.group_id}-data"
    shutil.rmtree(tables, ignore_errors=True)
    os.environ.update(env)
    if demo:  # before the worker starts: it loads every definition before any event
        asyncio.run(_define_demo(settings))

    typer.echo(f"broker   {broker.url}  (Tansu, in memory)")
    typer.echo(f"redis    {env['DRIPSTREAM_REDIS_URL']}")
    typer.echo(f"data     {settings.data_dir.resolve()}  (liveness file: "
               f"{settings.health_path.resolve()})")
    worker_proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                   start_new_session=True)
    typer.echo(f"worker   pid {worker_proc.pid}; metrics http://127.0.0.1:"
               f"{env['DRIPSTREAM_METRICS_PORT']}/metrics; Ctrl-C stops everything")
    channels = _start_channels(env)  # console sms + email workers: sends print here
    typer.echo(f"channels sms, email (console) pids {[p.pid for p in channels]}")
    api_proc, api_url, api_key = _start_api(env, settings.data_dir)
    channels.append(api_proc)
    typer.echo(f"api      {api_url}/v1  (pid {api_proc.pid}; docs {api_url}/docs, "
               f"metrics {api_url}/metrics)")
    typer.echo(f"dashboard {api_url}/dashboard  (log in with the api key)")
    typer.echo(f"api key  {api_key}  (bootstrap admin of every account: "
               f"Authorization: Bearer <key>)")
    try:
        if demo:
            _demo()
        worker_proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_all(channels)
        if worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(15)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        for service in reversed(started):
            service.stop()
        typer.echo("stopped")


#: The demo's workflow: an order confirmation (transactional, so quiet hours do not hold
#: it at night), which the console SMS worker prints as it reaches the "provider".
DEMO_WORKFLOW: dict[str, Any] = {
    "kind": "workflow", "id": "order-confirmation", "account": "demo", "version": 1,
    "name": "Order confirmation", "trigger": {"event": "purchase.completed"},
    "reentry": {"policy": "every_time"}, "start": "thanks",
    "steps": {"thanks": {"kind": "send_sms", "transactional": True,
                         "body": "Thanks {{ contact.first_name | there }}, your order "
                                 "is confirmed."}},
}


async def _define_demo(settings: Any) -> None:
    from aiokafka import AIOKafkaProducer

    from producers.admin import publish_definition

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        await publish_definition(producer, settings.topic_prefix, DEMO_WORKFLOW)
    finally:
        await producer.stop()


def _demo() -> None:
    """Publish a signup and a purchase, then wait for the contact in the read model."""
    from redis.asyncio import Redis

    from producers.publisher import Publisher
    from streams.settings import Settings
    from tables.readmodel import ReadModel

    settings = Settings()

    async def run() -> dict[str, Any] | None:
        async with Publisher(settings.bootstrap_servers, topic_prefix=settings.topic_prefix,
                             idempotence=False if settings.embedded else None) as p:
            await p.publish("demo", "c-1", "contact.created", {
                "phone": "+14155550101", "timezone": "America/Los_Angeles",
                "attributes": {"first_name": "Ada"}, "consent": {"sms": True},
            })
            await p.publish("demo", "c-1", "purchase.completed",
                            {"order_id": "o-1", "amount": "19.90", "currency": "USD"})
        redis = Redis.from_url(settings.redis_url)
        model = ReadModel(redis, settings.topic_prefix)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                state = await model.get_contact("demo", "c-1")
                if state and state["version"] >= 2:
                    return state
                await asyncio.sleep(0.2)
            return None
        finally:
            await redis.aclose()

    typer.echo("demo: defined workflow demo/order-confirmation; published contact.created "
               "and purchase.completed for demo:c-1 (the console SMS worker prints the "
               "confirmation) …")
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
