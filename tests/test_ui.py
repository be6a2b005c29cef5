"""The example project in the Dagster UI, driven through GraphQL and read in headless Chromium.

The test starts ``example_project/ui.py`` (what ``make ui`` runs) on a free port, launches a
materialization of ``sutro_results`` with the ``launchRun`` mutation, waits for it to succeed,
and then renders the asset's page in Chromium. It saves screenshots to ``docs/``.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
UI_SCRIPT = REPO / "example_project" / "ui.py"
DOCS = REPO / "docs"
JOB_ID = "job-demo-0001"
NUM_ROWS = 300

SERVER_START_TIMEOUT_SECONDS = 90.0
RUN_TIMEOUT_SECONDS = 60.0
CHROMIUM_TIMEOUT_SECONDS = 60.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Chromium is not installed at {CHROMIUM}; install it with "
        "`apt-get install -y chromium` to run the browser test.",
    ),
    pytest.mark.timeout(300),
]


def _load_ui_module() -> Any:
    """Import ``example_project/ui.py``, which is a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("sutro_example_ui", UI_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The same GraphQL documents that `make ui` sends, so the test launches runs exactly as it does.
_UI = _load_ui_module()
LAUNCH_RUN = _UI.LAUNCH_RUN_MUTATION
REPOSITORIES = _UI.LOCATIONS_QUERY

RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

LATEST_MATERIALIZATION = """
query Latest($assetKey: AssetKeyInput!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
          ... on PathMetadataEntry { path }
          ... on UrlMetadataEntry { url }
        }
      }
    }
  }
}
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=20000",
]


def _free_port() -> int:
    # A port below Linux's ephemeral range (32768 and up), so that the emulator's and the
    # clients' ephemeral ports cannot take it between this check and the server's bind.
    for _ in range(100):
        port = random.randint(20000, 30000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("No free port found between 20000 and 30000 on 127.0.0.1.")


def _graphql(base_url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


def _stop(process: subprocess.Popen, timeout_seconds: float) -> None:
    """Stop a process started in its own session, then kill whatever is left in its group."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _chromium(*args: str, user_data_dir: Path) -> str:
    process = subprocess.Popen(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=CHROMIUM_TIMEOUT_SECONDS)
    finally:
        _stop(process, 5)
    assert process.returncode == 0, f"chromium exited with code {process.returncode}"
    return stdout


def _visible_text(dom: str) -> str:
    without_code = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", without_code)
    return re.sub(r"\s+", " ", html.unescape(text))


def _page_text(url: str, expected: list[str], user_data_dir: Path) -> str:
    """Render a page until every expected string shows, at most three times."""
    text = ""
    for _ in range(3):
        text = _visible_text(_chromium("--dump-dom", url, user_data_dir=user_data_dir))
        if all(value in text for value in expected):
            break
    return text


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[str]:
    """Run ``example_project/ui.py`` on a free port and yield the UI's base URL."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(UI_SCRIPT),
            "--workdir",
            str(tmp_path / "ui"),
            "--port",
            str(port),
            "--rows",
            str(NUM_ROWS),
            "--no-materialize",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        base_url = None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while base_url is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("Dagster UI: "):
                base_url = line.removeprefix("Dagster UI: ").strip()
        assert base_url is not None, "ui.py did not start the UI:\n" + "".join(output[-40:])
        yield base_url
    finally:
        _stop(process, SHUTDOWN_TIMEOUT_SECONDS)
        reader.join(timeout=5)


def _launch(base_url: str, destination: str) -> str:
    repository = _graphql(base_url, REPOSITORIES)["repositoriesOrError"]["nodes"][0]
    variables = {
        "executionParams": {
            "selector": {
                "repositoryLocationName": repository["location"]["name"],
                "repositoryName": repository["name"],
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": ["sutro_results"]}],
            },
            "runConfigData": {
                "ops": {"sutro_results": {"config": {"job_id": JOB_ID, "destination": destination}}}
            },
        }
    }
    result = _graphql(base_url, LAUNCH_RUN, variables)["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return str(result["run"]["runId"])


def _wait_for_run(base_url: str, run_id: str) -> str:
    status = "UNKNOWN"
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        status = _graphql(base_url, RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(0.5)
    return status


def _latest_metadata(base_url: str) -> dict[str, Any]:
    asset = _graphql(base_url, LATEST_MATERIALIZATION, {"assetKey": {"path": ["sutro_results"]}})
    [materialization] = asset["assetOrError"]["assetMaterializations"]
    return {
        entry["label"]: next(
            (entry[field] for field in ("text", "intValue", "path", "url") if field in entry),
            None,
        )
        for entry in materialization["metadataEntries"]
    }


def test_asset_page_shows_etag_rows_and_uri(ui_server: str, tmp_path: Path) -> None:
    base_url = ui_server
    destination = f"{tmp_path / 'results'}/"

    run_id = _launch(base_url, destination)
    status = _wait_for_run(base_url, run_id)
    metadata = _latest_metadata(base_url)
    etag = str(metadata["dagster-sutro/etag"])
    uri = str(metadata["dagster/uri"])

    assert status == "SUCCESS"
    assert metadata["dagster-sutro/job_id"] == JOB_ID
    assert metadata["dagster/row_count"] == NUM_ROWS
    assert re.fullmatch(r'"[0-9a-f]{32}(-\d+)?"', etag)
    assert uri.endswith(".parquet")
    assert str(tmp_path / "results") in uri

    profile = tmp_path / "chromium"
    page = f"{base_url}/assets/sutro_results"
    overview = _page_text(page, [etag, "Row count"], profile)
    events = _page_text(f"{page}?view=events", [etag, uri, "dagster/row_count"], profile)

    assert etag in overview
    assert f"Row count {NUM_ROWS}" in overview
    assert JOB_ID in overview
    assert etag in events
    assert uri in events
    assert f"dagster/row_count {NUM_ROWS}" in events

    DOCS.mkdir(exist_ok=True)
    for url, name in ((page, "asset-page.png"), (f"{page}?view=events", "asset-events.png")):
        target = DOCS / name
        _chromium(f"--screenshot={target}", url, user_data_dir=profile)
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
