"""The Markdown page of a benchmark run, with its hand-written section kept across runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.asset_run import AssetRunRequests
from benchmarks.machine import Machine
from benchmarks.profile import SAMPLES_PER_SECOND, Profile
from benchmarks.results import (
    LOOPBACK,
    S3,
    THROTTLED,
    Summary,
    TargetResult,
    s3_memory_bound_bytes,
)
from benchmarks.tools import (
    ARIA2C,
    COMMANDS,
    CURL,
    DD,
    MIB,
    REQUESTS,
    REQUESTS_PUT,
    SUTRO,
    SUTRO_S3,
)

HAND_WRITTEN_BEGIN = "<!-- BEGIN hand-written: kept by python -m benchmarks.download -->"
HAND_WRITTEN_END = "<!-- END hand-written -->"

DEFAULT_HAND_WRITTEN = """## Reading the figures

- Throughput is the artifact size divided by the time until the file is complete and flushed
  to disk (or, for `s3://`, until the upload is complete). Ratios compare medians of the
  same run, so they are steadier than the absolute figures.
- The machine is shared with other work and has 2 cores, which the emulator, moto and the
  downloading process compete for. Absolute MiB/s move by tens of percent between runs.
- Peak RSS of the Python tools includes the interpreter and their imports; the column
  "RSS after imports" shows that fixed part.
"""

SETTING_TITLES = {
    LOOPBACK: "(a) Unthrottled loopback",
    THROTTLED: "(b) Storage capped per connection",
    S3: "(c) `s3://` destination on moto's server",
}
SETTING_BASELINES = {
    LOOPBACK: (CURL, ARIA2C, REQUESTS, DD),
    THROTTLED: (CURL, ARIA2C, REQUESTS),
    S3: (REQUESTS_PUT,),
}


@dataclass
class RunInfo:
    """The facts about one run that the page states besides the measurements.

    Attributes:
        date: The run's start, in UTC.
        command: The command line, as it was typed.
        machine: The machine and software.
        memory_method: How peak memory was measured.
        throttle_mib_per_second: The per-connection cap of the throttled setting.
        repetitions: Measurements per tool, per setting.
        artifacts: ``(label, size in bytes, ETag, seconds to build)`` per artifact.
        total_seconds: The run's duration.
        load_averages: The 1, 5 and 15 minute load averages at the start and at the end.
        notes: Skipped tools and other remarks.
    """

    date: str
    command: str
    machine: Machine
    memory_method: str
    throttle_mib_per_second: float
    repetitions: dict[str, int]
    artifacts: list[tuple[str, int, str, float]]
    total_seconds: float = 0.0
    load_averages: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    notes: list[str] = field(default_factory=list)


def hand_written_section(previous_page: Path) -> str:
    """Return the hand-written section of an existing page, or the default one."""
    try:
        text = previous_page.read_text(encoding="utf-8")
    except OSError:
        return DEFAULT_HAND_WRITTEN
    start = text.find(HAND_WRITTEN_BEGIN)
    end = text.find(HAND_WRITTEN_END)
    if start < 0 or end < start:
        return DEFAULT_HAND_WRITTEN
    return text[start + len(HAND_WRITTEN_BEGIN) : end].strip("\n") + "\n"


def render_page(
    *,
    info: RunInfo,
    summaries: Sequence[Summary],
    targets: Sequence[TargetResult],
    asset_requests: AssetRunRequests | None,
    profiles: Sequence[Profile],
    hand_written: str,
) -> str:
    """Render the whole page."""
    sections = [
        _header(info),
        _method(info),
        _results(info, summaries),
        _asset_section(asset_requests),
        _targets_section(targets),
        _profiles_section(profiles),
        f"{HAND_WRITTEN_BEGIN}\n{hand_written.rstrip()}\n{HAND_WRITTEN_END}\n",
    ]
    return "\n".join(section for section in sections if section)


def _header(info: RunInfo) -> str:
    machine = info.machine
    artifacts = "; ".join(
        f"{label}: {size:,} bytes ({size / MIB:.1f} MiB), ETag `{etag}`, built in {built:.0f} s"
        for label, size, etag, built in info.artifacts
    )
    repetitions = ", ".join(f"{setting} {count}" for setting, count in info.repetitions.items())
    lines = [
        "# Download benchmark",
        "",
        "This page is written by `python -m benchmarks.download` (`make benchmark`); rerunning "
        'it replaces every section except "Reading the figures", which is kept as written.',
        "",
        "## Run",
        "",
        f"- Date: {info.date} (took {info.total_seconds / 60:.1f} min)",
        f"- Command: `{info.command}`",
        f"- Machine: {machine.cpu_model}, {machine.cores} cores, {machine.memory_gib:.1f} GiB "
        f"memory, {machine.kernel}; destination filesystem `{machine.filesystem}`",
        f"- Software: {machine.python}, dagster-sutro {machine.dagster_sutro}, dagster "
        f"{machine.dagster}; {machine.curl}; {machine.aria2c}",
        f"- Artifacts (served by `SutroEmulator`): {artifacts}",
        f"- Repetitions per tool: {repetitions}. Tools run in a rotating order within each "
        "repetition.",
        f"- Peak memory: {info.memory_method}",
        "- The machine is shared with other work and noisy: absolute MiB/s vary between runs, "
        "so compare the ratios, which come from the same run. Load average (1, 5, 15 min) at "
        f"the start: {_loads(info.load_averages[0])}; at the end: "
        f"{_loads(info.load_averages[1])}.",
    ]
    lines += [f"- Note: {note}" for note in info.notes]
    return "\n".join(lines) + "\n"


def _loads(values: tuple[float, ...]) -> str:
    return ", ".join(f"{value:.2f}" for value in values) or "unknown"


def _method(info: RunInfo) -> str:
    rows = "\n".join(f"| {tool} | `{command}` |" for tool, command in COMMANDS.items())
    return f"""## Method

