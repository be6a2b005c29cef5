"""Unit tests of the transfer engine's pieces that need no server."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_sutro.errors import DestinationError, DownloadError, InvalidInputError
from dagster_sutro.transfer import (
    Destination,
    TransferSettings,
    resolve_destination,
    s3_part_size_for,
)
from dagster_sutro.transfer.fetch import backoff_seconds
from dagster_sutro.transfer.local import (
    PARTIAL_SUFFIX,
    STATE_SUFFIX,
    LocalTarget,
    ResumeState,
    artifact_key_sha256,
)
from dagster_sutro.transfer.ordered import OrderedWriter, TailBuffer
from dagster_sutro.transfer.parquet_check import check_parquet
from dagster_sutro.transfer.plan import PartPlan
from dagster_sutro.transfer.progress import LogRelay, Progress
from dagster_sutro.transfer.storage import safe_exception_text

MIB = 1024 * 1024


# Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("part_size_bytes", 1000),
        ("part_size_bytes", 1.5 * MIB),
        ("part_size_bytes", True),
        ("max_concurrency", 0),
        ("max_concurrency", 65),
        ("read_chunk_bytes", 64 * 1024),
        ("read_timeout_seconds", 0),
        ("connect_timeout_seconds", -1.0),
        ("read_timeout_seconds", float("inf")),
        ("max_attempts_per_part", 0),
        ("max_url_refreshes", -1),
        ("refresh_margin_seconds", -1),
        ("progress_interval_seconds", 0),
        ("backoff_base_seconds", "1"),
        ("verify_parquet", 1),
    ],
)
def test_settings_reject_invalid_value(name: str, value: object):
    with pytest.raises(InvalidInputError, match=name):
        TransferSettings(**{name: value})  # type: ignore[arg-type]


def test_settings_reject_backoff_max_below_base():
    with pytest.raises(InvalidInputError, match="backoff_max_seconds"):
        TransferSettings(backoff_base_seconds=2.0, backoff_max_seconds=1.0)


def test_settings_defaults_are_valid():
    settings = TransferSettings()

    assert settings.part_size_bytes == 16 * MIB
    assert settings.max_concurrency == 8
    assert settings.read_chunk_bytes >= MIB


def test_backoff_grows_and_stays_bounded():
    settings = TransferSettings(backoff_base_seconds=1.0, backoff_max_seconds=8.0)
    for attempt in range(1, 10):
        ceiling = min(8.0, 2 ** (attempt - 1))
        delay = backoff_seconds(settings, attempt, None)
        assert ceiling / 2 <= delay <= ceiling

    assert backoff_seconds(settings, 1, retry_after=5.0) >= 5.0
    assert backoff_seconds(settings, 1, retry_after=500.0) <= 8.0


# Part plan


@pytest.mark.parametrize(
    ("size", "count", "last_length"),
    [
        (0, 0, None),
        (1, 1, 1),
        (MIB - 1, 1, MIB - 1),
        (MIB, 1, MIB),
        (MIB + 1, 2, 1),
        (3 * MIB - 1, 3, MIB - 1),
        (3 * MIB, 3, MIB),
        (3 * MIB + 1, 4, 1),
    ],
)
def test_part_plan_boundaries(size: int, count: int, last_length: int | None):
    plan = PartPlan(size, MIB)
    parts = list(plan)

    assert len(plan) == count
    assert len(parts) == count
    assert sum(part.length for part in parts) == size
    if parts:
        assert parts[0].start == 0
        assert parts[-1].end == size - 1
        assert parts[-1].length == last_length
        assert all(part.length == MIB for part in parts[:-1])
        assert all(a.end + 1 == b.start for a, b in itertools.pairwise(parts))


def test_part_plan_of_huge_artifact_is_lazy():
    plan = PartPlan(5 * 10**12, 16 * MIB)

    assert plan.count == 298024
    assert plan[plan.count - 1].end == 5 * 10**12 - 1
    with pytest.raises(IndexError):
        plan[plan.count]


# S3 part size


@pytest.mark.parametrize("size", [60 * 10**9, 60 * 2**30, 5 * 10**12, 5 * 2**40])
def test_s3_part_size_keeps_within_limits(size: int):
    part = s3_part_size_for(size)
    count = -(-size // part)

    assert part % MIB == 0
    assert part >= 5 * MIB
    assert count <= 10_000
    # It is the smallest such size: one MiB less breaks the count or the 16 MiB default.
    smaller = part - MIB
    assert smaller < 16 * MIB or -(-size // smaller) > 10_000


def test_s3_part_size_values():
    assert s3_part_size_for(0) == 16 * MIB
    assert s3_part_size_for(60 * 10**9) == 16 * MIB
    assert s3_part_size_for(5 * 10**12) == 477 * MIB
    assert s3_part_size_for(5 * 2**40) == 525 * MIB


def test_s3_part_size_rejects_impossible_sizes():
    with pytest.raises(InvalidInputError, match="5 TiB"):
        s3_part_size_for(5 * 2**40 + 1)
    with pytest.raises(InvalidInputError):
        s3_part_size_for(-1)


# Ordered writer


class NonSeekableWriter:
    """A sink that only appends, like a multipart upload stream."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.writes += 1
        return len(data)

    def seek(self, *args: object) -> None:
        raise io.UnsupportedOperation("not seekable")


