"""Arrow rows of a ``cells`` shard set → the tensor batch a :class:`~raymmi.models.Model` reads.

Sparse modalities are densified once per mini-batch (one scatter over the whole batch), never
row by row: the reference SAILERX loader densified each cell in ``__getitem__``, which is what
``jobs/bench_train.py`` compares against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raymmi.models._base import Dims, Inputs
from raymmi.schema import RaymmiError, depth_column, indices_column, values_column


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How to decode a model's inputs from Arrow: encodings and the category order."""

    inputs: Inputs
    dims: Dims
    encodings: Mapping[str, str]

    def columns(self, available: set[str] | None = None) -> list[str]:
        """Parquet columns to read (optional inputs only where ``available`` has them)."""
        out: list[str] = []
        for name in self.inputs.modalities:
            cols = (
                [indices_column(name), values_column(name)]
                if self.encodings[name] == "sparse"
                else [name]
            )
            out += cols
        out += [depth_column(m) for m in self.inputs.depths]
        out += list(self.inputs.codes)
        if available is None:
            return out
        return [c for c in out if c in available]


def densify_rows(indices: pa.Array, values: pa.Array, n_features: int) -> np.ndarray:
    """A list<int32>/list<float32> column pair as a dense float32 ``(n, n_features)`` array."""
    if isinstance(indices, pa.ChunkedArray):
        indices = indices.combine_chunks()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    offsets = indices.offsets.to_numpy()
    lengths = np.diff(offsets)
    idx = indices.flatten().to_numpy(zero_copy_only=False)
    val = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    out = np.zeros((len(indices), n_features), dtype=np.float32)
    rows = np.repeat(np.arange(len(indices)), lengths)
    out[rows, idx] = val
    return out


def _dense(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    # a writable copy: torch refuses to share Arrow's read-only buffers safely
    return np.array(flat, dtype=np.float32).reshape(len(column), width)


def arrow_to_batch(table: pa.Table, layout: BatchLayout) -> dict[str, torch.Tensor]:
    """Decode one Arrow batch into the model's tensor batch (on the CPU).

    Keys listed in ``layout.inputs.optional`` whose columns the table lacks are left out;
    any other missing column is a :class:`RaymmiError` naming it.
    """
    present = set(table.column_names)
    optional = set(layout.inputs.optional)
    out: dict[str, torch.Tensor] = {}

    def missing(key: str, column: str) -> bool:
        if column in present:
            return False
        if key in optional:
            return True
        msg = f"column {column!r} (for model input {key!r}) is not in the data"
        raise RaymmiError(msg)

    for name in layout.inputs.modalities:
        n = layout.dims.n_features(name)
        if layout.encodings[name] == "sparse":
            if missing(name, indices_column(name)):
                continue
            array = densify_rows(
                table.column(indices_column(name)), table.column(values_column(name)), n
            )
        else:
            if missing(name, name):
                continue
            array = _dense(table.column(name))
        out[name] = torch.from_numpy(array)
    for name in layout.inputs.depths:
        column = depth_column(name)
        if missing(column, column):
            continue
        depth = table.column(column).to_numpy(zero_copy_only=False).astype(np.float32)
        out[column] = torch.from_numpy(depth)
    for name in layout.inputs.codes:
        if missing(name, name):
            continue
        categories = pa.array(layout.dims.categories[name], pa.string())
        codes = pc.index_in(pc.cast(table.column(name), pa.string()), value_set=categories)
        if codes.null_count:
            msg = f"obs column {name!r} holds a value outside its {len(categories)} categories"
            raise RaymmiError(msg)
        out[name] = torch.from_numpy(codes.to_numpy(zero_copy_only=False).astype(np.int64))
    return out
