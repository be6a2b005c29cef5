"""Aggregation of measurements into per-tool summaries and the benchmark's targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.tools import (
    ARIA2C,
    CURL,
    DD,
    GIB,
    MIB,
    REQUESTS,
    SUTRO,
    SUTRO_S3,
    Measurement,
)
from dagster_sutro.resource import DEFAULT_MAX_CONCURRENCY, DEFAULT_PART_SIZE_BYTES
from dagster_sutro.transfer import s3_part_size_for

LOOPBACK = "loopback"
THROTTLED = "throttled"
S3 = "s3"
SETTINGS = (LOOPBACK, THROTTLED, S3)

# The limit on the peak resident set size of a dagster_sutro download to s3://.
S3_PEAK_RSS_LIMIT_BYTES = 200 * MIB
# How much larger the peak of the largest size may be than that of the smallest.
S3_PEAK_GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class Summary:
    """The measurements of one tool on one artifact in one setting.

    Attributes:
        setting: The setting.
        tool: The tool.
        size_bytes: The artifact size.
        size_label: The requested artifact size.
        repetitions: The number of measurements.
        median_mib_per_second: The median throughput.
        min_mib_per_second: The lowest throughput.
        max_mib_per_second: The highest throughput.
        median_seconds: The median time.
        peak_rss_bytes: The highest peak resident set size of all repetitions.
        rss_after_imports_bytes: For Python tools, the highest resident set size after imports.
        cpu_seconds_per_gib: The median CPU time of the downloading process per GiB.
        server_cpu_seconds_per_gib: The median CPU time of the emulator (and moto) per GiB.
    """

    setting: str
    tool: str
    size_bytes: int
    size_label: str
    repetitions: int
    median_mib_per_second: float
    min_mib_per_second: float
    max_mib_per_second: float
    median_seconds: float
    peak_rss_bytes: int
    rss_after_imports_bytes: int | None
    cpu_seconds_per_gib: float
    server_cpu_seconds_per_gib: float


def summarize(measurements: Sequence[Measurement]) -> list[Summary]:
    """Group measurements by setting, size and tool, in the order they were first taken."""
    groups: dict[tuple[str, int, str], list[Measurement]] = {}
    for measurement in measurements:
        key = (measurement.setting, measurement.size_bytes, measurement.tool)
        groups.setdefault(key, []).append(measurement)

    summaries = []
    for (setting, size, tool), group in groups.items():
        rates = [item.mib_per_second for item in group]
        after_imports = [
            item.rss_after_imports_bytes
            for item in group
            if item.rss_after_imports_bytes is not None
        ]
        summaries.append(
            Summary(
                setting=setting,
                tool=tool,
                size_bytes=size,
                size_label=group[0].size_label,
                repetitions=len(group),
                median_mib_per_second=statistics.median(rates),
                min_mib_per_second=min(rates),
                max_mib_per_second=max(rates),
                median_seconds=statistics.median(item.seconds for item in group),
                peak_rss_bytes=max(item.peak_rss_bytes for item in group),
                rss_after_imports_bytes=max(after_imports) if after_imports else None,
                cpu_seconds_per_gib=statistics.median(
                    item.cpu_seconds / (size / GIB) for item in group
                ),
                server_cpu_seconds_per_gib=statistics.median(
                    item.server_cpu_seconds / (size / GIB) for item in group
                ),
            )
        )
    return summaries


def find(summaries: Sequence[Summary], setting: str, size: int, tool: str) -> Summary | None:
    """Return the summary of one tool, setting and size, or ``None`` when it was not run."""
    for summary in summaries:
        if (summary.setting, summary.size_bytes, summary.tool) == (setting, size, tool):
            return summary
    return None


@dataclass(frozen=True)
class TargetResult:
    """One target of the benchmark, checked against this run.

    Attributes:
        setting: The setting the target belongs to.
        size_label: The requested artifact size, or ``"all"`` for a target across sizes.
        description: The target, for example ``"dagster_sutro >= 0.9x curl"``.
        measured: The measured value, formatted.
        met: Whether the target was met.
        shortfall: How much the target was missed by, formatted; empty when it was met.
    """

    setting: str
    size_label: str
    description: str
    measured: str
    met: bool
    shortfall: str


def s3_memory_bound_bytes(size: int, rss_after_imports: int) -> int:
    """Return max_concurrency x part_size + the S3 writer block + the process after imports."""
    parts = DEFAULT_MAX_CONCURRENCY * DEFAULT_PART_SIZE_BYTES
    return parts + s3_part_size_for(size) + rss_after_imports


def evaluate_targets(summaries: Sequence[Summary]) -> list[TargetResult]:
    """Check each target for which this run has the measurements."""
    sizes = sorted({summary.size_bytes for summary in summaries})
    results: list[TargetResult] = []
    for size in sizes:
        results += _ratio_targets(summaries, LOOPBACK, size, [(CURL, 0.9), (DD, 0.8)])
        results += _ratio_targets(
            summaries, THROTTLED, size, [(REQUESTS, 6.0), (CURL, 6.0), (ARIA2C, 0.95)]
        )
        results += _s3_targets(summaries, size)
    results += _s3_growth_target(summaries, sizes)
    return results


def _ratio_targets(
    summaries: Sequence[Summary], setting: str, size: int, targets: list[tuple[str, float]]
) -> list[TargetResult]:
    ours = find(summaries, setting, size, SUTRO)
    if ours is None:
        return []
    results = []
    for tool, minimum in targets:
        other = find(summaries, setting, size, tool)
        if other is None:
            continue
        ratio = ours.median_mib_per_second / other.median_mib_per_second
        met = ratio >= minimum
        shortfall = ""
        if not met:
            shortfall = f"{minimum - ratio:.2f}x below ({(1 - ratio / minimum) * 100:.0f}% short)"
        results.append(
            TargetResult(
                setting=setting,
                size_label=ours.size_label,
                description=f"{SUTRO} >= {minimum:g}x {tool} (median MiB/s)",
                measured=f"{ratio:.2f}x",
                met=met,
                shortfall=shortfall,
            )
        )
    return results


def _s3_targets(summaries: Sequence[Summary], size: int) -> list[TargetResult]:
    ours = find(summaries, S3, size, SUTRO_S3)
    if ours is None:
        return []
    peak = ours.peak_rss_bytes
    results = []
    if ours.rss_after_imports_bytes is not None:
        bound = s3_memory_bound_bytes(size, ours.rss_after_imports_bytes)
        results.append(
            TargetResult(
                setting=S3,
                size_label=ours.size_label,
                description=(
                    "peak RSS <= max_concurrency x part_size + S3 writer block + RSS after "
                    f"imports = {bound / MIB:.0f} MiB"
                ),
                measured=f"{peak / MIB:.0f} MiB",
                met=peak <= bound,
                shortfall="" if peak <= bound else f"{(peak - bound) / MIB:.0f} MiB over",
            )
        )
    limit = S3_PEAK_RSS_LIMIT_BYTES
    results.append(
        TargetResult(
            setting=S3,
            size_label=ours.size_label,
            description=f"peak RSS < {limit / MIB:.0f} MiB",
            measured=f"{peak / MIB:.0f} MiB",
            met=peak < limit,
            shortfall=""
            if peak < limit
            else f"{(peak - limit) / MIB:.0f} MiB over ({(peak / limit - 1) * 100:.0f}%)",
        )
    )
    return results


def _s3_growth_target(summaries: Sequence[Summary], sizes: list[int]) -> list[TargetResult]:
    if len(sizes) < 2:
        return []
    smallest = find(summaries, S3, sizes[0], SUTRO_S3)
    largest = find(summaries, S3, sizes[-1], SUTRO_S3)
    if smallest is None or largest is None:
        return []
    growth = largest.peak_rss_bytes / smallest.peak_rss_bytes - 1
    limit = S3_PEAK_GROWTH_LIMIT
    return [
        TargetResult(
            setting=S3,
            size_label="all",
            description=(
                f"peak RSS at {largest.size_label} within {limit * 100:.0f}% of the peak at "
                f"{smallest.size_label}"
            ),
            measured=f"{growth * 100:+.1f}%",
            met=growth <= limit,
            shortfall="" if growth <= limit else f"{(growth - limit) * 100:.1f} points over",
        )
    ]
