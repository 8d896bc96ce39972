"""One plate of ``raymmi normalize``: read it, make its feature matrix, write its output part.

Also the small records that tasks return to the driver (see :mod:`raymmi.run._normalize._driver`).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raymmi.config import NormalizeConfig
from raymmi.io import PartWriter, ShardSet, negcon_mask, read_part, resolve
from raymmi.schema import (
    FEATURE_TYPE,
    NEGCON,
    PLATE,
    FileEntry,
    RaymmiError,
    plate_dir,
)

PlateGroup = list[tuple[str, list[FileEntry]]]


@dataclasses.dataclass
class _PlateInfo:
    """What the driver keeps of one plate: counts, its batch, the parts written."""

    plate: str
    rows: int
    negcon_rows: int
    batch: str | None = None
    files: list[FileEntry] = dataclasses.field(default_factory=list)
    names: tuple[str, ...] | None = None  # output feature names (one pass; spherize PCA)


@dataclasses.dataclass
class _Scope:
    """Mergeable statistics of one global scope (``"*"`` or a batch) from a group of plates."""

    rows: int = 0
    moments: Any = None  # Moments of the reference rows (standardize / mean)
    all_moments: Any = None  # Moments of all rows (negcon-global fallback)
    rows_ref: list[np.ndarray] = dataclasses.field(default_factory=list)  # robust / spherize

    def merge(self, other: _Scope) -> _Scope:
        return _Scope(
            rows=self.rows + other.rows,
            moments=_merge(self.moments, other.moments),
            all_moments=_merge(self.all_moments, other.all_moments),
            rows_ref=self.rows_ref + other.rows_ref,
        )


def _merge(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


@dataclasses.dataclass
class _GroupResult:
    """What one task returns for its group of plates."""

    plates: list[_PlateInfo]
    report: pd.DataFrame | None = None  # fallback rows (one pass)
    scopes: dict[str, _Scope] = dataclasses.field(default_factory=dict)  # statistics pass
    combat: Any = None  # CombatStats (statistics pass)


# ----------------------------------------------------------------------------------------------
# reading and writing one plate
# ----------------------------------------------------------------------------------------------


def _read_plate(
    shard_set: ShardSet, files: Sequence[FileEntry], columns: Sequence[str] | None = None
) -> pa.Table:
    """One plate's files as one table; each file read whole (one read), then decoded.

    Reading the bytes first and decoding from memory measured faster than ``read_table`` on
    a path (which also builds a dataset per call) for these small, wide files.
    """
    fs = resolve(shard_set.uri)[0]
    # Checked as read: checksum over the buffer decoded, footer row count, columns.
    m = shard_set.manifest
    need = () if columns is not None else (*m.features, *(c for c in m.metadata if c != NEGCON))
    tables = [read_part(shard_set.uri, f, columns=columns, fs=fs, require=need) for f in files]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """The features as one float32 (n_rows, n_features) matrix, column-major: one copy.

    Nulls become NaN. No pandas round trip: 1,000 ``to_pandas`` columns cost more than the
    normalization itself.
    """
    out = np.empty((len(features), table.num_rows), dtype=np.float32)
    for j, name in enumerate(features):
        out[j] = table.column(name).to_numpy()
    return out.T


def _meta_frame(table: pa.Table, names: Sequence[str]) -> pd.DataFrame:
    present = set(table.column_names)
    return table.select([n for n in names if n in present]).to_pandas()


def _needed_columns(shard_set: ShardSet, config: NormalizeConfig) -> list[str]:
    m = shard_set.manifest
    meta = list(m.metadata) if config.negcon else [PLATE, NEGCON]
    if config.reference == "batch" or config.method == "combat":
        meta.append(config.batch_key)
    return list(dict.fromkeys(n for n in meta if n in m.metadata)) + list(m.features)


def _negcon(meta: pd.DataFrame, config: NormalizeConfig, plate: str) -> np.ndarray:
    return negcon_mask(meta, config.negcon, source=f"plate {plate}")


def _single_batch(meta: pd.DataFrame, key: str, plate: str) -> str:
    batches = meta[key].astype(str).unique()
    if len(batches) != 1:
        msg = (
            f"plate {plate!r} spans {len(batches)} values of {key} ({list(batches[:3])}); "
            "a batch reference needs each plate in one batch"
        )
        raise RaymmiError(msg)
    return str(batches[0])


def _output_schema(meta_schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    return pa.schema(list(meta_schema) + [pa.field(n, FEATURE_TYPE) for n in names])


def _write_plate(
    staging: str,
    plate: str,
    table: pa.Table,
    meta: pd.DataFrame,
    out: np.ndarray,
    schema: pa.Schema,
    config: NormalizeConfig,
    n_meta: int,
) -> FileEntry:
    """Write one plate's output part: metadata columns as read, features from ``out``."""
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for field in schema.names[:n_meta]:
        if field == NEGCON and config.negcon:
            arrays.append(pa.array(_negcon(meta, config, plate)))
        else:
            arrays.append(table.column(field))
    columns = np.ascontiguousarray(out.T)  # (n_features, n_rows): each feature contiguous
    arrays += [pa.array(columns[j]) for j in range(columns.shape[0])]
    result = pa.Table.from_arrays(arrays, schema=schema)
    relpath = posixpath.join(plate_dir(plate), "part-00000.parquet")
    with PartWriter(staging, relpath, schema, plate=plate) as part:
        part.write(result)
    return part.close()
