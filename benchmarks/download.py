"""Benchmark ``dagster_sutro`` downloads against curl, aria2c, requests and dd.

One emulator artifact per size is downloaded by every tool, each in its own process, on the
same filesystem, in three settings: unthrottled loopback, storage capped per connection, and
an ``s3://`` destination on moto's server. The run measures throughput, CPU time and peak
memory, counts the requests of an unchanged-ETag asset run, profiles the ``dagster_sutro``
process with py-spy when it is installed, and writes ``docs/benchmarks.md``.

Run from the repository root::

    python -m benchmarks.download            # 256 MiB and 2 GiB, writes docs/benchmarks.md
    python -m benchmarks.download --quick    # 64 MiB, one repetition, prints the tables
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.asset_run import AssetRunRequests, count_unchanged_run_requests
from benchmarks.machine import describe_machine
from benchmarks.measure import ToolFailedError, memory_method
from benchmarks.moto_server import moto_process
from benchmarks.profile import Profile, find_py_spy, profile_sutro
from benchmarks.report import RunInfo, hand_written_section, render_page
from benchmarks.results import (
    LOOPBACK,
    S3,
    SETTINGS,
    THROTTLED,
    evaluate_targets,
    summarize,
)
from benchmarks.tools import (
    ARIA2C,
    CURL,
    DD,
    MIB,
    REPOSITORY_ROOT,
    REQUESTS,
    REQUESTS_PUT,
    S3_BUCKET,
    SUTRO,
    SUTRO_S3,
    Artifact,
    DownloadTools,
    Measurement,
)
from dagster_sutro.testing import SutroEmulator

DEFAULT_SIZES = "256MiB,2GiB"
QUICK_SIZES = "64MiB"
# Loopback downloads take seconds each, so they are repeated most, because the machine is noisy.
DEFAULT_REPETITIONS = 5
# Single streams at 25 MiB/s take about 80 s per 2 GiB, so the capped setting runs once.
DEFAULT_THROTTLED_REPETITIONS = 1
# moto takes about 30 s to receive 2 GiB, and memory, the main figure there, barely varies.
DEFAULT_S3_REPETITIONS = 2
DEFAULT_THROTTLE_MIB_PER_SECOND = 25.0
DEFAULT_PAGE = REPOSITORY_ROOT / "docs" / "benchmarks.md"

SETTING_TOOLS = {
    LOOPBACK: (SUTRO, CURL, ARIA2C, REQUESTS, DD),
    THROTTLED: (SUTRO, CURL, ARIA2C, REQUESTS),
    S3: (SUTRO_S3, REQUESTS_PUT),
}
MOTO_CREDENTIALS = {"key": "testing", "secret": "testing"}
MOTO_REGION = "us-east-1"
MOTO_READ_TIMEOUT_SECONDS = 600

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB}


def parse_sizes(text: str) -> list[tuple[str, int]]:
    """Parse ``"256MiB,2GiB"`` into ``[("256 MiB", 268435456), ("2 GiB", 2147483648)]``.

    Raises:
        argparse.ArgumentTypeError: If a size is not a number with an optional B, KiB, MiB
            or GiB unit, or is below 1 MiB.
    """
    sizes = []
    for item in text.split(","):
        match = _SIZE.match(item)
        if match is None:
            raise argparse.ArgumentTypeError(
                f"invalid size {item!r}; use a number with B, KiB, MiB or GiB, e.g. 256MiB"
            )
        unit = (match[2] or "B").lower()
        size = int(float(match[1]) * _UNITS[unit])
        if size < MIB:
            raise argparse.ArgumentTypeError(f"size {item!r} is below the minimum of 1 MiB")
        label = f"{match[1]} {match[2] or 'B'}".replace("mib", "MiB").replace("gib", "GiB")
        sizes.append((label, size))
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.download",
        description=(
            "Benchmark dagster_sutro downloads against curl, aria2c, requests and dd on "
            "emulator artifacts, and write the results page."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Measure {QUICK_SIZES} with one repetition and no profile. The page is written "
        "only when --output is given.",
    )

    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        help=f"Comma-separated artifact sizes (default {DEFAULT_SIZES}; {QUICK_SIZES} with "
        "--quick).",
    )
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="Comma-separated settings to run: loopback, throttled, s3 (default: all).",
    )

    parser.add_argument(
        "--repetitions",
        type=int,
        help=f"Measurements per tool in the loopback setting (default {DEFAULT_REPETITIONS}; "
        "1 with --quick).",
    )
    parser.add_argument(
        "--s3-repetitions",
        type=int,
        default=DEFAULT_S3_REPETITIONS,
        help=f"Measurements per tool in the s3 setting (default {DEFAULT_S3_REPETITIONS}).",
    )
    parser.add_argument(
        "--throttled-repetitions",
        type=int,
        default=DEFAULT_THROTTLED_REPETITIONS,
        help="Measurements per tool in the throttled setting (default "
        f"{DEFAULT_THROTTLED_REPETITIONS}).",
    )
    parser.add_argument(
        "--throttle-mib-per-second",
        type=float,
        default=DEFAULT_THROTTLE_MIB_PER_SECOND,
        help="The per-connection storage cap of the throttled setting, in MiB/s (default "
        f"{DEFAULT_THROTTLE_MIB_PER_SECOND:g}).",
    )

    parser.add_argument(
        "--output",
        type=Path,
        help=f"The page to write (default {DEFAULT_PAGE.relative_to(REPOSITORY_ROOT)}, except "
        "with --quick).",
    )
    parser.add_argument("--json", type=Path, help="Also write every measurement to this file.")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="Directory under which the run's scratch directory is created (default: the "
        "system temporary directory). It needs room for the largest artifact twice.",
    )

    parser.add_argument("--keep-workdir", action="store_true", help="Keep the scratch directory.")
    parser.add_argument(
        "--no-profile", action="store_true", help="Skip the py-spy profiles of dagster_sutro."
    )
    parser.add_argument(
        "--no-asset-run", action="store_true", help="Skip the unchanged-ETag asset run."
    )
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build_artifacts(emulator: SutroEmulator, sizes: Sequence[tuple[str, int]]) -> list[Artifact]:
    artifacts = []
    for label, size in sizes:
        _log(f"Building the {label} artifact...")
        started = time.monotonic()
        job_id = emulator.add_job(target_size_bytes=size)
        path = emulator.artifact_path(job_id)
        artifact = Artifact(
            job_id=job_id,
            path=path,
            size_bytes=path.stat().st_size,
            label=label,
            etag=emulator.artifact_etag(job_id),
            build_seconds=time.monotonic() - started,
        )
        artifacts.append(artifact)
        _log(f"  {artifact.size_bytes:,} bytes in {artifact.build_seconds:.1f} s")
    return artifacts


def _rotated(tools: Sequence[str], repetition: int) -> list[str]:
    shift = repetition % len(tools)
    return [*tools[shift:], *tools[:shift]]


def _run_setting(
    tools: DownloadTools,
    artifact: Artifact,
    setting: str,
    repetitions: int,
    notes: list[str],
) -> list[Measurement]:
    available = [tool for tool in SETTING_TOOLS[setting] if tools.available(tool)]
    for tool in SETTING_TOOLS[setting]:
        note = f"{tool} is not installed, so it was skipped."
        if tool not in available and note not in notes:
            notes.append(note)
    measurements = []
    for repetition in range(repetitions):
        for tool in _rotated(available, repetition):
            measurement = tools.measure(tool, artifact, setting=setting, repetition=repetition)
            measurements.append(measurement)
            _log(
                f"  [{setting} {artifact.label} {repetition + 1}/{repetitions}] {tool}: "
                f"{measurement.mib_per_second:.1f} MiB/s, {measurement.seconds:.2f} s, peak RSS "
                f"{measurement.peak_rss_bytes / MIB:.0f} MiB"
            )
    return measurements


def _profiles(
    tools: DownloadTools, artifact: Artifact, settings: Sequence[str], notes: list[str]
) -> list[Profile]:
    py_spy = find_py_spy()
    if py_spy is None:
        notes.append("py-spy is not installed (pip install py-spy), so no profile was taken.")
        return []
    profiles = []
    if LOOPBACK in settings:
        _log(f"Profiling dagster_sutro, {artifact.label}, loopback...")
        destination = tools.fresh_destination()
        profiles.append(
            profile_sutro(
                tools,
                artifact,
                destination=str(destination),
                label=f"{SUTRO}, {artifact.label}, (a) unthrottled loopback",
                py_spy=py_spy,
            )
        )
        destination.unlink(missing_ok=True)
        _log(f"Profiling dagster_sutro, {artifact.label}, loopback, blocked threads included...")
        destination = tools.fresh_destination()
        profiles.append(
            profile_sutro(
                tools,
                artifact,
                destination=str(destination),
                label=f"{SUTRO}, {artifact.label}, (a) unthrottled loopback, blocked threads "
                "included",
                py_spy=py_spy,
                idle=True,
            )
        )
        destination.unlink(missing_ok=True)
    if S3 in settings and tools.s3_storage_options is not None:
        _log(f"Profiling dagster_sutro, {artifact.label}, s3://...")
        uri = tools.s3_uri("profile", artifact)
        profiles.append(
            profile_sutro(
                tools,
                artifact,
                destination=uri,
                label=f"{SUTRO}, {artifact.label}, (c) `s3://` destination",
                py_spy=py_spy,
            )
        )
    return profiles


def _command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "benchmarks.download", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the page; return the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = _parser().parse_args(argv)
    sizes = arguments.sizes or parse_sizes(QUICK_SIZES if arguments.quick else DEFAULT_SIZES)
    settings = [name.strip() for name in arguments.settings.split(",") if name.strip()]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        _parser().error(f"unknown setting(s) {', '.join(unknown)}; use {', '.join(SETTINGS)}")
    repetitions = arguments.repetitions or (1 if arguments.quick else DEFAULT_REPETITIONS)
    counts = {
        LOOPBACK: repetitions,
        THROTTLED: 1 if arguments.quick else arguments.throttled_repetitions,
        S3: 1 if arguments.quick else arguments.s3_repetitions,
    }
    if min(counts.values()) < 1:
        _parser().error("repetitions must be at least 1")
    output = arguments.output or (None if arguments.quick else DEFAULT_PAGE)
    profile = not (arguments.quick or arguments.no_profile)

    started = time.monotonic()
    load_at_start = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    scratch_parent = arguments.workdir or Path(tempfile.gettempdir())
    scratch_parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dagster-sutro-benchmark-", dir=scratch_parent))
    notes: list[str] = []
    measurements: list[Measurement] = []
    asset_requests: AssetRunRequests | None = None
    profiles: list[Profile] = []
    artifacts: list[Artifact] = []

    try:
        with (
            SutroEmulator(root_dir=workdir / "emulator") as emulator,
            _optional_moto(S3 in settings) as moto,
        ):
            tools = DownloadTools(
                emulator,
                workdir,
                s3_storage_options=moto[0] if moto else None,
                server_pids=[moto[1]] if moto else [],
            )
            artifacts = _build_artifacts(emulator, sizes)
            for artifact in artifacts:
                for setting in settings:
                    emulator.storage_bytes_per_second = (
                        arguments.throttle_mib_per_second * MIB if setting == THROTTLED else None
                    )
                    _log(f"{setting}, {artifact.label}:")
                    measurements += _run_setting(tools, artifact, setting, counts[setting], notes)
            emulator.storage_bytes_per_second = None
            if not arguments.no_asset_run:
                _log("Counting the requests of an unchanged-ETag asset run...")
                asset_requests = count_unchanged_run_requests(emulator, tools.resource, workdir)
            if profile:
                profiles = _profiles(tools, artifacts[-1], settings, notes)
    except ToolFailedError as error:
        _log(f"The benchmark failed: {error}")
        return 1
    finally:
        if arguments.keep_workdir:
            _log(f"Scratch directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summaries = summarize(measurements)
    info = RunInfo(
        date=date,
        command=_command_line(argv),
        machine=describe_machine(scratch_parent),
        memory_method=memory_method(),
        throttle_mib_per_second=arguments.throttle_mib_per_second,
        repetitions={setting: counts[setting] for setting in settings},
        artifacts=[
            (item.label, item.size_bytes, item.etag, item.build_seconds) for item in artifacts
        ],
        total_seconds=time.monotonic() - started,
        load_averages=(load_at_start, os.getloadavg()),
        notes=notes,
    )
    page = render_page(
        info=info,
        summaries=summaries,
        targets=evaluate_targets(summaries),
        asset_requests=asset_requests,
        profiles=profiles,
        hand_written=hand_written_section(output or DEFAULT_PAGE),
    )
    if output is None:
        print(page)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
        _log(f"Wrote {output}")
    if arguments.json is not None:
        arguments.json.write_text(
            json.dumps([item.to_json() for item in measurements], indent=1), encoding="utf-8"
        )
    return 0


@contextmanager
def _optional_moto(enabled: bool) -> Iterator[tuple[dict[str, Any], int] | None]:
    """Run moto's S3 server in its own process, create the bucket, and yield fsspec options."""
    if not enabled:
        yield None
        return
    import boto3

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": MOTO_CREDENTIALS["key"],
        "AWS_SECRET_ACCESS_KEY": MOTO_CREDENTIALS["secret"],
        "AWS_DEFAULT_REGION": MOTO_REGION,
    }
    with moto_process(REPOSITORY_ROOT, env) as (endpoint, pid):
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=MOTO_CREDENTIALS["key"],
            aws_secret_access_key=MOTO_CREDENTIALS["secret"],
            region_name=MOTO_REGION,
        )
        client.create_bucket(Bucket=S3_BUCKET)
        options = {
            **MOTO_CREDENTIALS,
            "endpoint_url": endpoint,
            "client_kwargs": {"region_name": MOTO_REGION},
            # moto needs more than s3fs's default read timeout of 15 s to complete a 2 GiB
            # multipart upload, and a retried completion fails on moto's side.
            "config_kwargs": {"read_timeout": MOTO_READ_TIMEOUT_SECONDS},
        }
        yield options, pid


if __name__ == "__main__":
    sys.exit(main())
