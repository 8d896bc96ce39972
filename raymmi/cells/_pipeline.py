"""The out-of-core preprocessing plan: statistics per pass, driver fits, final transform.

Pure: the Ray layer only maps these functions over files.

A run is a loop: :func:`plan_pass` names the statistics whose inputs are known, every block
computes them with :func:`block_statistics`, the partials are merged
(:func:`raymmi.cells.merge_partials`) and :func:`fit_pass` turns them into fitted state; when
nothing is left to fit, :func:`transform_block` writes each block. With the default steps:

1. QC of every cell (local), raw gene statistics (gene filter; ``seurat_v3`` moments), peak
   accessibility (peak filter, IDF); LSI start basis.
2. Library sizes (exact median target), ``seurat_v3`` clipped sums, first ``A^T A Q``.
3. Log-normalized gene moments (``seurat`` HVG and scale parameters), ``A^T A Q``.
4. ``X^T X`` of the scaled HVG matrix (PCA), ``A^T A Q``.
5. (ATAC only, ``n_iter=4``) last ``A^T A Q``, then block-Krylov Rayleigh-Ritz (LSI).
6. Transform and write.

A fixed ``target_sum`` removes pass 2 for ``seurat``; ``exclude_highly_expressed`` adds one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raymmi.cells import _adt, _atac, _rna
from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._partials import (
    AnyColumn,
    ColumnStats,
    Count,
    Total,
    column_stats,
    gram,
    merge_partials,
    value_counts,
)
from raymmi.schema import RaymmiError

MAX_PCA_FEATURES = 8192


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of cells as the pipeline reads it.

    Parameters
    ----------
    rna
        Raw RNA counts, CSR float32 of shape (n_cells, n_genes), or ``None``.
    atac
        Raw ATAC counts, CSR float32 of shape (n_cells, n_peaks), or ``None``.
    adt
        ADT counts, float32 array of shape (n_cells, n_proteins), or ``None``.
    batch
        Batch label of each cell (the HVG ``batch_key`` column) as str, shape (n_cells,),
        or ``None``.
    where
        Name of the block in error messages (e.g. the file).
    """

    rna: sp.csr_matrix | None = None
    atac: sp.csr_matrix | None = None
    adt: np.ndarray | None = None
    batch: np.ndarray | None = None
    where: str = "block"

    @property
    def n_cells(self) -> int:
        """Rows of the block."""
        for x in (self.rna, self.atac, self.adt):
            if x is not None:
                return int(x.shape[0])
        return 0 if self.batch is None else len(self.batch)


@dataclasses.dataclass(frozen=True)
class State:
    """Everything fitted so far; ``None`` means not fitted yet.

    Gene and peak masks and HVG indices refer to the input's feature order.
    """

    genes: tuple[str, ...] = ()
    peaks: tuple[str, ...] = ()
    proteins: tuple[str, ...] = ()
    counts_source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    passes: int = 0
    n_cells_in: int | None = None
    n_cells: int | None = None
    cells_removed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    batches: tuple[str, ...] | None = None
    mt: np.ndarray | None = None
    gene_keep: np.ndarray | None = None
    genes_removed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    heg: np.ndarray | None = None
    target_sum: float | None = None
    v3_raw: ColumnStats | None = None
    v3_reg_std: np.ndarray | None = None
    v3_clip: np.ndarray | None = None
    hvg: np.ndarray | None = None
    hvg_table: pd.DataFrame | None = None
    scale_mean: np.ndarray | None = None
    scale_std: np.ndarray | None = None
    scale_columns: np.ndarray | None = None
    pca: _rna.PcaFit | None = None
    peak_keep: np.ndarray | None = None
    idf: np.ndarray | None = None
    lsi_q: np.ndarray | None = None
    lsi_bases: tuple[np.ndarray, ...] = ()
    lsi_products: tuple[np.ndarray, ...] = ()
    lsi: _atac.LsiFit | None = None

    @property
    def kept_genes(self) -> np.ndarray:
        """Indices of the genes that pass the gene filter."""
        if self.gene_keep is None:
            msg = "internal error: the gene filter is not fitted yet"
            raise RuntimeError(msg)
        return np.flatnonzero(self.gene_keep)

    @property
    def rna_columns(self) -> np.ndarray:
        """Indices of the genes in the processed RNA matrix (HVGs, else the kept genes)."""
        return self.hvg if self.hvg is not None else self.kept_genes


