"""Downloads of two jobs run at the same time under the multiprocess executor, and a pool caps it.

Concurrency is shown by the emulator's storage server, not by timing the run: a sampler thread
reads the request log while the run executes and records which jobs have a GET whose body is
still being sent. The storage rate is capped so that each download stays in flight for a while.
"""

from __future__ import annotations

import threading
from pathlib import Path

import concurrency_defs
import dagster as dg
import pytest

from dagster_sutro.testing import RecordedRequest, SutroEmulator

pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning")

ARTIFACT_BYTES = 2 * 1024 * 1024
# At this per-connection rate each artifact takes about 2.5 seconds to send.
STORAGE_BYTES_PER_SECOND = ARTIFACT_BYTES / 2.5
SAMPLE_INTERVAL_SECONDS = 0.02
POOL = "sutro_downloads"
TESTS_DIR = Path(__file__).parent


class InFlightSampler:
    """Samples the emulator's request log and keeps the largest set of jobs seen in flight."""

    def __init__(self, emulator: SutroEmulator, sizes: dict[str, int]) -> None:
        self.emulator = emulator
        self.sizes = sizes
        self.max_in_flight: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InFlightSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            in_flight = {
                record.job_id
                for record in self.emulator.storage_requests
                if record.job_id is not None and self._is_in_flight(record)
            }
            if len(in_flight) > len(self.max_in_flight):
                self.max_in_flight = in_flight
            self._stop.wait(SAMPLE_INTERVAL_SECONDS)

    def _is_in_flight(self, record: RecordedRequest) -> bool:
        if record.method != "GET" or record.status >= 300 or record.job_id not in self.sizes:
            return False
        return record.body_bytes < _expected_body_bytes(record, self.sizes[record.job_id])


def _expected_body_bytes(record: RecordedRequest, size: int) -> int:
    """Return the body length of a GET: its Range's length, or the whole object."""
    ranges = [value for name, value in record.headers.items() if name.lower() == "range"]
    if not ranges or not ranges[0].startswith("bytes="):
        return size
    first, _, last = ranges[0].removeprefix("bytes=").partition("-")
    if not first:
        return min(int(last), size)
    end = min(int(last), size - 1) if last else size - 1
    return end - int(first) + 1


@pytest.fixture
def job_sizes(emulator: SutroEmulator) -> dict[str, int]:
    job_ids = [emulator.add_job(target_size_bytes=ARTIFACT_BYTES, seed=seed) for seed in (1, 2)]
    sizes = {job_id: emulator.artifact_path(job_id).stat().st_size for job_id in job_ids}
    emulator.storage_bytes_per_second = STORAGE_BYTES_PER_SECOND
    return sizes


@pytest.fixture(autouse=True)
def emulator_env(emulator: SutroEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTRO_API_URL", emulator.api_url)
    monkeypatch.setenv("SUTRO_API_KEY", emulator.api_key)


def _execute(
    emulator: SutroEmulator,
    sizes: dict[str, int],
    instance: dg.DagsterInstance,
    *,
    destination: Path,
    pool: str | None,
) -> tuple[dg.ExecutionResult, set[str]]:
    job = dg.build_reconstructable_job(
        "concurrency_defs",
        concurrency_defs.build_downloads_job.__name__,
        reconstructable_kwargs={
            "job_ids": list(sizes),
            "destination": f"{destination}/",
            "pool": pool,
        },
        reconstructor_working_directory=str(TESTS_DIR),
    )
    emulator.clear_requests()
    with InFlightSampler(emulator, sizes) as sampler:
        result = dg.execute_job(job, instance=instance)
    return result, sampler.max_in_flight


def _materialized_jobs(instance: dg.DagsterInstance, job_ids: list[str]) -> list[str]:
    return [
        job_id
        for job_id in job_ids
        if instance.get_latest_materialization_event(
            dg.AssetKey(["sutro", _key(job_id), "results"])
        )
    ]


def _key(job_id: str) -> str:
    return job_id.replace("-", "_")


# A step process that dies while holding a pool slot leaves the run waiting for that slot, so
# a failure here shows up as a timeout rather than a hang of the whole suite.
@pytest.mark.timeout(120)
def test_two_jobs_download_concurrently(
    emulator: SutroEmulator, job_sizes: dict[str, int], tmp_path: Path
) -> None:
    with dg.instance_for_test() as instance:
        result, in_flight = _execute(
            emulator, job_sizes, instance, destination=tmp_path / "results", pool=POOL
        )
        materialized = _materialized_jobs(instance, list(job_sizes))

    assert result.success
    assert sorted(materialized) == sorted(job_sizes)
    assert in_flight == set(job_sizes)


@pytest.mark.timeout(120)
def test_pool_limit_serializes_downloads(
    emulator: SutroEmulator, job_sizes: dict[str, int], tmp_path: Path
) -> None:
    overrides = {"concurrency": {"pools": {"default_limit": 1, "granularity": "op"}}}

    with dg.instance_for_test(overrides=overrides) as instance:
        result, in_flight = _execute(
            emulator, job_sizes, instance, destination=tmp_path / "results", pool=POOL
        )
        materialized = _materialized_jobs(instance, list(job_sizes))

    assert result.success
    assert sorted(materialized) == sorted(job_sizes)
    assert len(in_flight) == 1
