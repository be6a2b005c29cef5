"""Generation of results tables and Parquet artifacts that look like Sutro's.

Two kinds of artifact are produced. :func:`make_results_table` builds a small, realistic table
(readable outputs, inputs, log probabilities) for functional tests. :func:`write_sized_artifact`
writes an artifact of a requested size with random, incompressible outputs for transfer
benchmarks, in row-group batches so that a 2 GiB artifact never sits in memory at once.
"""

from __future__ import annotations

import array
import hashlib
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

ID_COLUMN = "row_id"
INPUTS_COLUMN = "inputs"
OUTPUTS_COLUMN = "outputs"
LOGPROBS_COLUMN = "cumulative_logprobs"

# S3 gives single-part uploads the MD5 of their content as ETag. The emulator treats objects
# above this size as multipart uploads with 8 MiB parts, s3transfer's default multipart_chunksize.
MULTIPART_THRESHOLD_BYTES = 16 * 1024 * 1024
MULTIPART_PART_SIZE_BYTES = 8 * 1024 * 1024

# Sized artifacts: each output is a JSON object around this many hex characters, and each row
# group contains about this many bytes unless the caller sets row_group_size.
SIZED_OUTPUT_HEX_CHARS = 4096
SIZED_ROW_GROUP_BYTES = 8 * 1024 * 1024
_SIZED_OUTPUT_PREFIX = b'{"content": "'
_SIZED_OUTPUT_SUFFIX = b'"}'

_VOCABULARY_TEXT = (
    "the model reads each review and returns a short summary with a sentiment label while "
    "batch inference keeps throughput high across many prompts customers asked about shipping "
    "delays product quality refunds pricing support and features in their own words results "
    "arrive in the same order as inputs so each row keeps its id and the outputs column stores "
    "json text that downstream steps parse into fields such as score topic language urgency"
)
_WORDS = tuple(_VOCABULARY_TEXT.split())
_SENTIMENTS = ("positive", "negative", "neutral", "mixed")

OutputStyle = Literal["reasoning", "structured"]


