"""The partitioned results asset and the sensor that adds a partition per new Sutro job."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from dagster_sutro import (
    InvalidInputError,
    SutroResource,
    build_sutro_new_jobs_sensor,
    build_sutro_partitioned_results_asset,
    metadata as md,
)
from dagster_sutro.partitions import (
    CURSOR_VERSION,
    NewJobsCursor,
    SutroPartitionedResultsConfig,
    _is_watermark_or_older,
    _parse_time,
)
from dagster_sutro.testing import SutroEmulator

PARTITIONS_NAME = "sutro_jobs"


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def partitions_def() -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def asset(destination: Path, partitions_def) -> dg.AssetsDefinition:
    return build_sutro_partitioned_results_asset(
        destination=f"{destination}/", partitions_def=partitions_def, retry_policy=None
    )


def _materialize(
    asset: dg.AssetsDefinition,
    sutro: SutroResource,
    instance: dg.DagsterInstance,
    partition_key: str,
    **config: object,
) -> dg.ExecuteInProcessResult:
    run_config = (
        dg.RunConfig({asset.node_def.name: SutroPartitionedResultsConfig(**config)})
        if config
        else None
    )
    return dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=instance,
        partition_key=partition_key,
        run_config=run_config,
        raise_on_error=False,
    )


class SensorHarness:
    """Ticks of the new-jobs sensor, applying its partition requests as the daemon does."""

    def __init__(
        self, sensor: dg.SensorDefinition, sutro: SutroResource, instance: dg.DagsterInstance
    ) -> None:
        self.sensor = sensor
        self.sutro = sutro
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, resources={"sutro": self.sutro}, cursor=self.cursor
        )
        result = self.sensor(context)
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        self.cursor = result.cursor
        return result

    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(PARTITIONS_NAME))


def _requested(result: dg.SensorResult) -> list[str]:
    return [request.partition_key for request in result.run_requests or []]  # type: ignore[misc]


def test_partition_materializes_its_job(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=60)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [job_id])

    result = _materialize(asset, sutro, instance, job_id)

    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.node_def.name)
    assert materialization.partition == job_id
    assert materialization.metadata[md.JOB_ID_KEY].value == job_id
    assert materialization.metadata[md.ROW_COUNT_KEY].value == 60
    published = destination / emulator.artifact_path(job_id).name
    assert published.read_bytes() == emulator.artifact_path(job_id).read_bytes()
    assert all(evaluation.passed for evaluation in result.get_asset_check_evaluations())


def test_skip_rule_is_per_partition(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    first_job = emulator.add_job(num_rows=10)
    second_job = emulator.add_job(num_rows=12)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [first_job, second_job])
    assert _materialize(asset, sutro, instance, first_job).success

    again = _materialize(asset, sutro, instance, first_job)
    other = _materialize(asset, sutro, instance, second_job)
    forced = _materialize(asset, sutro, instance, first_job, force=True)

    assert again.success
    assert again.asset_materializations_for_node(asset.node_def.name) == []
    assert len(other.asset_materializations_for_node(asset.node_def.name)) == 1
    assert len(forced.asset_materializations_for_node(asset.node_def.name)) == 1


def test_include_flags_from_config(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [job_id])

    result = _materialize(asset, sutro, instance, job_id, include_inputs=True)

    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.node_def.name)
    assert materialization.metadata[md.INCLUDE_INPUTS_KEY].value is True
    assert (destination / emulator.artifact_path(job_id, include_inputs=True).name).exists()


def test_job_id_placeholder_in_destination(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    asset = build_sutro_partitioned_results_asset(
        destination=f"{tmp_path}/{{job_id}}/results.parquet", retry_policy=None
    )
    job_id = emulator.add_job(num_rows=10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [job_id])

    result = _materialize(asset, sutro, instance, job_id)

    assert result.success
    assert (tmp_path / job_id / "results.parquet").exists()


def test_single_file_destination_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="every partition"):
        build_sutro_partitioned_results_asset(destination=f"{tmp_path}/results.parquet")


def test_default_partitions_definition(tmp_path: Path) -> None:
    asset = build_sutro_partitioned_results_asset(destination=f"{tmp_path}/")

    assert isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition)
    assert asset.partitions_def.name == PARTITIONS_NAME
    assert asset.key == dg.AssetKey("sutro_job_results")


def test_first_tick_records_baseline(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    existing = emulator.add_job(num_rows=5)
    harness = SensorHarness(build_sutro_new_jobs_sensor(asset=asset), sutro, instance)

    first = harness.tick()

    assert _requested(first) == []
    assert first.skip_reason is not None
    assert existing in (first.skip_reason.skip_message or "")
    cursor = json.loads(first.cursor or "")
    assert cursor["version"] == CURSOR_VERSION
    assert cursor["watermark_job_id"] == existing
    assert harness.partitions() == []


def test_new_jobs_added_once_succeeded(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    emulator.add_job(num_rows=5)
    harness = SensorHarness(build_sutro_new_jobs_sensor(asset=asset), sutro, instance)
    harness.tick()
    succeeded = emulator.add_job(num_rows=5)
    running = emulator.add_job(num_rows=5, status="RUNNING")
    failed = emulator.add_job(num_rows=5, status="FAILED")
    newest = emulator.add_job(num_rows=5)

    first = harness.tick()
    emulator.set_status(running, "SUCCEEDED")
    second = harness.tick()
    third = harness.tick()

    assert sorted(_requested(first)) == sorted([succeeded, newest])
    assert _requested(second) == [running]
    assert _requested(third) == []
    assert third.skip_reason is not None
    assert sorted(harness.partitions()) == sorted([succeeded, newest, running])
    assert failed not in harness.partitions()
    for request in first.run_requests or []:
        assert request.run_key == request.partition_key
        assert request.tags[md.JOB_ID_KEY] == request.partition_key
    # Once the running job succeeded and was added, the watermark moves to the newest job.
    assert json.loads(harness.cursor or "")["watermark_job_id"] == newest


def test_run_request_materializes_without_config(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    harness = SensorHarness(
        build_sutro_new_jobs_sensor(asset=asset, include_existing_jobs=True), sutro, instance
    )
    job_id = emulator.add_job(num_rows=7)

    [request] = harness.tick().run_requests or []
    assert request.partition_key is not None
    result = _materialize(asset, sutro, instance, request.partition_key)

    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.node_def.name)
    assert materialization.partition == job_id


def test_existing_jobs_paged_and_capped(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    jobs = [emulator.add_job(num_rows=3) for _ in range(5)]
    sensor = build_sutro_new_jobs_sensor(
        asset=asset, include_existing_jobs=True, page_size=2, max_new_partitions_per_tick=2
    )
    harness = SensorHarness(sensor, sutro, instance)

    ticks = [_requested(harness.tick()) for _ in range(4)]

    assert [len(added) for added in ticks] == [2, 2, 1, 0]
    added = [job_id for tick in ticks for job_id in tick]
    assert sorted(added) == sorted(jobs)
    assert len(set(added)) == len(added)
    cursor = json.loads(harness.cursor or "")
    assert cursor["scan_in_progress"] is False
    assert cursor["watermark_job_id"] == jobs[-1]


def test_time_budget_resumes_next_tick(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    jobs = [emulator.add_job(num_rows=3) for _ in range(5)]
    sensor = build_sutro_new_jobs_sensor(
        asset=asset, include_existing_jobs=True, page_size=2, time_budget_seconds=1e-9
    )
    harness = SensorHarness(sensor, sutro, instance)

    first = harness.tick()
    first_cursor = json.loads(harness.cursor or "")
    later = [_requested(harness.tick()) for _ in range(3)]

    # Each tick fetches one page before the budget stops it; the cursor keeps the position.
    assert _requested(first) == [jobs[4], jobs[3]]
    assert first_cursor["scan_in_progress"] is True
    assert first_cursor["scan_page_cursor"]
    assert later == [[jobs[2], jobs[1]], [jobs[0]], []]
    assert sorted(harness.partitions()) == sorted(jobs)


def test_unfinished_job_keeps_watermark_below_it(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    old = emulator.add_job(num_rows=3)
    running = emulator.add_job(num_rows=3, status="RUNNING")
    new = emulator.add_job(num_rows=3)
    sensor = build_sutro_new_jobs_sensor(asset=asset, include_existing_jobs=True, page_size=1)
    harness = SensorHarness(sensor, sutro, instance)

    first = harness.tick()
    watermark_after_first = json.loads(harness.cursor or "")["watermark_job_id"]
    emulator.set_status(running, "SUCCEEDED")
    second = harness.tick()

    assert sorted(_requested(first)) == sorted([old, new])
    assert watermark_after_first == old
    assert _requested(second) == [running]
    assert json.loads(harness.cursor or "")["watermark_job_id"] == new


def test_job_filter_excludes_jobs(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    included = emulator.add_job(num_rows=3, name="reviews-2026-01")
    emulator.add_job(num_rows=3, name="scratch")
    sensor = build_sutro_new_jobs_sensor(
        asset=asset,
        include_existing_jobs=True,
        job_filter=lambda job: (job.get("name") or "").startswith("reviews-"),
    )
    harness = SensorHarness(sensor, sutro, instance)

    result = harness.tick()

    assert _requested(result) == [included]


@pytest.mark.parametrize(
    "cursor",
    ["not json", json.dumps({"version": 99, "watermark_job_id": "x"}), json.dumps([1, 2])],
)
def test_unreadable_cursor_starts_over(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, cursor: str
) -> None:
    existing = emulator.add_job(num_rows=3)
    harness = SensorHarness(build_sutro_new_jobs_sensor(asset=asset), sutro, instance)
    harness.cursor = cursor

    result = harness.tick()

    assert _requested(result) == []
    assert json.loads(result.cursor or "")["watermark_job_id"] == existing
    newer = emulator.add_job(num_rows=3)
    assert _requested(harness.tick()) == [newer]


def test_existing_partition_not_added_again(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=3)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [job_id])
    sensor = build_sutro_new_jobs_sensor(asset=asset, include_existing_jobs=True)

    result = SensorHarness(sensor, sutro, instance).tick()

    assert _requested(result) == []
    assert result.dynamic_partitions_requests in (None, [])


def test_sensor_definition_shape(asset, partitions_def) -> None:
    sensor = build_sutro_new_jobs_sensor(asset=asset, minimum_interval_seconds=60)
    named = build_sutro_new_jobs_sensor(asset=asset, partitions_def=partitions_def, name="jobs")

    assert sensor.name == "sutro_job_results__new_jobs_sensor"
    assert sensor.minimum_interval_seconds == 60
    assert named.name == "jobs"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_sensor_rejects_unpartitioned_asset(tmp_path: Path) -> None:
    @dg.asset
    def plain() -> None:
        return None

    with pytest.raises(InvalidInputError, match="dynamic partitions"):
        build_sutro_new_jobs_sensor(asset=plain)


def test_cursor_round_trip() -> None:
    cursor = NewJobsCursor(
        watermark_job_id="job-1",
        watermark_created="2026-01-01T00:00:00Z",
        scan_page_cursor="abc",
        scan_in_progress=True,
    )

    assert NewJobsCursor.from_json(cursor.to_json()) == cursor
    with pytest.raises(ValueError, match="scan_in_progress"):
        NewJobsCursor.from_json(json.dumps({"version": CURSOR_VERSION, "scan_in_progress": "yes"}))


def test_watermark_matches_older_jobs_when_gone() -> None:
    watermark_time = _parse_time("2026-01-01T12:00:00Z")
    older = {"job_id": "job-old", "datetime_created": "2026-01-01T11:59:59Z"}
    newer = {"job_id": "job-new", "datetime_created": "2026-01-01T12:00:01Z"}
    undated = {"job_id": "job-undated"}

    assert _is_watermark_or_older({"job_id": "job-w"}, "job-w", watermark_time)
    assert _is_watermark_or_older(older, "job-w", watermark_time)
    assert not _is_watermark_or_older(newer, "job-w", watermark_time)
    assert not _is_watermark_or_older(undated, "job-w", watermark_time)
    assert not _is_watermark_or_older(older, None, None)


def test_daemon_evaluation_resolves_new_partitions(
    emulator: SutroEmulator, sutro: SutroResource, asset
) -> None:
    job_id = emulator.add_job(num_rows=3)
    sensor = build_sutro_new_jobs_sensor(asset=asset, include_existing_jobs=True)
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources={"sutro": sutro})

    # evaluate_tick is how the daemon runs a sensor: the resource comes from context.resources,
    # and each run request's partition is checked against the partitions added in the same tick.
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            resources={"sutro": sutro},
            definitions=defs,
        )
        data = sensor.evaluate_tick(context)

    [request] = data.run_requests or []
    assert request.partition_key == job_id
    assert request.tags["dagster/partition"] == job_id
    [partitions_request] = data.dynamic_partitions_requests or []
    assert list(partitions_request.partition_keys) == [job_id]
    assert json.loads(data.cursor or "")["watermark_job_id"] == job_id
