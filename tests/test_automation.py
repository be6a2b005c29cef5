"""Job assets under Declarative Automation: the observed ETag decides when the results download.

Each scenario follows the same loop as the Dagster daemon: observe the artifact, evaluate the
automation conditions, materialize whatever was requested, then evaluate once more with nothing
new, so that a requested-but-never-run asset cannot suppress the next request.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_sutro import SutroResource, build_sutro_job_assets, metadata as md
from dagster_sutro.automation import JOB_STATUS_KEY, SutroJobResultsConfig
from dagster_sutro.testing import SutroEmulator

pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning")

OBSERVE_JOB = "observe_sutro_artifact"


class AutomationHarness:
    """Observations, automation ticks and requested materializations on one instance."""

    def __init__(
        self,
        assets: list[dg.AssetsDefinition],
        sutro: SutroResource,
        instance: dg.DagsterInstance,
    ) -> None:
        self.artifact, self.results = assets
        self.sutro = sutro
        self.instance = instance
        self.defs = dg.Definitions(
            assets=assets,
            resources={"sutro": sutro},
            jobs=[dg.define_asset_job(OBSERVE_JOB, selection=[self.artifact.key])],
        )
        self.cursor: Any = None

    def observe(self) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(OBSERVE_JOB).execute_in_process(
            instance=self.instance, raise_on_error=False
        )

    def tick(self) -> int:
        """Evaluate the conditions; run the requested download, then one idle tick."""
        requested = self._evaluate()
        if requested:
            result = dg.materialize(
                [self.artifact, self.results],
                selection=[self.results.key],
                resources={"sutro": self.sutro},
                instance=self.instance,
            )
            assert result.success
            assert self._evaluate() == 0
        return requested

    def _evaluate(self) -> int:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return result.get_num_requested(self.results.key)

    def observations(self) -> list[dg.AssetObservation]:
        records = self.instance.fetch_observations(self.artifact.key, limit=100).records
        return [record.asset_observation for record in records if record.asset_observation]

    def latest_data_version(self) -> str | None:
        event = self.instance.get_latest_materialization_event(self.results.key)
        return None if event is None else event.tags.get("dagster/data_version")


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def _harness(
    job_id: str, sutro: SutroResource, instance: dg.DagsterInstance, tmp_path: Path
) -> AutomationHarness:
    assets = build_sutro_job_assets(
        job_id=job_id, destination=f"{tmp_path / 'results'}/", retry_policy=None
    )
    return AutomationHarness(assets, sutro, instance)


def test_etag_changes_drive_downloads(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=40)
    harness = _harness(job_id, sutro, instance, tmp_path)
    assert harness.tick() == 0

    assert harness.observe().success
    first = harness.tick()
    gets_after_first = sum(1 for r in emulator.storage_requests if r.method == "GET")
    assert harness.observe().success
    unchanged = harness.tick()
    emulator.replace_artifact(job_id)
    assert harness.observe().success
    changed = harness.tick()

    assert first == 1
    assert unchanged == 0
    assert changed == 1
    assert harness.latest_data_version() == emulator.artifact_etag(job_id)
    records = instance.fetch_materializations(harness.results.key, limit=10).records
    assert len(records) == 2
    assert gets_after_first > 0


def test_unchanged_observation_downloads_nothing(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=40)
    harness = _harness(job_id, sutro, instance, tmp_path)
    harness.tick()
    harness.observe()
    assert harness.tick() == 1
    gets = sum(1 for r in emulator.storage_requests if r.method == "GET")

    for _ in range(3):
        assert harness.observe().success
        assert harness.tick() == 0

    assert sum(1 for r in emulator.storage_requests if r.method == "GET") == gets
    assert len(harness.observations()) == 4


def test_running_job_requests_nothing_until_succeeded(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=40, status="RUNNING")
    harness = _harness(job_id, sutro, instance, tmp_path)
    harness.tick()

    running = harness.observe()
    requested_while_running = harness.tick()
    observations_while_running = harness.observations()
    emulator.set_status(job_id, "SUCCEEDED")
    harness.observe()
    requested_once_succeeded = harness.tick()

    assert running.success
    assert observations_while_running == []
    assert requested_while_running == 0
    assert requested_once_succeeded == 1
    assert harness.latest_data_version() == emulator.artifact_etag(job_id)


def test_observation_metadata_has_etag_and_no_url(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=10)
    harness = _harness(job_id, sutro, instance, tmp_path)

    result = harness.observe()

    assert result.success
    [observation] = harness.observations()
    metadata = observation.metadata
    assert metadata[md.ETAG_KEY].value == emulator.artifact_etag(job_id)
    assert metadata[md.JOB_ID_KEY].value == job_id
    assert metadata[JOB_STATUS_KEY].value == "SUCCEEDED"
    assert metadata[md.SIZE_BYTES_KEY].value == emulator.artifact_path(job_id).stat().st_size
    assert metadata[md.ARTIFACT_KEY_KEY].value == emulator.artifact_key(job_id)
    assert observation.tags["dagster/data_version"] == emulator.artifact_etag(job_id)
    assert "X-Amz-Signature" not in repr(metadata)


def test_failed_job_fails_observation(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=10, status="RUNNING")
    emulator.set_status(job_id, "FAILED", failure_reason="model crashed")
    harness = _harness(job_id, sutro, instance, tmp_path)
    harness.tick()

    result = harness.observe()

    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert message is not None
    assert "FAILED" in (message.description or "")
    assert "model crashed" in (message.description or "")
    assert harness.observations() == []
    assert harness.tick() == 0


def test_manual_download_of_running_job_fails(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=10, status="RUNNING")
    harness = _harness(job_id, sutro, instance, tmp_path)

    result = dg.materialize(
        [harness.artifact, harness.results],
        selection=[harness.results.key],
        resources={"sutro": sutro},
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    description = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert description is not None
    assert "RUNNING" in (description.description or "")
    assert not any(r.method == "GET" for r in emulator.storage_requests)


def test_force_config_downloads_again(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=10)
    harness = _harness(job_id, sutro, instance, tmp_path)
    selection = [harness.results.key]
    assets = [harness.artifact, harness.results]
    resources = {"sutro": sutro}
    dg.materialize(assets, selection=selection, resources=resources, instance=instance)

    skipped = dg.materialize(assets, selection=selection, resources=resources, instance=instance)
    forced = dg.materialize(
        assets,
        selection=selection,
        resources=resources,
        instance=instance,
        run_config=dg.RunConfig({harness.results.node_def.name: SutroJobResultsConfig(force=True)}),
    )

    assert skipped.asset_materializations_for_node(harness.results.node_def.name) == []
    assert len(forced.asset_materializations_for_node(harness.results.node_def.name)) == 1


def test_observation_runs_on_cron(
    emulator: SutroEmulator, sutro: SutroResource, instance, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=10)
    harness = _harness(job_id, sutro, instance, tmp_path)
    start = datetime.datetime(2026, 1, 1, 0, 1, tzinfo=datetime.timezone.utc)
    cursor = None
    requested = []
    for minutes in (0, 5, 10, 15, 20):
        result = dg.evaluate_automation_conditions(
            defs=harness.defs,
            instance=instance,
            cursor=cursor,
            evaluation_time=start + datetime.timedelta(minutes=minutes),
        )
        cursor = result.cursor
        requested.append(
            (
                result.get_num_requested(harness.artifact.key),
                result.get_num_requested(harness.results.key),
            )
        )

    # The cron tick at 00:15 falls between the evaluations at 00:11 and 00:16.
    assert requested == [(0, 0), (0, 0), (0, 0), (1, 0), (0, 0)]


def test_keys_conditions_and_overrides(tmp_path: Path) -> None:
    artifact, results = build_sutro_job_assets(
        job_id="job-5f0c.x", destination=f"{tmp_path}/", key_prefix=("team", "sutro")
    )
    custom = build_sutro_job_assets(
        job_id="job-5f0c.x",
        destination=f"{tmp_path}/",
        name="reviews",
        observe_automation_condition=dg.AutomationCondition.on_cron("0 * * * *"),
        automation_condition=dg.AutomationCondition.on_missing(),
        pool="sutro_downloads",
    )
    manual_artifact, _ = build_sutro_job_assets(
        job_id="job-1", destination=f"{tmp_path}/", observe_cron=None
    )

    assert artifact.key == dg.AssetKey(["team", "sutro", "job_5f0c_x", "artifact"])
    assert results.key == dg.AssetKey(["team", "sutro", "job_5f0c_x", "results"])
    assert results.asset_deps[results.key] == {artifact.key}
    spec = results.specs_by_key[results.key]
    assert spec.automation_condition == dg.AutomationCondition.eager()
    artifact_spec = artifact.specs_by_key[artifact.key]
    assert artifact_spec.automation_condition == dg.AutomationCondition.on_cron("*/15 * * * *")
    custom_artifact, custom_results = custom
    assert custom_results.key == dg.AssetKey(["sutro", "reviews", "results"])
    assert custom_results.specs_by_key[custom_results.key].automation_condition == (
        dg.AutomationCondition.on_missing()
    )
    assert custom_artifact.specs_by_key[custom_artifact.key].automation_condition == (
        dg.AutomationCondition.on_cron("0 * * * *")
    )
    assert custom_results.op.pool == "sutro_downloads"
    assert manual_artifact.specs_by_key[manual_artifact.key].automation_condition is None


def test_invalid_job_id_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="job/1"):
        build_sutro_job_assets(job_id="job/1", destination=f"{tmp_path}/")
