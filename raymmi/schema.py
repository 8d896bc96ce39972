"""Column names, Arrow types and the shard-set manifest.

A *shard set* is a directory of Parquet files plus ``_manifest.json``, written last as the
commit marker. Two kinds exist:

``plates``
    One row per image, cell or well. ``Metadata_*`` columns (pycytominer names) and float32
    feature columns, stored wide (one Parquet column per feature). Files are partitioned by
    plate (``plate=<id>/part-*.parquet``); a file never holds two plates.
``cells``
    One row per cell: ``cell_id``, ``batch``, optional ``cell_type`` and other ``obs`` columns,
    and per modality either a sparse row (``<mod>_indices`` int32 + ``<mod>_values`` float32
    lists) or a dense float32 vector (``<mod>`` fixed-size list), plus ``<mod>_depth``.
    Feature names of every modality live in the manifest.

This module is pure: no Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"
FALLBACK_REPORT_NAME = "_fallback_report.csv"

# --- plates -----------------------------------------------------------------------------------
METADATA_PREFIX = "Metadata_"
PLATE = "Metadata_Plate"
WELL = "Metadata_Well"
SITE = "Metadata_Site"
BATCH = "Metadata_Batch"
NEGCON = "Metadata_is_negcon"
FEATURE_TYPE = pa.float32()

# --- cells ------------------------------------------------------------------------------------
CELL_ID = "cell_id"
CELL_BATCH = "batch"
CELL_TYPE = "cell_type"
Kind = Literal["plates", "cells"]
Encoding = Literal["sparse", "dense"]
KINDS: tuple[str, ...] = ("plates", "cells")


class RaymmiError(Exception):
    """An error in the user's input or configuration.

    The command line prints its message as one line and exits with code 2; the message names
    the problem and the fix.
    """


def indices_column(modality: str) -> str:
    """Name of the int32 list column holding the non-zero feature indices of ``modality``."""
    return f"{modality}_indices"


def values_column(modality: str) -> str:
    """Name of the float32 list column holding the non-zero values of ``modality``."""
    return f"{modality}_values"


def depth_column(modality: str) -> str:
    """Name of the float32 column holding the per-cell total counts of ``modality``."""
    return f"{modality}_depth"


def is_metadata(column: str) -> bool:
    """Whether a plate column is metadata (pycytominer convention: ``Metadata_`` prefix)."""
    return column.startswith(METADATA_PREFIX)


_SAFE_PLATE = re.compile(r"[^A-Za-z0-9._-]")


def plate_dir(plate: str) -> str:
    """Directory name of one plate inside a ``plates`` shard set (``plate=<id>``).

    Characters other than letters, digits, ``.``, ``_`` and ``-`` are percent-encoded so that any
    plate id maps to one safe, distinct path component.
    """
    safe = _SAFE_PLATE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), plate)
    return f"plate={safe}"


@dataclasses.dataclass(frozen=True)
class Modality:
    """One modality of a ``cells`` shard set.

    Parameters
    ----------
    name
        Short name used as the column prefix (``rna``, ``atac``, ``adt``, ``rna_pca`` ...).
    encoding
        ``"sparse"`` (``<name>_indices`` + ``<name>_values``) or ``"dense"`` (``<name>``).
    features
        Feature names (genes, ``chr-start-end`` peaks, proteins, component names).
    """

    name: str
    encoding: Encoding
    features: tuple[str, ...]

    def columns(self) -> tuple[str, ...]:
        """Parquet columns that carry this modality's values."""
        if self.encoding == "sparse":
            return (indices_column(self.name), values_column(self.name))
        return (self.name,)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One Parquet file of a shard set: relative path, rows, bytes and SHA-256 of its content."""

    path: str
    rows: int
    bytes: int
    sha256: str
    plate: str | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The commit record of a shard set, stored as ``_manifest.json``.

    Parameters
    ----------
    kind
        ``"plates"`` or ``"cells"``.
    files
        Every data file, relative to the shard-set root, with row counts and checksums.
    metadata
        Metadata / ``obs`` column names, in order.
    features
        Plate feature column names, in order (``plates`` only).
    modalities
        Modalities of a ``cells`` shard set, in order.
    producer
        The producing command, its config, the MLflow run id and the raymmi version.
    parents
        Parent shard sets: ``{"uri": ..., "manifest_sha256": ...}``.
    extra
        Stage-specific facts (e.g. the negcon query used at ingest).
    """

    kind: Kind
    files: tuple[FileEntry, ...]
    metadata: tuple[str, ...]
    features: tuple[str, ...] = ()
    modalities: tuple[Modality, ...] = ()
    producer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    parents: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_rows(self) -> int:
        """Total number of rows over all files."""
        return sum(f.rows for f in self.files)

    @property
    def plates(self) -> tuple[str, ...]:
        """Plate ids in file order, each once (``plates`` only)."""
        return tuple(dict.fromkeys(f.plate for f in self.files if f.plate is not None))

    def modality(self, name: str) -> Modality:
        """The modality called ``name``; a :class:`RaymmiError` lists the ones present."""
        for m in self.modalities:
            if m.name == name:
                return m
        have = [m.name for m in self.modalities]
        msg = f"modality {name!r} is not in this shard set; it has {have}"
        raise RaymmiError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the on-disk form)."""
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "num_rows": self.num_rows,
            "metadata": list(self.metadata),
            "features": list(self.features),
            "modalities": [
                {"name": m.name, "encoding": m.encoding, "features": list(m.features)}
                for m in self.modalities
            ],
            "files": [dataclasses.asdict(f) for f in self.files],
            "producer": dict(self.producer),
            "parents": [dict(p) for p in self.parents],
            "extra": dict(self.extra),
        }

    def to_json(self) -> str:
        """Serialized manifest."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "manifest") -> Manifest:
        """Parse and validate a manifest dictionary.

        Raises
        ------
        RaymmiError
            If a key is missing, has the wrong type, or the schema version is unknown.
        """
        try:
            version = int(data["schema_version"])
            if version > SCHEMA_VERSION:
                msg = (
                    f"{where}: schema_version {version} is newer than this raymmi understands "
                    f"({SCHEMA_VERSION}); upgrade raymmi"
                )
                raise RaymmiError(msg)
            kind = data["kind"]
            if kind not in KINDS:
                msg = f"{where}: kind={kind!r} is not one of {list(KINDS)}"
                raise RaymmiError(msg)
            files = tuple(FileEntry(**f) for f in data["files"])
            manifest = cls(
                kind=kind,
                files=files,
                metadata=tuple(data["metadata"]),
                features=tuple(data.get("features", ())),
                modalities=tuple(
                    Modality(m["name"], m["encoding"], tuple(m["features"]))
                    for m in data.get("modalities", ())
                ),
                producer=dict(data.get("producer", {})),
                parents=tuple(data.get("parents", ())),
                extra=dict(data.get("extra", {})),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as err:
            msg = f"{where} is not a valid raymmi manifest ({type(err).__name__}: {err})"
            raise RaymmiError(msg) from err
        declared = data.get("num_rows")
        if declared is not None and int(declared) != manifest.num_rows:
            msg = f"{where}: num_rows={declared} but the files sum to {manifest.num_rows}"
            raise RaymmiError(msg)
        return manifest


@dataclasses.dataclass(frozen=True)
class CellBatch:
    """An in-memory chunk of cells, the unit that generators and readers produce.

    Parameters
    ----------
    obs
        Per-cell metadata, index = cell ids (strings); ``batch`` and optional ``cell_type``
        among the columns.
    modalities
        Modality name → matrix of shape (n_cells, n_features): a ``scipy.sparse.csr_matrix``
        (stored sparse) or a ``numpy.ndarray`` (stored dense), rows in ``obs`` order.
    """

    obs: pd.DataFrame
    modalities: Mapping[str, sp.csr_matrix | np.ndarray]

    def __post_init__(self) -> None:
        n = len(self.obs)
        for name, matrix in self.modalities.items():
            if matrix.shape[0] != n:
                msg = f"modality {name!r} has {matrix.shape[0]} rows but obs has {n} cells"
                raise ValueError(msg)


def sparse_to_lists(matrix: sp.spmatrix | sp.sparray) -> tuple[pa.ListArray, pa.ListArray]:
    """Turn a CSR matrix of shape (n, m) into two Arrow list arrays (indices, values).

    The arrays share offsets; indices are int32, values float32. No copy of the data beyond
    the dtype casts.
    """
    csr = sp.csr_matrix(matrix)
    csr.sort_indices()
    offsets = pa.array(csr.indptr.astype(np.int32, copy=False))
    indices = pa.ListArray.from_arrays(offsets, pa.array(csr.indices.astype(np.int32)))
    values = pa.ListArray.from_arrays(offsets, pa.array(csr.data.astype(np.float32)))
    return indices, values


def lists_to_sparse(
    indices: pa.ListArray | pa.ChunkedArray,
    values: pa.ListArray | pa.ChunkedArray,
    *,
    n_features: int,
) -> sp.csr_matrix:
    """Inverse of :func:`sparse_to_lists`: a float32 CSR matrix of shape (n, n_features)."""
    if isinstance(indices, pa.ChunkedArray):
        indices = indices.combine_chunks()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    offsets = indices.offsets.to_numpy()
    start = offsets[0]
    idx = indices.flatten().to_numpy().astype(np.int32, copy=False)
    val = values.flatten().to_numpy().astype(np.float32, copy=False)
    return sp.csr_matrix((val, idx, offsets - start), shape=(len(indices), n_features))


def dense_to_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Turn a dense array of shape (n, m) into an Arrow fixed-size list array of float32."""
    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), matrix.shape[1])


def encode_matrix(
    name: str, matrix: np.ndarray, *, fmt: str = "float32", threshold: float = 0.0
) -> dict[str, pa.Array]:
    """The ``cells`` layout columns of one dense matrix (values and ``<name>_depth``).

    ``fmt="float32"`` keeps it dense; ``"float16"`` halves it (3 significant digits, values to
    65,504); ``"sparse"`` keeps only entries with ``|value| >= threshold`` as
    ``<name>_indices`` / ``<name>_values``. The depth (row sum) is of the stored values.
    """
    if fmt == "sparse":
        kept = np.where(np.abs(matrix) >= threshold, matrix, 0).astype(np.float32)
        indices, values = sparse_to_lists(sp.csr_matrix(kept))
        depth = kept.sum(axis=1, dtype=np.float32)
        return {
            indices_column(name): indices,
            values_column(name): values,
            depth_column(name): pa.array(depth),
        }
    if fmt == "float16":
        half = np.ascontiguousarray(matrix, dtype=np.float16)
        column = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1)), matrix.shape[1])
        depth = half.sum(axis=1, dtype=np.float32)
        return {name: column, depth_column(name): pa.array(depth)}
    if fmt != "float32":
        msg = f"format {fmt!r} is not one of ['float32', 'float16', 'sparse']"
        raise ValueError(msg)
    depth = np.asarray(matrix).sum(axis=1, dtype=np.float32)
    return {name: dense_to_list(matrix), depth_column(name): pa.array(depth)}


def list_to_dense(column: pa.FixedSizeListArray | pa.ChunkedArray) -> np.ndarray:
    """Inverse of :func:`dense_to_list`: float32 array of shape (n, m)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(column), width)


def cell_batch_to_arrow(batch: CellBatch) -> pa.Table:
    """Encode a :class:`CellBatch` as one Arrow table in the ``cells`` row layout.

    ``cell_id`` first, then the ``obs`` columns, then per modality its value columns and
    ``<mod>_depth`` (row sums, float32).
    """
    obs = batch.obs
    arrays: dict[str, pa.Array] = {CELL_ID: pa.array(obs.index.astype(str), pa.string())}
    for column in obs.columns:
        arrays[str(column)] = pa.array(obs[column].to_numpy(), from_pandas=True)
    for name, matrix in batch.modalities.items():
        if sp.issparse(matrix):
            arrays[indices_column(name)], arrays[values_column(name)] = sparse_to_lists(matrix)
            depth = np.asarray(matrix.sum(axis=1)).ravel()
        else:
            arrays[name] = dense_to_list(np.asarray(matrix))
            depth = np.asarray(matrix, dtype=np.float64).sum(axis=1)
        arrays[depth_column(name)] = pa.array(depth.astype(np.float32))
    return pa.table(arrays)
