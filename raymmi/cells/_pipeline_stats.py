"""Per-block work: count checks, cell filters and the partial statistics of one block."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raymmi.cells import _atac, _rna
from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._partials import (
    AnyColumn,
    Count,
    Total,
    column_stats,
    gram,
    value_counts,
)
from raymmi.cells._pipeline_plan import _hvg_flavor
from raymmi.cells._pipeline_state import Block, State
from raymmi.schema import RaymmiError

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
