"""The emulated Sutro API: JSON over HTTP with FastAPI-style errors.

Routes (all need ``Authorization: Key <api key>``):

- ``GET /v1/try-authentication``
- ``GET /v1/jobs/{job_id}/results-url``
- ``GET /v1/jobs/{job_id}``
- ``GET /v1/job-status/{job_id}``
- ``GET /v1/list-jobs``
- ``POST /_emulator/jobs``, ``POST /_emulator/jobs/{job_id}/status`` and
  ``POST /_emulator/jobs/{job_id}/replace-artifact``, admin endpoints for demos and for
  processes other than the one running the emulator.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import uuid
from typing import Any
from urllib.parse import quote, unquote

from dagster_sutro.testing.http_base import EmulatorRequestHandler, logger
from dagster_sutro.testing.sigv4 import MAX_EXPIRES_SECONDS
from dagster_sutro.testing.state import EmulatorState
from dagster_sutro.testing.store import BUCKET, ArtifactFlags, EmulatedJob

DEFAULT_EXPIRES_IN_SECONDS = 3600
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100

_TRUE_VALUES = {"true", "1"}
_FALSE_VALUES = {"false", "0"}

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/v1/try-authentication$"), "try_authentication"),
    ("GET", re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)/results-url$"), "results_url"),
    ("GET", re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)$"), "get_job"),
    ("GET", re.compile(r"^/v1/job-status/(?P<job_id>[^/]+)$"), "job_status"),
    ("GET", re.compile(r"^/v1/list-jobs$"), "list_jobs"),
    ("POST", re.compile(r"^/_emulator/jobs$"), "admin_add_job"),
    ("POST", re.compile(r"^/_emulator/jobs/(?P<job_id>[^/]+)/status$"), "admin_set_status"),
    (
        "POST",
        re.compile(r"^/_emulator/jobs/(?P<job_id>[^/]+)/replace-artifact$"),
        "admin_replace_artifact",
    ),
]

_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad gateway",
    503: "Service Unavailable",
    504: "Gateway time-out",
    520: "Web server is returning an unknown error",
    521: "Web server is down",
    522: "Connection timed out",
    523: "Origin is unreachable",
    524: "A timeout occurred",
    525: "SSL handshake failed",
    526: "Invalid SSL certificate",
    527: "Railgun error",
}
_CLOUDFLARE_HTML_STATUSES = {502, 504, *range(520, 528)}


class _HttpError(Exception):
    """A JSON error response: ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: object) -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail


class ApiRequestHandler(EmulatorRequestHandler):
    """Request handler of the emulated Sutro API."""

    server_name = "api"

    @property
    def state(self) -> EmulatorState:
        """The emulator state this server serves."""
        state: EmulatorState = self.server.state
        return state

    def _handle(self) -> None:
        record = self.begin_record()
        body = self.discard_request_body()
        request_id = uuid.uuid4().hex
        path = self.raw_path
        route = self._match_route(path)
        job_id = route[1].get("job_id") if route else None
        record.set_job_id(job_id)
        is_admin = path.startswith("/_emulator/")

        if not is_admin:
            status_fault = self.state.faults.take_status("api", self.command, path, job_id)
            if status_fault is not None:
                self._send_status_fault(status_fault.status, status_fault.retry_after, request_id)
                return

        try:
            self._check_authorization()
            if not is_admin:
                body_fault = self.state.faults.take_api_body_fault(self.command, path)
                if body_fault is not None:
                    self._send_body_fault(body_fault.kind, body_fault.status, request_id)
                    return
            if route is None:
                if any(pattern.match(path) for _, pattern, _ in _ROUTES):
                    raise _HttpError(405, "Method Not Allowed")
                raise _HttpError(404, "Not Found")
            name, arguments = route
            status, payload = getattr(self, "_" + name)(body=body, **arguments)
        except _HttpError as error:
            logger.debug(
                "API emulator returned %d for %s %s: %s",
                error.status,
                self.command,
                path,
                error.detail,
            )
            status, payload = error.status, {"detail": error.detail}
        self._send_json(status, payload, request_id)

    def _match_route(self, path: str) -> tuple[str, dict[str, str]] | None:
        for method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if match and method == self.command:
                return name, {key: unquote(value) for key, value in match.groupdict().items()}
        return None

    def _check_authorization(self) -> None:
        header = self.headers.get("Authorization")
        if not header:
            raise _HttpError(401, "Missing Authorization header. Send 'Authorization: Key <key>'.")
        scheme, _, key = header.partition(" ")
        if scheme != "Key" or not hmac.compare_digest(
            key.strip().encode(), self.state.api_key.encode()
        ):
            raise _HttpError(401, "Invalid API key")

    # Responses

    def _send_json(
        self,
        status: int,
        payload: object,
        request_id: str,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        headers = {"x-request-id": request_id, **(extra_headers or {})}
        body = json.dumps(payload).encode()
        self.send_complete(
            status, body, "application/json", headers, include_body=self.command != "HEAD"
        )

    def _send_status_fault(self, status: int, retry_after: float | None, request_id: str) -> None:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = _format_retry_after(retry_after)
        if status in _CLOUDFLARE_HTML_STATUSES:
            self._send_cloudflare_page(status, request_id, headers)
            return
        self._send_json(status, {"detail": _REASONS.get(status, "Error")}, request_id, headers)

    def _send_body_fault(self, kind: str, status: int, request_id: str) -> None:
        if kind == "html_error":
            self._send_cloudflare_page(status, request_id, {})
        elif kind == "malformed_json":
            self._send_json(200, {"unexpected": True}, request_id)
        else:
            body = b"<html><body>Temporarily unavailable, try again</body></html>"
            headers = {"x-request-id": request_id}
            self.send_complete(200, body, "text/html; charset=utf-8", headers)

    def _send_cloudflare_page(self, status: int, request_id: str, headers: dict[str, str]) -> None:
        reason = _REASONS.get(status, "Error")
        ray_id = request_id[:16]
        page = (
            '<!DOCTYPE html>\n<html lang="en-US">\n<head>\n'
            f"<title>127.0.0.1 | {status}: {reason}</title>\n</head>\n<body>\n"
            f'<div id="cf-error-details">\n<h1>Error {status}</h1>\n<h2>{reason}</h2>\n'
            f"<p>Cloudflare Ray ID: <strong>{ray_id}</strong></p>\n</div>\n</body>\n</html>\n"
        )
        self.send_complete(
            status,
            page.encode(),
            "text/html; charset=UTF-8",
            {"cf-ray": f"{ray_id}-EMU", "x-request-id": request_id, **headers},
            include_body=self.command != "HEAD",
        )

    # Routes: each returns (status, JSON payload) or raises _HttpError.

    def _try_authentication(self, *, body: bytes) -> tuple[int, object]:
        return 200, {"authenticated": True}

    def _results_url(self, *, body: bytes, job_id: str) -> tuple[int, object]:
        parameters = self.query_parameters()
        errors: list[dict[str, object]] = []
        include_inputs = _parse_bool(parameters, "include_inputs", errors)
        include_logprobs = _parse_bool(parameters, "include_cumulative_logprobs", errors)
        expires_in = _parse_int(
            parameters,
            "expires_in_seconds",
            DEFAULT_EXPIRES_IN_SECONDS,
            minimum=1,
            maximum=MAX_EXPIRES_SECONDS,
            errors=errors,
        )
        if errors:
            raise _HttpError(422, errors)

        output_format = parameters.get("format", "parquet")
        if output_format != "parquet":
            raise _HttpError(
                400, f"Unsupported format {output_format!r}. Only 'parquet' is supported."
            )
        job = self._require_job(job_id)
        if job.status != "SUCCEEDED":
            raise _HttpError(
                409,
                f"Job {job_id} is {job.status}. Results are available only after the job "
                "has SUCCEEDED.",
            )

        flags = ArtifactFlags(include_inputs, include_logprobs)
        stored = self.state.store.get_object(job_id, flags)
        lifetime = self.state.faults.take_url_lifetime()
        url_seconds = lifetime.seconds if lifetime is not None else expires_in
        object_url = f"{self.state.storage_origin}/{BUCKET}/{quote(stored.key, safe='/~')}"
        signed_at = self.state.clock.now_datetime()
        urls = {
            method.lower(): self.state.signer.presign(
                method, object_url, expires_in_seconds=url_seconds, signed_at=signed_at
            )
            for method in ("GET", "HEAD")
        }
        if lifetime is not None:
            for url in urls.values():
                self.state.remember_expiry_style(url.rsplit("X-Amz-Signature=", 1)[1], lifetime)

        return 200, {
            "job_id": job_id,
            "format": "parquet",
            "include_inputs": include_inputs,
            "include_cumulative_logprobs": include_logprobs,
            "expires_in_seconds": expires_in,
            "artifact": {
                "bucket": BUCKET,
                "key": stored.key,
                "filename": stored.filename,
                "size_bytes": stored.size,
            },
            "urls": urls,
        }

    def _get_job(self, *, body: bytes, job_id: str) -> tuple[int, object]:
        job = self._require_job(job_id)
        with job.lock:
            return 200, {"job": job.to_json()}

    def _job_status(self, *, body: bytes, job_id: str) -> tuple[int, object]:
        job = self._require_job(job_id)
        with job.lock:
            status = job.status
            failure_reason = job.failure_reason
        metadata = None
        if failure_reason is not None:
            metadata = {"failure_reason": {"message": failure_reason}}
        return 200, {
            "job_status": {job_id: status},
            "message": f"Job {job_id} is {status}.",
            "metadata": metadata,
        }

    def _list_jobs(self, *, body: bytes) -> tuple[int, object]:
        parameters = self.query_parameters()
        errors: list[dict[str, object]] = []
        limit = _parse_int(
            parameters,
            "limit",
            DEFAULT_LIST_LIMIT,
            minimum=1,
            maximum=MAX_LIST_LIMIT,
            errors=errors,
        )
        before_sequence = None
        cursor = parameters.get("cursor")
        if cursor:
            before_sequence = _decode_cursor(cursor)
            if before_sequence is None:
                errors.append(
                    {
                        "type": "value_error",
                        "loc": ["query", "cursor"],
                        "msg": "Value error, invalid cursor",
                        "input": cursor,
                    }
                )
        if errors:
            raise _HttpError(422, errors)

        jobs = self.state.store.jobs_newest_first()
        if before_sequence is not None:
            jobs = [job for job in jobs if job.sequence < before_sequence]
        page = jobs[:limit]
        next_cursor = _encode_cursor(page[-1].sequence) if len(jobs) > limit else None
        payload = []
        for job in page:
            with job.lock:
                payload.append(job.to_json())
        return 200, {"jobs": payload, "next_cursor": next_cursor}

    def _admin_add_job(self, *, body: bytes) -> tuple[int, object]:
        fields = _parse_json_object(body)
        allowed = {"job_id", "num_rows", "status", "model", "name", "seed", "target_size_bytes"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise _HttpError(422, f"Unknown fields: {', '.join(unknown)}")
        try:
            job = self.state.store.add_job(**fields)
        except ValueError as error:
            status = 409 if "already exists" in str(error) else 422
            raise _HttpError(status, str(error)) from None
        except TypeError as error:
            raise _HttpError(422, str(error)) from None
        return 200, {"job_id": job.job_id}

    def _admin_set_status(self, *, body: bytes, job_id: str) -> tuple[int, object]:
        fields = _parse_json_object(body)
        self._require_job(job_id)
        status = fields.get("status")
        if not isinstance(status, str):
            raise _HttpError(422, "Field 'status' is required and must be a string")
        try:
            self.state.store.set_status(job_id, status, failure_reason=fields.get("failure_reason"))
        except ValueError as error:
            raise _HttpError(422, str(error)) from None
        return 200, {"job_id": job_id, "status": status}

    def _admin_replace_artifact(self, *, body: bytes, job_id: str) -> tuple[int, object]:
        fields = _parse_json_object(body)
        self._require_job(job_id)
        num_rows = fields.get("num_rows")
        if num_rows is not None and not isinstance(num_rows, int):
            raise _HttpError(422, "Field 'num_rows' must be an integer")
        try:
            etags = self.state.store.replace_artifact(job_id, num_rows=num_rows)
        except ValueError as error:
            raise _HttpError(422, str(error)) from None
        return 200, {"job_id": job_id, "etags": etags}

    def _require_job(self, job_id: str) -> EmulatedJob:
        job = self.state.store.get_job(job_id)
        if job is None:
            raise _HttpError(404, f"Job {job_id} not found")
        return job


def _parse_bool(parameters: dict[str, str], name: str, errors: list[dict[str, object]]) -> bool:
    """Parse a boolean query parameter: ``true``/``false``/``1``/``0`` in any letter case."""
    value = parameters.get(name)
    if value is None:
        return False
    if value.lower() in _TRUE_VALUES:
        return True
    if value.lower() in _FALSE_VALUES:
        return False
    errors.append(
        {
            "type": "bool_parsing",
            "loc": ["query", name],
            "msg": "Input should be a valid boolean, unable to interpret input",
            "input": value,
        }
    )
    return False


def _parse_int(
    parameters: dict[str, str],
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int,
    errors: list[dict[str, object]],
) -> int:
    """Parse an integer query parameter with bounds, adding pydantic-style errors."""
    value = parameters.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
        errors.append(
            {
                "type": "int_parsing",
                "loc": ["query", name],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": value,
            }
        )
        return default
    number = int(value)
    if number < minimum:
        errors.append(
            {
                "type": "greater_than_equal",
                "loc": ["query", name],
                "msg": f"Input should be greater than or equal to {minimum}",
                "input": value,
                "ctx": {"ge": minimum},
            }
        )
    elif number > maximum:
        errors.append(
            {
                "type": "less_than_equal",
                "loc": ["query", name],
                "msg": f"Input should be less than or equal to {maximum}",
                "input": value,
                "ctx": {"le": maximum},
            }
        )
    return number


def _parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        fields = json.loads(body)
    except ValueError:
        raise _HttpError(422, "The request body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise _HttpError(422, "The request body must be a JSON object")
    return fields


def _encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"before:{sequence}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    prefix, _, number = text.partition(":")
    if prefix != "before" or not number.isdigit():
        return None
    return int(number)


def _format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
