"""The admin API's store: SQLAlchemy 2.0 models, the engine, and the migrations.

Three tables. ``definition_versions``: every change to a definition is a new row (kind,
account, id, version) and the live version is the highest — the API's own writes and
the versions :mod:`api.projection` finds on the definitions topic (``dripstream
define``'s); a row is updated only when the topic holds another body for its version
(the one the workers run). ``outbox``: the record each write must put
on ``<prefix>definitions``, written in the same transaction as the version row and
published by :mod:`api.relay`. ``api_keys``: SHA-256 digests of the keys, never the keys.

Migrations (``api/migrations``, Alembic) run at API start-up (:func:`migrate`), on a
synchronous engine for the same URL: SQLite for ``dripstream dev``, PostgreSQL otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
    make_url,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ApiKey", "Base", "DefinitionVersion", "Outbox", "connect", "migrate", "sync_url"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware (UTC) datetimes out — SQLite forgets the zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class DefinitionVersion(Base):
    """One version of one definition (write-once); the body is the validated JSON."""

    __tablename__ = "definition_versions"
    __table_args__ = (
        UniqueConstraint("account", "kind", "def_id", "version", name="uq_definition_version"),
        Index("ix_definition_lookup", "account", "kind", "def_id"),
    )

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    def_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(64))


class Outbox(Base):
    """A record to publish, in ``pk`` order; ``relayed_at`` is set once it is acknowledged."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "relayed_at", "pk"),)

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    topic_suffix: Mapped[str] = mapped_column(String(64))
    key: Mapped[bytes] = mapped_column(LargeBinary)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    relayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiKey(Base):
    """A key's SHA-256, its account and role. ``key_id`` is public (it prefixes the key)."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (for Alembic)."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    elif parsed.drivername in ("postgresql", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def async_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head", *, down: bool = False) -> None:
    """Upgrade (or downgrade) the schema; blocking — call from a thread in async code."""
    config = alembic_config(url)
    if down:
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


def connect(url: str) -> tuple[AsyncEngine, async_sessionmaker[Any]]:
    engine = create_async_engine(async_url(url), pool_pre_ping=True)
    return engine, async_sessionmaker(engine, expire_on_commit=False)
