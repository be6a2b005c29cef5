"""Records of the requests that the emulator's servers received."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

ServerName = Literal["api", "storage"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request received by the emulated API or storage server.

    Attributes:
        server: ``"api"`` or ``"storage"``.
        method: The HTTP method, for example ``GET``.
        path: The request path as sent, percent-encoding kept, without the query string.
        query: The query parameters, percent-decoded. A repeated name keeps its last value.
        headers: The request headers as received, names in their original case.
        status: The response status code, or 0 while the response has not started.
        body_bytes: The number of response body bytes sent so far (the count, not the bytes).
        job_id: The job the request concerned, when the server could tell.
        time: The emulator clock's time when the request arrived, in seconds since the epoch.
    """

    server: ServerName
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    body_bytes: int
    job_id: str | None
    time: float


@dataclass
class _PendingRecord:
    server: ServerName
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float
    status: int = 0
    body_bytes: int = 0
    job_id: str | None = None


class RequestRecorder:
    """A thread-safe, arrival-ordered log of requests, updated while responses are sent."""

    def __init__(self) -> None:
        self._records: list[_PendingRecord] = []
        self._lock = threading.Lock()

    def start(
        self,
        server: ServerName,
        *,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        time: float,
    ) -> RecordHandle:
        """Append a request on arrival and return a handle to fill in its outcome."""
        record = _PendingRecord(server, method, path, query, headers, time)
        with self._lock:
            self._records.append(record)
        return RecordHandle(record, self._lock)

    def snapshot(self) -> list[RecordedRequest]:
        """Return frozen copies of all records, in arrival order."""
        with self._lock:
            return [
                RecordedRequest(
                    server=record.server,
                    method=record.method,
                    path=record.path,
                    query=dict(record.query),
                    headers=dict(record.headers),
                    status=record.status,
                    body_bytes=record.body_bytes,
                    job_id=record.job_id,
                    time=record.time,
                )
                for record in self._records
            ]

    def clear(self) -> None:
        """Forget every record. Responses still in flight update records no longer listed."""
        with self._lock:
            self._records.clear()


class RecordHandle:
    """Write access to one record while its response is being produced."""

    def __init__(self, record: _PendingRecord, lock: threading.Lock) -> None:
        self._record = record
        self._lock = lock

    def set_job_id(self, job_id: str | None) -> None:
        """Store the job the request concerns."""
        with self._lock:
            self._record.job_id = job_id

    def set_status(self, status: int) -> None:
        """Store the response status code."""
        with self._lock:
            self._record.status = status

    def add_body_bytes(self, count: int) -> None:
        """Add ``count`` to the number of body bytes sent."""
        with self._lock:
            self._record.body_bytes += count
