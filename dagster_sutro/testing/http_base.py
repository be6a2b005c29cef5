"""Threaded HTTP/1.1 server plumbing shared by the emulated API and storage servers."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from dagster_sutro.testing.records import RecordHandle, RequestRecorder, ServerName

logger = logging.getLogger("dagster_sutro.testing")

# Errors that only mean the client went away. They are expected, so no traceback is logged.
CLIENT_GONE_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threaded server on 127.0.0.1 that tracks its connections so it can close them on stop.

    Args:
        port: The TCP port, 0 for an ephemeral one.
        handler: The request handler class.
        state: The emulator state the handlers serve (see ``SutroEmulator``).
        recorder: Where requests are recorded.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        *,
        state: Any,
        recorder: RequestRecorder,
    ) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.state = state
        self.recorder = recorder
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server_address[1])

    @property
    def origin(self) -> str:
        """The server's origin, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start_in_thread(self, name: str) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close every open connection and release the port."""
        self.stopping.set()
        self.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def track(self, connection: socket.socket) -> None:
        """Register an open connection."""
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a closed connection."""
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log unexpected handler errors. A client that disconnected is not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_GONE_ERRORS) or self.stopping.is_set():
            return
        logger.exception("Emulator request handler failed")


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 keep-alive, request recording, quiet logs.

    Subclasses set ``server_name`` and implement ``_handle``, which serves every method.
    """

    protocol_version = "HTTP/1.1"
    server_version = "SutroEmulator"
    sys_version = ""
    server_name: ServerName = "api"
    server: EmulatorHTTPServer

    record: RecordHandle | None = None

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        """Serve one request of any method."""
        raise NotImplementedError

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        self.record = None
        try:
            super().handle_one_request()
        except CLIENT_GONE_ERRORS:
            self.close_connection = True

    def version_string(self) -> str:
        return self.server_version

    # The request line contains presigned query strings, so http.server's own logging stays off.
    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def raw_path(self) -> str:
        """The request path without the query string, percent-encoding kept."""
        return self.path.split("?", 1)[0]

    @property
    def raw_query(self) -> str:
        """The query string without ``?``, as received."""
        return self.path.split("?", 1)[1] if "?" in self.path else ""

    def query_parameters(self) -> dict[str, str]:
        """Return the percent-decoded query parameters. A repeated name keeps its last value."""
        parameters = {}
        for item in self.raw_query.split("&"):
            if item:
                name, _, value = item.partition("=")
                parameters[unquote(name.replace("+", " "))] = unquote(value.replace("+", " "))
        return parameters

    def begin_record(self) -> RecordHandle:
        """Record the request that just arrived and return the record's handle."""
        self.record = self.server.recorder.start(
            self.server_name,
            method=self.command,
            path=self.raw_path,
            query=self.query_parameters(),
            headers=dict(self.headers.items()),
            time=self.server.state.clock.now(),
        )
        return self.record

    def discard_request_body(self) -> bytes:
        """Read the request body announced by Content-Length and return it."""
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length > 0 else b""

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.record is not None:
            self.record.set_status(code)
        super().send_response(code, message)

    def send_complete(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        include_body: bool = True,
    ) -> None:
        """Send a whole response with Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if include_body and body:
            self.send_body_bytes(body)

    def send_body_bytes(self, data: bytes) -> None:
        """Send body bytes and count them in the request's record.

        The bytes are counted before they are sent, so a client that has received a response
        always finds the full count in the record. A failed send takes its count back.
        """
        self.count_body_bytes(len(data))
        try:
            self.connection.sendall(data)
        except BaseException:
            self.count_body_bytes(-len(data))
            raise

    def count_body_bytes(self, count: int) -> None:
        """Add ``count`` (negative to take bytes back) to the record's body byte count."""
        if self.record is not None:
            self.record.add_body_bytes(count)