def test_ordered_writer_reorders_out_of_order_parts():
    sink = NonSeekableWriter()
    writer = OrderedWriter(sink.write, max_pending=4)
    parts = {index: [bytes([index]) * 3, bytes([index]) * 2] for index in range(6)}

    for index in (2, 1, 3):
        writer.put(index, parts[index])
        assert sink.buffer == b""
    assert writer.pending_parts == 3
    assert writer.pending_bytes == 15
    assert writer.can_accept(3)
    assert not writer.can_accept(4)

    writer.put(0, parts[0])
    assert writer.next_index == 4
    assert writer.pending_parts == 0
    writer.put(5, parts[5])
    writer.put(4, parts[4])

    assert bytes(sink.buffer) == b"".join(b"".join(parts[index]) for index in range(6))
    assert writer.bytes_written == 30


def test_ordered_writer_rejects_duplicates_and_overruns():
    writer = OrderedWriter(NonSeekableWriter().write, max_pending=2)
    writer.put(0, [b"a"])

    with pytest.raises(Exception, match="twice"):
        writer.put(0, [b"a"])
    with pytest.raises(Exception, match="window"):
        writer.put(3, [b"d"])


def test_tail_buffer_keeps_last_bytes():
    tail = TailBuffer(limit=10)
    data = bytes(range(100))
    for offset in range(0, 100, 7):
        tail.add(data[offset : offset + 7])

    assert tail.total == 100
    assert tail.available >= 10
    assert tail.available < 10 + 7
    assert tail.tail(10) == data[-10:]
    assert tail.tail(tail.available) == data[-tail.available :]
    with pytest.raises(ValueError):
        tail.tail(tail.available + 1)


# Parquet check


def _parquet_bytes(rows: int = 1000) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(rows))}), buffer)
    return buffer.getvalue()


def _check(data: bytes) -> None:
    check_parquet(
        size=len(data),
        head=data[:4],
        read_tail=lambda length: data[len(data) - length :],
        label="jobs/x.parquet",
    )


def test_parquet_check_accepts_valid_file():
    _check(_parquet_bytes())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda data: b"", "too short"),
        (lambda data: data[:-1], "does not end"),
        (lambda data: data[: -64 * 1024] if len(data) > 64 * 1024 else data[:-20], "does not end"),
        (lambda data: b"XXXX" + data[4:], "does not start"),
        (lambda data: data[:-8] + (10**9).to_bytes(4, "little") + b"PAR1", "footer of"),
    ],
)
def test_parquet_check_rejects_broken_file(mutate, message: str):
    with pytest.raises(DownloadError, match=message):
        _check(mutate(_parquet_bytes()))


