"""The config-driven results asset: fetch a Sutro job's Parquet results on request."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_sutro.client import (
    DEFAULT_EXPIRES_IN_SECONDS,
    MAX_EXPIRES_IN_SECONDS,
    MIN_EXPIRES_IN_SECONDS,
)
from dagster_sutro.resource import SutroResource
from dagster_sutro.step import ResultsRequest, results_multi_asset, run_results_step

DEFAULT_DESTINATION = "sutro_results/"
DEFAULT_RESOURCE_KEY = "sutro"


class SutroFetchConfig(dg.Config):
    """Run config shared by the results assets: which artifact to fetch, and whether to force."""

    include_inputs: bool = Field(
        default=False, description="Add the job's input column(s) to the results."
    )
    include_cumulative_logprobs: bool = Field(
        default=False, description="Add a cumulative_logprobs column to the results."
    )
    expires_in_seconds: int = Field(
        default=DEFAULT_EXPIRES_IN_SECONDS,
        ge=MIN_EXPIRES_IN_SECONDS,
        le=MAX_EXPIRES_IN_SECONDS,
        description="Lifetime of the presigned URLs to request, 1 to 604800 seconds. Expired "
        "URLs are refreshed during long downloads.",
    )
    force: bool = Field(
        default=False,
        description="Download and materialize even when the artifact's ETag is unchanged.",
    )


class SutroResultsConfig(SutroFetchConfig):
    """Run config of a results asset: which job to fetch and how."""

    job_id: str = Field(description="Id of the Sutro job whose results to fetch.")
    destination: str | None = Field(
        default=None,
        description="fsspec URL or local path to write the results to. A value ending in '/' "
        "is a directory that receives the artifact's own file name. Defaults to the "
        "destination set on the asset definition.",
    )


def build_sutro_results_asset(
    *,
    key: str | Sequence[str] | dg.AssetKey = "sutro_results",
    destination: str = DEFAULT_DESTINATION,
    storage_options: Mapping[str, Any] | None = None,
    group_name: str | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    description: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    kinds: set[str] | None = None,
    pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    preview_rows: int = 5,
    enable_asset_checks: bool = True,
) -> dg.AssetsDefinition:
    """Build an asset that downloads a Sutro job's results, with the job named in run config.

    Each run calls ``results-url`` and HEADs the artifact. When the most recent materialization
    for the same job, include flags and destination recorded the same ETag, and the destination
    still contains a file of the recorded size, the run downloads nothing and records no
    materialization. Otherwise it downloads the artifact and materializes it with the ETag as
    its data version.

    Args:
        key: The asset key.
        destination: The default fsspec URL or local path for the results; run config can
            override it. A value ending in ``/`` is a directory.
        storage_options: Options for the destination's fsspec filesystem.
        group_name: The asset group.
        resource_key: The key under which the :class:`SutroResource` is provided.
        description: The asset description shown in the UI.
        owners: Owners of the asset.
        tags: Tags of the asset.
        kinds: Kinds shown as badges in the UI; ``{"sutro", "parquet"}`` by default.
        pool: A concurrency pool that caps how many downloads run at once.
        retry_policy: A retry policy for the whole step.
        preview_rows: Number of rows shown in the preview metadata; 0 for none.
        enable_asset_checks: Declare the ``row_count_positive``, ``outputs_column_present``
            and ``schema_unchanged`` checks, evaluated from the Parquet footer in the same step
            (see :mod:`dagster_sutro.checks`). A run that skips the download evaluates none.

    Returns:
        The asset definition. Its run config is :class:`SutroResultsConfig`.

    Examples:
        .. code-block:: python

            results = build_sutro_results_asset(
                key=["sutro", "results"],
                destination="s3://my-bucket/sutro/",
                storage_options={"anon": False},
            )
    """
    asset_key = dg.AssetKey.from_coercible(key) if not isinstance(key, dg.AssetKey) else key
    options = dict(storage_options or {})

    spec = dg.AssetSpec(
        asset_key,
        group_name=group_name,
        description=description
        or "Parquet results of a Sutro batch job, downloaded when the artifact's ETag changes.",
        owners=list(owners) if owners else None,
        tags=dict(tags) if tags else None,
        kinds=kinds or {"sutro", "parquet"},
    )

    @results_multi_asset(
        spec,
        resource_key=resource_key,
        enable_asset_checks=enable_asset_checks,
        pool=pool,
        retry_policy=retry_policy,
    )
    def _sutro_results(
        context: dg.AssetExecutionContext, config: SutroResultsConfig
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        sutro: SutroResource = getattr(context.resources, resource_key)
        request = ResultsRequest(
            job_id=config.job_id,
            destination=destination if config.destination is None else config.destination,
            include_inputs=config.include_inputs,
            include_cumulative_logprobs=config.include_cumulative_logprobs,
            expires_in_seconds=config.expires_in_seconds,
            force=config.force,
            storage_options=options,
        )
        yield from run_results_step(context, sutro, request, preview_rows=preview_rows)

    return _sutro_results


sutro_results = build_sutro_results_asset()
"""The ready-made results asset: key ``sutro_results``, resource key ``sutro``, results
written to a ``sutro_results/`` directory under the working directory."""
