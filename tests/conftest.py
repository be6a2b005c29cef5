"""Shared fixtures: the Sutro emulator, a resource pointed at it, and moto's S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from dagster_sutro import SutroResource
from dagster_sutro.testing import SutroEmulator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[SutroEmulator]:
    with SutroEmulator(root_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
def sutro(emulator: SutroEmulator) -> SutroResource:
    return SutroResource(
        api_key=emulator.api_key,
        api_url=emulator.api_url,
        max_retries=2,
        request_timeout_seconds=10,
    )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, request: pytest.FixtureRequest) -> str:
    """Create a fresh bucket on the moto server and return its name."""
    name = "results-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_storage_options(moto_endpoint: str) -> dict:
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": moto_endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
    }
