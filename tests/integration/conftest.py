"""What the browser tests of the dashboard share: Debian's Chromium (``/usr/bin/chromium``,
or ``DRIPSTREAM_TEST_CHROMIUM``; ``.ci/run`` installs it) and where screenshots go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
