"""The requests of an asset run that finds the artifact's ETag unchanged.

The results asset is materialized twice on one ephemeral Dagster instance. The second run
must see the same ETag and the file still at the destination, so it should send one API call
(``results-url``) and one HEAD, and no GET.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from dagster_sutro import SutroResource, SutroResultsConfig, build_sutro_results_asset
from dagster_sutro.testing import SutroEmulator

ASSET_ROWS = 2000


@dataclass(frozen=True)
class AssetRunRequests:
    """The requests and results of the second, unchanged-ETag run of the results asset.

    Attributes:
        api_requests: ``"METHOD /path"`` of each API request, in order.
        storage_requests: The count of storage requests per HTTP method.
        materializations: The materializations the second run recorded.
        second_run_succeeded: Whether the second run succeeded.
    """

    api_requests: list[str]
    storage_requests: dict[str, int]
    materializations: int
    second_run_succeeded: bool

    @property
    def storage_gets(self) -> int:
        """The number of GET requests to storage."""
        return self.storage_requests.get("GET", 0)


def count_unchanged_run_requests(
    emulator: SutroEmulator, resource: SutroResource, workdir: Path
) -> AssetRunRequests:
    """Materialize the results asset twice and record the second run's requests.

    Args:
        emulator: The running emulator, with no bandwidth cap.
        resource: A resource pointed at the emulator.
        workdir: The parent of the asset's destination directory.

    Raises:
        RuntimeError: If the first run fails, so that there is nothing to compare with.
    """
    job_id = emulator.add_job(num_rows=ASSET_ROWS)
    asset = build_sutro_results_asset(destination=f"{workdir / 'asset-destination'}/")
    instance = dg.DagsterInstance.ephemeral()
    # Dagster's console logger would print every event of both runs.
    run_config = dg.RunConfig(
        ops={asset.node_def.name: SutroResultsConfig(job_id=job_id)},
        loggers={"console": {"config": {"log_level": "WARNING"}}},
    )

    def materialize() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [asset],
            resources={"sutro": resource},
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
        )

    first = materialize()
    if not first.success:
        raise RuntimeError("The first materialization of the results asset failed.")
    emulator.clear_requests()
    second = materialize()

    return AssetRunRequests(
        api_requests=[f"{request.method} {request.path}" for request in emulator.api_requests],
        storage_requests=dict(Counter(request.method for request in emulator.storage_requests)),
        materializations=len(second.asset_materializations_for_node(asset.node_def.name)),
        second_run_succeeded=second.success,
    )
