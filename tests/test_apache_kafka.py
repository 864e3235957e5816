"""streams/apache_kafka.py without a broker: what it hands the storage tool."""

from __future__ import annotations

import uuid

import pytest

from streams import apache_kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """An id starting with "-" is taken for an option by the storage tool (formatting
    failed one start in 64): such a draw is drawn again."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(apache_kafka.uuid, "uuid4", lambda: next(draws))
    assert apache_kafka._cluster_id() == "AQEBAQEBAQEBAQEBAQEBAQ"
