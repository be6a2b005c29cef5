"""One asset for many Sutro jobs: a partition per job, and a sensor that adds new jobs.

:func:`build_sutro_partitioned_results_asset` builds a results asset whose dynamic partition
key is the job id. :func:`build_sutro_new_jobs_sensor` pages ``list-jobs`` and, for each job
that has SUCCEEDED and is not a partition yet, adds the partition and requests a run for it.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dagster_sutro import metadata as md
from dagster_sutro.assets import DEFAULT_RESOURCE_KEY, SutroFetchConfig
from dagster_sutro.automation import DEFAULT_AUTOMATION_RETRY_POLICY
from dagster_sutro.client import (
    SutroClient,
    validate_job_id,
)
from dagster_sutro.errors import InvalidInputError, SutroError
from dagster_sutro.resource import SutroResource
from dagster_sutro.step import ResultsRequest, results_multi_asset, run_results_step

DEFAULT_PARTITIONS_DEF_NAME = "sutro_jobs"
JOB_ID_PLACEHOLDER = "{job_id}"

CURSOR_VERSION = 1
DEFAULT_MINIMUM_INTERVAL_SECONDS = 300
DEFAULT_PAGE_SIZE = 100
DEFAULT_MAX_NEW_PARTITIONS_PER_TICK = 25
# A sensor evaluation times out after 60 seconds by default (Dagster's gRPC timeout). The scan
# stops paging well before that and resumes from the same page on the next tick.
DEFAULT_TIME_BUDGET_SECONDS = 40.0
# How many job ids a log line lists before it only counts them.
LOGGED_JOB_IDS = 10

# Jobs in these states never change again. Jobs in any other state are checked on a later tick.
FINISHED_WITHOUT_RESULTS_STATES = frozenset({"FAILED", "CANCELLED"})


class SutroPartitionedResultsConfig(SutroFetchConfig):
    """Run config of the partitioned results asset. The partition key names the job."""


def build_sutro_partitioned_results_asset(
    *,
    key: str | Sequence[str] | dg.AssetKey = "sutro_job_results",
    destination: str,
    partitions_def: dg.DynamicPartitionsDefinition | None = None,
    storage_options: Mapping[str, Any] | None = None,
    group_name: str | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    description: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    kinds: set[str] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = DEFAULT_AUTOMATION_RETRY_POLICY,
    preview_rows: int = 5,
    enable_asset_checks: bool = True,
) -> dg.AssetsDefinition:
    """Build a results asset with one dynamic partition per Sutro job, keyed by the job id.

    Each run downloads the artifact of the job named by its partition key. The skip rule works
    per partition: a partition whose last materialization recorded the same ETag, and whose
    file is still at the destination with the recorded size, downloads nothing. The run config
    (:class:`SutroPartitionedResultsConfig`) sets the include flags and ``force``, and all
    its fields have defaults, so sensor and backfill runs need none.

    Add partitions with :func:`build_sutro_new_jobs_sensor`, from the UI, or with
    ``instance.add_dynamic_partitions``.

    Args:
        key: The asset key.
        destination: Where the results go: a directory ending in ``/``, which receives each
            artifact under its own file name (the name contains the job id), or a path
            containing ``{job_id}``, which is replaced by the partition key.
        partitions_def: The dynamic partitions; ``DynamicPartitionsDefinition(name="sutro_jobs")``
            by default. Pass the same object to the sensor.
        storage_options: Options for the destination's fsspec filesystem.
        group_name: The asset group.
        resource_key: The key under which the :class:`SutroResource` is provided.
        description: The asset description shown in the UI.
        owners: Owners of the asset.
        tags: Tags of the asset.
        kinds: Kinds shown as badges in the UI; ``{"sutro", "parquet"}`` by default.
        automation_condition: A Declarative Automation condition, for example
            ``AutomationCondition.eager()`` to materialize each partition once it is added.
            ``None`` by default, because the sensor requests runs itself.
        pool: A concurrency pool that caps how many downloads run at once.
        retry_policy: The retry policy of the download step; three retries with exponential
            backoff from 30 seconds by default, ``None`` for none. Failed blocking checks are
            not retried.
        preview_rows: Number of rows shown in the preview metadata; 0 for none.
        enable_asset_checks: Declare the checks of :mod:`dagster_sutro.checks`.

    Returns:
        The asset definition. Its ``partitions_def`` is the dynamic partitions definition.

    Raises:
        InvalidInputError: If ``destination`` names a single file, which every partition
            would overwrite.

    Examples:
        .. code-block:: python

            import dagster as dg
            from dagster_sutro import (
                build_sutro_new_jobs_sensor,
                build_sutro_partitioned_results_asset,
            )

            jobs = dg.DynamicPartitionsDefinition(name="sutro_jobs")
            results = build_sutro_partitioned_results_asset(
                destination="s3://my-bucket/sutro/{job_id}/", partitions_def=jobs
            )
            new_jobs = build_sutro_new_jobs_sensor(asset=results, partitions_def=jobs)
            defs = dg.Definitions(assets=[results], sensors=[new_jobs])
    """
    if not destination.endswith("/") and JOB_ID_PLACEHOLDER not in destination:
        raise InvalidInputError(
            f"Destination {destination!r} names a single file, which every partition would "
            f"overwrite. End it with '/' or put {JOB_ID_PLACEHOLDER} in it."
        )
    asset_key = dg.AssetKey.from_coercible(key) if not isinstance(key, dg.AssetKey) else key
    partitions = partitions_def or dg.DynamicPartitionsDefinition(name=DEFAULT_PARTITIONS_DEF_NAME)
    options = dict(storage_options or {})
    spec = dg.AssetSpec(
        asset_key,
        description=description or "Parquet results of Sutro batch jobs, one partition per job id.",
        partitions_def=partitions,
        group_name=group_name,
        automation_condition=automation_condition,
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
    def _partitioned_results(
        context: dg.AssetExecutionContext, config: SutroPartitionedResultsConfig
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        sutro: SutroResource = getattr(context.resources, resource_key)
        job_id = context.partition_key
        request = ResultsRequest(
            job_id=job_id,
            destination=destination.replace(JOB_ID_PLACEHOLDER, job_id),
            include_inputs=config.include_inputs,
            include_cumulative_logprobs=config.include_cumulative_logprobs,
            expires_in_seconds=config.expires_in_seconds,
            force=config.force,
            storage_options=options,
        )
        yield from run_results_step(context, sutro, request, preview_rows=preview_rows)

    return _partitioned_results


@dataclass
class NewJobsCursor:
    """The state the new-jobs sensor keeps between ticks, stored as versioned JSON.

    ``list-jobs`` returns jobs newest first. The watermark is the newest job such that it and
    every older job were handled: added, already a partition, finished without results, or
    excluded. A tick pages down from the newest job and stops at the watermark. A job that
    has not finished keeps the watermark below it, so it is looked at again until it does.

    Attributes:
        watermark_job_id: The watermark job, or ``None`` to page through every job.
        watermark_created: Its ``datetime_created``, so that the scan also stops at an older
            job when the watermark job itself is gone from the list.
        scan_page_cursor: The ``list-jobs`` cursor of the page where an unfinished scan
            resumes, or ``None`` when the next tick starts at the newest job.
        scan_in_progress: Whether a scan stopped early (time budget or partition cap).
        scan_candidate: The watermark the unfinished scan has established so far.
        scan_candidate_created: The candidate's ``datetime_created``.
    """

    watermark_job_id: str | None = None
    watermark_created: str | None = None
    scan_page_cursor: str | None = None
    scan_in_progress: bool = False
    scan_candidate: str | None = None
    scan_candidate_created: str | None = None

    def to_json(self) -> str:
        """Serialize the cursor, with its version."""
        return json.dumps({"version": CURSOR_VERSION, **self.__dict__}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NewJobsCursor:
        """Parse a cursor written by :meth:`to_json`.

        Raises:
            ValueError: If the text is not a cursor of this version.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != CURSOR_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"cursor version {version!r} is not {CURSOR_VERSION}")
        strings: dict[str, str | None] = {}
        for name in cls.__dataclass_fields__:
            if name == "scan_in_progress":
                continue
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"cursor field {name} is {value!r}, not a string")
            strings[name] = value
        scan_in_progress = data.get("scan_in_progress", False)
        if not isinstance(scan_in_progress, bool):
            raise ValueError(
                f"cursor field scan_in_progress is {scan_in_progress!r}, not a boolean"
            )
        return cls(
            watermark_job_id=strings["watermark_job_id"],
            watermark_created=strings["watermark_created"],
            scan_page_cursor=strings["scan_page_cursor"],
            scan_in_progress=scan_in_progress,
            scan_candidate=strings["scan_candidate"],
            scan_candidate_created=strings["scan_candidate_created"],
        )


