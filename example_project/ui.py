"""Open the example project in the Dagster UI, offline, against the Sutro emulator.

The script starts the emulator with one seeded job, points ``SUTRO_API_URL``, ``SUTRO_API_KEY``
and ``SUTRO_DEMO_JOB_ID`` at it, and runs ``dagster dev`` on the example project with a
``DAGSTER_HOME`` under ``--workdir``. It resets that directory when it starts. Unless
``--no-materialize`` is given, it materializes ``sutro_results`` once through Dagster's
GraphQL API, so that the asset page shows a materialization right away. Press Ctrl-C to stop;
the script then stops ``dagster dev`` and the emulator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dagster_sutro.testing import SutroEmulator

DEMO_JOB_ID = "job-demo-0001"
ASSET_PATH = ["sutro_results"]
CODE_MODULE = "sutro_example.definitions"
SERVER_START_TIMEOUT_SECONDS = 120.0
RUN_TIMEOUT_SECONDS = 120.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0

DAGSTER_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
"""

# The location is named after the project folder, as dg names it, so dg's component discovery
# finds the same name.
WORKSPACE_YAML = f"""\
load_from:
  - python_module:
      module_name: {CODE_MODULE}
      location_name: example_project
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchSutroResults($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

LOCATIONS_QUERY = """
query SutroLocations {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on Error { message }
  }
}
"""

RUN_STATUS_QUERY = """
query SutroRunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on Error { message }
  }
}
"""

FINISHED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})


def main() -> int:
    """Start the emulator and ``dagster dev``, and run until Ctrl-C."""
    args = _parse_args()
    workdir = args.workdir.resolve()
    dagster_home = workdir / "dagster_home"
    results = workdir / "results"
    shutil.rmtree(workdir, ignore_errors=True)
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    workspace = workdir / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    # `timeout` and service managers stop with SIGTERM; clean up as for Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    with SutroEmulator(root_dir=workdir / "emulator") as emulator:
        job_id = emulator.add_job(job_id=DEMO_JOB_ID, num_rows=args.rows)
        env = {
            **os.environ,
            "SUTRO_API_URL": emulator.api_url,
            "SUTRO_API_KEY": emulator.api_key,
            "SUTRO_DEMO_JOB_ID": job_id,
            "DAGSTER_HOME": str(dagster_home),
        }
        port = args.port or free_port(args.host)
        base_url = f"http://{args.host}:{port}"
        print(f"Emulator: Sutro API at {emulator.api_url}, seeded job {job_id}.", flush=True)
        print(f"DAGSTER_HOME={dagster_home}", flush=True)

        command = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(workspace),
            "-h",
            args.host,
            "-p",
            str(port),
        ]
        # A session of its own: Ctrl-C in the terminal reaches this script only, and the script
        # then sends dagster dev a single SIGINT.
        server = subprocess.Popen(command, env=env, cwd=workdir, start_new_session=True)
        try:
            wait_for_server(base_url, SERVER_START_TIMEOUT_SECONDS, process=server)
            print(f"Dagster UI: {base_url}", flush=True)
            if args.materialize:
                _materialize_once(base_url, job_id, results)
            print(f"Asset page: {base_url}/assets/{'/'.join(ASSET_PATH)}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            return server.wait()
        except KeyboardInterrupt:
            print("\nStopping dagster dev and the emulator.", flush=True)
            return 0
        finally:
            stop_process(server, SHUTDOWN_TIMEOUT_SECONDS)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="UI state folder.")
    parser.add_argument("--host", default="127.0.0.1", help="Address the UI listens on.")
    parser.add_argument("--port", type=int, default=0, help="UI port; 0 picks a free port.")
    parser.add_argument("--rows", type=int, default=2000, help="Rows in the seeded job.")
    parser.add_argument(
        "--materialize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Materialize sutro_results once after the UI is up.",
    )
    return parser.parse_args()


def _materialize_once(base_url: str, job_id: str, results: Path) -> None:
    print(f"Materializing sutro_results for job {job_id} ...", flush=True)
    run_id = launch_materialization(base_url, job_id=job_id, destination=f"{results}/")
    status = wait_for_run(base_url, run_id, RUN_TIMEOUT_SECONDS)
    print(f"Run {run_id} finished with status {status}.", flush=True)


def free_port(host: str) -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def graphql(base_url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one GraphQL request to the webserver and return its ``data``.

    Raises:
        RuntimeError: If the response carries GraphQL errors.
    """
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL request failed: {payload['errors']}")
    return payload["data"]


def wait_for_server(
    base_url: str, timeout_seconds: float, *, process: subprocess.Popen | None = None
) -> None:
    """Wait until the webserver responds and the code location has loaded.

    Raises:
        TimeoutError: If that takes longer than ``timeout_seconds``.
        RuntimeError: If ``process`` exits first.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"The Dagster server exited early with code {process.returncode}.")
        try:
            data = graphql(base_url, LOCATIONS_QUERY)
            repositories = data["repositoriesOrError"]
            if repositories["__typename"] == "RepositoryConnection" and repositories["nodes"]:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"The Dagster UI at {base_url} did not load within {timeout_seconds} s.")


def launch_materialization(base_url: str, *, job_id: str, destination: str) -> str:
    """Launch a run of ``sutro_results`` for ``job_id`` with the ``launchRun`` mutation.

    Returns:
        The run id.

    Raises:
        RuntimeError: If the run could not be launched.
    """
    repositories = graphql(base_url, LOCATIONS_QUERY)["repositoriesOrError"]["nodes"]
    repository = repositories[0]
    op_name = "__".join(ASSET_PATH)
    variables = {
        "executionParams": {
            "selector": {
                "repositoryLocationName": repository["location"]["name"],
                "repositoryName": repository["name"],
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": ASSET_PATH}],
            },
            "runConfigData": {
                "ops": {op_name: {"config": {"job_id": job_id, "destination": destination}}}
            },
        }
    }
    result = graphql(base_url, LAUNCH_RUN_MUTATION, variables)["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchRun returned {result['__typename']}: {result}")
    return str(result["run"]["runId"])


def wait_for_run(base_url: str, run_id: str, timeout_seconds: float) -> str:
    """Poll a run until it finishes and return its final status.

    Raises:
        TimeoutError: If the run does not finish within ``timeout_seconds``.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        run = graphql(base_url, RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]
        if run["__typename"] == "Run" and run["status"] in FINISHED_RUN_STATUSES:
            return str(run["status"])
        time.sleep(0.5)
    raise TimeoutError(f"Run {run_id} did not finish within {timeout_seconds} s.")


def stop_process(process: subprocess.Popen, timeout_seconds: float) -> None:
    """Stop a server started in its own session: SIGINT, then SIGKILL to its process group.

    After the server exits, anything left in its process group (a code server whose parent
    died first) is killed too.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


if __name__ == "__main__":
    sys.exit(main())
