"""The admin API against real PostgreSQL, Redis and a broker.

PostgreSQL: ``DRIPSTREAM_TEST_POSTGRES`` (a libpq URL of a server and a database to
connect to for ``CREATE DATABASE``), default ``postgresql://postgres@127.0.0.1:5432/test``.
The session makes a template database ``dripstream_api_<random>`` migrated to head; each
test gets its own copy (``CREATE DATABASE … TEMPLATE``, fast), so one test's outbox never
reaches another's topics. All are dropped at the end (the server is shared).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from api.db import migrate
from api.settings import ApiSettings
from tests.stack import Stack

SERVER = os.environ.get("DRIPSTREAM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _admin(sql: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def db_url(name: str) -> str:
    base = SERVER.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


@dataclass
class Databases:
    template: str
    made: list[str] = field(default_factory=list)

    def new(self) -> str:
        name = f"{self.template}_{uuid.uuid4().hex[:8]}"
        _admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return db_url(name)

    def empty(self) -> str:
        name = f"{self.template}_{uuid.uuid4().hex[:8]}"
        _admin(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return db_url(name)


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    template = f"dripstream_api_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{template}"')
    dbs = Databases(template)
    try:
        migrate(db_url(template))
        yield dbs
    finally:
        for name in [*dbs.made, template]:
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Api:
    """An app in this process (ASGI transport) with its stack, store and bootstrap key."""

    stack: Stack
    client: httpx.AsyncClient
    app: Any
    database_url: str
    bootstrap: str

    @property
    def boot(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bootstrap}"}

    async def key(self, account: str, role: str) -> dict[str, str]:
        """Headers with a new key of ``role`` in ``account``."""
        r = await self.client.post(f"/v1/accounts/{account}/keys", headers=self.boot,
                                   json={"role": role, "name": f"test {role}"})
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}

    @property
    def services(self) -> Any:
        return self.app.state.services


def api_settings(database_url: str, **extra: Any) -> ApiSettings:
    return ApiSettings(database_url=database_url, bootstrap_key=f"boot-{uuid.uuid4().hex}",
                       relay_interval_s=0.1, **extra)


@pytest.fixture
async def api(stack: Stack, databases: Databases) -> AsyncIterator[Api]:
    settings = api_settings(databases.new())
    app = create_app(stack.settings, settings, clock=stack.now)  # the workers' clock
    async with AsyncExitStack() as exits:
        await exits.enter_async_context(app.router.lifespan_context(app))
        client = await exits.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api"))
        assert settings.bootstrap_key is not None
        yield Api(stack, client, app, settings.database_url,
                  settings.bootstrap_key.get_secret_value())