@dataclass
class ScanOutcome:
    """Decisions of one tick of the new-jobs sensor.

    Attributes:
        added: Job ids that get a partition and a run.
        existing: SUCCEEDED jobs that are partitions already.
        unfinished: ``(job_id, state)`` of jobs that have not finished, looked at again later.
        without_results: ``(job_id, state)`` of FAILED and CANCELLED jobs.
        excluded: Jobs that ``job_filter`` rejected.
        invalid: Entries of ``list-jobs`` without a usable job id.
        jobs_seen: The number of jobs looked at.
        pages: The number of ``list-jobs`` pages fetched.
        stop_reason: Why the scan stopped before the watermark, or ``None`` when it reached it.
        cursor: The cursor for the next tick.
    """

    cursor: NewJobsCursor
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    unfinished: list[tuple[str, str]] = field(default_factory=list)
    without_results: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    invalid: int = 0
    jobs_seen: int = 0
    pages: int = 0
    stop_reason: str | None = None


def build_sutro_new_jobs_sensor(
    *,
    asset: dg.AssetsDefinition,
    partitions_def: dg.DynamicPartitionsDefinition | None = None,
    minimum_interval_seconds: int = DEFAULT_MINIMUM_INTERVAL_SECONDS,
    name: str | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    include_existing_jobs: bool = False,
    job_filter: Callable[[Mapping[str, Any]], bool] | None = None,
    max_new_partitions_per_tick: int = DEFAULT_MAX_NEW_PARTITIONS_PER_TICK,
    page_size: int = DEFAULT_PAGE_SIZE,
    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """Build a sensor that adds a partition, and requests a run, for each newly SUCCEEDED job.

    Each tick pages ``list-jobs`` from the newest job down to the cursor's watermark (see
    :class:`NewJobsCursor`). A SUCCEEDED job that is not a partition yet is added with
    ``partitions_def.build_add_request`` and gets a ``RunRequest`` for its partition, with the
    job id as run key, so a job is never launched twice by this sensor. Jobs that have not
    finished are looked at again on later ticks; FAILED and CANCELLED jobs are skipped.
    Every decision is logged with the job ids involved.

    The sensor requests only: it never downloads. It stops paging after ``time_budget_seconds``
    or ``max_new_partitions_per_tick`` new partitions and resumes on the next tick. A cursor
    that cannot be parsed is logged and replaced by a fresh one.

    A failed run is not relaunched by the sensor. The asset's retry policy retries the step,
    and a partition can be materialized again from the UI.

    Args:
        asset: The asset from :func:`build_sutro_partitioned_results_asset`.
        partitions_def: The asset's dynamic partitions definition; read from ``asset`` when
            omitted.
        minimum_interval_seconds: The minimum time between ticks.
        name: The sensor name; ``<asset op name>__new_jobs_sensor`` by default.
        resource_key: The key under which the :class:`SutroResource` is provided.
        include_existing_jobs: Also add jobs that existed before the sensor's first tick.
            When false, the first tick only records the newest job, and only jobs submitted
            after it are added.
        job_filter: A function that receives a job as ``list-jobs`` returns it and returns
            whether the job belongs in the asset, for example by name.
        max_new_partitions_per_tick: The maximum number of partitions (and runs) one tick adds.
        page_size: The ``list-jobs`` page size, 1 to 100.
        time_budget_seconds: The time after which a tick stops paging.
        default_status: Whether the sensor starts running when the code location loads.

    Returns:
        The sensor definition, targeting ``asset``.

    Raises:
        InvalidInputError: If ``asset`` has no dynamic partitions definition, or a number is
            out of range.

    Examples:
        .. code-block:: python

            jobs = dg.DynamicPartitionsDefinition(name="sutro_jobs")
            results = build_sutro_partitioned_results_asset(
                destination="s3://my-bucket/sutro/", partitions_def=jobs
            )
            new_jobs = build_sutro_new_jobs_sensor(
                asset=results,
                partitions_def=jobs,
                job_filter=lambda job: (job.get("name") or "").startswith("reviews-"),
            )
    """
    partitions = partitions_def or asset.partitions_def
    if not isinstance(partitions, dg.DynamicPartitionsDefinition) or partitions.name is None:
        raise InvalidInputError(
            f"Asset {asset.key.to_user_string()} has no named dynamic partitions definition. "
            "Build it with build_sutro_partitioned_results_asset, or pass partitions_def."
        )
    if not 1 <= page_size <= 100:
        raise InvalidInputError(f"page_size={page_size!r} is invalid: use 1 to 100.")
    if max_new_partitions_per_tick < 1:
        raise InvalidInputError(
            f"max_new_partitions_per_tick={max_new_partitions_per_tick!r} is invalid: use 1 or "
            "more."
        )
    if time_budget_seconds <= 0:
        raise InvalidInputError(
            f"time_budget_seconds={time_budget_seconds!r} is invalid: use a positive number."
        )
    partitions_name: str = partitions.name
    sensor_name = name or f"{asset.node_def.name}__new_jobs_sensor"

    @dg.sensor(
        name=sensor_name,
        target=asset,
        minimum_interval_seconds=minimum_interval_seconds,
        required_resource_keys={resource_key},
        default_status=default_status,
        description=f"Adds a {partitions_name} partition and requests a run of "
        f"{asset.key.to_user_string()} for each Sutro job that has newly SUCCEEDED.",
    )
    def _new_jobs_sensor(context: dg.SensorEvaluationContext, **resources: Any) -> dg.SensorResult:
        # A direct call, sensor(context), passes the required resources as keyword arguments,
        # while the daemon's evaluation passes only the context.
        sutro: SutroResource = resources.get(resource_key) or getattr(
            context.resources, resource_key
        )
        client = sutro.get_client()
        cursor = _load_cursor(context)
        if cursor is None:
            if not include_existing_jobs:
                return _record_baseline(context, client)
            cursor = NewJobsCursor()

        known = set(context.instance.get_dynamic_partitions(partitions_name))
        outcome = scan_new_jobs(
            client,
            cursor,
            known_partitions=known,
            job_filter=job_filter,
            max_new_partitions=max_new_partitions_per_tick,
            page_size=page_size,
            time_budget_seconds=time_budget_seconds,
        )
        _log_outcome(context, outcome)

        run_requests = [
            dg.RunRequest(
                run_key=job_id,
                partition_key=job_id,
                tags={md.JOB_ID_KEY: job_id},
            )
            for job_id in outcome.added
        ]
        if not outcome.added:
            return dg.SensorResult(
                skip_reason=f"No newly SUCCEEDED Sutro jobs among {outcome.jobs_seen} looked at.",
                cursor=outcome.cursor.to_json(),
            )
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[partitions.build_add_request(outcome.added)],
            cursor=outcome.cursor.to_json(),
        )

    return _new_jobs_sensor


