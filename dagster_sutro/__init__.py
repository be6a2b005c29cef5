"""Dagster integration for the Sutro Batch API.

Fetch a Sutro batch job's Parquet results into a Dagster asset graph: a resource for the API,
assets that download the results artifact when its ETag changes, and a local emulator in
:mod:`dagster_sutro.testing` for offline tests.
"""

from dagster_sutro.assets import (
    SutroFetchConfig as SutroFetchConfig,
    SutroResultsConfig as SutroResultsConfig,
    build_sutro_results_asset as build_sutro_results_asset,
    sutro_results as sutro_results,
)
from dagster_sutro.automation import (
    SutroJobResultsConfig as SutroJobResultsConfig,
    build_sutro_job_assets as build_sutro_job_assets,
)
from dagster_sutro.checks import build_sutro_check_specs as build_sutro_check_specs
from dagster_sutro.client import SutroClient as SutroClient
from dagster_sutro.components import (
    SutroJobSettings as SutroJobSettings,
    SutroResourceSettings as SutroResourceSettings,
    SutroResultsComponent as SutroResultsComponent,
)
from dagster_sutro.errors import (
    ArtifactChangedError as ArtifactChangedError,
    DestinationError as DestinationError,
    DownloadError as DownloadError,
    InvalidInputError as InvalidInputError,
    StorageError as StorageError,
    SutroApiError as SutroApiError,
    SutroAuthenticationError as SutroAuthenticationError,
    SutroError as SutroError,
    SutroJobNotReadyError as SutroJobNotReadyError,
)
from dagster_sutro.loader import (
    SutroResultsInputManager as SutroResultsInputManager,
    load_sutro_results as load_sutro_results,
)
from dagster_sutro.models import (
    ArtifactHead as ArtifactHead,
    ArtifactInfo as ArtifactInfo,
    DownloadResult as DownloadResult,
    ResultsDownloadUrl as ResultsDownloadUrl,
)
from dagster_sutro.partitions import (
    SutroPartitionedResultsConfig as SutroPartitionedResultsConfig,
    build_sutro_new_jobs_sensor as build_sutro_new_jobs_sensor,
    build_sutro_partitioned_results_asset as build_sutro_partitioned_results_asset,
)
from dagster_sutro.redaction import redact_url as redact_url
from dagster_sutro.resource import SutroResource as SutroResource
from dagster_sutro.sensors import build_sutro_results_sensor as build_sutro_results_sensor
from dagster_sutro.version import __version__ as __version__
