"""Dagster components of dagster-sutro, for YAML-configured projects (``dg``)."""

from dagster_sutro.components.results import (
    SutroJobSettings as SutroJobSettings,
    SutroResourceSettings as SutroResourceSettings,
    SutroResultsComponent as SutroResultsComponent,
    SutroResultsScaffolder as SutroResultsScaffolder,
)
