"""moto's S3 server in a process of its own, so that it shares no GIL with the emulator.

Run as ``python -m benchmarks.moto_server``: it prints the endpoint URL on one line and
serves on 127.0.0.1 until its standard input is closed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 60


def serve() -> None:
    """Start the server, print its endpoint and wait for standard input to close."""
    from moto.server import ThreadedMotoServer

    # The server's werkzeug logger prints a line per request otherwise.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        print(f"http://{host}:{port}", flush=True)
        sys.stdin.read()
    finally:
        server.stop()


@contextmanager
def moto_process(cwd: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """Run the server in a child process and yield its endpoint and process id.

    Raises:
        RuntimeError: If the server does not print its endpoint.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.moto_server"],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().strip()
        if not endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(
                f"moto's server did not start (it printed {endpoint!r}, exit status "
                f"{process.poll()})."
            )
        yield endpoint, process.pid
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=STARTUP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    serve()
