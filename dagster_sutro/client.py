"""HTTP client for the Sutro Batch API.

The client knows the endpoints this package uses (``results-url``, ``job-status``, ``jobs``,
``list-jobs`` and ``try-authentication``), validates its inputs before any request, retries the
responses that mean "try again", and turns every other error into a :class:`SutroError` whose
text contains no credential. It imports nothing from Dagster, so it works the same in assets,
sensors, tests and plain scripts.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from dagster_sutro.errors import (
    InvalidInputError,
    SutroApiError,
    SutroAuthenticationError,
    SutroJobNotReadyError,
)
from dagster_sutro.models import ArtifactInfo, ResultsDownloadUrl
from dagster_sutro.redaction import (
    install_log_redaction,
    redact_text,
    register_presigned_url,
    register_secret,
)
from dagster_sutro.version import __version__

logger = logging.getLogger(__name__)

USER_AGENT = f"dagster-sutro/{__version__}"
MIN_EXPIRES_IN_SECONDS = 1
MAX_EXPIRES_IN_SECONDS = 604_800
DEFAULT_EXPIRES_IN_SECONDS = 3600
MAX_JOB_ID_CHARS = 256
RETIRED_HOSTS = frozenset({"api.sutro.sh", "serve.sutro.sh"})

# 524 is Cloudflare's origin timeout, which Sutro returns while a large artifact is built.
RETRYABLE_STATUS_CODES = frozenset({429, 500, 502, 503, 504, 524})
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
RETRY_AFTER_MAX_SECONDS = 120.0

JOB_STATES = (
    "QUEUED",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "CANCELLING",
    "CANCELLED",
    "FAILED",
    "UNKNOWN",
)


def normalize_api_url(api_url: str) -> str:
    """Normalize a Sutro deployment origin to ``<origin>/v1``.

    Args:
        api_url: The deployment origin, with or without a trailing ``/v1``.

    Returns:
        The API root, ``<scheme>://<host>[:port]/v1``.

    Raises:
        InvalidInputError: If the value is not an ``https`` origin (plain ``http`` is allowed
            for loopback addresses only), carries a path other than ``/v1``, a query string,
            a fragment or embedded credentials, or names a retired central host.
    """
    value = (api_url or "").strip()
    if not value:
        raise InvalidInputError(
            "Sutro API URL is empty. Set SUTRO_API_URL to your deployment's origin, for "
            "example https://acme.sutro-deploy.example."
        )
    parts = urlsplit(value)
    display_value = redact_text(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            f"Sutro API URL {display_value!r} is invalid: expected an origin such as "
            "https://acme.sutro-deploy.example."
        )
    if parts.username or parts.password:
        raise InvalidInputError(
            "Sutro API URL must not embed credentials. Remove the user:password part and "
            "pass the key as api_key (SUTRO_API_KEY)."
        )
    if parts.query or parts.fragment:
        raise InvalidInputError(
            f"Sutro API URL {display_value!r} has a query string or fragment. Pass only the origin."
        )
    path = parts.path.rstrip("/")
    if path not in ("", "/v1"):
        raise InvalidInputError(
            f"Sutro API URL {display_value!r} has the path {parts.path!r}. Pass only the origin, "
            "optionally followed by /v1."
        )
    host = parts.hostname.lower()
    if host in RETIRED_HOSTS:
        raise InvalidInputError(
            f"Sutro API URL {display_value!r} names the retired central host {host}. Each customer "
            "now has its own deployment: set SUTRO_API_URL to your deployment's origin."
        )
    if parts.scheme == "http" and not _is_loopback(host):
        raise InvalidInputError(
            f"Sutro API URL {display_value!r} uses plain http. Use https; plain http is accepted "
            "only for localhost and loopback addresses."
        )
    port = f":{parts.port}" if parts.port else ""
    hostname = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{hostname}{port}/v1"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_job_id(job_id: str) -> str:
    """Check that a job id can be placed in a URL path.

    Args:
        job_id: A Sutro job id, for example ``job-5f0c...``.

    Returns:
        The job id, unchanged.

    Raises:
        InvalidInputError: If the id is empty or contains ``/``, whitespace or control
            characters.
    """
    if not isinstance(job_id, str) or not job_id:
        raise InvalidInputError(
            f"Job id {job_id!r} is invalid: it is empty. Pass the id of a Sutro job."
        )
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise InvalidInputError(
            f"Job id {job_id[:40]!r}... is invalid: it is {len(job_id)} characters long, more "
            f"than {MAX_JOB_ID_CHARS}. Copy the id from the Sutro job list."
        )
    if job_id in (".", ".."):
        raise InvalidInputError(
            f"Job id {job_id!r} is invalid: it is a relative path segment. Pass the id of a "
            "Sutro job."
        )
    bad = [char for char in job_id if char == "/" or char.isspace() or not char.isprintable()]
    if bad:
        raise InvalidInputError(
            f"Job id {job_id!r} is invalid: it contains {bad[0]!r}. A job id has no '/', "
            "whitespace or control characters; copy it from the Sutro job list."
        )
    return job_id


def validate_api_key(api_key: str) -> str:
    """Check that an API key can be sent in an HTTP header, without echoing it.

    Args:
        api_key: The Sutro API key, with surrounding whitespace already removed.

    Returns:
        The key, unchanged.

    Raises:
        InvalidInputError: If the key is empty or contains whitespace, control or non-ASCII
            characters. The message never contains the key.
    """
    if not api_key:
        raise InvalidInputError(
            "Sutro API key is empty. Set SUTRO_API_KEY and pass it as "
            'api_key=dg.EnvVar("SUTRO_API_KEY").'
        )
    for position, char in enumerate(api_key, start=1):
        if char.isspace() or not char.isprintable() or not char.isascii():
            kind = "whitespace" if char.isspace() else "a control or non-ASCII character"
            raise InvalidInputError(
                f"Sutro API key is invalid: character {position} of {len(api_key)} is {kind}, "
                "which cannot be sent in an HTTP header. Check the value of SUTRO_API_KEY, "
                "for example for a line break pasted into it."
            )
    return api_key


def validate_expires_in_seconds(expires_in_seconds: int) -> int:
    """Check that a URL lifetime is within the range the API accepts.

    Args:
        expires_in_seconds: The requested lifetime of the presigned URLs.

    Returns:
        The value, unchanged.

    Raises:
        InvalidInputError: If the value is not an integer from 1 to 604800 (7 days).
    """
    if (
        isinstance(expires_in_seconds, bool)
        or not isinstance(expires_in_seconds, int)
        or not MIN_EXPIRES_IN_SECONDS <= expires_in_seconds <= MAX_EXPIRES_IN_SECONDS
    ):
        raise InvalidInputError(
            f"expires_in_seconds={expires_in_seconds!r} is invalid: use a whole number of "
            f"seconds from {MIN_EXPIRES_IN_SECONDS} to {MAX_EXPIRES_IN_SECONDS} (7 days)."
        )
    return expires_in_seconds


class _ApiKeyAuth(requests.auth.AuthBase):
    """Sets ``Authorization: Key <api key>`` on a request.

    Passed as ``auth=``, so that requests does not look up ``~/.netrc``: a ``.netrc`` entry for
    the deployment host would otherwise replace the header with Basic credentials.
    """

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Key {self._api_key}"
        return request

    def __repr__(self) -> str:
        return "_ApiKeyAuth()"


class SutroClient:
    """A client for the parts of the Sutro Batch API that fetch job results.

    Args:
        api_url: The deployment origin, with or without ``/v1``.
        api_key: The Sutro API key (``sk_...``).
        request_timeout_seconds: The connect and read timeout of each API request.
        max_retries: How many times a retryable failure is retried before it is raised.
        session: A ``requests.Session`` to send API requests with; one is created if omitted.
            It is never used for storage requests.

    Examples:
        .. code-block:: python

            client = SutroClient("https://acme.sutro-deploy.example", os.environ["SUTRO_API_KEY"])
            urls = client.get_results_download_url("job-5f0c", include_inputs=True)
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        request_timeout_seconds: float = 60.0,
        max_retries: int = 5,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = normalize_api_url(api_url)
        api_key = validate_api_key((api_key or "").strip())
        if request_timeout_seconds <= 0:
            raise InvalidInputError(
                f"request_timeout_seconds={request_timeout_seconds!r} is invalid: use a "
                "positive number of seconds."
            )
        if max_retries < 0:
            raise InvalidInputError(
                f"max_retries={max_retries!r} is invalid: use 0 or a positive whole number."
            )
        self._api_key = api_key
        register_secret(self._api_key)
        install_log_redaction()
        self.request_timeout_seconds = request_timeout_seconds
        self.max_retries = max_retries
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"SutroClient(base_url={self.base_url!r})"

    def get_results_download_url(
        self,
        job_id: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
        expires_in_seconds: int = DEFAULT_EXPIRES_IN_SECONDS,
    ) -> ResultsDownloadUrl:
        """Create or reuse a job's results artifact and return presigned URLs for it.

        Args:
            job_id: The job whose results to fetch.
            include_inputs: Add the job's input columns to the artifact.
            include_cumulative_logprobs: Add a ``cumulative_logprobs`` column.
            expires_in_seconds: The lifetime of the URLs, 1 to 604800.

        Returns:
            The artifact's location and size, and its GET and HEAD URLs.

        Raises:
            InvalidInputError: If an argument is invalid; no request is sent.
            SutroJobNotReadyError: If the job has not succeeded.
            SutroAuthenticationError: If the API key was rejected.
            SutroApiError: For any other error response.
        """
        validate_job_id(job_id)
        validate_expires_in_seconds(expires_in_seconds)
        params = {
            "format": "parquet",
            "include_inputs": _bool_param(include_inputs),
            "include_cumulative_logprobs": _bool_param(include_cumulative_logprobs),
            "expires_in_seconds": str(expires_in_seconds),
        }
        try:
            body = self._get_json(f"jobs/{quote(job_id, safe='')}/results-url", params=params)
        except SutroApiError as error:
            if error.status_code == 409:
                raise self._job_not_ready(job_id, error) from None
            raise
        return _parse_results_url(job_id, body)

    def get_job_status(self, job_id: str) -> str:
        """Return the state of a job.

        Args:
            job_id: The job to look up.

        Returns:
            One of ``QUEUED``, ``STARTING``, ``RUNNING``, ``SUCCEEDED``, ``CANCELLING``,
            ``CANCELLED``, ``FAILED`` or ``UNKNOWN``.

        Raises:
            SutroApiError: If the request failed or the response has no state for the job.
        """
        return self.get_job_status_details(job_id)[0]

    def get_job_status_details(self, job_id: str) -> tuple[str, str | None]:
        """Return the state of a job and its failure reason, if it failed.

        Args:
            job_id: The job to look up.

        Returns:
            The state and the failure message (``None`` unless the job failed).
        """
        validate_job_id(job_id)
        body = self._get_json(f"job-status/{quote(job_id, safe='')}")
        statuses = body.get("job_status")
        status = statuses.get(job_id) if isinstance(statuses, Mapping) else None
        if not isinstance(status, str):
            raise SutroApiError(
                f"Sutro job-status response for job {job_id} has no state for that job "
                "(expected job_status.<job_id>).",
                status_code=200,
            )
        reason = None
        metadata = body.get("metadata")
        if isinstance(metadata, Mapping):
            failure = metadata.get("failure_reason")
            if isinstance(failure, Mapping) and isinstance(failure.get("message"), str):
                reason = failure["message"]
        return status.upper(), reason

    def get_job(self, job_id: str) -> dict[str, Any]:
        """Return a job's details (``GET /v1/jobs/{job_id}``).

        Args:
            job_id: The job to look up.

        Returns:
            The ``job`` object: ``job_id``, ``status``, ``num_rows`` and the other fields.
        """
        validate_job_id(job_id)
        body = self._get_json(f"jobs/{quote(job_id, safe='')}")
        job = body.get("job")
        if not isinstance(job, dict):
            raise SutroApiError(
                f"Sutro jobs response for job {job_id} has no 'job' object.", status_code=200
            )
        return job

    def list_jobs(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict], str | None]:
        """Return one page of jobs, newest first.

        Args:
            limit: The page size, 1 to 100.
            cursor: The ``next_cursor`` of the previous page, or ``None`` for the first page.

        Returns:
            The jobs of the page and the cursor of the next page (``None`` on the last page).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise InvalidInputError(
                f"limit={limit!r} is invalid: use a whole number from 1 to 100."
            )
        params = {"limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        body = self._get_json("list-jobs", params=params)
        jobs = body.get("jobs")
        if not isinstance(jobs, list):
            raise SutroApiError("Sutro list-jobs response has no 'jobs' list.", status_code=200)
        next_cursor = body.get("next_cursor")
        return jobs, next_cursor if isinstance(next_cursor, str) and next_cursor else None

    def try_authentication(self) -> bool:
        """Check the API key against the deployment.

        Returns:
            ``True`` when the deployment accepts the key.

        Raises:
            SutroAuthenticationError: If the key was rejected.
        """
        body = self._get_json("try-authentication")
        return bool(body.get("authenticated"))

    def _job_not_ready(self, job_id: str, error: SutroApiError) -> SutroJobNotReadyError:
        """Build the 409 error, with the job's actual state from ``job-status``."""
        lookup_failure: SutroApiError | None = None
        try:
            status, reason = self.get_job_status_details(job_id)
        except SutroApiError as status_error:
            logger.warning(
                "Could not read the state of Sutro job %s after a 409: %s", job_id, status_error
            )
            status, reason = "UNKNOWN", None
            lookup_failure = status_error
        message = f"Sutro job {job_id} is {status}, not SUCCEEDED, so its results are not ready."
        if lookup_failure is not None:
            message = (
                f"Sutro API returned 409 for the results of job {job_id}, so the job has not "
                f"succeeded, and reading its state failed: {lookup_failure} Check the job in "
                "Sutro and run again once it has succeeded."
            )
        elif status == "SUCCEEDED":
            # The job finished between the two requests, or its artifact is not ready yet.
            message = (
                f"Sutro API returned 409 for the results of job {job_id}, but job-status now "
                "reports SUCCEEDED: the job finished just now or its results are still being "
                "prepared. Run again in a few minutes."
            )
        elif reason:
            message += f" Failure reason: {reason}"
        elif status in ("QUEUED", "STARTING", "RUNNING"):
            message += " Run again once the job has finished."
        return SutroJobNotReadyError(
            message,
            job_id=job_id,
            job_status=status,
            status_code=error.status_code,
            detail=error.detail,
            request_id=error.request_id,
        )

    def _get_json(self, path: str, *, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Send a GET to the API with retries and return the decoded JSON object."""
        url = f"{self.base_url}/{path}"
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        attempt = 0
        while True:
            attempt += 1
            failure: str | None = None
            response: requests.Response | None = None
            try:
                response = self._session.get(
                    url,
                    params=params,
                    headers=headers,
                    timeout=(self.request_timeout_seconds, self.request_timeout_seconds),
                    allow_redirects=False,
                    auth=_ApiKeyAuth(self._api_key),
                )
            except requests.RequestException as exc:
                failure = f"{type(exc).__name__}: {redact_text(str(exc))}"

            if response is not None and response.status_code not in RETRYABLE_STATUS_CODES:
                return self._decode(path, response)

            if attempt > self.max_retries:
                if response is not None:
                    return self._decode(path, response)
                raise SutroApiError(
                    f"Sutro API request GET /v1/{_path_for_log(path)} failed after {attempt} "
                    f"attempts: {failure}. Check SUTRO_API_URL and the network."
                )

            delay = _backoff_seconds(attempt)
            if response is not None:
                delay = _retry_after_seconds(response) or delay
                failure = f"HTTP {response.status_code}"
                response.close()
            logger.warning(
                "Sutro API request GET /v1/%s failed (%s); retry %d of %d in %.1f s.",
                _path_for_log(path),
                failure,
                attempt,
                self.max_retries,
                delay,
            )
            time.sleep(delay)

    def _decode(self, path: str, response: requests.Response) -> dict[str, Any]:
        """Turn a final response into its JSON object, or raise the matching error."""
        request_id = response.headers.get("x-request-id") or response.headers.get("cf-ray")
        status = response.status_code
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        endpoint = f"GET /v1/{_path_for_log(path)}"

        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise SutroApiError(
                    f"Sutro API {endpoint} returned {status} with a body that is not a JSON "
                    f"object ({_describe_body(response)}). Check that SUTRO_API_URL points at "
                    "a Sutro deployment.",
                    status_code=status,
                    request_id=request_id,
                )
            return body

        detail = _detail_of(body, response)
        suffix = f" (request id {request_id})" if request_id else ""
        if status in (401, 403):
            raise SutroAuthenticationError(
                f"Sutro API rejected the API key with {status} on {endpoint}: {detail}. Check "
                f"that SUTRO_API_KEY contains a valid key for this deployment{suffix}.",
                status_code=status,
                detail=detail,
                request_id=request_id,
            )
        hint = {
            400: "The request was rejected as invalid.",
            404: "Check the job id and that it belongs to this deployment.",
            410: "This host is retired; set SUTRO_API_URL to your own deployment's origin.",
            422: "A parameter was rejected; check job_id and expires_in_seconds.",
            429: "The API is rate limiting requests; try again later.",
            524: "The artifact is still being built; try again later.",
        }.get(status, "")
        raise SutroApiError(
            f"Sutro API {endpoint} failed with {status}: {detail}.{' ' + hint if hint else ''}"
            f"{suffix}",
            status_code=status,
            detail=detail,
            request_id=request_id,
        )


def _bool_param(value: bool) -> str:
    return "true" if value else "false"


def _path_for_log(path: str) -> str:
    return redact_text(path)


def _backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _retry_after_seconds(response: requests.Response) -> float | None:
    """Read ``Retry-After`` as seconds or as an HTTP date, capped."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(seconds, RETRY_AFTER_MAX_SECONDS))


def _detail_of(body: Any, response: requests.Response) -> str:
    """Extract the ``detail`` message of an error body, or describe the body."""
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return redact_text(text)[:500]
    return _describe_body(response)


def _describe_body(response: requests.Response) -> str:
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if "html" in content_type or response.text.lstrip().lower().startswith(("<!doctype", "<html")):
        return "an HTML page, as sent by a proxy such as Cloudflare"
    if not response.content:
        return "an empty body"
    return f"a {content_type or 'non-JSON'} body of {len(response.content)} bytes"


def _parse_results_url(job_id: str, body: Mapping[str, Any]) -> ResultsDownloadUrl:
    """Validate a results-url response and build its record."""
    try:
        artifact = body["artifact"]
        urls = body["urls"]
        record = ResultsDownloadUrl(
            job_id=str(body.get("job_id", job_id)),
            format=str(body.get("format", "parquet")),
            include_inputs=bool(body["include_inputs"]),
            include_cumulative_logprobs=bool(body["include_cumulative_logprobs"]),
            expires_in_seconds=int(body["expires_in_seconds"]),
            artifact=ArtifactInfo(
                bucket=str(artifact["bucket"]),
                key=str(artifact["key"]),
                filename=str(artifact["filename"]),
                size_bytes=int(artifact["size_bytes"]),
            ),
            get_url=str(urls["get"]),
            head_url=str(urls["head"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        missing = exc.args[0] if isinstance(exc, KeyError) else type(exc).__name__
        raise SutroApiError(
            f"Sutro results-url response for job {job_id} is missing or has an invalid field "
            f"({missing!r}); expected artifact.bucket/key/filename/size_bytes and urls.get/head. "
            "Check that SUTRO_API_URL points at a Sutro deployment.",
            status_code=200,
        ) from None
    register_presigned_url(record.get_url)
    register_presigned_url(record.head_url)
    if (
        record.artifact.size_bytes < 0
        or "/" in record.artifact.filename
        or not record.artifact.filename
    ):
        raise SutroApiError(
            f"Sutro results-url response for job {job_id} has an invalid artifact "
            f"(filename {record.artifact.filename!r}, size {record.artifact.size_bytes}).",
            status_code=200,
        )
    return record
