"""What the browser tests of the dashboard share: Debian's Chromium (``/usr/bin/chromium``,
or ``DRIPSTREAM_TEST_CHROMIUM``; ``.ci/run`` installs it), where screenshots go, and an
empty database for the API they serve."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Databases, Postgres

CHROMIUM = os.environ.get("DRIPSTREAM_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def chromium() -> str:
    """The browser's path; a missing one fails the test (CI installs it), never skips."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does), "
                    f"or set DRIPSTREAM_TEST_CHROMIUM")
    return CHROMIUM


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    path = Path(os.environ.get("DRIPSTREAM_DASHBOARD_SCREENSHOTS") or tmp_path / "shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def database_url(postgres: Postgres) -> Iterator[str]:
    """An empty database of its own (the API migrates it at start-up)."""
    dbs = Databases(postgres, f"dripstream_dash_{uuid.uuid4().hex[:8]}")
    try:
        yield dbs.empty()
    finally:
        dbs.drop_all()
