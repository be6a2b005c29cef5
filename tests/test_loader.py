"""Reading downloaded results downstream: the loader function and the input manager."""

# No "from __future__ import annotations": Dagster reads the annotations of the assets defined
# inside the tests at run time.
import importlib.util
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from dagster_sutro import (
    InvalidInputError,
    SutroResource,
    SutroResultsConfig,
    SutroResultsInputManager,
    build_sutro_results_asset,
    load_sutro_results,
    metadata as md,
)
from dagster_sutro.testing import SutroEmulator

NUM_ROWS = 40


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def asset(tmp_path: Path) -> dg.AssetsDefinition:
    return build_sutro_results_asset(destination=f"{tmp_path / 'results'}/")


@pytest.fixture
def job_id(emulator: SutroEmulator) -> str:
    return emulator.add_job(num_rows=NUM_ROWS)


def _materialize(
    assets: list[dg.AssetsDefinition],
    results_asset: dg.AssetsDefinition,
    sutro: SutroResource,
    instance: dg.DagsterInstance,
    job_id: str,
    resources: dict | None = None,
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        assets,
        resources={"sutro": sutro, **(resources or {})},
        instance=instance,
        run_config=dg.RunConfig({results_asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
    )
    assert result.success
    return result


def _uri(instance: dg.DagsterInstance, asset: dg.AssetsDefinition) -> str:
    event = instance.get_latest_materialization_event(asset.key)
    assert event is not None
    assert event.asset_materialization is not None
    return str(event.asset_materialization.metadata[md.URI_KEY].value)


def test_uri_with_column_subset(sutro: SutroResource, instance, asset, job_id: str) -> None:
    _materialize([asset], asset, sutro, instance, job_id)

    table = load_sutro_results(_uri(instance, asset), columns=["outputs"])

    assert isinstance(table, pa.Table)
    assert table.column_names == ["outputs"]
    assert table.num_rows == NUM_ROWS


def test_row_filters(sutro: SutroResource, instance, asset, job_id: str) -> None:
    _materialize([asset], asset, sutro, instance, job_id)
    uri = _uri(instance, asset)

    tuples = load_sutro_results(uri, columns=["row_id"], filters=[("row_id", "<", 10)])
    expression = load_sutro_results(uri, filters=pa.compute.field("row_id") >= 30)

    assert tuples.column("row_id").to_pylist() == list(range(10))
    assert expression.column("row_id").to_pylist() == list(range(30, NUM_ROWS))
    assert "outputs" in expression.column_names


def test_pandas_output(sutro: SutroResource, instance, asset, job_id: str) -> None:
    _materialize([asset], asset, sutro, instance, job_id)

    frame = load_sutro_results(
        asset, instance=instance, columns=["row_id", "outputs"], as_="pandas"
    )

    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["row_id", "outputs"]
    assert len(frame) == NUM_ROWS


def test_polars_output_or_clear_error(sutro: SutroResource, instance, asset, job_id: str) -> None:
    _materialize([asset], asset, sutro, instance, job_id)
    uri = _uri(instance, asset)

    if importlib.util.find_spec("polars") is None:
        with pytest.raises(ImportError, match="pip install polars"):
            load_sutro_results(uri, as_="polars")
    else:
        frame = load_sutro_results(uri, as_="polars")
        assert type(frame).__module__.startswith("polars")
        assert frame.height == NUM_ROWS


def test_asset_key_lookup_and_partition_miss(
    sutro: SutroResource, instance, asset, job_id: str
) -> None:
    _materialize([asset], asset, sutro, instance, job_id)

    table = load_sutro_results(asset.key, instance=instance, columns=["row_id"])
    with pytest.raises(FileNotFoundError, match="partition p1"):
        load_sutro_results(asset.key, instance=instance, partition_key="p1")

    assert table.num_rows == NUM_ROWS


def test_s3_uri_on_moto(
    emulator: SutroEmulator,
    sutro: SutroResource,
    instance,
    s3_bucket: str,
    s3_storage_options: dict,
) -> None:
    asset = build_sutro_results_asset(
        destination=f"s3://{s3_bucket}/sutro/", storage_options=s3_storage_options
    )
    job_id = emulator.add_job(num_rows=NUM_ROWS)
    _materialize([asset], asset, sutro, instance, job_id)
    uri = _uri(instance, asset)

    table = load_sutro_results(
        asset,
        instance=instance,
        columns=["row_id"],
        filters=[("row_id", ">=", 35)],
        storage_options=s3_storage_options,
    )

    assert uri.startswith(f"s3://{s3_bucket}/sutro/")
    assert table.column("row_id").to_pylist() == list(range(35, NUM_ROWS))


def test_context_of_downstream_asset(sutro: SutroResource, instance, asset, job_id: str) -> None:
    @dg.asset(deps=[asset])
    def output_rows(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        table = load_sutro_results(context, columns=["outputs"])
        return dg.MaterializeResult(metadata={"dagster/row_count": table.num_rows})

    result = _materialize([asset, output_rows], asset, sutro, instance, job_id)

    [materialization] = result.asset_materializations_for_node("output_rows")
    assert materialization.metadata["dagster/row_count"].value == NUM_ROWS


def test_context_needs_asset_with_many_upstreams(
    sutro: SutroResource, instance, asset, job_id: str
) -> None:
    @dg.asset
    def other() -> None:
        return None

    @dg.asset(deps=[asset, other])
    def combined(context: dg.AssetExecutionContext) -> None:
        with pytest.raises(InvalidInputError, match="Pass asset="):
            load_sutro_results(context)
        assert load_sutro_results(context, asset=asset).num_rows == NUM_ROWS

    _materialize([asset, other, combined], asset, sutro, instance, job_id)


def test_input_manager_follows_annotation(
    sutro: SutroResource, instance, asset, job_id: str
) -> None:
    @dg.asset(
        ins={
            "results": dg.AssetIn(
                key=asset.key,
                input_manager_key="sutro_results_loader",
                metadata={"columns": ["row_id"], "filters": [("row_id", "<", 5)]},
            )
        }
    )
    def first_rows(results: pa.Table) -> dg.MaterializeResult:
        assert results.column_names == ["row_id"]
        return dg.MaterializeResult(metadata={"dagster/row_count": results.num_rows})

    @dg.asset(ins={"results": dg.AssetIn(key=asset.key, input_manager_key="sutro_results_loader")})
    def as_frame(results: pd.DataFrame) -> dg.MaterializeResult:
        assert isinstance(results, pd.DataFrame)
        return dg.MaterializeResult(metadata={"dagster/row_count": len(results)})

    result = _materialize(
        [asset, first_rows, as_frame],
        asset,
        sutro,
        instance,
        job_id,
        resources={"sutro_results_loader": SutroResultsInputManager()},
    )

    [first] = result.asset_materializations_for_node("first_rows")
    [frame] = result.asset_materializations_for_node("as_frame")
    assert first.metadata["dagster/row_count"].value == 5
    assert frame.metadata["dagster/row_count"].value == NUM_ROWS


def test_unknown_column_lists_available(sutro: SutroResource, instance, asset, job_id: str) -> None:
    _materialize([asset], asset, sutro, instance, job_id)

    with pytest.raises(InvalidInputError, match="no column 'missing'") as error:
        load_sutro_results(_uri(instance, asset), columns=["missing"])

    assert "outputs" in str(error.value)


def test_missing_materialization_and_bad_arguments(instance, asset) -> None:
    with pytest.raises(FileNotFoundError, match="no materialization yet"):
        load_sutro_results(asset, instance=instance)
    with pytest.raises(InvalidInputError, match="needs the Dagster instance"):
        load_sutro_results(asset)
    with pytest.raises(InvalidInputError, match="as_="):
        load_sutro_results("x.parquet", as_="excel")  # type: ignore[call-overload]
    with pytest.raises(InvalidInputError, match="list of names"):
        load_sutro_results("x.parquet", columns="outputs")
