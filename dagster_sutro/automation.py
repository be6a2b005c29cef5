"""Assets for one Sutro job that Declarative Automation refreshes when the artifact's ETag changes.

:func:`build_sutro_job_assets` returns two assets:

- ``[*key_prefix, <job>, "artifact"]``, an observable source asset for the results artifact in
  Sutro's storage. Each observation calls ``results-url`` and HEADs the artifact, and reports
  the ETag as the data version. While the job has not SUCCEEDED, it reports nothing at all.
  Dagster treats any observation as an update, even one without a data version, and would
  request a useless download for it.
- ``[*key_prefix, <job>, "results"]``, the downloaded Parquet file. It depends on the artifact
  with ``AutomationCondition.eager()``, and Dagster requests it only when an observation
  reports a data version different from the previous one. The step is the one every results
  asset runs, so it still skips the download when the destination already contains that ETag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_sutro import metadata as md
from dagster_sutro.assets import DEFAULT_RESOURCE_KEY
from dagster_sutro.client import validate_job_id
from dagster_sutro.errors import SutroError, SutroJobNotReadyError
from dagster_sutro.resource import SutroResource
from dagster_sutro.step import (
    ResultsRequest,
    results_multi_asset,
    run_results_step,
    with_resolved_annotations,
)
from dagster_sutro.transfer import head_artifact

DEFAULT_OBSERVE_CRON = "*/15 * * * *"
JOB_STATUS_KEY = f"{md.NAMESPACE}/job_status"
LAST_MODIFIED_KEY = f"{md.NAMESPACE}/last_modified"

# Jobs in these states never produce results, so observing them again cannot succeed.
FAILED_JOB_STATES = frozenset({"FAILED", "CANCELLED"})

# Unattended runs get step retries with backoff, because eager() requests a download once per
# new ETag and a transient failure would otherwise leave the results stale until the next change.
DEFAULT_AUTOMATION_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL
)

_KEY_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_]")


class SutroJobResultsConfig(dg.Config):
    """Optional run config of a job's results asset. Automation runs use the defaults."""

    force: bool = Field(
        default=False,
        description="Download and materialize even when the artifact's ETag is unchanged.",
    )


def job_key_component(job_id: str) -> str:
    """Turn a job id into an asset key component by replacing each character other than letters,
    digits and ``_`` with ``_``.

    Args:
        job_id: A Sutro job id, for example ``job-5f0c``.

    Returns:
        The key component, for example ``job_5f0c``.
    """
    return _KEY_UNSAFE_CHARACTERS.sub("_", job_id)


