"""A sensor that requests runs of the config-driven results asset when an artifact changes.

The sensor never downloads. Each tick it calls ``results-url`` for fresh presigned URLs and
HEADs the artifact of each job it follows. It compares the ETag with the one recorded by the
asset's last materialization for that job, and requests a run only for jobs whose ETag differs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dagster_sutro import metadata as md
from dagster_sutro.assets import DEFAULT_RESOURCE_KEY, SutroResultsConfig, sutro_results
from dagster_sutro.client import SutroClient, validate_job_id
from dagster_sutro.errors import InvalidInputError, SutroError, SutroJobNotReadyError
from dagster_sutro.resource import SutroResource
from dagster_sutro.transfer import TransferSettings, head_artifact

CURSOR_VERSION = 1

# Dagster stops a sensor evaluation after 60 seconds by default. A tick starts no new list-jobs
# page after half the budget and no new job check after the whole budget. One job check sends
# results-url (or job-status after a 409) and at most SENSOR_HEAD_ATTEMPTS HEADs, each limited
# by SENSOR_REQUEST_TIMEOUT_SECONDS, so it ends within about 25 s and the slowest tick with
# the default budget stays under 50 s. A request that times out is tried again on the next tick.
DEFAULT_TIME_BUDGET_SECONDS = 20.0
SENSOR_REQUEST_TIMEOUT_SECONDS = 8.0
SENSOR_MAX_RETRIES = 0
SENSOR_HEAD_ATTEMPTS = 2
SENSOR_BACKOFF_MAX_SECONDS = 1.0
# The sensor only HEADs, so its presigned URLs need to live just long enough for that request.
SENSOR_URL_EXPIRES_IN_SECONDS = 300

LIST_JOBS_PAGE_SIZE = 100
MATERIALIZATIONS_PAGE_SIZE = 100
# A first tick searches at most this many materializations for the last ETag of each job. A job
# whose last materialization is older is requested again, and its run then skips the download
# when the destination still contains the same ETag.
MAX_MATERIALIZATIONS_SEARCHED = 1000
# The newest job ids of the last completed list-jobs scan. The next scan stops at the first of
# them it meets, so a deleted job does not make it page through the whole history.
SEEN_JOB_IDS_KEPT = 20

SENSOR_TAG = f"{md.NAMESPACE}/sensor"
JOB_ID_TAG = md.JOB_ID_KEY
ETAG_TAG = md.ETAG_KEY

UNFINISHED_JOB_STATES = frozenset({"QUEUED", "STARTING", "RUNNING", "CANCELLING", "UNKNOWN"})
IN_PROGRESS_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.MANAGED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class LastMaterialization:
    """The ETag and storage id of a job's latest materialization; both ``None`` when none."""

    etag: str | None
    storage_id: int | None


@dataclass
class ListJobsScan:
    """A list-jobs scan that ran out of time and continues on the next tick."""

    next_cursor: str | None
    stop_at: list[str]
    newest: list[str]


