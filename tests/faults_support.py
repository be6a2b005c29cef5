"""Helpers shared by the fault-injection tests: a counting results-url caller and request views."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import fsspec
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from dagster_sutro.client import SutroClient
from dagster_sutro.models import ResultsDownloadUrl
from dagster_sutro.testing import RecordedRequest, SutroEmulator
from dagster_sutro.transfer import TransferSettings

MIB = 1024 * 1024

# Real backoff logic with delays short enough for tests.
FAST_BACKOFF = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}


def fast_settings(**overrides: object) -> TransferSettings:
    """Return transfer settings with 1 MiB parts, two connections and short backoff."""
    values: dict[str, object] = {
        "part_size_bytes": MIB,
        "max_concurrency": 2,
        "read_timeout_seconds": 5.0,
        "progress_interval_seconds": 0.2,
        **FAST_BACKOFF,
    }
    values.update(overrides)
    return TransferSettings(**values)  # type: ignore[arg-type]


def sha256_of(data: bytes | Path) -> str:
    """Return the SHA-256 hex digest of bytes or of a file's content."""
    if isinstance(data, Path):
        data = data.read_bytes()
    return hashlib.sha256(data).hexdigest()


def signature_of(url: str) -> str:
    """Return the ``X-Amz-Signature`` value of a presigned URL."""
    return dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]


class ResultsUrls:
    """Calls results-url through the real client, counting calls and keeping every URL issued.

    Args:
        emulator: The running emulator.
        job_id: The job whose artifact is downloaded.
        after_call: Runs after each call with the call number (from 1) and the URLs, and
            returns the URLs to hand to the engine, for example with a broken signature.
    """

    def __init__(
        self,
        emulator: SutroEmulator,
        job_id: str,
        *,
        after_call: Callable[[int, ResultsDownloadUrl], ResultsDownloadUrl] | None = None,
    ) -> None:
        self.emulator = emulator
        self.job_id = job_id
        self.client = SutroClient(emulator.api_url, emulator.api_key, max_retries=0)
        self.after_call = after_call
        self.issued: list[ResultsDownloadUrl] = []

    @property
    def calls(self) -> int:
        """The number of results-url calls made so far."""
        return len(self.issued)

    def __call__(self) -> ResultsDownloadUrl:
        urls = self.client.get_results_download_url(self.job_id)
        self.issued.append(urls)
        if self.after_call is not None:
            urls = self.after_call(len(self.issued), urls)
        return urls

    @property
    def source(self) -> bytes:
        """The bytes of the artifact as the emulator serves it now."""
        return self.emulator.artifact_path(self.job_id).read_bytes()

    @property
    def filename(self) -> str:
        """The artifact's file name, as results-url reports it."""
        return self.emulator.artifact_key(self.job_id).rsplit("/", 1)[1]

    def get_signatures(self) -> set[str]:
        """The signatures of every GET URL issued."""
        return {signature_of(urls.get_url) for urls in self.issued}

    def head_signatures(self) -> set[str]:
        """The signatures of every HEAD URL issued."""
        return {signature_of(urls.head_url) for urls in self.issued}


def with_broken_get_signature(urls: ResultsDownloadUrl) -> ResultsDownloadUrl:
    """Return the URLs with the last character of the GET signature changed."""
    signature = signature_of(urls.get_url)
    broken = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    return dataclasses.replace(urls, get_url=urls.get_url.replace(signature, broken))


def storage_gets(emulator: SutroEmulator) -> list[RecordedRequest]:
    """The GET requests that reached the storage server, in arrival order."""
    return [request for request in emulator.storage_requests if request.method == "GET"]


def range_start(request: RecordedRequest) -> int | None:
    """The first byte of a request's ``Range`` header, or ``None`` without one."""
    value = request.headers.get("Range")
    if value is None:
        return None
    return int(value.removeprefix("bytes=").split("-", 1)[0])


def part_count(size: int, part_size: int) -> int:
    """The number of ranged parts of an artifact of ``size`` bytes."""
    return -(-size // part_size)


def write_earlier_file(path: Path, content: bytes = b"earlier results, kept on failure\n") -> bytes:
    """Create the file a failed download must leave as it is, and return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


# fsspec filesystems whose writers fail, for destination faults that no local filesystem shows.


class ReadOnlyMemoryFileSystem(MemoryFileSystem):
    """A memory filesystem that rejects every write, like a bucket without write permission."""

    protocol = "sutroreadonly"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode or "a" in mode or "x" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return super()._open(path, mode, *args, **kwargs)


class FullDiskMemoryFile(MemoryFile):
    """A memory file that runs out of space after ``FullDiskMemoryFileSystem.capacity`` bytes."""

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > FullDiskMemoryFileSystem.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


class FullDiskMemoryFileSystem(MemoryFileSystem):
    """A memory filesystem with little room, for a destination that fills while it is written."""

    protocol = "sutrofull"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    capacity = 2 * MIB

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if mode == "wb":
            path = self._strip_protocol(path)
            file = FullDiskMemoryFile(self, path, kwargs.get("data"))
            file.commit()
            return file
        return super()._open(path, mode, *args, **kwargs)


def register_filesystem(filesystem_class: type[MemoryFileSystem]) -> fsspec.AbstractFileSystem:
    """Register a memory filesystem class under its protocol and return an instance."""
    protocol = str(filesystem_class.protocol)
    fsspec.register_implementation(protocol, filesystem_class, clobber=True)
    return fsspec.filesystem(protocol)


def bytes_matching_per_part(partial: bytes, source: bytes, part_size: int) -> int:
    """Count, part by part, the leading bytes of a partial file that equal the source."""
    total = 0
    step = 64 * 1024
    for start in range(0, len(source), part_size):
        end = min(start + part_size, len(source))
        offset = start
        while (
            offset < end
            and partial[offset : min(offset + step, end)]
            == source[offset : min(offset + step, end)]
        ):
            offset = min(offset + step, end)
        total += offset - start
    return total
