"""A bare HTTP client for presigned storage URLs: HEAD, ranged GET and body reads.

Each request carries only the headers that the transfer needs (``Range``, ``If-Match`` and
``Accept-Encoding: identity``, besides ``Host``) and the URL byte for byte as issued. S3
rejects a presigned request that also carries ``Authorization`` or an unsigned ``x-amz-*``
header, and re-quoting the URL breaks the SigV4 signature. Every failure is raised as a
:class:`StorageError` whose text contains no URL, and never chained to the original
exception, whose text does.
"""

from __future__ import annotations

import email.utils
import http.client
import http.cookiejar
import re
import threading
import time
from collections.abc import Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter

from dagster_sutro.errors import StorageError, SutroError
from dagster_sutro.models import ArtifactHead
from dagster_sutro.redaction import install_log_redaction, redact_text, register_presigned_url
from dagster_sutro.transfer.settings import TransferSettings

# S3 error bodies are small XML documents. Reading more than this from an error response
# only wastes time.
MAX_ERROR_BODY_BYTES = 64 * 1024

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_XML_CODE = re.compile(r"<Code>\s*([^<]{1,100}?)\s*</Code>")
_XML_MESSAGE = re.compile(r"<Message>\s*([^<]{0,500}?)\s*</Message>")
# A URL or request target with a query string, as it appears in urllib3's exception texts.
_QUERY_STRING = re.compile(r"\?[^\s'\"<>)]*")
_EXPIRED_MESSAGE = re.compile(r"\bexpired\b", re.IGNORECASE)