def initial_state(
    config: PreprocessCellsConfig,
    *,
    genes: Sequence[str] = (),
    peaks: Sequence[str] = (),
    proteins: Sequence[str] = (),
    counts_source: Mapping[str, str] | None = None,
) -> State:
    """The state before the first pass: feature names and what needs no data.

    Parameters
    ----------
    config
        The preprocessing configuration.
    genes, peaks, proteins
        Feature names of the modalities present (empty: modality absent).
    counts_source
        Per modality, where its values were read from (e.g. ``layers/counts of x.h5ad``),
        quoted when they turn out not to be counts.
    """
    rna = config.rna
    mt = np.array([g.startswith(rna.filter_cells.mt_prefix) for g in genes], dtype=bool)
    state = State(
        genes=tuple(genes),
        peaks=tuple(peaks),
        proteins=tuple(proteins),
        counts_source=dict(counts_source or {}),
        mt=mt,
    )
    if genes:
        changes: dict[str, Any] = {}
        if "normalize_total" not in rna.steps or not rna.normalize_total.exclude_highly_expressed:
            changes["heg"] = np.zeros(len(genes), dtype=bool)
        if "normalize_total" in rna.steps and rna.normalize_total.target_sum is not None:
            changes["target_sum"] = float(rna.normalize_total.target_sum)
        state = dataclasses.replace(state, **changes)
    return state


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def _hvg_flavor(config: PreprocessCellsConfig) -> str | None:
    rna = config.rna
    return rna.highly_variable_genes.flavor if "highly_variable_genes" in rna.steps else None


def _normalized_ready(config: PreprocessCellsConfig, state: State) -> bool:
    if "normalize_total" not in config.rna.steps:
        return True
    return state.heg is not None and state.target_sum is not None


def plan_pass(config: PreprocessCellsConfig, state: State) -> tuple[str, ...]:
    """Names of the statistics the next pass computes; empty when only the write is left.

    Every statistic whose inputs are fitted and whose result is still needed runs in the same
    pass, so the number of passes is the depth of the dependency chain, not the step count.
    """
    if state.n_cells is None:
        wants = ["qc"]
        if state.genes:
            wants.append("rna.raw")
        if state.peaks:
            wants.append("atac.raw")
        return tuple(wants)
    wants = []
    rna = config.rna
    if state.genes:
        flavor = _hvg_flavor(config)
        if state.heg is None:
            wants.append("rna.heg")
        elif state.target_sum is None:
            wants.append("rna.depth")
        if flavor == "seurat_v3" and state.hvg is None:
            wants.append("rna.v3clip")
        ready = _normalized_ready(config, state)
        if ready and flavor == "seurat" and state.hvg is None:
            wants.append("rna.hvg")
        if ready and "scale" in rna.steps and state.scale_mean is None:
            wants.append("rna.scale")
        scaled = "scale" not in rna.steps or state.scale_mean is not None
        selected = flavor is None or state.hvg is not None
        if ready and scaled and selected and "pca" in rna.steps and state.pca is None:
            wants.append("rna.gram")
    if (
        state.peaks
        and "lsi" in config.atac.steps
        and state.lsi is None
        and state.lsi_q is not None
    ):
        wants.append("atac.lsi")
    return tuple(wants)


# ---------------------------------------------------------------------------------------------
# Per-block work
# ---------------------------------------------------------------------------------------------


def check_counts(x: sp.csr_matrix | np.ndarray, *, name: str, source: str, where: str) -> None:
    """Raise a :class:`RaymmiError` unless ``x`` holds non-negative integers.

    Parameters
    ----------
    x
        Values of shape (n_cells, n_features).
    name
        Modality name for the message.
    source
        Where the values were read from at ingest (e.g. ``layers/counts of rna.h5ad``).
    where
        The block (file) in which they were found.
    """
    values: np.ndarray = x.data if isinstance(x, sp.csr_matrix) else np.asarray(x).ravel()
    finite = np.isfinite(values)
    negative = int((values < 0).sum())
    fractional = int((finite & (values != np.round(values))).sum())
    nonfinite = int((~finite).sum())
    if negative or fractional or nonfinite:
        bad = values[(values < 0) | (finite & (values != np.round(values))) | ~finite]
        msg = (
            f"{name} values in {where} (read from {source}) are not raw counts: "
            f"{negative} negative, {fractional} non-integer, {nonfinite} NaN/inf "
            f"(e.g. {bad[:3].tolist()}); re-ingest from the raw count layer "
            f"(layers['counts']) or set check_counts: false if {name} is meant to be non-counts"
        )
        raise RaymmiError(msg)


