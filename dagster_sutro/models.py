"""Typed, immutable records of what the Sutro API and storage return."""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from dagster_sutro.redaction import describe_url


@dataclass(frozen=True)
class ArtifactInfo:
    """The results artifact a ``results-url`` response points at.

    Attributes:
        bucket: The storage bucket.
        key: The object key inside the bucket.
        filename: The artifact's file name, the last part of ``key``.
        size_bytes: The artifact's size as reported by the API.
    """

    bucket: str
    key: str
    filename: str
    size_bytes: int


@dataclass(frozen=True)
class ResultsDownloadUrl:
    """A ``GET /v1/jobs/{job_id}/results-url`` response.

    The two URLs are credentials, so ``repr()`` and ``str()`` show only their scheme, host and
    path. Read ``get_url`` and ``head_url`` directly to use them.

    Attributes:
        job_id: The job whose results the artifact holds.
        format: The artifact format, always ``parquet``.
        include_inputs: Whether the artifact has the job's input columns.
        include_cumulative_logprobs: Whether the artifact has a ``cumulative_logprobs`` column.
        expires_in_seconds: The lifetime of the URLs the server granted.
        artifact: The bucket, key, file name and size of the artifact.
        get_url: The presigned URL signed for GET.
        head_url: The presigned URL signed for HEAD.
        received_at: The Unix time when the response arrived.
    """

    job_id: str
    format: str
    include_inputs: bool
    include_cumulative_logprobs: bool
    expires_in_seconds: int
    artifact: ArtifactInfo
    get_url: str = field(repr=False)
    head_url: str = field(repr=False)
    received_at: float = field(default_factory=time.time)

    @property
    def expires_at(self) -> float:
        """The Unix time when the URLs expire, from the signature's own date and lifetime."""
        return min(
            _presigned_expiry(self.get_url, self.received_at + self.expires_in_seconds),
            _presigned_expiry(self.head_url, self.received_at + self.expires_in_seconds),
        )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{item.name}={getattr(self, item.name)!r}"
            for item in dataclasses.fields(self)
            if item.repr
        )
        return (
            f"ResultsDownloadUrl({fields}, get_url={describe_url(self.get_url)!r}, "
            f"head_url={describe_url(self.head_url)!r})"
        )

    __str__ = __repr__


def _presigned_expiry(url: str, fallback: float) -> float:
    """Read ``X-Amz-Date`` plus ``X-Amz-Expires`` from a SigV4 URL, or return ``fallback``."""
    query = {name.lower(): value for name, value in parse_qsl(urlsplit(url).query)}
    try:
        signed_at = datetime.datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ")
        lifetime_seconds = int(query["x-amz-expires"])
    except (KeyError, ValueError):
        return fallback
    return signed_at.replace(tzinfo=datetime.timezone.utc).timestamp() + lifetime_seconds


@dataclass(frozen=True)
class ArtifactHead:
    """The headers of a HEAD response for the artifact.

    Attributes:
        etag: The ETag exactly as storage returned it, quotes included. It is an opaque version
            token, not a checksum.
        content_length: The artifact's size in bytes.
        last_modified: The ``Last-Modified`` time, when storage sent one.
    """

    etag: str
    content_length: int
    last_modified: datetime.datetime | None


@dataclass(frozen=True)
class DownloadResult:
    """The outcome of a finished download.

    Attributes:
        uri: The fsspec URI of the published file.
        etag: The ETag of the version that was downloaded.
        size_bytes: The size of the published file.
        bytes_transferred: The bytes fetched in this call; less than ``size_bytes`` after a
            resume, and more when parts had to be fetched again.
        seconds: The wall-clock time of the download, publish included.
        artifact_key: The object key of the artifact in storage.
        resumed_bytes: The bytes reused from an earlier partial download.
    """

    uri: str
    etag: str
    size_bytes: int
    bytes_transferred: int
    seconds: float
    artifact_key: str = ""
    resumed_bytes: int = 0

    @property
    def mib_per_second(self) -> float:
        """The throughput of the bytes fetched in this call, in MiB/s."""
        if self.seconds <= 0:
            return 0.0
        return self.bytes_transferred / (1024 * 1024) / self.seconds
