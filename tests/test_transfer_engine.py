"""Transfer engine tests against the Sutro emulator (real SigV4 URLs) and a moto S3 server."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import boto3
import fsspec
import pytest

from dagster_sutro.client import SutroClient
from dagster_sutro.errors import DownloadError, StorageError
from dagster_sutro.models import ResultsDownloadUrl
from dagster_sutro.testing import SutroEmulator
from dagster_sutro.transfer import (
    TransferSettings,
    download_artifact,
    head_artifact,
    resolve_destination,
    s3_part_size_for,
)

MIB = 1024 * 1024

SETTINGS = TransferSettings(
    part_size_bytes=4 * MIB,
    max_concurrency=4,
    backoff_base_seconds=0.01,
    backoff_max_seconds=0.05,
    read_timeout_seconds=5.0,
    progress_interval_seconds=0.2,
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Job:
    """A job on the emulator, with a counting results-url callable."""

    def __init__(self, emulator: SutroEmulator, job_id: str) -> None:
        self.emulator = emulator
        self.job_id = job_id
        self.client = SutroClient(emulator.api_url, emulator.api_key)
        self.url_calls = 0

    def get_urls(self) -> ResultsDownloadUrl:
        self.url_calls += 1
        return self.client.get_results_download_url(self.job_id)

    @property
    def source(self) -> bytes:
        return self.emulator.artifact_path(self.job_id).read_bytes()

    def storage_requests(self, method: str | None = None) -> list:
        return [
            request
            for request in self.emulator.storage_requests
            if method is None or request.method == method
        ]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The destination directory, apart from the emulator's files under ``tmp_path``."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.fixture
def job(emulator: SutroEmulator) -> Job:
    return Job(emulator, emulator.add_job(target_size_bytes=14 * MIB + 4321))


def test_local_download_is_identical(job: Job, out: Path):
    result = download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)
    assert result.etag == job.emulator.artifact_etag(job.job_id)
    assert result.size_bytes == len(job.source)
    assert result.bytes_transferred == len(job.source)
    assert sorted(path.name for path in out.iterdir()) == [published.name]


def test_one_head_one_get_per_part(job: Job, out: Path):
    download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    parts = -(-len(job.source) // SETTINGS.part_size_bytes)
    assert len(job.storage_requests("HEAD")) == 1
    assert len(job.storage_requests("GET")) == parts
    assert len(job.storage_requests()) == parts + 1
    assert job.url_calls == 1


def test_no_head_when_caller_gives_it(job: Job, out: Path):
    urls = job.get_urls()
    head = head_artifact(urls, settings=SETTINGS)
    job.emulator.clear_requests()

    download_artifact(job.get_urls, str(out) + "/", urls=urls, head=head, settings=SETTINGS)

    assert job.storage_requests("HEAD") == []
    assert len(job.storage_requests("GET")) == -(-len(job.source) // SETTINGS.part_size_bytes)
    assert job.url_calls == 1


def test_storage_requests_carry_no_credentials(job: Job, out: Path):
    download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    for request in job.storage_requests():
        names = {name.lower() for name in request.headers}
        assert "authorization" not in names
        assert not any(name.startswith("x-amz-") for name in names)
        assert "user-agent" not in names
        assert "cookie" not in names
        assert names <= {"host", "accept-encoding", "range", "if-match"}
        assert job.emulator.api_key not in str(request.headers)
        assert request.status in (200, 206)


def test_memory_download_is_identical(job: Job):
    result = download_artifact(job.get_urls, "memory://engine-test/results/", settings=SETTINGS)

    fs = fsspec.filesystem("memory")
    path = result.uri.removeprefix("memory://")
    assert _sha256(fs.cat_file(path)) == _sha256(job.source)
    # The temporary file beside the destination is gone.
    assert fs.ls("/engine-test/results", detail=False) == [path]
    fs.rm("/engine-test", recursive=True)


def _s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def test_s3_download_is_identical_with_equal_parts(
    emulator: SutroEmulator, s3_bucket: str, s3_storage_options: dict, moto_endpoint: str
):
    # Three upload parts of 16 MiB, 16 MiB and the rest, written from 4 MiB download parts.
    job = Job(emulator, emulator.add_job(target_size_bytes=40 * MIB))
    destination = resolve_destination(
        f"s3://{s3_bucket}/sutro/", storage_options=s3_storage_options
    )

    result = download_artifact(job.get_urls, destination, settings=SETTINGS)

    client = _s3_client(moto_endpoint)
    key = result.uri.removeprefix(f"s3://{s3_bucket}/")
    body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert _sha256(body) == _sha256(job.source)

    block = s3_part_size_for(len(job.source))
    first = client.head_object(Bucket=s3_bucket, Key=key, PartNumber=1)
    part_count = first["PartsCount"]
    sizes = [
        client.head_object(Bucket=s3_bucket, Key=key, PartNumber=number)["ContentLength"]
        for number in range(1, part_count + 1)
    ]
    assert part_count == -(-len(job.source) // block)
    assert part_count >= 3
    assert sizes[:-1] == [block] * (part_count - 1)
    assert 0 < sizes[-1] <= block
    assert sum(sizes) == len(job.source)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [item["Key"] for item in listed] == [key]


def test_s3_truncated_parquet_aborts_upload(
    emulator: SutroEmulator, s3_bucket: str, s3_storage_options: dict, moto_endpoint: str
):
    job = Job(emulator, emulator.add_job(target_size_bytes=36 * MIB))
    emulator.faults.truncated_parquet(job.job_id, missing_bytes=65536)

    with pytest.raises(DownloadError, match="PAR1"):
        download_artifact(
            job.get_urls,
            f"s3://{s3_bucket}/sutro/",
            storage_options=s3_storage_options,
            settings=SETTINGS,
        )

    client = _s3_client(moto_endpoint)
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_artifact_replaced_mid_download_restarts(emulator: SutroEmulator, out: Path):
    job = Job(emulator, emulator.add_job(target_size_bytes=20 * MIB))
    old_etag = emulator.artifact_etag(job.job_id)
    emulator.faults.replace_object_after(job.job_id, after_bytes=6 * MIB)
    # One part at a time, so the third part is requested after the replacement.
    settings = TransferSettings(part_size_bytes=4 * MIB, max_concurrency=1)

    result = download_artifact(job.get_urls, str(out) + "/", settings=settings)

    assert result.etag != old_etag
    assert result.etag == emulator.artifact_etag(job.job_id)
    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)
    assert any(request.status == 412 for request in job.storage_requests("GET"))


def test_expired_urls_are_refreshed(emulator: SutroEmulator, out: Path):
    job = Job(emulator, emulator.add_job(target_size_bytes=12 * MIB))
    emulator.faults.url_lifetime(1, style="r2", r2_status=400)
    # About 3 s of transfer on URLs that live 1 s.
    emulator.faults.trickle(4 * MIB)
    settings = TransferSettings(
        part_size_bytes=2 * MIB, max_concurrency=2, backoff_base_seconds=0.01
    )

    result = download_artifact(job.get_urls, str(out) + "/", settings=settings)

    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)
    assert job.url_calls >= 2


def test_wrong_content_range_once_is_retried(job: Job, out: Path):
    job.emulator.faults.wrong_content_range(times=1)

    result = download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)
    assert len(job.storage_requests("GET")) == -(-len(job.source) // SETTINGS.part_size_bytes) + 1


def test_wrong_content_range_always_fails(job: Job, out: Path):
    job.emulator.faults.wrong_content_range(times=None)

    with pytest.raises(StorageError, match="Content-Range"):
        download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    assert not any(path.suffix == ".parquet" for path in out.iterdir())


def test_range_ignored_downloads_single_stream(job: Job, out: Path):
    job.emulator.faults.ignore_range()

    result = download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)


def test_reset_and_truncate_are_retried(job: Job, out: Path):
    job.emulator.faults.reset_connection(1 * MIB, times=2)
    job.emulator.faults.truncate_body(3 * MIB, times=2)

    result = download_artifact(job.get_urls, str(out) + "/", settings=SETTINGS)

    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)


def test_stall_is_retried_quickly(job: Job, out: Path):
    job.emulator.faults.stall_body(30.0, after_bytes=MIB, times=1)
    settings = TransferSettings(
        part_size_bytes=4 * MIB,
        max_concurrency=4,
        read_timeout_seconds=0.5,
        backoff_base_seconds=0.01,
    )

    result = download_artifact(job.get_urls, str(out) + "/", settings=settings)

    published = out / result.uri.rsplit("/", 1)[1]
    assert _sha256(published.read_bytes()) == _sha256(job.source)
    assert result.seconds < 10


def test_canary_never_in_logs_or_errors(job: Job, out: Path, caplog):
    urls = job.get_urls()
    signature = urls.get_url.rsplit("X-Amz-Signature=", 1)[1]
    job.emulator.faults.status_sequence([403], method="GET", times=None)

    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as caught:
        download_artifact(job.get_urls, str(out) + "/", urls=urls, settings=SETTINGS)

    text = caplog.text + str(caught.value) + repr(caught.value)
    assert signature not in text
    assert "X-Amz-Signature=" not in str(caught.value)
    for path in out.iterdir():
        assert signature.encode() not in path.read_bytes()