@dataclass
class SensorCursor:
    """The state a results sensor keeps between ticks, stored as JSON in the sensor cursor.

    Attributes:
        epoch: The Unix time when this cursor was first written. It is part of every run key,
            so keys stay unique after the cursor is reset.
        request_count: Run requests made since ``epoch``; the last part of each run key.
        materializations_seen_up_to: The storage id of the newest materialization already
            read into ``last_materializations``.
        last_materializations: The latest materialization of each followed job, read from the
            instance.
        resume_from: The job the next tick checks first, after a tick ran out of time.
        seen_job_ids: Without a job list, the newest job ids of the last list-jobs scan.
        scan: Without a job list, a list-jobs scan still in progress.
        watched: Without a job list, SUCCEEDED jobs whose current artifact has not been
            materialized yet.
        unfinished: Without a job list, discovered jobs that had not finished yet.
    """

    epoch: int
    request_count: int = 0
    materializations_seen_up_to: int | None = None
    last_materializations: dict[str, LastMaterialization] = field(default_factory=dict)
    resume_from: str | None = None
    seen_job_ids: list[str] = field(default_factory=list)
    scan: ListJobsScan | None = None
    watched: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    @classmethod
    def new(cls) -> SensorCursor:
        """Create an empty cursor."""
        return cls(epoch=int(time.time()))

    def to_json(self) -> str:
        """Serialize the cursor, with its format version."""
        return json.dumps(
            {
                "version": CURSOR_VERSION,
                "epoch": self.epoch,
                "request_count": self.request_count,
                "materializations_seen_up_to": self.materializations_seen_up_to,
                "last_materializations": {
                    job_id: [entry.etag, entry.storage_id]
                    for job_id, entry in self.last_materializations.items()
                },
                "resume_from": self.resume_from,
                "seen_job_ids": self.seen_job_ids,
                "scan": (
                    {
                        "next_cursor": self.scan.next_cursor,
                        "stop_at": self.scan.stop_at,
                        "newest": self.scan.newest,
                    }
                    if self.scan
                    else None
                ),
                "watched": self.watched,
                "unfinished": self.unfinished,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> SensorCursor:
        """Parse a cursor written by :meth:`to_json`.

        Raises:
            ValueError: If the text is not a cursor of this version.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("version") != CURSOR_VERSION:
            raise ValueError(
                f"expected cursor version {CURSOR_VERSION}, found {data.get('version')!r}"
            )
        try:
            scan = data.get("scan")
            return cls(
                epoch=int(data["epoch"]),
                request_count=int(data["request_count"]),
                materializations_seen_up_to=_optional_int(data.get("materializations_seen_up_to")),
                last_materializations={
                    str(job_id): LastMaterialization(
                        etag=None if etag is None else str(etag),
                        storage_id=_optional_int(storage_id),
                    )
                    for job_id, (etag, storage_id) in data["last_materializations"].items()
                },
                resume_from=data.get("resume_from"),
                seen_job_ids=[str(job_id) for job_id in data.get("seen_job_ids", [])],
                scan=(
                    ListJobsScan(
                        next_cursor=scan["next_cursor"],
                        stop_at=[str(job_id) for job_id in scan["stop_at"]],
                        newest=[str(job_id) for job_id in scan["newest"]],
                    )
                    if scan
                    else None
                ),
                watched=[str(job_id) for job_id in data.get("watched", [])],
                unfinished=[str(job_id) for job_id in data.get("unfinished", [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"malformed cursor field: {error!r}") from None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class _SensorOptions:
    name: str
    asset: dg.AssetsDefinition
    job_ids: tuple[str, ...] | None
    resource_key: str
    include_inputs: bool
    include_cumulative_logprobs: bool
    destination: str | None
    time_budget_seconds: float
    include_existing_jobs: bool


def build_sutro_results_sensor(
    *,
    job_ids: Sequence[str] | None = None,
    asset: dg.AssetsDefinition = sutro_results,
    minimum_interval_seconds: int = 300,
    name: str | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    include_inputs: bool = False,
    include_cumulative_logprobs: bool = False,
    destination: str | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS,
    include_existing_jobs: bool = False,
) -> dg.SensorDefinition:
    """Build a sensor that requests a run of a results asset when a job's artifact changes.

    Use it with the config-driven asset (:data:`sutro_results` or one built by
    :func:`build_sutro_results_asset`), whose run config names the job. Each tick, for each job
    it follows, the sensor calls ``results-url`` for presigned URLs and HEADs the artifact. It
    never downloads. It requests a run with ``SutroResultsConfig(job_id=...)`` when the ETag
    differs from the one recorded by the asset's latest materialization for that job and
    include flags. Materializations are read from the Dagster instance, so a run that failed
    leaves the old ETag in place and the job is requested again on a later tick. While a run
    that this sensor requested for a job is still queued or running, no second run is
    requested for that job.

    With ``job_ids=None`` the sensor discovers jobs itself. It pages ``list-jobs`` newest first
    until it reaches jobs seen on an earlier tick. It follows each new SUCCEEDED job until its
    current artifact is materialized, keeps checking jobs that have not finished, and ignores
    FAILED and CANCELLED ones. It does not notice a replaced artifact of a job that it has
    already materialized, so list the job ids to follow replaced artifacts.

    Dagster launches at most one run per run key. The run key is
    ``<job_id>:<etag>:<epoch>.<n>``, where ``epoch`` is the Unix time when the cursor was
    created and ``n`` counts the sensor's run requests. A key of job id and ETag alone would
    block the request that follows a failed run. Because the counter lives in the cursor, a
    tick evaluated again with the same cursor produces the same keys and no duplicate runs.

    Each tick stops checking jobs after ``time_budget_seconds`` (at least one job is checked)
    and the next tick resumes with the first job left out, so a long job list never hits
    Dagster's 60-second sensor timeout. A cursor that cannot be decoded is logged and reset.

    Args:
        job_ids: The jobs to follow. ``None`` discovers SUCCEEDED jobs through ``list-jobs``.
        asset: The config-driven results asset to run.
        minimum_interval_seconds: The minimum time between two ticks.
        name: The sensor name. Defaults to ``<op name>_sensor`` when the asset's op name
            contains ``sutro`` (``sutro_results_sensor``), else ``<op name>_sutro_sensor``.
        resource_key: The key under which the :class:`SutroResource` is provided.
        include_inputs: Follow, and request, the artifact with the job's input columns.
        include_cumulative_logprobs: Follow, and request, the artifact with a
            ``cumulative_logprobs`` column.
        destination: The destination put in each run's config; ``None`` keeps the asset's.
        default_status: Whether the sensor starts running when the code location loads.
        time_budget_seconds: The time after which a tick starts no further job check. Paging
            through ``list-jobs`` stops after half of it. With the default of 20 s a tick ends
            within about 50 s, inside Dagster's 60-second sensor timeout.
        include_existing_jobs: With ``job_ids=None``, also fetch the jobs that exist when the
            sensor first runs. By default the first tick only records them as seen, so that
            turning the sensor on does not launch a run for every past job.

    Returns:
        The sensor definition. Add it to ``dg.Definitions`` together with the asset and the
        resource.

    Examples:
        .. code-block:: python

            import dagster as dg
            from dagster_sutro import SutroResource, build_sutro_results_sensor, sutro_results

            defs = dg.Definitions(
                assets=[sutro_results],
                sensors=[build_sutro_results_sensor(job_ids=["job-5f0c", "job-7a21"])],
                resources={
                    "sutro": SutroResource(
                        api_key=dg.EnvVar("SUTRO_API_KEY"),
                        api_url=dg.EnvVar("SUTRO_API_URL"),
                    )
                },
            )
    """
    op_name = asset.node_def.name
    sensor_name = name or (f"{op_name}_sensor" if "sutro" in op_name else f"{op_name}_sutro_sensor")
    if job_ids is not None and isinstance(job_ids, str):
        raise TypeError(f"job_ids must be a list of job ids, not the string {job_ids!r}.")
    for job_id in job_ids or ():
        validate_job_id(job_id)
    if time_budget_seconds < 0:
        raise InvalidInputError(
            f"time_budget_seconds={time_budget_seconds!r} is invalid: use 0 or more seconds."
        )
    options = _SensorOptions(
        name=sensor_name,
        asset=asset,
        job_ids=tuple(dict.fromkeys(job_ids)) if job_ids is not None else None,
        resource_key=resource_key,
        include_inputs=include_inputs,
        include_cumulative_logprobs=include_cumulative_logprobs,
        destination=destination,
        time_budget_seconds=time_budget_seconds,
        include_existing_jobs=include_existing_jobs,
    )
    following = (
        f"jobs {', '.join(options.job_ids)}"
        if options.job_ids is not None
        else "every SUCCEEDED job found through list-jobs"
    )

    @dg.sensor(
        name=sensor_name,
        target=asset,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={resource_key},
        description=f"Requests a run of {asset.key.to_user_string()} when the results "
        f"artifact of one of {following} has a new ETag. It only HEADs the artifacts.",
    )
    def _sutro_results_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return _evaluate(context, options)

    return _sutro_results_sensor


def _evaluate(context: dg.SensorEvaluationContext, options: _SensorOptions) -> dg.SensorResult:
    """Run one tick: discover jobs, read materializations, HEAD artifacts, request runs."""
    started = time.monotonic()
    deadline = started + options.time_budget_seconds
    cursor = _load_cursor(context)
    sutro: SutroResource = getattr(context.resources, options.resource_key)
    # A client of its own, with short timeouts and no retries, so that one slow request cannot
    # push the tick past Dagster's sensor timeout.
    client = SutroClient(
        sutro.api_url,
        sutro.api_key,
        request_timeout_seconds=min(sutro.request_timeout_seconds, SENSOR_REQUEST_TIMEOUT_SECONDS),
        max_retries=min(sutro.max_retries, SENSOR_MAX_RETRIES),
    )

    if options.job_ids is None:
        discovery_deadline = started + options.time_budget_seconds / 2
        _discover_jobs(context, client, cursor, options, discovery_deadline)
        followed = list(cursor.watched)
    else:
        followed = list(options.job_ids)

    _read_last_materializations(context.instance, options, cursor, followed)

    settings = TransferSettings(
        connect_timeout_seconds=SENSOR_REQUEST_TIMEOUT_SECONDS,
        read_timeout_seconds=min(sutro.read_timeout_seconds, SENSOR_REQUEST_TIMEOUT_SECONDS),
        max_attempts_per_part=SENSOR_HEAD_ATTEMPTS,
        backoff_max_seconds=SENSOR_BACKOFF_MAX_SECONDS,
    )
    ordered = _rotate(followed, cursor.resume_from)
    cursor.resume_from = None
    run_requests: list[dg.RunRequest] = []
    for index, job_id in enumerate(ordered):
        if index > 0 and time.monotonic() >= deadline:
            cursor.resume_from = job_id
            context.log.info(
                f"The time budget of {options.time_budget_seconds:g} s ran out after {index} of "
                f"{len(ordered)} jobs, so job {job_id} and the {len(ordered) - index - 1} jobs "
                "after it are checked on the next tick."
            )
            break
        request = _check_job(context, client, settings, cursor, options, job_id)
        if request is not None:
            run_requests.append(request)

    if run_requests:
        return dg.SensorResult(run_requests=run_requests, cursor=cursor.to_json())
    if not followed:
        skip_reason = "No Sutro job to check yet."
    else:
        skip_reason = f"No Sutro job of the {len(followed)} followed has a new artifact ETag."
    return dg.SensorResult(skip_reason=skip_reason, cursor=cursor.to_json())


def _load_cursor(context: dg.SensorEvaluationContext) -> SensorCursor:
    if not context.cursor:
        return SensorCursor.new()
    try:
        return SensorCursor.from_json(context.cursor)
    except ValueError as error:
        context.log.warning(
            f"The sensor cursor could not be decoded ({error}), so the sensor starts again from "
            "an empty cursor. Materialized ETags are read from the instance again."
        )
        return SensorCursor.new()


def _rotate(job_ids: list[str], first: str | None) -> list[str]:
    """Order the jobs so that the job where the last tick stopped comes first."""
    if first is None or first not in job_ids:
        return job_ids
    start = job_ids.index(first)
    return job_ids[start:] + job_ids[:start]


def _check_job(
    context: dg.SensorEvaluationContext,
    client: SutroClient,
    settings: TransferSettings,
    cursor: SensorCursor,
    options: _SensorOptions,
    job_id: str,
) -> dg.RunRequest | None:
    """HEAD one job's artifact and return a run request when its ETag is not materialized."""
    try:
        urls = client.get_results_download_url(
            job_id,
            include_inputs=options.include_inputs,
            include_cumulative_logprobs=options.include_cumulative_logprobs,
            expires_in_seconds=SENSOR_URL_EXPIRES_IN_SECONDS,
        )
        head = head_artifact(urls, settings=settings)
    except SutroJobNotReadyError as error:
        _handle_job_not_ready(context, cursor, options, job_id, error.job_status)
        return None
    except SutroError as error:
        context.log.warning(
            f"Could not check the artifact of Sutro job {job_id}: {error} It is checked again "
            "on the next tick."
        )
        return None

    last = cursor.last_materializations.get(job_id) or LastMaterialization(None, None)
    if last.etag == head.etag:
        context.log.info(
            f"Sutro job {job_id}: ETag {head.etag} is already materialized (event storage id "
            f"{last.storage_id}), so no run is requested."
        )
        if options.job_ids is None:
            _stop_watching(cursor, job_id)
        return None

    in_progress = _find_run_in_progress(context.instance, options.name, job_id)
    if in_progress is not None:
        context.log.info(
            f"Sutro job {job_id}: run {in_progress.dagster_run.run_id} requested earlier is "
            f"still {in_progress.dagster_run.status.value}, so no second run is requested."
        )
        return None

    cursor.request_count += 1
    run_key = f"{job_id}:{head.etag}:{cursor.epoch}.{cursor.request_count}"
    if last.etag is None:
        reason = f"has ETag {head.etag} and no materialization yet"
    else:
        reason = f"has ETag {head.etag}, which differs from the materialized ETag {last.etag}"
    context.log.info(
        f"Sutro job {job_id} {reason}, so a run of {options.asset.key.to_user_string()} is "
        f"requested with run key {run_key}."
    )
    config = SutroResultsConfig(
        job_id=job_id,
        include_inputs=options.include_inputs,
        include_cumulative_logprobs=options.include_cumulative_logprobs,
        destination=options.destination,
    )
    return dg.RunRequest(
        run_key=run_key,
        run_config=dg.RunConfig({options.asset.node_def.name: config}),
        tags={SENSOR_TAG: options.name, JOB_ID_TAG: job_id, ETAG_TAG: head.etag},
    )


def _handle_job_not_ready(
    context: dg.SensorEvaluationContext,
    cursor: SensorCursor,
    options: _SensorOptions,
    job_id: str,
    status: str,
) -> None:
    if status in UNFINISHED_JOB_STATES:
        context.log.info(
            f"Sutro job {job_id} is {status}, so no run is requested; it is checked again on "
            "the next tick."
        )
        if options.job_ids is None:
            _stop_watching(cursor, job_id)
            if job_id not in cursor.unfinished:
                cursor.unfinished.append(job_id)
        return
    context.log.info(f"Sutro job {job_id} is {status} and has no results, so no run is requested.")
    if options.job_ids is None:
        _stop_watching(cursor, job_id)


def _stop_watching(cursor: SensorCursor, job_id: str) -> None:
    if job_id in cursor.watched:
        cursor.watched.remove(job_id)
    cursor.last_materializations.pop(job_id, None)


def _find_run_in_progress(
    instance: dg.DagsterInstance, sensor_name: str, job_id: str
) -> dg.RunRecord | None:
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={SENSOR_TAG: sensor_name, JOB_ID_TAG: job_id},
            statuses=IN_PROGRESS_RUN_STATUSES,
        ),
        limit=1,
    )
    return records[0] if records else None


