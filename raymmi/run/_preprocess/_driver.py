"""``raymmi preprocess cells``: the passes of :mod:`raymmi.cells` as Ray tasks, one per file.

Each statistics pass submits one task per input file (reading only the columns it needs),
reduces the returned partials on the driver as they arrive, and fits; the last pass writes one
output part per input part. Ray tasks rather than Ray Data: an output part must map to exactly
one input part, while Ray Data packs small files into one block (raymmi/run/README.md, "Ray Data"), and the
partials need a streaming reduce with bounded in-flight results, not a dataset.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import scipy.sparse as sp

from raymmi import cells
from raymmi.cells import PreprocessCellsConfig
from raymmi.config import RayConfig, TrackingConfig, to_dict
from raymmi.io import PartWriter, ShardSet, ShardSetWriter, claiming, open_shard_set, resolve
from raymmi.run._plates._driver import producer
from raymmi.run._runtime import gather, init_ray, stream
from raymmi.schema import (
    FileEntry,
    Manifest,
    Modality,
    RaymmiError,
    dense_to_list,
    depth_column,
    indices_column,
    list_to_dense,
    lists_to_sparse,
    sparse_to_lists,
    values_column,
)
from raymmi.track import Run, tracked_run

# Cells transformed at once inside a task: bounds task memory whatever the file size (a
# 10,000-cell file of 20,000 genes peaked at 1.7 GB per worker when transformed whole).
ROWS_PER_SLICE = 2048
QC_COLUMNS = {
    "rna_n_genes_by_counts": pa.int32(),
    "rna_pct_counts_mt": pa.float32(),
    "atac_n_peaks_by_counts": pa.int32(),
}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What a task needs to decode a file: feature counts, encodings, the batch column."""

    n_features: Mapping[str, int]
    encodings: Mapping[str, str]
    batch_key: str | None

    def columns(self) -> list[str]:
        out = [] if self.batch_key is None else [self.batch_key]
        for name in self.n_features:
            if self.encodings[name] == "sparse":
                out += [indices_column(name), values_column(name)]
            else:
                out.append(name)
        return out


def _read(path: str, *, columns: Sequence[str] | None = None) -> pa.Table:
    fs, local = resolve(path)
    return pq.read_table(local, columns=columns, filesystem=fs)


def _block(table: pa.Table, layout: _Layout, where: str) -> cells.Block:
    """Decode one file into a :class:`raymmi.cells.Block`, checking its feature indices."""
    mats: dict[str, Any] = {}
    for name, n_features in layout.n_features.items():
        if layout.encodings[name] == "sparse":
            idx = table.column(indices_column(name))
            if len(idx) and pc.sum(pc.list_value_length(idx)).as_py():
                flat = pc.list_flatten(idx)
                low, high = pc.min_max(flat).values()
                if low.as_py() < 0 or high.as_py() >= n_features:
                    msg = (
                        f"{where}: {indices_column(name)} holds feature index {high.as_py()} "
                        f"(min {low.as_py()}) but the manifest lists {n_features} {name} "
                        "features: this file's feature list differs from the shard set's; "
                        "re-ingest all files against one feature list"
                    )
                    raise RaymmiError(msg)
            mats[name] = lists_to_sparse(
                idx, table.column(values_column(name)), n_features=n_features
            )
        else:
            column = table.column(name)
            width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
            if width != n_features:
                msg = (
                    f"{where}: column {name!r} holds vectors of width {width} but the manifest "
                    f"lists {n_features} {name} features; re-ingest against one feature list"
                )
                raise RaymmiError(msg)
            mats[name] = list_to_dense(column)
    batch = None
    if layout.batch_key is not None:
        column = table.column(layout.batch_key).cast(pa.string())
        batch = np.asarray(pc.fill_null(column, "nan").to_pylist(), dtype=object).astype(str)
    return cells.Block(
        rna=mats.get("rna"), atac=mats.get("atac"), adt=mats.get("adt"), batch=batch, where=where
    )


