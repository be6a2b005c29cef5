"""Splitting an artifact into ranged parts, and the part size of S3 multipart uploads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dagster_sutro.errors import InvalidInputError

MIB = 1024 * 1024

S3_MIN_PART_SIZE_BYTES = 5 * MIB
S3_MAX_PART_SIZE_BYTES = 5 * 1024 * MIB
S3_MAX_PARTS = 10_000
S3_MAX_OBJECT_SIZE_BYTES = 5 * 1024 * 1024 * MIB
# The default upload part size. Larger parts mean fewer requests, and the upload buffer
# (one part) stays small next to the download's reorder buffer (max_concurrency parts).
S3_DEFAULT_PART_SIZE_BYTES = 16 * MIB


@dataclass(frozen=True)
class Part:
    """One byte range of the artifact.

    Attributes:
        index: The position of the part, from 0.
        start: The offset of the first byte.
        end: The offset of the last byte, inclusive as in an HTTP ``Range`` header.
    """

    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        """The number of bytes in the part."""
        return self.end - self.start + 1


class PartPlan:
    """The parts of an artifact: equal ranges of ``part_size`` bytes, the last one shorter.

    Parts are computed on access, so the plan of a multi-terabyte artifact costs no memory.
    An artifact of at most ``part_size`` bytes has one part, and an empty artifact has none.
    """

    def __init__(self, size: int, part_size: int) -> None:
        if size < 0:
            raise InvalidInputError(f"The artifact size must be 0 or more bytes, got {size}.")
        if part_size <= 0:
            raise InvalidInputError(f"The part size must be positive, got {part_size}.")
        self.size = size
        self.part_size = part_size
        self.count = -(-size // part_size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Part:
        if not 0 <= index < self.count:
            raise IndexError(f"part {index} is outside 0..{self.count - 1}")
        start = index * self.part_size
        end = min(start + self.part_size, self.size) - 1
        return Part(index=index, start=start, end=end)

    def __iter__(self) -> Iterator[Part]:
        for index in range(self.count):
            yield self[index]


def s3_part_size_for(size: int) -> int:
    """Choose the S3 multipart upload part size for an object of ``size`` bytes.

    The result is the smallest multiple of 1 MiB that is at least 16 MiB (and so above S3's
    5 MiB minimum) and keeps the number of parts at or below S3's limit of 10,000. All parts
    but the last have this size, which Cloudflare R2 requires.

    Args:
        size: The object size in bytes.

    Returns:
        The part size in bytes: 16 MiB up to about 156 GiB, then growing with the size
        (477 MiB for 5 TB).

    Raises:
        InvalidInputError: If ``size`` is negative or above S3's maximum object size of 5 TiB.

    Examples:
        >>> s3_part_size_for(60 * 10**9) // MIB
        16
        >>> s3_part_size_for(5 * 10**12) // MIB
        477
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(f"The object size must be 0 or more bytes, got {size!r}.")
    if size > S3_MAX_OBJECT_SIZE_BYTES:
        raise InvalidInputError(
            f"An object of {size} bytes exceeds the S3 maximum object size of "
            f"{S3_MAX_OBJECT_SIZE_BYTES} bytes (5 TiB); write it to a local path instead."
        )
    minimum_for_count = -(-size // S3_MAX_PARTS)
    minimum = max(S3_DEFAULT_PART_SIZE_BYTES, S3_MIN_PART_SIZE_BYTES, minimum_for_count)
    part_size = -(-minimum // MIB) * MIB
    return min(part_size, S3_MAX_PART_SIZE_BYTES)
