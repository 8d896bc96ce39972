"""Ingest wide plate-profile tables (CSV, CSV.gz, Parquet) into the ``plates`` layout.

The functions here read and validate one source at a time and stream its rows, split by plate,
into per-plate Parquet parts. They hold at most one record batch plus one open writer per plate
in memory. The Ray layer runs one call per source in parallel and reduces the summaries.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from raymmi.io._shardset import PartWriter, resolve
from raymmi.query import parse_query
from raymmi.schema import (
    FEATURE_TYPE,
    NEGCON,
    PLATE,
    SITE,
    WELL,
    FileEntry,
    RaymmiError,
    is_metadata,
    plate_dir,
)

NanPolicy = Literal["fail", "drop-rows", "keep"]
STRING_KEYS = (PLATE, WELL, SITE)
OBJECT_NUMBER = "Metadata_ObjectNumber"
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
BATCH_VALUES = 4_000_000


def source_type(src: str) -> Literal["csv", "parquet", "cellprofiler"]:
    """Classify a source by its name: a table file, or a folder of CellProfiler sites."""
    fs, path = resolve(src)
    info = fs.get_file_info(path)
    if info.type == pa.fs.FileType.NotFound:
        msg = f"input {src!r} does not exist"
        raise RaymmiError(msg)
    if info.type == pa.fs.FileType.Directory:
        return "cellprofiler"
    lower = path.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    msg = (
        f"input {src!r} has an unknown file type; use {', '.join(TABLE_SUFFIXES)} files or a "
        "folder of CellProfiler sites (Image.csv, Cells.csv, Cytoplasm.csv, Nuclei.csv)"
    )
    raise RaymmiError(msg)


def _csv_reader(src: str, *, column_types: Mapping[str, pa.DataType] | None = None):
    fs, path = resolve(src)
    stream = fs.open_input_stream(path, compression="detect")
    convert = pacsv.ConvertOptions(column_types=dict(column_types or {}), strings_can_be_null=True)
    read = pacsv.ReadOptions(block_size=16 << 20)
    return pacsv.open_csv(stream, read_options=read, convert_options=convert)


def _corrupt(src: str, err: Exception) -> RaymmiError:
    msg = (
        f"input {src!r} cannot be read as a table ({type(err).__name__}: {err}); is it truncated?"
    )
    return RaymmiError(msg)


def read_source_schema(src: str) -> pa.Schema:
    """Column names and types of a table source, read from its footer or first CSV block."""
    kind = source_type(src)
    fs, path = resolve(src)
    try:
        if kind == "parquet":
            return pq.read_schema(path, filesystem=fs)
        with _csv_reader(src) as reader:
            return reader.schema
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        raise _corrupt(src, err) from err


def plan_schema(schemas: Mapping[str, pa.Schema]) -> tuple[pa.Schema, tuple[str, ...]]:
    """Unify the schemas of all sources into the target metadata schema and feature list.

    Returns
    -------
    tuple
        ``(metadata schema, feature names)``: plate/well/site as strings, the negcon flag as
        bool, other metadata unified across sources; features in the first source's order.

    Raises
    ------
    RaymmiError
        No ``Metadata_Plate``; no features; a non-numeric feature; sources whose feature sets
        differ.
    """
    schemas = {src: _drop_pandas_index(s) for src, s in schemas.items()}
    first_src, first = next(iter(schemas.items()))
    features = tuple(n for n in first.names if not is_metadata(n))
    for src, schema in schemas.items():
        if PLATE not in schema.names:
            msg = (
                f"input {src!r} has no {PLATE} column; every plate table needs one "
                "(rename the plate id column to Metadata_Plate)"
            )
            raise RaymmiError(msg)
        own = [n for n in schema.names if not is_metadata(n)]
        if not own:
            msg = (
                f"input {src!r} has no feature columns (every column starts with Metadata_); "
                "a profile table needs numeric features"
            )
            raise RaymmiError(msg)
        bad = [
            n
            for n in own
            if not (
                pa.types.is_integer(schema.field(n).type)
                or pa.types.is_floating(schema.field(n).type)
                or pa.types.is_boolean(schema.field(n).type)
                or pa.types.is_null(schema.field(n).type)
            )
        ]
        if bad:
            msg = (
                f"input {src!r}: feature column(s) {bad[:5]} are not numeric "
                f"(type {schema.field(bad[0]).type}); prefix metadata columns with Metadata_ "
                "or fix the values"
            )
            raise RaymmiError(msg)
        if set(own) != set(features):
            only_here = sorted(set(own) - set(features))[:5]
            only_first = sorted(set(features) - set(own))[:5]
            msg = (
                f"inputs {first_src!r} and {src!r} have different features (only in the "
                f"second: {only_here}; only in the first: {only_first}); ingest them separately"
            )
            raise RaymmiError(msg)
    meta_fields: dict[str, pa.DataType] = {}
    for schema in schemas.values():
        for field in schema:
            if not is_metadata(field.name):
                continue
            dtype = field.type
            if field.name in STRING_KEYS:
                dtype = pa.string()
            elif field.name == NEGCON:
                dtype = pa.bool_()
            elif pa.types.is_dictionary(dtype) or pa.types.is_large_string(dtype):
                dtype = pa.string()
            previous = meta_fields.get(field.name)
            if previous is not None and previous != dtype:
                dtype = _common_type(previous, dtype)
            meta_fields[field.name] = dtype
    meta_fields.setdefault(NEGCON, pa.bool_())
    meta_fields = {k: (pa.string() if pa.types.is_null(v) else v) for k, v in meta_fields.items()}
    return pa.schema(list(meta_fields.items())), features


def _drop_pandas_index(schema: pa.Schema) -> pa.Schema:
    """Drop the ``__index_level_N__`` columns pandas adds to Parquet files: not data."""
    for name in [n for n in schema.names if n.startswith("__index_level_")]:
        schema = schema.remove(schema.get_field_index(name))
    return schema


def _common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if (pa.types.is_integer(a) or pa.types.is_floating(a)) and (
        pa.types.is_integer(b) or pa.types.is_floating(b)
    ):
        return pa.float64()
    return pa.string()


def iter_source_tables(
    src: str, *, batch_rows: int = 65_536, features: Sequence[str] = ()
) -> Iterator[pa.Table]:
    """Stream a table source as Arrow tables of at most about ``batch_rows`` rows.

    CSV features are parsed as float64 (then validated and cast to float32 by the caller), so
    a non-numeric value fails with the column named.
    """
    kind = source_type(src)
    fs, path = resolve(src)
    try:
        if kind == "parquet":
            with fs.open_input_file(path) as f:
                # pre_buffer=False: with it, the reader kept every row group it had read
                # (memory grew with the file: 177 MB at 55 MB of input, 812 MB at 544 MB)
                reader = pq.ParquetFile(f, pre_buffer=False)
                for batch in reader.iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([batch])
            return
        types = {name: pa.float64() for name in features}
        types.update({name: pa.string() for name in STRING_KEYS})
        with _csv_reader(src, column_types=types) as reader:
            for batch in reader:
                yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        raise _corrupt(src, err) from err


@dataclasses.dataclass
class SourceSummary:
    """What one source contributed: files written and the facts the driver must check."""

    source: str
    files: list[FileEntry] = dataclasses.field(default_factory=list)
    rows_per_plate: Counter[str] = dataclasses.field(default_factory=Counter)
    negcon_per_plate: Counter[str] = dataclasses.field(default_factory=Counter)
    nonfinite_per_column: Counter[str] = dataclasses.field(default_factory=Counter)
    rows_dropped: int = 0
    duplicates: dict[str, tuple[int, list[tuple]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IngestPlan:
    """How every source of one ingest is read: target schema and policies.

    Parameters
    ----------
    metadata
        Target metadata schema (from :func:`plan_schema`).
    features
        Feature names, in stored order.
    negcon_query
        pandas query marking negative controls (``None``: ``Metadata_is_negcon`` or False).
    on_nan
        Non-finite value policy: ``fail``, ``drop-rows`` or ``keep``.
    batch_rows
        Rows per streamed record batch; default: about 4 million feature values (32 MB as
        float64), so memory per task stays flat however large the source.
    """

    metadata: pa.Schema
    features: tuple[str, ...]
    negcon_query: str | None = None
    on_nan: NanPolicy = "fail"
    batch_rows: int | None = None

    def rows_per_batch(self) -> int:
        """The streamed batch size in rows."""
        if self.batch_rows is not None:
            return self.batch_rows
        return max(256, BATCH_VALUES // max(1, len(self.features)))

    def stored_schema(self) -> pa.Schema:
        """Schema of the stored parts: metadata, the negcon flag, float32 features."""
        return pa.schema(
            [f for f in self.metadata if f.name != NEGCON]
            + [pa.field(NEGCON, pa.bool_())]
            + [pa.field(n, FEATURE_TYPE) for n in self.features]
        )


def negcon_mask(frame: pd.DataFrame, query: str | None, *, source: str) -> np.ndarray:
    """Boolean negative-control flags for ``frame``.

    ``query`` is a :mod:`raymmi.query` expression (``"Metadata_broad_sample == 'DMSO'"``),
    never run as code; without one the existing ``Metadata_is_negcon`` column is used, or every
    row is False.
    """
    if query is None:
        if NEGCON in frame.columns:
            return frame[NEGCON].fillna(False).astype(bool).to_numpy()
        return np.zeros(len(frame), dtype=bool)
    return parse_query(query, what="--negcon query").evaluate(
        frame, what=f"--negcon query (on {source!r})"
    )


def prepare_table(
    table: pa.Table,
    *,
    metadata: pa.Schema,
    features: Sequence[str],
    negcon_query: str | None,
    on_nan: NanPolicy,
    summary: SourceSummary,
) -> pa.Table:
    """Validate one batch of a source and cast it to the target plate schema.

    Counts non-finite feature values per column into ``summary`` and applies ``on_nan``;
    returns a new table (metadata in ``metadata`` order, then float32 features) and never
    mutates its input.
    """
    meta_cols = [n for n in metadata.names if n != NEGCON]
    missing = [n for n in meta_cols if n not in table.column_names]
    if missing:
        table = _add_nulls(table, metadata, missing)
    meta_names = [*meta_cols, *([NEGCON] if NEGCON in table.column_names else [])]
    frame_meta = table.select(meta_names).to_pandas()
    if frame_meta[PLATE].isna().any():
        msg = (
            f"{summary.source!r}: {int(frame_meta[PLATE].isna().sum())} rows have no "
            f"{PLATE}; fill in the plate ids"
        )
        raise RaymmiError(msg)
    negcon = negcon_mask(frame_meta, negcon_query, source=summary.source)
    values = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        values[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    keep = np.ones(table.num_rows, dtype=bool)
    if not finite.all():
        bad_counts = (~finite).sum(axis=0)
        for name, count in zip(features, bad_counts, strict=True):
            if count:
                summary.nonfinite_per_column[name] += int(count)
        if on_nan == "drop-rows":
            keep = np.asarray(finite.all(axis=1))
            summary.rows_dropped += int((~keep).sum())
        elif on_nan == "keep":
            values = np.where(np.isinf(values), np.nan, values)
    arrays = [pc.cast(table.column(n), metadata.field(n).type) for n in meta_cols]
    arrays.append(pa.array(negcon))
    arrays += [pa.array(values[:, j].astype(np.float32)) for j in range(len(features))]
    names = [*meta_cols, NEGCON, *features]
    out = pa.table(arrays, names=names)
    if not keep.all():
        out = out.filter(pa.array(keep))
    return out


def _add_nulls(table: pa.Table, metadata: pa.Schema, names: Sequence[str]) -> pa.Table:
    for name in names:
        dtype = metadata.field(name).type
        table = table.append_column(pa.field(name, dtype), pa.nulls(table.num_rows, dtype))
    return table


class PlateSplitter:
    """Route rows to streaming Parquet parts, one plate per file (never two plates in a file).

    At most ``max_open`` parts are open at once (each open Parquet writer holds per-column
    buffers); a plate whose part was closed continues in a new part (``<name>-<k>.parquet``),
    so memory does not grow with the number of plates in a source. It also keeps a 64-bit
    hash of every row's key (plate, well[, site, object]) per plate, so duplicate keys within
    a source are found without reading anything back (8 bytes a row).
    """

    def __init__(
        self,
        staging: str,
        schema: pa.Schema,
        *,
        part_name: str,
        keys: Sequence[str],
        max_open: int = 8,
    ) -> None:
        self._staging = staging
        self._schema = schema
        self._stem = part_name.removesuffix(".parquet")
        self._keys = list(keys)
        self._max_open = max_open
        self._open: dict[str, PartWriter] = {}  # insertion order = least recently used first
        self._entries: dict[str, list[FileEntry]] = {}
        self._hashes: dict[str, list[np.ndarray]] = {}

    def _writer(self, plate: str) -> PartWriter:
        writer = self._open.pop(plate, None)
        if writer is None:
            if len(self._open) >= self._max_open:
                oldest = next(iter(self._open))
                self._entries[oldest].append(self._open.pop(oldest).close())
            done = self._entries.setdefault(plate, [])
            self._hashes.setdefault(plate, [])
            suffix = f"-{len(done)}" if done else ""
            relpath = posixpath.join(plate_dir(plate), f"{self._stem}{suffix}.parquet")
            writer = PartWriter(self._staging, relpath, self._schema, plate=plate)
        self._open[plate] = writer
        return writer

    def write(self, table: pa.Table) -> None:
        """Append the rows of ``table`` to their plates' parts (one sort, no per-plate scan)."""
        if table.num_rows == 0:  # e.g. every row of a batch dropped by --on-nan drop-rows
            return
        order = pc.sort_indices(table, sort_keys=[(PLATE, "ascending")])
        table = table.take(order)
        plates = table.column(PLATE).to_numpy(zero_copy_only=False)
        names, starts = np.unique(plates, return_index=True)
        ends = [*starts[1:], len(plates)]
        hashes = (
            pd.util.hash_pandas_object(
                table.select(self._keys).to_pandas(), index=False
            ).to_numpy()
            if self._keys
            else np.zeros(len(plates), dtype=np.uint64)
        )
        for plate, start, end in zip(names.tolist(), starts, ends, strict=True):
            self._writer(plate).write(table.slice(start, end - start))
            self._hashes[plate].append(hashes[start:end])

    def close(self) -> list[FileEntry]:
        """Close every part; return the manifest entries of all parts written."""
        for plate, writer in self._open.items():
            self._entries[plate].append(writer.close())
        self._open.clear()
        return [e for entries in self._entries.values() for e in entries]

    def duplicates(self) -> dict[str, tuple[int, list[tuple]]]:
        """Per plate with repeated keys: (number of repeats, a few example keys); after close."""
        found: dict[str, tuple[int, list[tuple]]] = {}
        if not self._keys:
            return found
        for plate, parts in self._hashes.items():
            hashes = np.concatenate(parts)
            if len(np.unique(hashes)) == len(hashes):
                continue
            entries = self._entries[plate]
            count, examples = find_duplicate_keys(self._staging, entries, keys=self._keys)
            if count:  # a 64-bit hash collision alone reports nothing
                found[plate] = (count, examples)
        return found


