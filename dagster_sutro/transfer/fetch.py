"""Fetching one byte range with bounded retries, URL refresh and cancellation."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from dagster_sutro.errors import StorageError
from dagster_sutro.models import ArtifactHead, ResultsDownloadUrl
from dagster_sutro.transfer.plan import Part
from dagster_sutro.transfer.progress import LogRelay, Progress
from dagster_sutro.transfer.settings import TransferSettings
from dagster_sutro.transfer.storage import (
    ExpiredUrlError,
    RetryableStorageError,
    StorageClient,
    TransferCancelledError,
)
from dagster_sutro.transfer.urls import UrlSource

_Result = TypeVar("_Result")


class RangeSink(Protocol):
    """The receiver of one range's bytes, with the count of bytes that arrived."""

    received: int

    def write(self, data: bytes) -> None:
        """Store the next bytes of the range."""

    def reset(self) -> None:
        """Forget every byte received, before the range is fetched again from its start."""


class MemorySink:
    """Keeps a range's bytes in memory as the chunks that arrived, without copying them."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0

    def write(self, data: bytes) -> None:
        """Keep the chunk."""
        self.chunks.append(data)
        self.received += len(data)

    def reset(self) -> None:
        """Drop every chunk."""
        self.chunks.clear()
        self.received = 0

    def getvalue(self) -> bytes:
        """Return the bytes received, joined."""
        return b"".join(self.chunks)


def backoff_seconds(settings: TransferSettings, attempt: int, retry_after: float | None) -> float:
    """Return the delay before retry number ``attempt``: exponential, with jitter.

    The delay doubles from ``backoff_base_seconds`` up to ``backoff_max_seconds``, and a
    random half of it is added, so that workers that failed together do not retry together.
    A ``Retry-After`` from the server raises the delay, within the same upper limit.
    """
    ceiling = min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.backoff_max_seconds))
    return delay


class Fetcher:
    """Fetches byte ranges of one artifact version, retrying what a new request can fix.

    Broken connections, stalls, short bodies and 5xx responses are retried from the last
    byte received, up to ``max_attempts_per_part`` attempts. An expired URL is refreshed
    through the shared :class:`UrlSource` without counting as an attempt. Every other error
    (412, a 200 to a ranged request, 403, 404) is raised at once for the engine to handle.

    Call :meth:`pin` with the version's ETag and size before fetching ranges.

    Args:
        storage: The HTTP client.
        urls: The shared URLs.
        label: The artifact key, for log lines and errors.
        settings: Attempts, backoff and chunk size.
        cancel: Set when the download must stop.
        progress: Counts the bytes received.
        relay: Where retries are logged.
    """

    def __init__(
        self,
        *,
        storage: StorageClient,
        urls: UrlSource,
        label: str,
        settings: TransferSettings,
        cancel: threading.Event,
        progress: Progress,
        relay: LogRelay,
    ) -> None:
        self._storage = storage
        self._urls = urls
        self.etag = ""
        self.size = 0
        self._label = label
        self._settings = settings
        self.cancel = cancel
        self._progress = progress
        self._relay = relay

    def pin(self, etag: str, size: int) -> None:
        """Set the version (ETag) that every GET requires, and that version's size."""
        self.etag = etag
        self.size = size

    def fetch_range(self, part: Part, sink: RangeSink, *, what: str | None = None) -> None:
        """Fetch ``part`` into ``sink``, resuming each retry at the first missing byte.

        Args:
            part: The byte range.
            sink: Receives the bytes. The bytes it already contains are not fetched again.
            what: The range's name in log lines, ``"Part <index> (bytes ...)"`` by default.

        Raises:
            StorageError: When the attempts are used up or storage rejects the request.
            TransferCancelledError: When the download was cancelled.
        """
        label = what or f"Part {part.index} (bytes {part.start}-{part.end}) of {self._label}"

        def fetch_rest(urls: ResultsDownloadUrl) -> None:
            start = part.start + sink.received
            if start > part.end:
                return
            body = self._storage.get(
                urls.get_url,
                label=self._label,
                start=start,
                end=part.end,
                size=self.size,
                etag=self.etag,
                expires_at=urls.expires_at,
            )
            self._urls.mark_success()
            with body:
                for chunk in body.chunks(self.cancel):
                    sink.write(chunk)
                    self._progress.add(len(chunk))

        self._with_retries(
            fetch_rest, what=label, resume=lambda: f"from byte {part.start + sink.received}"
        )

    def fetch_whole(self, sink: RangeSink, *, on_chunk: Callable[[], None]) -> None:
        """Fetch the whole object in one stream, from byte 0 again after any break.

        This is the mode for servers that ignore ``Range``. A retry cannot continue where
        the last one stopped, so each attempt resets the sink and starts at byte 0.

        Args:
            sink: Receives the whole object.
            on_chunk: Called after each chunk, on the calling thread, to log progress.
        """

        def fetch_all(urls: ResultsDownloadUrl) -> None:
            if sink.received:
                self._progress.rewind(sink.received)
                sink.reset()
            body = self._storage.get(
                urls.get_url,
                label=self._label,
                start=0,
                end=self.size - 1,
                size=self.size,
                etag=self.etag,
                send_range=False,
                expires_at=urls.expires_at,
            )
            self._urls.mark_success()
            with body:
                for chunk in body.chunks(self.cancel):
                    sink.write(chunk)
                    self._progress.add(len(chunk))
                    on_chunk()

        self._with_retries(
            fetch_all, what=f"The single-stream GET of {self._label}", resume=lambda: "from byte 0"
        )

    def fetch_bytes(self, start: int, end: int) -> bytes:
        """Fetch bytes ``start..end`` into memory, as for a Parquet footer."""
        sink = MemorySink()
        self.fetch_range(
            Part(index=-1, start=start, end=end),
            sink,
            what=f"The GET of bytes {start}-{end} of {self._label}",
        )
        return sink.getvalue()

    def head(self) -> ArtifactHead:
        """Send HEAD to the current HEAD URL, retrying failures and refreshing on expiry.

        A HEAD error has no body, so a 403 for an expired URL looks like any other 403. The
        first such 403 is treated as expiry and the URLs are refreshed once; a second one is
        raised.
        """
        refreshed_for_403 = False

        def send_head(urls: ResultsDownloadUrl) -> ArtifactHead:
            nonlocal refreshed_for_403
            ambiguous: StorageError | None = None
            try:
                head = self._storage.head(
                    urls.head_url, label=self._label, expires_at=urls.expires_at
                )
            except (ExpiredUrlError, RetryableStorageError):
                raise
            except StorageError as error:
                if error.status_code != 403 or error.code is not None or refreshed_for_403:
                    raise
                ambiguous = error
            if ambiguous is not None:
                refreshed_for_403 = True
                raise ExpiredUrlError(str(ambiguous), status_code=403)
            self._urls.mark_success()
            return head

        return self._with_retries(send_head, what=f"HEAD of {self._label}", resume=lambda: "")

    def _with_retries(
        self,
        attempt_once: Callable[[ResultsDownloadUrl], _Result],
        *,
        what: str,
        resume: Callable[[], str],
    ) -> _Result:
        """Run one request until it succeeds, refreshing expired URLs and retrying failures.

        The refresh and the retry happen outside the ``except`` blocks, so the exceptions
        they raise are not chained to the storage error.
        """
        attempt = 1
        while True:
            self._raise_if_cancelled()
            urls, generation = self._urls.current()
            expired = False
            failure: RetryableStorageError | None = None
            try:
                return attempt_once(urls)
            except ExpiredUrlError:
                expired = True
            except RetryableStorageError as error:
                failure = error
            if expired:
                self._urls.refresh(generation, reason="storage rejected them as expired")
                continue
            if failure is not None:
                self.wait_before_retry(failure, attempt, what=what, resume=resume())
                attempt += 1

    def wait_before_retry(
        self, error: RetryableStorageError, attempt: int, *, what: str, resume: str
    ) -> None:
        """Log a retry and sleep its backoff, or raise when the attempts are used up."""
        wait_before_retry(
            error,
            attempt,
            what=what,
            resume=resume,
            settings=self._settings,
            relay=self._relay,
            cancel=self.cancel,
        )

    def _raise_if_cancelled(self) -> None:
        if self.cancel.is_set():
            raise TransferCancelledError("The download was cancelled.")


