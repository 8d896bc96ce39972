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


def work_blocks(n: int, workers: int, *, most: int = 16) -> list[int]:
    """Rows per Ray Data block (one block = one map task) for ``n`` rows of work.

    Guided self-scheduling: each block takes ``1 / (2 * workers)`` of the rows still left,
    between 1 and ``most``. Big blocks come first, because every map task pays a fixed cost
    (measured on 2 CPUs: ~0.16 s between one-field tasks, 6-7 s per worker over 80 fields,
    where 14 guided blocks left 1 s); one-row blocks come last, so the workers finish within
    one row of each other instead of one block.

    Examples
    --------
    >>> work_blocks(80, 2)
    [16, 16, 12, 9, 7, 5, 4, 3, 2, 2, 1, 1, 1, 1]
    """
    sizes: list[int] = []
    left = n
    while left > 0:
        size = min(most, max(1, -(-left // (2 * max(1, workers)))))
        sizes.append(size)
        left -= size
    return sizes


def work_dataset(
    units: Sequence[dict[str, Any]], workers: int, *, most: int = 16
) -> ray.data.Dataset:
    """Rows of work (flat dicts) as a Dataset blocked by :func:`work_blocks`."""
    blocks, start = [], 0
    for size in work_blocks(len(units), workers, most=most):
        blocks.append(pa.Table.from_pylist(units[start : start + size]))
        start += size
    return ray.data.from_arrow(blocks)


def tasks_in_flight(workers: int, cpus: int, blocks: int) -> int:
    """Map tasks to keep submitted for ``workers`` to run at once: one more where CPUs bound them.

    A Ray worker that finishes a task takes the next one its owner has queued for the same
    resources at once, keeping its lease; with exactly ``workers`` tasks submitted, Ray Data
    submits the next only after it sees one finish, by which time the lease is back at the
    raylet and a new one is granted ~0.15 s later (measured on 2 CPUs: 6-7 such gaps per
    worker over 14 blocks, ~1 s of 29 s). One queued task closes them; a single one keeps the
    blocks' order (with ``2 * workers`` queued, Ray ran a 9-field block after the single fields
    and the last worker ran ~3 s alone). Only when ``workers`` fills the CPUs (``cpus``, the
    cluster's): then the queued task waits for a free CPU; with fewer workers than CPUs it would
    run as one more worker, so the number stays ``workers``.

    Parameters
    ----------
    workers
        Tasks meant to run at once.
    cpus
        CPUs of the cluster (each task takes one).
    blocks
        Blocks (tasks) in the dataset.
    """
    running = max(1, min(workers, blocks))
    return min(running + 1, blocks) if running >= cpus else running


def without_budget_backpressure(ds: ray.data.Dataset) -> None:
    """Run this dataset without Ray Data's resource-budget backpressure policy (scoped to it).

    For CPU-bound map work with small outputs. On a small node that policy admitted one map
    task until the first had finished (its output size was unknown) and then held each next
    task ~0.2 s after a worker freed (measured on 2 CPUs: six 1-s tasks took 4.35 s with it,
    3.1-3.4 s without). The bounds that matter stay: ``TaskPoolStrategy(size=...)`` and actor
    pools cap concurrency (the concurrency-cap policy), and an operator's output queue follows
    its consumer (the downstream-capacity policy). It names a Ray-internal config key
    (``tests/test_ray_private.py`` pins it); where this Ray lacks it, the defaults stay.
    """
    try:
        from ray.data._internal.execution import backpressure_policy as bp
    except ImportError:  # pragma: no cover - another Ray layout: keep its defaults
        return
    kept = [
        policy
        for policy in getattr(bp, "ENABLED_BACKPRESSURE_POLICIES", [])
        if policy.__name__ != "ResourceBudgetBackpressurePolicy"
    ]
    key = getattr(bp, "ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY", None)
    if key and kept:
        ds.context.set_config(key, kept)
