"""Shard sets as Ray Datasets: the entry point of every distributed stage, and the way out."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import ray.data
from ray.data import Datasink
from ray.data.block import Block
from ray.data.datasource import WriteResult

from raymmi.io import PlateSplitter, ShardSet, resolve, write_part
from raymmi.schema import FileEntry


def read_dataset(shard_set: ShardSet, *, columns: Sequence[str] | None = None) -> ray.data.Dataset:
    """Read a committed shard set's files (exactly those in its manifest) as a Ray Dataset.

    Parameters
    ----------
    shard_set
        An opened shard set (:func:`raymmi.io.open_shard_set`).
    columns
        Columns to read (all by default); only those are decoded.
    """
    fs, _ = resolve(shard_set.uri)
    # partitioning=None: `plate=<id>` folders are layout, not an extra column
    ds = ray.data.read_parquet(shard_set.file_uris(), filesystem=fs, partitioning=None)
    if columns is not None:
        ds = ds.select_columns(list(columns))
    return ds


class ShardPartsSink(Datasink[str]):
    """Write a Dataset as shard-set parts into a staging directory, collecting file entries.

    ``plates`` sets are split by plate inside each write task (one part per plate and task,
    never two plates in one file); ``cells`` sets get one part per block. The driver reads
    :attr:`files` after the write and commits the manifest (:class:`raymmi.io.ShardSetWriter`).

    Parameters
    ----------
    staging
        The writer's staging directory (:attr:`raymmi.io.ShardSetWriter.staging`).
    kind
        ``"plates"`` or ``"cells"``.
    schema
        Arrow schema every part is cast to.
    """

    def __init__(self, staging: str, *, kind: str, schema: pa.Schema) -> None:
        self.staging = staging
        self.kind = kind
        self.schema = schema
        self.files: list[FileEntry] = []

    def write(self, blocks: Iterable[Block], ctx: Any) -> str:
        # Ray Data stores the return value in a pandas cell: hand back JSON text.
        entries = self._write(blocks, ctx)
        return json.dumps([dataclasses.asdict(e) for e in entries])

    def _write(self, blocks: Iterable[Block], ctx: Any) -> list[FileEntry]:
        name = f"part-{ctx.task_idx:05d}"
        if self.kind == "plates":
            splitter = PlateSplitter(
                self.staging, self.schema, part_name=f"{name}.parquet", keys=()
            )
            try:
                for block in blocks:
                    splitter.write(pa.table(block))
            finally:
                entries = splitter.close()
            return entries
        return [
            write_part(self.staging, f"{name}-{i:04d}.parquet", pa.table(b).cast(self.schema))
            for i, b in enumerate(blocks)
            if pa.table(b).num_rows
        ]

    def on_write_complete(self, write_result: WriteResult[str]) -> None:
        entries = [FileEntry(**e) for task in write_result.write_returns for e in json.loads(task)]
        self.files = sorted(entries, key=lambda e: (e.plate or "", e.path))
