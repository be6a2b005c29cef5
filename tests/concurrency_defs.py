"""Definitions for the multiprocess concurrency test.

The multiprocess executor rebuilds the job in every step process from a module-level function
and its keyword arguments, so everything that shapes the job (job ids, destination, pool) is an
argument. The emulator's address and key come from ``SUTRO_API_URL`` and ``SUTRO_API_KEY``,
which the resource reads at launch.
"""

from __future__ import annotations

import dagster as dg

from dagster_sutro import SutroResource, build_sutro_job_assets

DOWNLOADS_JOB = "sutro_downloads"
MAX_CONCURRENT_STEPS = 2


def build_downloads_job(
    job_ids: list[str], destination: str, pool: str | None = None
) -> dg.JobDefinition:
    """Build the job that materializes the results asset of each job in ``job_ids``."""
    assets: list[dg.AssetsDefinition] = []
    results_keys: list[dg.AssetKey] = []
    for job_id in job_ids:
        artifact, results = build_sutro_job_assets(
            job_id=job_id, destination=destination, pool=pool, retry_policy=None
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
