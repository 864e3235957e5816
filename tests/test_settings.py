"""Settings (streams/settings.py): read from DRIPSTREAM_* variables, checked once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streams.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the DRIPSTREAM_* variables it sets itself."""
    for name in list(os.environ):
        if name.startswith("DRIPSTREAM_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        # The broker URL.
        ("DRIPSTREAM_BROKER", "kafka://k1:9093", "broker", "kafka://k1:9093"),
        # The topic prefix.
        ("DRIPSTREAM_TOPIC_PREFIX", "acme.", "topic_prefix", "acme."),
        # Integers are parsed.
        ("DRIPSTREAM_PARTITIONS", "12", "partitions", 12),
        # Floats are parsed.
        ("DRIPSTREAM_DEDUPE_WINDOW_S", "60.5", "dedupe_window_s", 60.5),
        # Booleans are parsed.
        ("DRIPSTREAM_WEB_ENABLED", "true", "web_enabled", True),
        # Paths are parsed.
        ("DRIPSTREAM_DATA_DIR", "/var/lib/dripstream", "data_dir", Path("/var/lib/dripstream")),
        # Variable names are case-insensitive.
        ("dripstream_redis_url", "redis://r:6380/1", "redis_url", "redis://r:6380/1"),
        # Without the prefix a variable is not ours.
        ("TOPIC_PREFIX", "other.", "topic_prefix", "dripstream."),
        # Another product's prefix is not ours either.
        ("FAUST_BROKER", "kafka://elsewhere:1", "broker", "kafka://127.0.0.1:9092"),
    ],
)
def test_read_from_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: Any
) -> None:
    """Each field is read from DRIPSTREAM_<FIELD>; other variables are ignored."""
    monkeypatch.setenv(variable, value)

    actual = getattr(Settings(), field)

    assert expected == actual


@pytest.mark.parametrize(
    ("profile", "override", "expected"),
    [
        # Production keeps Faust's usual fetch wait.
        ("production", None, 1500),
        # The embedded broker gets a short fetch wait.
        ("embedded", None, 10),
        # An explicit value wins in production.
        ("production", "200", 200),
        # An explicit value wins over the embedded default.
        ("embedded", "250", 250),
        # Zero is an explicit value, not "unset".
        ("production", "0", 0),
    ],
)
def test_fetch_wait_follows_profile_unless_overridden(
    monkeypatch: pytest.MonkeyPatch, profile: str, override: str | None, expected: int
) -> None:
    """fetch_wait_ms is 10 on the embedded profile, 1500 in production, or the explicit value."""
    monkeypatch.setenv("DRIPSTREAM_PROFILE", profile)
    if override is not None:
        monkeypatch.setenv("DRIPSTREAM_FETCH_MAX_WAIT_MS", override)

    actual = Settings().fetch_wait_ms

    assert expected == actual


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # The default prefix.
        ({}, "dripstream.worker"),
        # The group follows the topic prefix, so test deployments never share a group.
        ({"DRIPSTREAM_TOPIC_PREFIX": "t123."}, "t123.worker"),
        # An empty prefix.
        ({"DRIPSTREAM_TOPIC_PREFIX": ""}, "worker"),
        # An explicit app id wins.
        ({"DRIPSTREAM_TOPIC_PREFIX": "t123.", "DRIPSTREAM_APP_ID": "billing"}, "billing"),
    ],
)
def test_group_id_defaults_to_prefix_worker(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """group_id is DRIPSTREAM_APP_ID, else '<prefix>worker'."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    actual = Settings().group_id

    assert expected == actual


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        # The default single broker.
        ("kafka://127.0.0.1:9092", ["127.0.0.1:9092"]),
        # Several brokers, ';'-separated as Faust takes them.
        ("kafka://a:1;kafka://b:2", ["a:1", "b:2"]),
        # Spaces around the separator and a trailing slash are dropped.
        ("kafka://a:1/; kafka://b:2 ", ["a:1", "b:2"]),
        # A bare host:port without a scheme.
        ("a:1", ["a:1"]),
    ],
)
def test_bootstrap_servers_parsed_from_broker_url(
    monkeypatch: pytest.MonkeyPatch, broker: str, expected: list[str]
) -> None:
    """bootstrap_servers turns the Faust broker URL(s) into host:port strings for aiokafka."""
    monkeypatch.setenv("DRIPSTREAM_BROKER", broker)

    actual = Settings().bootstrap_servers

    assert expected == actual


@pytest.mark.parametrize(
    "store",
    [
        # Redis is not a Faust table store.
        "redis://127.0.0.1:6379",
        # A typo of a real store.
        "rocks://",
        # No scheme at all.
        "",
    ],
)
def test_invalid_store_rejected(monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    """A store other than memory:// or rocksdb:// is refused, naming the accepted stores."""
    monkeypatch.setenv("DRIPSTREAM_STORE", store)

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert f"store must be memory:// or rocksdb://, got {store!r}" in str(caught.value)


@pytest.mark.parametrize(
    "store",
    [
        # The default, in memory.
        "memory://",
        # RocksDB, for production.
        "rocksdb://",
    ],
)
def test_valid_store_accepted(monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    """The documented stores are accepted."""
    monkeypatch.setenv("DRIPSTREAM_STORE", store)

    assert store == Settings().store


@pytest.mark.parametrize(
    ("protocol", "username"),
    [
        # SASL over plaintext, no user.
        ("SASL_PLAINTEXT", None),
        # SASL over TLS, no user.
        ("SASL_SSL", None),
        # An empty user is no user.
        ("SASL_PLAINTEXT", ""),
    ],
)
def test_sasl_without_username_rejected(
    monkeypatch: pytest.MonkeyPatch, protocol: str, username: str | None
) -> None:
    """SASL security without DRIPSTREAM_SASL_USERNAME is refused with a message naming it."""
    monkeypatch.setenv("DRIPSTREAM_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("DRIPSTREAM_SASL_PASSWORD", "pw")
    if username is not None:
        monkeypatch.setenv("DRIPSTREAM_SASL_USERNAME", username)

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert "DRIPSTREAM_SASL_USERNAME" in str(caught.value)


def test_kafka_security_sasl_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    """For SASL_PLAINTEXT, kafka_security() carries the mechanism, username and password."""
    monkeypatch.setenv("DRIPSTREAM_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRIPSTREAM_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("DRIPSTREAM_SASL_USERNAME", "svc-drip")
    monkeypatch.setenv("DRIPSTREAM_SASL_PASSWORD", "s3cret-pw")

    actual = Settings().kafka_security()

    assert {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc-drip",
        "sasl_plain_password": "s3cret-pw",
    } == actual


def test_kafka_security_plaintext_is_protocol_only() -> None:
    """Without security settings the clients get only security_protocol=PLAINTEXT."""
    assert {"security_protocol": "PLAINTEXT"} == Settings().kafka_security()


def test_sasl_password_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SASL password does not appear when the settings are printed or logged."""
    monkeypatch.setenv("DRIPSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DRIPSTREAM_SASL_USERNAME", "svc-drip")
    monkeypatch.setenv("DRIPSTREAM_SASL_PASSWORD", "s3cret-pw")

    settings = Settings()

    assert "s3cret-pw" not in f"{settings!r} {settings}"