def wait_before_retry(
    error: RetryableStorageError,
    attempt: int,
    *,
    what: str,
    resume: str,
    settings: TransferSettings,
    relay: LogRelay,
    cancel: threading.Event,
) -> None:
    """Log a retry and sleep its backoff, or raise when the attempts are used up.

    Args:
        error: The failure of attempt number ``attempt``.
        attempt: The number of attempts made so far, from 1.
        what: The request, for the log line, for example ``"Part 3 (bytes ...) of <key>"``.
        resume: Where the retry continues, for example ``"from byte 1024"``, or empty.
        settings: The attempts and backoff.
        relay: Where the retry is logged.
        cancel: Ends the wait early when set.

    Raises:
        StorageError: After ``max_attempts_per_part`` attempts.
        TransferCancelledError: When the download is cancelled during the wait.
    """
    maximum = settings.max_attempts_per_part
    cause = str(error).rstrip(".")
    if attempt >= maximum:
        raise StorageError(
            f"{what} failed {attempt} times; the last error: {cause}. Run the download again to "
            "resume it.",
            status_code=error.status_code,
            code=error.code,
        )
    delay = backoff_seconds(settings, attempt, error.retry_after)
    relay.warning(
        f"{what} failed on attempt {attempt} of {maximum}: {cause}. Retrying "
        f"{resume + ' ' if resume else ''}in {delay:.1f} s."
    )
    if cancel.wait(delay):
        raise TransferCancelledError("The download was cancelled.")
