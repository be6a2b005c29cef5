"""Progress accounting and logging for a download that runs on several threads."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from dagster_sutro.redaction import redact_text

MIB = 1024 * 1024
DEFAULT_LOGGER_NAME = "dagster_sutro.transfer"


def format_mib(size_bytes: float) -> str:
    """Format a byte count in MiB with one decimal, for example ``'12.5 MiB'``."""
    return f"{size_bytes / MIB:.1f} MiB"


def format_duration(seconds: float) -> str:
    """Format a duration as ``'42 s'``, ``'3 min 05 s'`` or ``'2 h 07 min'``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LogRelay:
    """Sends log lines to the caller's logger from the thread that created the relay.

    Worker threads queue their lines, and the owning thread emits them when it calls
    :meth:`drain`, so a logger that is not thread-safe (such as a Dagster ``context.log``)
    is only ever called from one thread. Every line passes through ``redact_text``.

    Args:
        logger: Anything with ``debug``, ``info``, ``warning`` and ``error`` methods that take
            one string, or ``None`` for the ``dagster_sutro.transfer`` logger.
    """

    def __init__(self, logger: Any = None) -> None:
        self._logger = logger if logger is not None else logging.getLogger(DEFAULT_LOGGER_NAME)
        self._owner = threading.get_ident()
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()

    def debug(self, message: str) -> None:
        """Log a line at DEBUG level."""
        self._emit("debug", message)

    def info(self, message: str) -> None:
        """Log a line at INFO level."""
        self._emit("info", message)

    def warning(self, message: str) -> None:
        """Log a line at WARNING level."""
        self._emit("warning", message)

    def error(self, message: str) -> None:
        """Log a line at ERROR level."""
        self._emit("error", message)

    def drain(self) -> None:
        """Emit the lines queued by worker threads; a no-op on any other thread."""
        if threading.get_ident() != self._owner:
            return
        while True:
            try:
                level, message = self._queue.get_nowait()
            except queue.Empty:
                return
            self._call(level, message)

    def _emit(self, level: str, message: str) -> None:
        message = redact_text(message)
        if threading.get_ident() == self._owner:
            self.drain()
            self._call(level, message)
        else:
            self._queue.put((level, message))

    def _call(self, level: str, message: str) -> None:
        method = getattr(self._logger, level, None) or getattr(self._logger, "info", None)
        if method is not None:
            method(message)


class Progress:
    """Counts bytes from all parts and logs one merged progress line at a steady interval.

    Args:
        label: What is downloaded, shown in each line: the artifact key.
        total_bytes: The artifact size.
        done_bytes: The bytes already in place before this call (a resume).
        interval_seconds: The interval between two progress lines.
        relay: Where the lines go.
    """

    def __init__(
        self,
        *,
        label: str,
        total_bytes: int,
        done_bytes: int,
        interval_seconds: float,
        relay: LogRelay,
    ) -> None:
        self._label = label
        self._interval = interval_seconds
        self._relay = relay
        self._lock = threading.Lock()
        self.total_bytes = total_bytes
        self.done_bytes = done_bytes
        self.transferred_bytes = 0
        self._started = time.monotonic()
        self._last_log_time = self._started
        self._last_log_transferred = 0

    def add(self, size_bytes: int) -> None:
        """Count body bytes that were received and kept."""
        with self._lock:
            self.done_bytes += size_bytes
            self.transferred_bytes += size_bytes

    def rewind(self, size_bytes: int) -> None:
        """Take back bytes that must be fetched again (a restart from byte 0)."""
        with self._lock:
            self.done_bytes = max(0, self.done_bytes - size_bytes)

    def restart(self, *, total_bytes: int, done_bytes: int) -> None:
        """Start counting a new version of the artifact; transferred bytes keep counting."""
        with self._lock:
            self.total_bytes = total_bytes
            self.done_bytes = done_bytes

    @property
    def elapsed_seconds(self) -> float:
        """The time since the download started."""
        return time.monotonic() - self._started

    def maybe_log(self) -> None:
        """Log a progress line when the interval has passed since the last one."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_log_time < self._interval:
                return
            window = now - self._last_log_time
            recent = self.transferred_bytes - self._last_log_transferred
            self._last_log_time = now
            self._last_log_transferred = self.transferred_bytes
            done, total, transferred = self.done_bytes, self.total_bytes, self.transferred_bytes
        elapsed = now - self._started
        percent = 100.0 * done / total if total else 100.0
        rate = recent / window if window > 0 else 0.0
        average = transferred / elapsed if elapsed > 0 else 0.0
        eta = format_duration((total - done) / average) if average > 0 else "unknown"
        self._relay.info(
            f"Downloading {self._label}: {percent:.1f}% ({format_mib(done)} of "
            f"{format_mib(total)}), {rate / MIB:.1f} MiB/s, ETA {eta}."
        )
