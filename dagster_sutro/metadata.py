"""Metadata keys of the results assets, and their values read from the Parquet footer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_sutro.models import DownloadResult, ResultsDownloadUrl

NAMESPACE = "dagster-sutro"
JOB_ID_KEY = f"{NAMESPACE}/job_id"
ETAG_KEY = f"{NAMESPACE}/etag"
SIZE_BYTES_KEY = f"{NAMESPACE}/size_bytes"
ARTIFACT_KEY_KEY = f"{NAMESPACE}/artifact_key"
INCLUDE_INPUTS_KEY = f"{NAMESPACE}/include_inputs"
INCLUDE_LOGPROBS_KEY = f"{NAMESPACE}/include_cumulative_logprobs"
BYTES_TRANSFERRED_KEY = f"{NAMESPACE}/bytes_transferred"
RESUMED_BYTES_KEY = f"{NAMESPACE}/resumed_bytes"
SECONDS_KEY = f"{NAMESPACE}/seconds"
MIB_PER_SECOND_KEY = f"{NAMESPACE}/mib_per_second"
PREVIEW_KEY = f"{NAMESPACE}/preview"
SKIP_REASON_KEY = f"{NAMESPACE}/skip_reason"
URI_KEY = "dagster/uri"
ROW_COUNT_KEY = "dagster/row_count"
COLUMN_SCHEMA_KEY = "dagster/column_schema"

PREVIEW_CELL_CHARS = 80


@dataclass(frozen=True)
class ParquetSummary:
    """The footer facts and preview that the asset records about a downloaded Parquet file.

    Attributes:
        num_rows: The row count from the footer.
        schema: The Arrow schema from the footer.
        preview: The first rows, with long values cut, as a Markdown table.
    """

    num_rows: int
    schema: pa.Schema
    preview: str


def read_parquet_summary(fs: Any, path: str, *, preview_rows: int = 5) -> ParquetSummary:
    """Read the row count and schema from a Parquet footer, and a few rows for a preview.

    Only the footer and, for the preview, the first row group's pages are read.

    Args:
        fs: The fsspec filesystem holding the file.
        path: The file's path on that filesystem.
        preview_rows: How many rows the preview shows; 0 for none.

    Returns:
        The row count, the schema and the preview table.
    """
    with fs.open(path, "rb") as handle:
        parquet_file = pq.ParquetFile(handle)
        num_rows = parquet_file.metadata.num_rows
        schema = parquet_file.schema_arrow
        preview = ""
        if preview_rows > 0 and num_rows > 0:
            batch = next(parquet_file.iter_batches(batch_size=preview_rows), None)
            if batch is not None:
                preview = _markdown_preview(batch.slice(0, preview_rows))
    return ParquetSummary(num_rows=num_rows, schema=schema, preview=preview)


def _markdown_preview(batch: pa.RecordBatch) -> str:
    columns = batch.schema.names
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in batch.to_pylist():
        cells = [_cell(row[name]) for name in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    if len(text) > PREVIEW_CELL_CHARS:
        text = text[: PREVIEW_CELL_CHARS - 1] + "…"
    return text


def table_schema_of(schema: pa.Schema) -> dg.TableSchema:
    """Convert an Arrow schema to the Dagster table schema shown in the UI.

    Args:
        schema: The Arrow schema of the Parquet file.

    Returns:
        A ``dg.TableSchema`` with one column per field.
    """
    return dg.TableSchema(
        columns=[dg.TableColumn(name=field.name, type=str(field.type)) for field in schema]
    )


def materialization_metadata(
    *,
    urls: ResultsDownloadUrl,
    result: DownloadResult,
    summary: ParquetSummary,
) -> dict[str, Any]:
    """Build the metadata of a results materialization.

    Args:
        urls: The results-url response, for the job id, flags and artifact key.
        result: The finished download.
        summary: The footer summary of the downloaded file.

    Returns:
        The metadata dictionary, with no presigned URL in it.
    """
    metadata: dict[str, Any] = {
        JOB_ID_KEY: urls.job_id,
        ETAG_KEY: result.etag,
        SIZE_BYTES_KEY: dg.MetadataValue.int(result.size_bytes),
        ARTIFACT_KEY_KEY: urls.artifact.key,
        INCLUDE_INPUTS_KEY: dg.MetadataValue.bool(urls.include_inputs),
        INCLUDE_LOGPROBS_KEY: dg.MetadataValue.bool(urls.include_cumulative_logprobs),
        URI_KEY: result.uri,
        ROW_COUNT_KEY: dg.MetadataValue.int(summary.num_rows),
        COLUMN_SCHEMA_KEY: table_schema_of(summary.schema),
        BYTES_TRANSFERRED_KEY: dg.MetadataValue.int(result.bytes_transferred),
        RESUMED_BYTES_KEY: dg.MetadataValue.int(result.resumed_bytes),
        SECONDS_KEY: dg.MetadataValue.float(round(result.seconds, 3)),
        MIB_PER_SECOND_KEY: dg.MetadataValue.float(round(result.mib_per_second, 2)),
    }
    if summary.preview:
        metadata[PREVIEW_KEY] = dg.MetadataValue.md(summary.preview)
    return metadata


def metadata_value(metadata: dict[str, Any], key: str) -> Any:
    """Unwrap a stored metadata entry to its plain Python value.

    Args:
        metadata: The metadata of a materialization event.
        key: The key to read.

    Returns:
        The plain value, or ``None`` when the key is absent.
    """
    entry = metadata.get(key)
    if entry is None:
        return None
    return getattr(entry, "value", entry)
