"""The demo's three CLI runs: materialize, skip on the same ETag, materialize the new ETag."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "example_project" / "demo.py"


def test_demo_three_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(DEMO), "--workdir", str(tmp_path / "demo"), "--rows", "300"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    outcomes = re.findall(r"=> (materialized|skipped)", completed.stdout)
    assert outcomes == ["materialized", "skipped", "materialized"]
    etags = re.findall(r"=> materialized: ETag (\"[0-9a-f-]+\")", completed.stdout)
    assert len(etags) == 2
    assert etags[0] != etags[1]
    assert "300 rows" in completed.stdout
    assert "800 rows" in completed.stdout
    assert "is unchanged since run" in completed.stdout
    assert (tmp_path / "demo" / "dagster_home" / "dagster.yaml").exists()
