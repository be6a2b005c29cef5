"""A small storage server on 127.0.0.1 for transfer engine tests, and the tests that need it.

``ObjectServer`` serves one object with ``Range``, ``If-Match`` and ``ETag`` like S3, and a
fault hook that can break any response: reset the connection, cut the body short, stall,
return 5xx, 403, 412, ignore ``Range`` or send a wrong ``Content-Range``. It checks no
signature; the SigV4 emulator covers that.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults_support import bytes_matching_per_part

from dagster_sutro.errors import (
    ArtifactChangedError,
    DownloadError,
    StorageError,
)
from dagster_sutro.models import ArtifactInfo, ResultsDownloadUrl
from dagster_sutro.transfer import TransferSettings, download_artifact, head_artifact

MIB = 1024 * 1024
CANARY_SIGNATURE = "c4nary5ignature0000000000000000000000000000000000000000000000000"
BUCKET = "sutro-data"
KEY = "jobs/u1/job-1/results/sutro-results~job-1~inputs=0~logprobs=0.parquet"
FILENAME = KEY.rsplit("/", 1)[1]


@dataclass
class Fault:
    """How to break one response.

    Attributes:
        status: Return this status and an S3 XML error body instead of the object.
        code: The S3 error code of the body.
        message: The S3 error message of the body.
        reset_after: Send this many body bytes, then reset the connection.
        truncate_after: Send this many body bytes, then close the connection cleanly.
        stall_after: Send this many body bytes, then stop sending for ``stall_seconds``.
        stall_seconds: How long a stall lasts.
        ignore_range: Return 200 with the whole object, whatever the ``Range``.
        content_range: Send this ``Content-Range`` instead of the right one.
        bytes_per_second: Send the body at this rate, in pieces of 64 KiB.
    """

    status: int | None = None
    code: str = "InternalError"
    message: str = "We encountered an internal error. Please try again."
    reset_after: int | None = None
    truncate_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    ignore_range: bool = False
    content_range: str | None = None
    bytes_per_second: float | None = None


@dataclass
class Received:
    """One request that the server received."""

    method: str
    path: str
    headers: dict[str, str]
    range: str | None
    status: int = 0


FaultHook = Callable[[Received, int], Fault | None]


@dataclass
class _State:
    data: bytes
    etag: str
    fault: FaultHook | None = None
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Called with the request once its headers were read, before the response starts.
    on_request: Callable[[Received], None] | None = None


class ObjectServer:
    """Serves one object at ``/<bucket>/<key>`` on 127.0.0.1, with faults on demand."""

    def __init__(self, data: bytes, *, etag: str = '"etag-v1"') -> None:
        self.state = _State(data=data, etag=etag)
        handler = _make_handler(self.state)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> ObjectServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.requests)

    def set_object(self, data: bytes, etag: str) -> None:
        with self.state.lock:
            self.state.data = data
            self.state.etag = etag

    def set_fault(self, hook: FaultHook | None) -> None:
        self.state.fault = hook

    def urls(
        self,
        *,
        expires_in_seconds: int = 3600,
        signature: str = CANARY_SIGNATURE,
        age_seconds: float = 0.0,
    ) -> ResultsDownloadUrl:
        """Build results-url output pointing at this server, with a canary signature.

        ``age_seconds`` backdates the signing time, so the URLs expire that much sooner.
        """
        now = time.gmtime(time.time() - age_seconds)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        base = f"{self.origin}/{BUCKET}/{KEY.replace('~', '%7E')}"
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIATEST%2F20250101%2Fauto%2Fs3%2Faws4_request"
            f"&X-Amz-Date={amz_date}&X-Amz-Expires={expires_in_seconds}"
            "&X-Amz-SignedHeaders=host"
        )
        with self.state.lock:
            size = len(self.state.data)
        return ResultsDownloadUrl(
            job_id="job-1",
            format="parquet",
            include_inputs=False,
            include_cumulative_logprobs=False,
            expires_in_seconds=expires_in_seconds,
            artifact=ArtifactInfo(bucket=BUCKET, key=KEY, filename=FILENAME, size_bytes=size),
            get_url=f"{base}?{query}&X-Amz-Signature={signature}get",
            head_url=f"{base}?{query}&X-Amz-Signature={signature}head",
        )


def _make_handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, *, head: bool) -> None:
            received = Received(
                method=self.command,
                path=self.path,
                headers=dict(self.headers.items()),
                range=self.headers.get("Range"),
            )
            with state.lock:
                index = len(state.requests)
                state.requests.append(received)
                data, etag = state.data, state.etag
            if state.on_request is not None:
                state.on_request(received)
            fault = state.fault(received, index) if state.fault else None
            fault = fault or Fault()

            if fault.status is not None:
                self._error(received, fault.status, fault.code, fault.message, head=head)
                return
            if_match = self.headers.get("If-Match")
            if if_match is not None and if_match != etag:
                self._error(
                    received,
                    412,
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                    head=head,
                )
                return

            start, end, status = 0, len(data) - 1, 200
            range_header = self.headers.get("Range")
            if range_header and not fault.ignore_range and not head:
                first, last = range_header.removeprefix("bytes=").split("-")
                start, end = int(first), min(int(last), len(data) - 1)
                status = 206
            body = data[start : end + 1]
            received.status = status
            self.send_response(status)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", "Wed, 01 Jan 2025 00:00:00 GMT")
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header(
                    "Content-Range", fault.content_range or f"bytes {start}-{end}/{len(data)}"
                )
            self.end_headers()
            if head:
                return
            self._send_body(body, fault)

        def _send_body(self, body: bytes, fault: Fault) -> None:
            cut = len(body)
            for limit in (fault.reset_after, fault.truncate_after, fault.stall_after):
                if limit is not None:
                    cut = min(cut, limit)
            view = memoryview(body)
            if fault.bytes_per_second is not None:
                piece = 64 * 1024
                try:
                    for offset in range(0, len(body), piece):
                        self.wfile.write(view[offset : offset + piece])
                        self.wfile.flush()
                        time.sleep(piece / fault.bytes_per_second)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                return
            try:
                for offset in range(0, cut, MIB):
                    self.wfile.write(view[offset : min(cut, offset + MIB)])
                if fault.stall_after is not None and cut < len(body):
                    self.wfile.flush()
                    time.sleep(fault.stall_seconds)
                    self.wfile.write(view[cut:])
                    return
                if fault.reset_after is not None and cut < len(body):
                    self.wfile.flush()
                    # A reset discards what the client has not read yet, so give it time
                    # to read what was sent.
                    time.sleep(0.2)
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                if fault.truncate_after is not None and cut < len(body):
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for offset in range(cut, len(body), MIB):
                    self.wfile.write(view[offset : offset + MIB])
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _error(
            self, received: Received, status: int, code: str, message: str, *, head: bool
        ) -> None:
            received.status = status
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if head else str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


def make_parquet(target_size: int, *, seed: int = 0) -> bytes:
    """Return a Parquet file of about ``target_size`` bytes with incompressible content."""
    rows = max(1, target_size // 40)
    rng = pa.array([hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:32] for i in range(rows)])
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "outputs": rng})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="none", row_group_size=max(1, rows // 4))
    return buffer.getvalue()


def make_parquet_of_size(size: int, *, seed: int = 0) -> bytes:
    """Return a valid Parquet file of exactly ``size`` bytes (at least about 2 KiB)."""
    rows = max(1, (size - 2048) // 108)
    values = [hashlib.sha256(f"{seed}-{i}".encode()).digest() * 3 + b"...." for i in range(rows)]

    def write(padding: int) -> bytes:
        # Without statistics and dictionary encoding, each byte of the last value adds one
        # byte to the file.
        table = pa.table({"outputs": pa.array([*values, b"x" * padding], pa.binary())})
        buffer = io.BytesIO()
        pq.write_table(
            table, buffer, compression="none", write_statistics=False, use_dictionary=False
        )
        return buffer.getvalue()

    padding = max(0, size - len(write(0)))
    for _ in range(5):
        data = write(padding)
        if len(data) == size:
            return data
        padding += size - len(data)
    raise AssertionError(f"could not build a Parquet file of exactly {size} bytes")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FAST = TransferSettings(
    part_size_bytes=1 * MIB,
    max_concurrency=4,
    backoff_base_seconds=0.01,
    backoff_max_seconds=0.05,
    read_timeout_seconds=2.0,
    progress_interval_seconds=0.2,
)


SIGNATURE_MISMATCH = Fault(
    status=403,
    code="SignatureDoesNotMatch",
    message="The request signature we calculated does not match the signature you provided.",
)


@pytest.fixture
def artifact() -> bytes:
    return make_parquet(5 * MIB + 12345)


@pytest.fixture
def server(artifact: bytes) -> Iterator[ObjectServer]:
    with ObjectServer(artifact) as running:
        yield running


def _get_requests(server: ObjectServer) -> list[Received]:
    return [request for request in server.requests if request.method == "GET"]


def test_download_local_matches_source(server: ObjectServer, artifact: bytes, tmp_path: Path):
    urls = server.urls()
    result = download_artifact(lambda: server.urls(), str(tmp_path) + "/", urls=urls, settings=FAST)

    path = tmp_path / FILENAME
    assert sha256(path.read_bytes()) == sha256(artifact)
    assert result.size_bytes == len(artifact)
    assert result.bytes_transferred == len(artifact)
    assert result.resumed_bytes == 0
    assert result.uri == f"file://{path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


def test_requests_carry_only_needed_headers(server: ObjectServer, tmp_path: Path):
    urls = server.urls()
    download_artifact(lambda: server.urls(), str(tmp_path / "a.parquet"), urls=urls, settings=FAST)

    allowed = {"host", "accept-encoding", "range", "if-match"}
    for request in server.requests:
        names = {name.lower() for name in request.headers}
        assert names <= allowed, request.headers
        assert request.headers.get("Accept-Encoding") == "identity"
    heads = [request for request in server.requests if request.method == "HEAD"]
    assert len(heads) == 1
    assert "X-Amz-Signature=" + CANARY_SIGNATURE + "head" in heads[0].path
    assert all(r.path.rsplit(CANARY_SIGNATURE, 1)[1] == "get" for r in _get_requests(server))


def test_url_sent_byte_for_byte(server: ObjectServer, tmp_path: Path):
    urls = server.urls()
    download_artifact(lambda: server.urls(), str(tmp_path / "a.parquet"), urls=urls, settings=FAST)

    expected_path = urls.get_url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    for request in _get_requests(server):
        assert request.path == "/" + expected_path


def test_given_head_skips_head_request(server: ObjectServer, artifact: bytes, tmp_path):
    urls = server.urls()
    head = head_artifact(urls, settings=FAST)
    before = len(server.requests)

    download_artifact(
        lambda: server.urls(), str(tmp_path / "a.parquet"), urls=urls, head=head, settings=FAST
    )

    made = server.requests[before:]
    parts = -(-len(artifact) // MIB)
    assert [request.method for request in made].count("HEAD") == 0
    assert len(made) == parts
    ranges = sorted((int(r.range.split("=")[1].split("-")[0]), r.headers["If-Match"]) for r in made)
    assert [start for start, _ in ranges] == [i * MIB for i in range(parts)]
    assert {etag for _, etag in ranges} == {head.etag}


def test_head_artifact_reads_etag_and_size(server: ObjectServer, artifact: bytes):
    head = head_artifact(server.urls(), settings=FAST)

    assert head.etag == '"etag-v1"'
    assert head.content_length == len(artifact)
    assert head.last_modified is not None
    assert [request.method for request in server.requests] == ["HEAD"]


def test_head_artifact_retries_503(server: ObjectServer):
    server.set_fault(
        lambda request, index: Fault(status=503, code="SlowDown") if index < 2 else None
    )

    head = head_artifact(server.urls(), settings=FAST)

    assert head.etag == '"etag-v1"'
    assert len(server.requests) == 3


def test_memory_destination_matches_source(server: ObjectServer, artifact: bytes):
    urls = server.urls()
    result = download_artifact(
        lambda: server.urls(), "memory://transfer-test/out/", urls=urls, settings=FAST
    )

    fs = fsspec.filesystem("memory")
    path = f"/transfer-test/out/{FILENAME}"
    assert sha256(fs.cat_file(path)) == sha256(artifact)
    assert result.uri == f"memory://{path}"
    assert fs.ls("/transfer-test/out", detail=False) == [path]
    fs.rm("/transfer-test", recursive=True)


def test_reset_mid_part_resumes_from_last_byte(tmp_path: Path):
    # Bytes arrive in chunks of read_chunk_bytes (1 MiB), so a reset 2.5 MiB into a part
    # keeps at least the first 2 MiB and the retry requests the rest.
    data = make_parquet(9 * MIB)
    part = 4 * MIB
    broken: list[Received] = []

    def hook(request: Received, index: int) -> Fault | None:
        if request.range == f"bytes={part}-{2 * part - 1}" and not broken:
            broken.append(request)
            return Fault(reset_after=2 * MIB + MIB // 2)
        return None

    settings = TransferSettings(part_size_bytes=part, max_concurrency=3, backoff_base_seconds=0.01)
    with ObjectServer(data) as server:
        server.set_fault(hook)
        result = download_artifact(
            lambda: server.urls(),
            str(tmp_path / "a.parquet"),
            urls=server.urls(),
            settings=settings,
        )
        for_part = [
            r for r in _get_requests(server) if r.range and r.range.endswith(f"-{2 * part - 1}")
        ]

    assert sha256((tmp_path / "a.parquet").read_bytes()) == sha256(data)
    assert len(for_part) == 2
    retry_start = int(for_part[1].range.removeprefix("bytes=").split("-")[0])
    # The retry requests only what had not arrived, after at least 2 MiB of full chunks.
    assert part + 2 * MIB <= retry_start <= part + 2 * MIB + MIB // 2
    assert result.bytes_transferred == len(data)


def test_truncated_body_is_retried(server: ObjectServer, artifact: bytes, tmp_path: Path):
    server.set_fault(
        lambda request, index: (
            Fault(truncate_after=MIB // 2) if request.method == "GET" and index == 1 else None
        )
    )
    download_artifact(
        lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
    )

    assert sha256((tmp_path / "a.parquet").read_bytes()) == sha256(artifact)


def test_stalled_body_is_retried(server: ObjectServer, artifact: bytes, tmp_path: Path):
    settings = TransferSettings(
        part_size_bytes=MIB,
        max_concurrency=2,
        read_timeout_seconds=0.5,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.02,
    )
    server.set_fault(
        lambda request, index: (
            Fault(stall_after=1000, stall_seconds=3.0)
            if request.method == "GET" and index == 1
            else None
        )
    )
    started = time.monotonic()
    download_artifact(
        lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=settings
    )

    assert sha256((tmp_path / "a.parquet").read_bytes()) == sha256(artifact)
    assert time.monotonic() - started < 3.0


def test_wrong_content_range_is_rejected(server: ObjectServer, tmp_path: Path):
    server.set_fault(
        lambda request, index: (
            Fault(content_range="bytes 0-99/100") if request.method == "GET" else None
        )
    )
    destination = tmp_path / "a.parquet"
    destination.write_bytes(b"earlier file")

    with pytest.raises(StorageError, match="Content-Range") as caught:
        download_artifact(
            lambda: server.urls(), str(destination), urls=server.urls(), settings=FAST
        )

    assert caught.value.code == "InvalidContentRange"
    assert destination.read_bytes() == b"earlier file"
    assert CANARY_SIGNATURE not in str(caught.value)


def test_range_ignored_falls_back_to_single_stream(
    server: ObjectServer, artifact: bytes, tmp_path: Path
):
    server.set_fault(lambda request, index: Fault(ignore_range=True))

    download_artifact(
        lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
    )

    assert sha256((tmp_path / "a.parquet").read_bytes()) == sha256(artifact)
    assert any(r.range is None for r in _get_requests(server))


def test_range_ignored_into_memory(server: ObjectServer, artifact: bytes):
    server.set_fault(lambda request, index: Fault(ignore_range=True))

    download_artifact(
        lambda: server.urls(), "memory://ignored-range/a.parquet", urls=server.urls(), settings=FAST
    )

    fs = fsspec.filesystem("memory")
    assert sha256(fs.cat_file("/ignored-range/a.parquet")) == sha256(artifact)
    assert fs.ls("/ignored-range", detail=False) == ["/ignored-range/a.parquet"]
    fs.rm("/ignored-range", recursive=True)


def test_replaced_object_restarts_on_new_version(
    server: ObjectServer, artifact: bytes, tmp_path: Path
):
    replacement = make_parquet(4 * MIB, seed=7)

    def on_request(request: Received) -> None:
        gets = [r for r in server.state.requests if r.method == "GET"]
        if len(gets) == 3 and server.state.etag == '"etag-v1"':
            server.state.data, server.state.etag = replacement, '"etag-v2"'

    server.state.on_request = on_request
    result = download_artifact(
        lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
    )

    assert result.etag == '"etag-v2"'
    assert sha256((tmp_path / "a.parquet").read_bytes()) == sha256(replacement)


def test_replaced_twice_raises_artifact_changed(server: ObjectServer, tmp_path: Path):
    versions = iter(range(2, 100))

    def on_request(request: Received) -> None:
        if request.method == "GET":
            version = next(versions)
            server.state.data = make_parquet(3 * MIB, seed=version)
            server.state.etag = f'"etag-v{version}"'

    server.state.on_request = on_request
    settings = TransferSettings(
        part_size_bytes=MIB, max_concurrency=1, backoff_base_seconds=0.01, max_version_restarts=1
    )
    with pytest.raises(ArtifactChangedError) as caught:
        download_artifact(
            lambda: server.urls(),
            str(tmp_path / "a.parquet"),
            urls=server.urls(),
            settings=settings,
        )

    assert caught.value.expected_etag != caught.value.actual_etag
    assert str(caught.value.expected_etag) in str(caught.value)
    assert str(caught.value.actual_etag) in str(caught.value)
    assert not (tmp_path / "a.parquet").exists()
    assert list(tmp_path.iterdir()) == []


def test_expected_etag_mismatch_fails_before_download(server: ObjectServer, tmp_path: Path):
    with pytest.raises(ArtifactChangedError, match="not the expected"):
        download_artifact(
            lambda: server.urls(),
            str(tmp_path / "a.parquet"),
            urls=server.urls(),
            expected_etag='"other"',
            settings=FAST,
        )

    assert _get_requests(server) == []


def test_expired_url_is_refreshed(server: ObjectServer, artifact: bytes, tmp_path: Path):
    calls: list[int] = []

    def get_urls() -> ResultsDownloadUrl:
        calls.append(1)
        return server.urls(signature=CANARY_SIGNATURE[:-4] + f"{len(calls):04d}")

    first = server.urls()
    server.set_fault(
        lambda request, index: (
            Fault(status=403, code="AccessDenied", message="Request has expired")
            if request.method == "GET" and CANARY_SIGNATURE + "get" in request.path
            else None
        )
    )
    download_artifact(get_urls, str(tmp_path / "a.parquet"), urls=first, settings=FAST)

    assert sha256((tmp_path / "a.parquet").read_bytes()) == sha256(artifact)
    # Several workers saw the expiry at once; one refresh served them all.
    assert len(calls) == 1


def test_refreshed_urls_that_keep_expiring_fail(server: ObjectServer, tmp_path: Path):
    calls: list[int] = []

    def get_urls() -> ResultsDownloadUrl:
        calls.append(1)
        return server.urls()

    server.set_fault(
        lambda request, index: (
            Fault(status=400, code="ExpiredRequest", message="Request has expired")
            if request.method == "GET"
            else None
        )
    )
    settings = TransferSettings(part_size_bytes=MIB, max_url_refreshes=3)
    with pytest.raises(StorageError, match="max_url_refreshes=3"):
        download_artifact(
            get_urls, str(tmp_path / "a.parquet"), urls=server.urls(), settings=settings
        )

    assert len(calls) == 3


def test_signature_mismatch_fails_at_once(server: ObjectServer, tmp_path: Path):
    server.set_fault(lambda request, index: SIGNATURE_MISMATCH if request.method == "GET" else None)
    with pytest.raises(StorageError) as caught:
        download_artifact(
            lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
        )

    assert caught.value.status_code == 403
    assert caught.value.code == "SignatureDoesNotMatch"
    assert len(_get_requests(server)) <= FAST.max_concurrency
    assert caught.value.__context__ is None
    assert CANARY_SIGNATURE not in repr(caught.value)


def test_missing_object_raises_404(server: ObjectServer, tmp_path: Path):
    server.set_fault(
        lambda request, index: Fault(
            status=404, code="NoSuchKey", message="The key does not exist."
        )
    )
    with pytest.raises(StorageError) as caught:
        download_artifact(
            lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
        )

    assert caught.value.status_code == 404


def test_truncated_parquet_is_not_published(tmp_path: Path):
    data = make_parquet(3 * MIB)[:-1000]
    destination = tmp_path / "a.parquet"
    destination.write_bytes(b"earlier file")
    with ObjectServer(data) as server, pytest.raises(DownloadError, match="PAR1"):
        download_artifact(
            lambda: server.urls(), str(destination), urls=server.urls(), settings=FAST
        )

    assert destination.read_bytes() == b"earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_truncated_parquet_not_published_to_memory():
    data = make_parquet(3 * MIB)[:-1000]
    with ObjectServer(data) as server, pytest.raises(DownloadError, match="PAR1"):
        download_artifact(
            lambda: server.urls(), "memory://truncated/a.parquet", urls=server.urls(), settings=FAST
        )

    fs = fsspec.filesystem("memory")
    assert not fs.exists("/truncated/a.parquet")
    leftovers = fs.ls("/truncated", detail=False) if fs.exists("/truncated") else []
    assert leftovers == []


# Part boundaries, empty and one-part artifacts


@pytest.mark.parametrize(
    "size",
    [3 * MIB - 1, 3 * MIB, 3 * MIB + 1, MIB // 2, MIB],
    ids=["one-less", "multiple", "one-more", "one-part-small", "one-part-exact"],
)
@pytest.mark.parametrize("kind", ["local", "memory"])
def test_part_boundaries_give_identical_file(size: int, kind: str, tmp_path: Path):
    data = make_parquet_of_size(size, seed=size)
    assert len(data) == size
    destination = (
        str(tmp_path / "a.parquet") if kind == "local" else f"memory://bounds-{size}/a.parquet"
    )

    with ObjectServer(data) as server:
        result = download_artifact(
            lambda: server.urls(), destination, urls=server.urls(), settings=FAST
        )
        gets = _get_requests(server)

    if kind == "local":
        published = (tmp_path / "a.parquet").read_bytes()
    else:
        fs = fsspec.filesystem("memory")
        published = fs.cat_file(f"/bounds-{size}/a.parquet")
        fs.rm(f"/bounds-{size}", recursive=True)
    assert sha256(published) == sha256(data)
    assert result.size_bytes == size
    expected_parts = -(-size // MIB)
    assert len(gets) == expected_parts
    expected_ranges = {
        f"bytes={i * MIB}-{min((i + 1) * MIB, size) - 1}" for i in range(expected_parts)
    }
    assert {request.range for request in gets} == expected_ranges


def test_empty_artifact_fails_parquet_check(tmp_path: Path):
    destination = tmp_path / "a.parquet"
    with ObjectServer(b"") as server, pytest.raises(DownloadError, match="0 bytes, too short"):
        download_artifact(
            lambda: server.urls(), str(destination), urls=server.urls(), settings=FAST
        )

    assert not destination.exists()
    assert list(tmp_path.iterdir()) == []


def test_empty_artifact_downloads_without_parquet_check(tmp_path: Path):
    destination = tmp_path / "a.parquet"
    settings = TransferSettings(verify_parquet=False)
    with ObjectServer(b"") as server:
        result = download_artifact(
            lambda: server.urls(), str(destination), urls=server.urls(), settings=settings
        )
        gets = _get_requests(server)

    assert destination.read_bytes() == b""
    assert result.size_bytes == 0
    assert result.bytes_transferred == 0
    # The HEAD established the size, so no GET is needed.
    assert gets == []
    assert list(tmp_path.iterdir()) == [destination]


def test_empty_artifact_to_memory_without_parquet_check():
    with ObjectServer(b"") as server:
        download_artifact(
            lambda: server.urls(),
            "memory://empty-artifact/a.parquet",
            urls=server.urls(),
            settings=TransferSettings(verify_parquet=False),
        )

    fs = fsspec.filesystem("memory")
    assert fs.cat_file("/empty-artifact/a.parquet") == b""
    fs.rm("/empty-artifact", recursive=True)


def test_not_parquet_downloads_when_check_disabled(tmp_path: Path):
    data = bytes(range(256)) * 10000
    with ObjectServer(data) as server:
        download_artifact(
            lambda: server.urls(),
            str(tmp_path / "a.bin"),
            urls=server.urls(),
            settings=TransferSettings(part_size_bytes=MIB, verify_parquet=False),
        )

    assert (tmp_path / "a.bin").read_bytes() == data


def test_size_mismatch_with_api_fails_before_download(server: ObjectServer, tmp_path: Path):
    urls = server.urls()
    server.set_object(server.state.data + b"extra", '"etag-v1"')

    with pytest.raises(DownloadError, match="bytes") as caught:
        download_artifact(lambda: urls, str(tmp_path / "a.parquet"), urls=urls, settings=FAST)

    assert str(len(server.state.data)) in str(caught.value)
    assert str(urls.artifact.size_bytes) in str(caught.value)
    assert _get_requests(server) == []


# Streaming into a non-seekable writer


def test_out_of_order_parts_are_written_in_order(monkeypatch: pytest.MonkeyPatch):
    from dagster_sutro.transfer import ordered

    data = make_parquet(8 * MIB, seed=3)
    pending_seen: list[int] = []
    original_put = ordered.OrderedWriter.put

    def recording_put(self, index, chunks):  # type: ignore[no-untyped-def]
        original_put(self, index, chunks)
        pending_seen.append(self.pending_parts)

    monkeypatch.setattr(ordered.OrderedWriter, "put", recording_put)
    settings = TransferSettings(part_size_bytes=MIB, max_concurrency=3, read_timeout_seconds=5)
    with ObjectServer(data) as server:
        # Part 0 stalls, so later parts finish first and wait in the reorder buffer.
        server.set_fault(
            lambda request, index: (
                Fault(stall_after=10, stall_seconds=0.5)
                if request.range == f"bytes=0-{MIB - 1}"
                else None
            )
        )
        download_artifact(
            lambda: server.urls(),
            "memory://reorder/a.parquet",
            urls=server.urls(),
            settings=settings,
        )

    fs = fsspec.filesystem("memory")
    assert sha256(fs.cat_file("/reorder/a.parquet")) == sha256(data)
    fs.rm("/reorder", recursive=True)
    assert max(pending_seen) >= 1
    assert max(pending_seen) < settings.max_concurrency


# Resume across calls


def _fail_after_gets(count: int, fault: Fault) -> FaultHook:
    def hook(request: Received, index: int) -> Fault | None:
        gets_before = sum(1 for r in hook.seen if r.method == "GET")  # type: ignore[attr-defined]
        hook.seen.append(request)  # type: ignore[attr-defined]
        if request.method == "GET" and gets_before >= count:
            return fault
        return None

    hook.seen = []  # type: ignore[attr-defined]
    return hook


def test_interrupted_download_resumes_missing_parts(tmp_path: Path):
    data = make_parquet(10 * MIB, seed=5)
    parts = -(-len(data) // MIB)
    settings = TransferSettings(part_size_bytes=MIB, max_concurrency=1)
    destination = tmp_path / "a.parquet"
    destination.write_bytes(b"earlier version")

    with ObjectServer(data) as server:
        server.set_fault(_fail_after_gets(4, SIGNATURE_MISMATCH))
        with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
            download_artifact(
                lambda: server.urls(), str(destination), urls=server.urls(), settings=settings
            )

        assert destination.read_bytes() == b"earlier version"
        state = (tmp_path / "a.parquet.sutro-partial.json").read_text()
        assert CANARY_SIGNATURE not in state
        assert "127.0.0.1" not in state
        assert (tmp_path / "a.parquet.sutro-partial").stat().st_size == len(data)

        server.set_fault(None)
        before = len(server.requests)
        result = download_artifact(
            lambda: server.urls(), str(destination), urls=server.urls(), settings=settings
        )
        resumed_gets = [r for r in server.requests[before:] if r.method == "GET"]

    assert sha256(destination.read_bytes()) == sha256(data)
    assert result.resumed_bytes == 4 * MIB
    assert result.bytes_transferred == len(data) - 4 * MIB
    assert len(resumed_gets) == parts - 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_resume_is_discarded_for_new_etag(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    old = make_parquet(6 * MIB, seed=1)
    new = make_parquet(6 * MIB, seed=2)
    settings = TransferSettings(part_size_bytes=MIB, max_concurrency=1)
    destination = tmp_path / "a.parquet"

    with ObjectServer(old) as server:
        server.set_fault(_fail_after_gets(3, SIGNATURE_MISMATCH))
        with pytest.raises(StorageError):
            download_artifact(
                lambda: server.urls(), str(destination), urls=server.urls(), settings=settings
            )

        server.set_fault(None)
        server.set_object(new, '"etag-v2"')
        before = len(server.requests)
        with caplog.at_level(logging.INFO, logger="dagster_sutro.transfer"):
            result = download_artifact(
                lambda: server.urls(), str(destination), urls=server.urls(), settings=settings
            )
        gets = [r for r in server.requests[before:] if r.method == "GET"]

    assert sha256(destination.read_bytes()) == sha256(new)
    assert result.resumed_bytes == 0
    assert len(gets) == -(-len(new) // MIB)
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "Discarding the partial download" in m and '"etag-v1"' in m and '"etag-v2"' in m
        for m in messages
    )


def test_integrity_failure_deletes_partial(tmp_path: Path):
    data = make_parquet(3 * MIB)[:-100]
    with ObjectServer(data) as server, pytest.raises(DownloadError):
        download_artifact(
            lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
        )

    assert list(tmp_path.iterdir()) == []


# S3 destinations


def test_s3_failure_mid_download_publishes_nothing(
    s3_bucket: str, s3_storage_options: dict, moto_endpoint: str
):
    import boto3

    data = make_parquet(40 * MIB, seed=9)
    settings = TransferSettings(part_size_bytes=4 * MIB, max_concurrency=1)
    with ObjectServer(data) as server:
        # Six parts (24 MiB) arrive, so one 16 MiB upload part is sent before the failure.
        server.set_fault(_fail_after_gets(6, SIGNATURE_MISMATCH))
        with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
            download_artifact(
                lambda: server.urls(),
                f"s3://{s3_bucket}/out/a.parquet",
                urls=server.urls(),
                storage_options=s3_storage_options,
                settings=settings,
            )

    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_small_artifact_is_identical(s3_bucket: str, s3_storage_options: dict):
    data = make_parquet(3 * MIB, seed=4)
    with ObjectServer(data) as server:
        result = download_artifact(
            lambda: server.urls(),
            f"s3://{s3_bucket}/out/",
            urls=server.urls(),
            storage_options=s3_storage_options,
            settings=FAST,
        )

    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert sha256(fs.cat_file(result.uri)) == sha256(data)


# Log lines


def test_start_progress_and_end_lines(tmp_path: Path):
    lines: list[tuple[str, str]] = []

    class Recorder:
        def debug(self, message: str) -> None:
            lines.append(("debug", message))

        def info(self, message: str) -> None:
            lines.append(("info", message))

        def warning(self, message: str) -> None:
            lines.append(("warning", message))

        def error(self, message: str) -> None:
            lines.append(("error", message))

    data = make_parquet_of_size(6 * MIB)
    settings = TransferSettings(
        part_size_bytes=MIB,
        max_concurrency=2,
        progress_interval_seconds=0.1,
        read_timeout_seconds=5,
    )
    with ObjectServer(data) as server:
        server.set_fault(
            lambda request, index: (
                Fault(stall_after=MIB // 2, stall_seconds=0.4) if request.method == "GET" else None
            )
        )
        download_artifact(
            lambda: server.urls(),
            str(tmp_path / "a.parquet"),
            urls=server.urls(),
            settings=settings,
            logger=Recorder(),
        )

    messages = [message for _, message in lines]
    assert messages[0].startswith(f"Downloading {KEY} (")
    assert "6 part(s)" in messages[0]
    assert "2 connection(s)" in messages[0]
    assert f"file://{tmp_path}/a.parquet" in messages[0]
    progress = [m for m in messages if "%" in m and "MiB/s" in m and "ETA" in m]
    assert progress
    assert messages[-1].startswith(f"Downloaded {KEY} to file://")
    assert "resumed" in messages[-1]
    assert all(CANARY_SIGNATURE not in message for message in messages)


def test_urls_about_to_expire_are_refreshed_first(server: ObjectServer, tmp_path: Path):
    calls: list[ResultsDownloadUrl] = []

    def get_urls() -> ResultsDownloadUrl:
        calls.append(server.urls(signature=CANARY_SIGNATURE[:-5] + "fresh"))
        return calls[-1]

    # Signed 3590 s ago for 3600 s: 10 s left, less than the 30 s margin.
    stale = server.urls(age_seconds=3590)
    download_artifact(get_urls, str(tmp_path / "a.parquet"), urls=stale, settings=FAST)

    assert len(calls) == 1
    gets = _get_requests(server)
    assert gets
    assert all("fresh" in request.path for request in gets)


def test_short_lived_urls_not_refreshed_early(server: ObjectServer, tmp_path: Path):
    calls: list[int] = []

    def get_urls() -> ResultsDownloadUrl:
        calls.append(1)
        return server.urls(expires_in_seconds=20)

    # A 20 s lifetime is below the 30 s margin; the margin becomes half the lifetime.
    download_artifact(
        get_urls,
        str(tmp_path / "a.parquet"),
        urls=server.urls(expires_in_seconds=20),
        settings=FAST,
    )

    assert calls == []


def test_single_part_accepts_full_body(tmp_path: Path):
    data = make_parquet_of_size(MIB // 2)
    with ObjectServer(data) as server:
        server.set_fault(lambda request, index: Fault(ignore_range=True))
        download_artifact(
            lambda: server.urls(), str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST
        )
        gets = _get_requests(server)

    assert (tmp_path / "a.parquet").read_bytes() == data
    # The only part covers the whole object, so the 200 response is exactly what was requested.
    assert len(gets) == 1
    assert gets[0].status == 200


def _parquet_with_large_footer(footer_bytes: int) -> bytes:
    table = pa.table({"outputs": pa.array([f"row {i}" for i in range(1000)])})
    table = table.replace_schema_metadata({"padding": "p" * footer_bytes})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_footer_beyond_tail_buffer_read_back_from_temporary(monkeypatch: pytest.MonkeyPatch):
    from dagster_sutro.transfer import remote

    monkeypatch.setattr(remote, "TAIL_BUFFER_BYTES", 64 * 1024)
    data = _parquet_with_large_footer(600 * 1024)
    with ObjectServer(data) as server:
        download_artifact(
            lambda: server.urls(),
            "memory://big-footer/a.parquet",
            urls=server.urls(),
            settings=FAST,
        )

    fs = fsspec.filesystem("memory")
    assert fs.cat_file("/big-footer/a.parquet") == data
    fs.rm("/big-footer", recursive=True)


def test_footer_beyond_tail_buffer_fetched_for_s3(
    monkeypatch: pytest.MonkeyPatch, s3_bucket: str, s3_storage_options: dict
):
    from dagster_sutro.transfer import remote

    monkeypatch.setattr(remote, "TAIL_BUFFER_BYTES", 64 * 1024)
    data = _parquet_with_large_footer(600 * 1024)
    with ObjectServer(data) as server:
        result = download_artifact(
            lambda: server.urls(),
            f"s3://{s3_bucket}/out/a.parquet",
            urls=server.urls(),
            storage_options=s3_storage_options,
            settings=FAST,
        )
        gets = _get_requests(server)

    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert fs.cat_file(result.uri) == data
    footer_length = int.from_bytes(data[-8:-4], "little")
    # One GET per part, plus one for the footer, which the upload had already passed.
    assert len(gets) == -(-len(data) // MIB) + 1
    assert gets[-1].range == f"bytes={len(data) - footer_length - 8}-{len(data) - 1}"


def test_corrupt_footer_not_published_to_s3(s3_bucket: str, s3_storage_options: dict):
    data = bytearray(make_parquet(6 * MIB))
    footer_length = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer_length : -8] = b"\xff" * footer_length
    with ObjectServer(bytes(data)) as server, pytest.raises(DownloadError, match="parsed"):
        download_artifact(
            lambda: server.urls(),
            f"s3://{s3_bucket}/out/a.parquet",
            urls=server.urls(),
            storage_options=s3_storage_options,
            settings=FAST,
        )

    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert not fs.exists(f"{s3_bucket}/out/a.parquet")


_CHILD_DOWNLOAD = """
import json, sys
from dagster_sutro.models import ArtifactInfo, ResultsDownloadUrl
from dagster_sutro.transfer import TransferSettings, download_artifact
spec = json.loads(sys.argv[1])
urls = ResultsDownloadUrl(**{**spec["urls"], "artifact": ArtifactInfo(**spec["urls"]["artifact"])})
settings = TransferSettings(part_size_bytes=spec["part_size"], max_concurrency=spec["concurrency"])
download_artifact(lambda: urls, spec["destination"], urls=urls, settings=settings)
"""


def test_killed_download_loses_under_one_part(tmp_path: Path):
    data = make_parquet_of_size(24 * MIB, seed=11)
    part, concurrency = 4 * MIB, 2
    destination = tmp_path / "a.parquet"
    with ObjectServer(data) as server:
        server.set_fault(
            lambda request, index: (
                Fault(bytes_per_second=6 * MIB) if request.method == "GET" else None
            )
        )
        urls = server.urls()
        spec = {
            "urls": {
                "job_id": urls.job_id,
                "format": urls.format,
                "include_inputs": urls.include_inputs,
                "include_cumulative_logprobs": urls.include_cumulative_logprobs,
                "expires_in_seconds": urls.expires_in_seconds,
                "artifact": vars(urls.artifact),
                "get_url": urls.get_url,
                "head_url": urls.head_url,
            },
            "part_size": part,
            "concurrency": concurrency,
            "destination": str(destination),
        }
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_DOWNLOAD, json.dumps(spec)],
            cwd=Path(__file__).resolve().parent.parent,
        )
        state_path = tmp_path / "a.parquet.sutro-partial.json"
        deadline = time.monotonic() + 60
        recorded = 0
        # Kill the child once its state file records about half of the artifact.
        while time.monotonic() < deadline and child.poll() is None:
            if state_path.exists():
                try:
                    state = json.loads(state_path.read_text())
                except ValueError:
                    state = None
                if state is not None:
                    recorded = sum(
                        min(part, len(data) - first * part)
                        for first_last in state["finished_parts"]
                        for first in range(first_last[0], first_last[1] + 1)
                    ) + sum(written for _, written in state["partial_parts"])
                    if recorded >= len(data) // 2:
                        break
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        assert not destination.exists()
        on_disk = bytes_matching_per_part(
            (tmp_path / "a.parquet.sutro-partial").read_bytes(), data, part
        )

        server.set_fault(None)
        result = download_artifact(
            lambda: server.urls(),
            str(destination),
            urls=server.urls(),
            settings=TransferSettings(part_size_bytes=part, max_concurrency=concurrency),
        )

    assert sha256(destination.read_bytes()) == sha256(data)
    assert on_disk >= len(data) // 2
    assert result.resumed_bytes >= recorded
    assert result.resumed_bytes + result.bytes_transferred == len(data)
    # Of the bytes the killed process had written, only those after its last state write
    # (less than one part) are fetched again.
    assert result.resumed_bytes > on_disk - part


def test_head_403_refreshes_urls_once(server: ObjectServer, tmp_path: Path):
    calls: list[int] = []

    def get_urls() -> ResultsDownloadUrl:
        calls.append(1)
        return server.urls(signature=CANARY_SIGNATURE[:-5] + "fresh")

    # HEAD errors have no body, so an expired HEAD URL shows as a bare 403.
    server.set_fault(
        lambda request, index: (
            Fault(status=403, code="AccessDenied")
            if request.method == "HEAD" and "fresh" not in request.path
            else None
        )
    )
    download_artifact(get_urls, str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST)

    assert len(calls) == 1
    assert (tmp_path / "a.parquet").exists()


def test_head_403_with_fresh_urls_fails(server: ObjectServer, tmp_path: Path):
    calls: list[int] = []

    def get_urls() -> ResultsDownloadUrl:
        calls.append(1)
        return server.urls()

    server.set_fault(lambda request, index: Fault(status=403, code="AccessDenied"))
    with pytest.raises(StorageError) as caught:
        download_artifact(get_urls, str(tmp_path / "a.parquet"), urls=server.urls(), settings=FAST)

    assert caught.value.status_code == 403
    assert len(calls) == 1
    assert [request.method for request in server.requests] == ["HEAD", "HEAD"]
