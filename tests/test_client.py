"""The Sutro API client against the emulator over real sockets."""

from __future__ import annotations

import pytest

from dagster_sutro import (
    InvalidInputError,
    SutroApiError,
    SutroAuthenticationError,
    SutroClient,
    SutroJobNotReadyError,
)
from dagster_sutro.client import normalize_api_url
from dagster_sutro.testing import SutroEmulator


@pytest.fixture
def client(emulator: SutroEmulator, monkeypatch: pytest.MonkeyPatch) -> SutroClient:
    # Backoff sleeps are cut short so retry tests stay fast; the retry count is unchanged.
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_BASE_SECONDS", 0.01)
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_MAX_SECONDS", 0.02)
    return SutroClient(emulator.api_url, emulator.api_key, max_retries=3, request_timeout_seconds=5)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://acme.sutro-deploy.example", "https://acme.sutro-deploy.example/v1"),
        ("https://acme.sutro-deploy.example/", "https://acme.sutro-deploy.example/v1"),
        ("https://acme.sutro-deploy.example/v1", "https://acme.sutro-deploy.example/v1"),
        ("https://acme.sutro-deploy.example/v1/", "https://acme.sutro-deploy.example/v1"),
        ("https://ACME.example:8443", "https://acme.example:8443/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://localhost:8000/v1", "http://localhost:8000/v1"),
        ("http://[::1]:8000", "http://[::1]:8000/v1"),
    ],
)
def test_api_url_normalized(given: str, expected: str) -> None:
    assert normalize_api_url(given) == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "empty"),
        ("acme.sutro-deploy.example", "invalid"),
        ("http://acme.sutro-deploy.example", "plain http"),
        ("https://acme.example/api", "path"),
        ("https://acme.example/v1?x=1", "query"),
        ("https://user:pw@acme.example", "credentials"),
        ("https://api.sutro.sh", "retired"),
        ("https://serve.sutro.sh/v1", "retired"),
        ("ftp://acme.example", "invalid"),
    ],
)
def test_api_url_rejected(given: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        normalize_api_url(given)


def test_auth_header_and_parameters(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=10)

    urls = client.get_results_download_url(
        job_id, include_inputs=True, include_cumulative_logprobs=False, expires_in_seconds=120
    )

    [request] = emulator.api_requests
    assert request.headers["Authorization"] == f"Key {emulator.api_key}"
    assert request.headers["User-Agent"].startswith("dagster-sutro/")
    assert request.path == f"/v1/jobs/{job_id}/results-url"
    assert request.query == {
        "format": "parquet",
        "include_inputs": "true",
        "include_cumulative_logprobs": "false",
        "expires_in_seconds": "120",
    }
    assert urls.job_id == job_id
    assert urls.include_inputs is True
    assert urls.expires_in_seconds == 120
    assert urls.artifact.filename == f"sutro-results~{job_id}~inputs=1~logprobs=0.parquet"
    assert (
        urls.artifact.size_bytes
        == emulator.artifact_path(job_id, include_inputs=True).stat().st_size
    )


def test_record_repr_hides_signature(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=10)

    urls = client.get_results_download_url(job_id)

    assert "X-Amz-Signature" in urls.get_url
    assert "X-Amz" not in repr(urls)
    assert "X-Amz" not in str(urls)
    assert urls.artifact.key in repr(urls)


def test_job_status_and_details(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=10, status="RUNNING")

    assert client.get_job_status(job_id) == "RUNNING"
    assert client.get_job(job_id)["job_id"] == job_id
    assert client.try_authentication() is True


def test_list_jobs_pages(client: SutroClient, emulator: SutroEmulator) -> None:
    ids = [emulator.add_job(num_rows=2) for _ in range(3)]

    first, cursor = client.list_jobs(limit=2)
    second, last = client.list_jobs(limit=2, cursor=cursor)

    assert [job["job_id"] for job in first + second] == list(reversed(ids))
    assert cursor is not None
    assert last is None


def test_wrong_key_raises_authentication_error(emulator: SutroEmulator) -> None:
    client = SutroClient(emulator.api_url, "sk_wrong_key_0000", max_retries=0)

    with pytest.raises(SutroAuthenticationError, match="SUTRO_API_KEY") as raised:
        client.try_authentication()

    assert raised.value.status_code == 401
    assert "sk_wrong_key_0000" not in str(raised.value)


def test_conflict_carries_job_state(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=10, status="FAILED")
    emulator.set_status(job_id, "FAILED", failure_reason="model crashed")

    with pytest.raises(SutroJobNotReadyError) as raised:
        client.get_results_download_url(job_id)

    assert raised.value.job_status == "FAILED"
    assert raised.value.status_code == 409
    assert "model crashed" in str(raised.value)
    assert [r.path for r in emulator.api_requests] == [
        f"/v1/jobs/{job_id}/results-url",
        f"/v1/job-status/{job_id}",
    ]


def test_unknown_job_raises_not_found(client: SutroClient, emulator: SutroEmulator) -> None:
    with pytest.raises(SutroApiError) as raised:
        client.get_results_download_url("job-does-not-exist")

    assert raised.value.status_code == 404
    assert raised.value.detail
    assert raised.value.request_id


@pytest.mark.parametrize("status", [500, 502, 503, 504, 524])
def test_retryable_status_then_success(
    client: SutroClient, emulator: SutroEmulator, status: int
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([status, status], server="api")

    urls = client.get_results_download_url(job_id)

    assert urls.job_id == job_id
    assert len(emulator.api_requests) == 3


def test_retries_are_bounded(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([503] * 10, server="api")

    with pytest.raises(SutroApiError) as raised:
        client.get_results_download_url(job_id)

    assert raised.value.status_code == 503
    assert len(emulator.api_requests) == client.max_retries + 1


def test_rate_limit_honours_retry_after(
    client: SutroClient, emulator: SutroEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr("dagster_sutro.client.time.sleep", delays.append)
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([429], server="api", retry_after=7)

    client.get_results_download_url(job_id)

    assert delays == [7.0]


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_client_errors_are_not_retried(
    client: SutroClient, emulator: SutroEmulator, status: int
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.status_sequence([status], server="api")

    with pytest.raises(SutroApiError) as raised:
        client.get_results_download_url(job_id)

    assert raised.value.status_code == status
    assert len(emulator.api_requests) == 1


def test_html_error_page_is_described(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.api_html_error(status=403)

    with pytest.raises(SutroAuthenticationError, match="HTML page"):
        client.get_results_download_url(job_id)


def test_malformed_answer_names_missing_field(client: SutroClient, emulator: SutroEmulator) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.faults.api_malformed_json()

    with pytest.raises(SutroApiError, match="missing or has an invalid field"):
        client.get_results_download_url(job_id)


def test_connection_refused_is_retried_then_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_BASE_SECONDS", 0.01)
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_MAX_SECONDS", 0.02)
    client = SutroClient("http://127.0.0.1:9", "sk_test_key_123456", max_retries=2)

    with pytest.raises(SutroApiError, match="failed after 3 attempts"):
        client.try_authentication()


@pytest.mark.parametrize("job_id", ["", "a/b", "job 1", "job\n1", "job\x00", ".", "..", "j" * 257])
def test_invalid_job_id_sends_nothing(
    client: SutroClient, emulator: SutroEmulator, job_id: str
) -> None:
    with pytest.raises(InvalidInputError, match="Job id"):
        client.get_results_download_url(job_id)

    assert emulator.api_requests == []


@pytest.mark.parametrize("expires", [0, -1, 604_801, True])
def test_invalid_expiry_sends_nothing(
    client: SutroClient, emulator: SutroEmulator, expires: int
) -> None:
    with pytest.raises(InvalidInputError, match="expires_in_seconds"):
        client.get_results_download_url("job-1", expires_in_seconds=expires)

    assert emulator.api_requests == []


@pytest.mark.parametrize(
    "api_key",
    ["sk_canary_part1\nsk_canary_part2", "sk_canary\tkey_0123", "sk_canary_key_0123\u20ac", "  "],
)
def test_invalid_api_key_rejected_unechoed(emulator: SutroEmulator, api_key: str) -> None:
    with pytest.raises(InvalidInputError, match="API key") as raised:
        SutroClient(emulator.api_url, api_key)

    assert "canary" not in str(raised.value)
    assert emulator.api_requests == []


def test_resource_repr_hides_key(emulator: SutroEmulator) -> None:
    from dagster_sutro import SutroResource

    resource = SutroResource(api_key="sk_canary_resource_0123", api_url=emulator.api_url)

    assert "sk_canary_resource_0123" not in repr(resource)
    assert "sk_canary_resource_0123" not in str(resource)
