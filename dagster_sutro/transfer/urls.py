"""The presigned URLs in use, shared by all workers, and their refresh on expiry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from dagster_sutro.errors import DownloadError, StorageError
from dagster_sutro.models import ResultsDownloadUrl
from dagster_sutro.redaction import register_presigned_url
from dagster_sutro.transfer.progress import LogRelay, format_duration


def lifetime_seconds(urls: ResultsDownloadUrl) -> float:
    """Return the lifetime that the GET URL was signed with (``X-Amz-Expires``).

    The signed lifetime can be shorter than the ``expires_in_seconds`` that the API echoes,
    so the URL's own value is preferred.
    """
    query = {name.lower(): value for name, value in parse_qsl(urlsplit(urls.get_url).query)}
    try:
        return float(int(query["x-amz-expires"]))
    except (KeyError, ValueError):
        return float(urls.expires_in_seconds)


def register_urls(urls: ResultsDownloadUrl) -> None:
    """Register both URLs' signatures, so that every log line and message masks them."""
    register_presigned_url(urls.get_url)
    register_presigned_url(urls.head_url)


class UrlSource:
    """Holds the current URLs and replaces them once per expiry, however many workers ask.

    Each set of URLs has a generation number. A worker that saw generation ``g`` fail
    requests a refresh of ``g``. Only the first such request calls ``get_urls``, and the
    others find a newer generation and reuse it. Refreshes in a row without a successful storage
    request in between are bounded, so URLs that keep failing end the download with a clear
    error instead of a loop.

    Args:
        get_urls: Calls the results-url endpoint for fresh URLs.
        urls: The first URLs.
        max_refreshes: The number of refreshes in a row without a successful request.
        margin_seconds: Refresh before a request when the URLs expire sooner than this.
        relay: Where refreshes are logged.
    """

    def __init__(
        self,
        get_urls: Callable[[], ResultsDownloadUrl],
        urls: ResultsDownloadUrl,
        *,
        max_refreshes: int,
        margin_seconds: float,
        relay: LogRelay,
    ) -> None:
        register_urls(urls)
        self._get_urls = get_urls
        self._urls = urls
        self._generation = 0
        self._max_refreshes = max_refreshes
        self._margin_seconds = margin_seconds
        self._relay = relay
        self._lock = threading.Lock()
        self._refreshes_without_success = 0
        self.refresh_count = 0

    @property
    def urls(self) -> ResultsDownloadUrl:
        """The current URLs."""
        return self._urls

    def current(self) -> tuple[ResultsDownloadUrl, int]:
        """Return the current URLs and their generation, refreshing them if they expire soon.

        The margin is ``refresh_margin_seconds``, or half the URLs' signed lifetime when that
        is shorter, so that URLs with a short lifetime are still used before they are
        replaced.
        """
        with self._lock:
            urls, generation = self._urls, self._generation
        margin = min(self._margin_seconds, lifetime_seconds(urls) / 2)
        remaining = urls.expires_at - time.time()
        if remaining < margin:
            self.refresh(
                generation,
                reason=f"the URLs expire in {format_duration(max(0.0, remaining))}",
                proactive=True,
            )
            with self._lock:
                urls, generation = self._urls, self._generation
        return urls, generation

    def mark_success(self) -> None:
        """Record that storage accepted a request, which resets the refresh bound."""
        with self._lock:
            self._refreshes_without_success = 0

    def refresh(
        self, seen_generation: int, *, reason: str, proactive: bool = False
    ) -> ResultsDownloadUrl:
        """Replace generation ``seen_generation`` of the URLs, unless another worker did.

        Args:
            seen_generation: The generation that failed or is about to expire.
            reason: Why, for the log line.
            proactive: The URLs have not failed yet. At the bound, they are kept instead of
                raising, and the next request shows whether they still work.

        Returns:
            The URLs to use now.

        Raises:
            StorageError: If the bound of refreshes in a row was reached.
            DownloadError: If the fresh URLs point to another artifact.
        """
        with self._lock:
            if self._generation != seen_generation:
                return self._urls
            if self._refreshes_without_success >= self._max_refreshes:
                if proactive:
                    return self._urls
                raise StorageError(
                    f"Storage kept rejecting the presigned URLs of {self._urls.artifact.key} as "
                    f"expired after {self._refreshes_without_success} fresh URLs in a row "
                    f"(max_url_refreshes={self._max_refreshes}). Check that this machine's "
                    "clock is correct and that the URLs' lifetime (expires_in_seconds) is "
                    "longer than one part takes to download.",
                    status_code=403,
                    code="ExpiredRequest",
                )
            self._relay.info(
                f"Requesting fresh presigned URLs for {self._urls.artifact.key}, because {reason}."
            )
            fresh = self._get_urls()
            self._check_same_artifact(fresh)
            register_urls(fresh)
            self._urls = fresh
            self._generation += 1
            self._refreshes_without_success += 1
            self.refresh_count += 1
            return fresh

    def replace(self, urls: ResultsDownloadUrl) -> None:
        """Use new URLs unconditionally, as after the artifact was replaced."""
        self._check_same_artifact(urls)
        register_urls(urls)
        with self._lock:
            self._urls = urls
            self._generation += 1

    def fetch_fresh(self) -> ResultsDownloadUrl:
        """Call results-url once and use the URLs it returns, outside the refresh bound."""
        fresh = self._get_urls()
        self.replace(fresh)
        return fresh

    def _check_same_artifact(self, fresh: ResultsDownloadUrl) -> None:
        current = self._urls.artifact
        if (fresh.artifact.bucket, fresh.artifact.key) != (current.bucket, current.key):
            raise DownloadError(
                f"The results URL now points to {fresh.artifact.bucket}/{fresh.artifact.key} "
                f"instead of {current.bucket}/{current.key}, so the download stopped."
            )