class RetryableStorageError(StorageError):
    """A failure that a new request may not hit: a broken connection, a stall, a 5xx.

    Attributes:
        retry_after: The delay that the server asked for in ``Retry-After``, in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.retry_after = retry_after


class ExpiredUrlError(StorageError):
    """Storage rejected the request because the presigned URL has expired."""


class PreconditionFailedError(StorageError):
    """Storage returned 412 for ``If-Match``, or another ETag, because the object was replaced."""


class RangeNotHonoredError(StorageError):
    """Storage returned 200 and the whole object for a ranged GET."""


class TransferCancelledError(SutroError):
    """The download was cancelled because another part failed."""


def safe_exception_text(error: BaseException) -> str:
    """Describe an exception from requests or urllib3 without any URL or query string.

    Args:
        error: The exception, whose text may contain the presigned URL.

    Returns:
        The exception's type name and its text, with query strings cut and credentials masked.
    """
    # urllib3's ProtocolError carries (message, cause); the message alone reads better.
    args = error.args
    text = args[0] if len(args) > 1 and isinstance(args[0], str) else str(error)
    text = _QUERY_STRING.sub("?…", text)
    return f"{type(error).__name__}: {redact_text(text)}"


class StorageClient:
    """Sends HEAD and GET requests to presigned URLs, one shared connection pool per download.

    The session ignores the environment (no ``.netrc``, no proxy variables), keeps no cookies,
    sends no authentication and no default headers, and never follows redirects.

    Args:
        settings: The timeouts, the chunk size and the concurrency, which sizes the pool.
    """

    def __init__(self, settings: TransferSettings) -> None:
        install_log_redaction()
        self._settings = settings
        self._timeout = (settings.connect_timeout_seconds, settings.read_timeout_seconds)
        session = requests.Session()
        session.trust_env = False
        session.headers.clear()
        session.auth = None
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(
            pool_connections=4,
            pool_maxsize=max(10, settings.max_concurrency + 2),
            max_retries=0,
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session

    def close(self) -> None:
        """Close every pooled connection."""
        self._session.close()

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def head(self, url: str, *, label: str, expires_at: float | None = None) -> ArtifactHead:
        """Send one HEAD request and read the ETag, the size and ``Last-Modified``.

        Args:
            url: The presigned URL signed for HEAD.
            label: What the request is for, shown in errors: the artifact key.
            expires_at: The URL's expiry time. A bodiless 403 after it counts as expired.

        Returns:
            The ETag exactly as sent, the content length and the modification time.

        Raises:
            RetryableStorageError: On a connection failure, a timeout, 408, 429 or 5xx.
            ExpiredUrlError: When the URL has expired.
            StorageError: On any other failure, or when ETag or Content-Length is missing.
        """
        response = self._send("HEAD", url, {}, label=label)
        try:
            if response.status_code != 200:
                raise _error_for_response(response, "HEAD", label, expires_at)
            return _parse_head(response, label)
        finally:
            response.close()

    def get(
        self,
        url: str,
        *,
        label: str,
        start: int,
        end: int,
        size: int,
        etag: str,
        send_range: bool = True,
        expires_at: float | None = None,
    ) -> BodyStream:
        """Send a GET for bytes ``start..end`` pinned to ``etag`` and check the response head.

        A 206 must carry exactly the requested ``Content-Range`` and length. A 200 is accepted
        only when the request covers the whole object from byte 0, because then the full body
        is exactly the bytes requested. Any other 200 raises :class:`RangeNotHonoredError`.

        Args:
            url: The presigned URL signed for GET.
            label: What the request is for, shown in errors: the artifact key.
            start: The first byte offset.
            end: The last byte offset, inclusive.
            size: The artifact size that ``Content-Range`` must report.
            etag: The version to pin with ``If-Match``.
            send_range: Send a ``Range`` header. Without it the whole object is requested.
            expires_at: The URL's expiry time, to classify an ambiguous 403.

        Returns:
            A stream of the body bytes, which the caller must close.

        Raises:
            RetryableStorageError: On a connection failure, a timeout, a wrong
                ``Content-Range``, 408, 429 or 5xx.
            ExpiredUrlError: When the URL has expired.
            PreconditionFailedError: On 412 or another ETag: the object was replaced.
            RangeNotHonoredError: On a 200 to a request for part of the object.
            StorageError: On any other failure.
        """
        headers = {"If-Match": etag}
        if send_range:
            headers["Range"] = f"bytes={start}-{end}"
        response = self._send("GET", url, headers, label=label)
        try:
            length = self._check_get_response(
                response,
                label=label,
                start=start,
                end=end,
                size=size,
                etag=etag,
                expires_at=expires_at,
            )
        except BaseException:
            response.close()
            raise
        return BodyStream(
            response,
            length=length,
            chunk_bytes=self._settings.read_chunk_bytes,
            read_timeout_seconds=self._settings.read_timeout_seconds,
        )

    def _check_get_response(
        self,
        response: requests.Response,
        *,
        label: str,
        start: int,
        end: int,
        size: int,
        etag: str,
        expires_at: float | None,
    ) -> int:
        status = response.status_code
        requested = f"bytes={start}-{end}"
        length = end - start + 1
        if status not in (200, 206):
            raise _error_for_response(response, "GET", label, expires_at)

        sent_etag = response.headers.get("ETag")
        if sent_etag is not None and _etag_value(sent_etag) != _etag_value(etag):
            raise PreconditionFailedError(
                f"Storage sent ETag {sent_etag} for {label} while the download is pinned to "
                f"{etag}: the artifact was replaced.",
                status_code=status,
                code="ETagMismatch",
            )

        if status == 200:
            if start != 0 or end != size - 1:
                raise RangeNotHonoredError(
                    f"Storage returned 200 and the whole object for the ranged GET {requested} of "
                    f"{label}, so it does not support Range requests.",
                    status_code=200,
                )
            _check_content_length(response, size, label, requested)
            return size

        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.match(content_range)
        expected_range = f"bytes {start}-{end}/{size}"
        received_range = None if match is None else (int(match[1]), int(match[2]), match[3])
        if received_range != (start, end, str(size)):
            raise RetryableStorageError(
                f"Storage returned Content-Range {content_range!r} instead of "
                f"{expected_range!r} for {requested} of {label}, so the response was discarded.",
                status_code=206,
                code="InvalidContentRange",
            )
        _check_content_length(response, length, label, requested)
        return length

    def _send(
        self, method: str, url: str, headers: dict[str, str], *, label: str
    ) -> requests.Response:
        register_presigned_url(url)
        all_headers = {
            "Accept-Encoding": "identity",
            # urllib3 adds "User-Agent: python-urllib3/..." unless the header is set to SKIP_HEADER.
            "User-Agent": urllib3.util.SKIP_HEADER,
            **headers,
        }
        failure: StorageError | None = None
        try:
            prepared = requests.Request(method, url, headers=all_headers).prepare()
            # requests re-quotes the URL while preparing it; the signature covers the
            # original bytes, so the URL is put back exactly as issued.
            prepared.url = url
            response = self._session.send(
                prepared,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
                verify=True,
                proxies={},
            )
        except requests.exceptions.SSLError as error:
            text = safe_exception_text(error)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                failure = StorageError(
                    f"The TLS certificate of the storage host was rejected for {method} of "
                    f"{label}: {text}"
                )
            else:
                failure = RetryableStorageError(f"{method} of {label} failed: {text}")
        except (requests.ConnectionError, requests.Timeout) as error:
            failure = RetryableStorageError(
                f"{method} of {label} failed: {safe_exception_text(error)}"
            )
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            failure = StorageError(f"{method} of {label} failed: {safe_exception_text(error)}")
        if failure is not None:
            raise failure
        return response


class BodyStream:
    """The body of a checked GET response, read in chunks without decoding.

    ``urllib3``'s ``read(n, decode_content=False)`` returns the bytes that ``http.client``
    read from the socket as they are, while its ``readinto`` copies them once more, so the
    chunks are the bytes objects that ``read`` returns.

    Attributes:
        length: The number of body bytes that the response must deliver.
    """

    def __init__(
        self,
        response: requests.Response,
        *,
        length: int,
        chunk_bytes: int,
        read_timeout_seconds: float,
    ) -> None:
        self._response = response
        self.length = length
        self._chunk_bytes = chunk_bytes
        self._read_timeout_seconds = read_timeout_seconds

    def chunks(self, cancel: threading.Event | None = None) -> Iterator[bytes]:
        """Yield the body in chunks until exactly :attr:`length` bytes have arrived.

        Args:
            cancel: When set, reading stops with :class:`TransferCancelledError`.

        Yields:
            Chunks of at most the configured chunk size.

        Raises:
            RetryableStorageError: When the connection breaks, stalls past the read timeout
                or closes before the whole body arrived.
            TransferCancelledError: When ``cancel`` is set.
        """
        raw = self._response.raw
        received = 0
        while received < self.length:
            if cancel is not None and cancel.is_set():
                raise TransferCancelledError("The download was cancelled.")
            failure: StorageError | None = None
            data = b""
            try:
                data = raw.read(
                    min(self._chunk_bytes, self.length - received), decode_content=False
                )
            except urllib3.exceptions.ReadTimeoutError:
                failure = RetryableStorageError(
                    f"the body stalled: no data for {self._read_timeout_seconds:g} s after "
                    f"{received} of {self.length} bytes",
                    code="ReadTimeout",
                )
            except (
                urllib3.exceptions.HTTPError,
                http.client.HTTPException,
                requests.RequestException,
                OSError,
            ) as error:
                failure = RetryableStorageError(
                    f"the connection broke after {received} of {self.length} bytes: "
                    f"{safe_exception_text(error)}",
                    code="ConnectionBroken",
                )
            if failure is not None:
                raise failure
            if not data:
                raise RetryableStorageError(
                    f"the body ended after {received} of {self.length} bytes",
                    code="ShortBody",
                )
            received += len(data)
            yield data

    def close(self) -> None:
        """Release the connection: back to the pool after a full body, closed otherwise."""
        self._response.close()

    def __enter__(self) -> BodyStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _etag_value(etag: str) -> str:
    """Strip the quotes and a weak-validator prefix, which proxies may add or drop."""
    return etag.strip().removeprefix("W/").strip('"')


def _check_content_length(
    response: requests.Response, expected: int, label: str, requested: str
) -> None:
    value = response.headers.get("Content-Length")
    if value is None:
        return
    if not value.strip().isdigit() or int(value) != expected:
        raise RetryableStorageError(
            f"Storage returned Content-Length {value!r} instead of {expected} for {requested} "
            f"of {label}, so the response was discarded.",
            status_code=response.status_code,
            code="InvalidContentLength",
        )


def _parse_head(response: requests.Response, label: str) -> ArtifactHead:
    etag = response.headers.get("ETag")
    if not etag:
        raise StorageError(
            f"Storage returned no ETag for HEAD of {label}, so the download cannot be "
            "pinned to one version.",
            status_code=response.status_code,
        )
    length = response.headers.get("Content-Length", "")
    if not length.strip().isdigit():
        raise StorageError(
            f"Storage returned Content-Length {length!r} for HEAD of {label}, not a size.",
            status_code=response.status_code,
        )
    last_modified = None
    if response.headers.get("Last-Modified"):
        try:
            last_modified = email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
        except (TypeError, ValueError):
            last_modified = None
    return ArtifactHead(etag=etag, content_length=int(length), last_modified=last_modified)


def _read_error_body(response: requests.Response) -> str:
    if response.request is not None and response.request.method == "HEAD":
        return ""
    failure = False
    body = b""
    try:
        body = response.raw.read(MAX_ERROR_BODY_BYTES, decode_content=False) or b""
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
        failure = True
    if failure:
        return ""
    return body.decode("utf-8", errors="replace")


def _error_for_response(
    response: requests.Response, method: str, label: str, expires_at: float | None
) -> StorageError:
    """Map an error status to the exception class that selects the engine's next step."""
    status = response.status_code
    body = _read_error_body(response)
    code_match = _XML_CODE.search(body)
    message_match = _XML_MESSAGE.search(body)
    code = code_match[1] if code_match else response.headers.get("x-amz-error-code")
    message = message_match[1] if message_match else response.headers.get("x-amz-error-message")
    message = redact_text(message or "")
    described = f"HTTP {status}" + (f" ({code})" if code else "")
    what = f"Storage rejected {method} of {label} with {described}" + (
        f": {message}" if message else ""
    )

    if status == 412:
        return PreconditionFailedError(
            f"{what}. The artifact was replaced while it was being downloaded.",
            status_code=status,
            code=code or "PreconditionFailed",
        )
    if _is_expired(status, code, message, expires_at):
        return ExpiredUrlError(
            f"{what}. The presigned URL has expired.", status_code=status, code=code
        )
    if status in (408, 429) or status >= 500:
        return RetryableStorageError(
            f"{what}.", status_code=status, code=code, retry_after=_retry_after(response)
        )
    if 300 <= status < 400:
        return StorageError(
            f"{what}. Redirects are not followed for presigned URLs; check that the storage "
            "endpoint in the URL is the bucket's own endpoint.",
            status_code=status,
            code=code,
        )
    if status == 404:
        return StorageError(
            f"{what}. The artifact does not exist in storage any more; request the results "
            "URL again so that Sutro builds it.",
            status_code=status,
            code=code,
        )
    if status == 403:
        return StorageError(
            f"{what}. Storage rejected the presigned URL. Check that nothing between this "
            "machine and storage (a proxy) adds headers or rewrites the URL, then run again.",
            status_code=status,
            code=code,
        )
    return StorageError(f"{what}.", status_code=status, code=code)


def _is_expired(status: int, code: str | None, message: str, expires_at: float | None) -> bool:
    if status not in (400, 403):
        return False
    if code == "ExpiredRequest" or code == "ExpiredToken":
        return True
    if code == "AccessDenied" and _EXPIRED_MESSAGE.search(message):
        return True
    # A HEAD error has no body, so a 403 after the URL's own expiry time is taken as expiry.
    past_expiry = expires_at is not None and time.time() >= expires_at
    return status == 403 and code in (None, "AccessDenied") and past_expiry


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
