"""Sampling profiles of the ``dagster_sutro`` download process with py-spy.

py-spy samples every thread of the child process from outside, so the part workers are
covered (``cProfile`` samples only the main thread). By default py-spy records only threads that
are running, not those blocked in a system call, so a sample count is CPU time of Python
threads, attributed to the Python function that was running or that made the system call.
With ``--idle`` blocked threads are sampled too, which shows where the threads wait. Samples
taken while the child imports its modules are left out.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import ToolFailedError, find_program
from benchmarks.tools import REPOSITORY_ROOT, Artifact, DownloadTools
from dagster_sutro.redaction import redact_text

SAMPLES_PER_SECOND = 200
TOP_FUNCTIONS = 12
# The frame of the import machinery, which marks samples taken during start-up.
IMPORT_FRAME = "_find_and_load"
_LINE_NUMBER = re.compile(r":\d+\)$")


@dataclass
class Profile:
    """A summary of one profiled download.

    Attributes:
        label: What was profiled, for example ``"dagster_sutro, 2 GiB, loopback"``.
        command: The py-spy command, without the presigned URL.
        seconds: The download's time inside the profiled process.
        samples: The samples of running threads, imports excluded.
        self_samples: Samples per function that was on top of the stack.
        inclusive_samples: Samples per ``dagster_sutro`` function anywhere on the stack.
        stages: Samples per stage of the download, as :data:`STAGES` assigns them.
        idle: Whether blocked threads were sampled too.
    """

    label: str
    command: str
    seconds: float
    samples: int
    self_samples: list[tuple[str, int]] = field(default_factory=list)
    inclusive_samples: list[tuple[str, int]] = field(default_factory=list)
    stages: list[tuple[str, int]] = field(default_factory=list)
    idle: bool = False

    @property
    def cpu_seconds(self) -> float:
        """The sampled thread time, estimated from the sample rate; CPU time unless ``idle``."""
        return self.samples / SAMPLES_PER_SECOND


# Each sample is put into the first stage whose function appears in its stack.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("socket reads (BodyStream.chunks)", ("BodyStream.chunks",)),
    ("writes to the partial file (FileRangeSink.write)", ("FileRangeSink.write",)),
    ("writes to the S3 writer (StreamTarget.write)", ("StreamTarget.write",)),
    ("S3 upload of parts (s3fs / aiobotocore)", ("_upload_chunk", "S3File", "aiobotocore")),
    ("request set-up and response head (StorageClient.get)", ("StorageClient.get",)),
    ("publish: fsync, Parquet footer check, rename", ("publish",)),
    ("coordination (engine thread pool, progress)", ("_run_parts", "Progress.", "LogRelay.")),
    ("Sutro API calls (SutroClient)", ("SutroClient.",)),
]


def find_py_spy() -> str | None:
    """Return the py-spy program, or ``None`` when it is not installed."""
    return find_program("py-spy")


def profile_sutro(
    tools: DownloadTools,
    artifact: Artifact,
    *,
    destination: str,
    label: str,
    py_spy: str,
    idle: bool = False,
) -> Profile:
    """Download ``artifact`` once with ``dagster_sutro`` under py-spy and summarize the samples.

    Args:
        tools: The benchmark's tools, for the child's command line and environment.
        artifact: The artifact to download.
        destination: A local path or an ``s3://`` URL.
        label: The profile's title.
        py_spy: The py-spy program.
        idle: Sample blocked threads too (py-spy ``--idle``), which shows where threads wait.

    Raises:
        ToolFailedError: If py-spy or the download fails.
    """
    with tempfile.TemporaryDirectory(dir=tools.workdir) as scratch:
        raw_path = Path(scratch) / "profile.txt"
        result_path = Path(scratch) / "result.json"
        arguments = [*tools.sutro_arguments(artifact, destination), "--result", str(result_path)]
        command = [
            py_spy,
            "record",
            "--format",
            "raw",
            "--nonblocking",
            "--rate",
            str(SAMPLES_PER_SECOND),
            *(["--idle"] if idle else []),
            "-o",
            str(raw_path),
            "--",
            *tools.child_command(arguments),
        ]
        completed = subprocess.run(
            command,
            env=tools.child_env(),
            cwd=REPOSITORY_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=600,
            check=False,
        )
        if completed.returncode != 0 or not result_path.exists():
            tail = "\n".join(redact_text(completed.stderr).strip().splitlines()[-10:])
            raise ToolFailedError(f"py-spy exited with status {completed.returncode}:\n{tail}")
        seconds = float(json.loads(result_path.read_text(encoding="utf-8"))["seconds"])
        stacks = _read_raw(raw_path.read_text(encoding="utf-8"))

    shown_command = (
        f"py-spy record --format raw --nonblocking --rate {SAMPLES_PER_SECOND}"
        f"{' --idle' if idle else ''} -o <file> -- python -m benchmarks.children sutro ..."
    )
    profile = summarize(stacks, label=label, command=shown_command, seconds=seconds)
    profile.idle = idle
    return profile


def _read_raw(text: str) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        stacks.append((frames_text.split(";"), int(count)))
    return stacks


def summarize(
    stacks: list[tuple[list[str], int]], *, label: str, command: str, seconds: float
) -> Profile:
    """Aggregate raw py-spy stacks into self, inclusive and per-stage sample counts.

    Args:
        stacks: ``(frames from the outermost, sample count)`` pairs.
        label: The profile's title.
        command: The py-spy command as shown in the report.
        seconds: The download's time inside the profiled process.
    """
    self_counts: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    stage_counts: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        if any(IMPORT_FRAME in frame for frame in frames):
            continue
        names = [_LINE_NUMBER.sub(")", frame) for frame in frames]
        total += count
        self_counts[names[-1]] += count
        for name in set(names):
            if "dagster_sutro" in name or name.split(" (")[0].split(".")[0] in _OWN_CLASSES:
                inclusive_counts[name] += count
        stage_counts[_stage_of(names)] += count
    return Profile(
        label=label,
        command=command,
        seconds=seconds,
        samples=total,
        self_samples=self_counts.most_common(TOP_FUNCTIONS),
        inclusive_samples=inclusive_counts.most_common(TOP_FUNCTIONS),
        stages=stage_counts.most_common(),
    )


# py-spy shortens file names to the module path, so frames of this package are recognized
# by their class names as well.
_OWN_CLASSES = {
    "BodyStream",
    "FileRangeSink",
    "Fetcher",
    "StorageClient",
    "StreamTarget",
    "S3Target",
    "LocalTarget",
    "OrderedWriter",
    "TailBuffer",
    "Progress",
    "LogRelay",
    "_ArtifactDownload",
    "SutroClient",
    "SutroResource",
}


def _stage_of(names: list[str]) -> str:
    for stage, markers in STAGES:
        if any(marker in name for name in names for marker in markers):
            return stage
    return "other"
