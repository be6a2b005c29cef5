"""No credential leaks: canaries never appear in logs, errors, files or Dagster's records.

The API key is a unique canary. The signature canaries are the ``X-Amz-Signature`` values the
emulator actually issued, and the emulator's own storage secret key. Every success and failure
path of the fault tests runs with DEBUG logging on the root logger.

Afterwards no canary may appear in the captured logs or in any file beside the destination. Nor
may one appear in ``str()``, ``repr()`` or the formatted traceback of a raised exception, its
causes and contexts included, even where the chain is suppressed. For runs of the asset on a
real instance, the event log, the step failure's serialized error and every file under
``DAGSTER_HOME`` (SQLite values decompressed) are searched too.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import sqlite3
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import fsspec
import pytest
from faults_support import (
    MIB,
    FullDiskMemoryFileSystem,
    ReadOnlyMemoryFileSystem,
    ResultsUrls,
    fast_settings,
    register_filesystem,
    with_broken_get_signature,
)

from dagster_sutro import (
    SutroClient,
    SutroResource,
    SutroResultsConfig,
    build_sutro_results_asset,
)
from dagster_sutro.models import ResultsDownloadUrl
from dagster_sutro.testing import SutroEmulator
from dagster_sutro.transfer import TransferSettings, download_artifact, head_artifact

CANARY_API_KEY = "sk_canary_" + "5be1c0ffee9d4a2e8b7f3c6d1a0e9f42"
CANARY_WRONG_API_KEY = "sk_canary_wrong_" + "e07a11ed4b8c4d6f9a2b1c3d5e7f9081"


@pytest.fixture(autouse=True)
def short_api_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_BASE_SECONDS", 0.01)
    monkeypatch.setattr("dagster_sutro.client.BACKOFF_MAX_SECONDS", 0.02)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[SutroEmulator]:
    with SutroEmulator(api_key=CANARY_API_KEY, root_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
def debug_logging(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.DEBUG)
    return caplog


def _storage_secret(emulator: SutroEmulator) -> str | None:
    """The emulator's SigV4 secret key, read from its private state when it is there."""
    signer = getattr(getattr(emulator, "_state", None), "signer", None)
    secret = getattr(signer, "_secret_access_key", None)
    return secret if isinstance(secret, str) else None


def _exception_chain(error: BaseException) -> list[BaseException]:
    """The exception and every cause and context behind it, suppressed or not."""
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending.extend([current.__cause__, current.__context__])
    return chain