def test_parquet_check_rejects_corrupt_footer():
    data = bytearray(_parquet_bytes())
    footer_length = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer_length : -8] = b"\xff" * footer_length

    with pytest.raises(DownloadError, match="could not be parsed"):
        _check(bytes(data))


# Resume state and the local target


def _expected(etag: str = '"v1"', size: int = 4 * MIB, part_size: int = MIB) -> ResumeState:
    return ResumeState(
        key_sha256=artifact_key_sha256("bucket", "jobs/a.parquet"),
        etag=etag,
        size=size,
        part_size=part_size,
    )


def test_resume_state_round_trip_uses_ranges():
    state = _expected()
    state.finished_parts.update({0, 1, 2, 5, 7, 8})

    text = state.to_json()
    assert json.loads(text)["finished_parts"] == [[0, 2], [5, 5], [7, 8]]
    assert ResumeState.from_json(text) == state


def test_resume_state_rejects_foreign_json():
    with pytest.raises(ValueError):
        ResumeState.from_json('{"hello": 1}')


def _collecting_relay() -> tuple[LogRelay, list[str]]:
    lines: list[str] = []

    class Collector:
        def info(self, message: str) -> None:
            lines.append(message)

        warning = debug = error = info

    return LogRelay(Collector()), lines


def _write_part(target: LocalTarget, part_index: int, fill: int) -> None:
    sink = target.sink(PartPlan(target.state.size, target.state.part_size)[part_index])
    sink.write(bytes([fill]) * target.state.part_size)
    target.mark_finished(part_index)


def test_local_target_resumes_matching_parts(tmp_path: Path):
    path = str(tmp_path / "out.parquet")
    relay, lines = _collecting_relay()
    target = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)
    _write_part(target, 0, 1)
    _write_part(target, 2, 3)
    target.abandon(keep_partial=True)

    state_text = Path(path + STATE_SUFFIX).read_text()
    assert "http" not in state_text
    assert os.path.getsize(path + PARTIAL_SUFFIX) == 4 * MIB

    resumed = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)
    assert resumed.finished_parts == {0, 2}
    assert lines == []
    resumed.abandon(keep_partial=True)
    with open(path + PARTIAL_SUFFIX, "rb") as partial:
        assert partial.read(1) == b"\x01"
        partial.seek(2 * MIB)
        assert partial.read(1) == b"\x03"


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        (_expected(etag='"v2"'), 'ETag "v1" and the artifact now has ETag "v2"'),
        (_expected(size=5 * MIB), "4194304 bytes and the artifact is now 5242880 bytes"),
        (_expected(part_size=2 * MIB), "parts of 1048576 bytes"),
    ],
)
def test_local_target_discards_other_version(tmp_path: Path, changed: ResumeState, reason: str):
    path = str(tmp_path / "out.parquet")
    relay, lines = _collecting_relay()
    target = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)
    _write_part(target, 1, 9)
    target.abandon(keep_partial=True)

    reopened = LocalTarget.open(path=path, uri="file://" + path, expected=changed, relay=relay)

    assert reopened.finished_parts == set()
    assert len(lines) == 1
    assert reason in lines[0]
    assert "Discarding" in lines[0]
    assert os.path.getsize(path + PARTIAL_SUFFIX) == changed.size
    assert json.loads(Path(path + STATE_SUFFIX).read_text())["etag"] == changed.etag
    reopened.abandon(keep_partial=False)
    assert not os.path.exists(path + PARTIAL_SUFFIX)
    assert not os.path.exists(path + STATE_SUFFIX)


def test_local_target_discards_partial_without_state(tmp_path: Path):
    path = str(tmp_path / "out.parquet")
    Path(path + PARTIAL_SUFFIX).write_bytes(b"x" * 100)
    relay, lines = _collecting_relay()

    target = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)

    assert target.finished_parts == set()
    assert "no state file" in lines[0]
    target.abandon(keep_partial=False)