def _read_last_materializations(
    instance: dg.DagsterInstance,
    options: _SensorOptions,
    cursor: SensorCursor,
    followed: list[str],
) -> None:
    """Bring ``cursor.last_materializations`` up to date with the instance's event log.

    Materializations newer than ``cursor.materializations_seen_up_to`` are read on every tick.
    For a job that is new to the cursor the search goes further back, newest first, until its
    latest materialization is found or ``MAX_MATERIALIZATIONS_SEARCHED`` events were read.
    """
    wanted = set(followed)
    cursor.last_materializations = {
        job_id: entry for job_id, entry in cursor.last_materializations.items() if job_id in wanted
    }
    unknown = wanted - cursor.last_materializations.keys()
    seen_up_to = cursor.materializations_seen_up_to
    records_filter = dg.AssetRecordsFilter(
        asset_key=options.asset.key, after_storage_id=None if unknown else seen_up_to
    )

    found: set[str] = set()
    newest = seen_up_to
    page_cursor: str | None = None
    searched = 0
    while searched < MAX_MATERIALIZATIONS_SEARCHED:
        page = instance.fetch_materializations(
            records_filter, limit=MATERIALIZATIONS_PAGE_SIZE, cursor=page_cursor
        )
        for record in page.records:
            searched += 1
            newest = max(newest or 0, record.storage_id)
            already_read = seen_up_to is not None and record.storage_id <= seen_up_to
            if wanted <= found or (already_read and unknown <= found):
                break
            job_id, etag = _job_and_etag(record, options)
            if job_id is None or job_id not in wanted or job_id in found:
                continue
            if already_read and job_id not in unknown:
                continue
            # Records come newest first, so the first record of a job is its latest.
            cursor.last_materializations[job_id] = LastMaterialization(etag, record.storage_id)
            found.add(job_id)
        else:
            if page.has_more and page.records:
                page_cursor = page.cursor
                continue
        break

    for job_id in unknown - found:
        cursor.last_materializations[job_id] = LastMaterialization(None, None)
    cursor.materializations_seen_up_to = newest


