"""The results asset, an asset that reads it, and a daily schedule."""

import os

import dagster as dg
import pyarrow.compute as pc

from dagster_sutro import load_sutro_results, sutro_results

# The job the schedule fetches; the demo and `make ui` set it to the emulator's seeded job.
DEMO_JOB_ID = os.environ.get("SUTRO_DEMO_JOB_ID", "job-demo-0001")


@dg.asset(deps=[sutro_results], kinds={"parquet"})
def sutro_output_stats(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Row count and output length statistics of the latest downloaded Sutro results."""
    # Reads only the outputs column of the file that sutro_results last recorded in dagster/uri.
    table = load_sutro_results(context, asset=sutro_results, columns=["outputs"])
    lengths = pc.utf8_length(table["outputs"])
    summary = {
        "rows": table.num_rows,
        "output_chars_min": pc.min(lengths).as_py() if table.num_rows else 0,
        "output_chars_mean": round(pc.mean(lengths).as_py() or 0.0, 1),
        "output_chars_max": pc.max(lengths).as_py() if table.num_rows else 0,
    }
    context.log.info(f"Output length statistics of the latest Sutro results: {summary}")
    return dg.MaterializeResult(metadata={"dagster/row_count": table.num_rows, **summary})


sutro_results_job = dg.define_asset_job("sutro_results_job", selection=[sutro_results])

daily_sutro_results = dg.ScheduleDefinition(
    name="daily_sutro_results",
    job=sutro_results_job,
    cron_schedule="0 6 * * *",
    run_config=dg.RunConfig({sutro_results.node_def.name: {"job_id": DEMO_JOB_ID}}),
)
