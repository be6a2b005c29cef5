"""Asset checks of the results assets, evaluated from the Parquet footer in the download step.

Every results asset declares these checks with ``check_specs=`` and evaluates them in the step
that downloads the artifact. They use the row count and schema that the step reads from the
Parquet footer anyway, so the file is not read a second time:

- ``row_count_positive`` (blocking): the file has at least one row, and as many rows as the
  Sutro API reports for the job (``num_rows`` of ``GET /v1/jobs/{job_id}``) when it reports one.
- ``outputs_column_present`` (blocking): the file has the ``outputs`` column.
- ``schema_unchanged`` (not blocking): the columns and their types equal those recorded by the
  asset's previous materialization (of the same partition, for a partitioned asset). A change
  is reported with WARN severity, so it never blocks downstream assets.

A blocking check that fails with ERROR severity fails the step after the materialization is
recorded, so downstream assets in the same run do not run. Declarative Automation can gate on
them with ``dg.AutomationCondition.all_deps_blocking_checks_passed()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa

from dagster_sutro import metadata as md
from dagster_sutro.client import SutroClient
from dagster_sutro.errors import SutroError

ROW_COUNT_POSITIVE_CHECK = "row_count_positive"
OUTPUTS_COLUMN_PRESENT_CHECK = "outputs_column_present"
SCHEMA_UNCHANGED_CHECK = "schema_unchanged"
SUTRO_CHECK_NAMES = (ROW_COUNT_POSITIVE_CHECK, OUTPUTS_COLUMN_PRESENT_CHECK, SCHEMA_UNCHANGED_CHECK)

OUTPUTS_COLUMN = "outputs"

EXPECTED_NUM_ROWS_KEY = f"{md.NAMESPACE}/expected_num_rows"
COLUMNS_KEY = f"{md.NAMESPACE}/columns"
ADDED_COLUMNS_KEY = f"{md.NAMESPACE}/added_columns"
REMOVED_COLUMNS_KEY = f"{md.NAMESPACE}/removed_columns"
CHANGED_TYPES_KEY = f"{md.NAMESPACE}/changed_column_types"
PREVIOUS_RUN_ID_KEY = f"{md.NAMESPACE}/previous_run_id"


def build_sutro_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    """Build the check specs that a results asset declares.

    Args:
        asset_key: The key of the results asset.

    Returns:
        The specs of ``row_count_positive``, ``outputs_column_present`` (both blocking) and
        ``schema_unchanged`` (not blocking).

    Examples:
        .. code-block:: python

            key = dg.AssetKey(["sutro", "results"])

            @dg.multi_asset(
                specs=[dg.AssetSpec(key, skippable=True)],
                check_specs=build_sutro_check_specs(key),
                can_subset=True,
            )
            def results(context: dg.AssetExecutionContext): ...
    """
    return [
        dg.AssetCheckSpec(
            ROW_COUNT_POSITIVE_CHECK,
            asset=asset_key,
            blocking=True,
            description="The downloaded Parquet file has at least one row, and as many rows "
            "as the Sutro API reports for the job when it reports a row count.",
        ),
        dg.AssetCheckSpec(
            OUTPUTS_COLUMN_PRESENT_CHECK,
            asset=asset_key,
            blocking=True,
            description=f"The downloaded Parquet file has the '{OUTPUTS_COLUMN}' column that "
            "contains the model outputs.",
        ),
        dg.AssetCheckSpec(
            SCHEMA_UNCHANGED_CHECK,
            asset=asset_key,
            blocking=False,
            description="The columns and their types equal those of the previous "
            "materialization. A change is reported with WARN severity.",
        ),
    ]


@dataclass(frozen=True)
class SchemaDiff:
    """The difference between two column schemas.

    Attributes:
        added: Columns present now but not before.
        removed: Columns present before but not now.
        changed_types: ``"name: old -> new"`` for each column whose type changed.
    """

    added: list[str]
    removed: list[str]
    changed_types: list[str]

    @property
    def unchanged(self) -> bool:
        """Whether the schemas are equal."""
        return not (self.added or self.removed or self.changed_types)


def diff_schemas(previous: dg.TableSchema, current: dg.TableSchema) -> SchemaDiff:
    """Compare two column schemas by column name and type, ignoring column order.

    Args:
        previous: The schema recorded by the previous materialization.
        current: The schema of the file just downloaded.

    Returns:
        The added and removed columns and the columns whose type changed.
    """
    before = {column.name: column.type for column in previous.columns}
    after = {column.name: column.type for column in current.columns}
    return SchemaDiff(
        added=[name for name in after if name not in before],
        removed=[name for name in before if name not in after],
        changed_types=[
            f"{name}: {before[name]} -> {after[name]}"
            for name in after
            if name in before and before[name] != after[name]
        ],
    )


def selected_sutro_checks(context: dg.AssetExecutionContext) -> set[str]:
    """Return the names of this package's checks that the current run evaluates.

    An asset built without checks, or a run that deselected them, yields an empty set.

    Args:
        context: The results asset's execution context.

    Returns:
        The selected check names among :data:`SUTRO_CHECK_NAMES`.
    """
    return {
        check_key.name
        for check_key in context.selected_asset_check_keys
        if check_key.asset_key == context.asset_key and check_key.name in SUTRO_CHECK_NAMES
    }


def evaluate_sutro_checks(
    context: dg.AssetExecutionContext,
    *,
    client: SutroClient,
    job_id: str,
    num_rows: int,
    schema: pa.Schema,
    compare_with_job: bool = True,
) -> list[dg.AssetCheckResult]:
    """Evaluate the selected checks on a downloaded file, from its footer's row count and schema.

    Call this before the new materialization is recorded, because ``schema_unchanged`` compares
    with the latest materialization in the instance.

    Args:
        context: The results asset's execution context.
        client: The Sutro client, used for the job's reported row count.
        job_id: The job whose results were downloaded.
        num_rows: The row count from the Parquet footer.
        schema: The Arrow schema from the Parquet footer.
        compare_with_job: Compare the row count with the job's ``num_rows`` from the API. A
            skipped run passes false: its file was compared when it was downloaded, and the
            skip costs no request beyond results-url and the HEAD.

    Returns:
        One result per selected check, in the order of :data:`SUTRO_CHECK_NAMES`.
    """
    selected = selected_sutro_checks(context)
    results: list[dg.AssetCheckResult] = []
    if ROW_COUNT_POSITIVE_CHECK in selected:
        expected = _reported_num_rows(context, client, job_id) if compare_with_job else None
        results.append(_row_count_result(context, job_id, num_rows, expected))
    if OUTPUTS_COLUMN_PRESENT_CHECK in selected:
        results.append(_outputs_column_result(context, job_id, schema))
    if SCHEMA_UNCHANGED_CHECK in selected:
        results.append(_schema_unchanged_result(context, job_id, md.table_schema_of(schema)))
    return results


def _reported_num_rows(
    context: dg.AssetExecutionContext, client: SutroClient, job_id: str
) -> int | None:
    try:
        job = client.get_job(job_id)
    except SutroError as error:
        context.log.warning(
            f"Could not read the row count of Sutro job {job_id}, so {ROW_COUNT_POSITIVE_CHECK} "
            f"checks only that the file has rows: {error}"
        )
        return None
    reported = job.get("num_rows")
    if isinstance(reported, bool) or not isinstance(reported, int):
        context.log.info(
            f"The Sutro API reports no row count for job {job_id}, so "
            f"{ROW_COUNT_POSITIVE_CHECK} checks only that the file has rows."
        )
        return None
    return reported


def _row_count_result(
    context: dg.AssetExecutionContext, job_id: str, num_rows: int, expected: int | None
) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {md.ROW_COUNT_KEY: dg.MetadataValue.int(num_rows)}
    if expected is not None:
        metadata[EXPECTED_NUM_ROWS_KEY] = dg.MetadataValue.int(expected)

    if num_rows <= 0:
        description = f"The results of Sutro job {job_id} have no rows."
        passed = False
    elif expected is not None and num_rows != expected:
        description = (
            f"The results of Sutro job {job_id} have {num_rows} rows, but the Sutro API "
            f"reports {expected} rows for the job."
        )
        passed = False
    else:
        description = f"The results of Sutro job {job_id} have {num_rows} rows."
        passed = True

    _log_result(context, ROW_COUNT_POSITIVE_CHECK, passed, description)
    return dg.AssetCheckResult(
        asset_key=context.asset_key,
        check_name=ROW_COUNT_POSITIVE_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=metadata,
    )


def _outputs_column_result(
    context: dg.AssetExecutionContext, job_id: str, schema: pa.Schema
) -> dg.AssetCheckResult:
    columns = list(schema.names)
    passed = OUTPUTS_COLUMN in columns
    if passed:
        description = f"The results of Sutro job {job_id} have the '{OUTPUTS_COLUMN}' column."
    else:
        description = (
            f"The results of Sutro job {job_id} have no '{OUTPUTS_COLUMN}' column; the columns "
            f"are {', '.join(columns) or 'none'}."
        )
    _log_result(context, OUTPUTS_COLUMN_PRESENT_CHECK, passed, description)
    return dg.AssetCheckResult(
        asset_key=context.asset_key,
        check_name=OUTPUTS_COLUMN_PRESENT_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={COLUMNS_KEY: dg.MetadataValue.json(columns)},
    )


def _schema_unchanged_result(
    context: dg.AssetExecutionContext, job_id: str, current: dg.TableSchema
) -> dg.AssetCheckResult:
    previous, previous_run_id = _previous_schema(context)
    if previous is None:
        description = (
            "No earlier materialization recorded a column schema, so there is nothing to "
            "compare with."
        )
        _log_result(context, SCHEMA_UNCHANGED_CHECK, True, description)
        return dg.AssetCheckResult(
            asset_key=context.asset_key,
            check_name=SCHEMA_UNCHANGED_CHECK,
            passed=True,
            description=description,
        )

    diff = diff_schemas(previous, current)
    metadata: dict[str, Any] = {
        PREVIOUS_RUN_ID_KEY: previous_run_id,
        ADDED_COLUMNS_KEY: dg.MetadataValue.json(diff.added),
        REMOVED_COLUMNS_KEY: dg.MetadataValue.json(diff.removed),
        CHANGED_TYPES_KEY: dg.MetadataValue.json(diff.changed_types),
    }
    if diff.unchanged:
        description = f"The schema equals that of run {previous_run_id}."
    else:
        description = (
            f"The schema of Sutro job {job_id}'s results differs from that of run "
            f"{previous_run_id}: {_describe_diff(diff)}."
        )
    _log_result(context, SCHEMA_UNCHANGED_CHECK, diff.unchanged, description)
    return dg.AssetCheckResult(
        asset_key=context.asset_key,
        check_name=SCHEMA_UNCHANGED_CHECK,
        passed=diff.unchanged,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def _previous_schema(context: dg.AssetExecutionContext) -> tuple[dg.TableSchema | None, str]:
    """Return the column schema of the latest materialization (of this partition) and its run."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=context.asset_key,
        asset_partitions=[context.partition_key] if context.has_partition_key else None,
    )
    records = context.instance.fetch_materializations(records_filter, limit=1).records
    if not records or records[0].asset_materialization is None:
        return None, ""
    metadata = dict(records[0].asset_materialization.metadata)
    schema = md.metadata_value(metadata, md.COLUMN_SCHEMA_KEY)
    if not isinstance(schema, dg.TableSchema):
        return None, ""
    return schema, records[0].run_id


def _describe_diff(diff: SchemaDiff) -> str:
    parts: list[str] = []
    if diff.added:
        parts.append(f"added {', '.join(diff.added)}")
    if diff.removed:
        parts.append(f"removed {', '.join(diff.removed)}")
    if diff.changed_types:
        parts.append(f"changed types {'; '.join(diff.changed_types)}")
    return ", ".join(parts)


def _log_result(
    context: dg.AssetExecutionContext, check_name: str, passed: bool, description: str
) -> None:
    if passed:
        context.log.info(f"Check {check_name} passed: {description}")
    else:
        context.log.warning(f"Check {check_name} failed: {description}")
