"""Entry point of ``python -m dagster_sutro.testing``."""

import sys

from dagster_sutro.testing.cli import main

sys.exit(main())
