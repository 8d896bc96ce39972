"""Export shard sets: plates to one wide pycytominer-style table, cells to ``.h5ad``.

Both stream file by file (memory: one shard file), write to a temporary sibling and rename it
into place when complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from raymmi.io._shardset import ShardSet
from raymmi.schema import (
    CELL_ID,
    RaymmiError,
    depth_column,
    indices_column,
    list_to_dense,
    lists_to_sparse,
    values_column,
)

EXPORT_SUFFIXES = {"plates": (".parquet", ".csv", ".csv.gz"), "cells": (".h5ad", ".h5mu")}
# preprocessed matrices under the keys scanpy and muon use for them
OBSM_NAMES = {"rna_pca": "X_pca", "atac_lsi": "X_lsi"}
PREPROCESSED = frozenset({"rna_hvg", "rna_norm", "rna_pca", "atac_lsi", "adt_clr"})
COUNT_MODALITIES = frozenset({"rna", "atac", "adt"})


def export_format(shard_set: ShardSet, out: str) -> str:
    """The output format implied by ``out``'s suffix; errors name the allowed ones."""
    allowed = EXPORT_SUFFIXES[shard_set.kind]
    for suffix in allowed:
        if out.lower().endswith(suffix):
            return suffix
    msg = f"cannot export a {shard_set.kind!r} shard set to {out!r}; use one of {list(allowed)}"
    raise RaymmiError(msg)


def _atomic(out: str, overwrite: bool, write: Callable[[str], None]) -> None:
    target = Path(out)
    if target.exists() and not overwrite:
        msg = f"output {out!r} already exists; choose another --out or pass --overwrite"
        raise RaymmiError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        write(str(tmp))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_plates(shard_set: ShardSet, out: str, *, overwrite: bool = False) -> int:
    """Write a ``plates`` set as one wide table (Parquet or CSV); return the row count.

    Columns: metadata then features, in manifest order; one row per stored row; float32
    values are written unchanged (CSV uses the shortest text that round-trips float32).
    """
    suffix = export_format(shard_set, out)
    columns = [*shard_set.manifest.metadata, *shard_set.manifest.features]
    rows = 0

    def write(path: str) -> None:
        nonlocal rows
        writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        sink = pa.CompressedOutputStream(path, "gzip") if suffix == ".csv.gz" else path
        try:
            for _, table in shard_set.iter_tables(columns=columns):
                if writer is None:
                    writer = (
                        pq.ParquetWriter(sink, table.schema, compression="zstd")
                        if suffix == ".parquet"
                        else pacsv.CSVWriter(sink, table.schema)
                    )
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
            if isinstance(sink, pa.NativeFile):
                sink.close()

    _atomic(out, overwrite, write)
    return rows


def export_cells(shard_set: ShardSet, out: str, *, overwrite: bool = False) -> int:
    """Write a ``cells`` set as ``.h5ad`` (or ``.h5mu``: :func:`export_mudata`); return its cells.

    ``X`` holds the first modality's stored values (raw counts after ingest); every other
    modality goes to ``.obsm[<name>]`` (sparse CSR or dense),
    its feature names to ``.uns["<name>_features"]``; ``<mod>_depth`` columns of measured
    modalities go to ``obs``. An embeddings set (from ``raymmi train``) has no ``X``: its
    ``X_<model>`` embedding and any ``<mod>_imputed`` matrices go to ``.obsm``. A preprocessed
    set (``raymmi preprocess cells``) is laid out as scanpy leaves it: raw counts in ``X`` and
    ``.layers["counts"]``, ``.var["highly_variable"]``, PCA in ``.obsm["X_pca"]``, LSI in
    ``.obsm["X_lsi"]``, scaled HVGs / CLR as ``.obsm["rna_hvg"]`` / ``.obsm["adt_clr"]``.
    Sparse matrices are appended chunk by chunk, so memory is one shard plus ``obs``.
    """
    if export_format(shard_set, out) == ".h5mu":
        return export_mudata(shard_set, out, overwrite=overwrite)
    manifest = shard_set.manifest
    if not manifest.modalities:
        msg = f"{shard_set.uri!r} has no modalities to export"
        raise RaymmiError(msg)
    # an embeddings set (``X_<model>`` + imputations) has no counts for .X: every modality goes
    # to .obsm under its own name, where scanpy looks (``use_rep="X_umint"``)
    counts = [m for m in manifest.modalities if not _derived(m.name)]
    first = counts[0] if counts else None
    others = [m for m in manifest.modalities if m is not first]
    depth = [depth_column(m.name) for m in counts]
    meta = [
        c
        for c in manifest.metadata
        if c != CELL_ID and c not in depth and not any(c == depth_column(m.name) for m in others)
    ]
    obs_frames = [
        t.to_pandas().set_index(CELL_ID)
        for _, t in shard_set.iter_tables(columns=[CELL_ID, *meta, *depth])
    ]
    obs = pd.concat(obs_frames) if obs_frames else pd.DataFrame()
    obs.index = obs.index.astype(str)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype("category")
    n = len(obs)

    var = pd.DataFrame(index=pd.Index([] if first is None else list(first.features)))
    names = {m.name for m in others}
    hvg = next((m for m in others if m.name == "rna_hvg"), None)
    if first is not None and first.name == "rna" and hvg is not None:
        var["highly_variable"] = var.index.isin(hvg.features)
    if first is not None:
        var = _with_var_statistics(var, manifest.extra.get("var", {}).get(first.name))

    def write(path: str) -> None:
        shell = ad.AnnData(
            obs=obs,
            var=var,
            uns={
                f"{OBSM_NAMES.get(m.name, m.name)}_features": np.asarray(m.features, dtype=object)
                for m in others
            },
        )
        shell.write_h5ad(path)
        targets = [] if first is None else [("X", first)]
        targets += [(f"obsm/{OBSM_NAMES.get(m.name, m.name)}", m) for m in others]
        with h5py.File(path, "r+") as f:
            for target, modality in targets:
                _write_modality(f, target, shard_set, modality, n)
            if first is not None and first.name in COUNT_MODALITIES and names & PREPROCESSED:
                # scvi-tools / scanpy look for raw counts in layers["counts"]: a hard link to
                # X's group (the same bytes, stored once)
                f.require_group("layers")
                f["layers/counts"] = f["X"]

    _atomic(out, overwrite, write)
    return n


