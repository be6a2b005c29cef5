"""Emulated jobs and their results artifacts on disk.

Each job owns one Parquet object per combination of the two include flags, built on first use
and reused until the artifact is replaced. Every build gets a new generation number, which is
written into the Parquet footer metadata, so a rebuilt object always has new bytes and a new
ETag, even when its rows are unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from dagster_sutro.testing.clock import EmulatorClock
from dagster_sutro.testing.tables import (
    compute_s3_etag,
    make_results_table,
    select_artifact_columns,
    sized_artifact_num_rows,
    write_sized_artifact,
    write_table_artifact,
)

BUCKET = "sutro-data"
JOB_STATES = (
    "QUEUED",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "CANCELLING",
    "CANCELLED",
    "FAILED",
    "UNKNOWN",
)
_STARTED_STATES = {"RUNNING", "SUCCEEDED", "CANCELLING", "CANCELLED", "FAILED"}
_FINISHED_STATES = {"SUCCEEDED", "CANCELLED", "FAILED"}
_JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Rough per-row token counts and price, for plausible job metadata.
_INPUT_TOKENS_PER_ROW = 64
_OUTPUT_TOKENS_PER_ROW = 48
_DOLLARS_PER_MILLION_TOKENS = 0.05


@dataclass(frozen=True)
class ArtifactFlags:
    """One combination of the ``results-url`` include flags.

    Attributes:
        include_inputs: The artifact carries the ``inputs`` column.
        include_cumulative_logprobs: The artifact carries the ``cumulative_logprobs`` column.
    """

    include_inputs: bool = False
    include_cumulative_logprobs: bool = False

    @property
    def label(self) -> str:
        """The flags as they appear in the artifact's file name, e.g. ``inputs=1~logprobs=0``."""
        return f"inputs={int(self.include_inputs)}~logprobs={int(self.include_cumulative_logprobs)}"


ALL_FLAG_COMBINATIONS = tuple(
    ArtifactFlags(inputs, logprobs) for inputs in (False, True) for logprobs in (False, True)
)


@dataclass(frozen=True)
class StoredObject:
    """One version of one results object.

    Attributes:
        job_id: The job the object belongs to.
        flags: The include flags it was built for.
        key: The object key inside the ``sutro-data`` bucket.
        filename: The last part of ``key``.
        path: The file on disk that contains the bytes.
        size: The object size in bytes.
        etag: The S3-style ETag, quotes included.
        last_modified: Build time on the emulator clock, in seconds since the epoch.
        generation: The job's artifact generation this object belongs to.
    """

    job_id: str
    flags: ArtifactFlags
    key: str
    filename: str
    path: Path
    size: int
    etag: str
    last_modified: float
    generation: int


@dataclass
class EmulatedJob:
    """The state of one emulated batch job."""

    job_id: str
    status: str
    model: str
    name: str | None
    description: str | None
    num_rows: int
    seed: int
    compression: str
    target_size_bytes: int | None
    row_group_size: int | None
    table: pa.Table | None
    sequence: int
    created: float
    started: float | None = None
    completed: float | None = None
    failure_reason: str | None = None
    generation: int = 1
    objects: dict[ArtifactFlags, StoredObject] = field(default_factory=dict)
    # `lock` guards the metadata fields. `build_lock` serializes builds and replacements.
    # `objects` is replaced as a whole, never mutated, so readers need no lock.
    lock: threading.RLock = field(default_factory=threading.RLock)
    build_lock: threading.RLock = field(default_factory=threading.RLock)

    def to_json(self) -> dict[str, object]:
        """Return the job as ``GET /v1/jobs/{job_id}`` shows it."""
        input_tokens = self.num_rows * _INPUT_TOKENS_PER_ROW
        output_tokens = self.num_rows * _OUTPUT_TOKENS_PER_ROW
        cost = (input_tokens + output_tokens) * _DOLLARS_PER_MILLION_TOKENS / 1_000_000
        return {
            "job_id": self.job_id,
            "status": self.status,
            "model": self.model,
            "name": self.name,
            "description": self.description,
            "datetime_created": _iso_time(self.created),
            "datetime_started": _iso_time(self.started),
            "datetime_completed": _iso_time(self.completed),
            "num_rows": self.num_rows,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "job_cost": round(cost, 6),
            "failure_reason": (
                {"message": self.failure_reason} if self.failure_reason is not None else None
            ),
        }


