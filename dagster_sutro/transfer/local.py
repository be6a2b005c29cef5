"""Local destinations: a preallocated partial file written at offsets, and its resume state.

The partial file ``<destination>.sutro-partial`` sits beside the destination, so the final
``os.replace`` is an atomic rename on the same filesystem. The state file
``<destination>.sutro-partial.json`` records which parts are complete and how far the
unfinished ones got, for which artifact (a SHA-256 of bucket and key), ETag, size and part
size. It never contains a URL. It is rewritten when a part completes and after every
``part_size`` bytes written, so after a process is killed the next download of the same
version fetches the missing bytes plus less than one part.

Neither file is fsynced while the download runs. A process that is killed leaves both in the
page cache, but after a power loss the state file may list parts whose bytes never reached the
disk. So the state file records the boot it was written in, and a state file from an earlier
boot is discarded instead of resumed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dagster_sutro.errors import DestinationError, DownloadError
from dagster_sutro.transfer.parquet_check import check_parquet
from dagster_sutro.transfer.plan import Part
from dagster_sutro.transfer.progress import LogRelay, format_mib

try:
    import fcntl
except ImportError:  # Windows has no fcntl.
    fcntl = None  # type: ignore[assignment]

PARTIAL_SUFFIX = ".sutro-partial"
STATE_SUFFIX = ".sutro-partial.json"
STATE_FORMAT = "dagster-sutro partial download"
STATE_VERSION = 1
# Linux's id of the running boot; it changes at every restart, and not when a process dies.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def current_boot_id() -> str | None:
    """Return the id of the running boot of the operating system, or ``None`` if unknown.

    NOTE: only Linux exposes a boot id. Elsewhere a state file from before a power loss is
    resumed, and may list bytes that never reached the disk.
    """
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as boot_id_file:
            return boot_id_file.read().strip() or None
    except OSError:
        return None


def artifact_key_sha256(bucket: str, key: str) -> str:
    """Return the SHA-256 hex digest of ``bucket/key``, which identifies the artifact."""
    return hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()


@dataclass
class ResumeState:
    """The content of a state file.

    Attributes:
        key_sha256: The SHA-256 of the artifact's ``bucket/key``.
        etag: The version the partial file holds.
        size: The artifact size.
        part_size: The part size that numbers the parts.
        finished_parts: The indices of the parts that are completely written.
        partial_parts: For parts that are partly written, the number of bytes written
            from the part's start.
        boot_id: The boot of the operating system the state was written in, when known.
    """

    key_sha256: str
    etag: str
    size: int
    part_size: int
    finished_parts: set[int] = field(default_factory=set)
    partial_parts: dict[int, int] = field(default_factory=dict)
    boot_id: str | None = None

    def to_json(self) -> str:
        """Serialize the state; finished parts are stored as inclusive index ranges."""
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "key_sha256": self.key_sha256,
                "etag": self.etag,
                "size": self.size,
                "part_size": self.part_size,
                "finished_parts": _to_ranges(self.finished_parts),
                "partial_parts": sorted(
                    [index, written] for index, written in self.partial_parts.items() if written
                ),
                "boot_id": self.boot_id,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ResumeState:
        """Parse a state file.

        Raises:
            ValueError: If the text is not a state file of this version.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError("not a dagster-sutro state file")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state file version {data.get('version')!r} is not supported")
        finished: set[int] = set()
        for first, last in data["finished_parts"]:
            if not (isinstance(first, int) and isinstance(last, int) and 0 <= first <= last):
                raise ValueError("invalid part range")
            finished.update(range(first, last + 1))
        partial: dict[int, int] = {}
        for index, written in data.get("partial_parts", []):
            if not (isinstance(index, int) and isinstance(written, int) and index >= 0):
                raise ValueError("invalid partial part")
            if written > 0 and index not in finished:
                partial[index] = written
        boot_id = data.get("boot_id")
        return cls(
            key_sha256=str(data["key_sha256"]),
            etag=str(data["etag"]),
            size=int(data["size"]),
            part_size=int(data["part_size"]),
            finished_parts=finished,
            partial_parts=partial,
            boot_id=boot_id if isinstance(boot_id, str) else None,
        )

    def mismatch(self, expected: ResumeState) -> str | None:
        """Return why this state cannot be resumed for ``expected``, or ``None``."""
        if self.key_sha256 != expected.key_sha256:
            return "it belongs to another artifact"
        if self.etag != expected.etag:
            return f"it holds ETag {self.etag} and the artifact now has ETag {expected.etag}"
        if self.size != expected.size:
            return f"it was {self.size} bytes and the artifact is now {expected.size} bytes"
        if self.part_size != expected.part_size:
            return (
                f"it used parts of {self.part_size} bytes and this download uses "
                f"{expected.part_size} bytes"
            )
        if expected.boot_id is not None and self.boot_id != expected.boot_id:
            return (
                "it was written before the machine restarted, so its bytes may not have "
                "reached the disk"
            )
        return None


