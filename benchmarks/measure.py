"""Running one download tool as its own process and measuring its time, CPU and peak memory.

Peak memory is the maximum resident set size (``ru_maxrss``) of the downloading process. It
comes from ``/usr/bin/time -v`` where that program exists. Elsewhere a fresh Python wrapper
process starts the tool, waits for it and reports ``getrusage(RUSAGE_CHILDREN)``, which then
covers that one tool only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster_sutro.redaction import redact_text

GNU_TIME = "/usr/bin/time"

# Runs argv[1:], waits for it and prints its exit status, peak RSS (KiB) and CPU seconds.
_RUSAGE_WRAPPER = """
import resource, subprocess, sys
status = subprocess.call(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(
    f"\\nbenchmark-rusage {status} {usage.ru_maxrss} {usage.ru_utime} {usage.ru_stime}\\n"
)
sys.exit(status)
"""

_TIME_FIELDS = {
    "user": re.compile(r"User time \(seconds\):\s*([\d.]+)"),
    "system": re.compile(r"System time \(seconds\):\s*([\d.]+)"),
    "max_rss_kib": re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)"),
}
_WRAPPER_LINE = re.compile(r"benchmark-rusage (-?\d+) (\d+) ([\d.]+) ([\d.]+)\s*$")


class ToolFailedError(RuntimeError):
    """A measured process exited with an error or ran past its timeout."""


@dataclass(frozen=True)
class ProcessUsage:
    """The cost of one measured process.

    Attributes:
        wall_seconds: From just before the process started until it exited.
        peak_rss_bytes: The maximum resident set size of the process.
        user_seconds: The CPU time it spent in user mode.
        system_seconds: The CPU time it spent in the kernel.
    """

    wall_seconds: float
    peak_rss_bytes: int
    user_seconds: float
    system_seconds: float

    @property
    def cpu_seconds(self) -> float:
        """User plus system CPU seconds."""
        return self.user_seconds + self.system_seconds


def memory_method() -> str:
    """Describe how peak memory is measured on this machine, for the report."""
    if os.access(GNU_TIME, os.X_OK):
        return "`/usr/bin/time -v` (maximum resident set size of the downloading process)"
    return (
        "`getrusage(RUSAGE_CHILDREN).ru_maxrss` of a fresh wrapper process per measurement "
        "(`/usr/bin/time` is not installed)"
    )


def run_measured(
    argv: Sequence[str],
    *,
    name: str,
    timeout_seconds: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessUsage:
    """Run ``argv`` to completion and measure its wall time, CPU time and peak memory.

    Args:
        argv: The command. It may contain a presigned URL, which never appears in an error.
        name: The tool's name, for errors.
        timeout_seconds: The process is killed after this many seconds.
        env: The environment of the process; the parent's when ``None``.
        cwd: The working directory of the process.

    Returns:
        The measured usage.

    Raises:
        ToolFailedError: If the process exits with a non-zero status or times out.
    """
    if os.access(GNU_TIME, os.X_OK):
        return _run_with_gnu_time(argv, name, timeout_seconds, env, cwd)
    return _run_with_wrapper(argv, name, timeout_seconds, env, cwd)


def _run_with_gnu_time(
    argv: Sequence[str],
    name: str,
    timeout_seconds: float,
    env: Mapping[str, str] | None,
    cwd: Path | None,
) -> ProcessUsage:
    # The report goes through a pipe instead of a file, because its first line repeats the
    # command line and with it the presigned URL.
    read_fd, write_fd = os.pipe()
    command = [GNU_TIME, "-v", "-o", f"/dev/fd/{write_fd}", *argv]
    try:
        started = time.monotonic()
        completed = _run(command, name, timeout_seconds, env, cwd, pass_fds=(write_fd,))
        wall = time.monotonic() - started
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, encoding="utf-8", errors="replace") as report_file:
            read_fd = -1
            report = report_file.read()
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    _raise_on_failure(completed, name)

    values: dict[str, float] = {}
    for field, pattern in _TIME_FIELDS.items():
        match = pattern.search(report)
        if match is None:
            raise ToolFailedError(f"{GNU_TIME} -v reported no {field} for {name}.")
        values[field] = float(match[1])
    return ProcessUsage(
        wall_seconds=wall,
        peak_rss_bytes=int(values["max_rss_kib"]) * 1024,
        user_seconds=values["user"],
        system_seconds=values["system"],
    )


def _run_with_wrapper(
    argv: Sequence[str],
    name: str,
    timeout_seconds: float,
    env: Mapping[str, str] | None,
    cwd: Path | None,
) -> ProcessUsage:
    command = [sys.executable, "-c", _RUSAGE_WRAPPER, *argv]
    started = time.monotonic()
    completed = _run(command, name, timeout_seconds, env, cwd, pass_fds=())
    wall = time.monotonic() - started
    _raise_on_failure(completed, name)
    match = _WRAPPER_LINE.search(completed.stderr)
    if match is None:
        raise ToolFailedError(f"The rusage wrapper reported no usage for {name}.")
    return ProcessUsage(
        wall_seconds=wall,
        peak_rss_bytes=int(match[2]) * 1024,
        user_seconds=float(match[3]),
        system_seconds=float(match[4]),
    )


def _run(
    command: Sequence[str],
    name: str,
    timeout_seconds: float,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    *,
    pass_fds: tuple[int, ...],
) -> subprocess.CompletedProcess[str]:
    # A session of its own, so that a timeout kills the tool and not only its wrapper.
    process = subprocess.Popen(
        list(command),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        pass_fds=pass_fds,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise ToolFailedError(
            f"{name} did not finish within {timeout_seconds:g} s and was killed."
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, None, stderr)


def _raise_on_failure(completed: subprocess.CompletedProcess[str], name: str) -> None:
    if completed.returncode == 0:
        return
    # The last lines of stderr explain the failure; credentials are masked first.
    lines = [
        line
        for line in redact_text(completed.stderr).strip().splitlines()
        if not _WRAPPER_LINE.search(line)
    ]
    tail = "\n".join(lines[-15:])
    raise ToolFailedError(f"{name} exited with status {completed.returncode}:\n{tail}")


def find_program(name: str) -> str | None:
    """Return the path of an installed program, or ``None``."""
    return shutil.which(name)
