"""``SutroEmulator``: a local Sutro API and object store for tests and demos."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

import pyarrow as pa

from dagster_sutro.testing.api_server import ApiRequestHandler
from dagster_sutro.testing.clock import EmulatorClock
from dagster_sutro.testing.faults import FaultController
from dagster_sutro.testing.http_base import EmulatorHTTPServer
from dagster_sutro.testing.records import RecordedRequest, RequestRecorder
from dagster_sutro.testing.sigv4 import PresignedUrlSigner
from dagster_sutro.testing.state import EmulatorState
from dagster_sutro.testing.storage_server import StorageRequestHandler
from dagster_sutro.testing.store import ArtifactFlags, JobStore


class SutroEmulator:
    """A Sutro deployment on 127.0.0.1: the Batch API and an S3-style object store.

    The API server implements the Sutro endpoints the integration uses (``results-url``,
    ``job-status``, ``jobs``, ``list-jobs``, ``try-authentication``) with API key checks and
    FastAPI-style errors. The storage server serves the Parquet artifacts through real AWS
    SigV4 presigned URLs, verified on every request as S3 and R2 verify them. Every request to
    either server is recorded, and :attr:`faults` injects the failures real deployments show.

    Args:
        api_key: The API key clients must send. A random ``sk_emulator_...`` key by default.
        root_dir: Where artifacts are written. A temporary directory, removed on stop, by
            default. A given directory is kept.
        storage_bytes_per_second: Cap on each storage connection's body rate, for imitating a
            real object store (about 25 MiB/s per connection). ``None`` means no cap.
        api_port: TCP port of the API server, 0 for an ephemeral one.
        storage_port: TCP port of the storage server, 0 for an ephemeral one.
        user_id: The user id in object keys (``jobs/<user_id>/<job_id>/results/...``).

    Examples:
        >>> import requests
        >>> with SutroEmulator() as emu:
        ...     job_id = emu.add_job(num_rows=10)
        ...     response = requests.get(
        ...         f"{emu.api_url}/v1/jobs/{job_id}/results-url",
        ...         headers={"Authorization": f"Key {emu.api_key}"},
        ...     )
        ...     body = requests.get(response.json()["urls"]["get"]).content
        ...     body == emu.artifact_path(job_id).read_bytes()
        True
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        root_dir: str | Path | None = None,
        storage_bytes_per_second: float | None = None,
        api_port: int = 0,
        storage_port: int = 0,
        user_id: str = "user-emulator",
    ) -> None:
        if storage_bytes_per_second is not None and storage_bytes_per_second <= 0:
            raise ValueError(
                f"storage_bytes_per_second must be above 0, got {storage_bytes_per_second}"
            )
        self._api_key = api_key or "sk_emulator_" + secrets.token_hex(16)
        self._requested_root = Path(root_dir) if root_dir is not None else None
        self._api_port = api_port
        self._storage_port = storage_port
        self._root: Path | None = None
        self._owns_root = False

        self._clock = EmulatorClock()
        self._recorder = RequestRecorder()
        self._faults = FaultController()
        self._store = JobStore(
            self._clock, user_id=user_id, truncation_for=self._faults.truncation_for
        )
        self._state = EmulatorState(
            api_key=self._api_key,
            clock=self._clock,
            store=self._store,
            faults=self._faults,
            signer=PresignedUrlSigner(),
            storage_bytes_per_second=storage_bytes_per_second,
        )
        self._api_server: EmulatorHTTPServer | None = None
        self._storage_server: EmulatorHTTPServer | None = None

    # Lifecycle

    def start(self) -> SutroEmulator:
        """Bind both servers and serve in background threads.

        Returns:
            The emulator itself.

        Raises:
            RuntimeError: If the emulator is already running.
        """
        if self._api_server is not None:
            raise RuntimeError("the emulator is already running")
        if self._requested_root is None:
            self._root = Path(tempfile.mkdtemp(prefix="sutro-emulator-"))
            self._owns_root = True
        else:
            self._root = self._requested_root
            self._root.mkdir(parents=True, exist_ok=True)
            self._owns_root = False
        self._store.set_root(self._root)

        storage = EmulatorHTTPServer(
            self._storage_port, StorageRequestHandler, state=self._state, recorder=self._recorder
        )
        try:
            api = EmulatorHTTPServer(
                self._api_port, ApiRequestHandler, state=self._state, recorder=self._recorder
            )
        except OSError:
            storage.server_close()
            raise
        self._state.storage_origin = storage.origin
        storage.start_in_thread("sutro-emulator-storage")
        api.start_in_thread("sutro-emulator-api")
        self._storage_server, self._api_server = storage, api
        return self

    def stop(self) -> None:
        """Stop both servers, close open connections and remove the temporary directory.

        Stopping a stopped emulator does nothing.
        """
        # Each server's stop waits for its accept loop to poll, so both stop at once.
        stoppers = [
            threading.Thread(target=server.stop, name="sutro-emulator-stop")
            for server in (self._api_server, self._storage_server)
            if server is not None
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self._api_server = self._storage_server = None
        self._store.set_root(None)
        if self._owns_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def __enter__(self) -> SutroEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Addresses and credentials

    @property
    def api_url(self) -> str:
        """The API origin, ``http://127.0.0.1:<port>``, without ``/v1``."""
        return self._running(self._api_server).origin

    @property
    def storage_url(self) -> str:
        """The storage server origin, ``http://127.0.0.1:<port>``."""
        return self._running(self._storage_server).origin

    @property
    def api_key(self) -> str:
        """The API key clients must send as ``Authorization: Key <api_key>``."""
        return self._api_key

    @property
    def root_dir(self) -> Path | None:
        """The directory that contains the artifacts while the emulator runs."""
        return self._root

    @property
    def storage_bytes_per_second(self) -> float | None:
        """Cap on each storage connection's body rate in bytes per second, or ``None``."""
        return self._state.storage_bytes_per_second

    @storage_bytes_per_second.setter
    def storage_bytes_per_second(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"storage_bytes_per_second must be above 0, got {value}")
        self._state.storage_bytes_per_second = value

    @property
    def faults(self) -> FaultController:
        """The fault controller shared by both servers."""
        return self._faults

    # Jobs and artifacts

    def add_job(
        self,
        job_id: str | None = None,
        *,
        table: pa.Table | None = None,
        num_rows: int = 100,
        status: str = "SUCCEEDED",
        model: str = "llama-3.1-8b",
        name: str | None = None,
        compression: str = "snappy",
        target_size_bytes: int | None = None,
        row_group_size: int | None = None,
        seed: int = 0,
    ) -> str:
        """Register a job. Its artifacts are built when first requested.

        Args:
            job_id: The job id. A random ``job-<uuid>`` by default.
            table: The job's results. It should contain ``outputs``, an id column and
                optionally ``inputs`` and ``cumulative_logprobs``. Each artifact keeps every
                column except ``inputs`` and ``cumulative_logprobs``, which it keeps only when
                its include flag is set. Overrides ``num_rows`` and ``target_size_bytes``.
            num_rows: Rows of a generated table (see :func:`make_results_table`).
            status: The job state, for example ``SUCCEEDED`` or ``RUNNING``.
            model: The model name shown in job metadata.
            name: The job name shown in job metadata.
            compression: Parquet compression: ``snappy``, ``zstd``, ``gzip`` or ``none``.
            target_size_bytes: Build artifacts of about this size with random, incompressible
                outputs instead of a realistic table, for transfer benchmarks. Overrides
                ``num_rows``.
            row_group_size: Rows per Parquet row group. pyarrow's default for tables, about
                8 MiB row groups for ``target_size_bytes`` artifacts.
            seed: Seed of the generated data.

        Returns:
            The job id.

        Raises:
            ValueError: If the job id exists already or is not a valid id, or a value is
                invalid.
        """
        job = self._store.add_job(
            job_id,
            status=status,
            model=model,
            name=name,
            num_rows=num_rows,
            seed=seed,
            compression=compression,
            target_size_bytes=target_size_bytes,
            row_group_size=row_group_size,
            table=table,
        )
        return job.job_id

    def set_status(self, job_id: str, status: str, *, failure_reason: str | None = None) -> None:
        """Change a job's state.

        Args:
            job_id: The job.
            status: One of ``QUEUED``, ``STARTING``, ``RUNNING``, ``SUCCEEDED``,
                ``CANCELLING``, ``CANCELLED``, ``FAILED``, ``UNKNOWN``.
            failure_reason: The failure message shown for a ``FAILED`` job.

        Raises:
            KeyError: If the job does not exist.
            ValueError: If the status is unknown.
        """
        self._store.set_status(job_id, status, failure_reason=failure_reason)

    def replace_artifact(
        self,
        job_id: str,
        *,
        table: pa.Table | None = None,
        num_rows: int | None = None,
        seed: int | None = None,
    ) -> dict[str, str]:
        """Rebuild every object of a job's artifact with new bytes, so each gets a new ETag.

        Objects already built are rebuilt now, and so is the default flag combination. The
        others are built from the new data on first use. Responses already streaming
        finish with the old bytes.

        Args:
            job_id: The job.
            table: New results table. By default the rows stay and only the bytes change.
            num_rows: New number of generated rows.
            seed: New seed for generated data. By default the seed is incremented.

        Returns:
            The new ETag of each rebuilt object, keyed by flag label such as
            ``inputs=0~logprobs=0``.

        Raises:
            KeyError: If the job does not exist.
        """
        return self._store.replace_artifact(job_id, table=table, num_rows=num_rows, seed=seed)

    def artifact_path(
        self,
        job_id: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
    ) -> Path:
        """Return the file holding an object's current bytes, building the object if needed.

        Raises:
            KeyError: If the job does not exist.
            RuntimeError: If the emulator is not running.
        """
        flags = ArtifactFlags(include_inputs, include_cumulative_logprobs)
        return self._store.get_object(job_id, flags).path

    def artifact_etag(
        self,
        job_id: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
    ) -> str:
        """Return an object's current ETag (quotes included), building the object if needed.

        Raises:
            KeyError: If the job does not exist.
            RuntimeError: If the emulator is not running.
        """
        flags = ArtifactFlags(include_inputs, include_cumulative_logprobs)
        return self._store.get_object(job_id, flags).etag

    def artifact_key(
        self,
        job_id: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
    ) -> str:
        """Return an object's key in the ``sutro-data`` bucket."""
        return self._store.object_key(
            job_id, ArtifactFlags(include_inputs, include_cumulative_logprobs)
        )

    # Requests and time

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request both servers received, in arrival order (a snapshot)."""
        return self._recorder.snapshot()

    @property
    def api_requests(self) -> list[RecordedRequest]:
        """The requests the API server received, in arrival order (a snapshot)."""
        return [record for record in self._recorder.snapshot() if record.server == "api"]

    @property
    def storage_requests(self) -> list[RecordedRequest]:
        """The requests the storage server received, in arrival order (a snapshot)."""
        return [record for record in self._recorder.snapshot() if record.server == "storage"]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._recorder.clear()

    def now(self) -> float:
        """Return the emulator clock's time in seconds since the epoch."""
        return self._clock.now()

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator clock forward, which expires presigned URLs without waiting.

        The clock signs new URLs and checks expiry. Job timestamps also use it.

        Args:
            seconds: How far to move, 0 or more.
        """
        self._clock.advance(seconds)

    @staticmethod
    def _running(server: EmulatorHTTPServer | None) -> EmulatorHTTPServer:
        if server is None:
            raise RuntimeError(
                "the emulator is not running: call start() or use it in a with block"
            )
        return server