Each measurement downloads the same emulator artifact in a fresh process to the same
filesystem. `dagster_sutro` calls `fsync` before it publishes the file, so for every other
local tool the benchmark calls `fsync` on the finished file right after the process exits and
adds that time: each tool is timed until the file is durable. For the Python tools the time is
taken inside the process around the download (interpreter start-up and imports excluded); for
the other programs it is the process's wall time. The `dagster_sutro` time includes its
`results-url` API call, the HEAD and the Parquet footer check. Before each measurement the
benchmark calls `os.sync()`, so no writeback of an earlier step overlaps it.

Settings: in (a) the emulator serves at full speed over 127.0.0.1. In (b) the emulator caps
every storage connection at {info.throttle_mib_per_second:g} MiB/s, standing in for a real
object store. In (c) the destination is an `s3://` bucket on moto's server: `dagster_sutro`
streams the parts into a multipart upload, and the baseline downloads to a local file with one
stream and then uploads it with `fs.put`.

"CPU s/GiB" is the user plus system CPU time of the downloading process per GiB, for the
Python tools only during the download. "Server CPU s/GiB" is the CPU time of the benchmark
process, which runs the emulator, plus that of moto's server process, over the same interval.

| Tool | Command |
| --- | --- |
{rows}
"""


def _results(info: RunInfo, summaries: Sequence[Summary]) -> str:
    blocks = ["## Results", ""]
    for setting in (LOOPBACK, THROTTLED, S3):
        rows = [summary for summary in summaries if summary.setting == setting]
        if not rows:
            continue
        title = SETTING_TITLES[setting]
        if setting == THROTTLED:
            title += f" at {info.throttle_mib_per_second:g} MiB/s"
        blocks += [f"### {title}", "", _setting_table(setting, rows), ""]
    return "\n".join(blocks)


def _setting_table(setting: str, rows: Sequence[Summary]) -> str:
    ours_name = SUTRO_S3 if setting == S3 else SUTRO
    lines = [
        "| Size | Tool | MiB/s (median) | min-max | Seconds | dagster_sutro ÷ tool | "
        "Peak RSS MiB | RSS after imports MiB | CPU s/GiB | Server CPU s/GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ours = next(
            (item for item in rows if item.tool == ours_name and item.size_bytes == row.size_bytes),
            None,
        )
        ratio = "-"
        if ours is not None and row.tool != ours_name:
            ratio = f"{ours.median_mib_per_second / row.median_mib_per_second:.2f}x"
        after_imports = (
            f"{row.rss_after_imports_bytes / MIB:.0f}"
            if row.rss_after_imports_bytes is not None
            else "-"
        )
        spread = f"{row.min_mib_per_second:.0f}-{row.max_mib_per_second:.0f}"
        lines.append(
            f"| {row.size_label} | {row.tool} | {row.median_mib_per_second:.1f} | {spread} | "
            f"{row.median_seconds:.2f} | {ratio} | {row.peak_rss_bytes / MIB:.0f} | "
            f"{after_imports} | {row.cpu_seconds_per_gib:.2f} | "
            f"{row.server_cpu_seconds_per_gib:.2f} |"
        )
    if setting == S3:
        lines += ["", _s3_memory_breakdown(rows)]
    return "\n".join(lines)


def _s3_memory_breakdown(rows: Sequence[Summary]) -> str:
    lines = [
        "Memory of `dagster_sutro` to `s3://` against its bound (max_concurrency x part_size "
        "+ S3 writer block + RSS after imports):",
        "",
    ]
    for row in rows:
        if row.tool != SUTRO_S3 or row.rss_after_imports_bytes is None:
            continue
        bound = s3_memory_bound_bytes(row.size_bytes, row.rss_after_imports_bytes)
        download = row.peak_rss_bytes - row.rss_after_imports_bytes
        lines.append(
            f"- {row.size_label}: peak {row.peak_rss_bytes / MIB:.0f} MiB = "
            f"{row.rss_after_imports_bytes / MIB:.0f} MiB after imports + "
            f"{download / MIB:.0f} MiB during the download; bound {bound / MIB:.0f} MiB."
        )
    return "\n".join(lines)


def _asset_section(requests: AssetRunRequests | None) -> str:
    if requests is None:
        return ""
    storage = ", ".join(
        f"{method} {count}" for method, count in sorted(requests.storage_requests.items())
    )
    api = ", ".join(f"`{line}`" for line in requests.api_requests) or "none"
    results_url_calls = sum(1 for line in requests.api_requests if line.endswith("/results-url"))
    expected = (
        results_url_calls == 1
        and requests.storage_requests.get("HEAD", 0) == 1
        and requests.storage_gets == 0
    )
    verdict = (
        "one `results-url` call, one HEAD and no GET, as expected"
        if expected
        else "NOT the expected one `results-url` call, one HEAD and no GET"
    )
    return f"""### Unchanged-ETag asset run

