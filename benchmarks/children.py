"""The Python download processes that the benchmark measures, one download per process.

Run as ``python -m benchmarks.children MODE ...``. Each mode times only the download itself
and its CPU time (imports and interpreter start-up excluded), records the resident set size
reached after its imports, and writes these as JSON to ``--result``:

- ``sutro``: ``SutroResource.download_results`` with the resource's defaults. The API key is
  read from the ``SUTRO_API_KEY`` environment variable.
- ``requests``: one streamed GET of the presigned URL with ``requests``, read with
  ``iter_content(8 MiB)`` into ``<destination>.part`` and renamed at the end, which is how the
  Sutro Python SDK downloads job results. ``--upload-to`` adds an ``fs.put`` of the file to an
  fsspec URL, the two-step way to land the results in a bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REQUESTS_CHUNK_BYTES = 8 * 1024 * 1024


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _write_result(path: str, values: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(values), encoding="utf-8")


def run_sutro(arguments: argparse.Namespace) -> None:
    """Download with ``SutroResource.download_results`` and its default settings."""
    from dagster_sutro import SutroResource

    if arguments.destination.startswith("s3://"):
        # Imported here so that its memory counts as part of the fixed overhead.
        import s3fs  # noqa: F401

    storage_options = json.loads(arguments.storage_options) if arguments.storage_options else None
    resource_ = SutroResource(api_key=os.environ["SUTRO_API_KEY"], api_url=arguments.api_url)
    rss_after_imports = _peak_rss_bytes()

    cpu_started = _cpu_seconds()
    started = time.perf_counter()
    result = resource_.download_results(
        arguments.job_id, arguments.destination, storage_options=storage_options
    )
    seconds = time.perf_counter() - started
    _write_result(
        arguments.result,
        {
            "seconds": seconds,
            "cpu_seconds": _cpu_seconds() - cpu_started,
            "rss_after_imports_bytes": rss_after_imports,
            "size_bytes": result.size_bytes,
            "phases": {"download": seconds},
        },
    )


def run_requests(arguments: argparse.Namespace) -> None:
    """Download in one stream with ``requests``, then optionally ``fs.put`` the file."""
    import requests

    if arguments.upload_to:
        import fsspec

    rss_after_imports = _peak_rss_bytes()
    destination = Path(arguments.destination)
    partial = destination.with_name(destination.name + ".part")

    cpu_started = _cpu_seconds()
    started = time.perf_counter()
    with requests.get(arguments.url, stream=True, timeout=60) as response:
        response.raise_for_status()
        with open(partial, "wb") as file:
            for chunk in response.iter_content(chunk_size=REQUESTS_CHUNK_BYTES):
                file.write(chunk)
    os.replace(partial, destination)
    download_seconds = time.perf_counter() - started
    phases = {"download": download_seconds}

    if arguments.upload_to:
        storage_options = json.loads(arguments.storage_options or "{}")
        fs, path = fsspec.core.url_to_fs(arguments.upload_to, **storage_options)
        put_started = time.perf_counter()
        fs.put(str(destination), path)
        phases["put"] = time.perf_counter() - put_started
        destination.unlink()

    _write_result(
        arguments.result,
        {
            "seconds": time.perf_counter() - started,
            "cpu_seconds": _cpu_seconds() - cpu_started,
            "rss_after_imports_bytes": rss_after_imports,
            "size_bytes": None,
            "phases": phases,
        },
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.children")
    modes = parser.add_subparsers(dest="mode", required=True)

    sutro = modes.add_parser("sutro", help="Download with SutroResource.download_results.")
    sutro.add_argument("--api-url", required=True)
    sutro.add_argument("--job-id", required=True)
    sutro.add_argument("--destination", required=True, help="A local path or fsspec URL.")
    sutro.add_argument("--storage-options", help="fsspec storage options as JSON.")
    sutro.add_argument("--result", required=True, help="Where the JSON result is written.")

    single = modes.add_parser("requests", help="Download in one stream with requests.")
    single.add_argument("--url", required=True, help="The presigned GET URL.")
    single.add_argument("--destination", required=True, help="A local file path.")
    single.add_argument("--upload-to", help="An fsspec URL that the file is put to afterwards.")
    single.add_argument("--storage-options", help="fsspec storage options as JSON.")
    single.add_argument("--result", required=True, help="Where the JSON result is written.")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one download in the mode named on the command line."""
    arguments = _parser().parse_args(argv)
    if arguments.mode == "sutro":
        run_sutro(arguments)
    else:
        run_requests(arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
