"""Driver fits: the fitted state that the merged statistics of one pass determine."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from raymmi.cells import _atac, _rna
from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._partials import ColumnStats
from raymmi.cells._pipeline_plan import _hvg_flavor
from raymmi.cells._pipeline_state import State
from raymmi.schema import RaymmiError

MAX_PCA_FEATURES = 8192


# ---------------------------------------------------------------------------------------------
# Driver fits
# ---------------------------------------------------------------------------------------------


def _describe(removed: Mapping[str, int]) -> str:
    return ", ".join(f"{k} removed {v}" for k, v in removed.items()) or "no filter active"


def fit_pass(config: PreprocessCellsConfig, state: State, stats: Mapping[str, Any]) -> State:
    """Fit what the merged statistics of one pass determine; returns the new state.

    Raises
    ------
    RaymmiError
        All cells, genes or peaks filtered out (naming the filters and how many each
        removed), or more components requested than features.
    """
    changes: dict[str, Any] = {"passes": state.passes + 1}
    rna, atac = config.rna, config.atac
    if "qc" in stats:
        counts = dict(stats["qc"].counts)
        n_in, n_kept = counts.pop("cells_in"), counts.pop("cells_kept")
        if n_kept == 0:
            msg = (
                f"all {n_in} cells were filtered out ({_describe(counts)}); relax those "
                "thresholds (--set rna.filter_cells.min_genes=...)"
            )
            raise RaymmiError(msg)
        changes.update(n_cells_in=n_in, n_cells=n_kept, cells_removed=counts)
        if "batches" in stats:
            changes["batches"] = tuple(sorted(stats["batches"].counts))
        state = dataclasses.replace(state, **changes)
        changes = {}
    if "rna.raw" in stats:
        raw: ColumnStats = stats["rna.raw"]
        keep = np.ones(raw.n_features, dtype=bool)
        removed: dict[str, int] = {}
        if "filter_genes" in rna.steps:
            f = rna.filter_genes
            keep, removed = _rna.gene_filter(
                raw,
                min_cells=f.min_cells,
                min_counts=f.min_counts,
                max_cells=f.max_cells,
                max_counts=f.max_counts,
            )
        if not keep.any():
            msg = (
                f"all {raw.n_features} genes were filtered out by rna.filter_genes "
                f"({_describe({f'rna.filter_genes.{k}': v for k, v in removed.items()})}); "
                "relax those thresholds"
            )
            raise RaymmiError(msg)
        changes.update(gene_keep=keep, genes_removed=removed)
        if _hvg_flavor(config) == "seurat_v3":
            kept = raw.subset(np.flatnonzero(keep))
            reg_std, clip = _rna.seurat_v3_clip(kept, span=rna.highly_variable_genes.span)
            changes.update(v3_raw=kept, v3_reg_std=reg_std, v3_clip=clip)
    if "rna.heg" in stats:
        changes["heg"] = stats["rna.heg"].hits
    if "rna.depth" in stats:
        changes["target_sum"] = float(np.float32(stats["rna.depth"].median()))
    state = dataclasses.replace(state, **changes)
    changes = {}
    hvg_cfg = rna.highly_variable_genes
    if "rna.v3clip" in stats:
        assert state.v3_raw is not None and state.v3_reg_std is not None
        table = _rna.highly_variable_genes_seurat_v3(
            state.v3_raw,
            stats["rna.v3clip"],
            state.v3_reg_std,
            genes=[state.genes[i] for i in state.kept_genes],
            n_top_genes=hvg_cfg.top_genes or 2000,
        )
        state = _with_hvg(state, table)
    if "rna.hvg" in stats:
        table = _rna.highly_variable_genes_seurat(
            stats["rna.hvg"],
            genes=[state.genes[i] for i in state.kept_genes],
            n_top_genes=hvg_cfg.top_genes,
            min_mean=hvg_cfg.min_mean,
            max_mean=hvg_cfg.max_mean,
            min_disp=hvg_cfg.min_disp,
            max_disp=hvg_cfg.max_disp,
            n_bins=hvg_cfg.n_bins,
            batched=hvg_cfg.batch_key is not None,
        )
        state = _with_hvg(state, table)
    if "rna.scale" in stats:
        mean, std = _rna.scale_params(stats["rna.scale"])
        columns = state.rna_columns if state.hvg is not None else state.kept_genes
        if state.hvg is not None and len(mean) != len(columns):
            position = np.searchsorted(state.kept_genes, state.hvg)
            mean, std = mean[position], std[position]
        changes.update(scale_mean=mean, scale_std=std, scale_columns=state.rna_columns)
    if "rna.gram" in stats:
        g = stats["rna.gram"]
        n_comps = rna.pca.n_comps or _rna.default_n_comps(g.n, len(g.total))
        changes["pca"] = _rna.pca_fit(g, n_comps=n_comps)
    if "atac.raw" in stats:
        stats_peaks: ColumnStats = stats["atac.raw"]
        keep_peaks = np.ones(stats_peaks.n_features, dtype=bool)
        if "filter_peaks" in atac.steps:
            f3 = atac.filter_peaks
            keep_peaks = _atac.peak_filter(
                stats_peaks, min_cells=f3.min_cells, min_fraction=f3.min_fraction, top_k=f3.top_k
            )
        if not keep_peaks.any():
            msg = (
                f"all {stats_peaks.n_features} peaks were filtered out by atac.filter_peaks "
                f"({atac.filter_peaks}); relax min_cells / min_fraction"
            )
            raise RaymmiError(msg)
        changes["peak_keep"] = keep_peaks
        if "tfidf" in atac.steps:
            kept_stats = stats_peaks.subset(np.flatnonzero(keep_peaks))
            changes["idf"] = _atac.idf(kept_stats, log_idf=atac.tfidf.log_idf)
        if "lsi" in atac.steps:
            n_peaks = int(keep_peaks.sum())
            if atac.lsi.n_comps > n_peaks:
                msg = (
                    f"atac.lsi.n_comps={atac.lsi.n_comps} exceeds the {n_peaks} peaks kept; "
                    "lower n_comps or relax atac.filter_peaks"
                )
                raise RaymmiError(msg)
            changes["lsi_q"] = _atac.lsi_start(
                n_peaks,
                n_comps=atac.lsi.n_comps,
                oversample=atac.lsi.oversample,
                seed=config.seed,
            )
    if "atac.lsi" in stats:
        z = stats["atac.lsi"].value
        assert state.lsi_q is not None
        bases, products = (*state.lsi_bases, state.lsi_q), (*state.lsi_products, z)
        changes.update(lsi_bases=bases, lsi_products=products)
        if len(bases) < atac.lsi.n_iter:
            changes["lsi_q"] = _atac.orthonormalize(z)
        else:
            sums = stats["atac.lsi_sums"].value
            assert state.n_cells is not None
            changes.update(lsi_q=None, lsi_bases=(), lsi_products=())
            changes["lsi"] = _atac.lsi_fit(
                bases,
                products,
                n_comps=atac.lsi.n_comps,
                n_cells=state.n_cells,
                column_sums=sums[:-1],
                total_sq=float(sums[-1]),
            )
    state = dataclasses.replace(state, **changes)
    _check_pca(config, state)
    return state


def var_statistics(state: State) -> dict[str, Any]:
    """The fitted per-gene statistics for a shard set's manifest: ``{"var": {"rna": {...}}}``.

    The highly-variable-gene table (``means``, ``dispersions``, ``dispersions_norm`` or
    ``variances``/``variances_norm``/``highly_variable_rank``, ``highly_variable`` ...) as
    columns of JSON values (NaN as null) with the genes it covers under ``"gene"``, so an export
    lays them out in ``.var`` where ``sc.pp.highly_variable_genes`` puts them. Empty without HVGs.
    """
    table = state.hvg_table
    if table is None:
        return {}
    columns: dict[str, list[Any]] = {"gene": [str(g) for g in table.index]}
    for name in table.columns:
        values = table[name].to_numpy()
        if values.dtype == bool:
            columns[str(name)] = [bool(v) for v in values]
        else:
            floats = values.astype(np.float64)
            columns[str(name)] = [None if not np.isfinite(v) else float(v) for v in floats]
    return {"var": {"rna": columns}}


def _with_hvg(state: State, table: pd.DataFrame) -> State:
    selected = table["highly_variable"].to_numpy(dtype=bool)
    if not selected.any():
        msg = (
            "highly_variable_genes selected no gene (the cutoffs min_mean/max_mean/min_disp "
            "exclude every gene); set rna.highly_variable_genes.n_top_genes or relax the cutoffs"
        )
        raise RaymmiError(msg)
    return dataclasses.replace(state, hvg=state.kept_genes[selected], hvg_table=table)


def _check_pca(config: PreprocessCellsConfig, state: State) -> None:
    """Fail before the covariance pass if PCA cannot have the requested components."""
    if "pca" not in config.rna.steps or state.pca is not None or state.gene_keep is None:
        return
    if _hvg_flavor(config) is not None and state.hvg is None:
        return
    n_features = len(state.rna_columns)
    n_comps = config.rna.pca.n_comps
    if n_comps is not None and n_comps > min(n_features, state.n_cells or 0):
        msg = (
            f"rna.pca.n_comps={n_comps} exceeds the {n_features} genes (or "
            f"{state.n_cells} cells) it would be computed from; lower n_comps"
            + (" or raise rna.highly_variable_genes.n_top_genes" if state.hvg is not None else "")
        )
        raise RaymmiError(msg)
    if n_features > MAX_PCA_FEATURES:
        msg = (
            f"rna.pca over {n_features} genes needs a {n_features}x{n_features} covariance; "
            f"add highly_variable_genes before pca (at most {MAX_PCA_FEATURES} features)"
        )
        raise RaymmiError(msg)
