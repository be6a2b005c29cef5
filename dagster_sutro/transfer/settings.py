"""Settings of the transfer engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dagster_sutro.errors import InvalidInputError

MIB = 1024 * 1024

# A part below 1 MiB turns a large artifact into a storm of small requests.
MIN_PART_SIZE_BYTES = 1 * MIB
MAX_PART_SIZE_BYTES = 5 * 1024 * MIB
MIN_READ_CHUNK_BYTES = 1 * MIB
MAX_READ_CHUNK_BYTES = 64 * MIB
MAX_CONCURRENCY = 64


@dataclass(frozen=True)
class TransferSettings:
    """The part size, concurrency, timeouts, retries and checks of the transfer engine.

    Every value is checked when the settings are created, so a bad value fails before any
    request is sent.

    Attributes:
        part_size_bytes: The size of each ranged GET, at least 1 MiB. An artifact of at most
            one part size is fetched with a single request.
        max_concurrency: The number of parts fetched in parallel, 1 to 64. For a destination
            that is not a local file, at most this many parts are held in memory, besides an
            8 MiB tail for the Parquet check and the writer's own buffer (for ``s3://``, one
            upload part of :func:`s3_part_size_for` bytes).
        connect_timeout_seconds: The timeout of opening a connection to storage.
        read_timeout_seconds: The maximum wait for the next bytes of a response. It is an idle
            timeout, never a limit on the total time of a request.
        max_attempts_per_part: The attempts of each part before the download fails, counting
            the first one. Retries continue from the last byte received.
        max_url_refreshes: The number of fresh URLs requested in a row, without a successful
            storage request in between, before an expired-URL error is final.
        max_version_restarts: How often the download starts over when the artifact is
            replaced (a new ETag) while it runs.
        refresh_margin_seconds: Fresh URLs are requested before a part starts when the
            current ones expire sooner than this (or sooner than half their lifetime, when
            that is shorter).
        progress_interval_seconds: The interval between progress log lines.
        read_chunk_bytes: The size of each read from a response body, 1 MiB to 64 MiB.
        backoff_base_seconds: The delay before the first retry. The delay doubles with each
            attempt, with random jitter.
        backoff_max_seconds: The upper limit of the delay between retries.
        verify_parquet: Check the Parquet magic bytes and footer before publishing.
    """

    part_size_bytes: int = 16 * MIB
    max_concurrency: int = 8
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    max_attempts_per_part: int = 5
    max_url_refreshes: int = 5
    max_version_restarts: int = 1
    refresh_margin_seconds: float = 30.0
    progress_interval_seconds: float = 5.0
    read_chunk_bytes: int = 1 * MIB
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 20.0
    verify_parquet: bool = True

    def __post_init__(self) -> None:
        _check_int(
            "part_size_bytes", self.part_size_bytes, MIN_PART_SIZE_BYTES, MAX_PART_SIZE_BYTES
        )
        _check_int("max_concurrency", self.max_concurrency, 1, MAX_CONCURRENCY)
        _check_int("max_attempts_per_part", self.max_attempts_per_part, 1, 100)
        _check_int("max_url_refreshes", self.max_url_refreshes, 0, 1000)
        _check_int("max_version_restarts", self.max_version_restarts, 0, 100)
        _check_int(
            "read_chunk_bytes", self.read_chunk_bytes, MIN_READ_CHUNK_BYTES, MAX_READ_CHUNK_BYTES
        )
        _check_seconds("connect_timeout_seconds", self.connect_timeout_seconds, positive=True)
        _check_seconds("read_timeout_seconds", self.read_timeout_seconds, positive=True)
        _check_seconds("refresh_margin_seconds", self.refresh_margin_seconds, positive=False)
        _check_seconds("progress_interval_seconds", self.progress_interval_seconds, positive=True)
        _check_seconds("backoff_base_seconds", self.backoff_base_seconds, positive=False)
        _check_seconds("backoff_max_seconds", self.backoff_max_seconds, positive=False)
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise InvalidInputError(
                f"TransferSettings.backoff_max_seconds ({self.backoff_max_seconds}) is smaller "
                f"than backoff_base_seconds ({self.backoff_base_seconds}). Set it to at least "
                "the base delay."
            )
        if not isinstance(self.verify_parquet, bool):
            raise InvalidInputError(
                f"TransferSettings.verify_parquet must be True or False, got "
                f"{self.verify_parquet!r}."
            )


def _check_int(name: str, value: object, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(
            f"TransferSettings.{name} must be an integer from {minimum} to {maximum}, got "
            f"{value!r}."
        )
    if not minimum <= value <= maximum:
        raise InvalidInputError(
            f"TransferSettings.{name} is {value}, outside the valid range {minimum} to "
            f"{maximum}. Set a value inside that range."
        )


def _check_seconds(name: str, value: object, *, positive: bool) -> None:
    valid_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not valid_type or not math.isfinite(value):  # type: ignore[arg-type]
        raise InvalidInputError(
            f"TransferSettings.{name} must be a finite number of seconds, got {value!r}."
        )
    if positive and value <= 0:  # type: ignore[operator]
        raise InvalidInputError(
            f"TransferSettings.{name} must be greater than 0 seconds, got {value!r}."
        )
    if not positive and value < 0:  # type: ignore[operator]
        raise InvalidInputError(
            f"TransferSettings.{name} must be 0 or more seconds, got {value!r}."
        )