def _exception_texts(error: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
    for item in _exception_chain(error):
        texts.extend([str(item), repr(item), repr(vars(item))])
        texts.append("".join(traceback.format_exception(type(item), item, item.__traceback__)))
    return texts


def _file_texts(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return [
        path.read_bytes().decode("latin-1")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    ]


def _sqlite_texts(directory: Path) -> list[str]:
    """Every value in the SQLite databases under ``directory``, zlib blobs decompressed.

    Dagster stores snapshots and event bodies compressed, so a plain scan of the files would
    miss a credential inside them.
    """
    texts: list[str] = []
    for database in sorted(directory.rglob("*.db")):
        connection = sqlite3.connect(database)
        try:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for (table,) in tables.fetchall():
                for row in connection.execute(f'SELECT * FROM "{table}"'):
                    texts.extend(_sqlite_value_text(value) for value in row)
        finally:
            connection.close()
    return texts


def _sqlite_value_text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return zlib.decompress(value).decode("utf-8", errors="replace")
        except zlib.error:
            return value.decode("latin-1")
    return str(value)


@dataclass
class Witness:
    """Collects the canaries of one test and everything that must not contain them."""

    emulator: SutroEmulator
    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]
    urls: list[ResultsUrls] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def results_urls(self, job_id: str, **kwargs: Any) -> ResultsUrls:
        urls = ResultsUrls(self.emulator, job_id, **kwargs)
        self.urls.append(urls)
        return urls

    def run(self, action: Callable[[], object]) -> None:
        """Run an action of a scenario, keeping the exception it raises."""
        try:
            action()
        except Exception as error:
            self.errors.append(error)

    def canaries(self) -> set[str]:
        values = {CANARY_API_KEY, CANARY_WRONG_API_KEY}
        for request in self.emulator.storage_requests:
            if "X-Amz-Signature" in request.query:
                values.add(request.query["X-Amz-Signature"])
        for urls in self.urls:
            values |= urls.get_signatures() | urls.head_signatures()
        secret = _storage_secret(self.emulator)
        if secret is not None:
            values.add(secret)
        return values

    def assert_no_canary(self, *directories: Path) -> None:
        captured = self.capfd.readouterr()
        texts = [self.caplog.text, captured.out, captured.err, *self.texts]
        for record in self.caplog.records:
            texts.append(record.getMessage())
            texts.append(record.exc_text or "")
            if record.exc_info and record.exc_info[1] is not None:
                texts.extend(_exception_texts(record.exc_info[1]))
        for error in self.errors:
            texts.extend(_exception_texts(error))
        for directory in directories:
            texts.extend(_file_texts(directory))
        blob = "\n".join(texts)

        canaries = self.canaries()
        assert len(canaries) >= 2
        for canary in canaries:
            assert canary not in blob, f"a credential ({canary[:6]}...) leaked"
        assert "X-Amz-Signature=" not in blob.replace("X-Amz-Signature=REDACTED", "")


@pytest.fixture
def witness(
    emulator: SutroEmulator,
    debug_logging: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> Witness:
    return Witness(emulator=emulator, caplog=debug_logging, capfd=capfd)


# Scenarios of the transfer engine and the client: each arranges a fault, then downloads.


@dataclass
class Scene:
    """What a scenario works with."""

    witness: Witness
    emulator: SutroEmulator
    out: Path
    request: pytest.FixtureRequest

    def job(self, size_bytes: int = 3 * MIB) -> str:
        return self.emulator.add_job(target_size_bytes=size_bytes)

    def download(
        self,
        urls: Callable[[], ResultsDownloadUrl],
        destination: str | None = None,
        **settings: Any,
    ) -> None:
        chosen: TransferSettings = fast_settings(**settings)
        self.witness.run(
            lambda: download_artifact(
                urls, destination or f"{self.out}/", settings=chosen, **self.extra
            )
        )

    extra: dict[str, Any] = field(default_factory=dict)


def _plain(scene: Scene) -> None:
    scene.download(scene.witness.results_urls(scene.job()))


def _to_memory(scene: Scene) -> None:
    scene.download(scene.witness.results_urls(scene.job()), "memory://leak-test/")
    fsspec.filesystem("memory").rm("/leak-test", recursive=True)


def _to_s3(scene: Scene) -> None:
    bucket = "leak-test-success"
    boto3.client(
        "s3",
        endpoint_url=scene.request.getfixturevalue("moto_endpoint"),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    scene.extra = {"storage_options": scene.request.getfixturevalue("s3_storage_options")}
    scene.download(scene.witness.results_urls(scene.job()), f"s3://{bucket}/sutro/")


def _missing_s3_bucket(scene: Scene) -> None:
    scene.extra = {"storage_options": scene.request.getfixturevalue("s3_storage_options")}
    scene.download(scene.witness.results_urls(scene.job()), "s3://no-such-bucket-for-leaks/x/")


def _truncated_once(scene: Scene) -> None:
    scene.emulator.faults.truncate_body(MIB // 2, times=1)
    scene.download(scene.witness.results_urls(scene.job()))


def _truncated_always(scene: Scene) -> None:
    scene.emulator.faults.truncate_body(0, times=None)
    scene.download(scene.witness.results_urls(scene.job()), max_attempts_per_part=2)


def _reset_mid_part(scene: Scene) -> None:
    scene.emulator.faults.reset_connection(MIB // 2 + 1, times=2)
    scene.download(scene.witness.results_urls(scene.job()))


def _trickle(scene: Scene) -> None:
    scene.emulator.faults.trickle(8 * MIB)
    scene.download(scene.witness.results_urls(scene.job()), read_timeout_seconds=0.5)


def _stall(scene: Scene) -> None:
    scene.emulator.faults.stall_body(10.0, after_bytes=1000, times=1)
    scene.download(scene.witness.results_urls(scene.job()), read_timeout_seconds=0.3)


def _range_ignored(scene: Scene) -> None:
    scene.emulator.faults.ignore_range()
    scene.download(scene.witness.results_urls(scene.job()))


def _wrong_content_range(scene: Scene) -> None:
    scene.emulator.faults.wrong_content_range(times=None)
    scene.download(scene.witness.results_urls(scene.job()), max_attempts_per_part=2)


def _head_403(scene: Scene) -> None:
    scene.emulator.faults.status_sequence([403, 403], method="HEAD")
    scene.download(scene.witness.results_urls(scene.job()))


def _broken_signature(scene: Scene) -> None:
    urls = scene.witness.results_urls(
        scene.job(), after_call=lambda call, issued: with_broken_get_signature(issued)
    )
    scene.download(urls)


def _access_denied(scene: Scene) -> None:
    scene.emulator.faults.status_sequence([403] * 10, method="GET")
    scene.download(scene.witness.results_urls(scene.job()))


def _slowdown_once(scene: Scene) -> None:
    scene.emulator.faults.status_sequence([503], method="GET", retry_after=0)
    scene.download(scene.witness.results_urls(scene.job()))


def _slowdown_always(scene: Scene) -> None:
    scene.emulator.faults.status_sequence([503] * 20, method="GET")
    scene.download(scene.witness.results_urls(scene.job()), max_attempts_per_part=2)


def _storage_unreachable(scene: Scene) -> None:
    # A port that was just free on 127.0.0.1, so connections to it are refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    storage_origin = scene.emulator.storage_url
    unreachable = f"http://127.0.0.1:{closed_port}"

    def redirect(call: int, issued: ResultsDownloadUrl) -> ResultsDownloadUrl:
        return dataclasses.replace(
            issued,
            get_url=issued.get_url.replace(storage_origin, unreachable),
            head_url=issued.head_url.replace(storage_origin, unreachable),
        )

    urls = scene.witness.results_urls(scene.job(), after_call=redirect)
    scene.download(urls, max_attempts_per_part=2)


def _replaced_once(scene: Scene) -> None:
    job_id = scene.job(4 * MIB)
    scene.emulator.faults.replace_object_after(job_id, 2 * MIB)
    scene.download(scene.witness.results_urls(job_id), max_concurrency=1)


def _replaced_without_restart(scene: Scene) -> None:
    job_id = scene.job(4 * MIB)
    scene.emulator.faults.replace_object_after(job_id, 2 * MIB)
    scene.download(scene.witness.results_urls(job_id), max_concurrency=1, max_version_restarts=0)


def _expired_then_refreshed(scene: Scene) -> None:
    urls = scene.witness.results_urls(scene.job())
    scene.emulator.faults.url_lifetime(2, style="r2")
    first = urls()
    head = head_artifact(first, settings=fast_settings())
    scene.emulator.advance_clock(10)
    scene.extra = {"urls": first, "head": head}
    scene.download(urls, refresh_margin_seconds=0.0)


def _expired_always(scene: Scene) -> None:
    def expire(call: int, issued: ResultsDownloadUrl) -> ResultsDownloadUrl:
        if call > 1:
            scene.emulator.advance_clock(10)
        return issued

    urls = scene.witness.results_urls(scene.job(), after_call=expire)
    scene.emulator.faults.url_lifetime(2)
    first = urls()
    head = head_artifact(first, settings=fast_settings())
    scene.emulator.advance_clock(10)
    scene.extra = {"urls": first, "head": head}
    scene.download(urls, max_url_refreshes=2, refresh_margin_seconds=0.0)


def _truncated_parquet(scene: Scene) -> None:
    job_id = scene.job()
    scene.emulator.faults.truncated_parquet(job_id)
    scene.download(scene.witness.results_urls(job_id))


def _destination_under_file(scene: Scene) -> None:
    blocker = scene.out / "results.txt"
    blocker.write_text("earlier")
    scene.download(scene.witness.results_urls(scene.job()), f"{blocker}/sutro/")


def _unwritable_fsspec(scene: Scene) -> None:
    fs = register_filesystem(ReadOnlyMemoryFileSystem)
    scene.download(scene.witness.results_urls(scene.job()), "sutroreadonly://leaks/")
    fs.store.clear()


def _full_fsspec(scene: Scene) -> None:
    fs = register_filesystem(FullDiskMemoryFileSystem)
    scene.download(scene.witness.results_urls(scene.job()), "sutrofull://leaks/")
    fs.store.clear()


def _client_call(scene: Scene, key: str, job_id: str) -> None:
    client = SutroClient(scene.emulator.api_url, key, max_retries=1)
    scene.witness.run(lambda: client.get_results_download_url(job_id))


def _api_wrong_key(scene: Scene) -> None:
    _client_call(scene, CANARY_WRONG_API_KEY, scene.job())


def _api_forbidden_html(scene: Scene) -> None:
    scene.emulator.faults.api_html_error(status=403)
    _client_call(scene, CANARY_API_KEY, scene.job())


def _api_job_not_ready(scene: Scene) -> None:
    _client_call(scene, CANARY_API_KEY, scene.emulator.add_job(num_rows=5, status="RUNNING"))


def _api_job_state_unreadable(scene: Scene) -> None:
    job_id = scene.emulator.add_job(num_rows=5, status="RUNNING")
    scene.emulator.faults.status_sequence([500] * 5, server="api", path_contains="job-status")
    _client_call(scene, CANARY_API_KEY, job_id)


def _api_status_sequence(status: int) -> Callable[[Scene], None]:
    def scenario(scene: Scene) -> None:
        scene.emulator.faults.status_sequence([status] * 5, server="api", retry_after=0)
        _client_call(scene, CANARY_API_KEY, scene.job())

    return scenario


def _api_not_json(scene: Scene) -> None:
    scene.emulator.faults.api_not_json()
    _client_call(scene, CANARY_API_KEY, scene.job())


def _api_malformed_json(scene: Scene) -> None:
    scene.emulator.faults.api_malformed_json()
    _client_call(scene, CANARY_API_KEY, scene.job())


def _api_unreachable(scene: Scene) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = SutroClient(f"http://127.0.0.1:{closed_port}", CANARY_API_KEY, max_retries=1)
    scene.witness.run(lambda: client.get_results_download_url("job-1"))


SCENARIOS: dict[str, Callable[[Scene], None]] = {
    "success-local": _plain,
    "success-memory": _to_memory,
    "success-s3": _to_s3,
    "missing-s3-bucket": _missing_s3_bucket,
    "truncated-body-once": _truncated_once,
    "truncated-body-always": _truncated_always,
    "connection-reset": _reset_mid_part,
    "trickle": _trickle,
    "stall": _stall,
    "range-ignored": _range_ignored,
    "wrong-content-range": _wrong_content_range,
    "head-403": _head_403,
    "signature-mismatch": _broken_signature,
    "access-denied": _access_denied,
    "slowdown-once": _slowdown_once,
    "slowdown-always": _slowdown_always,
    "storage-unreachable": _storage_unreachable,
    "replaced-once": _replaced_once,
    "replaced-without-restart": _replaced_without_restart,
    "expired-then-refreshed": _expired_then_refreshed,
    "expired-always": _expired_always,
    "truncated-parquet": _truncated_parquet,
    "destination-under-file": _destination_under_file,
    "destination-unwritable": _unwritable_fsspec,
    "destination-full": _full_fsspec,
    "api-wrong-key": _api_wrong_key,
    "api-forbidden-html": _api_forbidden_html,
    "api-job-not-ready": _api_job_not_ready,
    "api-job-state-unreadable": _api_job_state_unreadable,
    "api-rate-limited": _api_status_sequence(429),
    "api-origin-timeout": _api_status_sequence(524),
    "api-forbidden-json": _api_status_sequence(403),
    "api-not-json": _api_not_json,
    "api-malformed-json": _api_malformed_json,
    "api-unreachable": _api_unreachable,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_canary_leaks_from_path(
    name: str, witness: Witness, emulator: SutroEmulator, tmp_path: Path, request: Any
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    scene = Scene(witness=witness, emulator=emulator, out=out, request=request)

    SCENARIOS[name](scene)

    witness.assert_no_canary(out)


def test_failure_scenarios_do_fail(
    witness: Witness, emulator: SutroEmulator, tmp_path: Path, request: Any
) -> None:
    # The leak checks only mean something if the failure scenarios do fail.
    failing = {"truncated-body-always", "signature-mismatch", "api-wrong-key", "expired-always"}
    names = [*sorted(failing), "success-local", "connection-reset", "expired-then-refreshed"]
    for name in names:
        out = tmp_path / name
        out.mkdir()
        before = len(witness.errors)
        SCENARIOS[name](Scene(witness=witness, emulator=emulator, out=out, request=request))
        emulator.faults.clear()
        raised = len(witness.errors) > before
        assert raised == (name in failing), name
    witness.assert_no_canary(*(tmp_path / name for name in names))


# Runs of the asset on a real instance


def _run_texts(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    texts: list[str] = []
    for entry in instance.all_logs(result.run_id):
        texts.append(repr(entry))
        texts.append(entry.message or "")
        if entry.dagster_event is not None:
            texts.append(repr(entry.dagster_event.event_specific_data))
    for failure in result.get_step_failure_events():
        data = failure.step_failure_data
        if data.error is not None:
            texts.append(data.error.to_string())
            texts.append(repr(data.error))
        if data.user_failure_data is not None:
            texts.append(repr(data.user_failure_data))
    for event in result.all_events:
        texts.append(repr(event))
    return texts


def test_no_canary_leaks_from_asset_runs(
    witness: Witness,
    emulator: SutroEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SUTRO_API_KEY", CANARY_API_KEY)
    monkeypatch.setenv("SUTRO_WRONG_API_KEY", CANARY_WRONG_API_KEY)
    destination = tmp_path / "results"
    asset = build_sutro_results_asset(destination=f"{destination}/")
    blocked = build_sutro_results_asset(
        key="blocked_results", destination=f"{tmp_path / 'results.txt'}/sutro/"
    )
    (tmp_path / "results.txt").write_text("earlier")
    sutro = SutroResource(
        api_key=dg.EnvVar("SUTRO_API_KEY"),
        api_url=emulator.api_url,
        part_size_bytes=MIB,
        max_concurrency=2,
        max_retries=1,
        read_timeout_seconds=0.5,
    )
    wrong = SutroResource(
        api_key=dg.EnvVar("SUTRO_WRONG_API_KEY"), api_url=emulator.api_url, max_retries=0
    )
    job_id = emulator.add_job(target_size_bytes=3 * MIB)
    running = emulator.add_job(num_rows=5, status="RUNNING")
    truncated = emulator.add_job(target_size_bytes=2 * MIB)

    def run_with(
        definition: dg.AssetsDefinition, resource: SutroResource, job: str, **config: Any
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [definition],
            resources={"sutro": resource},
            instance=instance,
            run_config=dg.RunConfig(
                {definition.node_def.name: SutroResultsConfig(job_id=job, **config)}
            ),
            raise_on_error=False,
        )

    with dg.DagsterInstance.get() as instance:
        runs = []
        # Success after a reset and a stall were retried, with the retries in the run log.
        emulator.faults.reset_connection(MIB // 2, times=1)
        emulator.faults.stall_body(10.0, after_bytes=1000, times=1)
        runs.append(run_with(asset, sutro, job_id))
        # Unchanged ETag: the run skips the download.
        runs.append(run_with(asset, sutro, job_id))
        # Storage rejects every GET.
        emulator.faults.status_sequence([403] * 10, method="GET")
        runs.append(run_with(asset, sutro, job_id, force=True))
        emulator.faults.clear()
        emulator.faults.truncated_parquet(truncated)
        runs.append(run_with(asset, sutro, truncated))
        runs.append(run_with(asset, sutro, running))
        runs.append(run_with(asset, wrong, job_id))
        emulator.faults.status_sequence([524] * 5, server="api", path_contains="results-url")
        runs.append(run_with(asset, sutro, job_id, force=True))
        runs.append(run_with(blocked, sutro, job_id))

        assert [run.success for run in runs] == [
            True,
            True,
            False,
            False,
            False,
            False,
            False,
            False,
        ]
        for run in runs:
            witness.texts.extend(_run_texts(instance, run))

    assert any("failed on attempt 1" in text for text in witness.texts), (
        "the retries should appear in the run log"
    )
    witness.texts.extend(_file_texts(home))
    witness.texts.extend(_sqlite_texts(home))
    assert any("ASSET_MATERIALIZATION" in text for text in witness.texts)
    witness.assert_no_canary(destination, tmp_path / "emulator" / "no-such-dir")


def test_literal_api_key_stored_by_dagster(
    emulator: SutroEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dagster stores a resource's literal config values in the job snapshot of each run, so
    # the key must be passed as dg.EnvVar, as the asset test above does.
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    asset = build_sutro_results_asset(destination=f"{tmp_path / 'results'}/")
    sutro = SutroResource(api_key=CANARY_API_KEY, api_url=emulator.api_url)
    job_id = emulator.add_job(num_rows=5)

    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [asset],
            resources={"sutro": sutro},
            instance=instance,
            run_config=dg.RunConfig({asset.node_def.name: SutroResultsConfig(job_id=job_id)}),
        )

    assert result.success
    assert any(CANARY_API_KEY in text for text in _sqlite_texts(home))