def build_sutro_job_assets(
    *,
    job_id: str,
    destination: str,
    key_prefix: Sequence[str] = ("sutro",),
    name: str | None = None,
    observe_cron: str | None = DEFAULT_OBSERVE_CRON,
    include_inputs: bool = False,
    include_cumulative_logprobs: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    group_name: str | None = None,
    observe_automation_condition: dg.AutomationCondition | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = DEFAULT_AUTOMATION_RETRY_POLICY,
    description: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    kinds: set[str] | None = None,
    preview_rows: int = 5,
    enable_asset_checks: bool = True,
) -> list[dg.AssetsDefinition]:
    """Build the assets that keep one Sutro job's results downloaded as its artifact changes.

    The first asset observes the results artifact: each observation calls ``results-url`` with
    the include flags and HEADs the artifact, then reports its ETag as the data version.
    By default it is observed on ``observe_cron``. While the job is QUEUED, STARTING, RUNNING,
    CANCELLING or UNKNOWN the observation logs the state and reports nothing. For a FAILED or
    CANCELLED job it fails with the job's state and failure reason.

    The second asset downloads the artifact to ``destination``. Its default condition,
    ``AutomationCondition.eager()``, requests it when an observation reports a new ETag, so an
    observation of an unchanged ETag launches no run. The run needs no run config, and run
    config can set ``force`` (see :class:`SutroJobResultsConfig`). Launched by hand while the
    job has not SUCCEEDED, the step fails with the job's state. The asset declares the checks of
    :mod:`dagster_sutro.checks` unless ``enable_asset_checks`` is false.

    The conditions are evaluated by the ``default_automation_condition_sensor`` that Dagster adds
    for assets with a condition. It starts stopped, so turn it on in the UI (or define an
    ``AutomationConditionSensorDefinition`` with ``default_status=RUNNING``). The observation
    uses ``dg.multi_observable_source_asset``, a beta API that emits a ``BetaWarning`` when the
    definitions load.

    Args:
        job_id: The Sutro job.
        destination: The fsspec URL or local path for the results. A value ending in ``/`` is
            a directory that receives the artifact's own file name.
        key_prefix: The first components of both asset keys.
        name: The key component for the job; the job id with every character but letters,
            digits and ``_`` replaced by ``_`` by default.
        observe_cron: The cron schedule of the observations, or ``None`` for none. Ignored
            when ``observe_automation_condition`` is set.
        include_inputs: Fetch the artifact with the job's input column(s).
        include_cumulative_logprobs: Fetch the artifact with a ``cumulative_logprobs`` column.
        storage_options: Options for the destination's fsspec filesystem.
        resource_key: The key under which the :class:`SutroResource` is provided.
        group_name: The asset group of both assets.
        observe_automation_condition: The condition of the artifact's observation instead of
            ``AutomationCondition.on_cron(observe_cron)``.
        automation_condition: The condition of the download instead of
            ``AutomationCondition.eager()``.
        pool: A concurrency pool that caps how many downloads run at once.
        retry_policy: The retry policy of the download step; three retries with exponential
            backoff from 30 seconds by default, ``None`` for none. Failed blocking checks are
            not retried.
        description: The description of the results asset.
        owners: Owners of both assets.
        tags: Tags of both assets.
        kinds: Kinds of the results asset; ``{"sutro", "parquet"}`` by default.
        preview_rows: Number of rows shown in the preview metadata; 0 for none.
        enable_asset_checks: Declare the checks of :mod:`dagster_sutro.checks` on the results
            asset.

    Returns:
        ``[artifact, results]``: the observable source asset and the downloading asset.

    Raises:
        InvalidInputError: If ``job_id`` is not a valid job id.

    Examples:
        .. code-block:: python

            import dagster as dg
            from dagster_sutro import SutroResource, build_sutro_job_assets

            defs = dg.Definitions(
                assets=build_sutro_job_assets(
                    job_id="job-5f0c",
                    destination="s3://my-bucket/sutro/",
                    observe_cron="*/30 * * * *",
                    pool="sutro_downloads",
                ),
                resources={
                    "sutro": SutroResource(
                        api_key=dg.EnvVar("SUTRO_API_KEY"),
                        api_url=dg.EnvVar("SUTRO_API_URL"),
                    )
                },
            )
    """
    validate_job_id(job_id)
    component = name or job_key_component(job_id)
    artifact_key = dg.AssetKey([*key_prefix, component, "artifact"])
    results_key = dg.AssetKey([*key_prefix, component, "results"])
    if observe_automation_condition is None and observe_cron is not None:
        observe_automation_condition = dg.AutomationCondition.on_cron(observe_cron)

    artifact = _build_artifact_asset(
        key=artifact_key,
        job_id=job_id,
        include_inputs=include_inputs,
        include_cumulative_logprobs=include_cumulative_logprobs,
        resource_key=resource_key,
        group_name=group_name,
        automation_condition=observe_automation_condition,
        owners=owners,
        tags=tags,
    )

    spec = dg.AssetSpec(
        results_key,
        deps=[artifact_key],
        description=description
        or f"Parquet results of Sutro job {job_id}, downloaded when the artifact's ETag changes.",
        metadata={md.JOB_ID_KEY: job_id},
        group_name=group_name,
        automation_condition=automation_condition or dg.AutomationCondition.eager(),
        owners=list(owners) if owners else None,
        tags=dict(tags) if tags else None,
        kinds=kinds or {"sutro", "parquet"},
    )
    options = dict(storage_options or {})

    @results_multi_asset(
        spec,
        resource_key=resource_key,
        enable_asset_checks=enable_asset_checks,
        pool=pool,
        retry_policy=retry_policy,
    )
    def _job_results(
        context: dg.AssetExecutionContext, config: SutroJobResultsConfig
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        sutro: SutroResource = getattr(context.resources, resource_key)
        request = ResultsRequest(
            job_id=job_id,
            destination=destination,
            include_inputs=include_inputs,
            include_cumulative_logprobs=include_cumulative_logprobs,
            force=config.force,
            storage_options=options,
        )
        yield from run_results_step(context, sutro, request, preview_rows=preview_rows)

    return [artifact, _job_results]


def _build_artifact_asset(
    *,
    key: dg.AssetKey,
    job_id: str,
    include_inputs: bool,
    include_cumulative_logprobs: bool,
    resource_key: str,
    group_name: str | None,
    automation_condition: dg.AutomationCondition | None,
    owners: Sequence[str] | None,
    tags: Mapping[str, str] | None,
) -> dg.AssetsDefinition:
    """Build the observable source asset that reports the artifact's ETag as its data version.

    It is a ``multi_observable_source_asset`` with a skippable spec, because that is the shape
    whose function may report no observation at all (while the job has not SUCCEEDED).
    """
    spec = dg.AssetSpec(
        key,
        description=f"The results artifact of Sutro job {job_id} in Sutro's storage, observed "
        "through results-url and HEAD. Its data version is the artifact's ETag.",
        metadata={
            md.JOB_ID_KEY: job_id,
            md.INCLUDE_INPUTS_KEY: include_inputs,
            md.INCLUDE_LOGPROBS_KEY: include_cumulative_logprobs,
        },
        skippable=True,
        group_name=group_name,
        automation_condition=automation_condition,
        owners=list(owners) if owners else None,
        tags=dict(tags) if tags else None,
        kinds={"sutro"},
    )

    def _observe_artifact(context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
        sutro: SutroResource = getattr(context.resources, resource_key)
        client = sutro.get_client()
        try:
            urls = client.get_results_download_url(
                job_id,
                include_inputs=include_inputs,
                include_cumulative_logprobs=include_cumulative_logprobs,
            )
            head = head_artifact(urls, settings=sutro.get_transfer_settings())
        except SutroJobNotReadyError as error:
            _handle_job_not_ready(context, job_id, error)
            return
        except SutroError as error:
            raise dg.Failure(
                description=f"Observation of Sutro job {job_id}'s artifact failed: {error}",
                metadata={md.JOB_ID_KEY: job_id},
            ) from None

        _log_etag_change(context, key, job_id, head.etag)
        metadata: dict[str, Any] = {
            md.JOB_ID_KEY: job_id,
            JOB_STATUS_KEY: "SUCCEEDED",
            md.ETAG_KEY: head.etag,
            md.SIZE_BYTES_KEY: dg.MetadataValue.int(head.content_length),
            md.ARTIFACT_KEY_KEY: urls.artifact.key,
            md.INCLUDE_INPUTS_KEY: dg.MetadataValue.bool(include_inputs),
            md.INCLUDE_LOGPROBS_KEY: dg.MetadataValue.bool(include_cumulative_logprobs),
        }
        if head.last_modified is not None:
            metadata[LAST_MODIFIED_KEY] = dg.MetadataValue.timestamp(head.last_modified)
        yield dg.ObserveResult(
            asset_key=key,
            data_version=dg.DataVersion(head.etag),
            metadata=metadata,
        )

    observe = dg.multi_observable_source_asset(
        name=key.to_python_identifier(),
        specs=[spec],
        required_resource_keys={resource_key},
    )
    return observe(with_resolved_annotations(_observe_artifact))


def _handle_job_not_ready(
    context: dg.AssetExecutionContext, job_id: str, error: SutroJobNotReadyError
) -> None:
    """Log why nothing is observed, or fail when the job can never produce results."""
    if error.job_status in FAILED_JOB_STATES:
        context.log.error(
            f"Sutro job {job_id} is {error.job_status}, so it has no results to observe. "
            "Remove its assets or point them at another job."
        )
        raise dg.Failure(
            description=str(error),
            metadata={md.JOB_ID_KEY: job_id, JOB_STATUS_KEY: error.job_status},
            allow_retries=False,
        )
    context.log.info(
        f"Sutro job {job_id} is {error.job_status}, not SUCCEEDED, so no observation is "
        "reported and its results asset is not requested."
    )


def _log_etag_change(
    context: dg.AssetExecutionContext, key: dg.AssetKey, job_id: str, etag: str
) -> None:
    """Log whether the ETag differs from the previous observation's, and what follows."""
    records = context.instance.fetch_observations(key, limit=1).records
    observation = records[0].asset_observation if records else None
    previous = md.metadata_value(dict(observation.metadata), md.ETAG_KEY) if observation else None
    if previous is None:
        context.log.info(
            f"Sutro job {job_id} is SUCCEEDED, and its artifact has ETag {etag}, the first data "
            "version observed."
        )
    elif previous == etag:
        context.log.info(
            f"Sutro job {job_id} is SUCCEEDED, and its artifact's ETag {etag} is unchanged since "
            "the last observation, so the downloaded results are up to date."
        )
    else:
        context.log.info(
            f"Sutro job {job_id} is SUCCEEDED, and its artifact's ETag changed from {previous} "
            f"to {etag}, a new data version that makes the downloaded results out of date."
        )