def test_local_target_discards_unreadable_state(tmp_path: Path):
    path = str(tmp_path / "out.parquet")
    Path(path + PARTIAL_SUFFIX).write_bytes(b"x" * 100)
    Path(path + STATE_SUFFIX).write_text("{not json")
    relay, lines = _collecting_relay()

    target = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)

    assert target.finished_parts == set()
    assert "could not be read" in lines[0]
    target.abandon(keep_partial=False)


def test_local_target_is_locked_against_second_writer(tmp_path: Path):
    path = str(tmp_path / "out.parquet")
    relay, _ = _collecting_relay()
    first = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)

    with pytest.raises(DestinationError, match="Another download"):
        LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)
    first.abandon(keep_partial=False)


def test_local_target_rejects_directory(tmp_path: Path):
    relay, _ = _collecting_relay()
    with pytest.raises(DestinationError, match="directory"):
        LocalTarget.open(
            path=str(tmp_path), uri="file://" + str(tmp_path), expected=_expected(), relay=relay
        )


def test_local_target_rejects_artifact_larger_than_free_space(tmp_path: Path):
    path = str(tmp_path / "out.parquet")
    relay, _ = _collecting_relay()
    huge = _expected(size=2**62)

    with pytest.raises(DestinationError, match="free"):
        LocalTarget.open(path=path, uri="file://" + path, expected=huge, relay=relay)


def test_size_error_keeps_earlier_file(tmp_path: Path):
    path = tmp_path / "out.parquet"
    path.write_bytes(b"earlier")
    relay, _ = _collecting_relay()
    target = LocalTarget.open(
        path=str(path), uri=f"file://{path}", expected=_expected(size=100), relay=relay
    )
    os.truncate(str(path) + PARTIAL_SUFFIX, 50)

    with pytest.raises(DownloadError, match="50 bytes but the artifact is 100 bytes"):
        target.publish(verify_parquet=False, label="jobs/a.parquet")
    target.abandon(keep_partial=False)
    assert path.read_bytes() == b"earlier"


# Destinations


def test_resolve_local_directory_and_file(tmp_path: Path):
    directory = resolve_destination(str(tmp_path) + "/")
    single = resolve_destination(str(tmp_path / "x.parquet"))

    assert directory.is_directory
    assert directory.is_local
    assert directory.for_filename("a.parquet")[1] == str(tmp_path / "a.parquet")
    assert directory.for_filename("a.parquet")[2] == f"file://{tmp_path}/a.parquet"
    assert not single.is_directory
    assert single.for_filename("ignored.parquet")[1] == str(tmp_path / "x.parquet")


def test_resolve_file_url():
    destination = resolve_destination("file:///tmp/sutro-results/")

    assert destination.is_local
    assert destination.for_filename("a.parquet")[1] == "/tmp/sutro-results/a.parquet"


def test_resolve_s3_sets_fixed_upload_size():
    destination = resolve_destination(
        "s3://bucket/prefix/",
        storage_options={"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9"},
    )

    assert destination.is_s3
    assert destination.fs.fixed_upload_size is True
    assert destination.for_filename("a.parquet")[2] == "s3://bucket/prefix/a.parquet"


def test_resolve_bare_bucket_is_directory():
    destination = resolve_destination("s3://bucket", storage_options={"anon": True})

    assert destination.is_directory
    assert destination.for_filename("a.parquet")[1] == "bucket/a.parquet"


def test_resolve_memory_directory():
    destination = resolve_destination("memory://results/")

    assert not destination.is_local
    assert destination.for_filename("a.parquet")[2] == "memory:///results/a.parquet"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("nosuchproto://x/y", "could not be resolved"),
        ("gs://bucket/x/", "not installed"),
        ("https://example.invalid/x.parquet", "HTTP URL"),
    ],
)
def test_resolve_rejects_bad_destination(value: str, message: str):
    with pytest.raises(InvalidInputError, match=message):
        resolve_destination(value)