@ray.remote(num_cpus=1)
def _statistics_task(
    path: str,
    layout: _Layout,
    config: PreprocessCellsConfig,
    state: cells.State,
    wants: tuple[str, ...],
) -> dict[str, Any]:
    table = _read(path, columns=layout.columns())
    where = posixpath.basename(path)
    merged: dict[str, Any] = {}
    for piece in _slices(table):
        block = _block(piece, layout, where)
        part = cells.block_statistics(block, config=config, state=state, wants=wants)
        merged = cells.merge_partials([merged, part])
    return merged


def _slices(table: pa.Table) -> list[pa.Table]:
    """Row slices of at most ``ROWS_PER_SLICE`` (one, empty, for an empty table)."""
    starts = range(0, max(table.num_rows, 1), ROWS_PER_SLICE)
    return [table.slice(start, ROWS_PER_SLICE) for start in starts]


def _modality_arrays(name: str, matrix: sp.csr_matrix | np.ndarray) -> dict[str, pa.Array]:
    if sp.issparse(matrix):
        indices, values = sparse_to_lists(matrix)
        depth = np.asarray(matrix.sum(axis=1)).ravel()
        return {
            indices_column(name): indices,
            values_column(name): values,
            depth_column(name): pa.array(depth.astype(np.float32)),
        }
    dense = np.asarray(matrix, dtype=np.float32)
    return {
        name: dense_to_list(dense),
        depth_column(name): pa.array(dense.sum(axis=1, dtype=np.float64).astype(np.float32)),
    }


@ray.remote(num_cpus=1)
def _write_task(
    path: str,
    layout: _Layout,
    config: PreprocessCellsConfig,
    state: cells.State,
    metadata: tuple[str, ...],
    staging: str,
    index: int,
) -> FileEntry:
    table = _read(path)
    where = posixpath.basename(path)
    part: PartWriter | None = None
    for piece in _slices(table):
        out_table = _transform_slice(piece, layout, config, state, metadata, where)
        if part is None:
            part = PartWriter(staging, f"part-{index:05d}.parquet", out_table.schema)
        part.write(out_table)
    assert part is not None
    return part.close()


def _transform_slice(
    table: pa.Table,
    layout: _Layout,
    config: PreprocessCellsConfig,
    state: cells.State,
    metadata: tuple[str, ...],
    where: str,
) -> pa.Table:
    block = _block(table, layout, where)
    out = cells.transform_block(block, config=config, state=state)
    kept = table.filter(pa.array(out.keep))
    arrays: dict[str, pa.Array] = {c: kept.column(c) for c in metadata}
    for column, dtype in QC_COLUMNS.items():
        if column in out.obs:
            arrays[column] = pa.array(out.obs[column], type=dtype)
    for name in layout.n_features:
        if name != "atac":
            for column in (*_value_columns(name, layout.encodings[name]), depth_column(name)):
                arrays[column] = kept.column(column)
        for derived in _derived(name):
            if derived in out.values:
                arrays.update(_modality_arrays(derived, out.values[derived]))
    return pa.table(arrays)


def _value_columns(name: str, encoding: str) -> tuple[str, ...]:
    if encoding == "sparse":
        return (indices_column(name), values_column(name))
    return (name,)


def _derived(name: str) -> tuple[str, ...]:
    return {
        "rna": ("rna_hvg", "rna_norm", "rna_pca"),
        "atac": ("atac", "atac_lsi"),
        "adt": ("adt_clr",),
    }.get(name, ())


def _reduce_pass(
    task: Any,
    paths: Sequence[str],
    args: tuple[Any, ...],
    *,
    desc: str,
    max_in_flight: int,
) -> dict[str, Any]:
    """Run ``task`` per file and merge the partials as they arrive.

    Unlike :func:`gather`, which keeps every result until the end, at most ``max_in_flight``
    partials exist at once (a PCA Gram partial of 2,000 HVGs is 32 MB; 200 files would hold
    6.4 GB). Failure handling is :func:`stream`'s: cancel the rest, raise the cause.
    """
    merged: dict[str, Any] = {}
    parts = stream(
        lambda path: task.remote(path, *args),
        paths,
        max_in_flight=max_in_flight,
        desc=desc,
        unit="file",
    )
    for _, part in parts:
        merged = cells.merge_partials([merged, part])
        del part
    return merged