class JobStore:
    """Thread-safe registry of emulated jobs and builder of their artifacts.

    Args:
        clock: The emulator clock, for job timestamps and Last-Modified.
        user_id: The user id that appears in object keys.
        truncation_for: Returns how many bytes to cut from the end of an object, or ``None``.
    """

    def __init__(
        self,
        clock: EmulatorClock,
        *,
        user_id: str,
        truncation_for: Callable[[str, ArtifactFlags], int | None],
    ) -> None:
        self._clock = clock
        self.user_id = user_id
        self._truncation_for = truncation_for
        self._jobs: dict[str, EmulatedJob] = {}
        self._lock = threading.Lock()
        self._sequence = 0
        self._root: Path | None = None
        self._truncated: dict[tuple[Path, int], StoredObject] = {}

    def set_root(self, root: Path | None) -> None:
        """Set the directory artifacts are written to (``None`` while the emulator is stopped)."""
        self._root = root

    # Jobs

    def add_job(
        self,
        job_id: str | None = None,
        *,
        status: str = "SUCCEEDED",
        model: str = "llama-3.1-8b",
        name: str | None = None,
        num_rows: int = 100,
        seed: int = 0,
        compression: str = "snappy",
        target_size_bytes: int | None = None,
        row_group_size: int | None = None,
        table: pa.Table | None = None,
    ) -> EmulatedJob:
        """Register a new job. See ``SutroEmulator.add_job`` for the arguments."""
        if job_id is None:
            job_id = f"job-{uuid.uuid4()}"
        if not _JOB_ID_PATTERN.match(job_id):
            raise ValueError(
                f"job_id {job_id!r} is invalid: use 1 to 128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        _check_status(status)
        if table is not None:
            num_rows = table.num_rows
        elif target_size_bytes is not None:
            num_rows = sized_artifact_num_rows(target_size_bytes)
        elif num_rows < 0:
            raise ValueError(f"num_rows must be 0 or more, got {num_rows}")

        now = self._clock.now()
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id!r} already exists")
            self._sequence += 1
            job = EmulatedJob(
                job_id=job_id,
                status=status,
                model=model,
                name=name,
                description=None,
                num_rows=num_rows,
                seed=seed,
                compression=compression,
                target_size_bytes=target_size_bytes,
                row_group_size=row_group_size,
                table=table,
                sequence=self._sequence,
                created=now,
            )
            _apply_status_times(job, status, now)
            self._jobs[job_id] = job
        return job

    def get_job(self, job_id: str) -> EmulatedJob | None:
        """Return the job, or ``None`` if it does not exist."""
        with self._lock:
            return self._jobs.get(job_id)

    def require_job(self, job_id: str) -> EmulatedJob:
        """Return the job, raising ``KeyError`` with a clear message if it does not exist."""
        job = self.get_job(job_id)
        if job is None:
            raise KeyError(f"job {job_id!r} does not exist")
        return job

    def jobs_newest_first(self) -> list[EmulatedJob]:
        """Return all jobs, most recently created first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.sequence, reverse=True)

    def set_status(self, job_id: str, status: str, *, failure_reason: str | None) -> None:
        """Change a job's state, updating its start and completion times."""
        _check_status(status)
        job = self.require_job(job_id)
        with job.lock:
            job.status = status
            if status == "FAILED":
                job.failure_reason = failure_reason or "The job failed."
            else:
                job.failure_reason = failure_reason
            _apply_status_times(job, status, self._clock.now())

    # Artifacts

    def object_key(self, job_id: str, flags: ArtifactFlags) -> str:
        """Return the object key of a job's artifact for one flag combination."""
        return f"jobs/{self.user_id}/{job_id}/results/{artifact_filename(job_id, flags)}"

    def parse_key(self, key: str) -> tuple[str, ArtifactFlags] | None:
        """Return the job id and flags an object key names, or ``None`` if it names none."""
        match = re.fullmatch(
            r"jobs/(?P<user>[^/]+)/(?P<job>[^/]+)/results/"
            r"sutro-results~(?P<job2>[^/~]+)~inputs=(?P<inputs>[01])~logprobs=(?P<logprobs>[01])"
            r"\.parquet",
            key,
        )
        if match is None or match["user"] != self.user_id or match["job"] != match["job2"]:
            return None
        flags = ArtifactFlags(match["inputs"] == "1", match["logprobs"] == "1")
        return match["job"], flags

    def get_object(self, job_id: str, flags: ArtifactFlags) -> StoredObject:
        """Return the current object for a flag combination, building it if needed.

        An active ``truncated_parquet`` fault replaces the object with its truncated variant.
        """
        job = self.require_job(job_id)
        stored = job.objects.get(flags)
        if stored is None:
            with job.build_lock:
                stored = job.objects.get(flags)
                if stored is None:
                    stored = self._build(job, flags)
                    job.objects = {**job.objects, flags: stored}
        missing_bytes = self._truncation_for(job_id, flags)
        if missing_bytes is None:
            return stored
        return self._truncated_variant(stored, missing_bytes)

    def peek_object(self, job_id: str, flags: ArtifactFlags) -> StoredObject | None:
        """Return the built object for a flag combination without building it.

        While a replacement is being built, this returns the previous version, as S3 serves
        the previous object until an upload completes.
        """
        job = self.get_job(job_id)
        if job is None:
            return None
        stored = job.objects.get(flags)
        if stored is None:
            return None
        missing_bytes = self._truncation_for(job_id, flags)
        if missing_bytes is None:
            return stored
        return self._truncated_variant(stored, missing_bytes)

    def replace_artifact(
        self,
        job_id: str,
        *,
        table: pa.Table | None = None,
        num_rows: int | None = None,
        seed: int | None = None,
    ) -> dict[str, str]:
        """Rebuild a job's artifacts with new bytes.

        Objects already built are rebuilt at once, the others are built on first use from the
        new generation. The object for the default flags is always built.

        Returns:
            The new ETag of each built object, keyed by its flag label such as
            ``inputs=0~logprobs=0``.
        """
        if num_rows is not None and num_rows < 0:
            raise ValueError(f"num_rows must be 0 or more, got {num_rows}")
        job = self.require_job(job_id)
        with job.build_lock:
            with job.lock:
                if table is not None:
                    job.table = table
                    job.num_rows = table.num_rows
                elif num_rows is not None:
                    job.table = None
                    job.target_size_bytes = None
                    job.num_rows = num_rows
                if seed is not None:
                    job.seed = seed
                elif table is None:
                    job.seed += 1
                job.generation += 1

            rebuilt = sorted(set(job.objects) | {ArtifactFlags()}, key=_order)
            old_objects = list(job.objects.values())
            new_objects = {flags: self._build(job, flags) for flags in rebuilt}
            job.objects = new_objects
            etags = {flags.label: stored.etag for flags, stored in new_objects.items()}

        # Responses that are still streaming keep their open file, so unlinking is safe.
        for stored in old_objects:
            _unlink_quietly(stored.path)
        return etags

    def _build(self, job: EmulatedJob, flags: ArtifactFlags) -> StoredObject:
        if self._root is None:
            raise RuntimeError("the emulator is not running: start it before building artifacts")
        filename = artifact_filename(job.job_id, flags)
        directory = self._root / job.job_id / f"generation-{job.generation}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        partial = path.with_name(path.name + ".building")
        metadata = {
            "sutro_emulator_job_id": job.job_id,
            "sutro_emulator_generation": str(job.generation),
        }

        if job.target_size_bytes is not None:
            write_sized_artifact(
                partial,
                job.target_size_bytes,
                include_inputs=flags.include_inputs,
                include_cumulative_logprobs=flags.include_cumulative_logprobs,
                compression=job.compression,
                row_group_size=job.row_group_size,
                seed=job.seed * 4 + _order(flags),
                metadata=metadata,
            )
        else:
            table = job.table
            if table is None:
                table = make_results_table(
                    job.num_rows,
                    include_inputs=True,
                    include_cumulative_logprobs=True,
                    seed=job.seed,
                )
            selected = select_artifact_columns(
                table,
                include_inputs=flags.include_inputs,
                include_cumulative_logprobs=flags.include_cumulative_logprobs,
            )
            write_table_artifact(
                selected,
                partial,
                compression=job.compression,
                row_group_size=job.row_group_size,
                metadata=metadata,
            )
        os.replace(partial, path)

        return StoredObject(
            job_id=job.job_id,
            flags=flags,
            key=self.object_key(job.job_id, flags),
            filename=filename,
            path=path,
            size=path.stat().st_size,
            etag=compute_s3_etag(path),
            last_modified=self._clock.now(),
            generation=job.generation,
        )

    def _truncated_variant(self, stored: StoredObject, missing_bytes: int) -> StoredObject:
        with self._lock:
            cached = self._truncated.get((stored.path, missing_bytes))
        if cached is not None:
            return cached

        path = stored.path.with_name(f"truncated-{missing_bytes}-{stored.filename}")
        size = max(0, stored.size - missing_bytes)
        with stored.path.open("rb") as source, path.open("wb") as target:
            shutil.copyfileobj(_LimitedReader(source, size), target)
        variant = StoredObject(
            job_id=stored.job_id,
            flags=stored.flags,
            key=stored.key,
            filename=stored.filename,
            path=path,
            size=size,
            etag=compute_s3_etag(path),
            last_modified=self._clock.now(),
            generation=stored.generation,
        )
        with self._lock:
            return self._truncated.setdefault((stored.path, missing_bytes), variant)


def artifact_filename(job_id: str, flags: ArtifactFlags) -> str:
    """Return the artifact file name, e.g. ``sutro-results~job-1~inputs=0~logprobs=0.parquet``."""
    return f"sutro-results~{job_id}~{flags.label}.parquet"


class _LimitedReader:
    """A binary reader that stops after ``limit`` bytes."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self._source = source
        self._remaining = limit

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._source.read(size)
        self._remaining -= len(data)
        return data


def _order(flags: ArtifactFlags) -> int:
    return int(flags.include_inputs) * 2 + int(flags.include_cumulative_logprobs)


def _check_status(status: str) -> None:
    if status not in JOB_STATES:
        raise ValueError(f"status must be one of {', '.join(JOB_STATES)}, got {status!r}")


def _apply_status_times(job: EmulatedJob, status: str, now: float) -> None:
    if status in _STARTED_STATES and job.started is None:
        job.started = now
    if status in _FINISHED_STATES:
        job.completed = now
    elif status not in ("CANCELLING", "UNKNOWN"):
        job.completed = None
    if status in ("QUEUED", "STARTING"):
        job.started = None


def _iso_time(epoch_seconds: float | None) -> str | None:
    if epoch_seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
