"""Shard sets on disk: read, write, ingest and export (no Ray, no MLflow)."""

from raymmi.io._blocklist import read_blocklist
from raymmi.io._cellprofiler import (
    REPORT_ATTR,
    aggregate_to_wells,
    find_sites,
    read_cellprofiler_site,
)
from raymmi.io._cells import H5Modality, open_modality, read_cell_chunk
from raymmi.io._dest import claiming, work_dir
from raymmi.io._export import export_cells, export_format, export_plates
from raymmi.io._images import (
    FieldSpec,
    read_field,
    read_load_data,
    read_plane,
    scale_to_unit,
    write_load_data,
    write_plane,
)
from raymmi.io._plates import PlateSplitter, SourceSummary, negcon_mask
from raymmi.io._shardset import (
    PartWriter,
    ShardSet,
    ShardSetWriter,
    open_part,
    open_shard_set,
    parquet_options,
    read_part,
    resolve,
    write_part,
)

__all__ = [
    "REPORT_ATTR",
    "FieldSpec",
    "H5Modality",
    "PartWriter",
    "PlateSplitter",
    "ShardSet",
    "ShardSetWriter",
    "SourceSummary",
    "aggregate_to_wells",
    "claiming",
    "export_cells",
    "export_format",
    "export_plates",
    "find_sites",
    "negcon_mask",
    "open_modality",
    "open_part",
    "open_shard_set",
    "parquet_options",
    "read_blocklist",
    "read_cell_chunk",
    "read_cellprofiler_site",
    "read_field",
    "read_load_data",
    "read_part",
    "read_plane",
    "resolve",
    "scale_to_unit",
    "work_dir",
    "write_load_data",
    "write_part",
    "write_plane",
]
