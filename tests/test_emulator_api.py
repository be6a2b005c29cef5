"""The emulated Sutro API, exercised over real sockets with plain ``requests``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from dagster_sutro.testing import JOB_STATES, SutroEmulator, make_results_table


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


def api_post(emu: SutroEmulator, path: str, payload: dict[str, object]) -> requests.Response:
    return requests.post(
        f"{emu.api_url}{path}",
        json=payload,
        headers={"Authorization": f"Key {emu.api_key}"},
        timeout=30,
    )


# Authentication


@pytest.mark.parametrize(
    "path",
    [
        "/v1/try-authentication",
        "/v1/jobs/job-x/results-url",
        "/v1/jobs/job-x",
        "/v1/job-status/job-x",
        "/v1/list-jobs",
    ],
)
@pytest.mark.parametrize("authorization", [None, "Key sk_wrong", "Bearer {key}", "{key}", "Key"])
def test_api_rejects_bad_authorization(
    emu: SutroEmulator, path: str, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(key=emu.api_key)
    response = requests.get(f"{emu.api_url}{path}", headers=headers, timeout=30)
    assert response.status_code == 401
    assert isinstance(response.json()["detail"], str)
    assert response.headers["x-request-id"]


def test_try_authentication(emu: SutroEmulator) -> None:
    response = api_get(emu, "/v1/try-authentication")
    assert response.status_code == 200
    assert response.json() == {"authenticated": True}
    assert response.headers["Content-Type"] == "application/json"


def test_request_ids_are_unique(emu: SutroEmulator) -> None:
    ids = {api_get(emu, "/v1/try-authentication").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_default_api_key_format() -> None:
    emulator = SutroEmulator()
    assert emulator.api_key.startswith("sk_emulator_")
    assert len(emulator.api_key) == len("sk_emulator_") + 32
    assert SutroEmulator("sk_given").api_key == "sk_given"


def test_unknown_route_and_method(emu: SutroEmulator) -> None:
    assert api_get(emu, "/v1/nothing-here").status_code == 404
    assert api_get(emu, "/v1/nothing-here").json() == {"detail": "Not Found"}
    response = api_post(emu, "/v1/try-authentication", {})
    assert response.status_code == 405


# results-url


def test_results_url_body(emu: SutroEmulator) -> None:
    job_id = emu.add_job("job-body-1", num_rows=20)
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url")
    assert response.status_code == 200
    body = response.json()
    filename = f"sutro-results~{job_id}~inputs=0~logprobs=0.parquet"
    assert set(body) == {
        "job_id",
        "format",
        "include_inputs",
        "include_cumulative_logprobs",
        "expires_in_seconds",
        "artifact",
        "urls",
    }
    assert body["job_id"] == job_id
    assert body["format"] == "parquet"
    assert body["include_inputs"] is False
    assert body["include_cumulative_logprobs"] is False
    assert body["expires_in_seconds"] == 3600
    assert body["artifact"] == {
        "bucket": "sutro-data",
        "key": f"jobs/user-emulator/{job_id}/results/{filename}",
        "filename": filename,
        "size_bytes": emu.artifact_path(job_id).stat().st_size,
    }
    assert set(body["urls"]) == {"get", "head"}


def test_results_url_presigned_parameters(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    body = api_get(emu, f"/v1/jobs/{job_id}/results-url", expires_in_seconds=120).json()
    for url in body["urls"].values():
        parts = urlsplit(url)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        assert f"{parts.scheme}://{parts.netloc}" == emu.storage_url
        assert parts.path.startswith("/sutro-data/jobs/user-emulator/")
        assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
        assert query["X-Amz-Expires"] == "120"
        assert query["X-Amz-SignedHeaders"] == "host"
        assert query["X-Amz-Credential"].endswith("/auto/s3/aws4_request")
        assert len(query["X-Amz-Signature"]) == 64
    assert body["urls"]["get"] != body["urls"]["head"]


def test_results_url_user_id_in_key(tmp_path: Path) -> None:
    with SutroEmulator(root_dir=tmp_path, user_id="user-42") as emulator:
        job_id = emulator.add_job(num_rows=1)
        body = api_get(emulator, f"/v1/jobs/{job_id}/results-url").json()
    assert body["artifact"]["key"].startswith(f"jobs/user-42/{job_id}/results/")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("0", False),
    ],
)
def test_results_url_boolean_spellings(emu: SutroEmulator, text: str, expected: bool) -> None:
    job_id = emu.add_job(num_rows=3)
    response = api_get(
        emu,
        f"/v1/jobs/{job_id}/results-url",
        include_inputs=text,
        include_cumulative_logprobs=text,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["include_inputs"] is expected
    assert body["include_cumulative_logprobs"] is expected
    assert f"inputs={int(expected)}~logprobs={int(expected)}" in body["artifact"]["key"]


@pytest.mark.parametrize("name", ["include_inputs", "include_cumulative_logprobs"])
@pytest.mark.parametrize("text", ["maybe", "", "2", "yes!"])
def test_results_url_rejects_bad_boolean(emu: SutroEmulator, name: str, text: str) -> None:
    job_id = emu.add_job(num_rows=3)
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url", **{name: text})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", name]
    assert error["type"] == "bool_parsing"
    assert error["input"] == text


@pytest.mark.parametrize(
    ("text", "error_type"),
    [
        ("0", "greater_than_equal"),
        ("-5", "greater_than_equal"),
        ("604801", "less_than_equal"),
        ("abc", "int_parsing"),
        ("1.5", "int_parsing"),
    ],
)
def test_results_url_rejects_bad_expiry(emu: SutroEmulator, text: str, error_type: str) -> None:
    job_id = emu.add_job(num_rows=3)
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url", expires_in_seconds=text)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "expires_in_seconds"]
    assert error["type"] == error_type


@pytest.mark.parametrize("seconds", [1, 604800])
def test_results_url_expiry_bounds_accepted(emu: SutroEmulator, seconds: int) -> None:
    job_id = emu.add_job(num_rows=3)
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url", expires_in_seconds=seconds)
    assert response.status_code == 200
    assert response.json()["expires_in_seconds"] == seconds
    assert f"X-Amz-Expires={seconds}&" in response.json()["urls"]["get"]


def test_results_url_all_validation_errors(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=3)
    response = api_get(
        emu,
        f"/v1/jobs/{job_id}/results-url",
        include_inputs="x",
        expires_in_seconds="y",
    )
    assert response.status_code == 422
    locations = [error["loc"][1] for error in response.json()["detail"]]
    assert locations == ["include_inputs", "expires_in_seconds"]


@pytest.mark.parametrize("output_format", ["csv", "json", "PARQUET", ""])
def test_results_url_rejects_other_formats(emu: SutroEmulator, output_format: str) -> None:
    job_id = emu.add_job(num_rows=3)
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url", format=output_format)
    assert response.status_code == 400
    assert "parquet" in response.json()["detail"]


def test_results_url_explicit_parquet_format(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=3)
    assert api_get(emu, f"/v1/jobs/{job_id}/results-url", format="parquet").status_code == 200


def test_results_url_unknown_job(emu: SutroEmulator) -> None:
    response = api_get(emu, "/v1/jobs/job-missing/results-url")
    assert response.status_code == 404
    assert "job-missing" in response.json()["detail"]


@pytest.mark.parametrize("state", [state for state in JOB_STATES if state != "SUCCEEDED"])
def test_results_url_conflict_until_succeeded(emu: SutroEmulator, state: str) -> None:
    job_id = emu.add_job(num_rows=3, status=state)
    response = api_get(emu, f"/v1/jobs/{job_id}/results-url")
    assert response.status_code == 409
    assert state in response.json()["detail"]


def test_results_url_after_status_change(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=3, status="RUNNING")
    assert api_get(emu, f"/v1/jobs/{job_id}/results-url").status_code == 409
    emu.set_status(job_id, "SUCCEEDED")
    assert api_get(emu, f"/v1/jobs/{job_id}/results-url").status_code == 200


def test_one_object_per_flag_combination(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=30)
    keys = set()
    etags = set()
    for inputs in (False, True):
        for logprobs in (False, True):
            body = api_get(
                emu,
                f"/v1/jobs/{job_id}/results-url",
                include_inputs=str(inputs).lower(),
                include_cumulative_logprobs=str(logprobs).lower(),
            ).json()
            label = f"inputs={int(inputs)}~logprobs={int(logprobs)}"
            assert body["artifact"]["filename"] == f"sutro-results~{job_id}~{label}.parquet"
            keys.add(body["artifact"]["key"])
            path = emu.artifact_path(
                job_id, include_inputs=inputs, include_cumulative_logprobs=logprobs
            )
            etags.add(
                emu.artifact_etag(
                    job_id, include_inputs=inputs, include_cumulative_logprobs=logprobs
                )
            )
            columns = pq.read_schema(path).names
            assert "row_id" in columns
            assert "outputs" in columns
            assert ("inputs" in columns) is inputs
            assert ("cumulative_logprobs" in columns) is logprobs
    assert len(keys) == 4
    assert len(etags) == 4


def test_artifact_built_lazily_and_reused(emu: SutroEmulator, tmp_path: Path) -> None:
    job_id = emu.add_job(num_rows=10)
    assert not list((tmp_path / "emulator").rglob("*.parquet"))
    first = api_get(emu, f"/v1/jobs/{job_id}/results-url").json()
    second = api_get(emu, f"/v1/jobs/{job_id}/results-url").json()
    assert first["artifact"] == second["artifact"]
    assert len(list((tmp_path / "emulator").rglob("*.parquet"))) == 1


def test_custom_table_columns_follow_flags(emu: SutroEmulator) -> None:
    table = pa.table(
        {
            "custom_id": ["a", "b"],
            "inputs": ["q1", "q2"],
            "outputs": ['{"answer": 1}', '{"answer": 2}'],
            "cumulative_logprobs": [-1.5, -2.5],
        }
    )
    job_id = emu.add_job(table=table)
    plain = pq.read_table(emu.artifact_path(job_id))
    full = pq.read_table(
        emu.artifact_path(job_id, include_inputs=True, include_cumulative_logprobs=True)
    )
    assert plain.column_names == ["custom_id", "outputs"]
    assert full.column_names == ["custom_id", "inputs", "outputs", "cumulative_logprobs"]
    assert full.column("outputs").to_pylist() == ['{"answer": 1}', '{"answer": 2}']
    job = api_get(emu, f"/v1/jobs/{job_id}").json()["job"]
    assert job["num_rows"] == 2


def test_generated_table_contents(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=25, seed=3)
    table = pq.read_table(
        emu.artifact_path(job_id, include_inputs=True, include_cumulative_logprobs=True)
    )
    assert table.num_rows == 25
    assert table.column("row_id").to_pylist() == list(range(25))
    assert table.schema.field("cumulative_logprobs").type == pa.float64()
    output = json.loads(table.column("outputs")[0].as_py())
    assert set(output) == {"content", "reasoning_content"}
    assert all(isinstance(text, str) for text in table.column("inputs").to_pylist())


# make_results_table


def test_make_results_table_columns() -> None:
    table = make_results_table(4)
    assert table.column_names == ["row_id", "outputs"]
    both = make_results_table(4, include_inputs=True, include_cumulative_logprobs=True)
    assert both.column_names == ["row_id", "inputs", "outputs", "cumulative_logprobs"]
    assert make_results_table(0).num_rows == 0


def test_make_results_table_seeded() -> None:
    assert make_results_table(10, seed=1).equals(make_results_table(10, seed=1))
    assert not make_results_table(10, seed=1).equals(make_results_table(10, seed=2))


def test_make_results_table_structured_outputs() -> None:
    table = make_results_table(3, output_style="structured", output_chars=60)
    output = json.loads(table.column("outputs")[0].as_py())
    assert set(output) == {"sentiment", "summary", "score"}
    with pytest.raises(ValueError, match="output_style"):
        make_results_table(3, output_style="other")  # type: ignore[arg-type]


# Other endpoints


def test_job_status_shape(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=3, status="RUNNING")
    body = api_get(emu, f"/v1/job-status/{job_id}").json()
    assert body["job_status"] == {job_id: "RUNNING"}
    assert isinstance(body["message"], str)
    assert body["metadata"] is None


def test_job_status_failed_metadata(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=3, status="RUNNING")
    emu.set_status(job_id, "FAILED", failure_reason="Out of memory on worker 3")
    body = api_get(emu, f"/v1/job-status/{job_id}").json()
    assert body["job_status"] == {job_id: "FAILED"}
    assert body["metadata"] == {"failure_reason": {"message": "Out of memory on worker 3"}}


def test_job_status_unknown_job(emu: SutroEmulator) -> None:
    response = api_get(emu, "/v1/job-status/job-none")
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)


def test_get_job_shape(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=12, model="qwen-3-4b", name="reviews")
    job = api_get(emu, f"/v1/jobs/{job_id}").json()["job"]
    assert set(job) == {
        "job_id",
        "status",
        "model",
        "name",
        "description",
        "datetime_created",
        "datetime_started",
        "datetime_completed",
        "num_rows",
        "input_tokens",
        "output_tokens",
        "job_cost",
        "failure_reason",
    }
    assert job["job_id"] == job_id
    assert job["status"] == "SUCCEEDED"
    assert job["model"] == "qwen-3-4b"
    assert job["name"] == "reviews"
    assert job["num_rows"] == 12
    assert job["datetime_completed"] is not None
    assert job["failure_reason"] is None


def test_get_job_timestamps_follow_status(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=1, status="QUEUED")
    job = api_get(emu, f"/v1/jobs/{job_id}").json()["job"]
    assert job["datetime_started"] is None
    assert job["datetime_completed"] is None
    emu.set_status(job_id, "RUNNING")
    job = api_get(emu, f"/v1/jobs/{job_id}").json()["job"]
    assert job["datetime_started"] is not None
    assert job["datetime_completed"] is None


def test_get_job_unknown(emu: SutroEmulator) -> None:
    assert api_get(emu, "/v1/jobs/job-none").status_code == 404


def test_list_jobs_newest_first_with_pagination(emu: SutroEmulator) -> None:
    job_ids = [emu.add_job(f"job-list-{index}", num_rows=1) for index in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        body = api_get(emu, "/v1/list-jobs", **params).json()
        assert len(body["jobs"]) <= 2
        seen.extend(job["job_id"] for job in body["jobs"])
        cursor = body["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert seen == list(reversed(job_ids))
    assert pages == 3


def test_list_jobs_single_page(emu: SutroEmulator) -> None:
    emu.add_job("job-only", num_rows=1)
    body = api_get(emu, "/v1/list-jobs", limit=100).json()
    assert [job["job_id"] for job in body["jobs"]] == ["job-only"]
    assert body["next_cursor"] is None
    assert body["jobs"][0]["status"] == "SUCCEEDED"


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
def test_list_jobs_rejects_bad_limit(emu: SutroEmulator, limit: str) -> None:
    response = api_get(emu, "/v1/list-jobs", limit=limit)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


def test_list_jobs_rejects_bad_cursor(emu: SutroEmulator) -> None:
    response = api_get(emu, "/v1/list-jobs", cursor="not-a-cursor")
    assert response.status_code == 422


# Python-side job management


def test_add_job_rejects_duplicates_and_bad_ids(emu: SutroEmulator) -> None:
    emu.add_job("job-dup", num_rows=1)
    with pytest.raises(ValueError, match="already exists"):
        emu.add_job("job-dup", num_rows=1)
    with pytest.raises(ValueError, match="invalid"):
        emu.add_job("job/with/slash", num_rows=1)
    with pytest.raises(ValueError, match="status"):
        emu.add_job(num_rows=1, status="DONE")


def test_set_status_unknown_job(emu: SutroEmulator) -> None:
    with pytest.raises(KeyError):
        emu.set_status("job-none", "RUNNING")


def test_replace_artifact_changes_etag(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=10)
    before = emu.artifact_etag(job_id)
    before_bytes = emu.artifact_path(job_id).read_bytes()
    etags = emu.replace_artifact(job_id)
    assert etags["inputs=0~logprobs=0"] != before
    assert emu.artifact_etag(job_id) == etags["inputs=0~logprobs=0"]
    assert emu.artifact_path(job_id).read_bytes() != before_bytes
    body = api_get(emu, f"/v1/jobs/{job_id}/results-url").json()
    assert body["artifact"]["size_bytes"] == emu.artifact_path(job_id).stat().st_size


def test_replace_artifact_same_table_new_bytes(emu: SutroEmulator) -> None:
    table = make_results_table(5)
    job_id = emu.add_job(table=table)
    before = emu.artifact_etag(job_id)
    emu.replace_artifact(job_id)
    assert emu.artifact_etag(job_id) != before
    assert pq.read_table(emu.artifact_path(job_id)).equals(table)


def test_replace_artifact_rebuilds_built_combinations(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=10)
    before = emu.artifact_etag(job_id, include_inputs=True)
    etags = emu.replace_artifact(job_id, num_rows=20)
    assert set(etags) == {"inputs=0~logprobs=0", "inputs=1~logprobs=0"}
    assert etags["inputs=1~logprobs=0"] != before
    assert pq.read_metadata(emu.artifact_path(job_id, include_inputs=True)).num_rows == 20


def test_artifact_path_requires_running_emulator() -> None:
    emulator = SutroEmulator()
    job_id = emulator.add_job(num_rows=1)
    with pytest.raises(RuntimeError, match="not running"):
        emulator.artifact_path(job_id)
    with pytest.raises(RuntimeError, match="not running"):
        _ = emulator.api_url


def test_stop_removes_temporary_directory() -> None:
    emulator = SutroEmulator().start()
    job_id = emulator.add_job(num_rows=1)
    path = emulator.artifact_path(job_id)
    root = emulator.root_dir
    assert root is not None
    assert path.exists()
    emulator.stop()
    assert not root.exists()
    emulator.stop()


def test_given_root_dir_is_kept(tmp_path: Path) -> None:
    with SutroEmulator(root_dir=tmp_path / "kept") as emulator:
        emulator.artifact_path(emulator.add_job(num_rows=1))
    assert list((tmp_path / "kept").rglob("*.parquet"))


# Admin endpoints


def test_admin_add_job_and_status(emu: SutroEmulator) -> None:
    response = api_post(
        emu, "/_emulator/jobs", {"job_id": "job-admin", "num_rows": 7, "status": "RUNNING"}
    )
    assert response.status_code == 200
    assert response.json() == {"job_id": "job-admin"}
    assert api_get(emu, "/v1/job-status/job-admin").json()["job_status"] == {"job-admin": "RUNNING"}

    response = api_post(emu, "/_emulator/jobs/job-admin/status", {"status": "SUCCEEDED"})
    assert response.status_code == 200
    body = api_get(emu, "/v1/jobs/job-admin/results-url").json()
    assert pq.read_metadata(emu.artifact_path("job-admin")).num_rows == 7
    assert body["job_id"] == "job-admin"


def test_admin_add_job_generates_id(emu: SutroEmulator) -> None:
    job_id = api_post(emu, "/_emulator/jobs", {}).json()["job_id"]
    assert job_id.startswith("job-")
    assert api_get(emu, f"/v1/jobs/{job_id}").json()["job"]["status"] == "SUCCEEDED"


def test_admin_errors(emu: SutroEmulator) -> None:
    emu.add_job("job-exists", num_rows=1)
    assert api_post(emu, "/_emulator/jobs", {"job_id": "job-exists"}).status_code == 409
    assert api_post(emu, "/_emulator/jobs", {"bogus": 1}).status_code == 422
    assert (
        api_post(emu, "/_emulator/jobs/job-none/status", {"status": "RUNNING"}).status_code == 404
    )
    assert api_post(emu, "/_emulator/jobs/job-exists/status", {"status": "DONE"}).status_code == 422
    assert api_post(emu, "/_emulator/jobs/job-none/replace-artifact", {}).status_code == 404
    unauthenticated = requests.post(f"{emu.api_url}/_emulator/jobs", json={}, timeout=30)
    assert unauthenticated.status_code == 401


def test_admin_replace_artifact(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=5)
    before = emu.artifact_etag(job_id)
    response = api_post(emu, f"/_emulator/jobs/{job_id}/replace-artifact", {"num_rows": 9})
    assert response.status_code == 200
    etags = response.json()["etags"]
    assert etags["inputs=0~logprobs=0"] != before
    assert etags["inputs=0~logprobs=0"] == emu.artifact_etag(job_id)
    assert pq.read_metadata(emu.artifact_path(job_id)).num_rows == 9


# Request records


def test_api_requests_recorded(emu: SutroEmulator) -> None:
    job_id = emu.add_job(num_rows=3)
    api_get(emu, f"/v1/jobs/{job_id}/results-url", include_inputs="true")
    api_get(emu, "/v1/try-authentication")
    records = emu.api_requests
    assert [record.path for record in records] == [
        f"/v1/jobs/{job_id}/results-url",
        "/v1/try-authentication",
    ]
    first = records[0]
    assert first.server == "api"
    assert first.method == "GET"
    assert first.query == {"include_inputs": "true"}
    assert first.headers["Authorization"] == f"Key {emu.api_key}"
    assert first.status == 200
    assert first.body_bytes > 0
    assert first.job_id == job_id
    assert records[1].job_id is None
    assert emu.storage_requests == []
    emu.clear_requests()
    assert emu.requests == []


def test_records_from_many_threads(emu: SutroEmulator) -> None:
    def call() -> None:
        for _ in range(5):
            api_get(emu, "/v1/try-authentication")

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = emu.requests
    assert len(records) == 20
    assert all(record.status == 200 for record in records)


# Command line


def _start_serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_sutro.testing",
            "serve",
            "--rows",
            "40",
            "--root-dir",
            str(tmp_path / "serve"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    exports: dict[str, str] = {}
    assert process.stdout is not None
    for _ in range(3):
        line = process.stdout.readline()
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").strip().partition("=")
        exports[name] = value
    return process, exports


def _stop_serve(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_cli_prints_exports_and_serves(tmp_path: Path) -> None:
    process, exports = _start_serve(tmp_path, "--api-key", "sk_cli_test", "--job-id", "job-cli")
    try:
        assert set(exports) == {"SUTRO_API_URL", "SUTRO_API_KEY", "SUTRO_DEMO_JOB_ID"}
        assert exports["SUTRO_API_URL"].startswith("http://127.0.0.1:")
        assert exports["SUTRO_API_KEY"] == "sk_cli_test"
        assert exports["SUTRO_DEMO_JOB_ID"] == "job-cli"
        headers = {"Authorization": "Key sk_cli_test"}
        response = requests.get(
            f"{exports['SUTRO_API_URL']}/v1/jobs/job-cli/results-url", headers=headers, timeout=30
        )
        assert response.status_code == 200
        first_etag = requests.head(response.json()["urls"]["head"], timeout=30).headers["ETag"]
        body = requests.get(response.json()["urls"]["get"], timeout=30).content
        assert pq.ParquetFile(pa.BufferReader(body)).metadata.num_rows == 40

        environment = {**os.environ, **exports}
        replaced = subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster_sutro.testing",
                "replace-artifact",
                "--job-id",
                "job-cli",
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        new_etag = json.loads(replaced.stdout)["etags"]["inputs=0~logprobs=0"]
        assert new_etag != first_etag

        subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster_sutro.testing",
                "set-status",
                "--job-id",
                "job-cli",
                "--status",
                "FAILED",
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        status = requests.get(
            f"{exports['SUTRO_API_URL']}/v1/job-status/job-cli", headers=headers, timeout=30
        ).json()
        assert status["job_status"] == {"job-cli": "FAILED"}
    finally:
        _stop_serve(process)
    assert process.returncode == 0


def test_serve_cli_default_key_and_job(tmp_path: Path) -> None:
    process, exports = _start_serve(tmp_path)
    try:
        assert exports["SUTRO_API_KEY"].startswith("sk_emulator_")
        assert exports["SUTRO_DEMO_JOB_ID"] == "job-demo-0001"
        response = requests.get(
            f"{exports['SUTRO_API_URL']}/v1/try-authentication",
            headers={"Authorization": f"Key {exports['SUTRO_API_KEY']}"},
            timeout=30,
        )
        assert response.json() == {"authenticated": True}
    finally:
        _stop_serve(process)


def test_admin_cli_needs_environment(tmp_path: Path) -> None:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("SUTRO_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "dagster_sutro.testing", "replace-artifact", "--job-id", "x"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SUTRO_API_URL" in result.stderr
