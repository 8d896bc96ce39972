"""Shard sets on disk: read, write, ingest and export (no Ray, no MLflow)."""

from raymmi.io._cells import H5Modality, open_modality, read_cell_chunk
from raymmi.io._export import export_cells, export_plates
from raymmi.io._shardset import (
    PartWriter,
    ShardSet,
    ShardSetWriter,
    open_shard_set,
    resolve,
    write_part,
)

__all__ = [
    "H5Modality",
    "PartWriter",
    "ShardSet",
    "ShardSetWriter",
    "export_cells",
    "export_plates",
    "open_modality",
    "open_shard_set",
    "read_cell_chunk",
    "resolve",
    "write_part",
]