def scan_new_jobs(
    client: SutroClient,
    cursor: NewJobsCursor,
    *,
    known_partitions: set[str],
    job_filter: Callable[[Mapping[str, Any]], bool] | None = None,
    max_new_partitions: int = DEFAULT_MAX_NEW_PARTITIONS_PER_TICK,
    page_size: int = DEFAULT_PAGE_SIZE,
    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS,
) -> ScanOutcome:
    """Page ``list-jobs`` from the cursor's position and sort each job into an outcome.

    Args:
        client: The Sutro client.
        cursor: The cursor of the previous tick.
        known_partitions: Job ids that are partitions already.
        job_filter: Returns whether a job belongs in the asset.
        max_new_partitions: The number of new partitions after which the scan stops.
        page_size: The ``list-jobs`` page size.
        time_budget_seconds: The time after which the scan stops before fetching another page.

    Returns:
        The jobs to add, the skipped jobs by reason, and the cursor for the next tick.

    Raises:
        SutroError: If ``list-jobs`` fails on the first page. A failure on a later page ends
            the scan early instead, keeping the progress made.
    """
    started = time.monotonic()
    outcome = ScanOutcome(cursor=cursor)
    page_cursor = cursor.scan_page_cursor if cursor.scan_in_progress else None
    candidate = cursor.scan_candidate if cursor.scan_in_progress else None
    candidate_created = cursor.scan_candidate_created if cursor.scan_in_progress else None
    watermark_time = _parse_time(cursor.watermark_created)

    while True:
        if outcome.pages and time.monotonic() - started > time_budget_seconds:
            outcome.stop_reason = f"the time budget of {time_budget_seconds:g} s ran out"
            break
        try:
            jobs, next_page_cursor = client.list_jobs(limit=page_size, cursor=page_cursor)
        except SutroError as error:
            if not outcome.pages:
                raise
            outcome.stop_reason = f"list-jobs failed: {error}"
            break
        outcome.pages += 1

        # The state before this page, to resume from if the partition cap stops the scan inside it.
        page_start = (candidate, candidate_created, len(outcome.added))
        reached_watermark = False
        capped = False
        for job in jobs:
            if _is_watermark_or_older(job, cursor.watermark_job_id, watermark_time):
                reached_watermark = True
                break
            outcome.jobs_seen += 1
            handled = _sort_job(job, outcome, known_partitions, job_filter, max_new_partitions)
            if handled is None:
                capped = True
                break
            if not handled:
                candidate, candidate_created = None, None
            elif candidate is None:
                candidate, candidate_created = _job_id(job), _created(job)

        if capped:
            candidate, candidate_created, _ = page_start
            outcome.stop_reason = f"{max_new_partitions} new partitions were added"
            outcome.cursor = _resumed_cursor(cursor, page_cursor, candidate, candidate_created)
            return outcome
        if reached_watermark or next_page_cursor is None:
            break
        page_cursor = next_page_cursor

    if outcome.stop_reason is not None:
        outcome.cursor = _resumed_cursor(cursor, page_cursor, candidate, candidate_created)
        return outcome
    # The scan reached the watermark (or the oldest job): everything older than the candidate
    # is handled, so the candidate becomes the watermark.
    if candidate is not None:
        outcome.cursor = NewJobsCursor(
            watermark_job_id=candidate, watermark_created=candidate_created
        )
    else:
        outcome.cursor = NewJobsCursor(
            watermark_job_id=cursor.watermark_job_id, watermark_created=cursor.watermark_created
        )
    return outcome


