"""A component that declares Sutro jobs in ``defs.yaml`` and builds their assets and resource."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from dagster_sutro.assets import DEFAULT_RESOURCE_KEY
from dagster_sutro.errors import InvalidInputError
from dagster_sutro.resource import SutroResource

ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_OBSERVE_CRON = "*/15 * * * *"
TEMPLATE_JOB_ID = "job-replace-with-your-job-id"
TEMPLATE_DESTINATION = "sutro_results/"


class SutroResourceSettings(dg.Model, dg.Resolvable):
    """Settings of the Sutro resource a component provides.

    The API key and the deployment origin are given as the *names* of environment variables.
    They become ``dg.EnvVar`` values, which Dagster reads when a run starts and hides in the UI,
    so neither value is ever written to YAML or shown in the UI.
    """

    api_url_env_var: str = Field(
        default="SUTRO_API_URL",
        description="Name of the environment variable that contains the deployment origin.",
    )
    api_key_env_var: str = Field(
        default="SUTRO_API_KEY",
        description="Name of the environment variable that contains the API key (not the key).",
    )
    request_timeout_seconds: float | None = Field(
        default=None, description="Timeout of each Sutro API request, in seconds."
    )
    max_retries: int | None = Field(
        default=None, description="How many times a failed API request is retried."
    )
    part_size_bytes: int | None = Field(
        default=None, description="Size of each ranged part of a download, in bytes."
    )
    max_concurrency: int | None = Field(
        default=None, description="Number of parts downloaded in parallel."
    )
    read_timeout_seconds: float | None = Field(
        default=None,
        description="Seconds a storage read may wait for the next bytes before it is retried.",
    )

    def build_resource(self) -> SutroResource:
        """Build the resource, reading the key and origin from the environment at launch.

        Returns:
            A :class:`SutroResource` whose ``api_key`` and ``api_url`` are ``dg.EnvVar`` values.

        Raises:
            InvalidInputError: If an environment variable name is not a valid name. The
                message never repeats the value, in case a key was pasted by mistake.
        """
        for field_name in ("api_url_env_var", "api_key_env_var"):
            if not ENV_VAR_NAME.match(getattr(self, field_name)):
                raise InvalidInputError(
                    f"resource.{field_name} must be the name of an environment variable "
                    "(letters, digits and underscores, for example SUTRO_API_KEY), not a "
                    "value. Put the key itself in that environment variable."
                )
        tuning = {
            name: getattr(self, name)
            for name in (
                "request_timeout_seconds",
                "max_retries",
                "part_size_bytes",
                "max_concurrency",
                "read_timeout_seconds",
            )
            if getattr(self, name) is not None
        }
        return SutroResource(
            api_key=dg.EnvVar(self.api_key_env_var),
            api_url=dg.EnvVar(self.api_url_env_var),
            **tuning,
        )


class SutroJobSettings(dg.Model, dg.Resolvable):
    """One Sutro job whose results the component turns into assets."""

    job_id: str = Field(description="Id of the Sutro job.")
    destination: str = Field(
        description="fsspec URL or local path for the results. A value ending in '/' is a "
        "directory that receives the artifact under its own file name."
    )
    include_inputs: bool = Field(default=False, description="Add the job's input column(s).")
    include_cumulative_logprobs: bool = Field(
        default=False, description="Add a cumulative_logprobs column."
    )
    key_prefix: list[str] = Field(
        default_factory=lambda: ["sutro"],
        description="Asset key prefix; the job id follows it in each asset key.",
    )
    observe_cron: str | None = Field(
        default=DEFAULT_OBSERVE_CRON,
        description="Cron schedule on which the artifact's ETag is observed; null to observe "
        "only when an observation is launched by hand.",
    )
    storage_options: dict[str, Any] | None = Field(
        default=None,
        description="Options for the destination's fsspec filesystem, for example "
        "endpoint_url. Use environment variables for credentials, not this field.",
    )
    group_name: str | None = Field(
        default=None, description="Asset group; defaults to the component's group_name."
    )
    pool: str | None = Field(
        default=None, description="Concurrency pool that limits parallel downloads."
    )


class SutroResultsScaffoldParams(BaseModel):
    """Values ``dg scaffold defs`` can fill into the template."""

    job_id: str | None = None
    destination: str | None = None


class SutroResultsScaffolder(dg.Scaffolder[SutroResultsScaffoldParams]):
    """Write a commented ``defs.yaml`` for :class:`SutroResultsComponent`."""

    @classmethod
    def get_scaffold_params(cls) -> type[SutroResultsScaffoldParams]:
        """Return the model of the accepted scaffold parameters."""
        return SutroResultsScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[SutroResultsScaffoldParams]) -> None:
        """Write ``defs.yaml`` into the scaffold target directory."""
        params = request.params or SutroResultsScaffoldParams()
        if request.scaffold_format != "yaml":
            dg.scaffold_component(request, {})
            return
        text = render_defs_yaml(
            request.type_name,
            job_id=params.job_id or TEMPLATE_JOB_ID,
            destination=params.destination or TEMPLATE_DESTINATION,
        )
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(text, encoding="utf-8")


def render_defs_yaml(type_name: str, *, job_id: str, destination: str) -> str:
    """Render the ``defs.yaml`` template of :class:`SutroResultsComponent`.

    Args:
        type_name: The component type written after ``type:``.
        job_id: The job id of the example entry.
        destination: The destination of the example entry.

    Returns:
        The YAML text, with comments that explain each setting.
    """
    return f"""\
