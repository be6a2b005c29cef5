"""The Sutro resource, configured from the environment at launch."""

import dagster as dg

from dagster_sutro import SutroResource


@dg.definitions
def resources() -> dg.Definitions:
    """Provide the Sutro resource under the key ``sutro``."""
    return dg.Definitions(
        resources={
            "sutro": SutroResource(
                api_key=dg.EnvVar("SUTRO_API_KEY"),
                api_url=dg.EnvVar("SUTRO_API_URL"),
            )
        }
    )
