"""Storage faults against the emulator, over real sockets with real SigV4 URLs.

Every download either ends byte-identical to the object the emulator serves, or fails with a
clear error while an earlier file at the destination keeps its bytes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path

import boto3
import dagster as dg
import fsspec
import pytest
import requests
import urllib3
from faults_support import (
    MIB,
    ResultsUrls,
    fast_settings,
    part_count,
    range_start,
    sha256_of,
    signature_of,
    storage_gets,
    with_broken_get_signature,
    write_earlier_file,
)

from dagster_sutro import SutroResource, SutroResultsConfig, build_sutro_results_asset
from dagster_sutro.errors import ArtifactChangedError, DownloadError, StorageError
from dagster_sutro.models import ResultsDownloadUrl
from dagster_sutro.testing import SutroEmulator
from dagster_sutro.transfer import download_artifact, head_artifact

logger = logging.getLogger(__name__)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The destination directory, apart from the emulator's files under ``tmp_path``."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.fixture
def body_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record ``(requested, returned)`` sizes of every undecoded urllib3 body read.

    The engine reads storage bodies with ``decode_content=False``; the API client and error
    bodies read differently, so they are not recorded.
    """
    reads: list[tuple[int, int]] = []
    lock = threading.Lock()
    original = urllib3.response.HTTPResponse.read

    def read(
        self: urllib3.response.HTTPResponse,
        amt: int | None = None,
        decode_content: bool | None = None,
        cache_content: bool = False,
    ) -> bytes:
        data = original(self, amt, decode_content=decode_content, cache_content=cache_content)
        if decode_content is False and amt:
            with lock:
                reads.append((amt, len(data)))
        return data

    monkeypatch.setattr(urllib3.response.HTTPResponse, "read", read)
    return reads


def _published(out: Path, urls: ResultsUrls) -> Path:
    return out / urls.filename


def _listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# Short bodies


def test_truncated_body_resumes_at_cut_byte(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=4 * MIB))
    emulator.faults.truncate_body(MIB // 2, times=1)
    settings = fast_settings(max_concurrency=1)

    result = download_artifact(urls, f"{out}/", settings=settings)

    source = urls.source
    assert sha256_of(_published(out, urls)) == sha256_of(source)
    gets = storage_gets(emulator)
    assert len(gets) == part_count(len(source), MIB) + 1
    assert gets[0].body_bytes == MIB // 2
    # The retry requests the rest of part 0 only, from the first byte that did not arrive.
    assert gets[1].headers["Range"] == f"bytes={MIB // 2}-{MIB - 1}"
    assert result.bytes_transferred == len(source)
    assert _listing(out) == [urls.filename]


def test_body_always_cut_keeps_earlier_file(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=3 * MIB))
    earlier = write_earlier_file(_published(out, urls))
    emulator.faults.truncate_body(0, times=None)
    settings = fast_settings(max_concurrency=1, max_attempts_per_part=3)

    with pytest.raises(StorageError) as raised:
        download_artifact(urls, f"{out}/", settings=settings)

    message = str(raised.value)
    assert "failed 3 times" in message
    assert "the body ended after 0 of" in message or "connection broke after 0 of" in message
    assert _published(out, urls).read_bytes() == earlier
    assert len(storage_gets(emulator)) == 3


