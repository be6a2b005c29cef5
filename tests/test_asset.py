"""The config-driven results asset, materialized on a real Dagster instance."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import dagster as dg
import fsspec
import pyarrow.parquet as pq
import pytest

from dagster_sutro import (
    SutroResource,
    SutroResultsConfig,
    build_sutro_results_asset,
    metadata as md,
)
from dagster_sutro.testing import SutroEmulator


def _materialize(
    asset: dg.AssetsDefinition,
    sutro: SutroResource,
    instance: dg.DagsterInstance,
    **config: object,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=instance,
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(**config)}),
        raise_on_error=False,
    )


def _storage_gets(emulator: SutroEmulator) -> int:
    return sum(1 for request in emulator.storage_requests if request.method == "GET")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def asset(destination: Path) -> dg.AssetsDefinition:
    return build_sutro_results_asset(destination=f"{destination}/")


def test_first_run_materializes_with_metadata(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=250)

    result = _materialize(asset, sutro, instance, job_id=job_id)

    assert result.success
    materializations = result.asset_materializations_for_node(asset.node_def.name)
    assert len(materializations) == 1
    metadata = materializations[0].metadata
    expected_path = emulator.artifact_path(job_id)
    published = destination / expected_path.name
    assert _sha256(published) == _sha256(expected_path)
    assert metadata[md.JOB_ID_KEY].value == job_id
    assert metadata[md.ETAG_KEY].value == emulator.artifact_etag(job_id)
    assert metadata[md.SIZE_BYTES_KEY].value == expected_path.stat().st_size
    assert metadata[md.ARTIFACT_KEY_KEY].value.endswith(expected_path.name)
    assert metadata[md.INCLUDE_INPUTS_KEY].value is False
    assert metadata[md.INCLUDE_LOGPROBS_KEY].value is False
    assert metadata[md.URI_KEY].value == f"file://{published}"
    assert metadata[md.ROW_COUNT_KEY].value == 250
    columns = [column.name for column in metadata[md.COLUMN_SCHEMA_KEY].value.columns]
    assert "outputs" in columns
    assert metadata[md.BYTES_TRANSFERRED_KEY].value == expected_path.stat().st_size
    assert metadata[md.SECONDS_KEY].value >= 0
    assert md.MIB_PER_SECOND_KEY in metadata
    assert "outputs" in metadata[md.PREVIEW_KEY].value

    event = instance.get_latest_materialization_event(asset.key)
    assert event is not None
    assert event.tags["dagster/data_version"] == emulator.artifact_etag(job_id)


def test_unchanged_etag_skips_without_get(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=50)
    assert _materialize(asset, sutro, instance, job_id=job_id).success
    gets_after_first = _storage_gets(emulator)
    api_calls_after_first = len(emulator.api_requests)
    heads_after_first = sum(1 for r in emulator.storage_requests if r.method == "HEAD")

    second = _materialize(asset, sutro, instance, job_id=job_id)

    assert second.success
    assert second.asset_materializations_for_node(asset.node_def.name) == []
    assert _storage_gets(emulator) == gets_after_first
    second_run_api_paths = [r.path for r in emulator.api_requests[api_calls_after_first:]]
    assert second_run_api_paths == [f"/v1/jobs/{job_id}/results-url"]
    heads = sum(1 for r in emulator.storage_requests if r.method == "HEAD")
    assert heads == heads_after_first + 1
    observations = [
        event.event_specific_data.asset_observation  # type: ignore[union-attr]
        for event in second.all_events
        if event.event_type_value == "ASSET_OBSERVATION"
    ]
    assert len(observations) == 1
    assert observations[0].metadata[md.ETAG_KEY].value == emulator.artifact_etag(job_id)
    records = instance.fetch_materializations(asset.key, limit=10).records
    assert len(records) == 1


def test_replaced_artifact_materializes_new_etag(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=50)
    assert _materialize(asset, sutro, instance, job_id=job_id).success
    old_etag = emulator.artifact_etag(job_id)

    emulator.replace_artifact(job_id, num_rows=75)
    new_etag = emulator.artifact_etag(job_id)
    result = _materialize(asset, sutro, instance, job_id=job_id)

    assert new_etag != old_etag
    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.node_def.name)
    assert materialization.metadata[md.ETAG_KEY].value == new_etag
    assert materialization.metadata[md.ROW_COUNT_KEY].value == 75
    event = instance.get_latest_materialization_event(asset.key)
    assert event is not None
    assert event.tags["dagster/data_version"] == new_etag
    published = destination / emulator.artifact_path(job_id).name
    assert _sha256(published) == _sha256(emulator.artifact_path(job_id))


def test_force_downloads_unchanged_artifact(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)
    assert _materialize(asset, sutro, instance, job_id=job_id).success
    gets = _storage_gets(emulator)

    result = _materialize(asset, sutro, instance, job_id=job_id, force=True)

    assert result.success
    assert len(result.asset_materializations_for_node(asset.node_def.name)) == 1
    assert _storage_gets(emulator) > gets


def test_deleted_destination_downloads_again(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    assert _materialize(asset, sutro, instance, job_id=job_id).success
    (destination / emulator.artifact_path(job_id).name).unlink()

    result = _materialize(asset, sutro, instance, job_id=job_id)

    assert result.success
    assert len(result.asset_materializations_for_node(asset.node_def.name)) == 1
    assert (destination / emulator.artifact_path(job_id).name).exists()


def test_other_include_flags_download_separately(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    assert _materialize(asset, sutro, instance, job_id=job_id).success

    result = _materialize(asset, sutro, instance, job_id=job_id, include_inputs=True)

    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.node_def.name)
    assert materialization.metadata[md.INCLUDE_INPUTS_KEY].value is True
    path = destination / emulator.artifact_path(job_id, include_inputs=True).name
    assert "inputs" in pq.read_schema(path).names


def test_running_job_fails_with_state(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20, status="RUNNING")

    result = _materialize(asset, sutro, instance, job_id=job_id)

    assert not result.success
    failure = result.get_step_failure_events()[0]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "RUNNING" in message
    assert job_id in message
    assert not destination.exists() or not any(destination.iterdir())
    assert _storage_gets(emulator) == 0


def test_invalid_job_id_fails_before_requests(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    result = _materialize(asset, sutro, instance, job_id="job/../other")

    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message  # type: ignore[union-attr]
    assert "job/../other" in message
    assert emulator.api_requests == []


def test_unknown_destination_protocol_fails_before_requests(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.clear_requests()

    result = _materialize(asset, sutro, instance, job_id=job_id, destination="nosuchfs://x/")

    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message  # type: ignore[union-attr]
    assert "nosuchfs://x/" in message
    assert emulator.api_requests == []


def test_s3_destination_on_moto(
    emulator: SutroEmulator,
    sutro: SutroResource,
    instance,
    s3_bucket: str,
    s3_storage_options: dict,
) -> None:
    asset = build_sutro_results_asset(
        destination=f"s3://{s3_bucket}/sutro/", storage_options=s3_storage_options
    )
    job_id = emulator.add_job(num_rows=300)
    source = emulator.artifact_path(job_id)

    first = _materialize(asset, sutro, instance, job_id=job_id)
    second = _materialize(asset, sutro, instance, job_id=job_id)

    assert first.success
    [materialization] = first.asset_materializations_for_node(asset.node_def.name)
    uri = materialization.metadata[md.URI_KEY].value
    assert uri == f"s3://{s3_bucket}/sutro/{source.name}"
    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert hashlib.sha256(fs.cat_file(uri)).hexdigest() == _sha256(source)
    assert materialization.metadata[md.ROW_COUNT_KEY].value == 300
    assert second.success
    assert second.asset_materializations_for_node(asset.node_def.name) == []


def test_no_credentials_in_logs_or_events(
    tmp_path: Path, instance, asset, caplog: pytest.LogCaptureFixture, capfd
) -> None:
    canary_key = "sk_canary_" + "7f3a9c1e5b2d4f6a8c0e"
    with SutroEmulator(api_key=canary_key, root_dir=tmp_path / "emu") as emulator:
        sutro = SutroResource(api_key=canary_key, api_url=emulator.api_url, max_retries=1)
        job_id = emulator.add_job(num_rows=30)
        running = emulator.add_job(num_rows=5, status="RUNNING")
        caplog.set_level(logging.DEBUG)
        runs = [
            _materialize(asset, sutro, instance, job_id=job_id),
            _materialize(asset, sutro, instance, job_id=job_id),
            _materialize(asset, sutro, instance, job_id=running),
        ]
        signatures = {
            request.query["X-Amz-Signature"]
            for request in emulator.storage_requests
            if "X-Amz-Signature" in request.query
        }

    assert signatures
    captured = capfd.readouterr()
    texts = [caplog.text, captured.out, captured.err]
    for run in runs:
        for record in instance.all_logs(run.run_id):
            texts.append(repr(record))
    blob = "\n".join(texts)
    assert canary_key not in blob
    for signature in signatures:
        assert signature not in blob


def test_corrupted_destination_downloads_again(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    assert _materialize(asset, sutro, instance, job_id=job_id).success
    published = destination / emulator.artifact_path(job_id).name
    size = published.stat().st_size
    published.write_bytes(b"\0" * size)

    result = _materialize(asset, sutro, instance, job_id=job_id)

    assert result.success
    assert len(result.asset_materializations_for_node(asset.node_def.name)) == 1
    assert _sha256(published) == _sha256(emulator.artifact_path(job_id))


def test_empty_destination_in_config_rejected(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.clear_requests()

    result = _materialize(asset, sutro, instance, job_id=job_id, destination="")

    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message  # type: ignore[union-attr]
    assert "destination" in message.lower()
    assert emulator.api_requests == []