type: {type_name}

attributes:
  # The Sutro resource is provided under this key. Set resource to null to use a resource
  # that the project defines elsewhere under the same key.
  resource_key: sutro
  resource:
    # Names of environment variables, read when a run starts. Never put the API key itself
    # in this file: Dagster reads the variable at launch and hides its value in the UI.
    api_url_env_var: SUTRO_API_URL
    api_key_env_var: SUTRO_API_KEY

  # One entry per Sutro job. Each job gets an observable asset that HEADs the results
  # artifact on observe_cron, and a results asset that downloads the artifact whenever the
  # observed ETag changes. Asset keys start with key_prefix followed by the job id.
  jobs:
    - job_id: {_yaml_string(job_id)}
      destination: {_yaml_string(destination)}
      include_inputs: false
      include_cumulative_logprobs: false
      key_prefix: [sutro]
      observe_cron: "{DEFAULT_OBSERVE_CRON}"

# dg checks that these environment variables are set.
requirements:
  env:
    - SUTRO_API_URL
    - SUTRO_API_KEY
"""


def _yaml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dg.scaffold_with(SutroResultsScaffolder)
class SutroResultsComponent(dg.Component, dg.Model, dg.Resolvable):
    """Sutro jobs declared in YAML, each fetched into Dagster when its artifact changes.

    For each entry of ``jobs`` the component builds the assets of
    :func:`build_sutro_job_assets`: an observable asset that HEADs the job's results artifact
    on ``observe_cron``, and a results asset that downloads the artifact when the observed
    ETag changes. It also provides the :class:`SutroResource` under ``resource_key``, with the
    API key and origin read from the environment variables that ``resource`` names.

    Scaffold it with ``dg scaffold defs dagster_sutro.SutroResultsComponent sutro``, which
    writes a commented ``defs.yaml``.

    Examples:
        .. code-block:: yaml

            type: dagster_sutro.SutroResultsComponent
            attributes:
              resource:
                api_url_env_var: SUTRO_API_URL
                api_key_env_var: SUTRO_API_KEY
              jobs:
                - job_id: job-5f0c
                  destination: s3://my-bucket/sutro/
                  include_inputs: true
            requirements:
              env: [SUTRO_API_URL, SUTRO_API_KEY]
    """

    jobs: list[SutroJobSettings] = Field(
        default_factory=list, description="The Sutro jobs whose results become assets."
    )
    resource_key: str = Field(
        default=DEFAULT_RESOURCE_KEY, description="Key of the Sutro resource the assets use."
    )
    resource: SutroResourceSettings | None = Field(
        default_factory=SutroResourceSettings,
        description="The Sutro resource to provide; null to use one the project defines.",
    )
    group_name: str | None = Field(
        default=None, description="Asset group of jobs that set no group_name."
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """Build the assets of every job and, unless ``resource`` is null, the resource."""
        _check_unique_jobs(self.jobs)
        assets: list[Any] = []
        checks: list[dg.AssetChecksDefinition] = []
        for job in self.jobs:
            for definition in self.build_job_definitions(job):
                if isinstance(definition, dg.AssetChecksDefinition):
                    checks.append(definition)
                else:
                    assets.append(definition)
        resources = {self.resource_key: self.resource.build_resource()} if self.resource else {}
        return dg.Definitions(assets=assets, asset_checks=checks, resources=resources)

    def build_job_definitions(self, job: SutroJobSettings) -> Sequence[Any]:
        """Build the definitions of one job; override to customize them.

        Args:
            job: The job's settings from YAML.

        Returns:
            The assets and asset checks of :func:`build_sutro_job_assets` for the job.
        """
        # Imported here so that the component module loads without the automation module.
        from dagster_sutro.automation import build_sutro_job_assets

        return build_sutro_job_assets(
            job_id=job.job_id,
            destination=job.destination,
            key_prefix=tuple(job.key_prefix),
            observe_cron=job.observe_cron,
            include_inputs=job.include_inputs,
            include_cumulative_logprobs=job.include_cumulative_logprobs,
            storage_options=job.storage_options,
            resource_key=self.resource_key,
            group_name=job.group_name or self.group_name,
            pool=job.pool,
        )


def _check_unique_jobs(jobs: Sequence[SutroJobSettings]) -> None:
    # Compared by asset key, because job ids that differ only in punctuation
    # ("job-a" and "job_a") map to the same key component.
    from dagster_sutro.automation import job_key_component

    seen: dict[tuple[tuple[str, ...], str], str] = {}
    for job in jobs:
        key = (tuple(job.key_prefix), job_key_component(job.job_id))
        if key in seen:
            raise InvalidInputError(
                f"Jobs {seen[key]} and {job.job_id} with key_prefix {job.key_prefix} would get "
                "the same asset keys. Remove the duplicate or give one of them another "
                "key_prefix."
            )
        seen[key] = job.job_id