def _active(section: object) -> bool:
    return any(
        getattr(section, f.name) is not None
        for f in dataclasses.fields(section)  # type: ignore[arg-type]
        if f.name.startswith(("min_", "max_"))
    )


def _cell_mask(
    block: Block, config: PreprocessCellsConfig, state: State, *, metrics: bool = False
) -> tuple[np.ndarray, dict[str, int], dict[str, pd.DataFrame]]:
    """Cells kept by every active cell filter; QC metrics only if a filter or caller needs them."""
    keep = np.ones(block.n_cells, dtype=bool)
    removed: dict[str, int] = {}
    qc: dict[str, pd.DataFrame] = {}
    rna_filter = "filter_cells" in config.rna.steps and _active(config.rna.filter_cells)
    atac_filter = "filter_cells" in config.atac.steps and _active(config.atac.filter_cells)
    if block.rna is not None and (metrics or rna_filter):
        qc["rna"] = _rna.qc_metrics(block.rna, mt=state.mt)
        if rna_filter:
            f = config.rna.filter_cells
            ok, failed = _rna.cell_filter(
                qc["rna"],
                min_counts=f.min_counts,
                min_genes=f.min_genes,
                max_counts=f.max_counts,
                max_genes=f.max_genes,
                max_pct_mt=f.max_pct_mt,
            )
            keep &= ok
            removed.update({f"rna.filter_cells.{k}": v for k, v in failed.items()})
    if block.atac is not None and (metrics or atac_filter):
        qc["atac"] = _atac.qc_metrics(block.atac)
        if atac_filter:
            f2 = config.atac.filter_cells
            ok, failed = _atac.cell_filter(
                qc["atac"],
                min_counts=f2.min_counts,
                min_peaks=f2.min_peaks,
                max_counts=f2.max_counts,
                max_peaks=f2.max_peaks,
            )
            keep &= ok
            removed.update({f"atac.filter_cells.{k}": v for k, v in failed.items()})
    return keep, removed, qc


def _batch_codes(block: Block, labels: Sequence[str], keep: np.ndarray) -> np.ndarray | None:
    if block.batch is None:
        return None
    batch = block.batch[keep]
    codes = np.searchsorted(np.asarray(labels), batch)
    return codes


_TRANSFORMS = ("normalize_total", "log1p", "scale")


def _rna_at(
    step: str | None,
    raw: sp.csr_matrix,
    *,
    config: PreprocessCellsConfig,
    state: State,
    columns: np.ndarray,
    cache: dict[Any, Any] | None = None,
) -> sp.csr_matrix | np.ndarray:
    """RNA values of the kept cells at the input of ``step`` (``None``: after every step).

    ``cache`` (one dict per block) reuses a matrix that two statistics of the same pass need
    (e.g. HVG and scale moments both read the log-normalized kept genes).
    """
    steps = config.rna.steps
    done = steps[: steps.index(step)] if step in steps else steps
    key = (tuple(s for s in done if s in _TRANSFORMS), hash(columns.tobytes()))
    if cache is not None and key in cache:
        return cache[key]
    x = raw[:, columns]
    if "normalize_total" in done:
        kept = state.kept_genes
        assert state.heg is not None and state.target_sum is not None
        totals = _rna.library_size(raw[:, kept], exclude=state.heg[kept])
        x = _rna.normalize_total(x, target_sum=state.target_sum, totals=totals)
    if "log1p" in done:
        x = _rna.log1p(x)
    if "scale" in done:
        assert state.scale_mean is not None and state.scale_std is not None
        assert state.scale_columns is not None
        position = np.searchsorted(state.scale_columns, columns)
        x = _rna.scale(
            x,
            mean=state.scale_mean[position],
            std=state.scale_std[position],
            zero_center=config.rna.scale.zero_center,
            max_value=config.rna.scale.max_value,
        )
    if cache is not None:
        cache[key] = x
    return x


