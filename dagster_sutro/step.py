"""The step every results asset runs: look up the artifact, decide, download, record."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pyarrow as pa

from dagster_sutro import metadata as md
from dagster_sutro.checks import build_sutro_check_specs, evaluate_sutro_checks
from dagster_sutro.client import validate_expires_in_seconds, validate_job_id
from dagster_sutro.errors import SutroError, SutroJobNotReadyError
from dagster_sutro.models import ArtifactHead, ResultsDownloadUrl
from dagster_sutro.resource import SutroResource
from dagster_sutro.transfer import (
    Destination,
    download_artifact,
    head_artifact,
    resolve_destination,
)

# How many recent materializations are searched for the one that wrote the same destination.
PREVIOUS_MATERIALIZATIONS_SEARCHED = 50


@dataclass(frozen=True)
class ResultsRequest:
    """The job, include flags and destination of one run of a results asset."""

    job_id: str
    destination: str
    include_inputs: bool = False
    include_cumulative_logprobs: bool = False
    expires_in_seconds: int = 3600
    force: bool = False
    storage_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreviousMaterialization:
    """The parts of an earlier materialization that the skip rule compares."""

    etag: str
    size_bytes: int | None
    run_id: str
    job_id: str | None
    include_inputs: bool
    include_cumulative_logprobs: bool


def results_multi_asset(
    spec: dg.AssetSpec,
    *,
    resource_key: str,
    enable_asset_checks: bool = True,
    pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """Return the decorator that turns a function running :func:`run_results_step` into an asset.

    The asset is a one-spec ``multi_asset`` rather than an ``@asset``. Dagster requires every
    declared check of an ``@asset`` to be evaluated, even with ``output_required=False``, so
    the skip path (no download, no materialization) would fail the step. A ``multi_asset``
    with ``can_subset=True`` makes the checks optional too, and a run that skips evaluates
    none of them. The op keeps the name an ``@asset`` with the same key would have, so run
    config keyed by op name does not change.

    Args:
        spec: The asset's spec; it is made skippable.
        resource_key: The key under which the :class:`SutroResource` is provided.
        enable_asset_checks: Declare the checks of :mod:`dagster_sutro.checks`.
        pool: A concurrency pool that caps how many downloads run at once.
        retry_policy: A retry policy for the whole step.

    Returns:
        A decorator for the asset's compute function.
    """
    decorator = dg.multi_asset(
        name=spec.key.to_python_identifier(),
        specs=[spec.replace_attributes(skippable=True)],
        check_specs=build_sutro_check_specs(spec.key) if enable_asset_checks else None,
        can_subset=True,
        required_resource_keys={resource_key},
        pool=pool,
        retry_policy=retry_policy,
    )

    def decorate(compute_fn: Callable[..., Any]) -> dg.AssetsDefinition:
        return decorator(with_resolved_annotations(compute_fn))

    return decorate


def with_resolved_annotations(compute_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Replace string annotations with the objects they name, and return the function.

    ``multi_asset`` and ``multi_observable_source_asset`` read the context and config types
    from the raw signature, so the strings that ``from __future__ import annotations`` leaves
    there must be resolved first.

    Args:
        compute_fn: A compute function whose annotations name module-level types.

    Returns:
        The same function.
    """
    compute_fn.__annotations__ = typing.get_type_hints(compute_fn)
    return compute_fn


