"""Entry point that ``dagster dev`` and the ``dagster`` CLI load."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """Load every definition under ``defs/``."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
