"""Run the dagster-sutro demo offline: three CLI runs of ``sutro_results`` against the emulator.

1. The first run downloads the seeded job's results and materializes them.
2. The second run finds the same ETag and skips the download.
3. The artifact is replaced, and the third run materializes the new ETag.

Each run is a separate ``dagster asset materialize`` process, and all three share one
persistent ``DAGSTER_HOME`` under ``--workdir``. The demo resets that directory when it starts,
so every demo shows the same three steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from dagster_sutro import metadata as md
from dagster_sutro.testing import SutroEmulator

ASSET_KEY = dg.AssetKey("sutro_results")
DEMO_JOB_ID = "job-demo-0001"


def main() -> int:
    """Run the three steps and print what each one did."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="Demo state folder.")
    parser.add_argument("--rows", type=int, default=2000, help="Rows in the seeded job.")
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    dagster_home = workdir / "dagster_home"
    results = workdir / "results"
    shutil.rmtree(workdir, ignore_errors=True)
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    with SutroEmulator(root_dir=workdir / "emulator") as emulator:
        job_id = emulator.add_job(job_id=DEMO_JOB_ID, num_rows=args.rows)
        env = {
            **os.environ,
            "SUTRO_API_URL": emulator.api_url,
            "SUTRO_API_KEY": emulator.api_key,
            "SUTRO_DEMO_JOB_ID": job_id,
            "DAGSTER_HOME": str(dagster_home),
        }
        print(f"Emulator: Sutro API at {emulator.api_url}, seeded job {job_id}.")
        print(f"DAGSTER_HOME={dagster_home}\n")

        steps = [
            ("1. first run: expect a download and a materialization", None),
            ("2. same ETag: expect a skip and no new materialization", None),
            ("3. artifact replaced: expect the new ETag to be materialized", "replace"),
        ]
        for title, action in steps:
            if action == "replace":
                emulator.replace_artifact(job_id, num_rows=args.rows + 500)
            print(f"== {title}")
            before = _materialization_count(dagster_home)
            _run_cli(env, job_id, results)
            _report(dagster_home, before)
    return 0


def _run_cli(env: dict[str, str], job_id: str, results: Path) -> None:
    config = {
        "ops": {"sutro_results": {"config": {"job_id": job_id, "destination": f"{results}/"}}}
    }
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "sutro_example.definitions",
        "--select",
        "sutro_results",
        "--config-json",
        json.dumps(config),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in completed.stderr.splitlines():
        if "sutro_results - " in line and (" INFO " in line or " ERROR " in line):
            print("   " + line.split(" - ")[-1])
    if completed.returncode != 0:
        print(completed.stdout[-2000:])
        print(completed.stderr[-4000:])
        raise SystemExit(f"dagster asset materialize failed with exit code {completed.returncode}")


def _materialization_count(dagster_home: Path) -> int:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return len(instance.fetch_materializations(ASSET_KEY, limit=100).records)


def _report(dagster_home: Path, before: int) -> None:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.fetch_materializations(ASSET_KEY, limit=100).records
        if len(records) == before:
            print(f"   => skipped: still {len(records)} materialization(s).\n")
            return
        metadata = records[0].asset_materialization.metadata  # type: ignore[union-attr]
        print(
            f"   => materialized: ETag {md.metadata_value(metadata, md.ETAG_KEY)}, "
            f"{md.metadata_value(metadata, md.ROW_COUNT_KEY)} rows at "
            f"{md.metadata_value(metadata, md.URI_KEY)} "
            f"({len(records)} materialization(s) in all).\n"
        )


if __name__ == "__main__":
    sys.exit(main())
