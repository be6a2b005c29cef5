"""The download of one artifact: plan, fetch parts in parallel, check, publish.

A download sends HEAD for the ETag and size (unless the caller did), plans equal ranged
parts and fetches them on a pool of workers, each GET pinned to the ETag. The size and
Parquet checks run before anything is published. Local destinations are written part by part
at their offsets and can resume after a crash. Other destinations receive the bytes in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from dagster_sutro.errors import (
    ArtifactChangedError,
    DownloadError,
    InvalidInputError,
    StorageError,
)
from dagster_sutro.models import ArtifactHead, DownloadResult, ResultsDownloadUrl
from dagster_sutro.redaction import install_log_redaction
from dagster_sutro.transfer.destination import Destination, resolve_destination
from dagster_sutro.transfer.fetch import Fetcher, MemorySink, wait_before_retry
from dagster_sutro.transfer.local import (
    LocalTarget,
    ResumeState,
    artifact_key_sha256,
    current_boot_id,
)
from dagster_sutro.transfer.ordered import OrderedWriter
from dagster_sutro.transfer.plan import Part, PartPlan
from dagster_sutro.transfer.progress import (
    DEFAULT_LOGGER_NAME,
    MIB,
    LogRelay,
    Progress,
    format_mib,
)
from dagster_sutro.transfer.remote import StreamTarget, open_stream_target
from dagster_sutro.transfer.settings import TransferSettings
from dagster_sutro.transfer.storage import (
    PreconditionFailedError,
    RangeNotHonoredError,
    RetryableStorageError,
    StorageClient,
    TransferCancelledError,
)
from dagster_sutro.transfer.urls import UrlSource, register_urls

# How often the coordinating thread wakes to emit queued log lines, at the longest.
TICK_SECONDS = 0.5

# Frozen, so one instance can be the default of every call.
DEFAULT_SETTINGS = TransferSettings()

_Result = TypeVar("_Result")


def head_artifact(
    urls: ResultsDownloadUrl, *, settings: TransferSettings = DEFAULT_SETTINGS
) -> ArtifactHead:
    """Read the artifact's ETag, size and ``Last-Modified`` with a HEAD request.

    The request goes to ``urls.head_url`` only, because a SigV4 signature covers the HTTP
    method and a HEAD on the GET URL is rejected by S3 and R2. Connection failures and 5xx
    responses are retried with backoff.

    Args:
        urls: The presigned URLs from results-url.
        settings: Timeouts, attempts and backoff.

    Returns:
        The ETag exactly as storage sent it, the content length and the modification time.

    Raises:
        StorageError: If storage rejects the request (403, 404, an expired URL) or the
            attempts are used up.

    Examples:
        >>> head = head_artifact(urls)  # doctest: +SKIP
        >>> head.etag, head.content_length  # doctest: +SKIP
        ('"9b2cf535f27731c974343645a3985328-4"', 987654321)
    """
    install_log_redaction()
    register_urls(urls)
    relay = LogRelay(logging.getLogger(DEFAULT_LOGGER_NAME))
    label = urls.artifact.key
    with StorageClient(settings) as storage:
        attempt = 1
        while True:
            failure: RetryableStorageError | None = None
            try:
                return storage.head(urls.head_url, label=label, expires_at=urls.expires_at)
            except RetryableStorageError as error:
                failure = error
            wait_before_retry(
                failure,
                attempt,
                what=f"HEAD of {label}",
                resume="",
                settings=settings,
                relay=relay,
                cancel=threading.Event(),
            )
            attempt += 1


def download_artifact(
    get_urls: Callable[[], ResultsDownloadUrl],
    destination: Destination | str,
    *,
    urls: ResultsDownloadUrl | None = None,
    head: ArtifactHead | None = None,
    expected_etag: str | None = None,
    storage_options: dict[str, Any] | None = None,
    settings: TransferSettings = DEFAULT_SETTINGS,
    logger: Any = None,
) -> DownloadResult:
    """Download the artifact behind presigned URLs to an fsspec destination.

    Parts of ``settings.part_size_bytes`` are fetched in parallel with ranged GETs pinned to
    the artifact's ETag (``If-Match``). Broken, stalled or short responses are retried from
    the last byte received, expired URLs are replaced by calling ``get_urls``, and a
    replaced artifact restarts the download on the new version (``max_version_restarts``).
    Before anything is published, the size must equal the HEAD ``Content-Length`` and the
    API's ``size_bytes``, and the Parquet magic bytes and footer must check out.

    A local destination is written to ``<path>.sutro-partial`` with a state file beside it,
    so a killed download resumes with the bytes it had written. Other destinations receive
    the bytes in order. For ``s3://`` that is a multipart upload with equal parts, which is
    completed only after the checks pass and aborted on any failure.

    Args:
        get_urls: Calls results-url again; used for fresh URLs when they expire.
        destination: A :class:`Destination`, or a path or fsspec URL to resolve.
        urls: The first URLs, which saves one results-url call.
        head: The result of :func:`head_artifact` for ``urls``, which saves the HEAD.
        expected_etag: The version to download. A different ETag at the start raises
            :class:`ArtifactChangedError` before any byte is fetched.
        storage_options: fsspec options, used when ``destination`` is a string.
        settings: Part size, concurrency, timeouts, retries and checks.
        logger: Receives the start, progress, retry and end lines: a ``logging.Logger``,
            Dagster's ``context.log`` or anything with ``debug``/``info``/``warning``/``error``
            methods. Only the calling thread calls it.

    Returns:
        The published URI, the ETag and size of the version downloaded (the new version after
        a restart), the bytes fetched in this call, the time taken and the bytes resumed from
        an earlier partial download.

    Raises:
        InvalidInputError: If an argument is invalid.
        ArtifactChangedError: If the ETag differs from ``expected_etag`` at the start, or the
            artifact was replaced more often than ``max_version_restarts`` allows.
        DownloadError: If the size or the Parquet check fails; nothing is published.
        StorageError: If storage rejects a request or the retries are used up.
        DestinationError: If the destination cannot be written.

    Examples:
        >>> result = download_artifact(  # doctest: +SKIP
        ...     lambda: client.get_results_download_url("job-5f0c"),
        ...     "s3://bucket/sutro/",
        ...     storage_options={"endpoint_url": "https://<account>.r2.cloudflarestorage.com"},
        ... )
        >>> result.uri  # doctest: +SKIP
        's3://bucket/sutro/sutro-results~job-5f0c~inputs=0~logprobs=0.parquet'
    """
    if not callable(get_urls):
        raise InvalidInputError(
            f"get_urls must be a callable that returns fresh ResultsDownloadUrl, got "
            f"{type(get_urls).__name__}."
        )
    if not isinstance(settings, TransferSettings):
        raise InvalidInputError(
            f"settings must be a TransferSettings, got {type(settings).__name__}."
        )
    relay = LogRelay(logger)
    if not isinstance(destination, Destination):
        destination = resolve_destination(destination, storage_options=storage_options)
    install_log_redaction()
    if urls is None:
        urls = get_urls()

    download = _ArtifactDownload(
        get_urls=get_urls, urls=urls, destination=destination, settings=settings, relay=relay
    )
    try:
        return download.run(head=head, expected_etag=expected_etag)
    finally:
        download.close()
        relay.drain()


class _TargetSink:
    """Feeds a single stream into a streamed destination. A reset reopens it empty."""

    def __init__(self, target: StreamTarget) -> None:
        self._target = target
        self.received = 0

    def write(self, data: bytes) -> None:
        self._target.write(data)
        self.received += len(data)

    def reset(self) -> None:
        self._target.restart()
        self.received = 0


class _ArtifactDownload:
    """The state of one :func:`download_artifact` call."""

    def __init__(
        self,
        *,
        get_urls: Callable[[], ResultsDownloadUrl],
        urls: ResultsDownloadUrl,
        destination: Destination,
        settings: TransferSettings,
        relay: LogRelay,
    ) -> None:
        self._destination = destination
        self._settings = settings
        self._relay = relay
        self._label = urls.artifact.key
        self._started = time.monotonic()
        self._cancel = threading.Event()
        self._storage = StorageClient(settings)
        self._urls = UrlSource(
            get_urls,
            urls,
            max_refreshes=settings.max_url_refreshes,
            margin_seconds=settings.refresh_margin_seconds,
            relay=relay,
        )
        self._progress = Progress(
            label=self._label,
            total_bytes=urls.artifact.size_bytes,
            done_bytes=0,
            interval_seconds=settings.progress_interval_seconds,
            relay=relay,
        )
        self._fetcher = Fetcher(
            storage=self._storage,
            urls=self._urls,
            label=self._label,
            settings=settings,
            cancel=self._cancel,
            progress=self._progress,
            relay=relay,
        )

    def close(self) -> None:
        self._storage.close()

    def run(self, *, head: ArtifactHead | None, expected_etag: str | None) -> DownloadResult:
        restarts = 0
        if head is None:
            head = self._fetcher.head()
        if expected_etag is not None and head.etag != expected_etag:
            raise ArtifactChangedError(
                f"The artifact {self._label} has ETag {head.etag}, not the expected ETag "
                f"{expected_etag}, so nothing was downloaded. Check the artifact's ETag again "
                "and download that version.",
                expected_etag=expected_etag,
                actual_etag=head.etag,
            )
        while True:
            self._check_sizes(head)
            replaced: PreconditionFailedError | None = None
            try:
                return self._download_version(head)
            except PreconditionFailedError as error:
                replaced = error
            head = self._head_of_replacement(head, replaced, restarts)
            restarts += 1

    def _check_sizes(self, head: ArtifactHead) -> None:
        api_size = self._urls.urls.artifact.size_bytes
        if head.content_length != api_size:
            raise DownloadError(
                f"Storage reports {head.content_length} bytes for {self._label} but the "
                f"results URL reported {api_size} bytes, so nothing was downloaded. Request "
                "the results again."
            )

    def _head_of_replacement(
        self, head: ArtifactHead, error: PreconditionFailedError, restarts: int
    ) -> ArtifactHead:
        """Find the new version after a 412, or raise when no restart is left."""
        self._urls.fetch_fresh()
        new_head = self._fetcher.head()
        if new_head.etag == head.etag:
            raise StorageError(
                f"{error} Yet HEAD still returns ETag {head.etag}, so storage handles "
                "conditional requests inconsistently and the download stopped.",
                status_code=error.status_code,
                code=error.code,
            )
        maximum = self._settings.max_version_restarts
        if restarts >= maximum:
            raise ArtifactChangedError(
                f"The artifact {self._label} was replaced during the download: its ETag "
                f"changed from {head.etag} to {new_head.etag}, after {restarts} restart(s) "
                f"(max_version_restarts={maximum}). Nothing was published; run the download "
                "again.",
                expected_etag=head.etag,
                actual_etag=new_head.etag,
            )
        self._relay.warning(
            f"The artifact {self._label} was replaced during the download (ETag {head.etag} "
            f"changed to {new_head.etag}); starting over on the new version (restart "
            f"{restarts + 1} of {maximum})."
        )
        return new_head

    def _download_version(self, head: ArtifactHead) -> DownloadResult:
        self._fetcher.pin(head.etag, head.content_length)
        plan = PartPlan(head.content_length, self._settings.part_size_bytes)
        fs, path, uri = self._destination.for_filename(self._urls.urls.artifact.filename)
        if self._destination.is_local:
            return self._download_local(plan, head, path, uri)
        target = open_stream_target(
            fs=fs,
            path=path,
            uri=uri,
            size=head.content_length,
            is_s3=self._destination.is_s3,
            relay=self._relay,
        )
        return self._download_stream(plan, head, target)

    def _download_local(
        self, plan: PartPlan, head: ArtifactHead, path: str, uri: str
    ) -> DownloadResult:
        artifact = self._urls.urls.artifact
        expected = ResumeState(
            key_sha256=artifact_key_sha256(artifact.bucket, artifact.key),
            etag=head.etag,
            size=head.content_length,
            part_size=plan.part_size,
            boot_id=current_boot_id(),
        )
        target = LocalTarget.open(path=path, uri=uri, expected=expected, relay=self._relay)
        finished = {index for index in target.finished_parts if index < plan.count}
        started = [index for index in target.state.partial_parts if index < plan.count]
        resumed_bytes = sum(target.resumed_bytes(plan[index]) for index in (*finished, *started))
        self._progress.restart(total_bytes=plan.size, done_bytes=resumed_bytes)
        self._log_start(plan, head, uri)
        if resumed_bytes:
            self._relay.info(
                f"Resuming {self._label}: {format_mib(resumed_bytes)} are already in "
                f"{target.partial_path} ({len(finished)} of {plan.count} parts complete, "
                f"{len(started)} partly written)."
            )

        try:
            fallback: RangeNotHonoredError | None = None
            try:
                self._run_parts(
                    (part for part in plan if part.index not in finished),
                    work=lambda part: self._fetcher.fetch_range(part, target.sink(part)),
                    on_done=lambda part, _: target.mark_finished(part.index),
                    salvage=True,
                )
            except RangeNotHonoredError as error:
                fallback = error
            if fallback is not None:
                self._warn_single_stream(fallback)
                target.begin_single_stream()
                resumed_bytes = 0
                self._progress.restart(total_bytes=plan.size, done_bytes=0)
                whole = Part(index=0, start=0, end=plan.size - 1)
                self._fetcher.fetch_whole(target.sink(whole), on_chunk=self._tick)
            target.publish(verify_parquet=self._settings.verify_parquet, label=self._label)
        except (DownloadError, PreconditionFailedError):
            # The bytes are wrong or of an old version, so a resume must not reuse them.
            target.abandon(keep_partial=False)
            raise
        except BaseException:
            target.abandon(keep_partial=True)
            raise
        return self._finish(uri, head, resumed_bytes)

    def _download_stream(
        self, plan: PartPlan, head: ArtifactHead, target: StreamTarget
    ) -> DownloadResult:
        self._progress.restart(total_bytes=plan.size, done_bytes=0)
        self._log_start(plan, head, target.uri)
        writer = OrderedWriter(target.write, max_pending=self._settings.max_concurrency)

        def fetch_into_memory(part: Part) -> list[bytes]:
            sink = MemorySink()
            self._fetcher.fetch_range(part, sink)
            return sink.chunks

        try:
            fallback: RangeNotHonoredError | None = None
            try:
                self._run_parts(
                    iter(plan),
                    work=fetch_into_memory,
                    on_done=lambda part, chunks: writer.put(part.index, chunks),
                    can_submit=lambda part: writer.can_accept(part.index),
                )
            except RangeNotHonoredError as error:
                fallback = error
            if fallback is not None:
                self._warn_single_stream(fallback)
                self._progress.restart(total_bytes=plan.size, done_bytes=0)
                target.restart()
                self._fetcher.fetch_whole(_TargetSink(target), on_chunk=self._tick)
            size = plan.size
            target.publish(
                verify_parquet=self._settings.verify_parquet,
                label=self._label,
                fetch_tail=lambda length: self._fetcher.fetch_bytes(size - length, size - 1),
            )
        except BaseException:
            target.abandon()
            raise
        return self._finish(target.uri, head, 0)

    def _run_parts(
        self,
        parts: Iterable[Part],
        *,
        work: Callable[[Part], _Result],
        on_done: Callable[[Part, _Result], object],
        can_submit: Callable[[Part], bool] | None = None,
        salvage: bool = False,
    ) -> None:
        """Fetch parts on a pool of ``max_concurrency`` threads until all are done.

        Parts are submitted in order while fewer than ``max_concurrency`` run and
        ``can_submit`` allows. ``on_done`` runs on this thread for each finished part. On the
        first failure the other parts are cancelled. With ``salvage``, the parts that still
        finish meanwhile are passed to ``on_done`` too, so a resume can skip them.
        """
        concurrency = self._settings.max_concurrency
        pending = iter(parts)
        next_part = next(pending, None)
        if next_part is None:
            return
        in_flight: dict[Future[_Result], Part] = {}
        failure: BaseException | None = None
        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sutro-part")
        try:
            while failure is None and (next_part is not None or in_flight):
                while (
                    next_part is not None
                    and len(in_flight) < concurrency
                    and (can_submit is None or can_submit(next_part))
                ):
                    in_flight[executor.submit(work, next_part)] = next_part
                    next_part = next(pending, None)
                done, _ = wait(in_flight, timeout=self._tick_seconds(), return_when=FIRST_COMPLETED)
                self._tick()
                failure = self._collect(
                    sorted(done, key=lambda f: in_flight[f].index), in_flight, on_done
                )
        finally:
            self._cancel.set()
            executor.shutdown(wait=True, cancel_futures=True)
            if salvage:
                self._salvage(in_flight, on_done)
            self._cancel.clear()
            self._relay.drain()
        if failure is not None:
            raise failure

    def _collect(
        self,
        done: Sequence[Future[_Result]],
        in_flight: dict[Future[_Result], Part],
        on_done: Callable[[Part, _Result], object],
    ) -> BaseException | None:
        errors: list[BaseException] = []
        for future in done:
            part = in_flight.pop(future)
            error = future.exception()
            if error is None:
                on_done(part, future.result())
            elif not isinstance(error, TransferCancelledError):
                errors.append(error)
        if not errors:
            return None
        # A replaced artifact or a server without Range support changes what happens next,
        # so those outrank other failures of the same moment.
        for kind in (PreconditionFailedError, RangeNotHonoredError):
            for error in errors:
                if isinstance(error, kind):
                    return error
        return errors[0]

    def _salvage(
        self, in_flight: dict[Future[_Result], Part], on_done: Callable[[Part, _Result], object]
    ) -> None:
        for future, part in sorted(in_flight.items(), key=lambda item: item[1].index):
            if future.cancelled() or future.exception() is not None:
                continue
            try:
                on_done(part, future.result())
            except Exception as error:
                self._relay.warning(
                    f"Recording part {part.index} of {self._label} for a resume failed: {error}"
                )
        in_flight.clear()

    def _tick_seconds(self) -> float:
        return min(TICK_SECONDS, self._settings.progress_interval_seconds)

    def _tick(self) -> None:
        self._relay.drain()
        self._progress.maybe_log()

    def _warn_single_stream(self, error: RangeNotHonoredError) -> None:
        self._relay.warning(
            f"{error} Downloading the whole object in one stream from byte 0 instead; a break "
            "in this mode restarts from byte 0."
        )

    def _log_start(self, plan: PartPlan, head: ArtifactHead, uri: str) -> None:
        connections = min(self._settings.max_concurrency, plan.count)
        self._relay.info(
            f"Downloading {self._label} ({format_mib(plan.size)}, ETag {head.etag}) to {uri}: "
            f"{plan.count} part(s) of up to {format_mib(plan.part_size)} over {connections} "
            "connection(s)."
        )

    def _finish(self, uri: str, head: ArtifactHead, resumed_bytes: int) -> DownloadResult:
        seconds = time.monotonic() - self._started
        transferred = self._progress.transferred_bytes
        rate = transferred / MIB / seconds if seconds > 0 else 0.0
        self._relay.info(
            f"Downloaded {self._label} to {uri}: {format_mib(head.content_length)} in "
            f"{seconds:.1f} s ({rate:.1f} MiB/s), {format_mib(transferred)} transferred, "
            f"{format_mib(resumed_bytes)} resumed from an earlier partial download."
        )
        return DownloadResult(
            uri=uri,
            etag=head.etag,
            size_bytes=head.content_length,
            bytes_transferred=transferred,
            seconds=seconds,
            artifact_key=self._label,
            resumed_bytes=resumed_bytes,
        )