def _atac_at(
    step: str | None, raw: sp.csr_matrix, *, config: PreprocessCellsConfig, state: State
) -> sp.csr_matrix:
    """ATAC values of the kept cells at the input of ``step``, on the kept peaks if known."""
    steps = config.atac.steps
    done = steps[: steps.index(step)] if step in steps else steps
    x = _atac.binarize(raw) if "binarize" in done else raw
    if state.peak_keep is not None:
        x = x[:, np.flatnonzero(state.peak_keep)]
    if "tfidf" in done:
        assert state.idf is not None
        t = config.atac.tfidf
        x = _atac.tfidf(
            x, idf=state.idf, log_tf=t.log_tf, log_tfidf=t.log_tfidf, scale_factor=t.scale_factor
        )
    return x


def block_statistics(
    block: Block, *, config: PreprocessCellsConfig, state: State, wants: Sequence[str]
) -> dict[str, Any]:
    """The partial statistics ``wants`` (from :func:`plan_pass`) of one block.

    Returns
    -------
    dict
        Statistic name → partial (merge with :func:`raymmi.cells.merge_partials`).

    Raises
    ------
    RaymmiError
        In the first pass, if a count modality holds non-counts (with ``check_counts``).
    """
    keep, removed, _ = _cell_mask(block, config, state)
    if _hvg_flavor(config) is None or config.rna.highly_variable_genes.batch_key is None:
        block = dataclasses.replace(block, batch=None)
    out: dict[str, Any] = {}
    if "qc" in wants:
        if config.check_counts:
            for name, x, needed in (
                ("rna", block.rna, True),
                ("atac", block.atac, "binarize" not in config.atac.steps),
                ("adt", block.adt, True),
            ):
                if x is not None and needed:
                    source = state.counts_source.get(name, "the input shard set")
                    check_counts(x, name=name, source=source, where=block.where)
        counts = {"cells_in": block.n_cells, "cells_kept": int(keep.sum()), **removed}
        out["qc"] = Count(counts)
        if block.batch is not None:
            present, n = np.unique(block.batch[keep], return_counts=True)
            out["batches"] = Count({str(k): int(v) for k, v in zip(present, n, strict=True)})
    rna = block.rna[keep] if block.rna is not None else None
    cache: dict[Any, Any] = {}
    if rna is not None:
        flavor = _hvg_flavor(config)
        if "rna.raw" in wants:
            raw_codes: np.ndarray | None = None
            raw_labels: tuple[str, ...] | None = None
            if flavor == "seurat_v3" and block.batch is not None:
                raw_labels = tuple(np.unique(block.batch[keep]).astype(str))
                raw_codes = _batch_codes(block, raw_labels, keep)
            out["rna.raw"] = column_stats(rna, groups=raw_codes, labels=raw_labels)
        if "rna.heg" in wants:
            kept = state.kept_genes
            hits = np.zeros(len(state.genes), dtype=bool)
            frac = config.rna.normalize_total.max_fraction
            hits[kept] = _rna.highly_expressed(rna[:, kept], max_fraction=frac)
            out["rna.heg"] = AnyColumn(hits)
        if "rna.depth" in wants:
            kept = state.kept_genes
            assert state.heg is not None
            out["rna.depth"] = value_counts(
                _rna.library_size(rna[:, kept], exclude=state.heg[kept])
            )
        batches = state.batches or ("all",)
        codes = _batch_codes(block, batches, keep) if state.batches else None
        if "rna.v3clip" in wants:
            kept = state.kept_genes
            raw = _rna_at("highly_variable_genes", rna, config=config, state=state, columns=kept)
            out["rna.v3clip"] = column_stats(raw, groups=codes, labels=batches, clip=state.v3_clip)
        if "rna.hvg" in wants:
            x = _rna_at(
                "highly_variable_genes",
                rna,
                config=config,
                state=state,
                columns=state.kept_genes,
                cache=cache,
            )
            x = sp.csr_matrix(x, copy=True)
            x.data = np.expm1(x.data)
            out["rna.hvg"] = column_stats(x, groups=codes, labels=batches)
        if "rna.scale" in wants:
            x = _rna_at(
                "scale", rna, config=config, state=state, columns=state.rna_columns, cache=cache
            )
            out["rna.scale"] = column_stats(x)
        if "rna.gram" in wants:
            x = _rna_at("pca", rna, config=config, state=state, columns=state.rna_columns)
            out["rna.gram"] = gram(_rna.dense(x))
    atac = block.atac[keep] if block.atac is not None else None
    if atac is not None:
        if "atac.raw" in wants:
            out["atac.raw"] = column_stats(
                _atac_at("filter_peaks", atac, config=config, state=state)
            )
        if "atac.lsi" in wants:
            assert state.lsi_q is not None
            a = _atac_at("lsi", atac, config=config, state=state)
            out["atac.lsi"] = Total(_atac.gram_product(a, state.lsi_q))
            out["atac.lsi_sums"] = Total(
                np.append(np.asarray(a.sum(axis=0, dtype=np.float64)).ravel(), a.power(2).sum())
            )
    return out


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


