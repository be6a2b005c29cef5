"""A run of the results asset killed with SIGKILL halfway, then resumed by the next run.

The emulator runs in this test process and throttles storage, so that a child process running
``dg.materialize`` on a real instance (a temporary ``DAGSTER_HOME``) is still downloading when
it is killed. The next run must fetch only the missing bytes plus at most one part, judged from
the bytes and ``Range`` headers the emulator recorded, and publish an identical file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from faults_support import (
    MIB,
    ResultsUrls,
    bytes_matching_per_part,
    fast_settings,
    range_start,
    sha256_of,
    storage_gets,
)

from dagster_sutro import (
    SutroResource,
    SutroResultsConfig,
    build_sutro_results_asset,
    metadata as md,
)
from dagster_sutro.errors import StorageError
from dagster_sutro.testing import RecordedRequest, SutroEmulator
from dagster_sutro.transfer import download_artifact
from dagster_sutro.transfer.local import current_boot_id

PART_SIZE_BYTES = 2 * MIB
MAX_CONCURRENCY = 2
# Two connections at 2 MiB/s each take about 6 s for the artifact, after the child's start-up.
ARTIFACT_SIZE_BYTES = 24 * MIB
STORAGE_BYTES_PER_SECOND = 2 * MIB
KILL_DEADLINE_SECONDS = 60

_CHILD_RUN = """
import json
import sys

import dagster as dg

from dagster_sutro import SutroResource, SutroResultsConfig, build_sutro_results_asset

