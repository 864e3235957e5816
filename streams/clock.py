"""The clock: the one place the workers read the time.

Pure logic takes ``now`` as an argument; agents call :meth:`Clock.now`. Tests of multi-day
workflows skip time instead of waiting: with ``DRIPSTREAM_CLOCK_OFFSET_FILE`` set (tests
only; a worker started with it prints a warning) the file holds a number of seconds added
to the real clock, which a test raises to jump ahead, as Temporal's time-skipping test
server does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["Clock"]


class Clock:
    def __init__(self, offset_file: Path | None = None) -> None:
        self.offset_file = offset_file
        self._mtime: float | None = None
        self._offset = 0.0

    def offset(self) -> float:
        if self.offset_file is None:
            return 0.0
        try:
            mtime = self.offset_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0
        if mtime != self._mtime:
            self._offset = float(self.offset_file.read_text().strip() or 0)
            self._mtime = mtime
        return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset())