def ingest_table_source(
    src: str, staging: str, *, part_name: str, plan: IngestPlan
) -> SourceSummary:
    """Stream one table source into per-plate parts under ``staging``; summarize it."""
    tables = iter_source_tables(src, batch_rows=plan.rows_per_batch(), features=plan.features)
    return ingest_tables(tables, staging, source=src, part_name=part_name, plan=plan)


def iter_cellprofiler_wells(
    wells: Sequence[Sequence[str]], *, aggregate: Literal["median", "mean"] | None
) -> Iterator[pa.Table]:
    """Read CellProfiler sites well by well (memory: one well's cells).

    ``wells`` lists, per well, its site folders; with ``aggregate`` each well becomes one row.
    """
    from raymmi.io import _cellprofiler as cp

    for sites in wells:
        frames = [cp.read_cellprofiler_site(site) for site in sites]
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if aggregate is not None:
            frame = cp.aggregate_to_wells(frame, how=aggregate)
        yield pa.Table.from_pandas(frame, preserve_index=False)


def ingest_tables(
    tables: Iterable[pa.Table],
    staging: str,
    *,
    source: str,
    part_name: str,
    plan: IngestPlan,
) -> SourceSummary:
    """Validate, cast and split a stream of tables into per-plate parts under ``staging``."""
    summary = SourceSummary(source=source)
    schema = plan.stored_schema()
    splitter = PlateSplitter(staging, schema, part_name=part_name, keys=key_columns(schema.names))
    try:
        for table in tables:
            out = prepare_table(
                table,
                metadata=plan.metadata,
                features=plan.features,
                negcon_query=plan.negcon_query,
                on_nan=plan.on_nan,
                summary=summary,
            )
            plates = out.column(PLATE).to_numpy(zero_copy_only=False)
            flags = out.column(NEGCON).to_numpy(zero_copy_only=False)
            summary.rows_per_plate.update(Counter(plates.tolist()))
            summary.negcon_per_plate.update(Counter(plates[flags].tolist()))
            splitter.write(out)
    finally:
        summary.files = splitter.close()
    summary.duplicates = splitter.duplicates()
    return summary


