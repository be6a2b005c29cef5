"""Benchmarks of dagster-sutro downloads against standard download tools.

Run ``python -m benchmarks.download`` (or ``make benchmark``) from the repository root; it
writes ``docs/benchmarks.md``.
"""
