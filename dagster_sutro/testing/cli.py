"""Command line of the emulator: ``python -m dagster_sutro.testing <command>``.

Commands:

- ``serve`` starts the API and storage servers with a SUCCEEDED demo job and prints
  ``export SUTRO_API_URL=...``, ``export SUTRO_API_KEY=...`` and
  ``export SUTRO_DEMO_JOB_ID=...`` lines for a shell to ``eval``. It runs until SIGINT or
  SIGTERM.
- ``replace-artifact``, ``set-status`` and ``add-job`` call the admin endpoints of a running
  emulator found through ``SUTRO_API_URL`` and ``SUTRO_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from types import FrameType

from dagster_sutro.testing.emulator import SutroEmulator
from dagster_sutro.testing.store import JOB_STATES

DEFAULT_DEMO_JOB_ID = "job-demo-0001"
DEFAULT_DEMO_ROWS = 1000
ADMIN_TIMEOUT_SECONDS = 30


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        return _serve(arguments)
    if arguments.command == "replace-artifact":
        return _call_admin(f"/_emulator/jobs/{arguments.job_id}/replace-artifact", {})
    if arguments.command == "set-status":
        payload = {"status": arguments.status}
        if arguments.failure_reason is not None:
            payload["failure_reason"] = arguments.failure_reason
        return _call_admin(f"/_emulator/jobs/{arguments.job_id}/status", payload)
    if arguments.command == "add-job":
        fields: dict[str, object] = {"num_rows": arguments.rows, "status": arguments.status}
        if arguments.job_id is not None:
            fields["job_id"] = arguments.job_id
        return _call_admin("/_emulator/jobs", fields)
    parser.print_help(sys.stderr)
    return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dagster_sutro.testing",
        description="Local emulator of the Sutro Batch API and its object storage.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Run the emulator with a demo job until stopped.")
    serve.add_argument("--api-port", type=int, default=0, help="API port (0: ephemeral).")
    serve.add_argument("--storage-port", type=int, default=0, help="Storage port (0: ephemeral).")
    serve.add_argument("--api-key", default=None, help="API key to accept (default: random).")
    serve.add_argument("--job-id", default=DEFAULT_DEMO_JOB_ID, help="Id of the demo job.")
    serve.add_argument(
        "--rows", type=int, default=DEFAULT_DEMO_ROWS, help="Rows in the demo job's results."
    )
    serve.add_argument(
        "--target-size-bytes",
        type=int,
        default=None,
        help="Make the demo artifact about this many bytes of random data instead of --rows.",
    )
    serve.add_argument(
        "--storage-bytes-per-second",
        type=float,
        default=None,
        help="Cap on each storage connection's body rate, in bytes per second (default: none).",
    )
    serve.add_argument(
        "--root-dir", default=None, help="Directory for artifacts (default: a temporary one)."
    )

    replace = commands.add_parser(
        "replace-artifact", help="Rebuild a job's artifact with new bytes and a new ETag."
    )
    replace.add_argument("--job-id", required=True, help="The job.")

    set_status = commands.add_parser("set-status", help="Change a job's state.")
    set_status.add_argument("--job-id", required=True, help="The job.")
    set_status.add_argument("--status", required=True, choices=JOB_STATES, help="The new state.")
    set_status.add_argument("--failure-reason", default=None, help="Message for a FAILED job.")

    add_job = commands.add_parser("add-job", help="Add a job to a running emulator.")
    add_job.add_argument("--job-id", default=None, help="The job id (default: random).")
    add_job.add_argument("--rows", type=int, default=DEFAULT_DEMO_ROWS, help="Rows of results.")
    add_job.add_argument("--status", default="SUCCEEDED", choices=JOB_STATES, help="The state.")
    return parser


def _serve(arguments: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    emulator = SutroEmulator(
        arguments.api_key,
        root_dir=arguments.root_dir,
        storage_bytes_per_second=arguments.storage_bytes_per_second,
        api_port=arguments.api_port,
        storage_port=arguments.storage_port,
    )
    with emulator:
        job_id = emulator.add_job(
            arguments.job_id,
            num_rows=arguments.rows,
            target_size_bytes=arguments.target_size_bytes,
            name="Emulator demo job",
        )
        # Build the default artifact now, so the first results-url call returns at once.
        emulator.artifact_path(job_id)
        print(f"export SUTRO_API_URL={emulator.api_url}")
        print(f"export SUTRO_API_KEY={emulator.api_key}")
        print(f"export SUTRO_DEMO_JOB_ID={job_id}", flush=True)
        print(
            f"Sutro emulator: API {emulator.api_url}, storage {emulator.storage_url}. "
            "Stop it with Ctrl+C.",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested.wait(0.5):
            pass
    print("Sutro emulator stopped.", file=sys.stderr, flush=True)
    return 0


def _call_admin(path: str, payload: dict[str, object]) -> int:
    api_url = os.environ.get("SUTRO_API_URL", "").rstrip("/").removesuffix("/v1")
    api_key = os.environ.get("SUTRO_API_KEY", "")
    if not api_url or not api_key:
        print(
            "SUTRO_API_URL and SUTRO_API_KEY must be set. Start `python -m "
            "dagster_sutro.testing serve` and export the lines it prints.",
            file=sys.stderr,
        )
        return 2

    request = urllib.request.Request(
        api_url + path,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Authorization": f"Key {api_key}", "Content-Type": "application/json"},
    )
    # The emulator listens on loopback, so proxy settings from the environment must not apply.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=ADMIN_TIMEOUT_SECONDS) as response:
            print(response.read().decode())
    except urllib.error.HTTPError as error:
        print(
            f"The emulator rejected the request: {error.code} {error.read().decode()}",
            file=sys.stderr,
        )
        return 1
    except urllib.error.URLError as error:
        print(f"Could not reach the emulator at {api_url}: {error.reason}", file=sys.stderr)
        return 1
    return 0
