"""The example project loads and wires every kind of Sutro definition."""

from __future__ import annotations

import dagster as dg
import pytest


@pytest.fixture
def defs(monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    monkeypatch.setenv("SUTRO_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SUTRO_API_KEY", "sk_example_project_key")
    from sutro_example.definitions import defs as load_defs

    return load_defs()


def test_example_assets_present(defs: dg.Definitions) -> None:
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}

    assert "sutro_results" in keys
    assert "sutro_output_stats" in keys
    assert "sutro/job_demo_0001/artifact" in keys
    assert "sutro/job_demo_0001/results" in keys
    assert "sutro_job_results" in keys


def test_example_sensors_and_schedule(defs: dg.Definitions) -> None:
    results_sensor = defs.resolve_sensor_def("sutro_results_sensor")
    new_jobs_sensor = defs.resolve_sensor_def("sutro_job_results__new_jobs_sensor")
    schedule = defs.resolve_schedule_def("daily_sutro_results")

    assert results_sensor.name == "sutro_results_sensor"
    assert new_jobs_sensor.name == "sutro_job_results__new_jobs_sensor"
    assert schedule.cron_schedule == "0 6 * * *"
    assert "job_id" in str(schedule.evaluate_tick(dg.build_schedule_context()).run_requests)


def test_output_stats_read_downloaded_results(emulator, sutro, tmp_path) -> None:
    from sutro_example.defs.results import sutro_output_stats

    from dagster_sutro import SutroResultsConfig, sutro_results

    job_id = emulator.add_job(num_rows=40)
    instance = dg.DagsterInstance.ephemeral()
    config = SutroResultsConfig(job_id=job_id, destination=f"{tmp_path}/")

    result = dg.materialize(
        [sutro_results, sutro_output_stats],
        resources={"sutro": sutro},
        instance=instance,
        run_config=dg.RunConfig({"sutro_results": config}),
    )

    assert result.success
    [stats] = result.asset_materializations_for_node("sutro_output_stats")
    assert stats.metadata["dagster/row_count"].value == 40
    assert stats.metadata["output_chars_max"].value > 0