def _job_and_etag(
    record: dg.EventLogRecord, options: _SensorOptions
) -> tuple[str | None, str | None]:
    """Return the job id and ETag of a materialization with the sensor's include flags."""
    materialization = record.asset_materialization
    if materialization is None:
        return None, None
    metadata = dict(materialization.metadata)
    flags = (
        bool(md.metadata_value(metadata, md.INCLUDE_INPUTS_KEY)),
        bool(md.metadata_value(metadata, md.INCLUDE_LOGPROBS_KEY)),
    )
    if flags != (options.include_inputs, options.include_cumulative_logprobs):
        return None, None
    job_id = md.metadata_value(metadata, md.JOB_ID_KEY)
    etag = md.metadata_value(metadata, md.ETAG_KEY)
    return (
        str(job_id) if job_id is not None else None,
        str(etag) if etag is not None else None,
    )


def _discover_jobs(
    context: dg.SensorEvaluationContext,
    client: SutroClient,
    cursor: SensorCursor,
    options: _SensorOptions,
    deadline: float,
) -> None:
    """Update the watched and unfinished jobs from ``job-status`` and ``list-jobs``."""
    _recheck_unfinished_jobs(context, client, cursor, deadline)

    first_scan = not cursor.seen_job_ids and cursor.scan is None
    scan = cursor.scan or ListJobsScan(
        next_cursor=None, stop_at=list(cursor.seen_job_ids), newest=[]
    )
    pages = 0
    while True:
        try:
            jobs, next_cursor = client.list_jobs(limit=LIST_JOBS_PAGE_SIZE, cursor=scan.next_cursor)
        except SutroError as error:
            context.log.warning(
                f"Listing Sutro jobs failed: {error} The scan continues on the next tick."
            )
            cursor.scan = scan
            return
        pages += 1
        if not scan.newest:
            scan.newest = [
                str(job["job_id"]) for job in jobs[:SEEN_JOB_IDS_KEPT] if "job_id" in job
            ]

        if first_scan and not options.include_existing_jobs:
            context.log.info(
                f"First tick: the {len(jobs)} newest jobs are recorded as seen and no run is "
                "requested for them (set include_existing_jobs=True to fetch existing jobs)."
            )
            cursor.seen_job_ids = scan.newest
            cursor.scan = None
            return

        reached_seen = _classify_listed_jobs(context, cursor, jobs, set(scan.stop_at))
        if reached_seen or next_cursor is None:
            cursor.seen_job_ids = scan.newest or cursor.seen_job_ids
            cursor.scan = None
            return

        scan.next_cursor = next_cursor
        if time.monotonic() >= deadline:
            context.log.info(
                f"The time budget ran out after {pages} list-jobs pages, so the scan for new "
                "Sutro jobs continues on the next tick."
            )
            cursor.scan = scan
            return