def _sort_job(
    job: Mapping[str, Any],
    outcome: ScanOutcome,
    known_partitions: set[str],
    job_filter: Callable[[Mapping[str, Any]], bool] | None,
    max_new_partitions: int,
) -> bool | None:
    """File one job under its outcome.

    Returns:
        ``True`` when the job is handled for good, ``False`` when it must be looked at again,
        and ``None`` when it should be added but the partition cap is reached.
    """
    job_id = _job_id(job)
    if job_id is None:
        outcome.invalid += 1
        return True
    if job_filter is not None and not job_filter(job):
        outcome.excluded.append(job_id)
        return True
    status = str(job.get("status") or "UNKNOWN").upper()
    if status == "SUCCEEDED":
        if job_id in known_partitions or job_id in outcome.added:
            outcome.existing.append(job_id)
            return True
        if len(outcome.added) >= max_new_partitions:
            return None
        outcome.added.append(job_id)
        return True
    if status in FINISHED_WITHOUT_RESULTS_STATES:
        outcome.without_results.append((job_id, status))
        return True
    outcome.unfinished.append((job_id, status))
    return False


def _resumed_cursor(
    cursor: NewJobsCursor,
    page_cursor: str | None,
    candidate: str | None,
    candidate_created: str | None,
) -> NewJobsCursor:
    return NewJobsCursor(
        watermark_job_id=cursor.watermark_job_id,
        watermark_created=cursor.watermark_created,
        scan_page_cursor=page_cursor,
        scan_in_progress=True,
        scan_candidate=candidate,
        scan_candidate_created=candidate_created,
    )