def test_failed_download_resumes_where_it_stopped(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=6 * MIB))
    earlier = write_earlier_file(_published(out, urls))
    part = 4 * MIB
    # Each attempt of part 0 delivers 1.5 MiB before the body ends, and one attempt is allowed.
    emulator.faults.truncate_body(MIB + MIB // 2, times=1)
    failing = fast_settings(part_size_bytes=part, max_concurrency=1, max_attempts_per_part=1)

    with pytest.raises(StorageError, match="failed 1 times"):
        download_artifact(urls, f"{out}/", settings=failing)
    assert _published(out, urls).read_bytes() == earlier
    emulator.clear_requests()

    result = download_artifact(urls, f"{out}/", settings=fast_settings(part_size_bytes=part))

    source = urls.source
    assert sha256_of(_published(out, urls)) == sha256_of(source)
    first_range = min(range_start(request) or 0 for request in storage_gets(emulator))
    assert first_range == MIB + MIB // 2
    assert result.resumed_bytes == MIB + MIB // 2
    assert result.bytes_transferred == len(source) - (MIB + MIB // 2)
    assert _listing(out) == [urls.filename]


# Read size


def test_body_reads_are_at_least_one_mib(
    emulator: SutroEmulator, out: Path, body_reads: list[tuple[int, int]]
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=9 * MIB))
    part = 4 * MIB

    download_artifact(urls, f"{out}/", settings=fast_settings(part_size_bytes=part))

    size = len(urls.source)
    lengths = [min(part, size - start) for start in range(0, size, part)]
    assert len(body_reads) == sum(-(-length // MIB) for length in lengths)
    last_reads = {length % MIB for length in lengths if length % MIB}
    for requested, returned in body_reads:
        assert requested == returned
        assert requested == MIB or requested in last_reads


def test_read_chunk_setting_reaches_each_read(
    emulator: SutroEmulator, out: Path, body_reads: list[tuple[int, int]]
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=8 * MIB))
    settings = fast_settings(part_size_bytes=8 * MIB, read_chunk_bytes=4 * MIB)

    download_artifact(urls, f"{out}/", settings=settings)

    size = len(urls.source)
    assert len(body_reads) == -(-size // (4 * MIB))
    assert [requested for requested, _ in body_reads[:-1]] == [4 * MIB] * (len(body_reads) - 1)


def test_256_mib_loopback_download_completes(
    emulator: SutroEmulator, out: Path, body_reads: list[tuple[int, int]]
) -> None:
    job_id = emulator.add_job(target_size_bytes=256 * MIB)
    source_path = emulator.artifact_path(job_id)
    urls = ResultsUrls(emulator, job_id)
    settings = fast_settings(part_size_bytes=16 * MIB, max_concurrency=4)

    result = download_artifact(urls, f"{out}/", settings=settings)

    logger.info(
        "256 MiB loopback download: %.1f MiB in %.2f s, %.0f MiB/s, %d body reads",
        result.size_bytes / MIB,
        result.seconds,
        result.mib_per_second,
        len(body_reads),
    )
    assert sha256_of(_published(out, urls)) == sha256_of(source_path)
    # One read per MiB: a byte-at-a-time loop would make millions of calls.
    assert len(body_reads) <= result.size_bytes // MIB + part_count(result.size_bytes, 16 * MIB)


# Broken connections and slow bodies


def test_reset_resumes_from_last_good_byte(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=12 * MIB))
    part = 5 * MIB
    emulator.faults.reset_connection(2 * MIB, times=1)

    result = download_artifact(
        urls, f"{out}/", settings=fast_settings(part_size_bytes=part, max_concurrency=1)
    )

    source = urls.source
    assert sha256_of(_published(out, urls)) == sha256_of(source)
    gets = storage_gets(emulator)
    assert gets[0].headers["Range"] == f"bytes=0-{part - 1}"
    assert gets[0].body_bytes == 2 * MIB
    assert gets[1].headers["Range"] == f"bytes={2 * MIB}-{part - 1}"
    assert len(gets) == part_count(len(source), part) + 1
    assert sum(request.body_bytes for request in gets) == len(source)
    assert result.bytes_transferred == len(source)


def test_steady_trickle_outlasts_read_timeout(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=3 * MIB))
    emulator.faults.trickle(MIB)
    settings = fast_settings(max_concurrency=1, read_timeout_seconds=0.5)

    download_artifact(urls, f"{out}/", settings=settings)

    source = urls.source
    assert sha256_of(_published(out, urls)) == sha256_of(source)
    gets = storage_gets(emulator)
    # No request was cut off: one GET per part, each lasting longer than the read timeout.
    assert len(gets) == part_count(len(source), MIB)
    assert all(request.status == 206 for request in gets)
    for earlier, later in itertools.pairwise(gets):
        assert later.time - earlier.time > settings.read_timeout_seconds


def test_stalled_body_is_retried_before_stall_ends(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=4 * MIB))
    stall_seconds = 20.0
    emulator.faults.stall_body(stall_seconds, after_bytes=MIB, times=1)
    settings = fast_settings(part_size_bytes=2 * MIB, max_concurrency=1, read_timeout_seconds=0.5)

    download_artifact(urls, f"{out}/", settings=settings)

    assert sha256_of(_published(out, urls)) == sha256_of(urls.source)
    stalled, retry = storage_gets(emulator)[:2]
    assert stalled.body_bytes == MIB
    assert range_start(retry) == MIB
    waited = retry.time - stalled.time
    assert settings.read_timeout_seconds <= waited < stall_seconds / 2


