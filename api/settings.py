"""The admin API's settings (``DRIPSTREAM_API_*``), beside the worker's :class:`Settings`.

The API also reads the worker's settings (broker, topic prefix, Redis, partitions): one
deployment, one environment. Its own are kept in this class so the worker's stays the
worker's. Outside ``dripstream dev`` the API refuses to start without a bootstrap key.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ApiSettings"]


class ApiSettings(BaseSettings):
    """Everything the admin API adds to :class:`streams.settings.Settings`."""

    model_config = SettingsConfigDict(env_prefix="DRIPSTREAM_API_", frozen=True)

    host: str = Field("127.0.0.1", description="address `dripstream api` listens on")
    port: int = Field(8080, ge=0, le=65535, description="port `dripstream api` listens on")
    database_url: str = Field(
        "sqlite+aiosqlite:///./dripstream-api.db",
        description="definitions store: postgresql+psycopg://… in production, SQLite in dev")
    bootstrap_key: SecretStr | None = Field(
        None, description="admin key for every account (manages keys); required outside dev")
    rate_limit: int = Field(600, ge=1, description="requests per key per rate window")
    rate_window_s: int = Field(60, ge=1, description="rate-limit window (fixed), seconds")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    relay_interval_s: float = Field(
        0.5, gt=0, description="outbox relay: how often it looks for rows it was not told of")
    fault: str | None = Field(
        None, pattern=r"^after_commit:[0-9]+$",
        description="tests only: after_commit:N SIGKILLs the API right after the Nth "
                    "definition write commits, before the relay publishes it")
    dev: bool = Field(False, description="set by `dripstream dev`: a bootstrap key is optional")