def _record_baseline(context: dg.SensorEvaluationContext, client: SutroClient) -> dg.SensorResult:
    """Make the newest job the watermark, so only jobs submitted after it are added."""
    jobs, _ = client.list_jobs(limit=1)
    newest = jobs[0] if jobs else None
    cursor = NewJobsCursor(
        watermark_job_id=_job_id(newest) if newest else None,
        watermark_created=_created(newest) if newest else None,
    )
    if newest is None:
        message = "No Sutro jobs exist yet, so every job submitted from now on is considered."
    else:
        message = (
            f"First tick: jobs up to and including {cursor.watermark_job_id} existed before the "
            "sensor started and are not added (include_existing_jobs=False). Jobs submitted "
            "after it are added once they SUCCEED."
        )
    context.log.info(message)
    return dg.SensorResult(skip_reason=message, cursor=cursor.to_json())


def _load_cursor(context: dg.SensorEvaluationContext) -> NewJobsCursor | None:
    """Parse the tick's cursor, or return ``None`` when there is none or it cannot be read."""
    if not context.cursor:
        return None
    try:
        return NewJobsCursor.from_json(context.cursor)
    except (ValueError, TypeError) as error:
        context.log.warning(
            f"The sensor cursor could not be read ({error}), so the sensor starts over as on "
            "its first tick. Jobs that are partitions already are not added again."
        )
        return None


