"""The Dagster resource for the Sutro Batch API."""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_sutro.client import (
    DEFAULT_EXPIRES_IN_SECONDS,
    SutroClient,
    validate_expires_in_seconds,
    validate_job_id,
)
from dagster_sutro.models import ArtifactHead, DownloadResult, ResultsDownloadUrl
from dagster_sutro.transfer import (
    TransferSettings,
    download_artifact,
    head_artifact,
    resolve_destination,
)

DEFAULT_PART_SIZE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 8


class SutroResource(dg.ConfigurableResource):
    """Access to a Sutro deployment: results URLs, job states and artifact downloads.

    Pass the key and the deployment origin as environment variables, so that Dagster reads them
    at launch and hides them in the UI.

    Examples:
        .. code-block:: python

            import dagster as dg
            from dagster_sutro import SutroResource, sutro_results

            defs = dg.Definitions(
                assets=[sutro_results],
                resources={
                    "sutro": SutroResource(
                        api_key=dg.EnvVar("SUTRO_API_KEY"),
                        api_url=dg.EnvVar("SUTRO_API_URL"),
                    )
                },
            )
    """

    api_key: str = Field(
        description='Sutro API key (sk_...). Pass dg.EnvVar("SUTRO_API_KEY") so the value '
        "stays out of code and is hidden in the UI.",
        repr=False,
    )
    api_url: str = Field(
        description="Origin of your Sutro deployment, with or without /v1, for example "
        'https://acme.sutro-deploy.example. Pass dg.EnvVar("SUTRO_API_URL").'
    )
    request_timeout_seconds: float = Field(
        default=60.0,
        description="Connect and read timeout of each Sutro API request, in seconds.",
    )
    max_retries: int = Field(
        default=5,
        description="How many times an API request is retried after a connection error, 429, "
        "500, 502, 503, 504 or 524, with exponential backoff.",
    )
    part_size_bytes: int = Field(
        default=DEFAULT_PART_SIZE_BYTES,
        description="Size of each ranged part of an artifact download, in bytes.",
    )
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        description="Number of parts downloaded in parallel, each over its own connection.",
    )
    read_timeout_seconds: float = Field(
        default=60.0,
        description="Seconds a storage read may wait for the next bytes before the part is "
        "retried from its last good byte. This is an idle timeout, not a total one.",
    )

    def get_client(self) -> SutroClient:
        """Build a client for the Sutro API from this resource's settings.

        Returns:
            A :class:`SutroClient` that can be used outside Dagster as well.
        """
        return SutroClient(
            self.api_url,
            self.api_key,
            request_timeout_seconds=self.request_timeout_seconds,
            max_retries=self.max_retries,
        )

    def get_transfer_settings(self, **overrides: Any) -> TransferSettings:
        """Build the transfer engine settings from this resource's fields.

        Args:
            **overrides: Fields of :class:`TransferSettings` to set instead.

        Returns:
            The settings of the download engine.
        """
        values: dict[str, Any] = {
            "part_size_bytes": self.part_size_bytes,
            "max_concurrency": self.max_concurrency,
            "read_timeout_seconds": self.read_timeout_seconds,
        }
        values.update({name: value for name, value in overrides.items() if value is not None})
        return TransferSettings(**values)

    def get_results_download_url(
        self,
        job_id: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
        expires_in_seconds: int = DEFAULT_EXPIRES_IN_SECONDS,
    ) -> ResultsDownloadUrl:
        """Create or reuse a job's results artifact and return presigned URLs for it.

        Args:
            job_id: The job whose results to fetch.
            include_inputs: Add the job's input columns to the artifact.
            include_cumulative_logprobs: Add a ``cumulative_logprobs`` column.
            expires_in_seconds: The lifetime of the URLs, 1 to 604800.

        Returns:
            The artifact's bucket, key, file name and size, and its GET and HEAD URLs. Its
            ``repr`` shows no signature.

        Raises:
            SutroJobNotReadyError: If the job has not succeeded; it carries the job's state.
            SutroAuthenticationError: If the API key was rejected.
            SutroApiError: For any other error response.
        """
        return self.get_client().get_results_download_url(
            job_id,
            include_inputs=include_inputs,
            include_cumulative_logprobs=include_cumulative_logprobs,
            expires_in_seconds=expires_in_seconds,
        )

    def head_results(
        self,
        job_id: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
    ) -> ArtifactHead:
        """Read the artifact's ETag, size and modification time without downloading it.

        Args:
            job_id: The job whose artifact to inspect.
            include_inputs: Inspect the artifact with input columns.
            include_cumulative_logprobs: Inspect the artifact with a ``cumulative_logprobs``
                column.

        Returns:
            The ETag exactly as storage returned it, the content length and ``Last-Modified``.
        """
        urls = self.get_results_download_url(
            job_id,
            include_inputs=include_inputs,
            include_cumulative_logprobs=include_cumulative_logprobs,
        )
        return head_artifact(urls, settings=self.get_transfer_settings())

    def download_results(
        self,
        job_id: str,
        destination: str,
        *,
        include_inputs: bool = False,
        include_cumulative_logprobs: bool = False,
        storage_options: dict[str, Any] | None = None,
        expected_etag: str | None = None,
        expires_in_seconds: int = DEFAULT_EXPIRES_IN_SECONDS,
        part_size_bytes: int | None = None,
        max_concurrency: int | None = None,
        logger: Any = None,
    ) -> DownloadResult:
        """Download a job's results artifact to an fsspec destination.

        The file is written to a temporary object beside the destination and published only
        after its size and Parquet footer check out, so an earlier file at the destination is
        never replaced by a partial one.

        Args:
            job_id: The job whose results to download.
            destination: An fsspec URL or local path. A value ending in ``/`` is a directory
                that receives the artifact under its own file name.
            include_inputs: Download the artifact with input columns.
            include_cumulative_logprobs: Download the artifact with a ``cumulative_logprobs``
                column.
            storage_options: Options for the destination's fsspec filesystem, for example
                ``{"endpoint_url": ...}`` for ``s3://``.
            expected_etag: Download only this version; a different ETag raises
                :class:`ArtifactChangedError`.
            expires_in_seconds: The lifetime of the presigned URLs to request.
            part_size_bytes: The part size for this call instead of the resource's.
            max_concurrency: The number of parallel parts for this call instead of the
                resource's.
            logger: Where progress is logged; a ``logging.Logger`` or Dagster's ``context.log``.

        Returns:
            The published URI, the ETag, the size, the bytes transferred and the seconds taken.

        Examples:
            .. code-block:: python

                result = sutro.download_results("job-5f0c", "s3://bucket/sutro/")
                print(result.uri, result.etag)
        """
        validate_job_id(job_id)
        validate_expires_in_seconds(expires_in_seconds)
        target = resolve_destination(destination, storage_options=storage_options)
        client = self.get_client()
        settings = self.get_transfer_settings(
            part_size_bytes=part_size_bytes, max_concurrency=max_concurrency
        )

        def get_urls() -> ResultsDownloadUrl:
            return client.get_results_download_url(
                job_id,
                include_inputs=include_inputs,
                include_cumulative_logprobs=include_cumulative_logprobs,
                expires_in_seconds=expires_in_seconds,
            )

        return download_artifact(
            get_urls,
            target,
            expected_etag=expected_etag,
            storage_options=storage_options,
            settings=settings,
            logger=logger or logging.getLogger("dagster_sutro"),
        )

    def get_job_status(self, job_id: str) -> str:
        """Return the state of a job, for example ``RUNNING`` or ``SUCCEEDED``.

        Args:
            job_id: The job to look up.

        Returns:
            The job's state.
        """
        return self.get_client().get_job_status(job_id)
