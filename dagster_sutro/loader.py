"""Read downloaded Sutro results in downstream assets.

The results assets write Parquet files and record each file's location under the standard
``dagster/uri`` metadata key. :func:`load_sutro_results` reads such a file, or finds it through
the latest materialization of an asset, and returns only the requested columns and rows.
:class:`SutroResultsInputManager` does the same for an asset input, so that a downstream asset
can take the results as an argument.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import dagster as dg
import fsspec.core
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from dagster_sutro import metadata as md
from dagster_sutro.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

OutputFormat = Literal["arrow", "pandas", "polars"]
OUTPUT_FORMATS: tuple[str, ...] = ("arrow", "pandas", "polars")

ResultsSource = (
    str
    | os.PathLike[str]
    | dg.AssetKey
    | dg.AssetsDefinition
    | dg.AssetSpec
    | dg.AssetExecutionContext
    | dg.OpExecutionContext
)
CoercibleToAssetKey = str | Sequence[str] | dg.AssetKey | dg.AssetsDefinition | dg.AssetSpec


@overload
def load_sutro_results(
    source: ResultsSource,
    *,
    asset: CoercibleToAssetKey | None = ...,
    instance: dg.DagsterInstance | None = ...,
    partition_key: str | None = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
    as_: Literal["arrow"] = ...,
) -> pa.Table: ...


@overload
def load_sutro_results(
    source: ResultsSource,
    *,
    asset: CoercibleToAssetKey | None = ...,
    instance: dg.DagsterInstance | None = ...,
    partition_key: str | None = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
    as_: Literal["pandas"],
) -> pd.DataFrame: ...


@overload
def load_sutro_results(
    source: ResultsSource,
    *,
    asset: CoercibleToAssetKey | None = ...,
    instance: dg.DagsterInstance | None = ...,
    partition_key: str | None = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
    as_: OutputFormat,
) -> Any: ...


def load_sutro_results(
    source: ResultsSource,
    *,
    asset: CoercibleToAssetKey | None = None,
    instance: dg.DagsterInstance | None = None,
    partition_key: str | None = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    as_: OutputFormat = "arrow",
) -> Any:
    """Read downloaded Sutro results, only the requested columns and rows.

    ``source`` is one of:

    - A URI or local path, usually the ``dagster/uri`` metadata value of a materialization.
    - An asset key, an asset definition or an asset spec, together with ``instance``. The
      file of the asset's latest materialization is read.
    - The execution context of a downstream asset or op. The file of the latest
      materialization of ``asset`` is read. Without ``asset``, the current asset must have
      exactly one upstream asset, and its file is read.

    The file is read with ``pyarrow.parquet.read_table`` through the fsspec filesystem of its
    URI, so only the pages of the requested columns are fetched, and row groups whose
    statistics rule out ``filters`` are skipped.

    Args:
        source: Where the results are, as described above.
        asset: With a context as ``source``, the upstream asset whose results to read.
        instance: With an asset as ``source``, the Dagster instance to look it up in.
        partition_key: Read the latest materialization of this partition of the asset.
        columns: The columns to read; all columns when ``None``.
        filters: Row filters, as a ``pyarrow.compute`` expression or in the list-of-tuples
            form of ``pyarrow.parquet.read_table``, for example ``[("outputs", "!=", "")]``.
        storage_options: Options for the fsspec filesystem of the URI, for example
            ``{"endpoint_url": ...}`` for ``s3://``.
        as_: ``"arrow"`` for a ``pyarrow.Table``, ``"pandas"`` for a ``pandas.DataFrame`` or
            ``"polars"`` for a ``polars.DataFrame``. pandas and polars are imported only when
            requested and are not dependencies of this package.

    Returns:
        The results as a table of the requested kind.

    Raises:
        InvalidInputError: If the source is of an unknown kind, no asset can be chosen, a
            requested column does not exist or ``as_`` is unknown.
        FileNotFoundError: If the asset has no materialization or its file is gone.

    Examples:
        .. code-block:: python

            import dagster as dg
            from dagster_sutro import load_sutro_results, sutro_results


            @dg.asset(deps=[sutro_results])
            def long_outputs(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
                table = load_sutro_results(
                    context,
                    columns=["outputs"],
                    filters=[("outputs", "!=", "")],
                    as_="pandas",
                )
                return dg.MaterializeResult(metadata={"dagster/row_count": len(table)})
    """
    if as_ not in OUTPUT_FORMATS:
        raise InvalidInputError(
            f"as_={as_!r} is invalid: use one of {', '.join(repr(f) for f in OUTPUT_FORMATS)}."
        )
    uri = resolve_sutro_results_uri(
        source, asset=asset, instance=instance, partition_key=partition_key
    )
    table = read_results_table(
        uri, columns=columns, filters=filters, storage_options=storage_options
    )
    return convert_table(table, as_)


def resolve_sutro_results_uri(
    source: ResultsSource,
    *,
    asset: CoercibleToAssetKey | None = None,
    instance: dg.DagsterInstance | None = None,
    partition_key: str | None = None,
) -> str:
    """Find the URI of downloaded Sutro results, as :func:`load_sutro_results` does.

    Args:
        source: A URI or path, an asset with ``instance``, or a downstream execution context.
        asset: With a context as ``source``, the upstream asset whose results to find.
        instance: With an asset as ``source``, the Dagster instance to look it up in.
        partition_key: Use the latest materialization of this partition.

    Returns:
        The ``dagster/uri`` of the latest materialization, or ``source`` itself when it is a
        URI or path.

    Examples:
        .. code-block:: python

            uri = resolve_sutro_results_uri(sutro_results, instance=context.instance)
    """
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)

    if isinstance(source, (dg.AssetExecutionContext, dg.OpExecutionContext)):
        asset_key = _upstream_asset_key(source, asset)
        return latest_results_uri(source.instance, asset_key, partition_key=partition_key)

    if isinstance(source, (dg.AssetKey, dg.AssetsDefinition, dg.AssetSpec)):
        if instance is None:
            raise InvalidInputError(
                f"Reading the results of asset {_to_asset_key(source).to_user_string()} needs "
                "the Dagster instance: pass instance=context.instance or "
                "instance=dg.DagsterInstance.get()."
            )
        return latest_results_uri(instance, _to_asset_key(source), partition_key=partition_key)

    raise InvalidInputError(
        f"Cannot read Sutro results from a {type(source).__name__}: pass a URI, an asset key, "
        "an asset definition or an execution context."
    )


def latest_results_uri(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, *, partition_key: str | None = None
) -> str:
    """Return the ``dagster/uri`` of an asset's latest materialization.

    Args:
        instance: The Dagster instance holding the event log.
        asset_key: The results asset.
        partition_key: Look at this partition only.

    Returns:
        The URI recorded by the latest materialization.

    Raises:
        FileNotFoundError: If the asset (or partition) has no materialization with a URI.

    Examples:
        .. code-block:: python

            uri = latest_results_uri(context.instance, dg.AssetKey("sutro_results"))
    """
    records_filter = dg.AssetRecordsFilter(
        asset_key=asset_key,
        asset_partitions=[partition_key] if partition_key is not None else None,
    )
    records = instance.fetch_materializations(records_filter, limit=1).records
    materialization = records[0].asset_materialization if records else None
    where = asset_key.to_user_string()
    if partition_key is not None:
        where += f" (partition {partition_key})"
    if materialization is None:
        raise FileNotFoundError(
            f"Asset {where} has no materialization yet, so there are no results to read. "
            "Materialize it first."
        )
    uri = md.metadata_value(dict(materialization.metadata), md.URI_KEY)
    if not uri:
        raise FileNotFoundError(
            f"The latest materialization of asset {where} records no {md.URI_KEY}, so its "
            "results cannot be located."
        )
    return str(uri)


def read_results_table(
    uri: str,
    *,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Read a results Parquet file into an Arrow table.

    Args:
        uri: An fsspec URI or a local path.
        columns: The columns to read; all columns when ``None``.
        filters: Row filters in any form ``pyarrow.parquet.read_table`` takes.
        storage_options: Options for the fsspec filesystem of the URI.

    Returns:
        The selected columns of the rows that pass the filters.

    Raises:
        InvalidInputError: If a requested column does not exist.
        FileNotFoundError: If the file does not exist.

    Examples:
        .. code-block:: python

            table = read_results_table("s3://bucket/sutro/results.parquet", columns=["outputs"])
    """
    if isinstance(columns, str):
        raise InvalidInputError(f"columns must be a list of names, not the string {columns!r}.")
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    if columns is not None:
        available = pq.read_schema(path, filesystem=fs).names
        missing = [name for name in columns if name not in available]
        if missing:
            raise InvalidInputError(
                f"Sutro results at {uri} have no column {', '.join(map(repr, missing))}. "
                f"Available columns: {', '.join(available)}."
            )
    return pq.read_table(
        path,
        columns=list(columns) if columns is not None else None,
        filters=filters,
        filesystem=fs,
    )


def convert_table(table: pa.Table, as_: OutputFormat) -> Any:
    """Convert an Arrow table to the requested kind of table.

    Args:
        table: The table to convert.
        as_: ``"arrow"``, ``"pandas"`` or ``"polars"``.

    Returns:
        The table itself, a ``pandas.DataFrame`` or a ``polars.DataFrame``.

    Raises:
        ImportError: If the library of the requested kind is not installed.

    Examples:
        .. code-block:: python

            frame = convert_table(table, "pandas")
    """
    if as_ == "arrow":
        return table
    if as_ == "pandas":
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError(
                'as_="pandas" needs pandas, which is not installed: pip install pandas'
            ) from None
        return table.to_pandas()
    if as_ == "polars":
        try:
            import polars
        except ImportError:
            raise ImportError(
                'as_="polars" needs polars, which is not installed: pip install polars'
            ) from None
        return polars.from_arrow(table)
    raise InvalidInputError(f"as_={as_!r} is invalid: use 'arrow', 'pandas' or 'polars'.")


class SutroResultsInputManager(dg.ConfigurableIOManager):
    """An input manager that loads the latest downloaded Sutro results as an asset input.

    The results assets write their own files, so this manager only loads. Set it as the input
    manager of the input that takes the results. The kind of table follows the input's type
    annotation: ``pandas.DataFrame`` and ``polars.DataFrame`` are converted, anything else is a
    ``pyarrow.Table``. The input's metadata may set ``columns``, ``filters`` and ``as``.

    Examples:
        .. code-block:: python

            import dagster as dg
            import pyarrow as pa
            from dagster_sutro import SutroResultsInputManager, sutro_results


            @dg.asset(
                ins={
                    "results": dg.AssetIn(
                        key=sutro_results.key,
                        input_manager_key="sutro_results_loader",
                        metadata={"columns": ["outputs"]},
                    )
                }
            )
            def output_count(results: pa.Table) -> int:
                return results.num_rows


            defs = dg.Definitions(
                assets=[sutro_results, output_count],
                resources={"sutro_results_loader": SutroResultsInputManager()},
            )
    """

    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options for the fsspec filesystem of the results URI, for example "
        '{"endpoint_url": "https://..."} for s3://.',
    )

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Reject outputs: the results assets write their files themselves."""
        if obj is None:
            return
        raise dg.Failure(
            description="SutroResultsInputManager only loads inputs. Set it as the "
            "input_manager_key of an AssetIn, not as the io_manager_key of an asset."
        )

    def load_input(self, context: dg.InputContext) -> Any:
        """Load the results of the upstream asset's latest materialization."""
        if not context.has_asset_key:
            raise dg.Failure(
                description="SutroResultsInputManager loads asset inputs only; this input has "
                "no upstream asset."
            )
        partition_key = context.asset_partition_key if context.has_asset_partitions else None
        metadata = dict(context.definition_metadata or {})
        as_ = metadata.get("as") or _format_for_type(context.dagster_type.typing_type)
        uri = latest_results_uri(context.instance, context.asset_key, partition_key=partition_key)
        context.log.info(
            f"Loading Sutro results of {context.asset_key.to_user_string()} from {uri}."
        )
        table = read_results_table(
            uri,
            columns=metadata.get("columns"),
            filters=metadata.get("filters"),
            storage_options=self.storage_options,
        )
        return convert_table(table, as_)


