"""Fault injection of the emulator, observed by plain HTTP clients over real sockets."""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from dagster_sutro.testing import SutroEmulator


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[SutroEmulator]:
    with SutroEmulator(root_dir=tmp_path / "emulator") as emulator:
        yield emulator


def api_get(emu: SutroEmulator, path: str, **params: object) -> requests.Response:
    return requests.get(
        f"{emu.api_url}{path}",
        params=params,
        headers={"Authorization": f"Key {emu.api_key}"},
        timeout=30,
    )


def results_url(emu: SutroEmulator, job_id: str, **params: object) -> dict:
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url", **params)
    assert response.status_code == 200, response.text
    return response.json()


def urls_for(emu: SutroEmulator, job_id: str, **params: object) -> tuple[str, str]:
    urls = results_url(emu, job_id, **params)["urls"]
    return urls["get"], urls["head"]


def open_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
    return connection, connection.getresponse()


def read_all(response: http.client.HTTPResponse) -> tuple[bytes, BaseException | None]:
    """Read a body to the end, returning what arrived and the error that ended it, if any."""
    received = bytearray()
    try:
        while True:
            chunk = response.read1(65536)
            if not chunk:
                break
            received += chunk
    except (OSError, http.client.HTTPException) as error:
        return bytes(received), error
    return bytes(received), None


def error_code(response: requests.Response) -> str:
    return response.text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def sized_table(num_rows: int, output_bytes: int) -> pa.Table:
    return pa.table(
        {
            "row_id": list(range(num_rows)),
            "outputs": [f'{{"content": "{"x" * output_bytes}{row}"}}' for row in range(num_rows)],
        }
    )


@pytest.fixture
def job(emu: SutroEmulator) -> tuple[str, bytes]:
    """A job whose artifact is about 200 KB, with its bytes."""
    job_id = emu.add_job(target_size_bytes=200_000, compression="none")
    return job_id, emu.artifact_path(job_id).read_bytes()


# Body faults


