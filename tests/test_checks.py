"""Asset checks of the results assets, evaluated in the download step on a real instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from dagster_sutro import (
    SutroResource,
    SutroResultsConfig,
    build_sutro_job_assets,
    build_sutro_partitioned_results_asset,
    build_sutro_results_asset,
    checks as sutro_checks,
)
from dagster_sutro.checks import (
    OUTPUTS_COLUMN_PRESENT_CHECK,
    ROW_COUNT_POSITIVE_CHECK,
    SCHEMA_UNCHANGED_CHECK,
    SUTRO_CHECK_NAMES,
)
from dagster_sutro.testing import SutroEmulator, make_results_table

pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning")


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def asset(tmp_path: Path) -> dg.AssetsDefinition:
    return build_sutro_results_asset(destination=f"{tmp_path / 'results'}/")


@pytest.fixture
def downstream(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(deps=[asset.key])
    def reads_results() -> None:
        return None

    return reads_results


def _materialize(
    assets: list[dg.AssetsDefinition],
    results_asset: dg.AssetsDefinition,
    sutro: SutroResource,
    instance: dg.DagsterInstance,
    **config: object,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        resources={"sutro": sutro},
        instance=instance,
        run_config=dg.RunConfig({results_asset.node_def.name: SutroResultsConfig(**config)}),
        raise_on_error=False,
    )


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
    }


def _step_succeeded(result: dg.ExecuteInProcessResult, step_key: str) -> bool:
    return any(
        event.event_type_value == "STEP_SUCCESS" and event.step_key == step_key
        for event in result.all_events
    )


def test_checks_pass_on_normal_job(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, downstream
) -> None:
    job_id = emulator.add_job(num_rows=250)

    result = _materialize([asset, downstream], asset, sutro, instance, job_id=job_id)

    assert result.success
    evaluations = _evaluations(result)
    assert set(evaluations) == set(SUTRO_CHECK_NAMES)
    assert all(evaluation.passed for evaluation in evaluations.values())
    row_count = evaluations[ROW_COUNT_POSITIVE_CHECK].metadata
    assert row_count["dagster/row_count"].value == 250
    assert row_count[sutro_checks.EXPECTED_NUM_ROWS_KEY].value == 250
    assert _step_succeeded(result, downstream.node_def.name)


def test_zero_row_job_fails_and_blocks(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, downstream
) -> None:
    job_id = emulator.add_job(num_rows=0)

    result = _materialize([asset, downstream], asset, sutro, instance, job_id=job_id)

    assert not result.success
    evaluation = _evaluations(result)[ROW_COUNT_POSITIVE_CHECK]
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "no rows" in (evaluation.description or "")
    # The materialization is recorded before the blocking check fails the step.
    assert len(result.asset_materializations_for_node(asset.node_def.name)) == 1
    assert not _step_succeeded(result, downstream.node_def.name)
    failure = result.get_step_failure_events()[0]
    assert failure.step_key == asset.node_def.name
    assert ROW_COUNT_POSITIVE_CHECK in failure.step_failure_data.error.message  # type: ignore[union-attr]


def test_row_count_differing_from_api_fails(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=40)
    emulator.artifact_path(job_id)
    # The emulator keeps the API's row count and the artifact in step; only a direct edit of
    # its job record can make them disagree.
    emulator._store.require_job(job_id).num_rows = 41

    result = _materialize([asset], asset, sutro, instance, job_id=job_id)

    assert not result.success
    evaluation = _evaluations(result)[ROW_COUNT_POSITIVE_CHECK]
    assert evaluation.passed is False
    assert evaluation.metadata[sutro_checks.EXPECTED_NUM_ROWS_KEY].value == 41
    assert "40 rows" in (evaluation.description or "")
    assert "41 rows" in (evaluation.description or "")


def test_table_without_outputs_fails_check(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, downstream
) -> None:
    table = pa.table({"row_id": list(range(5)), "text": [f"row {i}" for i in range(5)]})
    job_id = emulator.add_job(table=table)

    result = _materialize([asset, downstream], asset, sutro, instance, job_id=job_id)

    assert not result.success
    evaluations = _evaluations(result)
    assert evaluations[OUTPUTS_COLUMN_PRESENT_CHECK].passed is False
    assert evaluations[OUTPUTS_COLUMN_PRESENT_CHECK].metadata[sutro_checks.COLUMNS_KEY].value == [
        "row_id",
        "text",
    ]
    assert evaluations[ROW_COUNT_POSITIVE_CHECK].passed is True
    assert not _step_succeeded(result, downstream.node_def.name)


def test_schema_change_warns_without_blocking(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, downstream
) -> None:
    job_id = emulator.add_job(num_rows=30)
    first = _materialize([asset, downstream], asset, sutro, instance, job_id=job_id)

    second = _materialize(
        [asset, downstream], asset, sutro, instance, job_id=job_id, include_inputs=True
    )

    assert first.success
    assert _evaluations(first)[SCHEMA_UNCHANGED_CHECK].passed is True
    assert second.success
    evaluation = _evaluations(second)[SCHEMA_UNCHANGED_CHECK]
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata[sutro_checks.ADDED_COLUMNS_KEY].value == ["inputs"]
    assert evaluation.metadata[sutro_checks.REMOVED_COLUMNS_KEY].value == []
    assert evaluation.metadata[sutro_checks.PREVIOUS_RUN_ID_KEY].value == first.run_id
    assert _step_succeeded(second, downstream.node_def.name)


def test_replaced_artifact_same_schema_passes(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=30)
    assert _materialize([asset], asset, sutro, instance, job_id=job_id).success
    emulator.replace_artifact(job_id, num_rows=45)

    result = _materialize([asset], asset, sutro, instance, job_id=job_id)

    assert result.success
    evaluations = _evaluations(result)
    assert evaluations[SCHEMA_UNCHANGED_CHECK].passed is True
    assert evaluations[ROW_COUNT_POSITIVE_CHECK].metadata["dagster/row_count"].value == 45


def test_skipped_download_checks_existing_file(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset, downstream
) -> None:
    job_id = emulator.add_job(num_rows=20)
    assert _materialize([asset, downstream], asset, sutro, instance, job_id=job_id).success

    second = _materialize([asset, downstream], asset, sutro, instance, job_id=job_id)

    assert second.success
    assert second.asset_materializations_for_node(asset.node_def.name) == []
    evaluations = _evaluations(second)
    assert set(evaluations) == {
        ROW_COUNT_POSITIVE_CHECK,
        OUTPUTS_COLUMN_PRESENT_CHECK,
        SCHEMA_UNCHANGED_CHECK,
    }
    assert all(evaluation.passed for evaluation in evaluations.values())
    assert evaluations[ROW_COUNT_POSITIVE_CHECK].metadata["dagster/row_count"].value == 20
    assert _step_succeeded(second, asset.node_def.name)
    assert not _step_succeeded(second, downstream.node_def.name)


def test_deselected_checks_not_evaluated(
    emulator: SutroEmulator, sutro: SutroResource, instance, asset
) -> None:
    job_id = emulator.add_job(num_rows=20)

    result = dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=instance,
        selection=dg.AssetSelection.assets(asset.key).without_checks(),
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
    )

    assert result.success
    assert len(result.asset_materializations_for_node(asset.node_def.name)) == 1
    assert result.get_asset_check_evaluations() == []


def test_checks_disabled_declares_none(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    asset = build_sutro_results_asset(destination=f"{tmp_path}/", enable_asset_checks=False)
    job_id = emulator.add_job(num_rows=0)

    result = _materialize([asset], asset, sutro, instance, job_id=job_id)

    assert list(asset.check_keys) == []
    assert result.success
    assert result.get_asset_check_evaluations() == []


def test_every_results_builder_declares_checks(tmp_path: Path) -> None:
    config_driven = build_sutro_results_asset(destination=f"{tmp_path}/")
    _, job_results = build_sutro_job_assets(job_id="job-1", destination=f"{tmp_path}/")
    partitioned = build_sutro_partitioned_results_asset(destination=f"{tmp_path}/")

    for asset in (config_driven, job_results, partitioned):
        names = {check_key.name for check_key in asset.check_keys}
        assert names == set(SUTRO_CHECK_NAMES), asset.key
        specs = {spec.name: spec for spec in asset.check_specs}
        assert specs[ROW_COUNT_POSITIVE_CHECK].blocking is True
        assert specs[OUTPUTS_COLUMN_PRESENT_CHECK].blocking is True
        assert specs[SCHEMA_UNCHANGED_CHECK].blocking is False


def test_diff_schemas_reports_type_changes() -> None:
    before = dg.TableSchema(
        columns=[
            dg.TableColumn("row_id", "int64"),
            dg.TableColumn("outputs", "string"),
            dg.TableColumn("inputs", "string"),
        ]
    )
    after = dg.TableSchema(
        columns=[dg.TableColumn("outputs", "large_string"), dg.TableColumn("row_id", "int64")]
    )

    diff = sutro_checks.diff_schemas(before, after)

    assert diff.added == []
    assert diff.removed == ["inputs"]
    assert diff.changed_types == ["outputs: string -> large_string"]
    assert not diff.unchanged
    assert sutro_checks.diff_schemas(after, after).unchanged


def test_zero_row_table_has_outputs_column() -> None:
    # The zero-row case above must fail on row count alone, not on a missing column.
    assert "outputs" in make_results_table(0).schema.names
