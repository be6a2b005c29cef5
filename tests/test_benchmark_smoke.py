"""The download benchmark's smallest run, end to end, plus its size parser and page merge.

No figure is checked for speed; the run only has to finish and report every tool.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.download import parse_sizes
from benchmarks.report import HAND_WRITTEN_BEGIN, HAND_WRITTEN_END, hand_written_section

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
KEPT_NOTE = "## Reading the figures\n\nA note written by hand that a rerun keeps.\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the benchmark once at 8 MiB into a page that already has a hand-written section."""
    directory = tmp_path_factory.mktemp("benchmark")
    page = directory / "benchmarks.md"
    page.write_text(
        f"# Old page\n\nold figures\n\n{HAND_WRITTEN_BEGIN}\n{KEPT_NOTE}{HAND_WRITTEN_END}\n",
        encoding="utf-8",
    )
    measurements = directory / "measurements.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.download",
            "--quick",
            "--sizes",
            "8MiB",
            "--output",
            str(page),
            "--json",
            str(measurements),
            "--workdir",
            str(directory / "scratch"),
        ],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return {
        "completed": completed,
        "page": page.read_text(encoding="utf-8"),
        "measurements": json.loads(measurements.read_text(encoding="utf-8"))
        if measurements.exists()
        else [],
        "scratch": directory / "scratch",
    }


def test_quick_run_succeeds(quick_run: dict) -> None:
    completed = quick_run["completed"]
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_quick_run_reports_every_setting(quick_run: dict) -> None:
    page = quick_run["page"]
    assert "### (a) Unthrottled loopback" in page
    assert "### (b) Storage capped per connection at 25 MiB/s" in page
    assert "### (c) `s3://` destination on moto's server" in page
    assert "## Targets" in page
    assert "old figures" not in page


def test_quick_run_measures_every_tool(quick_run: dict) -> None:
    measured = {(item["setting"], item["tool"]) for item in quick_run["measurements"]}
    expected = {
        ("loopback", "dagster_sutro"),
        ("loopback", "curl"),
        ("loopback", "requests"),
        ("loopback", "dd"),
        ("throttled", "dagster_sutro"),
        ("throttled", "curl"),
        ("throttled", "requests"),
        ("s3", "dagster_sutro to s3://"),
        ("s3", "requests + fs.put"),
    }
    if shutil.which("aria2c"):
        expected |= {("loopback", "aria2c"), ("throttled", "aria2c")}
    assert expected <= measured


def test_quick_run_records_time_and_memory(quick_run: dict) -> None:
    assert quick_run["measurements"]
    for item in quick_run["measurements"]:
        assert item["seconds"] > 0, item
        assert item["peak_rss_bytes"] > 0, item
        assert item["size_bytes"] > 0, item


def test_unchanged_asset_run_skips_download(quick_run: dict) -> None:
    page = quick_run["page"]
    assert "one `results-url` call, one HEAD and no GET, as expected" in page
    assert "- Storage requests: HEAD 1\n" in page
    assert "/results-url`" in page


def test_hand_written_section_kept(quick_run: dict) -> None:
    page = quick_run["page"]
    assert f"{HAND_WRITTEN_BEGIN}\n{KEPT_NOTE}{HAND_WRITTEN_END}" in page


def test_quick_run_shows_no_credentials(quick_run: dict) -> None:
    completed = quick_run["completed"]
    for text in (quick_run["page"], completed.stdout, completed.stderr):
        assert "X-Amz-Signature" not in text
        assert "X-Amz-Credential" not in text
        assert "sk_emulator_" not in text


def test_scratch_directory_removed(quick_run: dict) -> None:
    assert list(quick_run["scratch"].iterdir()) == []


def test_parse_sizes_units() -> None:
    assert parse_sizes("256MiB,2GiB") == [("256 MiB", 256 * 2**20), ("2 GiB", 2 * 2**30)]
    assert parse_sizes("8mib") == [("8 MiB", 8 * 2**20)]
    assert parse_sizes("1048576") == [("1048576 B", 2**20)]


@pytest.mark.parametrize("text", ["", "12 parsecs", "-5MiB", "512KiB"])
def test_parse_sizes_rejects_invalid(text: str) -> None:
    with pytest.raises(Exception, match="size"):
        parse_sizes(text)


def test_hand_written_default_without_page(tmp_path: Path) -> None:
    section = hand_written_section(tmp_path / "missing.md")
    assert section.startswith("## Reading the figures")
