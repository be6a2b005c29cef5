"""The emulated object store: S3-style, path-style URLs, SigV4 presigned GET and HEAD.

Every request is verified as S3 and R2 verify presigned requests. A request carrying an
``Authorization`` header or the Sutro API key gets 400, and an unsigned ``x-amz-*`` header
gets 403. A method, path, query or host that differs from the signed one gets 403
``SignatureDoesNotMatch``, and an expired URL gets 403 ``AccessDenied``. Objects are served
with ``Content-Length``, ``ETag``, ``Last-Modified`` and ``Accept-Ranges``, support single
byte ranges and the ``If-Match``, ``If-None-Match`` and ``If-Range`` conditions, and are
streamed with ``sendfile`` unless a fault or the bandwidth cap needs a write loop.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import sys
import time
from email.utils import formatdate
from typing import BinaryIO
from urllib.parse import unquote
from xml.sax.saxutils import escape

from dagster_sutro.testing.faults import BodyFaults
from dagster_sutro.testing.http_base import EmulatorRequestHandler, logger
from dagster_sutro.testing.sigv4 import SignatureError, VerifiedRequest
from dagster_sutro.testing.state import EmulatorState
from dagster_sutro.testing.store import BUCKET, ArtifactFlags, StoredObject

# Bodies are sent in sendfile calls of this size, so the record's byte count moves during
# long transfers.
SENDFILE_CHUNK_BYTES = 16 * 1024 * 1024
# Slices of the write loop used when a fault or the bandwidth cap shapes the body.
WRITE_SLICE_BYTES = 256 * 1024
# Maximum wait for the kernel to deliver queued bytes before a reset discards them.
RESET_DRAIN_TIMEOUT_SECONDS = 1.0

_STATUS_ERRORS = {
    400: ("InvalidRequest", "Invalid Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    408: (
        "RequestTimeout",
        "Your socket connection to the server was not read from or written "
        "to within the timeout period.",
    ),
    429: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class _Unsatisfiable(Exception):
    """The Range header cannot be satisfied for this object size."""


class StorageRequestHandler(EmulatorRequestHandler):
    """Request handler of the emulated object store."""

    server_name = "storage"

    def setup(self) -> None:
        super().setup()
        self._next_send_time = 0.0

    @property
    def state(self) -> EmulatorState:
        """The emulator state this server serves."""
        state: EmulatorState = self.server.state
        return state

    def _handle(self) -> None:
        record = self.begin_record()
        self.discard_request_body()
        self._request_id = secrets.token_hex(8).upper()
        bucket, key = _split_bucket_and_key(self.raw_path)
        located = self.state.store.parse_key(key) if bucket == BUCKET else None
        job_id = located[0] if located else None
        record.set_job_id(job_id)

        status_fault = self.state.faults.take_status(
            "storage", self.command, unquote(self.raw_path), job_id
        )
        if status_fault is not None:
            code, message = _STATUS_ERRORS.get(
                status_fault.status, ("ServiceUnavailable", "Service is unable to handle request.")
            )
            headers = {}
            if status_fault.retry_after is not None:
                headers["Retry-After"] = str(int(status_fault.retry_after))
            self._send_error(status_fault.status, code, message, headers=headers)
            return

        if not self._check_credentials() or self._verify_signature() is None:
            return
        if self.command not in ("GET", "HEAD"):
            self._send_error(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            )
            return
        if bucket != BUCKET:
            self._send_error(404, "NoSuchBucket", "The specified bucket does not exist.")
            return
        opened = self._open_object(located)
        if opened is None:
            self._send_error(404, "NoSuchKey", "The specified key does not exist.")
            return
        stored, file = opened
        with file:
            self._serve_object(stored, file)

    # Authentication

    def _check_credentials(self) -> bool:
        if "Authorization" in self.headers:
            self._send_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be "
                "specified",
                details={"ArgumentName": "Authorization"},
            )
            return False
        api_key = self.state.api_key
        carries_key = any(api_key in value for value in self.headers.values())
        if carries_key or api_key in self.path:
            self._send_error(
                400,
                "InvalidArgument",
                "The request carries the Sutro API key. Storage requests must be authorized "
                "by the presigned URL alone.",
            )
            return False
        return True

    def _verify_signature(self) -> VerifiedRequest | None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            return self.state.signer.verify(
                method=self.command,
                raw_path=self.raw_path,
                raw_query=self.raw_query,
                headers=headers,
                now=self.state.clock.now(),
            )
        except SignatureError as error:
            lifetime = None
            if error.expired:
                lifetime = self.state.expiry_style(
                    self.query_parameters().get("X-Amz-Signature", "")
                )
            if lifetime is not None and lifetime.style == "r2":
                self._send_error(lifetime.r2_status, "ExpiredRequest", "Request has expired")
            else:
                self._send_error(error.status, error.code, error.message, details=error.details)
            return None

    # Objects

    def _open_object(
        self, located: tuple[str, ArtifactFlags] | None
    ) -> tuple[StoredObject, BinaryIO] | None:
        """Open the current version of an object. A replacement may unlink it in between."""
        if located is None:
            return None
        for _ in range(3):
            stored = self.state.store.peek_object(*located)
            if stored is None:
                return None
            try:
                return stored, stored.path.open("rb")
            except FileNotFoundError:
                continue
        return None

    def _serve_object(self, stored: StoredObject, file: BinaryIO) -> None:
        last_modified = formatdate(stored.last_modified, usegmt=True)
        if_match = self.headers.get("If-Match")
        if if_match is not None and not _etag_matches(if_match, stored.etag):
            self._send_error(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                details={"Condition": "If-Match"},
            )
            return
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None and _etag_matches(if_none_match, stored.etag):
            self.send_response(304)
            self._send_common_headers()
            self.send_header("ETag", stored.etag)
            self.send_header("Last-Modified", last_modified)
            self.end_headers()
            return

        try:
            byte_range = self._requested_range(stored, last_modified)
        except _Unsatisfiable:
            self._send_error(
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
                headers={"Content-Range": f"bytes */{stored.size}"},
                details={
                    "RangeRequested": self.headers.get("Range", ""),
                    "ActualObjectSize": str(stored.size),
                },
            )
            return

        declared_range = byte_range
        if byte_range is not None:
            range_fault = self.state.faults.take_range_fault(self.command, stored.job_id)
            if range_fault == "ignore_range":
                byte_range = declared_range = None
            elif range_fault == "wrong_content_range":
                byte_range = declared_range = _shifted_range(byte_range, stored.size)

        if declared_range is None:
            start, length = 0, stored.size
            self.send_response(200)
        else:
            start, length = declared_range[0], declared_range[1] - declared_range[0] + 1
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {declared_range[0]}-{declared_range[1]}/{stored.size}"
            )
        self._send_common_headers()
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", stored.etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "GET" and length > 0:
            self._send_body(file, start, length, stored.job_id)

    def _requested_range(self, stored: StoredObject, last_modified: str) -> tuple[int, int] | None:
        range_header = self.headers.get("Range")
        if range_header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() not in (stored.etag, last_modified):
            return None
        return _parse_range(range_header, stored.size)

    # Bodies

    def _send_body(self, file: BinaryIO, start: int, length: int, job_id: str) -> None:
        faults = self.state.faults.take_body_faults(self.command, job_id)
        rate = self.state.storage_bytes_per_second
        if faults.trickle_bytes_per_second is not None:
            rate = min(rate or faults.trickle_bytes_per_second, faults.trickle_bytes_per_second)
        tracks_replacement = self.state.faults.bytes_until_replacement(job_id) is not None

        if not faults.any and rate is None and not tracks_replacement:
            self._sendfile(file, start, length)
        else:
            self._write_loop(file, start, length, job_id, faults, rate)

    def _sendfile(self, file: BinaryIO, start: int, length: int) -> None:
        sent = 0
        while sent < length:
            count = min(length - sent, SENDFILE_CHUNK_BYTES)
            # Counted in advance like send_body_bytes. On failure socket.sendfile leaves the
            # file position after the last byte it sent, which gives the true count.
            self.count_body_bytes(count)
            try:
                chunk_sent = self.connection.sendfile(file, start + sent, count)
            except BaseException:
                self.count_body_bytes(max(0, file.tell() - start - sent) - count)
                raise
            if chunk_sent < count:
                self.count_body_bytes(chunk_sent - count)
                self.close_connection = True
                return
            sent += chunk_sent

    def _write_loop(
        self,
        file: BinaryIO,
        start: int,
        length: int,
        job_id: str,
        faults: BodyFaults,
        rate: float | None,
    ) -> None:
        stop_after = _min_defined(faults.truncate_after, faults.reset_after)
        stall_after = faults.stall_after
        slice_limit = WRITE_SLICE_BYTES
        if rate is not None:
            slice_limit = max(1, min(WRITE_SLICE_BYTES, int(rate / 10)))
        sent = 0

        while sent < length:
            if stall_after is not None and sent >= stall_after:
                self._sleep(faults.stall_seconds)
                stall_after = None
            if stop_after is not None and sent >= stop_after:
                break

            size = min(length - sent, slice_limit)
            for boundary in (stop_after, stall_after):
                if boundary is not None and boundary > sent:
                    size = min(size, boundary - sent)
            budget = self.state.faults.bytes_until_replacement(job_id)
            if budget is not None and budget > 0:
                size = min(size, budget)

            file.seek(start + sent)
            data = file.read(size)
            if not data:
                break
            if rate is not None:
                self._pace(len(data), rate)
            self.send_body_bytes(data)
            sent += len(data)
            if self.state.faults.note_served(job_id, len(data)):
                self.state.store.replace_artifact(job_id)

        if faults.reset_after is not None and faults.reset_after <= sent < length:
            self._reset_connection()
        elif stop_after is not None:
            self.close_connection = True

    def _pace(self, count: int, rate: float) -> None:
        """Wait so that this connection's body rate stays at ``rate`` bytes per second."""
        now = time.monotonic()
        self._next_send_time = max(self._next_send_time, now)
        delay = self._next_send_time - now
        if delay > 0:
            self._sleep(delay)
        self._next_send_time += count / rate

    def _sleep(self, seconds: float) -> None:
        if self.server.stopping.wait(seconds):
            raise ConnectionAbortedError("the emulator is stopping")

    def _reset_connection(self) -> None:
        """Close the connection with SO_LINGER 0, so the peer gets a TCP reset."""
        _wait_for_send_queue(self.connection, RESET_DRAIN_TIMEOUT_SECONDS)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        # The socket closes for real once its file objects are closed too.
        with contextlib.suppress(OSError):
            self.rfile.close()
        self.connection.close()

    # Responses

    def _send_common_headers(self) -> None:
        self.send_header("x-amz-request-id", self._request_id)
        self.send_header("x-amz-id-2", self._request_id.lower())

    def _send_error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        # The path carries no credential, unlike the query string, so it may be logged.
        logger.debug(
            "Storage emulator returned %d %s for %s %s", status, code, self.command, self.raw_path
        )
        elements = [f"<Code>{escape(code)}</Code>", f"<Message>{escape(message)}</Message>"]
        for name, value in (details or {}).items():
            elements.append(f"<{name}>{escape(value)}</{name}>")
        elements.append(f"<RequestId>{self._request_id}</RequestId>")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(elements) + "</Error>"
        ).encode()
        all_headers = {
            "x-amz-request-id": self._request_id,
            "x-amz-id-2": self._request_id.lower(),
            **(headers or {}),
        }
        self.send_complete(
            status, body, "application/xml", all_headers, include_body=self.command != "HEAD"
        )