def key_columns(names: Sequence[str]) -> list[str]:
    """Columns that identify a row: plate, well, and site / object number when present."""
    return [c for c in (PLATE, WELL, SITE, OBJECT_NUMBER) if c in names]


def find_duplicate_keys(
    staging: str, files: Sequence[FileEntry], *, keys: Sequence[str], limit: int = 5
) -> tuple[int, list[tuple]]:
    """Count duplicate key tuples among ``files`` (one plate) and return a few examples."""
    fs, root = resolve(staging)
    frames = [
        pq.read_table(posixpath.join(root, f.path), columns=list(keys), filesystem=fs).to_pandas()
        for f in files
    ]
    frame = pd.concat(frames, ignore_index=True)
    dup = frame.duplicated(keep="first")
    examples = [tuple(r) for r in frame[dup].drop_duplicates().head(limit).itertuples(index=False)]
    return int(dup.sum()), examples


def cellprofiler_site_keys(site: str | Path) -> tuple[str, str]:
    """``(plate, well)`` of one CellProfiler site folder, read from its ``Image.csv``."""
    image = Path(site) / "Image.csv"
    try:
        frame = pd.read_csv(image, usecols=[PLATE, WELL], dtype=str, nrows=1000)
    except FileNotFoundError as err:
        msg = f"{str(site)!r} has no Image.csv; a CellProfiler site folder needs one"
        raise RaymmiError(msg) from err
    except ValueError as err:
        msg = f"{str(image)!r} lacks {PLATE}/{WELL} ({err}); export them from CellProfiler"
        raise RaymmiError(msg) from err
    pairs = frame.drop_duplicates()
    if len(pairs) != 1:
        msg = f"{str(image)!r} holds {len(pairs)} (plate, well) pairs; expected one per site"
        raise RaymmiError(msg)
    return str(pairs.iloc[0, 0]), str(pairs.iloc[0, 1])
