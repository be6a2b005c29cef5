"""In-order writing of parts that complete out of order, for sinks that cannot seek."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from dagster_sutro.errors import SutroError


class OrderedWriter:
    """Writes parts in index order, holding parts that complete early in a bounded buffer.

    The download submits part ``i`` only while ``i < next_index + max_pending``, so at most
    ``max_pending`` parts (finished or in flight) wait here at any time, and memory stays at
    ``max_pending`` parts.

    Args:
        write: Writes one chunk to the sink, in order.
        max_pending: The largest number of parts that may wait for their turn.
        first_index: The index of the first part to write.
    """

    def __init__(
        self, write: Callable[[bytes], object], *, max_pending: int, first_index: int = 0
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._write = write
        self._max_pending = max_pending
        self._pending: dict[int, Sequence[bytes]] = {}
        self.next_index = first_index
        self.bytes_written = 0

    @property
    def pending_parts(self) -> int:
        """The number of finished parts that wait for an earlier one."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """The bytes held by the finished parts that wait for an earlier one."""
        return sum(len(chunk) for chunks in self._pending.values() for chunk in chunks)

    def can_accept(self, index: int) -> bool:
        """Return whether part ``index`` may be fetched now without overrunning the buffer."""
        return index < self.next_index + self._max_pending

    def put(self, index: int, chunks: Sequence[bytes]) -> None:
        """Accept a finished part and write every part that is now next in order.

        Args:
            index: The part's index.
            chunks: The part's bytes, in order.

        Raises:
            SutroError: If the part was already accepted or lies outside the window.
        """
        if index < self.next_index or index in self._pending:
            raise SutroError(f"Part {index} was delivered twice to the ordered writer.")
        if not self.can_accept(index):
            raise SutroError(
                f"Part {index} arrived outside the reorder window {self.next_index}.."
                f"{self.next_index + self._max_pending - 1}."
            )
        self._pending[index] = chunks
        while self.next_index in self._pending:
            for chunk in self._pending.pop(self.next_index):
                self._write(chunk)
                self.bytes_written += len(chunk)
            self.next_index += 1


class TailBuffer:
    """The last bytes that passed through, kept as references to the chunks themselves.

    Args:
        limit: The number of trailing bytes to keep at least (when that many have passed).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._kept = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        """Record a chunk that was written after all earlier ones."""
        if not chunk:
            return
        self._chunks.append(chunk)
        self._kept += len(chunk)
        self.total += len(chunk)
        while self._chunks and self._kept - len(self._chunks[0]) >= self._limit:
            self._kept -= len(self._chunks.popleft())

    @property
    def available(self) -> int:
        """The number of trailing bytes that :meth:`tail` can return."""
        return self._kept

    def tail(self, length: int) -> bytes:
        """Return the last ``length`` bytes.

        Raises:
            ValueError: If fewer bytes are kept.
        """
        if length > self._kept:
            raise ValueError(f"only the last {self._kept} bytes are kept, {length} requested")
        if length == 0:
            return b""
        parts: list[bytes] = []
        needed = length
        for chunk in reversed(self._chunks):
            if needed <= len(chunk):
                parts.append(chunk[len(chunk) - needed :])
                break
            parts.append(chunk)
            needed -= len(chunk)
        return b"".join(reversed(parts))

    def clear(self) -> None:
        """Forget everything, as after a restart from byte 0."""
        self._chunks.clear()
        self._kept = 0
        self.total = 0