def _split_bucket_and_key(raw_path: str) -> tuple[str, str]:
    bucket, _, key = raw_path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def _etag_matches(header: str, etag: str) -> bool:
    bare_etag = etag.strip('"')
    for candidate in header.split(","):
        candidate = candidate.strip().removeprefix("W/")
        if candidate == "*" or candidate.strip('"') == bare_etag:
            return True
    return False


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single byte range into inclusive (first, last) offsets.

    Returns ``None`` for a header that is not a single, well-formed byte range, which is then
    ignored and the whole object is sent.

    Raises:
        _Unsatisfiable: If the range is well formed but lies outside the object.
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text.isdigit() or first_text == ""):
        return None
    if last_text and not last_text.isdigit():
        return None

    if first_text == "":
        if not last_text:
            return None
        suffix_length = int(last_text)
        if suffix_length == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - suffix_length), size - 1

    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise _Unsatisfiable
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def _shifted_range(byte_range: tuple[int, int], size: int) -> tuple[int, int]:
    """Return a range of the same length that differs from ``byte_range``."""
    first, last = byte_range
    length = last - first + 1
    if first > 0:
        shift = min(first, length)
        return first - shift, last - shift
    if last < size - 1:
        shift = min(size - 1 - last, length)
        return first + shift, last + shift
    return 0, max(0, size - 2)


def _min_defined(*values: int | None) -> int | None:
    defined = [value for value in values if value is not None]
    return min(defined) if defined else None


def _wait_for_send_queue(connection: socket.socket, timeout_seconds: float) -> None:
    """Wait until the kernel has sent the bytes queued on the socket (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import fcntl
    import termios

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            queued = struct.unpack(
                "i", fcntl.ioctl(connection.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            )[0]
        except OSError:
            return
        if queued == 0:
            return
        time.sleep(0.005)