def _counts_source(shard: ShardSet) -> dict[str, str]:
    extra = shard.manifest.extra
    counts_from = extra.get("counts_from", {}) or {}
    sources = extra.get("sources", {}) or {}
    out = {}
    for m in shard.manifest.modalities:
        text = f"{m.name} columns of {shard.uri}"
        if m.name in counts_from:
            text += f", ingested from {counts_from[m.name]} of {sources.get(m.name, '?')}"
        else:
            command = shard.manifest.producer.get("command", "an unknown command")
            text += f", written by {command!r}"
        out[m.name] = text
    return out


def _layout(shard: ShardSet, config: PreprocessCellsConfig) -> _Layout:
    derived = [m.name for m in shard.manifest.modalities if m.name not in ("rna", "atac", "adt")]
    if derived:
        msg = (
            f"{shard.uri!r} already holds processed modalities {derived}; preprocess the "
            "ingested (raw count) shard set instead"
        )
        raise RaymmiError(msg)
    present = {m.name: m for m in shard.manifest.modalities}
    if not present:
        have = [m.name for m in shard.manifest.modalities]
        msg = f"{shard.uri!r} has none of the modalities rna, atac, adt (it has {have})"
        raise RaymmiError(msg)
    for name in ("rna", "atac"):
        if name in present and present[name].encoding != "sparse":
            msg = f"{shard.uri!r}: modality {name!r} is stored dense; expected sparse counts"
            raise RaymmiError(msg)
    rna = config.rna
    batch_key = None
    if "rna" in present and "highly_variable_genes" in rna.steps:
        batch_key = rna.highly_variable_genes.batch_key
        if batch_key is not None and batch_key not in shard.manifest.metadata:
            msg = (
                f"rna.highly_variable_genes.batch_key={batch_key!r} is not a column of "
                f"{shard.uri!r}; its obs columns are {list(shard.manifest.metadata)}"
            )
            raise RaymmiError(msg)
    return _Layout(
        n_features={n: len(m.features) for n, m in present.items()},
        encodings={n: m.encoding for n, m in present.items()},
        batch_key=batch_key,
    )


def _output_modalities(
    shard: ShardSet, config: PreprocessCellsConfig, state: cells.State
) -> list[Modality]:
    out: list[Modality] = []
    for m in shard.manifest.modalities:
        if m.name == "rna":
            out.append(m)
            name = cells.rna_output_name(config)
            if name is not None:
                dense = "scale" in config.rna.steps and config.rna.scale.zero_center
                genes = tuple(state.genes[i] for i in state.rna_columns)
                out.append(Modality(name, "dense" if dense else "sparse", genes))
            if state.pca is not None:
                pcs = tuple(f"PC{i + 1}" for i in range(len(state.pca.variance)))
                out.append(Modality("rna_pca", "dense", pcs))
        elif m.name == "atac":
            assert state.peak_keep is not None
            peaks = tuple(p for p, k in zip(state.peaks, state.peak_keep, strict=True) if k)
            out.append(Modality("atac", "sparse", peaks))
            if state.lsi is not None:
                out.append(Modality("atac_lsi", "dense", tuple(cells.lsi_names(config))))
        elif m.name == "adt":
            out.append(m)
            if "clr" in config.adt.steps:
                out.append(Modality("adt_clr", "dense", m.features))
    return out