def test_resolve_rejects_non_string():
    with pytest.raises(InvalidInputError):
        resolve_destination(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("filename", ["", ".", "..", "a/b.parquet", "..\\x", "a\x00b"])
def test_directory_rejects_unsafe_filename(filename: str, tmp_path: Path):
    with pytest.raises(DestinationError, match="plain file name"):
        resolve_destination(str(tmp_path) + "/").for_filename(filename)


def test_exists_with_size(tmp_path: Path):
    destination = resolve_destination(str(tmp_path) + "/")
    (tmp_path / "a.parquet").write_bytes(b"12345")

    assert destination.exists_with_size("a.parquet", 5)
    assert not destination.exists_with_size("a.parquet", 6)
    assert not destination.exists_with_size("missing.parquet", 5)


def test_exists_with_size_on_memory():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/exists-test/a.parquet", b"abc")
    destination = resolve_destination("memory://exists-test/")

    assert destination.exists_with_size("a.parquet", 3)
    assert not destination.exists_with_size("b.parquet", 3)
    fs.rm("/exists-test", recursive=True)


def test_destination_is_a_dataclass_with_fs():
    destination = resolve_destination("memory://x/y.parquet")

    assert isinstance(destination, Destination)
    assert "fs=" not in repr(destination)


# Exception text and progress


def test_safe_exception_text_drops_query_string():
    error = ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: "
        "/bucket/key?X-Amz-Signature=abcdef1234567890&X-Amz-Credential=AKIA%2Fx"
    )

    text = safe_exception_text(error)

    assert "abcdef1234567890" not in text
    assert "AKIA" not in text
    assert text.startswith("ConnectionError: ")
    assert "/bucket/key?…" in text


def test_progress_line_has_percent_rate_and_eta(caplog: pytest.LogCaptureFixture):
    relay = LogRelay(logging.getLogger("test-progress"))
    progress = Progress(
        label="jobs/a.parquet",
        total_bytes=100 * MIB,
        done_bytes=0,
        interval_seconds=0.000001,
        relay=relay,
    )
    progress.add(25 * MIB)
    with caplog.at_level(logging.INFO, logger="test-progress"):
        progress.maybe_log()

    (line,) = [record.getMessage() for record in caplog.records]
    assert "25.0%" in line
    assert "25.0 MiB of 100.0 MiB" in line
    assert "MiB/s" in line
    assert "ETA" in line


def test_log_relay_queues_lines_from_other_threads():
    import threading

    lines: list[str] = []

    class Collector:
        def warning(self, message: str) -> None:
            lines.append(message)

    relay = LogRelay(Collector())
    worker = threading.Thread(target=lambda: relay.warning("from worker"))
    worker.start()
    worker.join()

    assert lines == []
    relay.drain()
    assert lines == ["from worker"]


def test_local_target_records_partly_written_parts(tmp_path: Path):
    path = str(tmp_path / "out.parquet")
    relay, _ = _collecting_relay()
    target = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)
    plan = PartPlan(4 * MIB, MIB)
    first, second = target.sink(plan[0]), target.sink(plan[1])
    chunk = b"a" * (MIB // 4)

    # 768 KiB written: less than one part since the last state write, so nothing recorded.
    for _ in range(3):
        first.write(chunk)
    assert json.loads(Path(path + STATE_SUFFIX).read_text())["partial_parts"] == []

    # 256 KiB more reaches one part size of progress and rewrites the state file.
    second.write(chunk)
    recorded = json.loads(Path(path + STATE_SUFFIX).read_text())["partial_parts"]
    assert recorded == [[0, 3 * MIB // 4], [1, MIB // 4]]
    target.abandon(keep_partial=True)

    resumed = LocalTarget.open(path=path, uri="file://" + path, expected=_expected(), relay=relay)
    assert resumed.resumed_bytes(plan[0]) == 3 * MIB // 4
    assert resumed.resumed_bytes(plan[1]) == MIB // 4
    assert resumed.resumed_bytes(plan[2]) == 0
    assert resumed.sink(plan[0]).received == 3 * MIB // 4
    resumed.mark_finished(0)
    state = json.loads(Path(path + STATE_SUFFIX).read_text())
    assert state["finished_parts"] == [[0, 0]]
    assert state["partial_parts"] == [[1, MIB // 4]]
    resumed.abandon(keep_partial=False)