# Range ignored


def test_range_ignored_restarts_from_zero(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=4 * MIB))
    # A first run leaves half of part 0 in the partial file.
    emulator.faults.truncate_body(MIB // 2, times=1)
    with pytest.raises(StorageError):
        download_artifact(
            urls, f"{out}/", settings=fast_settings(max_concurrency=1, max_attempts_per_part=1)
        )
    emulator.clear_requests()
    emulator.faults.ignore_range()

    result = download_artifact(urls, f"{out}/", settings=fast_settings(max_concurrency=1))

    source = urls.source
    published = _published(out, urls).read_bytes()
    assert len(published) == len(source)
    assert sha256_of(published) == sha256_of(source)
    gets = storage_gets(emulator)
    # The resume asked for the rest of part 0, got the whole object, and did not append it.
    assert range_start(gets[0]) == MIB // 2
    assert gets[0].status == 200
    whole = gets[-1]
    assert "Range" not in whole.headers
    assert whole.status == 200
    assert whole.body_bytes == len(source)
    assert len(gets) == 2
    assert result.resumed_bytes == 0
    assert _listing(out) == [urls.filename]


def test_range_ignored_streams_to_memory(emulator: SutroEmulator) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=4 * MIB))
    emulator.faults.ignore_range()
    settings = fast_settings(max_concurrency=3)

    result = download_artifact(urls, "memory://range-ignored/", settings=settings)

    fs = fsspec.filesystem("memory")
    path = result.uri.removeprefix("memory://")
    try:
        assert sha256_of(fs.cat_file(path)) == sha256_of(urls.source)
        assert fs.ls("/range-ignored", detail=False) == [path]
    finally:
        fs.rm("/range-ignored", recursive=True)
    gets = storage_gets(emulator)
    ranged = [request for request in gets if "Range" in request.headers]
    unranged = [request for request in gets if "Range" not in request.headers]
    assert 1 <= len(ranged) <= settings.max_concurrency
    assert len(unranged) == 1
    assert unranged[0].body_bytes == len(urls.source)


# What is sent to storage


