"""Sutro API faults: retried where a retry helps, otherwise a clear error, also through the asset.

The emulator serves every request over real sockets. Retries keep their real logic, with short
delays.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dagster_sutro import (
    SutroApiError,
    SutroAuthenticationError,
    SutroClient,
    SutroJobNotReadyError,
    SutroResource,
    SutroResultsConfig,
    build_sutro_results_asset,
    metadata as md,
)
from dagster_sutro.testing import SutroEmulator


@pytest.fixture(autouse=True)
def short_api_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_BASE_SECONDS", 0.01)
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_MAX_SECONDS", 0.02)


@pytest.fixture
def client(emulator: SutroEmulator) -> SutroClient:
    return SutroClient(emulator.api_url, emulator.api_key, max_retries=2, request_timeout_seconds=5)


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def asset(destination: Path) -> dg.AssetsDefinition:
    return build_sutro_results_asset(destination=f"{destination}/")


def _materialize(
    asset: dg.AssetsDefinition, sutro: SutroResource, job_id: str
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
        raise_on_error=False,
    )


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    return error.message


def _results_url_requests(emulator: SutroEmulator, job_id: str) -> int:
    path = f"/v1/jobs/{job_id}/results-url"
    return sum(1 for request in emulator.api_requests if request.path == path)


def _assert_nothing_written(emulator: SutroEmulator, destination: Path) -> None:
    assert emulator.storage_requests == []
    assert not destination.exists() or list(destination.iterdir()) == []


# The client


def test_api_key_wins_over_netrc_entry(
    emulator: SutroEmulator, client: SutroClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    assert client.try_authentication() is True

    [request] = emulator.api_requests
    assert request.headers["Authorization"] == f"Key {emulator.api_key}"


def test_html_page_with_status_200_is_rejected(
    emulator: SutroEmulator, client: SutroClient
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.api_not_json(path_contains="results-url")

    with pytest.raises(SutroApiError) as raised:
        client.get_results_download_url(job_id)

    message = str(raised.value)
    assert raised.value.status_code == 200
    assert "not a JSON object" in message
    assert "an HTML page" in message
    assert "SUTRO_API_URL" in message
    assert _results_url_requests(emulator, job_id) == 1


def test_html_gateway_page_is_retried(emulator: SutroEmulator, client: SutroClient) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.api_html_error(status=502, path_contains="results-url", times=1)

    urls = client.get_results_download_url(job_id)

    assert urls.job_id == job_id
    assert _results_url_requests(emulator, job_id) == 2


def test_persistent_html_gateway_pages_described(
    emulator: SutroEmulator, client: SutroClient
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.api_html_error(status=502, path_contains="results-url", times=None)

    with pytest.raises(SutroApiError) as raised:
        client.get_results_download_url(job_id)

    assert raised.value.status_code == 502
    assert "failed with 502" in str(raised.value)
    assert "an HTML page" in str(raised.value)
    assert _results_url_requests(emulator, job_id) == client.max_retries + 1


def test_job_status_without_state_names_field(emulator: SutroEmulator, client: SutroClient) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.api_malformed_json(path_contains="job-status")

    with pytest.raises(SutroApiError, match=r"expected job_status\.<job_id>"):
        client.get_job_status(job_id)


def test_retry_after_is_capped(
    emulator: SutroEmulator, client: SutroClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr("dagster_sutro.client.time.sleep", delays.append)
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([429], server="api", retry_after=3600)

    client.get_results_download_url(job_id)

    assert delays == [120.0]


def test_rate_limit_that_persists_fails_with_hint(
    emulator: SutroEmulator, client: SutroClient
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([429] * 10, server="api", retry_after=0)

    with pytest.raises(SutroApiError) as raised:
        client.get_results_download_url(job_id)

    assert raised.value.status_code == 429
    assert "rate limiting" in str(raised.value)
    assert _results_url_requests(emulator, job_id) == client.max_retries + 1


def test_forbidden_response_points_at_api_key(emulator: SutroEmulator, client: SutroClient) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([403], server="api", path_contains="results-url")

    with pytest.raises(SutroAuthenticationError) as raised:
        client.get_results_download_url(job_id)

    assert raised.value.status_code == 403
    assert "SUTRO_API_KEY" in str(raised.value)
    assert emulator.api_key not in str(raised.value)
    assert _results_url_requests(emulator, job_id) == 1


def test_conflict_for_succeeded_job_explained(emulator: SutroEmulator, client: SutroClient) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([409], server="api", path_contains="results-url")

    with pytest.raises(SutroJobNotReadyError) as raised:
        client.get_results_download_url(job_id)

    message = str(raised.value)
    assert raised.value.job_status == "SUCCEEDED"
    assert "job-status now reports SUCCEEDED" in message
    assert "Run again" in message
    assert "not SUCCEEDED" not in message


def test_conflict_reports_failed_state_lookup(emulator: SutroEmulator, client: SutroClient) -> None:
    job_id = emulator.add_job(num_rows=5, status="RUNNING")
    emulator.faults.status_sequence([500] * 10, server="api", path_contains="job-status")

    with pytest.raises(SutroJobNotReadyError) as raised:
        client.get_results_download_url(job_id)

    message = str(raised.value)
    assert raised.value.job_status == "UNKNOWN"
    assert "returned 409" in message
    assert "reading its state failed" in message
    assert "failed with 500" in message


# Through the asset


def test_results_url_524_retried_in_run(
    emulator: SutroEmulator, sutro: SutroResource, asset: dg.AssetsDefinition
) -> None:
    job_id = emulator.add_job(num_rows=20)
    emulator.faults.status_sequence([524, 524], server="api", path_contains="results-url")

    result = _materialize(asset, sutro, job_id)

    assert result.success
    assert len(result.asset_materializations_for_node(asset.node_def.name)) == 1
    assert _results_url_requests(emulator, job_id) == 3


def test_persistent_524_fails_run(
    emulator: SutroEmulator, sutro: SutroResource, asset: dg.AssetsDefinition, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    emulator.faults.status_sequence([524] * 10, server="api", path_contains="results-url")

    result = _materialize(asset, sutro, job_id)

    assert not result.success
    message = _failure_message(result)
    assert "failed with 524" in message
    assert "still being built" in message
    assert job_id in message
    assert _results_url_requests(emulator, job_id) == sutro.max_retries + 1
    _assert_nothing_written(emulator, destination)


def test_html_response_fails_run(
    emulator: SutroEmulator, sutro: SutroResource, asset: dg.AssetsDefinition, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    emulator.faults.api_not_json(path_contains="results-url", times=None)

    result = _materialize(asset, sutro, job_id)

    assert not result.success
    message = _failure_message(result)
    assert "an HTML page" in message
    assert "SUTRO_API_URL" in message
    _assert_nothing_written(emulator, destination)


def test_response_without_fields_fails_run(
    emulator: SutroEmulator, sutro: SutroResource, asset: dg.AssetsDefinition, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    emulator.faults.api_malformed_json(path_contains="results-url", times=None)

    result = _materialize(asset, sutro, job_id)

    assert not result.success
    message = _failure_message(result)
    assert "missing or has an invalid field" in message
    assert "urls.get/head" in message
    _assert_nothing_written(emulator, destination)


def test_rate_limited_run_waits_for_retry_after(
    emulator: SutroEmulator, sutro: SutroResource, asset: dg.AssetsDefinition
) -> None:
    job_id = emulator.add_job(num_rows=20)
    emulator.faults.status_sequence([429], server="api", path_contains="results-url", retry_after=1)

    result = _materialize(asset, sutro, job_id)

    assert result.success
    calls = [r for r in emulator.api_requests if r.path == f"/v1/jobs/{job_id}/results-url"]
    assert [call.status for call in calls] == [429, 200]
    assert calls[1].time - calls[0].time >= 1.0


@pytest.mark.parametrize("status", ["QUEUED", "RUNNING", "CANCELLED", "FAILED"])
def test_conflict_fails_run_with_job_state(
    emulator: SutroEmulator,
    sutro: SutroResource,
    asset: dg.AssetsDefinition,
    destination: Path,
    status: str,
) -> None:
    job_id = emulator.add_job(num_rows=20, status=status)
    if status == "FAILED":
        emulator.set_status(job_id, "FAILED", failure_reason="the model ran out of memory")

    result = _materialize(asset, sutro, job_id)

    assert not result.success
    message = _failure_message(result)
    assert f"Sutro job {job_id} is {status}, not SUCCEEDED" in message
    if status == "FAILED":
        assert "the model ran out of memory" in message
    [failure] = result.get_step_failure_events()
    user_data = failure.step_failure_data.user_failure_data
    assert user_data is not None
    assert user_data.metadata[f"{md.NAMESPACE}/job_status"].value == status
    _assert_nothing_written(emulator, destination)


def test_wrong_key_fails_run_pointing_at_api_key(
    emulator: SutroEmulator, asset: dg.AssetsDefinition, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    wrong_key = "sk_wrong_" + "0123456789abcdef"
    sutro = SutroResource(api_key=wrong_key, api_url=emulator.api_url, max_retries=2)

    result = _materialize(asset, sutro, job_id)

    assert not result.success
    message = _failure_message(result)
    assert "rejected the API key with 401" in message
    assert "SUTRO_API_KEY" in message
    assert wrong_key not in message
    assert _results_url_requests(emulator, job_id) == 1
    _assert_nothing_written(emulator, destination)


def test_forbidden_fails_run_pointing_at_api_key(
    emulator: SutroEmulator, sutro: SutroResource, asset: dg.AssetsDefinition, destination: Path
) -> None:
    job_id = emulator.add_job(num_rows=20)
    emulator.faults.status_sequence([403], server="api", path_contains="results-url")

    result = _materialize(asset, sutro, job_id)

    assert not result.success
    message = _failure_message(result)
    assert "rejected the API key with 403" in message
    assert "SUTRO_API_KEY" in message
    assert emulator.api_key not in message
    _assert_nothing_written(emulator, destination)
