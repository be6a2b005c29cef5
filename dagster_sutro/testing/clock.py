"""The emulator's clock: wall-clock time plus an offset that tests advance."""

from __future__ import annotations

import datetime
import threading
import time


class EmulatorClock:
    """Wall-clock time shifted by an adjustable offset.

    Presigned URLs are signed at this clock's time, and their expiry is checked against it, so
    advancing the clock expires URLs without waiting.
    """

    def __init__(self) -> None:
        self._offset_seconds = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the emulator's current time as seconds since the epoch."""
        with self._lock:
            return time.time() + self._offset_seconds

    def now_datetime(self) -> datetime.datetime:
        """Return the emulator's current time as a timezone-aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.now(), tz=datetime.timezone.utc)

    def advance(self, seconds: float) -> None:
        """Move the clock forward.

        Args:
            seconds: How far to move, 0 or more.

        Raises:
            ValueError: If ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds} seconds")
        with self._lock:
            self._offset_seconds += seconds