@claiming(
    lambda config, **kw: {
        "uri": kw["out"],
        "inputs": [kw["source"]],
        "overwrite": kw.get("overwrite", False),
    }
)
def preprocess_cells(
    config: PreprocessCellsConfig,
    *,
    source: str,
    out: str,
    overwrite: bool = False,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Preprocess a ``cells`` shard set out of core: QC, RNA, ATAC and ADT steps.

    Parameters
    ----------
    config
        Steps per modality and their parameters (:class:`raymmi.cells.PreprocessCellsConfig`).
    source
        Input ``cells`` shard set (raw counts, as written by ``raymmi ingest cells``).
    out
        Output shard-set directory.
    overwrite
        Replace an existing ``out``.
    ray_config, tracking
        Where Ray runs; MLflow settings.

    Returns
    -------
    Manifest
        The committed output: the kept cells with the input's ``obs``, QC columns
        (``rna_n_genes_by_counts``, ``rna_pct_counts_mt``, ``atac_n_peaks_by_counts``), raw
        ``rna`` and ``adt`` counts, and ``rna_hvg``/``rna_norm``, ``rna_pca``, ``atac``
        (binarized kept peaks), ``atac_lsi``, ``adt_clr`` as configured; one part per input
        part; ``parents`` records the input.

    Raises
    ------
    RaymmiError
        Input not a ``cells`` set, counts that are not counts, feature indices beyond the
        manifest's list, all cells/genes/peaks filtered out, too many components; nothing is
        written.
    """
    started = time.perf_counter()
    shard = open_shard_set(source, kind="cells")
    if resolve(source)[1] == resolve(out)[1]:
        msg = f"--out {out!r} is the input shard set; write to another directory"
        raise RaymmiError(msg)
    layout = _layout(shard, config)
    features = {m.name: m.features for m in shard.manifest.modalities}
    state = cells.initial_state(
        config,
        genes=features.get("rna", ()) if "rna" in layout.n_features else (),
        peaks=features.get("atac", ()),
        proteins=features.get("adt", ()),
        counts_source=_counts_source(shard),
    )
    resources = init_ray(ray_config)
    in_flight = config.max_tasks_in_flight or max(2, 2 * int(resources.get("CPU", 1)))
    paths = shard.file_uris()
    cfg = {"source": source, "out": out, **to_dict(config)}
    timings: dict[str, float] = {}
    with (
        ShardSetWriter(out, overwrite=overwrite) as writer,
        tracked_run("preprocess cells", config=cfg, tracking=tracking) as run,
    ):
        while wants := cells.plan_pass(config, state):
            tick = time.perf_counter()
            state_ref = ray.put(state)
            merged = _reduce_pass(
                _statistics_task,
                paths,
                (layout, config, state_ref, wants),
                desc=f"preprocess pass {state.passes + 1} ({', '.join(wants)})",
                max_in_flight=in_flight,
            )
            state = cells.fit_pass(config, state, merged)
            timings[f"pass{state.passes}_seconds"] = time.perf_counter() - tick
        tick = time.perf_counter()
        metadata = tuple(shard.manifest.metadata)
        state_ref = ray.put(state)
        refs = [
            _write_task.remote(path, layout, config, state_ref, metadata, writer.staging, i)
            for i, path in enumerate(paths)
        ]
        entries = gather(refs, desc="preprocess write", unit="file")
        timings["write_seconds"] = time.perf_counter() - tick
        qc = tuple(c for c in QC_COLUMNS if c.split("_")[0] in layout.n_features)
        summary = _summary(config, state, timings)
        manifest = writer.commit(
            Manifest(
                kind="cells",
                files=tuple(entries),
                metadata=(*metadata, *qc),
                modalities=tuple(_output_modalities(shard, config, state)),
                producer=producer("preprocess cells", cfg, run),
                parents=(shard.parent_ref(),),
                extra={"preprocess": summary, **cells.var_statistics(state)},
            )
        )
        _log(run, out, shard, manifest, state, summary, started)
    return manifest


def _summary(
    config: PreprocessCellsConfig, state: cells.State, timings: Mapping[str, float]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "passes": state.passes + 1,
        "cells_in": state.n_cells_in,
        "cells_kept": state.n_cells,
        "cells_removed_by": dict(state.cells_removed),
        **{k: round(v, 3) for k, v in timings.items()},
    }
    if state.genes:
        summary.update(
            genes_kept=len(state.kept_genes),
            genes_removed_by=dict(state.genes_removed),
            target_sum=state.target_sum,
            n_hvg=None if state.hvg is None else len(state.hvg),
        )
    if state.pca is not None:
        summary["pca_variance_ratio"] = [float(v) for v in state.pca.variance_ratio]
    if state.peak_keep is not None:
        summary["peaks_kept"] = int(state.peak_keep.sum())
    if state.lsi is not None:
        summary["lsi_singular_values"] = [float(v) for v in state.lsi.singular_values]
        summary["lsi_max_rel_residual"] = float(state.lsi.rel_residual.max())
    return summary


def _log(
    run: Run,
    out: str,
    shard: ShardSet,
    manifest: Manifest,
    state: cells.State,
    summary: Mapping[str, Any],
    started: float,
) -> None:
    if not run.enabled:
        return
    seconds = time.perf_counter() - started
    run.log_shard_set(shard.uri, shard.manifest.to_dict(), context="input")
    run.log_shard_set(out, manifest.to_dict(), context="output")
    metrics: dict[str, float] = {
        "cells_in": float(state.n_cells_in or 0),
        "cells_kept": float(state.n_cells or 0),
        "passes": float(summary["passes"]),
        "seconds": seconds,
        "cells_per_second": (state.n_cells_in or 0) / max(seconds, 1e-9),
    }
    for key, value in summary.items():
        if key.endswith("_seconds"):
            metrics[key] = float(value)
    if state.genes:
        metrics["genes_kept"] = float(len(state.kept_genes))
    if state.hvg is not None:
        metrics["hvgs"] = float(len(state.hvg))
    if state.target_sum is not None:
        metrics["target_sum"] = float(state.target_sum)
    if state.pca is not None:
        ratio = state.pca.variance_ratio
        metrics["pca_variance_explained"] = float(ratio.sum())
        metrics.update({f"pca_variance_ratio_pc{i + 1}": float(v) for i, v in enumerate(ratio)})
    if state.peak_keep is not None:
        metrics["peaks_kept"] = float(state.peak_keep.sum())
    if state.lsi is not None:
        metrics["lsi_max_rel_residual"] = float(state.lsi.rel_residual.max())
    run.log_metrics(metrics)
    run.log_dict(dict(summary), "preprocess/summary.json")
    if state.hvg_table is not None:
        run.log_table(state.hvg_table.rename_axis("gene").reset_index(), "preprocess/hvg.csv")
    if state.pca is not None:
        figure = _variance_figure(state.pca.variance_ratio)
        run.log_figure(figure, "preprocess/pca_variance_ratio.png")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preprocess_fit.npz"
        np.savez_compressed(path, **_fit_arrays(state))  # type: ignore[arg-type]
        run.log_artifact(path, "preprocess")


def _fit_arrays(state: cells.State) -> dict[str, np.ndarray]:
    """What projecting new cells needs: scale parameters, PCA axes, IDF, LSI axes."""
    arrays: dict[str, np.ndarray] = {}
    if state.hvg is not None:
        arrays["hvg_index"] = state.hvg
    if state.scale_mean is not None and state.scale_std is not None:
        arrays.update(scale_mean=state.scale_mean, scale_std=state.scale_std)
    if state.target_sum is not None:
        arrays["target_sum"] = np.asarray(state.target_sum)
    if state.pca is not None:
        arrays.update(pca_components=state.pca.components, pca_mean=state.pca.mean)
    if state.peak_keep is not None:
        arrays["peak_keep"] = state.peak_keep
    if state.idf is not None:
        arrays["idf"] = state.idf
    if state.lsi is not None:
        arrays.update(
            lsi_components=state.lsi.components,
            lsi_singular_values=state.lsi.singular_values,
            lsi_rel_residual=state.lsi.rel_residual,
        )
    return arrays


def _variance_figure(ratio: np.ndarray) -> Any:
    from raymmi.plots import variance_ratio_plot

    return variance_ratio_plot(
        ratio, title=f"PCA of the scaled HVGs ({ratio.sum():.1%} explained)"
    )
