"""Exceptions raised by the Sutro API client and the transfer engine.

Every message here is built from values that are safe to show: status codes, job ids, object
keys, ETags and sizes. None of them ever contains a presigned URL or an API key.
"""

from __future__ import annotations


class SutroError(Exception):
    """Base class of every error raised by ``dagster_sutro``."""


class InvalidInputError(SutroError, ValueError):
    """An argument was rejected before any request was sent."""


class SutroApiError(SutroError):
    """An error status, or an unusable body, in a response from the Sutro API.

    Attributes:
        status_code: The HTTP status code, or ``None`` when no response arrived.
        detail: The ``detail`` message of the response body, or a short description of it.
        request_id: The request id the server returned (``x-request-id`` or ``cf-ray``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id


class SutroAuthenticationError(SutroApiError):
    """The Sutro API rejected the API key (401 or 403)."""


class SutroJobNotReadyError(SutroApiError):
    """The job's results cannot be fetched because the job has not succeeded (409).

    Attributes:
        job_id: The job whose results were requested.
        job_status: The job's state as reported by ``job-status``, for example ``RUNNING``.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        job_status: str,
        status_code: int | None = 409,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, detail=detail, request_id=request_id)
        self.job_id = job_id
        self.job_status = job_status


class StorageError(SutroError):
    """A request to the presigned storage URL failed.

    Attributes:
        status_code: The HTTP status code, or ``None`` for a connection-level failure.
        code: The S3 error code from the XML body (for example ``AccessDenied``), if any.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class DownloadError(SutroError):
    """A download finished but its result failed an integrity check, so nothing was published."""


class ArtifactChangedError(DownloadError):
    """The artifact was replaced (its ETag changed) while it was being downloaded.

    Attributes:
        expected_etag: The ETag the download was pinned to.
        actual_etag: The ETag storage reported afterwards, when known.
    """

    def __init__(self, message: str, *, expected_etag: str | None, actual_etag: str | None) -> None:
        super().__init__(message)
        self.expected_etag = expected_etag
        self.actual_etag = actual_etag


class DestinationError(SutroError):
    """The destination could not be resolved, written or published."""
