"""Resolving a destination string to an fsspec filesystem and path, without any request."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import fsspec.core
from fsspec.implementations.local import LocalFileSystem

from dagster_sutro.errors import DestinationError, InvalidInputError
from dagster_sutro.redaction import redact_text

S3_PROTOCOLS = ("s3", "s3a")
# HTTP(S) filesystems are read-only in fsspec.
READ_ONLY_PROTOCOLS = ("http", "https")


@dataclass(frozen=True)
class Destination:
    """The place a downloaded artifact is published to: an fsspec filesystem and a path.

    Create it with :func:`resolve_destination`.

    Attributes:
        fs: The fsspec filesystem.
        path: The path on ``fs``: the file itself, or the directory when
            :attr:`is_directory` is true.
        is_directory: True when the destination ended in ``/``, so the artifact keeps its own
            file name inside it.
        original: The destination string as given.
    """

    fs: fsspec.AbstractFileSystem = field(repr=False)
    path: str
    is_directory: bool
    original: str

    @property
    def is_local(self) -> bool:
        """Whether the destination is on the local filesystem."""
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_s3(self) -> bool:
        """Whether the destination is an S3 (or S3-compatible, such as R2) bucket."""
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return any(name in S3_PROTOCOLS for name in protocols)

    def for_filename(self, filename: str) -> tuple[fsspec.AbstractFileSystem, str, str]:
        """Return the filesystem, the path and the URI of the file for an artifact.

        Args:
            filename: The artifact's file name, used when the destination is a directory.

        Returns:
            ``(fs, path, uri)``, where ``uri`` is the fsspec URI of ``path`` with its protocol.

        Raises:
            DestinationError: If the destination is a directory and ``filename`` is not a
                plain file name.
        """
        if not self.is_directory:
            return self.fs, self.path, self._uri(self.path)
        _check_filename(filename)
        if self.is_local:
            path = os.path.join(self.path, filename)
        else:
            path = posixpath.join(self.path.rstrip("/") or "/", filename)
        return self.fs, path, self._uri(path)

    def exists_with_size(self, filename: str, size: int) -> bool:
        """Check whether the artifact's file exists at the destination with ``size`` bytes.

        Args:
            filename: The artifact's file name.
            size: The expected size in bytes.

        Returns:
            True when a file (not a directory) of exactly ``size`` bytes is there.

        Raises:
            DestinationError: If the filesystem fails for another reason than a missing file.
        """
        fs, path, uri = self.for_filename(filename)
        failure: DestinationError | None = None
        info: dict[str, Any] = {}
        try:
            fs.invalidate_cache(path)
            info = fs.info(path)
        except FileNotFoundError:
            return False
        except Exception as error:
            failure = DestinationError(
                f"Could not read the size of {uri}: {type(error).__name__}: "
                f"{redact_text(str(error))}"
            )
        if failure is not None:
            raise failure
        return info.get("type") == "file" and info.get("size") == size

    def _uri(self, path: str) -> str:
        return redact_text(self.fs.unstrip_protocol(path))


def resolve_destination(
    destination: str, *, storage_options: dict[str, Any] | None = None
) -> Destination:
    """Validate a destination and resolve it to an fsspec filesystem, with no network request.

    A destination ending in ``/`` (or a bare ``s3://bucket``) is a directory that receives
    the artifact under its own file name. Any other value is the file path itself. For
    ``s3://`` destinations the filesystem is created with ``fixed_upload_size=True``, so
    every multipart upload part but the last has the same size, which Cloudflare R2
    requires.

    Args:
        destination: A local path, a ``file://`` URL or any fsspec URL (``s3://``,
            ``memory://``, ...).
        storage_options: Keyword arguments for the fsspec filesystem, for example
            ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for ``s3://``.

    Returns:
        The resolved destination.

    Raises:
        InvalidInputError: If the value is empty, has an unknown protocol, needs an fsspec
            implementation that is not installed, or names a read-only filesystem.

    Examples:
        >>> resolve_destination("memory://results/").for_filename("a.parquet")[2]
        'memory:///results/a.parquet'
    """
    if not isinstance(destination, str) or not destination.strip():
        raise InvalidInputError(
            f"The destination must be a non-empty path or fsspec URL, got {destination!r}. "
            "Pass for example '/data/sutro/' or 's3://bucket/prefix/'."
        )
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InvalidInputError(
            f"storage_options must be a dict of fsspec filesystem options, got "
            f"{type(storage_options).__name__}."
        )
    display_value = redact_text(destination)
    options = dict(storage_options or {})
    protocol, _ = fsspec.core.split_protocol(destination)
    if protocol in S3_PROTOCOLS:
        options["fixed_upload_size"] = True
    if protocol in READ_ONLY_PROTOCOLS:
        raise InvalidInputError(
            f"The destination {display_value!r} is an HTTP URL, which fsspec cannot write. Use a "
            "local path or a writable filesystem such as s3://."
        )

    failure: InvalidInputError | None = None
    try:
        fs, path = fsspec.core.url_to_fs(destination, **options)
    except ImportError as error:
        failure = InvalidInputError(
            f"The destination {display_value!r} needs an fsspec implementation that is not "
            f"installed ({redact_text(str(error))}). Install it, or use another destination."
        )
    except (ValueError, TypeError, OSError) as error:
        failure = InvalidInputError(
            f"The destination {display_value!r} could not be resolved by fsspec "
            f"({type(error).__name__}: {redact_text(str(error))}). Pass a local path or an "
            "fsspec URL with a known protocol, such as s3://bucket/prefix/."
        )
    if failure is not None:
        raise failure

    is_directory = destination.endswith("/")
    if protocol in S3_PROTOCOLS and "/" not in path.strip("/"):
        # A bare bucket can only be a directory.
        is_directory = True
    if not path.strip("/") and not is_directory:
        raise InvalidInputError(
            f"The destination {display_value!r} names no file. End it with '/' to write the "
            "artifact under its own file name."
        )
    if protocol in S3_PROTOCOLS and (not path.strip("/") or path.startswith("/")):
        raise InvalidInputError(
            f"The destination {display_value!r} names no bucket. Pass s3://<bucket>/<prefix>/."
        )
    resolved = Destination(fs=fs, path=path, is_directory=is_directory, original=destination)
    if resolved.is_local:
        _check_local_destination(resolved, display_value)
    return resolved


def _check_local_destination(destination: Destination, display_value: str) -> None:
    """Reject local destinations that cannot be written, before any request is sent."""
    if destination.original.strip() in ("file://", "file:"):
        raise InvalidInputError(
            f"The destination {display_value!r} names no directory. Pass a path such as "
            "'file:///data/sutro/' or '/data/sutro/'."
        )
    if not destination.is_directory and os.path.isdir(destination.path):
        raise InvalidInputError(
            f"The destination {display_value!r} is an existing directory. End it with '/' to "
            "write the artifact under its own file name inside it."
        )
    directory = destination.path if destination.is_directory else os.path.dirname(destination.path)
    ancestor = directory
    while ancestor and not os.path.lexists(ancestor):
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if ancestor and os.path.lexists(ancestor) and not os.path.isdir(ancestor):
        raise InvalidInputError(
            f"The destination {display_value!r} cannot be created: {ancestor} is a file, not a "
            "directory. Choose a path whose parent folders are directories."
        )


def _check_filename(filename: str) -> None:
    if (
        not filename
        or filename in (".", "..")
        or "/" in filename
        or "\\" in filename
        or "\x00" in filename
    ):
        raise DestinationError(
            f"The artifact file name {filename!r} is not a plain file name, so it cannot be "
            "placed in a destination directory. Give a destination that names the file."
        )
