"""The definitions store: migrations both ways on PostgreSQL; the outbox survives a kill."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import psycopg
import pytest
from sqlalchemy import create_engine, inspect

from api.db import migrate, sync_url
from streams.embedded import free_port
from tests.api.conftest import Databases
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.integration

WORKFLOW = {
    "id": "welcome", "name": "Welcome",
    "trigger": {"event": "contact.created"},
    "start": "hello",
    "steps": {"hello": {"kind": "send_sms", "body": "Hi {{ contact.first_name | there }}"}},
}


def test_migrations_upgrade_downgrade_upgrade(databases: Databases) -> None:
    """The schema goes to head, back to nothing and to head again on PostgreSQL."""
    url = databases.empty()
    engine = create_engine(sync_url(url))
    try:
        migrate(url)
        assert {"definition_versions", "outbox", "api_keys"} <= set(
            inspect(engine).get_table_names())
        migrate(url, "base", down=True)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate(url)
        assert {"definition_versions", "outbox", "api_keys"} <= set(
            inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _serve(stack: Stack, database_url: str, key: str, port: int, log: str,
           fault: str | None = None) -> subprocess.Popen[bytes]:
    env = {**stack.env, "DRIPSTREAM_API_DATABASE_URL": database_url,
           "DRIPSTREAM_API_BOOTSTRAP_KEY": key, "DRIPSTREAM_API_PORT": str(port),
           "DRIPSTREAM_API_RELAY_INTERVAL_S": "0.1"}
    if fault:
        env["DRIPSTREAM_API_FAULT"] = fault
    with open(stack.tmp_path / log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the API exited while starting"
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("the API did not start in 30 s")


async def test_outbox_relay_killed_between_commit_and_publish(
    stack: Stack, databases: Databases,
) -> None:
    """SIGKILLed right after the third commit: on restart the relay publishes what was
    committed, every version exactly as stored, in order, none lost."""
    url, key, port = databases.new(), f"boot-{uuid.uuid4().hex}", free_port()
    auth = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{port}/v1/accounts/acme/workflows"
    proc = _serve(stack, url, key, port, "api-0.log", fault="after_commit:3")
    try:
        _wait_up(port, proc)
        async with httpx.AsyncClient(headers=auth, timeout=10) as client:
            assert (await client.post(base, json=WORKFLOW)).status_code == 201
            assert (await client.put(f"{base}/welcome",
                                     json={**WORKFLOW, "name": "Welcome 2"})).status_code == 200
            with pytest.raises(httpx.TransportError):  # killed before it could answer
                await client.put(f"{base}/welcome", json={**WORKFLOW, "name": "Welcome 3"})
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        pending = conn.execute("SELECT count(*) FROM outbox WHERE relayed_at IS NULL"
                               ).fetchone()
        stored = conn.execute("SELECT version, body FROM definition_versions "
                              "ORDER BY version").fetchall()
    assert [v for v, _ in stored] == [1, 2, 3]
    assert pending is not None and pending[0] >= 1  # v3 at least was never published

    proc = _serve(stack, url, key, port, "api-1.log")
    try:
        _wait_up(port, proc)

        async def published() -> list[tuple[bytes, dict[str, object]]] | None:
            records = await stack.read_all("definitions")
            found = [(r.key, orjson.loads(r.value))
                     for r in sorted(records, key=lambda r: r.timestamp)]
            return found if len({k for k, _ in found}) >= 3 else None

        found = await eventually(published, what="three versions on the topic")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    keys = [k for k, _ in found]
    assert sorted(set(keys)) == [f"workflow:acme:welcome:{v}".encode() for v in (1, 2, 3)]
    assert keys[-1] == b"workflow:acme:welcome:3"  # by broker time: v3 last
    by_key = dict(found)
    for version, body in stored:
        assert by_key[f"workflow:acme:welcome:{version}".encode()] == body