spec = json.loads(sys.argv[1])
asset = build_sutro_results_asset(destination=spec["destination"])
sutro = SutroResource(
    api_key=dg.EnvVar("SUTRO_API_KEY"),
    api_url=spec["api_url"],
    part_size_bytes=spec["part_size_bytes"],
    max_concurrency=spec["max_concurrency"],
)
dg.materialize(
    [asset],
    resources={"sutro": sutro},
    instance=dg.DagsterInstance.get(),
    run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=spec["job_id"])}),
)
"""


def _recorded_bytes(state: dict[str, Any], size: int) -> int:
    """The bytes a state file records as written: finished parts plus partial progress."""
    finished = sum(
        min(PART_SIZE_BYTES, size - index * PART_SIZE_BYTES)
        for first, last in state["finished_parts"]
        for index in range(first, last + 1)
    )
    return finished + sum(written for _, written in state["partial_parts"])


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state


class KilledRun:
    """The outcome of a child run killed once its state file records half of the artifact."""

    def __init__(self, *, state: dict[str, Any], partial: bytes) -> None:
        self.state = state
        self.partial = partial


def _run_child_and_kill_halfway(
    emulator: SutroEmulator, job_id: str, destination: Path, dagster_home: Path
) -> KilledRun:
    spec = {
        "api_url": emulator.api_url,
        "job_id": job_id,
        "destination": f"{destination}/",
        "part_size_bytes": PART_SIZE_BYTES,
        "max_concurrency": MAX_CONCURRENCY,
    }
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "SUTRO_API_KEY": emulator.api_key,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_RUN, json.dumps(spec)],
        env=environment,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    filename = emulator.artifact_path(job_id).name
    state_path = destination / f"{filename}.sutro-partial.json"
    size = emulator.artifact_path(job_id).stat().st_size
    deadline = time.monotonic() + KILL_DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline and child.poll() is None:
            state = _read_state(state_path)
            if state is not None and _recorded_bytes(state, size) >= size // 2:
                break
            time.sleep(0.02)
        assert child.poll() is None, "the child run ended before it was killed"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    state = _read_state(state_path)
    assert state is not None
    partial = (destination / f"{filename}.sutro-partial").read_bytes()
    return KilledRun(state=state, partial=partial)


def _materialize_in_parent(
    emulator: SutroEmulator, job_id: str, destination: Path, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    asset = build_sutro_results_asset(destination=f"{destination}/")
    sutro = SutroResource(
        api_key=emulator.api_key,
        api_url=emulator.api_url,
        part_size_bytes=PART_SIZE_BYTES,
        max_concurrency=MAX_CONCURRENCY,
    )
    return dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=instance,
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
    )


def _finished_ranges(state: dict[str, Any], size: int) -> list[tuple[int, int]]:
    return [
        (index * PART_SIZE_BYTES, min((index + 1) * PART_SIZE_BYTES, size) - 1)
        for first, last in state["finished_parts"]
        for index in range(first, last + 1)
    ]


def _requested_range(request: RecordedRequest, size: int) -> tuple[int, int]:
    first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
    return int(first), int(last) if last else size - 1


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def throttled_emulator(tmp_path: Path) -> Iterator[SutroEmulator]:
    with SutroEmulator(
        root_dir=tmp_path / "emulator", storage_bytes_per_second=STORAGE_BYTES_PER_SECOND
    ) as emulator:
        yield emulator


def test_killed_asset_run_resumes_missing_bytes(
    throttled_emulator: SutroEmulator, tmp_path: Path, dagster_home: Path
) -> None:
    emulator = throttled_emulator
    job_id = emulator.add_job(target_size_bytes=ARTIFACT_SIZE_BYTES)
    source_path = emulator.artifact_path(job_id)
    source = source_path.read_bytes()
    size = len(source)
    destination = tmp_path / "results"

    killed = _run_child_and_kill_halfway(emulator, job_id, destination, dagster_home)

    assert not (destination / source_path.name).exists()
    state_text = json.dumps(killed.state)
    assert emulator.api_key not in state_text
    for request in emulator.storage_requests:
        assert request.query["X-Amz-Signature"] not in state_text
    written = bytes_matching_per_part(killed.partial, source, PART_SIZE_BYTES)
    recorded = _recorded_bytes(killed.state, size)
    assert recorded >= size // 2
    assert written >= recorded
    assert written < size

    emulator.storage_bytes_per_second = None
    emulator.clear_requests()
    with dg.DagsterInstance.get() as instance:
        result = _materialize_in_parent(emulator, job_id, destination, instance)

    assert result.success
    [materialization] = result.asset_materializations_for_node("sutro_results")
    assert sha256_of(destination / source_path.name) == sha256_of(source)
    gets = storage_gets(emulator)
    fetched = sum(request.body_bytes for request in gets)
    # Only the missing bytes are fetched, plus what the killed run wrote after its last
    # state write, which is less than one part.
    assert fetched <= size - written + PART_SIZE_BYTES
    assert fetched == size - materialization.metadata[md.RESUMED_BYTES_KEY].value
    assert materialization.metadata[md.BYTES_TRANSFERRED_KEY].value == fetched
    assert materialization.metadata[md.RESUMED_BYTES_KEY].value >= recorded
    for request in gets:
        first, last = _requested_range(request, size)
        for start, end in _finished_ranges(killed.state, size):
            assert last < start or first > end, f"{request.headers['Range']} refetches a part"
    # A part that was partly written resumes after its recorded bytes.
    for index, partly in killed.state["partial_parts"]:
        starts = [range_start(request) for request in gets]
        assert index * PART_SIZE_BYTES + partly in starts
    assert sorted(path.name for path in destination.iterdir()) == [source_path.name]


def test_killed_run_replaced_artifact_restarts(
    throttled_emulator: SutroEmulator, tmp_path: Path, dagster_home: Path
) -> None:
    emulator = throttled_emulator
    job_id = emulator.add_job(target_size_bytes=ARTIFACT_SIZE_BYTES)
    old_etag = emulator.artifact_etag(job_id)
    destination = tmp_path / "results"

    _run_child_and_kill_halfway(emulator, job_id, destination, dagster_home)
    emulator.replace_artifact(job_id)
    new_source = emulator.artifact_path(job_id).read_bytes()
    emulator.storage_bytes_per_second = None
    emulator.clear_requests()
    with dg.DagsterInstance.get() as instance:
        result = _materialize_in_parent(emulator, job_id, destination, instance)

    assert result.success
    [materialization] = result.asset_materializations_for_node("sutro_results")
    assert materialization.metadata[md.ETAG_KEY].value != old_etag
    assert materialization.metadata[md.RESUMED_BYTES_KEY].value == 0
    published = destination / emulator.artifact_path(job_id).name
    assert sha256_of(published) == sha256_of(new_source)
    # The partial file of the old version is discarded, never mixed into the new one.
    assert sum(request.body_bytes for request in storage_gets(emulator)) == len(new_source)
    assert sorted(path.name for path in destination.iterdir()) == [published.name]


@pytest.mark.skipif(current_boot_id() is None, reason="this system exposes no boot id")
def test_state_from_earlier_boot_is_discarded(
    emulator: SutroEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=6 * MIB))
    destination = tmp_path / "results"
    part = 4 * MIB
    emulator.faults.truncate_body(MIB, times=1)
    with pytest.raises(StorageError):
        download_artifact(
            urls,
            f"{destination}/",
            settings=fast_settings(
                part_size_bytes=part, max_concurrency=1, max_attempts_per_part=1
            ),
        )
    state_path = destination / f"{urls.filename}.sutro-partial.json"
    state = json.loads(state_path.read_text())
    assert state["boot_id"] == current_boot_id()
    assert state["partial_parts"] == [[0, MIB]]
    # The machine restarted since: the page cache, and maybe these bytes, are gone.
    state_path.write_text(json.dumps({**state, "boot_id": "an-earlier-boot"}))
    emulator.clear_requests()

    with caplog.at_level(logging.INFO, logger="dagster_sutro.transfer"):
        result = download_artifact(
            urls, f"{destination}/", settings=fast_settings(part_size_bytes=part)
        )

    source = urls.source
    assert sha256_of(destination / urls.filename) == sha256_of(source)
    assert result.resumed_bytes == 0
    assert sum(request.body_bytes for request in storage_gets(emulator)) == len(source)
    assert "written before the machine restarted" in caplog.text