def make_results_table(
    num_rows: int,
    *,
    include_inputs: bool = False,
    include_cumulative_logprobs: bool = False,
    seed: int = 0,
    output_chars: int = 200,
    output_style: OutputStyle = "reasoning",
) -> pa.Table:
    """Build a results table shaped like a Sutro artifact.

    Args:
        num_rows: Number of rows, 0 or more.
        include_inputs: Add the ``inputs`` column (the prompts, as strings).
        include_cumulative_logprobs: Add the ``cumulative_logprobs`` column (float64).
        seed: Seed of the random generator, so the same arguments give the same table.
        output_chars: Approximate length of each output's ``content`` text, in characters.
        output_style: ``"reasoning"`` makes each output a JSON string with ``content`` and
            ``reasoning_content``, as reasoning models return it. ``"structured"`` makes each
            output a JSON object with ``sentiment``, ``summary`` and ``score``, as a
            structured-output job returns it.

    Returns:
        A table with the columns ``row_id`` (int64), ``inputs`` (string, when requested),
        ``outputs`` (string) and ``cumulative_logprobs`` (float64, when requested), in that
        order.

    Raises:
        ValueError: If ``num_rows`` is negative or ``output_style`` is unknown.

    Examples:
        >>> table = make_results_table(3, include_inputs=True)
        >>> table.column_names
        ['row_id', 'inputs', 'outputs']
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be 0 or more, got {num_rows}")
    if output_style not in ("reasoning", "structured"):
        raise ValueError(f"output_style must be 'reasoning' or 'structured', got {output_style!r}")

    rng = random.Random(seed)
    words_per_output = max(1, output_chars // 6)
    columns: dict[str, pa.Array] = {ID_COLUMN: pa.array(range(num_rows), pa.int64())}

    if include_inputs:
        inputs = [f"Summarize this customer review: {_sentence(rng, 12)}" for _ in range(num_rows)]
        columns[INPUTS_COLUMN] = pa.array(inputs, pa.string())

    outputs = [_make_output(rng, words_per_output, output_style) for _ in range(num_rows)]
    columns[OUTPUTS_COLUMN] = pa.array(outputs, pa.string())

    if include_cumulative_logprobs:
        logprobs = [-rng.expovariate(1.0) * words_per_output / 4 for _ in range(num_rows)]
        columns[LOGPROBS_COLUMN] = pa.array(logprobs, pa.float64())

    return pa.table(columns)


def select_artifact_columns(
    table: pa.Table, *, include_inputs: bool, include_cumulative_logprobs: bool
) -> pa.Table:
    """Keep the columns that an artifact with the given include flags contains.

    Every column is kept except ``inputs`` (unless ``include_inputs``) and
    ``cumulative_logprobs`` (unless ``include_cumulative_logprobs``).
    """
    dropped = set()
    if not include_inputs:
        dropped.add(INPUTS_COLUMN)
    if not include_cumulative_logprobs:
        dropped.add(LOGPROBS_COLUMN)
    return table.select([name for name in table.column_names if name not in dropped])


def write_table_artifact(
    table: pa.Table,
    path: Path,
    *,
    compression: str,
    row_group_size: int | None,
    metadata: dict[str, str],
) -> None:
    """Write a table as a Parquet file, with extra key-value metadata in the footer."""
    schema_metadata = dict(table.schema.metadata or {})
    schema_metadata.update({key.encode(): value.encode() for key, value in metadata.items()})
    table = table.replace_schema_metadata(schema_metadata)
    pq.write_table(
        table, path, compression=_parquet_compression(compression), row_group_size=row_group_size
    )


def sized_artifact_num_rows(target_size_bytes: int) -> int:
    """Return the number of rows that :func:`write_sized_artifact` writes for a target size."""
    if target_size_bytes <= 0:
        raise ValueError(f"target_size_bytes must be positive, got {target_size_bytes}")
    return max(1, round(target_size_bytes / _sized_row_bytes()))


def write_sized_artifact(
    path: Path,
    target_size_bytes: int,
    *,
    include_inputs: bool,
    include_cumulative_logprobs: bool,
    compression: str,
    row_group_size: int | None,
    seed: int,
    metadata: dict[str, str],
) -> int:
    """Write a Parquet artifact of about ``target_size_bytes`` bytes with random outputs.

    Each output is ``{"content": "<random hex>"}``. Random hex text does not shrink under
    Snappy, so the file size stays close to the target with ``snappy`` or ``none``. Rows are
    generated and written one row group at a time.

    Args:
        path: The file to create.
        target_size_bytes: The approximate file size.
        include_inputs: Add a short ``inputs`` string column.
        include_cumulative_logprobs: Add a ``cumulative_logprobs`` float64 column.
        compression: Parquet compression codec: ``snappy``, ``zstd``, ``gzip`` or ``none``.
        row_group_size: Rows per row group. The default gives row groups of about 8 MiB.
        seed: Seed of the random generator.
        metadata: Extra key-value metadata for the file footer.

    Returns:
        The number of rows written.
    """
    num_rows = sized_artifact_num_rows(target_size_bytes)
    rows_per_group = row_group_size or max(1, SIZED_ROW_GROUP_BYTES // _sized_row_bytes())
    rng = random.Random(seed)

    fields = [pa.field(ID_COLUMN, pa.int64())]
    if include_inputs:
        fields.append(pa.field(INPUTS_COLUMN, pa.string()))
    fields.append(pa.field(OUTPUTS_COLUMN, pa.string()))
    if include_cumulative_logprobs:
        fields.append(pa.field(LOGPROBS_COLUMN, pa.float64()))
    schema = pa.schema(
        fields, metadata={key.encode(): value.encode() for key, value in metadata.items()}
    )

    # Dictionary encoding and statistics only cost time on random text.
    with pq.ParquetWriter(
        path,
        schema,
        compression=_parquet_compression(compression),
        use_dictionary=False,
        write_statistics=[ID_COLUMN],
    ) as writer:
        for start, count in _row_group_bounds(num_rows, rows_per_group):
            columns: list[pa.Array] = [pa.array(range(start, start + count), pa.int64())]
            if include_inputs:
                columns.append(pa.array([f"input {row}" for row in range(start, start + count)]))
            columns.append(_random_outputs(rng, count))
            if include_cumulative_logprobs:
                columns.append(pa.array([-rng.random() * 100 for _ in range(count)], pa.float64()))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=count)
    return num_rows


def compute_s3_etag(path: Path) -> str:
    """Compute the ETag S3 would give this file after a boto3-style upload.

    Files up to 16 MiB get the quoted MD5 of their content. Larger files get the multipart
    form: the MD5 of the concatenated MD5 digests of their 8 MiB parts, a dash and the part
    count, in quotes.

    Args:
        path: The file.

    Returns:
        The ETag, quotes included, for example ``"9b2cf535f27731c974343645a3985328"`` or
        ``"d41d8cd98f00b204e9800998ecf8427e-3"``.
    """
    size = path.stat().st_size
    if size <= MULTIPART_THRESHOLD_BYTES:
        return '"' + hashlib.md5(path.read_bytes()).hexdigest() + '"'

    part_count = -(-size // MULTIPART_PART_SIZE_BYTES)

    def part_digest(index: int) -> bytes:
        with path.open("rb") as file:
            file.seek(index * MULTIPART_PART_SIZE_BYTES)
            return hashlib.md5(file.read(MULTIPART_PART_SIZE_BYTES)).digest()

    # hashlib releases the GIL on large inputs, so two threads hash two parts at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(part_digest, range(part_count)))
    return '"' + hashlib.md5(b"".join(digests)).hexdigest() + f'-{part_count}"'


def _sentence(rng: random.Random, word_count: int) -> str:
    return " ".join(rng.choices(_WORDS, k=word_count))


def _make_output(rng: random.Random, word_count: int, style: OutputStyle) -> str:
    if style == "structured":
        return json.dumps(
            {
                "sentiment": rng.choice(_SENTIMENTS),
                "summary": _sentence(rng, word_count),
                "score": round(rng.random(), 4),
            }
        )
    return json.dumps(
        {
            "content": _sentence(rng, word_count),
            "reasoning_content": _sentence(rng, max(1, word_count // 2)),
        }
    )


def _sized_row_bytes() -> int:
    return len(_SIZED_OUTPUT_PREFIX) + SIZED_OUTPUT_HEX_CHARS + len(_SIZED_OUTPUT_SUFFIX) + 8


def _row_group_bounds(num_rows: int, rows_per_group: int) -> Iterator[tuple[int, int]]:
    for start in range(0, num_rows, rows_per_group):
        yield start, min(rows_per_group, num_rows - start)


def _random_outputs(rng: random.Random, count: int) -> pa.Array:
    """Build ``count`` strings ``{"content": "<hex>"}`` without a Python loop over the bytes."""
    stride = len(_SIZED_OUTPUT_PREFIX) + SIZED_OUTPUT_HEX_CHARS + len(_SIZED_OUTPUT_SUFFIX)
    data = bytearray(rng.randbytes(count * stride // 2 + 1).hex().encode()[: count * stride])

    # Overwrite the first and last bytes of every row with the JSON wrapper, one extended
    # slice per wrapper character.
    for offset, char in enumerate(_SIZED_OUTPUT_PREFIX):
        data[offset::stride] = bytes([char]) * count
    suffix_start = stride - len(_SIZED_OUTPUT_SUFFIX)
    for offset, char in enumerate(_SIZED_OUTPUT_SUFFIX):
        data[suffix_start + offset :: stride] = bytes([char]) * count

    offsets = array.array("i", range(0, (count + 1) * stride, stride))
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data))


def _parquet_compression(compression: str) -> str:
    normalized = compression.lower()
    if normalized not in ("snappy", "zstd", "gzip", "lz4", "brotli", "none"):
        raise ValueError(
            f"compression must be snappy, zstd, gzip, lz4, brotli or none, got {compression!r}"
        )
    return normalized