def _download_with_retries(emulator: SutroEmulator, out: Path) -> ResultsUrls:
    """Download through a reset, a 503 and a short URL lifetime, so retries and refreshes run."""
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=4 * MIB))
    emulator.faults.reset_connection(MIB // 4, times=1)
    emulator.faults.status_sequence([503], method="GET")
    emulator.faults.url_lifetime(2)
    emulator.faults.trickle(4 * MIB)
    download_artifact(urls, f"{out}/", settings=fast_settings(max_concurrency=2))
    assert sha256_of(_published(out, urls)) == sha256_of(urls.source)
    return urls


def test_head_sent_only_to_head_url(emulator: SutroEmulator, out: Path) -> None:
    urls = _download_with_retries(emulator, out)

    heads = [request for request in emulator.storage_requests if request.method == "HEAD"]
    assert heads
    for request in heads:
        assert request.query["X-Amz-Signature"] in urls.head_signatures()
        assert request.status == 200
    for request in storage_gets(emulator):
        assert request.query["X-Amz-Signature"] in urls.get_signatures()
    # The storage server rejects a HEAD on the GET URL, as S3 and R2 do.
    rejected = requests.head(urls().get_url, timeout=5)
    assert rejected.status_code == 403


def test_no_authorization_sent_to_storage(
    emulator: SutroEmulator, out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .netrc entry for the storage host makes plain requests add an Authorization header.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login storage-user password storage-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    urls = _download_with_retries(emulator, out)

    for request in emulator.storage_requests:
        names = {name.lower() for name in request.headers}
        assert "authorization" not in names
        assert emulator.api_key not in " ".join(request.headers.values())
        assert emulator.api_key not in request.path
        assert emulator.api_key not in " ".join(request.query.values())
        assert request.status != 400
    # The same environment breaks a plain requests call, so the scenario is armed.
    plain = requests.get(urls().get_url, timeout=5)
    assert plain.status_code == 400
    assert "Only one auth mechanism allowed" in plain.text


def test_no_amz_headers_sent_to_storage(emulator: SutroEmulator, out: Path) -> None:
    urls = _download_with_retries(emulator, out)

    for request in emulator.storage_requests:
        names = {name.lower() for name in request.headers}
        assert not any(name.startswith("x-amz-") for name in names)
        assert names <= {"host", "accept-encoding", "range", "if-match"}
    unsigned = requests.get(urls().get_url, headers={"x-amz-checksum-mode": "ENABLED"}, timeout=5)
    assert unsigned.status_code == 403
    assert "headers present in the request which were not signed" in unsigned.text


def test_retries_add_only_their_gets(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=5 * MIB))
    emulator.faults.status_sequence([503], method="GET")
    emulator.faults.reset_connection(MIB // 4, times=1)

    download_artifact(urls, f"{out}/", settings=fast_settings())

    source = urls.source
    etag = emulator.artifact_etag(urls.job_id)
    methods = [request.method for request in emulator.storage_requests]
    assert methods.count("HEAD") == 1
    assert methods.count("GET") == part_count(len(source), MIB) + 2
    assert set(methods) == {"HEAD", "GET"}
    for request in storage_gets(emulator):
        assert request.headers["If-Match"] == etag
        assert request.headers["Range"].startswith("bytes=")
    assert [request.path for request in emulator.api_requests] == [
        f"/v1/jobs/{urls.job_id}/results-url"
    ]
    assert urls.calls == 1


def test_asset_run_one_get_per_part(emulator: SutroEmulator, tmp_path: Path) -> None:
    job_id = emulator.add_job(target_size_bytes=3 * MIB)
    source = emulator.artifact_path(job_id)
    emulator.clear_requests()
    asset = build_sutro_results_asset(destination=f"{tmp_path / 'results'}/")
    sutro = SutroResource(
        api_key=emulator.api_key, api_url=emulator.api_url, part_size_bytes=MIB, max_retries=0
    )

    result = dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
    )

    assert result.success
    assert sha256_of(tmp_path / "results" / source.name) == sha256_of(source)
    methods = [request.method for request in emulator.storage_requests]
    assert methods.count("HEAD") == 1
    assert methods.count("GET") == part_count(source.stat().st_size, MIB)
    results_url_calls = [r for r in emulator.api_requests if r.path.endswith("/results-url")]
    assert len(results_url_calls) == 1


# A replaced object


@pytest.fixture
def s3_client(moto_endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def test_replaced_object_publishes_new_version(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=6 * MIB))
    old_source = urls.source
    old_etag = emulator.artifact_etag(urls.job_id)
    emulator.faults.replace_object_after(urls.job_id, 3 * MIB)

    result = download_artifact(urls, f"{out}/", settings=fast_settings(max_concurrency=1))

    new_source = urls.source
    new_etag = emulator.artifact_etag(urls.job_id)
    assert new_etag != old_etag
    assert result.etag == new_etag
    assert sha256_of(_published(out, urls)) == sha256_of(new_source)
    assert sha256_of(new_source) != sha256_of(old_source)
    gets = storage_gets(emulator)
    assert [request.status for request in gets[:4]] == [206, 206, 206, 412]
    after = gets[4:]
    assert all(request.headers["If-Match"] == new_etag for request in after)
    assert [range_start(request) for request in after] == list(range(0, len(new_source), MIB))
    assert urls.calls == 2
    assert _listing(out) == [urls.filename]


def test_parallel_parts_never_mix_versions(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=6 * MIB))
    old_source = urls.source
    old_etag = emulator.artifact_etag(urls.job_id)
    emulator.faults.replace_object_after(urls.job_id, 3 * MIB)

    result = download_artifact(urls, f"{out}/", settings=fast_settings(max_concurrency=3))

    # Responses that started before the replacement finish with the old bytes, so either
    # version may win. The published file must be wholly the version the result names.
    published = _published(out, urls).read_bytes()
    if result.etag == old_etag:
        assert sha256_of(published) == sha256_of(old_source)
    else:
        assert result.etag == emulator.artifact_etag(urls.job_id)
        assert sha256_of(published) == sha256_of(urls.source)
    assert _listing(out) == [urls.filename]


