"""Destinations that are not local files: bytes are streamed in order into an fsspec writer.

Nothing is published before every byte arrived and the checks passed. For ``s3://`` the
object appears only when the multipart upload completes on ``close()``, and any failure
aborts the upload. Other filesystems write to a temporary path beside the destination, and
``fs.mv`` moves it into place at the end.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import fsspec

from dagster_sutro.errors import DestinationError, DownloadError
from dagster_sutro.redaction import redact_text
from dagster_sutro.transfer.ordered import TailBuffer
from dagster_sutro.transfer.parquet_check import check_parquet
from dagster_sutro.transfer.plan import s3_part_size_for
from dagster_sutro.transfer.progress import LogRelay

# The last bytes kept for the Parquet footer check. Footers of result files are far smaller;
# a larger footer is read from the temporary file, or fetched from storage for S3.
TAIL_BUFFER_BYTES = 8 * 1024 * 1024
TEMPORARY_SUFFIX = ".sutro-partial-"


class StreamTarget:
    """The writer of one download to a non-local fsspec destination, fed in byte order.

    Args:
        fs: The destination filesystem.
        path: The destination path on ``fs``.
        uri: The destination URI, for messages.
        size: The artifact size.
        relay: Where cleanup problems are logged.
    """

    def __init__(
        self, *, fs: fsspec.AbstractFileSystem, path: str, uri: str, size: int, relay: LogRelay
    ) -> None:
        self.fs = fs
        self.path = path
        self.uri = uri
        self.size = size
        self._relay = relay
        self._file: Any = None
        self._head = b""
        self.tail = TailBuffer(TAIL_BUFFER_BYTES)

    @property
    def bytes_written(self) -> int:
        """The bytes written since the writer was opened."""
        return self.tail.total

    def open(self) -> None:
        """Open the writer."""
        self._file = self._wrap(self._open_file, "Opening")
        self._head = b""
        self.tail.clear()

    def write(self, chunk: bytes) -> None:
        """Write the next chunk, in byte order.

        Raises:
            DestinationError: If the filesystem rejects the write.
        """
        if len(self._head) < 4:
            self._head += chunk[: 4 - len(self._head)]
        self._wrap(lambda: self._file.write(chunk), "Writing")
        self.tail.add(chunk)

    def restart(self) -> None:
        """Throw away what was written and open an empty writer, for a restart from byte 0."""
        self.abandon()
        self.open()

    def publish(
        self, *, verify_parquet: bool, label: str, fetch_tail: Callable[[int], bytes]
    ) -> None:
        """Check the bytes written and make the file appear at the destination.

        Args:
            verify_parquet: Check the Parquet magic bytes and footer first.
            label: The artifact key, for messages.
            fetch_tail: Returns the artifact's last ``n`` bytes when the footer is larger
                than the tail buffer and cannot be read back from the writer.

        Raises:
            DownloadError: If the size or the Parquet check fails.
            DestinationError: If completing the write fails.
        """
        raise NotImplementedError

    def abandon(self) -> None:
        """Make sure nothing is published and release the writer."""
        raise NotImplementedError

    def _open_file(self) -> Any:
        raise NotImplementedError

    def _check_size(self, label: str) -> None:
        if self.bytes_written != self.size:
            raise DownloadError(
                f"The download of {label} delivered {self.bytes_written} bytes but the artifact "
                f"is {self.size} bytes, so it was not published."
            )

    def _check_parquet(self, label: str, read_beyond_tail: Callable[[int], bytes]) -> None:
        def read_tail(length: int) -> bytes:
            if length <= self.tail.available:
                return self.tail.tail(length)
            return read_beyond_tail(length)

        check_parquet(size=self.size, head=self._head, read_tail=read_tail, label=label)

    def _wrap(self, action: Callable[[], Any], verb: str) -> Any:
        failure: DestinationError | None = None
        try:
            return action()
        except DestinationError:
            raise
        except Exception as error:
            failure = DestinationError(
                f"{verb} {self.uri} failed: {type(error).__name__}: {redact_text(str(error))}"
            )
        raise failure


class S3Target(StreamTarget):
    """An S3 multipart upload with equal parts, completed only after the checks pass."""

    def _open_file(self) -> Any:
        fs = self.fs
        if not getattr(fs, "fixed_upload_size", False):
            # Unequal parts are rejected by R2, so a filesystem created without the option
            # is replaced by one with it.
            fs = type(fs)(**{**fs.storage_options, "fixed_upload_size": True})
            self.fs = fs
        # NOTE: s3fs 2026.9 and aiohttp copy each block twice on upload, so the writer holds
        # about three blocks (48 MiB at 16 MiB parts) on top of the reorder buffer.
        return fs.open(self.path, "wb", block_size=s3_part_size_for(self.size))

    def publish(
        self, *, verify_parquet: bool, label: str, fetch_tail: Callable[[int], bytes]
    ) -> None:
        """Check the bytes, then complete the upload so that the object appears."""
        self._check_size(label)
        if verify_parquet:
            self._check_parquet(label, fetch_tail)
        self._wrap(lambda: self._file.close(), "Completing the upload of")
        self._file = None

    def abandon(self) -> None:
        """Abort the multipart upload, so that no object appears."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.discard()
        except Exception as error:
            self._relay.warning(
                f"Aborting the unfinished upload of {self.uri} failed ({type(error).__name__}); "
                "a lifecycle rule for incomplete multipart uploads removes its parts later."
            )
        # A discarded s3fs file must not be closed: close() would try to commit it.
        with contextlib.suppress(AttributeError):
            file.closed = True


class TemporaryPathTarget(StreamTarget):
    """A file written under a temporary name beside the destination and moved into place."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temporary_path = f"{self.path}{TEMPORARY_SUFFIX}{uuid.uuid4().hex[:12]}"

    def _open_file(self) -> Any:
        parent = posixpath.dirname(self.temporary_path)
        if parent:
            with contextlib.suppress(Exception):
                self.fs.makedirs(parent, exist_ok=True)
        return self.fs.open(self.temporary_path, "wb")

    def publish(
        self, *, verify_parquet: bool, label: str, fetch_tail: Callable[[int], bytes]
    ) -> None:
        """Close the temporary file, check it, and move it onto the destination."""
        self._check_size(label)
        self._wrap(lambda: self._file.close(), "Closing the temporary file of")
        self._file = None
        if verify_parquet:
            self._check_parquet(label, self._read_temporary_tail)
        self._wrap(lambda: self.fs.mv(self.temporary_path, self.path), "Moving into place")

    def abandon(self) -> None:
        """Close and remove the temporary file."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        try:
            if self.fs.exists(self.temporary_path):
                self.fs.rm(self.temporary_path)
        except Exception as error:
            self._relay.warning(
                f"Removing the temporary file {self.fs.unstrip_protocol(self.temporary_path)} "
                f"failed ({type(error).__name__}); remove it by hand."
            )

    def _read_temporary_tail(self, length: int) -> bytes:
        start = self.size - length
        data: bytes = self._wrap(
            lambda: self.fs.cat_file(self.temporary_path, start=start, end=self.size),
            "Reading back",
        )
        return data


def open_stream_target(
    *,
    fs: fsspec.AbstractFileSystem,
    path: str,
    uri: str,
    size: int,
    is_s3: bool,
    relay: LogRelay,
) -> StreamTarget:
    """Create and open the writer that fits the destination's filesystem."""
    target_class = S3Target if is_s3 else TemporaryPathTarget
    target = target_class(fs=fs, path=path, uri=uri, size=size, relay=relay)
    target.open()
    return target