def _classify_listed_jobs(
    context: dg.SensorEvaluationContext,
    cursor: SensorCursor,
    jobs: list[dict],
    stop_at: set[str],
) -> bool:
    """Sort one list-jobs page into watched and unfinished jobs; return whether a seen job came."""
    for job in jobs:
        job_id = job.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            continue
        if job_id in stop_at:
            return True
        if job_id in cursor.watched or job_id in cursor.unfinished:
            continue
        status = str(job.get("status") or "UNKNOWN").upper()
        if status == "SUCCEEDED":
            context.log.info(f"Found SUCCEEDED Sutro job {job_id}; its artifact is checked.")
            cursor.watched.append(job_id)
        elif status in UNFINISHED_JOB_STATES:
            context.log.info(
                f"Found Sutro job {job_id} in state {status}; it is checked again until it "
                "finishes."
            )
            cursor.unfinished.append(job_id)
        else:
            context.log.info(f"Ignoring Sutro job {job_id}: it is {status} and has no results.")
    return False


def _recheck_unfinished_jobs(
    context: dg.SensorEvaluationContext,
    client: SutroClient,
    cursor: SensorCursor,
    deadline: float,
) -> None:
    for job_id in list(cursor.unfinished):
        if time.monotonic() >= deadline:
            return
        try:
            status = client.get_job_status(job_id)
        except SutroError as error:
            context.log.warning(
                f"Could not read the state of Sutro job {job_id}: {error} It is checked again "
                "on the next tick."
            )
            continue
        if status in UNFINISHED_JOB_STATES:
            context.log.info(f"Sutro job {job_id} is still {status}.")
            continue
        cursor.unfinished.remove(job_id)
        if status == "SUCCEEDED":
            context.log.info(f"Sutro job {job_id} has SUCCEEDED; its artifact is checked.")
            cursor.watched.append(job_id)
        else:
            context.log.info(
                f"Sutro job {job_id} finished as {status} without results, so it is no longer "
                "checked."
            )
