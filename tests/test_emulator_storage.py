"""The emulated object store: SigV4 verification, objects, ranges and conditions."""

from __future__ import annotations

import hashlib
import http.client
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pyarrow.parquet as pq
import pytest
import requests

from dagster_sutro.testing import SutroEmulator, compute_s3_etag


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[SutroEmulator]:
    with SutroEmulator(root_dir=tmp_path / "emulator") as emulator:
        yield emulator


def results_url(emu: SutroEmulator, job_id: str, **params: object) -> dict:
    response = requests.get(
        f"{emu.api_url}/v1/jobs/{job_id}/results-url",
        params=params,
        headers={"Authorization": f"Key {emu.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def urls_for(emu: SutroEmulator, job_id: str, **params: object) -> tuple[str, str]:
    urls = results_url(emu, job_id, **params)["urls"]
    return urls["get"], urls["head"]


def error_code(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == "application/xml"
    text = response.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def error_message(response: requests.Response) -> str:
    return response.text.split("<Message>", 1)[1].split("</Message>", 1)[0]


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# Objects


def test_get_returns_identical_bytes(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=200)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, timeout=30)
    expected = emu.artifact_path(job_id).read_bytes()
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["Content-Length"] == str(len(expected))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == emu.artifact_etag(job_id)
    assert response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["x-amz-request-id"]
    assert pq.ParquetFile(emu.artifact_path(job_id)).metadata.num_rows == 200


def test_head_returns_metadata_without_body(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=50)
    _, head_url = urls_for(emu, job_id)
    response = requests.head(head_url, timeout=30)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Length"] == str(emu.artifact_path(job_id).stat().st_size)
    assert response.headers["ETag"] == emu.artifact_etag(job_id)


def test_small_object_etag_is_md5(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=100)
    data = emu.artifact_path(job_id).read_bytes()
    assert emu.artifact_etag(job_id) == f'"{hashlib.md5(data).hexdigest()}"'


def test_large_object_etag_is_multipart(emu: SutroEmulator) -> None:
    job_id = emu.add_job(target_size_bytes=20 * 1024 * 1024)
    path = emu.artifact_path(job_id)
    data = path.read_bytes()
    part_size = 8 * 1024 * 1024
    digests = b"".join(
        hashlib.md5(data[offset : offset + part_size]).digest()
        for offset in range(0, len(data), part_size)
    )
    expected = f'"{hashlib.md5(digests).hexdigest()}-3"'
    assert emu.artifact_etag(job_id) == expected
    assert compute_s3_etag(path) == expected

    get_url, head_url = urls_for(emu, job_id)
    assert requests.head(head_url, timeout=30).headers["ETag"] == expected
    assert requests.get(get_url, timeout=60).content == data


def test_sized_artifact_is_close_to_target(emu: SutroEmulator) -> None:
    target = 20 * 1024 * 1024
    job_id = emu.add_job(target_size_bytes=target, compression="snappy")
    path = emu.artifact_path(job_id, include_inputs=True, include_cumulative_logprobs=True)
    size = path.stat().st_size
    assert 0.9 * target < size < 1.1 * target
    metadata = pq.read_metadata(path)
    assert metadata.num_row_groups >= 2
    table = pq.read_table(path)
    assert table.column_names == ["row_id", "inputs", "outputs", "cumulative_logprobs"]
    assert table.column("outputs")[0].as_py().startswith('{"content": "')
    job = requests.get(
        f"{emu.api_url}/v1/jobs/{job_id}",
        headers={"Authorization": f"Key {emu.api_key}"},
        timeout=30,
    ).json()["job"]
    assert job["num_rows"] == metadata.num_rows


def test_sized_artifact_without_compression(emu: SutroEmulator) -> None:
    job_id = emu.add_job(target_size_bytes=2 * 1024 * 1024, compression="none", row_group_size=50)
    metadata = pq.read_metadata(emu.artifact_path(job_id))
    assert metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    assert metadata.row_group(0).num_rows == 50


def test_keep_alive_connection_reuse(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=100)
    get_url, head_url = urls_for(emu, job_id)
    expected = emu.artifact_path(job_id).read_bytes()
    parts = urlsplit(get_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        assert connection.getresponse().read() == expected
        first_socket = connection.sock
        for _ in range(2):
            connection.request("GET", f"{parts.path}?{parts.query}")
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == expected
        head_parts = urlsplit(head_url)
        connection.request("HEAD", f"{head_parts.path}?{head_parts.query}")
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        assert connection.sock is first_socket
    finally:
        connection.close()
    assert len(emu.storage_requests) == 4


def test_client_disconnect_mid_body(emu: SutroEmulator) -> None:
    job_id = emu.add_job(target_size_bytes=4 * 1024 * 1024)
    get_url, _ = urls_for(emu, job_id)
    parts = urlsplit(get_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw:
        request = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
        raw.sendall(request.encode())
        assert raw.recv(1024).startswith(b"HTTP/1.1 200")
    response = requests.get(get_url, timeout=30)
    assert response.content == emu.artifact_path(job_id).read_bytes()


def test_replace_artifact_changes_served_etag(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=40)
    get_url, head_url = urls_for(emu, job_id)
    old_etag = requests.head(head_url, timeout=30).headers["ETag"]
    emu.replace_artifact(job_id)
    new = requests.get(get_url, timeout=30)
    assert new.headers["ETag"] != old_etag
    assert new.headers["ETag"] == emu.artifact_etag(job_id)
    assert new.content == emu.artifact_path(job_id).read_bytes()
    stale = requests.get(get_url, headers={"If-Match": old_etag}, timeout=30)
    assert stale.status_code == 412
    assert error_code(stale) == "PreconditionFailed"


def test_other_bucket_fails_signature(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    get_url, _ = urls_for(emu, job_id)
    parts = urlsplit(get_url)
    other_bucket = f"{emu.storage_url}/other-bucket/{parts.path.split('/', 2)[2]}"
    # A URL for another path fails the signature check before the lookup, as on S3.
    response = requests.get(f"{other_bucket}?{parts.query}", timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "path",
    [
        "/sutro-data/jobs/user-emulator/job-none/results/"
        "sutro-results~job-none~inputs%3D0~logprobs%3D0.parquet",
        "/sutro-data/not/a/results/key",
        "/other-bucket/jobs/user-emulator/job-x/results/x.parquet",
    ],
)
def test_validly_signed_unknown_object(emu: SutroEmulator, path: str) -> None:
    url = emu._state.signer.presign(
        "GET", emu.storage_url + path, expires_in_seconds=60, signed_at=emu._clock.now_datetime()
    )
    response = requests.get(url, timeout=30)
    assert response.status_code == 404
    assert error_code(response) in ("NoSuchKey", "NoSuchBucket")


def test_object_not_built_is_not_found(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    url = emu._state.signer.presign(
        "GET",
        f"{emu.storage_url}/sutro-data/{emu.artifact_key(job_id)}".replace("=", "%3D"),
        expires_in_seconds=60,
        signed_at=emu._clock.now_datetime(),
    )
    response = requests.get(url, timeout=30)
    assert response.status_code == 404
    assert error_code(response) == "NoSuchKey"


# Signature verification


def test_head_on_get_url_is_rejected(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.head(get_url, timeout=30)
    assert response.status_code == 403
    assert response.content == b""


def test_get_on_head_url_is_rejected(emu: SutroEmulator) -> None:
    _, head_url = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(head_url, timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST"])
def test_other_methods_are_rejected(emu: SutroEmulator, method: str) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.request(method, get_url, timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"


def test_expired_url_is_rejected(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    get_url, head_url = urls_for(emu, job_id, expires_in_seconds=60)
    assert requests.head(head_url, timeout=30).status_code == 200
    emu.advance_clock(61)
    for response in (requests.get(get_url, timeout=30), requests.head(head_url, timeout=30)):
        assert response.status_code == 403
    response = requests.get(get_url, timeout=30)
    assert error_code(response) == "AccessDenied"
    assert error_message(response) == "Request has expired"
    fresh_get, _ = urls_for(emu, job_id, expires_in_seconds=60)
    assert requests.get(fresh_get, timeout=30).status_code == 200


def test_url_valid_until_expiry(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5), expires_in_seconds=100)
    emu.advance_clock(95)
    assert requests.get(get_url, timeout=30).status_code == 200


def test_tampered_signature_is_rejected(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    signature = parse_qs(urlsplit(get_url).query)["X-Amz-Signature"][0]
    tampered = with_query(
        get_url, **{"X-Amz-Signature": signature[:-1] + ("0" if signature[-1] != "0" else "1")}
    )
    response = requests.get(tampered, timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "changes",
    [{"X-Amz-Expires": "999999"}, {"X-Amz-Expires": "7200"}, {"extra": "1"}],
)
def test_tampered_query_is_rejected(emu: SutroEmulator, changes: dict[str, str]) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(with_query(get_url, **changes), timeout=30)
    assert response.status_code in (400, 403)


def test_other_object_path_is_rejected(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    get_url, _ = urls_for(emu, job_id)
    other = get_url.replace("inputs%3D0", "inputs%3D1")
    assert other != get_url
    response = requests.get(other, timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"


def test_other_host_header_is_rejected(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(get_url, headers={"Host": "localhost"}, timeout=30)
    assert response.status_code == 403


def test_missing_signature_parameters(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    bare = get_url.split("?", 1)[0]
    response = requests.get(bare, timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    query = parse_qs(urlsplit(get_url).query)
    del query["X-Amz-Date"]
    partial = bare + "?" + urlencode({name: values[0] for name, values in query.items()})
    response = requests.get(partial, timeout=30)
    assert response.status_code == 400
    assert error_code(response) == "AuthorizationQueryParametersError"


def test_authorization_header_is_rejected(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(get_url, headers={"Authorization": f"Key {emu.api_key}"}, timeout=30)
    assert response.status_code == 400
    assert error_code(response) == "InvalidArgument"
    assert error_message(response).startswith("Only one auth mechanism allowed")


def test_any_authorization_header_is_rejected(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(get_url, headers={"Authorization": "Bearer something"}, timeout=30)
    assert response.status_code == 400


@pytest.mark.parametrize("header", ["X-Api-Key", "Cookie", "X-Forwarded-Authorization"])
def test_api_key_in_other_header_is_rejected(emu: SutroEmulator, header: str) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(get_url, headers={header: f"token={emu.api_key}"}, timeout=30)
    assert response.status_code == 400
    assert error_code(response) == "InvalidArgument"


def test_unsigned_amz_header_is_rejected(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(get_url, headers={"x-amz-checksum-mode": "ENABLED"}, timeout=30)
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    assert error_message(response) == (
        "There were headers present in the request which were not signed"
    )


def test_ordinary_headers_are_accepted(emu: SutroEmulator) -> None:
    get_url, _ = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(
        get_url, headers={"User-Agent": "test-agent", "Accept-Encoding": "identity"}, timeout=30
    )
    assert response.status_code == 200


def test_error_body_is_s3_xml(emu: SutroEmulator) -> None:
    _, head_url = urls_for(emu, emu.add_job(num_rows=5))
    response = requests.get(head_url, timeout=30)
    assert response.headers["Content-Type"] == "application/xml"
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>')
    assert "<RequestId>" in response.text
    assert response.headers["x-amz-request-id"] in response.text


# Ranges and conditions


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=500-", 500, None),
        ("bytes=-300", None, None),
        ("bytes=10-999999999", 10, None),
    ],
)
def test_range_returns_partial_content(
    emu: SutroEmulator, header: str, first: int | None, last: int | None
) -> None:
    job_id = emu.add_job(num_rows=100)
    data = emu.artifact_path(job_id).read_bytes()
    size = len(data)
    if header == "bytes=-300":
        first, last = size - 300, size - 1
    if last is None:
        last = size - 1
    assert first is not None
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, headers={"Range": header}, timeout=30)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.content == data[first : last + 1]


def test_suffix_range_longer_than_object(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    data = emu.artifact_path(job_id).read_bytes()
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, headers={"Range": f"bytes=-{len(data) * 2}"}, timeout=30)
    assert response.status_code == 206
    assert response.content == data


@pytest.mark.parametrize("header", ["bytes={size}-", "bytes={size}-{end}", "bytes=-0"])
def test_unsatisfiable_range(emu: SutroEmulator, header: str) -> None:
    job_id = emu.add_job(num_rows=5)
    size = emu.artifact_path(job_id).stat().st_size
    get_url, _ = urls_for(emu, job_id)
    value = header.format(size=size, end=size + 10)
    response = requests.get(get_url, headers={"Range": value}, timeout=30)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"
    assert error_code(response) == "InvalidRange"


@pytest.mark.parametrize("header", ["items=0-5", "bytes=5-2", "bytes=0-1,4-5", "bytes=abc"])
def test_malformed_range_is_ignored(emu: SutroEmulator, header: str) -> None:
    job_id = emu.add_job(num_rows=5)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, headers={"Range": header}, timeout=30)
    assert response.status_code == 200
    assert response.content == emu.artifact_path(job_id).read_bytes()


def test_range_on_head(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    _, head_url = urls_for(emu, job_id)
    response = requests.head(head_url, headers={"Range": "bytes=0-9"}, timeout=30)
    assert response.status_code == 206
    assert response.headers["Content-Length"] == "10"


def test_if_match(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    etag = emu.artifact_etag(job_id)
    get_url, head_url = urls_for(emu, job_id)
    assert requests.get(get_url, headers={"If-Match": etag}, timeout=30).status_code == 200
    ranged = requests.get(get_url, headers={"If-Match": etag, "Range": "bytes=0-3"}, timeout=30)
    assert ranged.status_code == 206
    wrong = requests.get(get_url, headers={"If-Match": '"0123"', "Range": "bytes=0-3"}, timeout=30)
    assert wrong.status_code == 412
    assert error_code(wrong) == "PreconditionFailed"
    assert requests.head(head_url, headers={"If-Match": '"0123"'}, timeout=30).status_code == 412


def test_if_none_match(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    etag = emu.artifact_etag(job_id)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, headers={"If-None-Match": etag}, timeout=30)
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == etag
    other = requests.get(get_url, headers={"If-None-Match": '"other"'}, timeout=30)
    assert other.status_code == 200


def test_if_range(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=50)
    data = emu.artifact_path(job_id).read_bytes()
    etag = emu.artifact_etag(job_id)
    get_url, _ = urls_for(emu, job_id)
    matching = requests.get(get_url, headers={"Range": "bytes=10-", "If-Range": etag}, timeout=30)
    assert matching.status_code == 206
    assert matching.content == data[10:]
    stale = requests.get(get_url, headers={"Range": "bytes=10-", "If-Range": '"stale"'}, timeout=30)
    assert stale.status_code == 200
    assert stale.content == data


def test_empty_table_object(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=0)
    get_url, _ = urls_for(emu, job_id)
    response = requests.get(get_url, timeout=30)
    assert response.status_code == 200
    assert pq.read_metadata(emu.artifact_path(job_id)).num_rows == 0


# Records


def test_storage_requests_recorded(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=20)
    get_url, head_url = urls_for(emu, job_id)
    requests.head(head_url, timeout=30)
    requests.get(get_url, headers={"Range": "bytes=0-9"}, timeout=30)
    requests.head(get_url, timeout=30)
    records = emu.storage_requests
    assert [(record.method, record.status, record.body_bytes) for record in records] == [
        ("HEAD", 200, 0),
        ("GET", 206, 10),
        ("HEAD", 403, 0),
    ]
    assert all(record.server == "storage" for record in records)
    assert all(record.job_id == job_id for record in records)
    assert records[1].headers["Range"] == "bytes=0-9"
    assert records[1].query["X-Amz-SignedHeaders"] == "host"
    assert records[1].path == urlsplit(get_url).path
    assert [record.server for record in emu.requests] == ["api", "storage", "storage", "storage"]
    assert records[0].time <= records[1].time <= records[2].time
