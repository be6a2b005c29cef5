"""The measured download tools, each run as its own process against the emulator.

Every measurement starts after ``os.sync()``, so no writeback of earlier steps overlaps it.
Every local download ends with the file flushed to disk: ``dagster_sutro`` calls ``fsync``
before it publishes, so for the other tools the benchmark calls ``fsync`` on the finished
file right after the process exits and adds that time. Every tool is therefore timed until
the same durable end state.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import ProcessUsage, ToolFailedError, find_program, run_measured
from dagster_sutro import SutroResource
from dagster_sutro.redaction import register_presigned_url, register_secret
from dagster_sutro.testing import SutroEmulator

MIB = 1024 * 1024
GIB = 1024 * MIB
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
S3_BUCKET = "benchmark-results"

SUTRO = "dagster_sutro"
CURL = "curl"
ARIA2C = "aria2c"
REQUESTS = "requests"
DD = "dd"
SUTRO_S3 = "dagster_sutro to s3://"
REQUESTS_PUT = "requests + fs.put"

# The aria2c options of the comparison: 8 connections and 16 MiB pieces, the same as the
# resource's default max_concurrency and part_size_bytes.
ARIA2C_OPTIONS = ("-x8", "-s8", "-k16M")

# Commands as the report shows them. <url> stands for the presigned GET URL.
COMMANDS = {
    SUTRO: "python -m benchmarks.children sutro (SutroResource.download_results, defaults)",
    CURL: "curl -sS --fail -o <dest> <url>",
    ARIA2C: "aria2c -q " + " ".join(ARIA2C_OPTIONS) + " -d <dir> -o <name> <url>",
    REQUESTS: "python -m benchmarks.children requests (iter_content(8 MiB) to <dest>.part)",
    DD: "dd if=<emulator artifact> of=<dest> bs=1M",
    SUTRO_S3: "python -m benchmarks.children sutro --destination s3://...",
    REQUESTS_PUT: "python -m benchmarks.children requests --upload-to s3://...",
}


@dataclass
class Measurement:
    """One timed download.

    Attributes:
        setting: ``loopback``, ``throttled`` or ``s3``.
        tool: The tool's name, one of the module constants.
        size_bytes: The artifact size.
        size_label: The requested artifact size, for example ``"256 MiB"``.
        repetition: The repetition number, from 0.
        seconds: The time the throughput is computed from, until the file is durable. Python
            tools are timed inside the process, other tools by the process's wall time. For
            tools that do not flush the file themselves the parent's ``fsync`` is added.
        wall_seconds: The process's wall time, interpreter start-up included.
        fsync_seconds: The part of ``seconds`` spent in the parent's ``fsync``.
        peak_rss_bytes: The downloading process's maximum resident set size.
        rss_after_imports_bytes: For Python tools, the resident set size after the imports,
            before the download started.
        cpu_seconds: User plus system CPU time of the downloading process; for the Python
            tools only that of the download, measured inside the process.
        server_cpu_seconds: CPU time of the benchmark process (which runs the emulator) and
            of moto's server process meanwhile.
        phases: Seconds per step, for tools with more than one.
    """

    setting: str
    tool: str
    size_bytes: int
    size_label: str
    repetition: int
    seconds: float
    wall_seconds: float
    fsync_seconds: float
    peak_rss_bytes: int
    rss_after_imports_bytes: int | None
    cpu_seconds: float
    server_cpu_seconds: float
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def mib_per_second(self) -> float:
        """The throughput in MiB/s."""
        return self.size_bytes / MIB / self.seconds

    def to_json(self) -> dict[str, Any]:
        """Convert the measurement to a JSON-compatible dict."""
        return asdict(self)


@dataclass(frozen=True)
class Artifact:
    """One served artifact of the benchmark.

    Attributes:
        job_id: The emulator job that serves it.
        path: The served file.
        size_bytes: Its size, which matches the requested size only approximately.
        label: The requested size, for example ``"256 MiB"``.
        etag: Its ETag, quotes included.
        build_seconds: How long the emulator took to build it.
    """

    job_id: str
    path: Path
    size_bytes: int
    label: str
    etag: str
    build_seconds: float


class DownloadTools:
    """Runs each download tool against the emulator and records what it cost.

    Args:
        emulator: The running emulator that serves the artifacts.
        workdir: Where destinations and result files go.
        s3_storage_options: fsspec options of the moto server, for the ``s3`` setting.
        server_pids: Other server processes (moto's) whose CPU time counts as server CPU.
    """

    def __init__(
        self,
        emulator: SutroEmulator,
        workdir: Path,
        *,
        s3_storage_options: dict[str, Any] | None = None,
        server_pids: Sequence[int] = (),
    ) -> None:
        self.emulator = emulator
        self.server_pids = list(server_pids)
        self.workdir = workdir
        self.s3_storage_options = s3_storage_options
        self.resource = SutroResource(api_key=emulator.api_key, api_url=emulator.api_url)
        register_secret(emulator.api_key)
        self.destinations = workdir / "destinations"
        self.destinations.mkdir(parents=True, exist_ok=True)
        self.curl = find_program("curl")
        self.aria2c = find_program("aria2c")
        self.dd = find_program("dd")

    def available(self, tool: str) -> bool:
        """Return whether the tool's program is installed."""
        program = {CURL: self.curl, ARIA2C: self.aria2c, DD: self.dd}.get(tool, sys.executable)
        return program is not None

    def measure(
        self, tool: str, artifact: Artifact, *, setting: str, repetition: int
    ) -> Measurement:
        """Download ``artifact`` once with ``tool`` and return the measurement.

        Raises:
            ToolFailedError: If the tool fails or delivers a file of the wrong size.
        """
        runners: dict[str, Callable[[Artifact], tuple[float, ProcessUsage, dict[str, Any]]]] = {
            SUTRO: self._run_sutro,
            CURL: self._run_curl,
            ARIA2C: self._run_aria2c,
            REQUESTS: self._run_requests,
            DD: self._run_dd,
            SUTRO_S3: self._run_sutro_s3,
            REQUESTS_PUT: self._run_requests_put,
        }
        # Dirty pages of earlier steps (the artifact build, the last download) would be
        # written back during this measurement otherwise.
        os.sync()
        server_cpu_before = self._server_cpu_seconds()
        seconds, usage, child = runners[tool](artifact)
        server_cpu = self._server_cpu_seconds() - server_cpu_before
        return Measurement(
            setting=setting,
            tool=tool,
            size_bytes=artifact.size_bytes,
            size_label=artifact.label,
            repetition=repetition,
            seconds=seconds,
            wall_seconds=usage.wall_seconds,
            fsync_seconds=child.get("fsync_seconds", 0.0),
            peak_rss_bytes=usage.peak_rss_bytes,
            rss_after_imports_bytes=child.get("rss_after_imports_bytes"),
            cpu_seconds=child.get("cpu_seconds", usage.cpu_seconds),
            server_cpu_seconds=server_cpu,
            phases=child.get("phases", {}),
        )

    # Tools

    def _run_sutro(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        destination = self.fresh_destination()
        usage, child = self._run_child(
            SUTRO, artifact, self.sutro_arguments(artifact, str(destination))
        )
        self._check_local(destination, artifact, SUTRO)
        return child["seconds"], usage, child

    def _run_sutro_s3(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        uri = self.s3_uri("dagster-sutro", artifact)
        usage, child = self._run_child(SUTRO_S3, artifact, self.sutro_arguments(artifact, uri))
        self._check_s3(uri, artifact, SUTRO_S3)
        return child["seconds"], usage, child

    def _run_requests(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        destination = self.fresh_destination()
        usage, child = self._run_child(
            REQUESTS,
            artifact,
            ["requests", "--url", self._get_url(artifact), "--destination", str(destination)],
        )
        fsync_seconds = _fsync(destination)
        self._check_local(destination, artifact, REQUESTS)
        child["fsync_seconds"] = fsync_seconds
        return child["seconds"] + fsync_seconds, usage, child

    def _run_requests_put(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        destination = self.fresh_destination()
        uri = self.s3_uri("requests", artifact)
        usage, child = self._run_child(
            REQUESTS_PUT,
            artifact,
            [
                "requests",
                "--url",
                self._get_url(artifact),
                "--destination",
                str(destination),
                "--upload-to",
                uri,
                "--storage-options",
                json.dumps(self.s3_storage_options),
            ],
        )
        self._check_s3(uri, artifact, REQUESTS_PUT)
        return child["seconds"], usage, child

    def _run_curl(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        assert self.curl is not None
        destination = self.fresh_destination()
        command = [self.curl, "-sS", "--fail", "-o", str(destination), self._get_url(artifact)]
        return self._run_program(CURL, command, destination, artifact)

    def _run_aria2c(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        assert self.aria2c is not None
        destination = self.fresh_destination()
        command = [
            self.aria2c,
            "-q",
            *ARIA2C_OPTIONS,
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "-d",
            str(destination.parent),
            "-o",
            destination.name,
            self._get_url(artifact),
        ]
        return self._run_program(ARIA2C, command, destination, artifact)

    def _run_dd(self, artifact: Artifact) -> tuple[float, ProcessUsage, dict[str, Any]]:
        assert self.dd is not None
        destination = self.fresh_destination()
        command = [self.dd, f"if={artifact.path}", f"of={destination}", "bs=1M", "status=none"]
        return self._run_program(DD, command, destination, artifact)

    # Helpers

    def _server_cpu_seconds(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime
        return own + sum(_process_cpu_seconds(pid) for pid in self.server_pids)

    def _run_program(
        self, tool: str, command: list[str], destination: Path, artifact: Artifact
    ) -> tuple[float, ProcessUsage, dict[str, Any]]:
        usage = run_measured(
            command, name=tool, timeout_seconds=_timeout_for(artifact), cwd=self.workdir
        )
        fsync_seconds = _fsync(destination)
        self._check_local(destination, artifact, tool)
        return usage.wall_seconds + fsync_seconds, usage, {"fsync_seconds": fsync_seconds}

    def _run_child(
        self, tool: str, artifact: Artifact, arguments: list[str]
    ) -> tuple[ProcessUsage, dict[str, Any]]:
        descriptor, result_name = tempfile.mkstemp(
            prefix="result-", suffix=".json", dir=self.workdir
        )
        os.close(descriptor)
        result_path = Path(result_name)
        try:
            usage = run_measured(
                self.child_command([*arguments, "--result", result_name]),
                name=tool,
                timeout_seconds=_timeout_for(artifact),
                env=self.child_env(),
                cwd=REPOSITORY_ROOT,
            )
            child: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        finally:
            result_path.unlink(missing_ok=True)
        return usage, child

    def child_command(self, arguments: list[str]) -> list[str]:
        """Return the command line of a :mod:`benchmarks.children` process."""
        return [sys.executable, "-m", "benchmarks.children", *arguments]

    def child_env(self) -> dict[str, str]:
        """Return the environment of a child process: the API key and the import path."""
        return {
            **os.environ,
            "SUTRO_API_KEY": self.emulator.api_key,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")])
            ),
        }

    def sutro_arguments(self, artifact: Artifact, destination: str) -> list[str]:
        """Return the child arguments of a ``dagster_sutro`` download to ``destination``."""
        arguments = [
            "sutro",
            "--api-url",
            self.emulator.api_url,
            "--job-id",
            artifact.job_id,
            "--destination",
            destination,
        ]
        if destination.startswith("s3://"):
            arguments += ["--storage-options", json.dumps(self.s3_storage_options)]
        return arguments

    def fresh_destination(self) -> Path:
        """Empty the destination directory and return the destination file's path."""
        for entry in self.destinations.iterdir():
            entry.unlink()
        return self.destinations / "results.parquet"

    def s3_uri(self, prefix: str, artifact: Artifact) -> str:
        """Return an ``s3://`` destination on the moto server for one tool's upload."""
        return f"s3://{S3_BUCKET}/{prefix}/{artifact.job_id}/results.parquet"

    def _get_url(self, artifact: Artifact) -> str:
        # A fresh URL for every measurement, so that no URL expires during a long run.
        url = self.resource.get_results_download_url(artifact.job_id).get_url
        register_presigned_url(url)
        return url

    def _check_local(self, destination: Path, artifact: Artifact, tool: str) -> None:
        size = destination.stat().st_size if destination.exists() else None
        if size != artifact.size_bytes:
            raise ToolFailedError(
                f"{tool} left {size} bytes at {destination}, expected {artifact.size_bytes}."
            )
        destination.unlink()

    def _check_s3(self, uri: str, artifact: Artifact, tool: str) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri, **(self.s3_storage_options or {}))
        fs.invalidate_cache()
        size = fs.info(path)["size"]
        fs.rm(path)
        if size != artifact.size_bytes:
            raise ToolFailedError(f"{tool} uploaded {size} bytes, expected {artifact.size_bytes}.")


def _fsync(path: Path) -> float:
    started = time.perf_counter()
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return time.perf_counter() - started


def _process_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU seconds of a running process, from ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: field 14 (utime) and 15 (stime) of proc(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timeout_for(artifact: Artifact) -> float:
    # Generous: a single stream at 5 MiB/s, plus start-up.
    return 120 + artifact.size_bytes / (5 * MIB)