def _log_outcome(context: dg.SensorEvaluationContext, outcome: ScanOutcome) -> None:
    context.log.info(
        f"Looked at {outcome.jobs_seen} Sutro jobs on {outcome.pages} list-jobs pages: "
        f"{len(outcome.added)} newly SUCCEEDED, {len(outcome.existing)} already partitions, "
        f"{len(outcome.unfinished)} not finished, {len(outcome.without_results)} without "
        f"results, {len(outcome.excluded)} excluded by job_filter."
    )
    if outcome.added:
        context.log.info(f"Adding partitions and requesting runs for {_ids(outcome.added)}.")
    if outcome.unfinished:
        states = [f"{job_id} ({state})" for job_id, state in outcome.unfinished]
        context.log.info(
            f"Skipping jobs that have not finished, to look at again later: {_ids(states)}."
        )
    if outcome.without_results:
        states = [f"{job_id} ({state})" for job_id, state in outcome.without_results]
        context.log.info(f"Skipping jobs that finished without results: {_ids(states)}.")
    if outcome.excluded:
        context.log.info(f"Skipping jobs excluded by job_filter: {_ids(outcome.excluded)}.")
    if outcome.existing:
        context.log.debug(f"Skipping jobs that are partitions already: {_ids(outcome.existing)}.")
    if outcome.invalid:
        context.log.warning(f"Skipped {outcome.invalid} list-jobs entries without a valid job_id.")
    if outcome.stop_reason is not None:
        context.log.info(
            f"Stopped paging early because {outcome.stop_reason}. The next tick resumes from "
            "the same page."
        )


def _ids(values: Sequence[str]) -> str:
    listed = ", ".join(values[:LOGGED_JOB_IDS])
    if len(values) > LOGGED_JOB_IDS:
        listed += f" and {len(values) - LOGGED_JOB_IDS} more"
    return listed


def _job_id(job: Mapping[str, Any]) -> str | None:
    job_id = job.get("job_id")
    if not isinstance(job_id, str):
        return None
    try:
        return validate_job_id(job_id)
    except InvalidInputError:
        return None


def _created(job: Mapping[str, Any]) -> str | None:
    created = job.get("datetime_created")
    return created if isinstance(created, str) else None


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.timezone.utc)


def _is_watermark_or_older(
    job: Mapping[str, Any], watermark_job_id: str | None, watermark_time: datetime.datetime | None
) -> bool:
    """Check whether the scan has reached the watermark: the job itself, or an older job."""
    if watermark_job_id is None:
        return False
    if job.get("job_id") == watermark_job_id:
        return True
    created = _parse_time(_created(job))
    return watermark_time is not None and created is not None and created < watermark_time