def run_results_step(
    context: dg.AssetExecutionContext,
    sutro: SutroResource,
    request: ResultsRequest,
    *,
    preview_rows: int = 5,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Fetch a job's results artifact unless the destination already contains this version.

    Args:
        context: The asset's execution context.
        sutro: The Sutro resource.
        request: The job, flags and destination.
        preview_rows: Number of rows in the preview metadata.

    Yields:
        One materialization that carries the results of the asset's selected checks (see
        :mod:`dagster_sutro.checks`). When the artifact is unchanged, only the check results,
        evaluated on the file already at the destination.
    """
    # Every input is checked before the first request, so bad config fails without side effects.
    try:
        validate_job_id(request.job_id)
        validate_expires_in_seconds(request.expires_in_seconds)
        target = resolve_destination(
            request.destination, storage_options=dict(request.storage_options)
        )
        client = sutro.get_client()
        settings = sutro.get_transfer_settings()
    except SutroError as error:
        raise dg.Failure(
            description=str(error), metadata={md.JOB_ID_KEY: request.job_id}, allow_retries=False
        ) from None

    def get_urls() -> ResultsDownloadUrl:
        return client.get_results_download_url(
            request.job_id,
            include_inputs=request.include_inputs,
            include_cumulative_logprobs=request.include_cumulative_logprobs,
            expires_in_seconds=request.expires_in_seconds,
        )

    try:
        urls = get_urls()
        head = head_artifact(urls, settings=settings)
    except SutroJobNotReadyError as error:
        raise dg.Failure(
            description=str(error),
            metadata={
                md.JOB_ID_KEY: request.job_id,
                f"{md.NAMESPACE}/job_status": error.job_status,
            },
        ) from None
    except SutroError as error:
        raise dg.Failure(description=str(error), metadata={md.JOB_ID_KEY: request.job_id}) from None

    _, _, uri = target.for_filename(urls.artifact.filename)
    context.log.info(
        f"Sutro job {request.job_id}: artifact {urls.artifact.key} has ETag {head.etag} and "
        f"{_mib(head.content_length)} (include_inputs={request.include_inputs}, "
        f"include_cumulative_logprobs={request.include_cumulative_logprobs}); destination {uri}."
    )

    skip_reason = _skip_reason(context, request, target, urls, head, uri)
    existing = None
    if skip_reason is not None:
        existing = _read_existing_summary(context, target, urls.artifact.filename, uri)
    if skip_reason is not None and existing is not None:
        context.log.info(f"Skipping the download of Sutro job {request.job_id}: {skip_reason}")
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                partition=context.partition_key if context.has_partition_key else None,
                metadata={
                    md.JOB_ID_KEY: request.job_id,
                    md.ETAG_KEY: head.etag,
                    md.URI_KEY: uri,
                    md.SKIP_REASON_KEY: skip_reason,
                },
            )
        )
        # The checks are evaluated again on the file that stays in place, so that every run
        # reports a result for each blocking check.
        yield from evaluate_sutro_checks(
            context,
            client=client,
            job_id=request.job_id,
            num_rows=existing.num_rows,
            schema=existing.schema,
            compare_with_job=False,
        )
        return

    try:
        result = download_artifact(
            get_urls,
            target,
            urls=urls,
            head=head,
            expected_etag=head.etag,
            storage_options=dict(request.storage_options),
            settings=settings,
            logger=context.log,
        )
        fs, path, _ = target.for_filename(urls.artifact.filename)
        summary = md.read_parquet_summary(fs, path, preview_rows=preview_rows)
    except SutroError as error:
        raise dg.Failure(
            description=f"Download of Sutro job {request.job_id} failed: {error}",
            metadata={md.JOB_ID_KEY: request.job_id, md.ETAG_KEY: head.etag},
        ) from None

    context.log.info(
        f"Materialized Sutro job {request.job_id} at {result.uri}: {summary.num_rows} rows, "
        f"ETag {result.etag}, {_mib(result.bytes_transferred)} transferred in "
        f"{result.seconds:.1f} s ({result.mib_per_second:.1f} MiB/s)."
    )
    # The checks run before the materialization is recorded, because schema_unchanged compares
    # with the latest materialization in the instance.
    check_results = evaluate_sutro_checks(
        context,
        client=client,
        job_id=request.job_id,
        num_rows=summary.num_rows,
        schema=summary.schema,
    )
    yield dg.MaterializeResult(
        asset_key=context.asset_key,
        metadata=md.materialization_metadata(urls=urls, result=result, summary=summary),
        data_version=dg.DataVersion(result.etag),
        check_results=check_results or None,
    )


def _read_existing_summary(
    context: dg.AssetExecutionContext, target: Destination, filename: str, uri: str
) -> md.ParquetSummary | None:
    """Read the footer of the file already at the destination, or ``None`` if it is unreadable."""
    fs, path, _ = target.for_filename(filename)
    try:
        return md.read_parquet_summary(fs, path, preview_rows=0)
    except (OSError, ValueError, pa.ArrowException) as error:
        context.log.info(
            f"{uri} has the recorded size but its Parquet footer cannot be read "
            f"({type(error).__name__}), so the artifact is downloaded again."
        )
        return None


def _skip_reason(
    context: dg.AssetExecutionContext,
    request: ResultsRequest,
    target: Destination,
    urls: ResultsDownloadUrl,
    head: ArtifactHead,
    uri: str,
) -> str | None:
    """Return why the download can be skipped, or ``None`` when it must run."""
    if request.force:
        context.log.info("force=true in run config, so the artifact is downloaded again.")
        return None
    previous = find_previous_materialization(context, uri)
    if previous is None:
        context.log.info(f"No earlier materialization wrote {uri}, so the artifact is downloaded.")
        return None
    same_artifact = (
        previous.job_id,
        previous.include_inputs,
        previous.include_cumulative_logprobs,
    ) == (
        request.job_id,
        request.include_inputs,
        request.include_cumulative_logprobs,
    )
    if not same_artifact:
        context.log.info(
            f"The last materialization that wrote {uri} (run {previous.run_id}) was for job "
            f"{previous.job_id} with other include flags or another job, so the artifact is "
            "downloaded."
        )
        return None
    if previous.etag != head.etag:
        context.log.info(
            f"The ETag changed from {previous.etag} (run {previous.run_id}) to {head.etag}, so "
            "the artifact is downloaded."
        )
        return None
    if previous.size_bytes is None or not target.exists_with_size(
        urls.artifact.filename, previous.size_bytes
    ):
        context.log.info(
            f"{uri} is missing or no longer {previous.size_bytes} bytes, so the artifact is "
            "downloaded again."
        )
        return None
    return (
        f"ETag {head.etag} is unchanged since run {previous.run_id}, and {uri} still holds "
        f"{previous.size_bytes} bytes. Set force=true to download anyway."
    )


def find_previous_materialization(
    context: dg.AssetExecutionContext, uri: str
) -> PreviousMaterialization | None:
    """Find the most recent materialization of this asset that wrote ``uri``.

    The job id and both include flags are part of the artifact's file name, so a materialization
    that wrote the same URI was for the same job and flags. A destination that names a file can
    receive other jobs too, so the caller compares the recorded job id and flags as well.

    Args:
        context: The asset's execution context.
        uri: The URI this run would write.

    Returns:
        The ETag, size and run of that materialization, or ``None`` when there is none.
    """
    records_filter = dg.AssetRecordsFilter(
        asset_key=context.asset_key,
        asset_partitions=[context.partition_key] if context.has_partition_key else None,
    )
    records = context.instance.fetch_materializations(
        records_filter, limit=PREVIOUS_MATERIALIZATIONS_SEARCHED
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        metadata = dict(materialization.metadata)
        if md.metadata_value(metadata, md.URI_KEY) != uri:
            continue
        etag = md.metadata_value(metadata, md.ETAG_KEY)
        if not isinstance(etag, str):
            return None
        size = md.metadata_value(metadata, md.SIZE_BYTES_KEY)
        return PreviousMaterialization(
            etag=etag,
            size_bytes=int(size) if isinstance(size, int) else None,
            run_id=record.run_id,
            job_id=md.metadata_value(metadata, md.JOB_ID_KEY),
            include_inputs=bool(md.metadata_value(metadata, md.INCLUDE_INPUTS_KEY)),
            include_cumulative_logprobs=bool(md.metadata_value(metadata, md.INCLUDE_LOGPROBS_KEY)),
        )
    return None


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / (1024 * 1024):.1f} MiB"
