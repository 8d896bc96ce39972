"""Shard sets as Ray Datasets: the entry point of every distributed stage."""

from __future__ import annotations

from collections.abc import Sequence

import ray.data

from raymmi.io import ShardSet, resolve


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
    ds = ray.data.read_parquet(shard_set.file_uris(), filesystem=fs)
    if columns is not None:
        ds = ds.select_columns(list(columns))
    return ds