def test_replaced_object_one_version_on_s3(
    emulator: SutroEmulator, s3_bucket: str, s3_storage_options: dict, s3_client: object
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=6 * MIB))
    emulator.faults.replace_object_after(urls.job_id, 3 * MIB)

    result = download_artifact(
        urls,
        f"s3://{s3_bucket}/sutro/",
        storage_options=s3_storage_options,
        settings=fast_settings(max_concurrency=1),
    )

    key = f"sutro/{urls.filename}"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert sha256_of(body) == sha256_of(urls.source)
    assert result.etag == emulator.artifact_etag(urls.job_id)
    assert any(request.status == 412 for request in storage_gets(emulator))
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]  # type: ignore[attr-defined]
    assert [item["Key"] for item in listed] == [key]
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket)  # type: ignore[attr-defined]
    assert uploads.get("Uploads", []) == []


def test_replaced_object_without_restart_fails(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=6 * MIB))
    earlier = write_earlier_file(_published(out, urls))
    old_etag = emulator.artifact_etag(urls.job_id)
    emulator.faults.replace_object_after(urls.job_id, 3 * MIB)
    settings = fast_settings(max_concurrency=1, max_version_restarts=0)

    with pytest.raises(ArtifactChangedError) as raised:
        download_artifact(urls, f"{out}/", settings=settings)

    new_etag = emulator.artifact_etag(urls.job_id)
    assert raised.value.expected_etag == old_etag
    assert raised.value.actual_etag == new_etag
    assert old_etag in str(raised.value)
    assert new_etag in str(raised.value)
    assert "max_version_restarts=0" in str(raised.value)
    assert _published(out, urls).read_bytes() == earlier
    assert _listing(out) == [urls.filename]


# Expired URLs


def test_short_lived_urls_refreshed_during_download(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=5 * MIB))
    emulator.faults.url_lifetime(2)
    # About 5 s of transfer on URLs that live 2 s.
    emulator.faults.trickle(MIB)

    result = download_artifact(urls, f"{out}/", settings=fast_settings(max_concurrency=1))

    source = urls.source
    parts = part_count(len(source), MIB)
    assert sha256_of(_published(out, urls)) == sha256_of(source)
    assert result.seconds > 2
    assert 2 <= urls.calls <= 2 * parts + 1
    gets = storage_gets(emulator)
    assert sum(1 for request in gets if request.status == 206) == parts
    assert all(request.status in (206, 403) for request in gets)
    assert result.bytes_transferred == len(source)


EXPIRY_STYLES = [
    pytest.param("s3", 403, "AccessDenied", id="s3-access-denied"),
    pytest.param("r2", 403, "ExpiredRequest", id="r2-expired-403"),
    pytest.param("r2", 400, "ExpiredRequest", id="r2-expired-400"),
]


def _advance_clock_when_sent(
    emulator: SutroEmulator, body_bytes: int, seconds: float
) -> threading.Thread:
    """Advance the emulator clock once the first GET has sent ``body_bytes``."""

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            gets = storage_gets(emulator)
            if gets and gets[0].body_bytes >= body_bytes:
                emulator.advance_clock(seconds)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("style", "status", "code"), EXPIRY_STYLES)
def test_expired_url_mid_part_resumes(
    emulator: SutroEmulator, out: Path, style: str, status: int, code: str
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=5 * MIB))
    emulator.faults.url_lifetime(2, style=style, r2_status=status)  # type: ignore[arg-type]
    emulator.faults.stall_body(30.0, after_bytes=MIB, times=1)
    # Storage's clock passes the URLs' expiry during the stall, while this machine's clock
    # does not, so the retry meets an expired URL and storage rejects it.
    watcher = _advance_clock_when_sent(emulator, MIB, 5.0)
    settings = fast_settings(
        part_size_bytes=3 * MIB,
        max_concurrency=1,
        read_timeout_seconds=0.5,
        refresh_margin_seconds=0.0,
    )

    result = download_artifact(urls, f"{out}/", settings=settings)
    watcher.join()

    source = urls.source
    assert sha256_of(_published(out, urls)) == sha256_of(source)
    stalled, expired, resumed = storage_gets(emulator)[:3]
    assert stalled.body_bytes == MIB
    assert expired.status == status
    assert range_start(expired) == MIB
    assert resumed.status == 206
    assert range_start(resumed) == MIB
    assert expired.query["X-Amz-Signature"] == signature_of(urls.issued[0].get_url)
    assert resumed.query["X-Amz-Signature"] == signature_of(urls.issued[1].get_url)
    assert urls.calls == 2
    assert result.bytes_transferred == len(source)


@pytest.mark.parametrize(("style", "status", "code"), EXPIRY_STYLES)
def test_urls_that_keep_expiring_fail(
    emulator: SutroEmulator, out: Path, style: str, status: int, code: str
) -> None:
    def expire_fresh_urls(call: int, issued: ResultsDownloadUrl) -> ResultsDownloadUrl:
        # Storage's clock runs ahead of the signer's, so each fresh URL arrives expired.
        if call > 1:
            emulator.advance_clock(10)
        return issued

    urls = ResultsUrls(
        emulator, emulator.add_job(target_size_bytes=3 * MIB), after_call=expire_fresh_urls
    )
    earlier = write_earlier_file(_published(out, urls))
    emulator.faults.url_lifetime(2, style=style, r2_status=status)  # type: ignore[arg-type]
    # No refresh ahead of expiry, so that every refresh follows a rejected request.
    settings = fast_settings(max_concurrency=1, max_url_refreshes=3, refresh_margin_seconds=0.0)
    first = urls()
    head = head_artifact(first, settings=settings)
    emulator.advance_clock(10)

    with pytest.raises(StorageError) as raised:
        download_artifact(urls, f"{out}/", urls=first, head=head, settings=settings)

    message = str(raised.value)
    assert "kept rejecting the presigned URLs" in message
    assert "max_url_refreshes=3" in message
    assert raised.value.status_code == 403
    assert urls.calls == 1 + 3
    gets = storage_gets(emulator)
    assert len(gets) == 1 + 3
    assert all(request.status == status for request in gets)
    assert _published(out, urls).read_bytes() == earlier


# Truncated Parquet


@pytest.mark.parametrize("missing_bytes", [1, 65536])
def test_truncated_parquet_not_published(
    emulator: SutroEmulator, out: Path, missing_bytes: int
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=3 * MIB))
    earlier = write_earlier_file(_published(out, urls))
    emulator.faults.truncated_parquet(urls.job_id, missing_bytes=missing_bytes)

    with pytest.raises(DownloadError) as raised:
        download_artifact(urls, f"{out}/", settings=fast_settings())

    message = str(raised.value)
    assert "Parquet magic bytes 'PAR1'" in message
    assert "was not published" in message
    # Every byte that storage declared arrived; only the footer check caught the truncation.
    gets = storage_gets(emulator)
    assert sum(request.body_bytes for request in gets) == urls.issued[0].artifact.size_bytes
    assert all(request.status == 206 for request in gets)
    assert _published(out, urls).read_bytes() == earlier
    assert _listing(out) == [urls.filename]


def test_truncated_parquet_fails_asset_run(emulator: SutroEmulator, tmp_path: Path) -> None:
    job_id = emulator.add_job(target_size_bytes=2 * MIB)
    emulator.faults.truncated_parquet(job_id)
    destination = tmp_path / "results"
    asset = build_sutro_results_asset(destination=f"{destination}/")
    sutro = SutroResource(api_key=emulator.api_key, api_url=emulator.api_url, max_retries=0)

    result = dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
        raise_on_error=False,
    )

    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    assert f"Download of Sutro job {job_id} failed" in error.message
    assert "Parquet magic bytes 'PAR1'" in error.message
    assert result.asset_materializations_for_node(asset.node_def.name) == []
    assert not destination.exists() or list(destination.iterdir()) == []


# Rejected requests


def _broken_signature(call: int, issued: ResultsDownloadUrl) -> ResultsDownloadUrl:
    return with_broken_get_signature(issued)