def _format_for_type(typing_type: Any) -> OutputFormat:
    module = getattr(typing_type, "__module__", "") or ""
    name = getattr(typing_type, "__name__", "")
    if name == "DataFrame" and module.startswith("pandas"):
        return "pandas"
    if name == "DataFrame" and module.startswith("polars"):
        return "polars"
    return "arrow"


def _upstream_asset_key(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    asset: CoercibleToAssetKey | None,
) -> dg.AssetKey:
    if asset is not None:
        return _to_asset_key(asset)
    dependency_keys = (
        sorted(context.assets_def.dependency_keys, key=lambda key: key.to_user_string())
        if context.has_assets_def
        else []
    )
    if len(dependency_keys) != 1:
        found = ", ".join(key.to_user_string() for key in dependency_keys) or "none"
        raise InvalidInputError(
            "Pass asset=... to choose the Sutro results asset to read: the current asset has "
            f"{len(dependency_keys)} upstream assets ({found}), not exactly one."
        )
    return dependency_keys[0]


def _to_asset_key(asset: CoercibleToAssetKey) -> dg.AssetKey:
    if isinstance(asset, dg.AssetKey):
        return asset
    if isinstance(asset, (dg.AssetsDefinition, dg.AssetSpec)):
        return asset.key
    return dg.AssetKey.from_coercible(asset)
