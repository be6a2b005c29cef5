"""Destinations that cannot work are rejected before any request is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_sutro import InvalidInputError, SutroResource
from dagster_sutro.testing import SutroEmulator
from dagster_sutro.transfer import resolve_destination


@pytest.fixture
def regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "regular.txt"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize(
    ("make_destination", "message"),
    [
        (lambda tmp, file: f"{file}/results.parquet", "is a file, not a directory"),
        (lambda tmp, file: f"{file}/nested/", "is a file, not a directory"),
        (lambda tmp, file: str(tmp), "is an existing directory"),
        (lambda tmp, file: "file://", "names no directory"),
        (lambda tmp, file: "s3:///results/", "names no bucket"),
        (lambda tmp, file: "", "non-empty"),
        (lambda tmp, file: "nosuchfs://x/", "could not be resolved"),
    ],
)
def test_unusable_destination_rejected(
    tmp_path: Path, regular_file: Path, make_destination, message: str
) -> None:
    destination = make_destination(tmp_path, regular_file)

    with pytest.raises(InvalidInputError, match=message):
        resolve_destination(destination)


def test_new_nested_directory_accepted(tmp_path: Path) -> None:
    destination = resolve_destination(f"{tmp_path}/a/b/")

    assert destination.is_directory
    assert destination.path == str(tmp_path / "a" / "b")


def test_download_rejects_before_requests(
    emulator: SutroEmulator, sutro: SutroResource, regular_file: Path
) -> None:
    job_id = emulator.add_job(num_rows=5)
    emulator.clear_requests()

    with pytest.raises(InvalidInputError, match=str(regular_file)):
        sutro.download_results(job_id, f"{regular_file}/out.parquet")

    assert emulator.requests == []
    assert regular_file.read_text() == "not a directory"


def test_planted_symlinks_not_followed(
    emulator: SutroEmulator, sutro: SutroResource, tmp_path: Path
) -> None:
    job_id = emulator.add_job(num_rows=50)
    victim = tmp_path / "victim.txt"
    victim_state = tmp_path / "victim-state.txt"
    victim.write_text("keep me")
    victim_state.write_text("keep me too")
    destination = tmp_path / "out.parquet"
    (tmp_path / "out.parquet.sutro-partial").symlink_to(victim)
    (tmp_path / "out.parquet.sutro-partial.json.tmp").symlink_to(victim_state)

    result = sutro.download_results(job_id, str(destination), part_size_bytes=8 * 1024 * 1024)

    assert result.size_bytes == emulator.artifact_path(job_id).stat().st_size
    assert victim.read_text() == "keep me"
    assert victim_state.read_text() == "keep me too"
    assert not destination.is_symlink()
    assert destination.read_bytes() == emulator.artifact_path(job_id).read_bytes()
