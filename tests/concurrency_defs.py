"""Definitions for the multiprocess concurrency test, configured from environment variables.

The multiprocess executor rebuilds the job in every step process, so the job is built by a
module-level function that reads the emulator's address and the job ids from the environment:

- ``SUTRO_API_URL`` and ``SUTRO_API_KEY``: the emulator.
- ``SUTRO_TEST_JOB_IDS``: comma-separated job ids, one pair of job assets each.
- ``SUTRO_TEST_DESTINATION``: the directory the results are written to.
- ``SUTRO_TEST_POOL``: the concurrency pool of the downloads, empty for none.
"""

from __future__ import annotations

import os

import dagster as dg

from dagster_sutro import SutroResource, build_sutro_job_assets

DOWNLOADS_JOB = "sutro_downloads"
MAX_CONCURRENT_STEPS = 2


def build_downloads_job() -> dg.JobDefinition:
    """Build the job that materializes every configured job's results asset."""
    assets: list[dg.AssetsDefinition] = []
    results_keys: list[dg.AssetKey] = []
    for job_id in os.environ["SUTRO_TEST_JOB_IDS"].split(","):
        artifact, results = build_sutro_job_assets(
            job_id=job_id,
            destination=os.environ["SUTRO_TEST_DESTINATION"],
            pool=os.environ.get("SUTRO_TEST_POOL") or None,
            retry_policy=None,
        )
        assets.extend([artifact, results])
        results_keys.append(results.key)

    defs = dg.Definitions(
        assets=assets,
        resources={
            "sutro": SutroResource(
                api_key=dg.EnvVar("SUTRO_API_KEY"), api_url=dg.EnvVar("SUTRO_API_URL")
            )
        },
        jobs=[
            dg.define_asset_job(
                DOWNLOADS_JOB,
                selection=results_keys,
                executor_def=dg.multiprocess_executor.configured(
                    {"max_concurrent": MAX_CONCURRENT_STEPS}
                ),
            )
        ],
    )
    return defs.resolve_job_def(DOWNLOADS_JOB)
