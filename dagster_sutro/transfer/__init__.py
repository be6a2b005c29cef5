"""The transfer engine: ranged, parallel, resumable downloads of one artifact from presigned URLs.

It imports nothing from Dagster and nothing from :mod:`dagster_sutro.client`; the call that
returns fresh URLs is passed in as a callable.
"""

from dagster_sutro.transfer.destination import (
    Destination as Destination,
    resolve_destination as resolve_destination,
)
from dagster_sutro.transfer.engine import (
    download_artifact as download_artifact,
    head_artifact as head_artifact,
)
from dagster_sutro.transfer.plan import s3_part_size_for as s3_part_size_for
from dagster_sutro.transfer.settings import TransferSettings as TransferSettings

__all__ = [
    "Destination",
    "TransferSettings",
    "download_artifact",
    "head_artifact",
    "resolve_destination",
    "s3_part_size_for",
]
