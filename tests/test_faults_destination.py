"""Destination faults: a failed write names the destination and leaves an earlier file as it was.

Tests run as root, so file permissions cannot make a directory unwritable. The faults come from
a path under a regular file, a read-only or full tmpfs (when mounting is permitted), a missing
bucket on moto's S3 server, and, for what no local filesystem produces, fsspec filesystems whose
writers raise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from faults_support import (
    MIB,
    FullDiskMemoryFileSystem,
    ReadOnlyMemoryFileSystem,
    ResultsUrls,
    fast_settings,
    register_filesystem,
    sha256_of,
    storage_gets,
    write_earlier_file,
)
from fsspec.implementations.memory import MemoryFile

from dagster_sutro import SutroResource, SutroResultsConfig, build_sutro_results_asset
from dagster_sutro.errors import ArtifactChangedError, DestinationError, InvalidInputError
from dagster_sutro.testing import SutroEmulator
from dagster_sutro.transfer import download_artifact, resolve_destination

TMPFS_SIZE_BYTES = 8 * MIB


def _listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _mount(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, or a skip where this process may not mount filesystems."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", f"size={TMPFS_SIZE_BYTES}", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


# Unwritable destinations


def test_destination_under_file_fails_early(emulator: SutroEmulator, tmp_path: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=2 * MIB))
    blocker = tmp_path / "results.txt"
    earlier = write_earlier_file(blocker)
    emulator.clear_requests()

    with pytest.raises(InvalidInputError) as raised:
        download_artifact(urls, f"{blocker}/sutro/", settings=fast_settings())

    message = str(raised.value)
    assert f"{blocker}/sutro/" in message
    assert f"{blocker} is a file, not a directory" in message
    assert blocker.read_bytes() == earlier
    assert urls.calls == 0
    assert emulator.requests == []


def test_destination_turned_into_file_fails_before_get(
    emulator: SutroEmulator, tmp_path: Path
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=2 * MIB))
    directory = tmp_path / "results"
    directory.mkdir()
    destination = resolve_destination(f"{directory}/sutro/")
    # The directory becomes a file after the destination was checked.
    directory.rmdir()
    earlier = write_earlier_file(directory)

    with pytest.raises(DestinationError) as raised:
        download_artifact(urls, destination, settings=fast_settings())

    message = str(raised.value)
    assert f"file://{directory}/sutro/{urls.filename}" in message
    assert f"{directory} is a file, not a directory" in message
    assert directory.read_bytes() == earlier
    assert storage_gets(emulator) == []


def test_destination_under_file_fails_run(
    emulator: SutroEmulator, sutro: SutroResource, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=30)
    blocker = tmp_path / "results.txt"
    earlier = write_earlier_file(blocker)
    asset = build_sutro_results_asset(destination=f"{blocker}/sutro/")
    emulator.clear_requests()

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
    assert f"{blocker}/sutro/" in error.message
    assert "is a file, not a directory" in error.message
    assert blocker.read_bytes() == earlier
    assert emulator.requests == []


def test_read_only_filesystem_keeps_earlier_file(
    emulator: SutroEmulator, small_tmpfs: Path
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=2 * MIB))
    destination = small_tmpfs / urls.filename
    earlier = write_earlier_file(destination)
    remounted = _mount("-o", "remount,ro", str(small_tmpfs))
    assert remounted.returncode == 0, remounted.stderr

    with pytest.raises(DestinationError) as raised:
        download_artifact(urls, f"{small_tmpfs}/", settings=fast_settings())

    message = str(raised.value)
    assert f"file://{destination}" in message
    assert "Read-only file system" in message
    assert destination.read_bytes() == earlier
    assert _listing(small_tmpfs) == [urls.filename]
    assert storage_gets(emulator) == []


def test_unwritable_fsspec_keeps_earlier_file(emulator: SutroEmulator) -> None:
    fs = register_filesystem(ReadOnlyMemoryFileSystem)
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=2 * MIB))
    path = f"/results/{urls.filename}"
    earlier = b"earlier results, kept on failure\n"
    # Written into the store directly, because the filesystem rejects writes.
    ReadOnlyMemoryFileSystem.store[path] = MemoryFile(fs, path, earlier)

    try:
        with pytest.raises(DestinationError) as raised:
            download_artifact(urls, "sutroreadonly://results/", settings=fast_settings())

        message = str(raised.value)
        assert f"Opening sutroreadonly://results/{urls.filename} failed" in message
        assert "PermissionError" in message
        assert "Permission denied" in message
        assert fs.cat_file(path) == earlier
        assert fs.ls("/results", detail=False) == [path]
        assert storage_gets(emulator) == []
    finally:
        fs.rm("/results", recursive=True)


# S3 destinations


@pytest.fixture
def s3_client(moto_endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.mark.parametrize(
    "size_bytes",
    [pytest.param(3 * MIB, id="single-put"), pytest.param(40 * MIB, id="multipart")],
)
def test_missing_s3_bucket_names_destination(
    emulator: SutroEmulator, s3_storage_options: dict, s3_client: Any, size_bytes: int
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=size_bytes))
    bucket = "no-such-bucket-for-results"

    with pytest.raises(DestinationError) as raised:
        download_artifact(
            urls,
            f"s3://{bucket}/sutro/",
            storage_options=s3_storage_options,
            settings=fast_settings(part_size_bytes=4 * MIB, max_concurrency=2),
        )

    message = str(raised.value)
    assert f"s3://{bucket}/sutro/{urls.filename}" in message
    assert "The specified bucket does not exist" in message
    buckets = [entry["Name"] for entry in s3_client.list_buckets()["Buckets"]]
    assert bucket not in buckets
    if size_bytes > 16 * MIB:
        # The first 16 MiB upload part fails, which stops the download early.
        fetched = sum(request.body_bytes for request in storage_gets(emulator))
        assert fetched < len(urls.source)


def test_s3_failure_keeps_earlier_object(
    emulator: SutroEmulator, s3_bucket: str, s3_storage_options: dict, s3_client: Any
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=40 * MIB))
    key = f"sutro/{urls.filename}"
    earlier = b"earlier results, kept on failure\n"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=earlier)
    # The object is replaced after 24 MiB, when one 16 MiB upload part has been sent.
    emulator.faults.replace_object_after(urls.job_id, 24 * MIB)
    settings = fast_settings(part_size_bytes=4 * MIB, max_concurrency=1, max_version_restarts=0)

    with pytest.raises(ArtifactChangedError):
        download_artifact(
            urls, f"s3://{s3_bucket}/sutro/", storage_options=s3_storage_options, settings=settings
        )

    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == earlier
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [item["Key"] for item in listed] == [key]


def test_s3_parts_equal_through_retries(
    emulator: SutroEmulator, s3_bucket: str, s3_storage_options: dict, s3_client: Any
) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=40 * MIB))
    # Broken and refused parts arrive late and out of order; the upload parts must not vary.
    emulator.faults.reset_connection(MIB + MIB // 3, times=2)
    emulator.faults.status_sequence([503, 503], method="GET")
    settings = fast_settings(part_size_bytes=3 * MIB, max_concurrency=4)

    result = download_artifact(
        urls, f"s3://{s3_bucket}/sutro/", storage_options=s3_storage_options, settings=settings
    )

    key = f"sutro/{urls.filename}"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert sha256_of(body) == sha256_of(urls.source)
    first = s3_client.head_object(Bucket=s3_bucket, Key=key, PartNumber=1)
    sizes = [
        s3_client.head_object(Bucket=s3_bucket, Key=key, PartNumber=number)["ContentLength"]
        for number in range(1, first["PartsCount"] + 1)
    ]
    assert len(sizes) >= 3
    assert len(set(sizes[:-1])) == 1
    assert sizes[-1] <= sizes[0]
    assert sum(sizes) == result.size_bytes
    assert len(storage_gets(emulator)) > -(-result.size_bytes // (3 * MIB))


# Full disks


def test_disk_without_room_fails_early(emulator: SutroEmulator, small_tmpfs: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=5 * MIB))
    destination = small_tmpfs / urls.filename
    earlier = write_earlier_file(destination, os.urandom(4 * MIB))

    with pytest.raises(DestinationError) as raised:
        download_artifact(urls, f"{small_tmpfs}/", settings=fast_settings())

    message = str(raised.value)
    assert f"file://{destination}" in message
    assert "free but the artifact needs 5.0 MiB" in message
    assert destination.read_bytes() == earlier
    assert _listing(small_tmpfs) == [urls.filename]
    assert storage_gets(emulator) == []


def _fill_disk_after_first_part(state: Path, filler: Path) -> threading.Thread:
    """Fill the filesystem once the state file records a finished part.

    A full disk cannot take a new state file either, so the part recorded before is what a
    later download resumes.
    """

    def fill() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(state.read_text())["finished_parts"]:
                    break
            time.sleep(0.005)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    return thread


def test_disk_filling_keeps_earlier_file(emulator: SutroEmulator, small_tmpfs: Path) -> None:
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=5 * MIB))
    destination = small_tmpfs / urls.filename
    earlier = write_earlier_file(destination, os.urandom(MIB))
    emulator.faults.trickle(4 * MIB)
    filler = small_tmpfs / "filler"
    filling = _fill_disk_after_first_part(Path(f"{destination}.sutro-partial.json"), filler)
    settings = fast_settings(max_concurrency=1)

    with pytest.raises(DestinationError) as raised:
        download_artifact(urls, f"{small_tmpfs}/", settings=settings)
    filling.join()

    message = str(raised.value)
    assert f"file://{destination}" in message
    assert "No space left on device" in message
    assert destination.read_bytes() == earlier

    # Once space is free again, the next download resumes from the bytes already written.
    filler.unlink()
    emulator.faults.clear()
    result = download_artifact(urls, f"{small_tmpfs}/", settings=settings)

    assert sha256_of(destination) == sha256_of(urls.source)
    assert result.resumed_bytes >= MIB
    assert result.resumed_bytes + result.bytes_transferred == len(urls.source)
    assert _listing(small_tmpfs) == [urls.filename]


def test_full_fsspec_keeps_earlier_file(emulator: SutroEmulator) -> None:
    fs = register_filesystem(FullDiskMemoryFileSystem)
    urls = ResultsUrls(emulator, emulator.add_job(target_size_bytes=4 * MIB))
    path = f"/results/{urls.filename}"
    earlier = b"earlier results, kept on failure\n"
    fs.pipe_file(path, earlier)

    try:
        with pytest.raises(DestinationError) as raised:
            download_artifact(urls, "sutrofull://results/", settings=fast_settings())

        message = str(raised.value)
        assert f"Writing sutrofull://results/{urls.filename} failed" in message
        assert "No space left on device" in message
        assert fs.cat_file(path) == earlier
        # The temporary file beside the destination is removed.
        assert fs.ls("/results", detail=False) == [path]
    finally:
        fs.rm("/results", recursive=True)
