"""dripstream's settings: one class, read from ``DRIPSTREAM_*`` environment variables.

Two profiles exist. ``production`` keeps Kafka's usual consumer-group timings (real Kafka
rejects sessions under 6 s) and Faust's 1.5 s fetch wait. ``embedded`` is for the Tansu
broker that ``dripstream dev`` and the tests start: fast group joins, a short fetch wait,
and the end-offset correction of :mod:`streams.tansu`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

Profile = Literal["production", "embedded"]


class Settings(BaseSettings):
    """Everything an operator can configure, with the defaults a developer expects."""

    model_config = SettingsConfigDict(env_prefix="DRIPSTREAM_", frozen=True)

    broker: str = Field("kafka://127.0.0.1:9092", description="Faust broker URL(s), ';'-separated")
    topic_prefix: str = Field("dripstream.", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(8, ge=1, description="partitions of every keyed topic and table")
    replication_factor: int = Field(1, ge=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    store: str = Field("memory://", description="Faust table store: memory:// or rocksdb://")
    data_dir: Path = Path("./data")
    standby_replicas: int | None = Field(
        None, ge=0, description="standby copies of each table partition on other workers "
                                "(a failover then reads only the changelog's tail); default 1 "
                                "with rocksdb://, 0 with memory:// (a copy there doubles each "
                                "worker's memory)")
    profile: Profile = "production"
    app_id: str | None = Field(None, description="consumer group; defaults to <prefix>worker")
    fetch_max_wait_ms: int | None = Field(None, ge=0, description="default 1500, embedded 10")
    idle_fetch_max_wait_ms: int | None = Field(
        None, ge=0, description="fetch wait once the input is quiet; default: the fetch wait "
                                "(embedded: 250)")
    follow_max_wait_ms: int = Field(
        250, ge=0, description="fetch wait of the definitions and suppressions followers")
    batch_max: int = Field(1000, ge=1, description="input records per batch (at most)")
    guarantee: Literal["auto", "exactly_once", "at_least_once"] = Field(
        "auto", description="exactly_once: each batch's effects, state and input offsets "
                            "commit in one Kafka transaction (readers read_committed); "
                            "at_least_once: effects before state, deterministic ids, "
                            "repeats dropped downstream; auto: exactly_once where the "
                            "broker has transactions (docs/operations.md)")
    dedupe_window_s: float = Field(24 * 3600, gt=0, description="duplicate-event window")
    max_causation_depth: int = Field(5, ge=1, description="loop guard for emitted events")
    timer_interval_s: float = Field(1.0, gt=0, description="how often due waits are checked")
    shadow_lag_s: float = Field(
        120.0, gt=0, description="how far behind the live stream `dripstream shadow run` "
                                 "decides: a recorded wake-up this late still counts as the "
                                 "one that served a due wait (docs/simulation.md)")
    timer_max_per_tick: int = Field(500, ge=1, description="wake-ups sent per tick (catch-up)")
    timer_hold_s: float = Field(
        60.0, ge=0, description="a due wait waits at most this long for its partition's "
                                "earlier input (a STOP in a backlog) to be applied first")
    clock_offset_file: Path | None = Field(
        None, description="tests only: a file holding seconds added to the clock"
    )
    fault: str | None = Field(
        None, pattern=r"^(after_effects|after_state|crash|stall|lose_input|zombie)(:[0-9]+)?$",
        description="tests only, at the Nth batch that writes anything: after_effects / "
                    "after_state SIGKILL the worker once the effects / the table writes are "
                    "acknowledged; crash fails the Faust app; stall stops the agent. "
                    "lose_input:N drops the Nth to N+9th input records to reach the agent, "
                    "once, before the gap guard sees them (as the consumer once lost input); "
                    "zombie (exactly-once) SIGSTOPs the worker once a transaction's effects "
                    "are written, before its commit",
    )
    health_file: Path | None = Field(
        None, description="liveness file, touched while the worker makes progress; "
                          "default <data dir>/health")
    health_interval_s: float = Field(5.0, gt=0, description="how often liveness is judged")
    stall_after_s: float = Field(
        60.0, gt=0, description="no progress for this long with input waiting = stalled")
    stall_exit_s: float = Field(
        300.0, ge=0, description="exit (status 70) after being stalled this long; 0: never")
    # Channel workers (`dripstream channel`, producers/channel.py).
    channel_max_in_flight: int = Field(
        16, ge=1, description="channel workers: provider calls at once (different contacts)")
    channel_batch_max: int = Field(
        200, ge=1, description="channel workers: send commands taken per fetch (at most)")
    channel_call_timeout_s: float = Field(
        30.0, gt=0, description="channel workers: a provider call taking longer has an "
                                "unknown outcome (the same on every worker of a channel)")
    channel_max_attempts: int = Field(
        5, ge=1, description="channel workers: provider calls per command on transient errors")
    channel_backoff_s: float = Field(
        0.5, ge=0, description="channel workers: first retry delay (doubles, full jitter)")
    channel_backoff_max_s: float = Field(
        30.0, ge=0, description="channel workers: longest retry delay")
    channel_ledger_ttl_s: int = Field(
        14 * 24 * 3600, ge=1, description="channel workers: how long a message id is "
                                          "remembered (longer than the send topics' 7 days)")
    channel_heartbeat_s: float = Field(
        5.0, gt=0, description="channel workers: liveness key refresh; a worker silent for "
                               "3 of these is taken for dead (its reservations unknown)")
    channel_unknown_policy: Literal["lookup", "assume_sent"] | None = Field(
        None, description="channel workers: an outcome not known after a crash or a timeout "
                          "is looked up at the provider or assumed sent (default: lookup "
                          "if the provider can)")
    channel_stall_after_s: float = Field(
        60.0, gt=0, description="channel workers: no partitions for this long while joining "
                                "the group, or input waiting and no command finished nor "
                                "provider call returned for this long = stalled (keep it "
                                "longer than the call timeout)")
    channel_stall_exit_s: float = Field(
        300.0, ge=0, description="channel workers: exit (status 70) after being stalled this "
                                 "long; 0: never")
    channel_suppression_margin_s: float = Field(
        5.0, ge=0, description="channel workers: a suppression newer than a command's "
                               "created_at minus this vetoes it (older ones the gate knew)")
    channel_file: Path = Field(
        Path("./data/provider-calls.jsonl"),
        description="file provider: one JSON line appended per provider call")
    channel_file_faults: str | None = Field(
        None, pattern=r"^((transient|permanent|drop|delay_ms|seed)=[0-9.]+,?)+$",
        description="tests only, file provider: fractions of calls that fail transiently / "
                    "permanently / lose their response after being recorded, a delay per "
                    "call, e.g. transient=0.1,drop=0.05,delay_ms=20")
    channel_webhook_url: str | None = Field(
        None, description="webhook provider: https URL each send is POSTed to")
    channel_webhook_secret: SecretStr | None = Field(
        None, description="webhook provider: HMAC-SHA256 key of the signature header")
    channel_webhook_lookup_url: str | None = Field(
        None, description="webhook provider: GET <url>/<message_id> answers whether a send "
                          "arrived (enables the lookup policy)")
    channel_webhook_connect_timeout_s: float = Field(5.0, gt=0)
    channel_webhook_read_timeout_s: float = Field(10.0, gt=0)
    channel_webhook_ca_file: Path | None = Field(
        None, description="webhook provider: CA bundle to verify the receiver with")
    channel_webhook_allow_http: bool = Field(
        False, description="dev/tests only: allow an http:// webhook URL")
    channel_callback_port: int | None = Field(
        None, description="serve signed provider callbacks on this port (0: a free one)")
    channel_callback_secret: SecretStr | None = Field(
        None, description="key the provider signs callbacks with (default: the webhook "
                          "secret)")
    preferences_url: str | None = Field(
        None, description="the admin API's public base URL: {{preferences_url}} in a "
                          "template links to <url>/preferences/<token> (docs/preferences.md)")
    preferences_secret: SecretStr | None = Field(
        None, description="signs preference links; the workers and the API must share it")
    preferences_link_days: int = Field(30, ge=1, le=365,
                                       description="a preference link opens for this long")
    web_enabled: bool = False
    web_port: int = 6066
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="the worker's Prometheus /metrics port; 0: off "
                                          "(several workers on one host need one each)")
    log_level: str = "info"

    # Kafka security, passed through to the clients (real clusters only).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.store not in ("memory://", "rocksdb://"):
            raise ValueError(f"store must be memory:// or rocksdb://, got {self.store!r}")
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL security needs DRIPSTREAM_SASL_USERNAME and _SASL_PASSWORD")
        return self

    @cached_property
    def group_id(self) -> str:
        return self.app_id or f"{self.topic_prefix}worker"

    @property
    def embedded(self) -> bool:
        return self.profile == "embedded"

    @property
    def fetch_wait_ms(self) -> int:
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        return 10 if self.embedded else 1500

    @property
    def idle_fetch_wait_ms(self) -> int:
        if self.idle_fetch_max_wait_ms is not None:
            return self.idle_fetch_max_wait_ms
        return 250 if self.embedded else self.fetch_wait_ms

    @property
    def standbys(self) -> int:
        if self.standby_replicas is not None:
            return self.standby_replicas
        return 1 if self.store.startswith("rocksdb") else 0

    @property
    def health_path(self) -> Path:
        return self.health_file or self.data_dir / "health"

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` list for plain aiokafka clients, from the Faust broker URL."""
        servers = []
        for url in self.broker.split(";"):
            servers.append(url.split("://", 1)[-1].strip().rstrip("/"))
        return servers

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (producer, consumer, admin)."""
        import ssl

        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            ctx = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
            if self.ssl_certfile:
                ctx.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                )
            kwargs["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs
