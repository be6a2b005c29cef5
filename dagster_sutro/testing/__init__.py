"""A local Sutro deployment for tests and demos: the Batch API plus an S3-style object store.

:class:`SutroEmulator` runs both servers on 127.0.0.1 with real SigV4 presigned URLs, records
every request and injects faults through :attr:`SutroEmulator.faults`. It imports nothing from
Dagster, so pipeline tests and plain scripts can use it alike.

Examples:
    >>> from dagster_sutro.testing import SutroEmulator
    >>> with SutroEmulator() as emu:  # doctest: +SKIP
    ...     job_id = emu.add_job(num_rows=1000)
    ...     emu.faults.truncate_body(4096, job_id=job_id)

Run ``python -m dagster_sutro.testing serve`` for a standalone emulator with a demo job.
"""

from dagster_sutro.testing.emulator import SutroEmulator as SutroEmulator
from dagster_sutro.testing.faults import (
    FaultController as FaultController,
    FaultRule as FaultRule,
)
from dagster_sutro.testing.records import RecordedRequest as RecordedRequest
from dagster_sutro.testing.store import (
    BUCKET as BUCKET,
    JOB_STATES as JOB_STATES,
    artifact_filename as artifact_filename,
)
from dagster_sutro.testing.tables import (
    compute_s3_etag as compute_s3_etag,
    make_results_table as make_results_table,
)

# Alias under the name the fault controller was announced with.
StorageFaults = FaultController

__all__ = [
    "BUCKET",
    "JOB_STATES",
    "FaultController",
    "FaultRule",
    "RecordedRequest",
    "StorageFaults",
    "SutroEmulator",
    "artifact_filename",
    "compute_s3_etag",
    "make_results_table",
]
