"""The results sensor, evaluated tick by tick against the emulator and a real Dagster instance."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from dagster_sutro import (
    SutroResource,
    build_sutro_results_asset,
    build_sutro_results_sensor,
    sensors as sensors_module,
)
from dagster_sutro.testing import SutroEmulator


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def asset(tmp_path: Path) -> dg.AssetsDefinition:
    return build_sutro_results_asset(destination=f"{tmp_path / 'results'}/")


def _tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    sutro: SutroResource,
    cursor: str | None,
) -> tuple[list[dg.RunRequest], str | None, str | None]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"sutro": sutro})
    data = sensor.evaluate_tick(context)
    return list(data.run_requests or []), data.cursor, data.skip_message


def _run(
    request: dg.RunRequest,
    asset: dg.AssetsDefinition,
    sutro: SutroResource,
    instance: dg.DagsterInstance,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=instance,
        run_config=request.run_config,
        tags=request.tags,
        raise_on_error=False,
    )


def _count(emulator: SutroEmulator, method: str) -> int:
    return sum(1 for request in emulator.storage_requests if request.method == method)


def _job_of(request: dg.RunRequest, asset: dg.AssetsDefinition) -> str:
    return request.run_config["ops"][asset.node_def.name]["config"]["job_id"]


def test_first_tick_requests_run(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)

    requests, cursor, _ = _tick(sensor, instance, sutro, None)

    assert len(requests) == 1
    [request] = requests
    etag = emulator.artifact_etag(job_id)
    config = request.run_config["ops"][asset.node_def.name]["config"]
    assert config["job_id"] == job_id
    assert config["include_inputs"] is False
    assert config["include_cumulative_logprobs"] is False
    assert config.get("destination") is None
    assert config.get("force", False) is False
    assert request.run_key is not None
    assert request.run_key.startswith(f"{job_id}:{etag}:")
    assert request.tags["dagster-sutro/job_id"] == job_id
    assert request.tags["dagster-sutro/etag"] == etag
    assert request.tags["dagster-sutro/sensor"] == sensor.name
    assert cursor is not None
    assert json.loads(cursor)["version"] == sensors_module.CURSOR_VERSION
    assert _count(emulator, "HEAD") == 1
    assert _count(emulator, "GET") == 0


def test_same_etag_after_materialization_requests_nothing(
    emulator: SutroEmulator,
    sutro: SutroResource,
    instance,
    asset,
    capfd: pytest.CaptureFixture[str],
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    [request], cursor, _ = _tick(sensor, instance, sutro, None)
    assert _run(request, asset, sutro, instance).success
    gets = _count(emulator, "GET")

    requests, cursor, skip = _tick(sensor, instance, sutro, cursor)
    requests_again, _, _ = _tick(sensor, instance, sutro, cursor)

    assert requests == []
    assert requests_again == []
    assert skip is not None
    assert "new artifact ETag" in skip
    assert _count(emulator, "GET") == gets
    logged = capfd.readouterr().err
    assert f"Sutro job {job_id}: ETag {emulator.artifact_etag(job_id)} is already materialized" in (
        logged
    )


def test_materialization_read_from_instance_without_cursor(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    [request], _, _ = _tick(sensor, instance, sutro, None)
    assert _run(request, asset, sutro, instance).success

    requests, _, _ = _tick(sensor, instance, sutro, None)

    assert requests == []


def test_replaced_artifact_requests_run(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    [first], cursor, _ = _tick(sensor, instance, sutro, None)
    assert _run(first, asset, sutro, instance).success
    _, cursor, _ = _tick(sensor, instance, sutro, cursor)

    emulator.replace_artifact(job_id, num_rows=30)
    requests, cursor, _ = _tick(sensor, instance, sutro, cursor)

    assert len(requests) == 1
    new_etag = emulator.artifact_etag(job_id)
    assert requests[0].tags["dagster-sutro/etag"] == new_etag
    assert requests[0].run_key != first.run_key
    assert _run(requests[0], asset, sutro, instance).success
    assert _tick(sensor, instance, sutro, cursor)[0] == []


def test_failed_run_is_requested_again(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    [first], cursor, _ = _tick(sensor, instance, sutro, None)
    rejected_key = SutroResource(api_key="sk_wrong_key", api_url=emulator.api_url, max_retries=0)
    failed = _run(first, asset, rejected_key, instance)
    assert not failed.success

    requests, cursor, _ = _tick(sensor, instance, sutro, cursor)

    assert len(requests) == 1
    assert requests[0].run_key != first.run_key
    assert requests[0].tags["dagster-sutro/etag"] == first.tags["dagster-sutro/etag"]
    assert _run(requests[0], asset, sutro, instance).success
    assert _tick(sensor, instance, sutro, cursor)[0] == []


def test_run_in_progress_blocks_second_request(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    [request], cursor, _ = _tick(sensor, instance, sutro, None)
    job_def = dg.Definitions(
        assets=[asset], resources={"sutro": sutro}
    ).resolve_implicit_global_asset_job_def()
    # A run the sensor requested and the daemon created, but that has not finished yet.
    run = instance.create_run_for_job(job_def, run_config=request.run_config, tags=request.tags)

    requests, _, _ = _tick(sensor, instance, sutro, cursor)

    assert run.status == dg.DagsterRunStatus.NOT_STARTED
    assert requests == []


def test_bad_cursor_is_reset(
    emulator: SutroEmulator,
    sutro: SutroResource,
    instance,
    asset,
    capfd: pytest.CaptureFixture[str],
) -> None:
    job_id = emulator.add_job(num_rows=20)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)

    for bad_cursor in ["{not json", json.dumps({"version": 999}), json.dumps([1, 2])]:
        requests, cursor, _ = _tick(sensor, instance, sutro, bad_cursor)

        assert len(requests) == 1
        assert cursor is not None
        assert json.loads(cursor)["version"] == sensors_module.CURSOR_VERSION
    logged = capfd.readouterr().err
    assert logged.count("could not be decoded") == 3
    assert "starts again from an empty cursor" in logged


def test_time_budget_defers_remaining_jobs(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_ids = [emulator.add_job(num_rows=10, seed=seed) for seed in range(3)]
    sensor = build_sutro_results_sensor(job_ids=job_ids, asset=asset, time_budget_seconds=0)

    requested: list[str] = []
    cursor = None
    for _ in job_ids:
        requests, cursor, _ = _tick(sensor, instance, sutro, cursor)
        assert len(requests) == 1
        requested.append(_job_of(requests[0], asset))

    assert requested == job_ids
    assert _count(emulator, "HEAD") == 3


def test_running_listed_job_is_not_requested(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=10, status="RUNNING")
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)

    requests, cursor, _ = _tick(sensor, instance, sutro, None)
    emulator.set_status(job_id, "SUCCEEDED")
    later, _, _ = _tick(sensor, instance, sutro, cursor)

    assert requests == []
    assert _count(emulator, "HEAD") == 1
    assert len(later) == 1


def test_discovery_finds_succeeded_and_ignores_running(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    done = emulator.add_job(num_rows=10, seed=1)
    running = emulator.add_job(num_rows=10, seed=2, status="RUNNING")
    failed = emulator.add_job(num_rows=10, seed=3, status="FAILED")
    sensor = build_sutro_results_sensor(asset=asset, include_existing_jobs=True)

    requests, cursor, _ = _tick(sensor, instance, sutro, None)

    assert [_job_of(request, asset) for request in requests] == [done]
    results_url_jobs = {r.job_id for r in emulator.api_requests if r.path.endswith("/results-url")}
    assert results_url_jobs == {done}
    assert failed not in json.loads(cursor or "{}")["unfinished"]
    assert _run(requests[0], asset, sutro, instance).success

    emulator.set_status(running, "SUCCEEDED")
    newer = emulator.add_job(num_rows=10, seed=4)
    requests, cursor, _ = _tick(sensor, instance, sutro, cursor)

    assert sorted(_job_of(request, asset) for request in requests) == sorted([running, newer])
    for request in requests:
        assert _run(request, asset, sutro, instance).success
    assert _tick(sensor, instance, sutro, cursor)[0] == []
    assert _count(emulator, "GET") == 3


def test_discovery_stops_paging_at_seen_jobs(
    emulator: SutroEmulator,
    sutro: SutroResource,
    instance,
    asset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sensors_module, "LIST_JOBS_PAGE_SIZE", 2)
    for seed in range(5):
        emulator.add_job(num_rows=5, seed=seed)
    sensor = build_sutro_results_sensor(asset=asset, include_existing_jobs=True)

    first, cursor, _ = _tick(sensor, instance, sutro, None)
    list_calls = sum(1 for r in emulator.api_requests if r.path.endswith("/list-jobs"))
    for request in first:
        assert _run(request, asset, sutro, instance).success
    newest = emulator.add_job(num_rows=5, seed=9)
    emulator.clear_requests()
    second, _, _ = _tick(sensor, instance, sutro, cursor)

    assert len(first) == 5
    assert list_calls == 3
    assert [_job_of(request, asset) for request in second] == [newest]
    assert sum(1 for r in emulator.api_requests if r.path.endswith("/list-jobs")) == 1


def test_existing_jobs_skipped_by_default(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    emulator.add_job(num_rows=5, seed=1)
    sensor = build_sutro_results_sensor(asset=asset)

    first, cursor, _ = _tick(sensor, instance, sutro, None)
    newer = emulator.add_job(num_rows=5, seed=2)
    second, _, _ = _tick(sensor, instance, sutro, cursor)

    assert first == []
    assert [_job_of(request, asset) for request in second] == [newer]


def test_api_error_is_logged_and_retried(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=5)
    sensor = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    rejected_key = SutroResource(api_key="sk_wrong_key", api_url=emulator.api_url)

    requests, cursor, skip = _tick(sensor, instance, rejected_key, None)
    later, _, _ = _tick(sensor, instance, sutro, cursor)

    assert requests == []
    assert skip is not None
    assert len(later) == 1


def test_include_flags_follow_their_own_artifact(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=5)
    plain = build_sutro_results_sensor(job_ids=[job_id], asset=asset)
    with_inputs = build_sutro_results_sensor(
        job_ids=[job_id], asset=asset, include_inputs=True, name="with_inputs"
    )
    [request], _, _ = _tick(plain, instance, sutro, None)
    assert _run(request, asset, sutro, instance).success

    requests, _, _ = _tick(with_inputs, instance, sutro, None)

    assert len(requests) == 1
    config = requests[0].run_config["ops"][asset.node_def.name]["config"]
    assert config["include_inputs"] is True
    assert requests[0].tags["dagster-sutro/etag"] == emulator.artifact_etag(
        job_id, include_inputs=True
    )


def test_default_names() -> None:
    other = build_sutro_results_asset(key=["team", "results"])

    assert build_sutro_results_sensor().name == "sutro_results_sensor"
    assert build_sutro_results_sensor(asset=other).name == "team__results_sutro_sensor"
    assert build_sutro_results_sensor(name="mine").name == "mine"


def test_sensor_loads_in_definitions(sutro: SutroResource, asset) -> None:
    sensor = build_sutro_results_sensor(job_ids=["job-a"], asset=asset)

    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources={"sutro": sutro})

    resolved = defs.resolve_sensor_def(sensor.name)
    assert resolved.minimum_interval_seconds == 300
    assert resolved.default_status == dg.DefaultSensorStatus.STOPPED


def test_job_ids_string_is_rejected() -> None:
    with pytest.raises(TypeError, match="list of job ids"):
        build_sutro_results_sensor(job_ids="job-a")  # type: ignore[arg-type]