def _to_ranges(indices: Iterable[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ranges


class FileRangeSink:
    """Writes one range's bytes into the partial file at their offsets with ``os.pwrite``.

    Args:
        fd: The partial file.
        offset: The offset of the range's first byte.
        uri: The destination URI, for messages.
        received: The bytes of the range already in the file, from an earlier run.
        on_write: Called with the total written after each write, once the bytes are in
            the file.
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        uri: str,
        *,
        received: int = 0,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self._fd = fd
        self._offset = offset
        self._uri = uri
        self._on_write = on_write
        self.received = received

    def write(self, data: bytes) -> None:
        """Write the next bytes of the range at their offset.

        Raises:
            DestinationError: If the write fails, for example because the disk is full.
        """
        view = memoryview(data)
        position = self._offset + self.received
        failure: DestinationError | None = None
        try:
            while view:
                written = _pwrite(self._fd, view, position)
                view = view[written:]
                position += written
        except OSError as error:
            failure = DestinationError(
                f"Writing the partial file of {self._uri} failed: {error.strerror or error}."
            )
        if failure is not None:
            raise failure
        self.received += len(data)
        if self._on_write is not None:
            self._on_write(self.received)

    def reset(self) -> None:
        """Start over at the range's first byte; the bytes on disk get overwritten."""
        self.received = 0


class LocalTarget:
    """The partial file and state file of one download to a local path.

    Create it with :meth:`open`, which takes an exclusive lock on the partial file, so two
    processes never write the same destination at once.
    """

    def __init__(
        self, *, path: str, uri: str, fd: int, state: ResumeState, relay: LogRelay
    ) -> None:
        self.path = path
        self.uri = uri
        self.partial_path = path + PARTIAL_SUFFIX
        self.state_path = path + STATE_SUFFIX
        self._fd = fd
        self.state = state
        self._relay = relay
        self._state_enabled = True
        # Workers report progress from their threads, and the main thread records
        # finished parts, so the state and its file are guarded by one lock.
        self._lock = threading.Lock()
        # Serializes state file writes. They happen outside ``_lock``, so a worker's per-chunk
        # progress update does not wait while another worker writes the file.
        self._write_lock = threading.Lock()
        self._snapshot_sequence = 0
        self._written_sequence = 0
        self._unrecorded_bytes = 0

    @property
    def finished_parts(self) -> set[int]:
        """The parts already in the partial file."""
        return self.state.finished_parts

    def resumed_bytes(self, part: Part) -> int:
        """Return how many bytes of ``part`` are already in the partial file."""
        if part.index in self.state.finished_parts:
            return part.length
        return min(self.state.partial_parts.get(part.index, 0), part.length)

    @classmethod
    def open(cls, *, path: str, uri: str, expected: ResumeState, relay: LogRelay) -> LocalTarget:
        """Open or create the partial file, resuming the recorded parts when they match.

        Args:
            path: The destination file path.
            uri: The destination URI, for messages.
            expected: The artifact, ETag, size and part size of this download, with no parts.
            relay: Where the resume decision is logged.

        Raises:
            DestinationError: If the destination is a directory, another process is writing
                it, or the partial file cannot be created or sized.
        """
        if os.path.isdir(path):
            raise DestinationError(
                f"The destination {uri} is a directory. End the destination with '/' to write "
                "the artifact into it under its own file name."
            )
        partial_path = path + PARTIAL_SUFFIX
        failure: DestinationError | None = None
        fd = -1
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = _open_locked(partial_path, uri)
        except OSError as error:
            blocking_file = _file_among_parents(path)
            if blocking_file is not None:
                failure = DestinationError(
                    f"Could not create the partial file beside {uri}: {blocking_file} is a "
                    "file, not a directory. Choose a destination whose parent directories are "
                    "directories."
                )
            else:
                failure = DestinationError(
                    f"Could not create the partial file beside {uri}: {error.strerror or error}."
                )
        if failure is not None:
            raise failure

        try:
            target = cls(path=path, uri=uri, fd=fd, state=expected, relay=relay)
            target._resume_or_start(expected)
        except BaseException:
            # Only a fresh start can fail here, so the partial file contains nothing to resume.
            _remove_quietly(partial_path)
            _remove_quietly(path + STATE_SUFFIX)
            os.close(fd)
            raise
        return target

    def _resume_or_start(self, expected: ResumeState) -> None:
        reason = None
        previous: ResumeState | None = None
        try:
            if os.path.islink(self.state_path):
                raise ValueError("the state file is a symlink")
            with open(self.state_path, encoding="utf-8") as state_file:
                previous = ResumeState.from_json(state_file.read())
        except FileNotFoundError:
            if os.fstat(self._fd).st_size > 0:
                reason = "it has no state file"
        except (OSError, ValueError, KeyError, TypeError) as error:
            reason = f"its state file could not be read ({type(error).__name__})"

        if previous is not None:
            reason = previous.mismatch(expected)
            if reason is None and os.fstat(self._fd).st_size != expected.size:
                reason = "the partial file does not have the artifact's size"
        if previous is not None and reason is None:
            self.state = previous
            return

        if reason is not None:
            self._relay.info(
                f"Discarding the partial download {self.partial_path}, because {reason}; "
                "downloading from the start."
            )
        self.state = ResumeState(
            key_sha256=expected.key_sha256,
            etag=expected.etag,
            size=expected.size,
            part_size=expected.part_size,
            boot_id=expected.boot_id,
        )
        _allocate(self._fd, expected.size, self.partial_path, self.uri)
        self._write_state()

    def sink(self, part: Part) -> FileRangeSink:
        """Return the sink that writes ``part`` at its offset, after its resumed bytes."""
        return FileRangeSink(
            self._fd,
            part.start,
            self.uri,
            received=self.resumed_bytes(part),
            on_write=lambda written: self._note_progress(part.index, written),
        )

    def mark_finished(self, index: int) -> None:
        """Record a complete part in the state file, atomically."""
        with self._lock:
            self.state.finished_parts.add(index)
            self.state.partial_parts.pop(index, None)
            snapshot = self._take_snapshot() if self._state_enabled else None
        if snapshot is not None:
            self._write_snapshot(*snapshot)

    def _note_progress(self, index: int, written: int) -> None:
        """Record how far a part got, rewriting the state file every ``part_size`` bytes."""
        snapshot = None
        with self._lock:
            previous = self.state.partial_parts.get(index, 0)
            self.state.partial_parts[index] = written
            self._unrecorded_bytes += max(0, written - previous)
            if self._state_enabled and self._unrecorded_bytes >= self.state.part_size:
                snapshot = self._take_snapshot()
        if snapshot is not None:
            self._write_snapshot(*snapshot)

    def _take_snapshot(self) -> tuple[int, str]:
        """Serialize the state. The caller must have acquired ``_lock``."""
        self._unrecorded_bytes = 0
        self._snapshot_sequence += 1
        return self._snapshot_sequence, self.state.to_json()

    def _write_snapshot(self, sequence: int, text: str) -> None:
        """Write a snapshot unless a newer one is already on disk."""
        with self._write_lock:
            if sequence <= self._written_sequence or not self._state_enabled:
                return
            self._write_state(text)
            self._written_sequence = sequence

    def begin_single_stream(self) -> None:
        """Stop recording parts, for a download that restarts from byte 0 after any break.

        The state file is removed, because the single stream rewrites every byte and a
        state file kept from the ranged download would outlive the bytes it describes.
        """
        with self._lock, self._write_lock:
            self._state_enabled = False
            self.state.finished_parts.clear()
            self.state.partial_parts.clear()
            _remove_quietly(self.state_path)

    def publish(self, *, verify_parquet: bool, label: str) -> None:
        """Check the partial file and move it onto the destination.

        The size must equal the artifact size, and with ``verify_parquet`` the magic bytes
        and the footer must check out. Then the file is flushed to disk, renamed onto the
        destination in one step, and the state file is removed.

        Raises:
            DownloadError: If a check fails. The partial file is left for :meth:`abandon`.
            DestinationError: If flushing or renaming fails.
        """
        size = self.state.size
        actual = os.fstat(self._fd).st_size
        if actual != size:
            raise DownloadError(
                f"The partial file of {label} is {actual} bytes but the artifact is {size} "
                "bytes, so it was not published."
            )
        if verify_parquet:
            check_parquet(
                size=size,
                head=_pread_exact(self._fd, min(4, size), 0),
                read_tail=lambda length: _pread_exact(self._fd, length, size - length),
                label=label,
            )
        failure: DestinationError | None = None
        try:
            os.fsync(self._fd)
            os.replace(self.partial_path, self.path)
            _fsync_directory(os.path.dirname(self.path) or ".")
        except OSError as error:
            failure = DestinationError(
                f"Publishing {self.uri} failed: {error.strerror or error}. The destination "
                "was not changed."
            )
        if failure is not None:
            raise failure
        _remove_quietly(self.state_path)
        self._close()

    def abandon(self, *, keep_partial: bool) -> None:
        """Stop writing; keep the partial and state files for a resume, or delete them.

        A kept partial file gets a last state write, so the next download resumes every byte
        written so far, not only those recorded at the last ``part_size`` boundary. When that
        write fails (a full disk), the previous state file stays, which is still correct.
        """
        if not keep_partial:
            _remove_quietly(self.partial_path)
            _remove_quietly(self.state_path)
        elif self._state_enabled:
            with self._lock, self._write_lock, contextlib.suppress(DestinationError):
                self._write_state()
        self._close()

    def _write_state(self, text: str | None = None) -> None:
        # Neither file is fsynced here. The state survives a killed process, because the page
        # cache keeps both files, and the boot id in it voids it after a power loss.
        if text is None:
            text = self.state.to_json()
        temporary = self.state_path + ".tmp"
        failure: DestinationError | None = None
        try:
            _remove_symlink(temporary)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(temporary, flags, 0o666), "w", encoding="utf-8") as state_file:
                state_file.write(text)
            os.replace(temporary, self.state_path)
        except OSError as error:
            failure = DestinationError(
                f"Writing the state file beside {self.uri} failed: {error.strerror or error}."
            )
        if failure is not None:
            _remove_quietly(temporary)
            raise failure

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _remove_symlink(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)


def _open_locked(partial_path: str, uri: str) -> int:
    """Open the partial file and lock it; the lock ends when the process does."""
    for _ in range(3):
        # A symlink at the partial file's name is not ours: it is removed, never followed, so
        # that the download cannot overwrite the file it points to.
        _remove_symlink(partial_path)
        flags = (
            os.O_RDWR
            | os.O_CREAT
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_CLOEXEC", 0)
            | getattr(os, "O_BINARY", 0)
        )
        fd = os.open(partial_path, flags, 0o666)
        try:
            # NOTE: without fcntl (Windows) the partial file is not locked against a second
            # process writing the same destination.
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DestinationError(
                f"Another download is writing {uri} (its partial file is locked). Wait for it "
                "to finish, or choose another destination."
            ) from None
        # Another process may have removed the file between open and lock.
        try:
            same_file = os.stat(partial_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)
    raise DestinationError(f"The partial file beside {uri} kept disappearing while it was opened.")


def _allocate(fd: int, size: int, path: str, uri: str) -> None:
    """Size the partial file, after checking that the filesystem has room for it.

    ``ftruncate`` creates a sparse file. ``posix_fallocate`` is avoided, because glibc falls
    back to writing every block where the filesystem lacks ``fallocate``, which takes minutes
    for a large artifact.
    """
    failure: DestinationError | None = None
    try:
        os.ftruncate(fd, 0)
        available = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        if size > available:
            failure = DestinationError(
                f"The filesystem of {uri} has {format_mib(available)} free but the artifact "
                f"needs {format_mib(size)}. Free space or choose another destination."
            )
        else:
            os.ftruncate(fd, size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            failure = DestinationError(
                f"The filesystem of {uri} has no room for {format_mib(size)}."
            )
        else:
            failure = DestinationError(
                f"Could not size the partial file of {uri}: {error.strerror or error}."
            )
    if failure is not None:
        raise failure


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        data = _pread(fd, length, offset)
        if not data:
            break
        chunks.append(data)
        length -= len(data)
        offset += len(data)
    return b"".join(chunks)


def _fsync_directory(path: str) -> None:
    try:
        if not hasattr(os, "O_DIRECTORY"):
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_among_parents(path: str) -> str | None:
    """Return the nearest existing parent of ``path`` when it is a file, not a directory."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        above = os.path.dirname(parent)
        if above == parent:
            return None
        parent = above
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        return parent
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


# Windows lacks os.pwrite and os.pread, so there one lock serializes seek and write.
_seek_lock = threading.Lock()


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def _pread(fd: int, length: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, length)
