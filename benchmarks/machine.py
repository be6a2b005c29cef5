"""A description of the machine and software that a benchmark run used."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster

from benchmarks.measure import find_program
from dagster_sutro.version import __version__ as dagster_sutro_version


@dataclass(frozen=True)
class Machine:
    """The facts about the machine that the report states."""

    cpu_model: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    dagster_sutro: str
    dagster: str
    curl: str
    aria2c: str
    filesystem: str


def describe_machine(workdir: Path) -> Machine:
    """Collect the CPU, memory, kernel and tool versions, and the workdir's filesystem type."""
    return Machine(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        kernel=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        dagster_sutro=dagster_sutro_version,
        dagster=dagster.__version__,
        curl=_version(["curl", "--version"]),
        aria2c=_version(["aria2c", "--version"]),
        filesystem=_filesystem_type(workdir),
    )


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _version(command: list[str]) -> str:
    """Return the program name and version from the first line of ``--version``."""
    line = _first_line(command)
    words = [word for word in line.split() if word != "version"]
    return " ".join(words[:2]) if len(words) >= 2 else line


def _filesystem_type(path: Path) -> str:
    if find_program("findmnt") is not None:
        found = _first_line(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)])
        if found not in ("unknown", "not installed"):
            return found
    return _first_line(["stat", "-f", "-c", "%T", str(path)])


def _first_line(command: list[str]) -> str:
    if find_program(command[0]) is None:
        return "not installed"
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = completed.stdout.strip().splitlines()
    return lines[0] if lines else "unknown"