# ---------------------------------------------------------------------------------------------
# Final transform
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockOutput:
    """The processed columns of one block, kept cells only.

    Parameters
    ----------
    keep
        Boolean mask of shape (n_cells_in_block,): the rows that stay.
    values
        Output modality name → matrix with one row per kept cell (CSR or dense float32).
    obs
        Extra per-cell columns (QC metrics), one entry per kept cell.
    """

    keep: np.ndarray
    values: Mapping[str, sp.csr_matrix | np.ndarray]
    obs: Mapping[str, np.ndarray]


def rna_output_name(config: PreprocessCellsConfig) -> str | None:
    """Name of the processed RNA matrix column (``rna_hvg`` with HVG selection)."""
    steps = set(config.rna.steps)
    if "highly_variable_genes" in steps:
        return "rna_hvg"
    if steps & {"normalize_total", "log1p", "scale"}:
        return "rna_norm"
    return None


def transform_block(block: Block, *, config: PreprocessCellsConfig, state: State) -> BlockOutput:
    """Apply every fitted step to one block (the last pass).

    Returns
    -------
    BlockOutput
        ``rna_hvg``/``rna_norm`` (dense float32 when scaled with zero centering, else CSR),
        ``rna_pca`` (float32, n_comps), ``atac`` (binarized kept peaks, CSR), ``atac_lsi``
        (float32), ``adt_clr`` (float32), for the modalities and steps present; ``obs``:
        ``rna_n_genes_by_counts``, ``rna_pct_counts_mt``, ``atac_n_peaks_by_counts``.
    """
    keep, _, qc = _cell_mask(block, config, state, metrics=True)
    values: dict[str, sp.csr_matrix | np.ndarray] = {}
    obs: dict[str, np.ndarray] = {}
    if block.rna is not None:
        rna = block.rna[keep]
        obs["rna_n_genes_by_counts"] = (
            qc["rna"]["n_genes_by_counts"].to_numpy()[keep].astype(np.int32)
        )
        obs["rna_pct_counts_mt"] = qc["rna"]["pct_counts_mt"].to_numpy()[keep].astype(np.float32)
        name = rna_output_name(config)
        if name is not None:
            steps = config.rna.steps
            last = "pca" if "pca" in steps else None
            x = _rna_at(last, rna, config=config, state=state, columns=state.rna_columns)
            values[name] = x
            if state.pca is not None:
                values["rna_pca"] = _rna.pca_transform(x, state.pca)
    if block.atac is not None:
        atac = block.atac[keep]
        obs["atac_n_peaks_by_counts"] = (
            qc["atac"]["n_peaks_by_counts"].to_numpy()[keep].astype(np.int32)
        )
        values["atac"] = _atac_at("tfidf", atac, config=config, state=state).astype(np.float32)
        if state.lsi is not None:
            a = _atac_at("lsi", atac, config=config, state=state)
            lsi = _atac.lsi_transform(
                a, state.lsi, scale_embeddings=config.atac.lsi.scale_embeddings
            )
            values["atac_lsi"] = lsi[:, 1:] if config.atac.lsi.drop_first else lsi
    if block.adt is not None and "clr" in config.adt.steps:
        values["adt_clr"] = _adt.clr(block.adt[keep])
    return BlockOutput(keep=keep, values=values, obs=obs)


def lsi_names(config: PreprocessCellsConfig) -> list[str]:
    """Feature names of ``atac_lsi``: ``LSI1`` ... (``LSI2`` ... with ``drop_first``)."""
    first = 2 if config.atac.lsi.drop_first else 1
    return [f"LSI{i}" for i in range(first, config.atac.lsi.n_comps + 1)]


def fit_blocks(blocks: Sequence[Block], *, config: PreprocessCellsConfig, state: State) -> State:
    """Run every statistics pass over in-memory blocks (the Ray layer's loop, serially).

    For tests and small data; the Ray layer runs the same loop with one task per file.
    """
    while wants := plan_pass(config, state):
        parts = [block_statistics(b, config=config, state=state, wants=wants) for b in blocks]
        state = fit_pass(config, state, merge_partials(parts))
    return state