`build_sutro_results_asset` was materialized twice with `dg.materialize` on one
`DagsterInstance.ephemeral()`. The second run sent {verdict}:

- API requests: {len(requests.api_requests)} ({api})
- Storage requests: {storage or "none"}
- Materializations recorded by the second run: {requests.materializations}; the run
  succeeded: {requests.second_run_succeeded}
"""


def _targets_section(targets: Sequence[TargetResult]) -> str:
    if not targets:
        return ""
    lines = [
        "## Targets",
        "",
        'Measured, not asserted. The reasons for each miss are under "Reading the figures".',
        "",
        "| Setting | Size | Target | Measured | Result |",
        "| --- | --- | --- | ---: | --- |",
    ]
    labels = {LOOPBACK: "(a)", THROTTLED: "(b)", S3: "(c)"}
    for target in targets:
        result = "met" if target.met else f"missed: {target.shortfall}"
        lines.append(
            f"| {labels[target.setting]} | {target.size_label} | {target.description} | "
            f"{target.measured} | {result} |"
        )
    return "\n".join(lines) + "\n"


def _profiles_section(profiles: Sequence[Profile]) -> str:
    if not profiles:
        return ""
    blocks = [
        "## Where the time goes",
        "",
        "py-spy samples of the `dagster_sutro` download process at "
        f"{SAMPLES_PER_SECOND} Hz per thread, every thread, imports excluded. Without `--idle` "
        "only running threads are sampled, so the shares are shares of CPU time; with "
        "`--idle` blocked threads are sampled too, so the shares are shares of thread time "
        "and show where the threads wait. A sample is attributed to the Python function that "
        "was running or made the system call.",
        "",
    ]
    for profile in profiles:
        total = profile.samples or 1
        kind = "thread seconds (running and blocked)" if profile.idle else "CPU seconds"
        blocks += [
            f"### {profile.label}",
            "",
            f"The download took {profile.seconds:.2f} s under the profiler; {profile.samples} "
            f"samples, about {profile.cpu_seconds:.2f} {kind} of Python threads. Command: "
            f"`{profile.command}`",
            "",
            "| Stage | Share of samples |",
            "| --- | ---: |",
        ]
        blocks += [f"| {stage} | {count / total * 100:.1f}% |" for stage, count in profile.stages]
        blocks += ["", "| Function on top of the stack (self) | Share |", "| --- | ---: |"]
        blocks += [
            f"| `{name}` | {count / total * 100:.1f}% |" for name, count in profile.self_samples
        ]
        blocks.append("")
    return "\n".join(blocks)