def test_truncate_body_closes_after_bytes(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    rule = emu.faults.truncate_body(1000, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    connection, response = open_get(get_url)
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(data))
    body = bytearray()
    with pytest.raises(http.client.IncompleteRead) as raised:
        body += response.read()
    assert raised.value.partial == data[:1000]
    connection.close()
    assert not rule.active
    assert rule.applied == 1
    assert requests.get(get_url, timeout=30).content == data


def test_truncate_body_fails_requests(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.truncate_body(len(data) // 2, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(get_url, timeout=30)


def test_truncate_body_within_range(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.truncate_body(10, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    connection, response = open_get(get_url, {"Range": "bytes=100-199"})
    assert response.status == 206
    assert response.headers["Content-Length"] == "100"
    with pytest.raises(http.client.IncompleteRead) as raised:
        response.read()
    assert raised.value.partial == data[100:110]
    connection.close()
    record = emu.storage_requests[-1]
    assert record.status == 206
    assert record.body_bytes == 10


def test_reset_connection_after_bytes(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.reset_connection(5000, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    connection, response = open_get(get_url)
    assert response.status == 200
    received, error = read_all(response)
    connection.close()
    assert isinstance(error, ConnectionResetError)
    assert len(received) <= 5000
    assert received == data[: len(received)]
    assert requests.get(get_url, timeout=30).content == data


def test_reset_connection_fails_requests(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, _ = job
    emu.faults.reset_connection(0, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(get_url, timeout=30)


def test_stall_body_pauses_then_continues(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.stall_body(1.0, after_bytes=2048, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    started = time.monotonic()
    response = requests.get(get_url, timeout=30)
    elapsed = time.monotonic() - started
    assert response.content == data
    assert elapsed >= 0.9


def test_stall_body_trips_read_timeout(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.stall_body(3.0, after_bytes=1024, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    connection, response = open_get(get_url, timeout=0.5)
    received, error = read_all(response)
    connection.close()
    assert isinstance(error, TimeoutError)
    assert received == data[: len(received)]
    assert len(received) == 1024
    # The client left during the stall, and the server keeps serving others.
    assert requests.get(get_url, timeout=30).content == data


def test_trickle_sends_slowly(emu: SutroEmulator) -> None:
    job_id = emu.add_job(table=sized_table(10, 1000), compression="none")
    data = emu.artifact_path(job_id).read_bytes()
    rule = emu.faults.trickle(10_000, job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    started = time.monotonic()
    response = requests.get(get_url, timeout=30)
    elapsed = time.monotonic() - started
    assert response.content == data
    # The first slice (a tenth of a second's worth) goes out at once, and the rest is paced.
    assert elapsed >= (len(data) - 1000) / 10_000 * 0.9
    assert rule.active
    assert rule.applied == 1


def test_bandwidth_cap(tmp_path: Path) -> None:
    with SutroEmulator(root_dir=tmp_path, storage_bytes_per_second=20_000) as emulator:
        job_id = emulator.add_job(table=sized_table(20, 1000), compression="none")
        data = emulator.artifact_path(job_id).read_bytes()
        get_url, _ = urls_for(emulator, job_id)
        started = time.monotonic()
        response = requests.get(get_url, timeout=30)
        elapsed = time.monotonic() - started
        assert response.content == data
        assert elapsed >= (len(data) - 2000) / 20_000 * 0.9

        emulator.storage_bytes_per_second = None
        assert requests.get(get_url, timeout=30).content == data
        with pytest.raises(ValueError):
            emulator.storage_bytes_per_second = 0


def test_body_fault_filters(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, _ = job
    other_id = emu.add_job(num_rows=20)
    emu.faults.truncate_body(10, job_id=job_id)
    other_get, _ = urls_for(emu, other_id)
    get_url, head_url = urls_for(emu, job_id)
    assert requests.get(other_get, timeout=30).content == emu.artifact_path(other_id).read_bytes()
    assert requests.head(head_url, timeout=30).status_code == 200
    # HEAD and the other job left the rule unused.
    assert len(emu.faults.rules) == 1
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(get_url, timeout=30)
    assert emu.faults.rules == []


def test_body_fault_times(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.truncate_body(10, job_id=job_id, times=2)
    get_url, _ = urls_for(emu, job_id)
    for _ in range(2):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(get_url, timeout=30)
    assert requests.get(get_url, timeout=30).content == data


def test_body_fault_until_removed(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    rule = emu.faults.truncate_body(10, times=None)
    get_url, _ = urls_for(emu, job_id)
    for _ in range(3):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(get_url, timeout=30)
    assert rule.applied == 3
    rule.remove()
    rule.remove()
    assert requests.get(get_url, timeout=30).content == data


def test_faults_clear(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.truncate_body(10, times=None)
    emu.faults.ignore_range()
    emu.faults.status_sequence([503])
    assert len(emu.faults.rules) == 3
    emu.faults.clear()
    assert emu.faults.rules == []
    get_url, _ = urls_for(emu, job_id)
    assert requests.get(get_url, timeout=30).content == data


def test_fault_arguments_validated(emu: SutroEmulator) -> None:
    with pytest.raises(ValueError):
        emu.faults.truncate_body(-1)
    with pytest.raises(ValueError):
        emu.faults.trickle(0)
    with pytest.raises(ValueError):
        emu.faults.truncate_body(10, times=0)
    with pytest.raises(ValueError):
        emu.faults.status_sequence([])
    with pytest.raises(ValueError):
        emu.faults.status_sequence([200])
    with pytest.raises(ValueError):
        emu.faults.url_lifetime(0)
    with pytest.raises(ValueError):
        emu.faults.truncated_parquet("job-x", missing_bytes=0)


# Range faults


def test_ignore_range(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    rule = emu.faults.ignore_range(job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    for _ in range(2):
        response = requests.get(get_url, headers={"Range": "bytes=100-199"}, timeout=30)
        assert response.status_code == 200
        assert "Content-Range" not in response.headers
        assert response.content == data
    # Requests without Range do not use the rule up.
    assert requests.get(get_url, timeout=30).status_code == 200
    assert rule.applied == 2


def test_wrong_content_range(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    size = len(data)
    emu.faults.wrong_content_range(job_id=job_id)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 0-999/{size}"
    assert response.content == data[0:1000]
    normal = requests.get(get_url, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert normal.headers["Content-Range"] == f"bytes 1000-1999/{size}"
    assert normal.content == data[1000:2000]


def test_wrong_content_range_at_start(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.wrong_content_range(job_id=job_id, times=2)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, headers={"Range": "bytes=0-99"}, timeout=30)
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert response.content == data[100:200]
    whole = requests.get(get_url, headers={"Range": "bytes=0-"}, timeout=30)
    assert whole.status_code == 206
    assert whole.headers["Content-Range"] != f"bytes 0-{len(data) - 1}/{len(data)}"


# Status sequences


def test_storage_status_sequence(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.status_sequence([503, 500], retry_after=1)
    get_url, head_url = urls_for(emu, job_id)
    first = requests.head(head_url, timeout=30)
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "1"
    second = requests.get(get_url, timeout=30)
    assert second.status_code == 500
    assert second.headers["Content-Type"] == "application/xml"
    assert error_code(second) == "InternalError"
    assert requests.get(get_url, timeout=30).content == data


def test_storage_slow_down_body(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, _ = job
    emu.faults.status_sequence([503], method="GET", job_id=job_id)
    get_url, head_url = urls_for(emu, job_id)
    assert requests.head(head_url, timeout=30).status_code == 200
    response = requests.get(get_url, timeout=30)
    assert response.status_code == 503
    assert error_code(response) == "SlowDown"


def test_storage_status_before_signature(emu: SutroEmulator) -> None:
    emu.faults.status_sequence([503])
    response = requests.get(f"{emu.storage_url}/sutro-data/anything", timeout=30)
    assert response.status_code == 503


def test_storage_status_path_filter(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    emu.faults.status_sequence([503], path_contains="inputs=1")
    plain_get, _ = urls_for(emu, job_id)
    inputs_get, _ = urls_for(emu, job_id, include_inputs="true")
    assert requests.get(plain_get, timeout=30).status_code == 200
    assert requests.get(inputs_get, timeout=30).status_code == 503
    assert requests.get(inputs_get, timeout=30).status_code == 200


def test_api_status_sequence(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    emu.faults.status_sequence(
        [429, 500, 502, 503, 504, 524], server="api", path_contains="results-url", retry_after=2
    )
    # Other paths are not affected.
    assert api_get(emu, f"/v1/job-status/{job_id}").status_code == 200

    responses = [api_get(emu, f"/v1/jobs/{job_id}/results-url") for _ in range(6)]
    assert [response.status_code for response in responses] == [429, 500, 502, 503, 504, 524]
    assert all(response.headers["Retry-After"] == "2" for response in responses)
    assert responses[0].json() == {"detail": "Too Many Requests"}
    assert isinstance(responses[1].json()["detail"], str)
    assert isinstance(responses[3].json()["detail"], str)
    for response in (responses[2], responses[4], responses[5]):
        assert response.headers["Content-Type"].startswith("text/html")
        assert f"Error {response.status_code}" in response.text
    assert "cf-ray" in responses[5].headers
    assert api_get(emu, f"/v1/jobs/{job_id}/results-url").status_code == 200


def test_api_status_sequence_times(emu: SutroEmulator) -> None:
    emu.faults.status_sequence([503, 429], server="api", times=2)
    statuses = [api_get(emu, "/v1/try-authentication").status_code for _ in range(5)]
    assert statuses == [503, 429, 503, 429, 200]


def test_api_status_sequence_precedes_auth(emu: SutroEmulator) -> None:
    emu.faults.status_sequence([503], server="api")
    response = requests.get(f"{emu.api_url}/v1/try-authentication", timeout=30)
    assert response.status_code == 503


def test_admin_endpoints_not_faulted(emu: SutroEmulator) -> None:
    emu.faults.status_sequence([503], server="api", times=None)
    emu.faults.api_not_json(times=None)
    response = requests.post(
        f"{emu.api_url}/_emulator/jobs",
        json={"job_id": "job-admin"},
        headers={"Authorization": f"Key {emu.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json() == {"job_id": "job-admin"}


def test_api_html_error(emu: SutroEmulator) -> None:
    rule = emu.faults.api_html_error(524, path_contains="/v1/jobs/")
    assert api_get(emu, "/v1/try-authentication").status_code == 200
    response = api_get(emu, "/v1/jobs/job-x/results-url")
    assert response.status_code == 524
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html" in response.text
    assert not rule.active


def test_api_malformed_json(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    emu.faults.api_malformed_json(path_contains="results-url")
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url")
    assert response.status_code == 200
    assert response.json() == {"unexpected": True}
    assert "urls" in api_get(emu, f"/v1/jobs/{job_id}/results-url").json()


def test_api_not_json(emu: SutroEmulator) -> None:
    emu.faults.api_not_json(times=2)
    for _ in range(2):
        response = api_get(emu, "/v1/try-authentication")
        assert response.status_code == 200
        with pytest.raises(ValueError):
            response.json()
    assert api_get(emu, "/v1/try-authentication").json() == {"authenticated": True}


def test_api_body_faults_need_authentication(emu: SutroEmulator) -> None:
    emu.faults.api_malformed_json()
    response = requests.get(f"{emu.api_url}/v1/try-authentication", timeout=30)
    assert response.status_code == 401
    assert len(emu.faults.rules) == 1


# URL lifetime


def test_url_lifetime_s3_style(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.url_lifetime(2)
    body = results_url(emu, job_id, expires_in_seconds=3600)
    assert body["expires_in_seconds"] == 3600
    assert "X-Amz-Expires=2&" in body["urls"]["get"]
    assert requests.get(body["urls"]["get"], timeout=30).content == data
    emu.advance_clock(3)
    response = requests.get(body["urls"]["get"], timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    assert "Request has expired" in response.text


@pytest.mark.parametrize("status", [400, 403])
def test_url_lifetime_r2_style(emu: SutroEmulator, job: tuple[str, bytes], status: int) -> None:
    job_id, _ = job
    emu.faults.url_lifetime(2, style="r2", r2_status=status)
    get_url, head_url = urls_for(emu, job_id)
    emu.advance_clock(3)
    for response in (requests.get(get_url, timeout=30), requests.head(head_url, timeout=30)):
        assert response.status_code == status
    assert error_code(requests.get(get_url, timeout=30)) == "ExpiredRequest"


def test_url_lifetime_times(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, _ = job
    emu.faults.url_lifetime(5, times=1)
    assert "X-Amz-Expires=5&" in results_url(emu, job_id)["urls"]["get"]
    assert "X-Amz-Expires=3600&" in results_url(emu, job_id)["urls"]["get"]


# Object replacement and truncation


def test_replace_object_after_bytes(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    old_etag = emu.artifact_etag(job_id)
    rule = emu.faults.replace_object_after(job_id, 60_000)
    get_url, head_url = urls_for(emu, job_id)
    part = requests.get(
        get_url, headers={"Range": "bytes=0-49999", "If-Match": old_etag}, timeout=30
    )
    assert part.content == data[:50_000]
    assert requests.head(head_url, timeout=30).headers["ETag"] == old_etag

    # This response crosses the threshold and still finishes with the old bytes.
    crossing = requests.get(
        get_url, headers={"Range": "bytes=50000-99999", "If-Match": old_etag}, timeout=30
    )
    assert crossing.status_code == 206
    assert crossing.headers["ETag"] == old_etag
    assert crossing.content == data[50_000:100_000]
    assert not rule.active

    new_etag = requests.head(head_url, timeout=30).headers["ETag"]
    assert new_etag != old_etag
    assert new_etag == emu.artifact_etag(job_id)
    stale = requests.get(
        get_url, headers={"Range": "bytes=100000-", "If-Match": old_etag}, timeout=30
    )
    assert stale.status_code == 412
    assert error_code(stale) == "PreconditionFailed"
    assert requests.get(get_url, timeout=30).content != data


def test_replace_mid_stream_keeps_old_bytes(emu: SutroEmulator, job: tuple[str, bytes]) -> None:
    job_id, data = job
    emu.faults.trickle(400_000, job_id=job_id, times=1)
    emu.faults.replace_object_after(job_id, 10_000)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, timeout=30)
    assert response.content == data
    assert response.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert emu.artifact_etag(job_id) != response.headers["ETag"]
    assert emu.artifact_path(job_id).read_bytes() != data


def test_truncated_parquet(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=2000)
    original = emu.artifact_path(job_id).read_bytes()
    rule = emu.faults.truncated_parquet(job_id, missing_bytes=1000)
    body = results_url(emu, job_id)
    assert body["artifact"]["size_bytes"] == len(original) - 1000
    truncated_etag = f'"{hashlib.md5(original[:-1000]).hexdigest()}"'
    head = requests.head(body["urls"]["head"], timeout=30)
    assert head.headers["Content-Length"] == str(len(original) - 1000)
    assert head.headers["ETag"] == truncated_etag
    response = requests.get(body["urls"]["get"], timeout=30)
    assert response.content == original[:-1000]
    assert response.headers["ETag"] == truncated_etag
    with pytest.raises(pa.ArrowInvalid):
        pq.ParquetFile(pa.BufferReader(response.content))

    # Other flag combinations are untouched, and removing the rule restores the object.
    with_inputs = results_url(emu, job_id, include_inputs="true")
    inputs_size = emu.artifact_path(job_id, include_inputs=True).stat().st_size
    assert with_inputs["artifact"]["size_bytes"] == inputs_size
    rule.remove()
    assert requests.get(body["urls"]["get"], timeout=30).content == original
    assert results_url(emu, job_id)["artifact"]["size_bytes"] == len(original)


def test_truncated_parquet_one_byte(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=50)
    original = emu.artifact_path(job_id).read_bytes()
    emu.faults.truncated_parquet(job_id, missing_bytes=1)
    get_url, _ = urls_for(emu, job_id)
    body = requests.get(get_url, timeout=30).content
    assert body == original[:-1]
    assert body[-4:] != b"PAR1"
