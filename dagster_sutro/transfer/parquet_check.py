"""The Parquet check run before a download is published: magic bytes and a parseable footer."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from dagster_sutro.errors import DownloadError

PARQUET_MAGIC = b"PAR1"
# Leading magic, then a footer of at least a few bytes, its 4-byte length and the final magic.
MIN_PARQUET_SIZE_BYTES = 12


def check_parquet(*, size: int, head: bytes, read_tail: Callable[[int], bytes], label: str) -> None:
    """Check that bytes form a Parquet file whose footer parses, reading only its ends.

    Args:
        size: The file size in bytes.
        head: The first bytes of the file (at least 4, unless the file is shorter).
        read_tail: Returns the last ``n`` bytes of the file.
        label: What the file is, shown in errors: the artifact key.

    Raises:
        DownloadError: If the file is too short, a magic number is missing, the footer length
            is impossible, or pyarrow cannot parse the footer.
    """
    if size < MIN_PARQUET_SIZE_BYTES:
        raise DownloadError(
            f"The artifact {label} is {size} bytes, too short to be a Parquet file (at least "
            f"{MIN_PARQUET_SIZE_BYTES} bytes), so it was not published. Request the results "
            "again; if the artifact stays this size, report it to Sutro."
        )
    if head[:4] != PARQUET_MAGIC:
        raise DownloadError(
            f"The artifact {label} does not start with the Parquet magic bytes 'PAR1' (it "
            f"starts with {head[:4]!r}), so it was not published."
        )
    trailer = read_tail(8)
    if trailer[4:] != PARQUET_MAGIC:
        raise DownloadError(
            f"The artifact {label} does not end with the Parquet magic bytes 'PAR1' (it ends "
            f"with {trailer[4:]!r}): the file is truncated or corrupt, so it was not published."
        )
    footer_length = int.from_bytes(trailer[:4], "little")
    if footer_length + MIN_PARQUET_SIZE_BYTES > size:
        raise DownloadError(
            f"The artifact {label} declares a Parquet footer of {footer_length} bytes in a file "
            f"of {size} bytes: the file is truncated or corrupt, so it was not published."
        )

    footer = read_tail(footer_length + 8)
    parse_error: str | None = None
    try:
        # The footer alone, behind a leading magic, is a file that read_metadata accepts.
        pq.read_metadata(pa.BufferReader(PARQUET_MAGIC + footer))
    except (pa.ArrowException, OSError, ValueError) as error:
        parse_error = f"{type(error).__name__}: {error}"
    if parse_error is not None:
        raise DownloadError(
            f"The Parquet footer of the artifact {label} could not be parsed ({parse_error}), "
            "so it was not published."
        )