def _derived(name: str) -> bool:
    """Whether a modality is computed from the measurements, not measured.

    An embedding ``X_<model>``, ``<mod>_imputed``, PCA, LSI, CLR, scaled HVGs: no ``.X`` of its
    own, and its row sums mean nothing.
    """
    return name.startswith("X_") or name.endswith("_imputed") or name in PREPROCESSED


def _write_modality(f: h5py.File, target: str, shard_set: ShardSet, modality, n: int) -> None:
    width = len(modality.features)
    if target in f:
        del f[target]
    if modality.encoding == "dense":
        ds = f.create_dataset(target, shape=(n, width), dtype=np.float32)
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "0.2.0"
        row = 0
        for _, table in shard_set.iter_tables(columns=[modality.name]):
            block = list_to_dense(table.column(modality.name))
            ds[row : row + len(block)] = block
            row += len(block)
        return
    columns = [indices_column(modality.name), values_column(modality.name)]
    dataset = None
    for _, table in shard_set.iter_tables(columns=columns):
        block = lists_to_sparse(
            table.column(columns[0]), table.column(columns[1]), n_features=width
        )
        if dataset is None:
            ad.io.write_elem(f, target, block)
            dataset = ad.io.sparse_dataset(f[target])
        else:
            dataset.append(block)
    if dataset is None:
        ad.io.write_elem(f, target, sp.csr_matrix((0, width), dtype=np.float32))


def _with_var_statistics(var: pd.DataFrame, stats: Mapping[str, Any] | None) -> pd.DataFrame:
    """``var`` with the per-gene statistics ``preprocess cells`` recorded (HVG means, dispersions).

    Genes the statistics do not cover (removed by the gene filter) get NaN, and ``False`` in
    boolean columns; ``highly_variable`` itself stays as the HVG modality defines it.
    """
    if not stats:
        return var
    genes = pd.Index(stats["gene"])
    for name, values in stats.items():
        if name in ("gene", "highly_variable"):
            continue
        column = pd.Series(values, index=genes)
        if all(isinstance(v, bool) for v in values):
            var[name] = column.reindex(var.index, fill_value=False).astype(bool).to_numpy()
        else:
            var[name] = column.astype(float).reindex(var.index).to_numpy()
    return var


# where a preprocessed matrix goes in a MuData: its modality, and the slot there
MUDATA_SLOTS = {
    "rna_pca": ("rna", "obsm", "X_pca"),
    "rna_hvg": ("rna", "obsm", "rna_hvg"),
    "rna_norm": ("rna", "obsm", "rna_norm"),
    "atac_lsi": ("atac", "obsm", "X_lsi"),
    "adt_clr": ("adt", "layers", "clr"),
}


def export_mudata(shard_set: ShardSet, out: str, *, overwrite: bool = False) -> int:
    """Write a paired ``cells`` set as ``.h5mu`` (muon's layout); return the number of cells.

    One AnnData per measured modality under ``mod/<name>`` (raw counts in ``X`` and
    ``layers["counts"]``); PCA/LSI in that modality's ``obsm`` (``X_pca``, ``X_lsi``), CLR as
    ``mod/adt`` ``layers["clr"]``; cell metadata in the MuData's ``obs``. Unlike ``.h5ad``
    export, the whole set is held in memory while it is written.
    """
    import tempfile

    import mudata as md

    with tempfile.TemporaryDirectory() as tmp:
        flat = f"{tmp}/cells.h5ad"
        n = export_cells(shard_set, flat)
        whole = ad.read_h5ad(flat)
    counts = [m for m in shard_set.manifest.modalities if not _derived(m.name)]
    if len(counts) < 2:
        msg = (
            f"{shard_set.uri!r} holds {len(counts)} measured modality; .h5mu is for paired "
            "modalities: export it to .h5ad"
        )
        raise RaymmiError(msg)
    mods: dict[str, ad.AnnData] = {}
    for k, m in enumerate(counts):
        x = whole.X if k == 0 else whole.obsm[m.name]
        adata = ad.AnnData(
            X=x, obs=pd.DataFrame(index=whole.obs_names), var=pd.DataFrame(index=list(m.features))
        )
        adata.layers["counts"] = x
        if k == 0:
            for column in whole.var.columns:
                adata.var[column] = whole.var[column].to_numpy()
        mods[m.name] = adata
    for m in shard_set.manifest.modalities:
        if m.name in MUDATA_SLOTS and MUDATA_SLOTS[m.name][0] in mods:
            mod, slot, key = MUDATA_SLOTS[m.name]
            values = whole.obsm[OBSM_NAMES.get(m.name, m.name)]
            getattr(mods[mod], slot)[key] = values
        elif _derived(m.name):
            mods[m.name] = ad.AnnData(
                X=whole.obsm[m.name],
                obs=pd.DataFrame(index=whole.obs_names),
                var=pd.DataFrame(index=list(m.features)),
            )
    mdata = md.MuData(mods)
    mdata.obs = mdata.obs.join(whole.obs)

    def write(path: str) -> None:
        mdata.write_h5mu(path)

    _atomic(out, overwrite, write)
    return n
