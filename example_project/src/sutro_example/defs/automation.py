"""Three ways to keep Sutro results fresh without naming the job by hand.

- ``sutro_results_sensor``: HEADs the demo job on an interval and requests a run of the
  config-driven ``sutro_results`` asset when its ETag changes.
- ``sutro/<job>/artifact`` and ``sutro/<job>/results``: an observable artifact and a download
  that Declarative Automation runs when the observed ETag changes.
- ``sutro_job_results``: one partition per job, added by ``sutro_new_jobs_sensor`` for each
  newly SUCCEEDED job.

Sensors and the automation condition sensor start stopped; turn them on in the UI.
"""

import dagster as dg

from dagster_sutro import (
    build_sutro_job_assets,
    build_sutro_new_jobs_sensor,
    build_sutro_partitioned_results_asset,
    build_sutro_results_sensor,
    sutro_results,
)
from sutro_example.defs.results import DEMO_JOB_ID

sutro_results_sensor = build_sutro_results_sensor(job_ids=[DEMO_JOB_ID], asset=sutro_results)

demo_job_assets = build_sutro_job_assets(
    job_id=DEMO_JOB_ID, destination="sutro_job_results/", group_name="sutro_automated"
)

sutro_job_results = build_sutro_partitioned_results_asset(
    destination="sutro_partitioned_results/", group_name="sutro_partitioned"
)
sutro_new_jobs_sensor = build_sutro_new_jobs_sensor(asset=sutro_job_results)


@dg.definitions
def automation() -> dg.Definitions:
    """Collect the automated, sensor-driven and partitioned definitions."""
    return dg.Definitions(
        assets=[*demo_job_assets, sutro_job_results],
        sensors=[sutro_results_sensor, sutro_new_jobs_sensor],
    )