@pytest.mark.parametrize("code", ["SignatureDoesNotMatch", "AccessDenied"])
def test_other_403_fails_at_once(emulator: SutroEmulator, out: Path, code: str) -> None:
    job_id = emulator.add_job(target_size_bytes=4 * MIB)
    if code == "SignatureDoesNotMatch":
        urls = ResultsUrls(emulator, job_id, after_call=_broken_signature)
    else:
        urls = ResultsUrls(emulator, job_id)
        emulator.faults.status_sequence([403] * 20, method="GET")
    earlier = write_earlier_file(_published(out, urls))
    settings = fast_settings(max_concurrency=2)

    with pytest.raises(StorageError) as raised:
        download_artifact(urls, f"{out}/", settings=settings)

    assert raised.value.status_code == 403
    assert raised.value.code == code
    assert f"HTTP 403 ({code})" in str(raised.value)
    gets = storage_gets(emulator)
    assert 1 <= len(gets) <= settings.max_concurrency
    assert all(request.status == 403 for request in gets)
    assert urls.calls == 1
    assert _published(out, urls).read_bytes() == earlier


def test_storage_403_fails_asset_run(emulator: SutroEmulator, tmp_path: Path) -> None:
    job_id = emulator.add_job(target_size_bytes=3 * MIB)
    emulator.faults.status_sequence([403] * 20, method="GET")
    asset = build_sutro_results_asset(destination=f"{tmp_path / 'results'}/")
    sutro = SutroResource(
        api_key=emulator.api_key,
        api_url=emulator.api_url,
        part_size_bytes=MIB,
        max_concurrency=2,
        max_retries=0,
    )

    result = dg.materialize(
        [asset],
        resources={"sutro": sutro},
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
        raise_on_error=False,
    )

    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    assert "HTTP 403 (AccessDenied)" in error.message
    assert job_id in error.message
    assert 1 <= len(storage_gets(emulator)) <= 2


def test_slowdown_retried_with_backoff(
    emulator: SutroEmulator, out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=2 * MIB))
    emulator.faults.status_sequence([503, 503], method="GET")
    settings = fast_settings(max_concurrency=1, backoff_base_seconds=0.2, backoff_max_seconds=1.0)

    with caplog.at_level(logging.WARNING, logger="dagster_sutro.transfer"):
        download_artifact(urls, f"{out}/", settings=settings)

    assert sha256_of(_published(out, urls)) == sha256_of(urls.source)
    first, second, third = storage_gets(emulator)[:3]
    assert [first.status, second.status, third.status] == [503, 503, 206]
    assert first.headers["Range"] == second.headers["Range"] == third.headers["Range"]
    # Each delay is at least half of its ceiling: 0.2 s, then 0.4 s.
    assert second.time - first.time >= 0.1
    assert third.time - second.time >= 0.2
    retries = [record.getMessage() for record in caplog.records if "Retrying" in record.msg]
    assert len(retries) == 2
    assert "HTTP 503 (SlowDown)" in retries[0]
    assert "attempt 1 of 5" in retries[0]
    assert "attempt 2 of 5" in retries[1]


def test_slowdown_retry_after_is_honoured(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=MIB))
    emulator.faults.status_sequence([503], method="GET", retry_after=1)
    settings = fast_settings(max_concurrency=1, backoff_max_seconds=2.0)

    download_artifact(urls, f"{out}/", settings=settings)

    assert sha256_of(_published(out, urls)) == sha256_of(urls.source)
    slowed, retry = storage_gets(emulator)[:2]
    assert slowed.status == 503
    assert retry.time - slowed.time >= 1.0


def test_persistent_slowdown_fails_bounded(emulator: SutroEmulator, out: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=3 * MIB))
    earlier = write_earlier_file(_published(out, urls))
    emulator.faults.status_sequence([503] * 50, method="GET")
    settings = fast_settings(max_concurrency=2, max_attempts_per_part=3)

    with pytest.raises(StorageError) as raised:
        download_artifact(urls, f"{out}/", settings=settings)

    assert raised.value.status_code == 503
    assert raised.value.code == "SlowDown"
    assert "failed 3 times" in str(raised.value)
    assert len(storage_gets(emulator)) <= settings.max_attempts_per_part * settings.max_concurrency
    assert _published(out, urls).read_bytes() == earlier
