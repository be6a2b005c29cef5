"""Fault injection for the emulator's API and storage servers.

Each method of :class:`FaultController` adds a rule and returns it as a :class:`FaultRule`.
A rule with ``times=N`` applies to the next N matching requests and then retires. With
``times=None`` it applies until removed, except :meth:`FaultController.status_sequence`,
whose ``times`` counts plays of the whole sequence and defaults to one play. ``job_id=None``
matches every object, and storage
rules match ``GET`` requests unless given another ``method`` (``None`` matches any method).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dagster_sutro.testing.store import ArtifactFlags

ServerName = Literal["api", "storage"]
ExpiryStyle = Literal["s3", "r2"]


class FaultRule:
    """One active fault rule.

    Attributes:
        kind: The fault's name, the same as the :class:`FaultController` method that made it.
        remaining: Requests it still applies to, or ``None`` when it applies until removed.
        applied: How many requests it has affected so far.
    """

    def __init__(
        self,
        controller: FaultController,
        kind: str,
        *,
        times: int | None,
        server: ServerName = "storage",
        job_id: str | None = None,
        method: str | None = "GET",
        path_contains: str | None = None,
        after_bytes: int = 0,
        seconds: float = 0.0,
        bytes_per_second: float = 0.0,
        codes: Sequence[int] = (),
        retry_after: float | None = None,
        status: int = 200,
        style: ExpiryStyle = "s3",
        r2_status: int = 403,
        missing_bytes: int = 0,
        flags: ArtifactFlags | None = None,
    ) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be 1 or more, or None for no limit, got {times}")
        self._controller = controller
        self.kind = kind
        self.remaining = times
        self.applied = 0
        self.server = server
        self.job_id = job_id
        self.method = method.upper() if method else None
        self.path_contains = path_contains
        self.after_bytes = after_bytes
        self.seconds = seconds
        self.bytes_per_second = bytes_per_second
        self.codes = tuple(codes)
        self.retry_after = retry_after
        self.status = status
        self.style: ExpiryStyle = style
        self.r2_status = r2_status
        self.missing_bytes = missing_bytes
        self.flags = flags

    @property
    def active(self) -> bool:
        """Whether the rule is still registered."""
        return self._controller.is_active(self)

    def remove(self) -> None:
        """Remove the rule. Removing a rule twice does nothing."""
        self._controller.remove(self)

    def __repr__(self) -> str:
        return (
            f"FaultRule(kind={self.kind!r}, job_id={self.job_id!r}, "
            f"remaining={self.remaining!r}, applied={self.applied})"
        )

    def matches(self, server: ServerName, method: str, path: str, job_id: str | None) -> bool:
        if self.server != server:
            return False
        if self.method is not None and self.method != method.upper():
            return False
        if self.job_id is not None and self.job_id != job_id:
            return False
        return self.path_contains is None or self.path_contains in path


@dataclass(frozen=True)
class StatusFault:
    """An error status to return instead of the normal response."""

    status: int
    retry_after: float | None


@dataclass(frozen=True)
class ApiBodyFault:
    """A broken API response body: ``html``, ``malformed_json`` or ``not_json``."""

    kind: str
    status: int


@dataclass(frozen=True)
class BodyFaults:
    """How to send one storage response body. ``None`` fields mean no fault of that kind."""

    truncate_after: int | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    trickle_bytes_per_second: float | None = None

    @property
    def any(self) -> bool:
        """Whether any body fault applies."""
        return (
            self.truncate_after is not None
            or self.reset_after is not None
            or self.stall_after is not None
            or self.trickle_bytes_per_second is not None
        )


@dataclass(frozen=True)
class UrlLifetime:
    """The lifetime and expiry style forced on presigned URLs."""

    seconds: int
    style: ExpiryStyle
    r2_status: int


class FaultController:
    """Registry of fault rules, shared by the emulator's servers.

    Examples:
        >>> from dagster_sutro.testing import SutroEmulator
        >>> with SutroEmulator() as emu:  # doctest: +SKIP
        ...     job_id = emu.add_job(num_rows=1000)
        ...     emu.faults.truncate_body(4096, job_id=job_id)
        ...     emu.faults.status_sequence([503, 503], server="api")
    """

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._served_bytes: dict[int, int] = {}

    # Rules that shape storage response bodies

    def truncate_body(
        self,
        after_bytes: int,
        *,
        job_id: str | None = None,
        times: int | None = 1,
        method: str | None = "GET",
    ) -> FaultRule:
        """Declare the full Content-Length, send ``after_bytes`` of the body, close the connection.

        Args:
            after_bytes: Body bytes sent before the connection closes.
            job_id: Only objects of this job, or every object when ``None``.
            times: Number of responses affected, or ``None`` until removed.
            method: The request method matched, or ``None`` for any.
        """
        _check_non_negative("after_bytes", after_bytes)
        return self._add(
            "truncate_body", times=times, job_id=job_id, method=method, after_bytes=after_bytes
        )

    def reset_connection(
        self,
        after_bytes: int,
        *,
        job_id: str | None = None,
        times: int | None = 1,
        method: str | None = "GET",
    ) -> FaultRule:
        """Send ``after_bytes`` of the body, then reset the TCP connection (the client sees
        ECONNRESET).

        Args:
            after_bytes: Body bytes sent before the reset.
            job_id: Only objects of this job, or every object when ``None``.
            times: Number of responses affected, or ``None`` until removed.
            method: The request method matched, or ``None`` for any.
        """
        _check_non_negative("after_bytes", after_bytes)
        return self._add(
            "reset_connection", times=times, job_id=job_id, method=method, after_bytes=after_bytes
        )

    def stall_body(
        self,
        seconds: float,
        *,
        after_bytes: int = 0,
        job_id: str | None = None,
        times: int | None = 1,
        method: str | None = "GET",
    ) -> FaultRule:
        """Stop sending for ``seconds`` after ``after_bytes`` of the body, then continue.

        A client that left during the stall gets nothing more: the server notices the closed
        connection on its next write.

        Args:
            seconds: Length of the pause.
            after_bytes: Body bytes sent before the pause.
            job_id: Only objects of this job, or every object when ``None``.
            times: Number of responses affected, or ``None`` until removed.
            method: The request method matched, or ``None`` for any.
        """
        _check_non_negative("seconds", seconds)
        _check_non_negative("after_bytes", after_bytes)
        return self._add(
            "stall_body",
            times=times,
            job_id=job_id,
            method=method,
            after_bytes=after_bytes,
            seconds=float(seconds),
        )

    def trickle(
        self,
        bytes_per_second: float,
        *,
        job_id: str | None = None,
        times: int | None = None,
        method: str | None = "GET",
    ) -> FaultRule:
        """Send response bodies slowly but steadily, at ``bytes_per_second``.

        Args:
            bytes_per_second: The body rate, above 0.
            job_id: Only objects of this job, or every object when ``None``.
            times: Number of responses affected, or ``None`` until removed.
            method: The request method matched, or ``None`` for any.
        """
        if bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be above 0, got {bytes_per_second}")
        return self._add(
            "trickle",
            times=times,
            job_id=job_id,
            method=method,
            bytes_per_second=float(bytes_per_second),
        )

    def ignore_range(
        self, *, job_id: str | None = None, times: int | None = None, method: str | None = "GET"
    ) -> FaultRule:
        """Respond to ``Range`` requests with 200 and the full body, as some servers and CDNs do.

        Args:
            job_id: Only objects of this job, or every object when ``None``.
            times: Number of Range requests affected, or ``None`` until removed.
            method: The request method matched, or ``None`` for any.
        """
        return self._add("ignore_range", times=times, job_id=job_id, method=method)

    def wrong_content_range(
        self, *, job_id: str | None = None, times: int | None = 1, method: str | None = "GET"
    ) -> FaultRule:
        """Respond to a ``Range`` request with 206 for a different range than the one requested.

        The server sends the bytes of the range it declares in ``Content-Range``: the
        requested range shifted by its own length (towards the start when it can, otherwise
        towards the end). A request for the whole object is answered with its first N-1 bytes.

        Args:
            job_id: Only objects of this job, or every object when ``None``.
            times: Number of Range requests affected, or ``None`` until removed.
            method: The request method matched, or ``None`` for any.
        """
        return self._add("wrong_content_range", times=times, job_id=job_id, method=method)

    # Error statuses and broken API bodies

    def status_sequence(
        self,
        codes: Sequence[int],
        *,
        server: ServerName = "storage",
        path_contains: str | None = None,
        retry_after: float | None = None,
        times: int | None = None,
        job_id: str | None = None,
        method: str | None = None,
    ) -> FaultRule:
        """Respond to the next ``len(codes)`` matching requests with these statuses, in order.

        Storage errors are S3 XML (503 is ``SlowDown``, 500 ``InternalError``, other 5xx
        ``ServiceUnavailable``). API errors are FastAPI JSON ``{"detail": ...}`` for 429, 500
        and 503, and Cloudflare-style HTML pages for 502, 504 and 520 to 527.
        ``Retry-After`` is sent when ``retry_after`` is given. Requests to the emulator's
        ``/_emulator`` admin endpoints are never affected.

        Args:
            codes: The statuses, one per request, for example ``[503, 503]``.
            server: ``"storage"`` or ``"api"``.
            path_contains: Only requests whose path contains this text. Storage paths are
                matched percent-decoded (``/sutro-data/jobs/.../...~inputs=1~...``).
            retry_after: Seconds for a ``Retry-After`` header.
            times: How many times to play the whole sequence. ``None`` plays it once.
            job_id: Only requests that concern this job.
            method: The request method matched, or ``None`` for any.
        """
        codes = [int(code) for code in codes]
        if not codes:
            raise ValueError("codes must contain at least one status code")
        if any(not 400 <= code <= 599 for code in codes):
            raise ValueError(f"codes must be error statuses between 400 and 599, got {codes}")
        if server not in ("api", "storage"):
            raise ValueError(f"server must be 'api' or 'storage', got {server!r}")
        requests = len(codes) * (times if times is not None else 1)
        return self._add(
            "status_sequence",
            times=requests,
            server=server,
            job_id=job_id,
            method=method,
            path_contains=path_contains,
            codes=codes,
            retry_after=retry_after,
        )

    def api_html_error(
        self, status: int = 502, *, path_contains: str | None = None, times: int | None = 1
    ) -> FaultRule:
        """Respond to API requests with a Cloudflare-style HTML error page instead of JSON.

        Args:
            status: The HTTP status of the page.
            path_contains: Only requests whose path contains this text.
            times: Number of requests affected, or ``None`` until removed.
        """
        return self._add(
            "api_html_error",
            times=times,
            server="api",
            method=None,
            path_contains=path_contains,
            status=int(status),
        )

    def api_malformed_json(
        self, *, path_contains: str | None = None, times: int | None = 1
    ) -> FaultRule:
        """Respond to API requests with 200 and JSON that lacks the expected fields.

        Args:
            path_contains: Only requests whose path contains this text.
            times: Number of requests affected, or ``None`` until removed.
        """
        return self._add(
            "api_malformed_json",
            times=times,
            server="api",
            method=None,
            path_contains=path_contains,
        )

    def api_not_json(self, *, path_contains: str | None = None, times: int | None = 1) -> FaultRule:
        """Respond to API requests with 200 and a body that is not JSON.

        Args:
            path_contains: Only requests whose path contains this text.
            times: Number of requests affected, or ``None`` until removed.
        """
        return self._add(
            "api_not_json", times=times, server="api", method=None, path_contains=path_contains
        )

    # Rules about URLs and objects

    def url_lifetime(
        self,
        seconds: int,
        *,
        style: ExpiryStyle = "s3",
        r2_status: int = 403,
        times: int | None = None,
    ) -> FaultRule:
        """Make ``results-url`` grant URLs that expire after ``seconds``, whatever was requested.

        The response body still echoes the requested ``expires_in_seconds``. Requests on an
        expired URL get S3's 403 ``AccessDenied`` "Request has expired" (``style="s3"``) or
        R2's ``ExpiredRequest`` with status ``r2_status`` (``style="r2"``).

        Args:
            seconds: The real lifetime of the URLs, 1 to 604800.
            style: ``"s3"`` or ``"r2"``.
            r2_status: Status of R2-style expiry errors (R2 has documented 400 and 403).
            times: Number of ``results-url`` calls affected, or ``None`` until removed.
        """
        if not 1 <= seconds <= 604800:
            raise ValueError(f"seconds must be 1 to 604800, got {seconds}")
        if style not in ("s3", "r2"):
            raise ValueError(f"style must be 's3' or 'r2', got {style!r}")
        return self._add(
            "url_lifetime",
            times=times,
            server="api",
            method=None,
            seconds=int(seconds),
            style=style,
            r2_status=int(r2_status),
        )

    def replace_object_after(self, job_id: str, after_bytes: int) -> FaultRule:
        """Replace the job's artifact once its GET bodies have sent ``after_bytes`` in total.

        Every object of the job is rebuilt with new bytes and a new ETag. Responses already
        streaming finish with the old bytes, and later requests with ``If-Match: <old ETag>``
        get 412. The rule fires once.

        Args:
            job_id: The job whose artifact is replaced.
            after_bytes: Body bytes of the job's objects, counted over all GET responses from
                the moment the rule is added.
        """
        _check_non_negative("after_bytes", after_bytes)
        return self._add(
            "replace_object_after", times=1, job_id=job_id, method="GET", after_bytes=after_bytes
        )

    def truncated_parquet(
        self,
        job_id: str,
        *,
        missing_bytes: int = 65536,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
    ) -> FaultRule:
        """Serve an object that lacks its last ``missing_bytes`` bytes, self-consistently.

        ``results-url`` reports the truncated size, and HEAD and GET report the matching
        Content-Length and an ETag of the truncated bytes. Removing the rule restores the
        original object.

        Args:
            job_id: The job.
            missing_bytes: Bytes cut from the end of the file, 1 or more.
            include_inputs: The flag combination whose object is truncated.
            include_cumulative_logprobs: The flag combination whose object is truncated.
        """
        if missing_bytes < 1:
            raise ValueError(f"missing_bytes must be 1 or more, got {missing_bytes}")
        flags = ArtifactFlags(include_inputs, include_cumulative_logprobs)
        return self._add(
            "truncated_parquet",
            times=None,
            job_id=job_id,
            method=None,
            missing_bytes=missing_bytes,
            flags=flags,
        )

    # Management

    @property
    def rules(self) -> list[FaultRule]:
        """The active rules, oldest first."""
        with self._lock:
            return list(self._rules)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()
            self._served_bytes.clear()

    def remove(self, rule: FaultRule) -> None:
        """Remove one rule. Removing a rule twice does nothing."""
        with self._lock:
            self._discard(rule)

    def is_active(self, rule: FaultRule) -> bool:
        """Return whether ``rule`` is registered."""
        with self._lock:
            return any(existing is rule for existing in self._rules)

    # Queries made by the servers

    def take_status(
        self, server: ServerName, method: str, path: str, job_id: str | None
    ) -> StatusFault | None:
        """Consume the next status of the first matching ``status_sequence`` rule."""
        with self._lock:
            rule = self._first("status_sequence", server, method, path, job_id)
            if rule is None:
                return None
            status = rule.codes[rule.applied % len(rule.codes)]
            self._consume(rule)
            return StatusFault(status, rule.retry_after)

    def take_api_body_fault(self, method: str, path: str) -> ApiBodyFault | None:
        """Consume the first matching broken-body rule of the API server."""
        with self._lock:
            for kind in ("api_html_error", "api_malformed_json", "api_not_json"):
                rule = self._first(kind, "api", method, path, None)
                if rule is not None:
                    self._consume(rule)
                    return ApiBodyFault(kind.removeprefix("api_"), rule.status)
        return None

    def take_url_lifetime(self) -> UrlLifetime | None:
        """Consume the first ``url_lifetime`` rule for one ``results-url`` call."""
        with self._lock:
            rule = self._first("url_lifetime", "api", "GET", "", None)
            if rule is None:
                return None
            self._consume(rule)
            return UrlLifetime(int(rule.seconds), rule.style, rule.r2_status)

    def take_range_fault(self, method: str, job_id: str | None) -> str | None:
        """Consume a range rule for a Range request: ``ignore_range``, ``wrong_content_range``."""
        with self._lock:
            for kind in ("ignore_range", "wrong_content_range"):
                rule = self._first(kind, "storage", method, "", job_id)
                if rule is not None:
                    self._consume(rule)
                    return kind
        return None

    def take_body_faults(self, method: str, job_id: str | None) -> BodyFaults:
        """Consume the body rules that apply to one storage response body."""
        with self._lock:
            truncate = self._take("truncate_body", method, job_id)
            reset = self._take("reset_connection", method, job_id)
            stall = self._take("stall_body", method, job_id)
            trickle = self._take("trickle", method, job_id)
        return BodyFaults(
            truncate_after=truncate.after_bytes if truncate else None,
            reset_after=reset.after_bytes if reset else None,
            stall_after=stall.after_bytes if stall else None,
            stall_seconds=stall.seconds if stall else 0.0,
            trickle_bytes_per_second=trickle.bytes_per_second if trickle else None,
        )

    def truncation_for(self, job_id: str, flags: ArtifactFlags) -> int | None:
        """Return the bytes missing from an object under ``truncated_parquet``, or ``None``."""
        with self._lock:
            for rule in self._rules:
                if (
                    rule.kind == "truncated_parquet"
                    and rule.job_id == job_id
                    and rule.flags == flags
                ):
                    return rule.missing_bytes
        return None

    def bytes_until_replacement(self, job_id: str) -> int | None:
        """Return how many more GET body bytes of the job trigger a replacement, or ``None``."""
        with self._lock:
            rule = self._first("replace_object_after", "storage", "GET", "", job_id)
            if rule is None:
                return None
            return max(0, rule.after_bytes - self._served_bytes.get(id(rule), 0))

    def note_served(self, job_id: str, count: int) -> bool:
        """Count ``count`` GET body bytes of the job, returning ``True`` once the
        ``replace_object_after`` threshold is reached (the rule then retires)."""
        with self._lock:
            rule = self._first("replace_object_after", "storage", "GET", "", job_id)
            if rule is None:
                return False
            served = self._served_bytes.get(id(rule), 0) + count
            self._served_bytes[id(rule)] = served
            if served < rule.after_bytes:
                return False
            self._consume(rule)
            self._served_bytes.pop(id(rule), None)
            return True

    # Internals (callers hold self._lock)

    def _add(self, kind: str, *, times: int | None, **fields: Any) -> FaultRule:
        rule = FaultRule(self, kind, times=times, **fields)
        with self._lock:
            self._rules.append(rule)
        return rule

    def _take(self, kind: str, method: str, job_id: str | None) -> FaultRule | None:
        rule = self._first(kind, "storage", method, "", job_id)
        if rule is not None:
            self._consume(rule)
        return rule

    def _first(
        self, kind: str, server: ServerName, method: str, path: str, job_id: str | None
    ) -> FaultRule | None:
        for rule in self._rules:
            if rule.kind == kind and rule.matches(server, method, path, job_id):
                return rule
        return None

    def _consume(self, rule: FaultRule) -> None:
        rule.applied += 1
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                self._discard(rule)

    def _discard(self, rule: FaultRule) -> None:
        self._rules = [existing for existing in self._rules if existing is not rule]


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value}")
