"""Example Dagster project for dagster-sutro."""
