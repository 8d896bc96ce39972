"""RNA preprocessing as pure functions: QC, normalize_total, log1p, HVG, scale, PCA.

Each function reproduces the scanpy 1.11 function of the same name on one block of cells, or
fits from merged partial statistics (:mod:`raymmi.cells._partials`) what scanpy computes from
the whole matrix. Matrices are cells x genes: ``scipy.sparse.csr_matrix`` float32 for counts and
log values, ``numpy.ndarray`` float32 for scaled values and embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from raymmi.cells._partials import ColumnStats, Gram


def _csr32(x: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    out = sp.csr_matrix(x)
    if out.dtype != np.float32:
        out = out.astype(np.float32)
    return out


def dense(x: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """``x`` as a dense array (no copy if it already is one)."""
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x.toarray())


def qc_metrics(counts: sp.spmatrix | sp.sparray, *, mt: np.ndarray | None = None) -> pd.DataFrame:
    """Per-cell QC metrics of raw counts (``sc.pp.calculate_qc_metrics`` names).

    Parameters
    ----------
    counts
        Raw counts, sparse matrix of shape (n_cells, n_genes).
    mt
        Boolean mask of mitochondrial genes, shape (n_genes,) (default: none).

    Returns
    -------
    pandas.DataFrame
        One row per cell: ``total_counts`` (float64), ``n_genes_by_counts`` (int64) and
        ``pct_counts_mt`` (float64, 0 when there are no such genes or no counts).
    """
    csr = sp.csr_matrix(counts)
    total = np.asarray(csr.sum(axis=1, dtype=np.float64)).ravel()
    n_genes = np.diff(csr.indptr)
    stored_zero = csr.data == 0
    if stored_zero.any():
        rows = np.repeat(np.arange(csr.shape[0]), n_genes)
        n_genes = n_genes - np.bincount(rows[stored_zero], minlength=csr.shape[0])
    if mt is not None and mt.any():
        mt_total = np.asarray(csr[:, np.flatnonzero(mt)].sum(axis=1, dtype=np.float64)).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(total > 0, 100.0 * mt_total / total, 0.0)
    else:
        pct = np.zeros(csr.shape[0])
    return pd.DataFrame(
        {
            "total_counts": total,
            "n_genes_by_counts": n_genes.astype(np.int64),
            "pct_counts_mt": pct,
        }
    )


def cell_filter(
    metrics: pd.DataFrame,
    *,
    min_counts: float | None = None,
    min_genes: int | None = None,
    max_counts: float | None = None,
    max_genes: int | None = None,
    max_pct_mt: float | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Cells passing every bound (``sc.pp.filter_cells`` applied once per bound).

    Parameters
    ----------
    metrics
        Output of :func:`qc_metrics`, one row per cell.
    min_counts, min_genes, max_counts, max_genes, max_pct_mt
        Bounds; ``None`` switches a bound off. Minimums are inclusive, maximums too.

    Returns
    -------
    keep
        Boolean array of shape (n_cells,).
    removed
        For each active bound, how many cells fail it (a cell may fail several).
    """
    tests = {
        "min_counts": (min_counts, metrics["total_counts"].to_numpy() >= (min_counts or 0)),
        "min_genes": (min_genes, metrics["n_genes_by_counts"].to_numpy() >= (min_genes or 0)),
        "max_counts": (max_counts, metrics["total_counts"].to_numpy() <= (max_counts or 0)),
        "max_genes": (max_genes, metrics["n_genes_by_counts"].to_numpy() <= (max_genes or 0)),
        "max_pct_mt": (max_pct_mt, metrics["pct_counts_mt"].to_numpy() <= (max_pct_mt or 0)),
    }
    keep = np.ones(len(metrics), dtype=bool)
    removed: dict[str, int] = {}
    for name, (bound, ok) in tests.items():
        if bound is None:
            continue
        removed[name] = int((~ok).sum())
        keep &= ok
    return keep, removed


def gene_filter(
    stats: ColumnStats,
    *,
    min_cells: int | None = None,
    min_counts: float | None = None,
    max_cells: int | None = None,
    max_counts: float | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Genes passing every bound (``sc.pp.filter_genes``), from raw-count column statistics.

    Parameters
    ----------
    stats
        Column statistics of raw counts over the kept cells (groups are pooled).
    min_cells, min_counts, max_cells, max_counts
        Bounds on cells with a non-zero count and on total counts; ``None``: off.

    Returns
    -------
    keep
        Boolean array of shape (n_genes,).
    removed
        For each active bound, how many genes fail it.
    """
    pooled = stats.pooled()
    cells, counts = pooled.nnz[0], pooled.total[0]
    tests = {
        "min_cells": (min_cells, cells >= (min_cells or 0)),
        "min_counts": (min_counts, counts >= (min_counts or 0)),
        "max_cells": (max_cells, cells <= (max_cells or 0)),
        "max_counts": (max_counts, counts <= (max_counts or 0)),
    }
    keep = np.ones(stats.n_features, dtype=bool)
    removed: dict[str, int] = {}
    for name, (bound, ok) in tests.items():
        if bound is None:
            continue
        removed[name] = int((~ok).sum())
        keep &= ok
    return keep, removed


def library_size(
    counts: sp.spmatrix | sp.sparray, *, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Counts per cell over the genes not in ``exclude``, float32 of shape (n_cells,).

    Float32 like scanpy's ``normalize_total`` (exact for integer totals below 2**24).
    """
    csr = sp.csr_matrix(counts)
    if exclude is not None and exclude.any():
        csr = csr[:, np.flatnonzero(~exclude)]
    return np.asarray(csr.sum(axis=1, dtype=np.float64)).ravel().astype(np.float32)


def highly_expressed(counts: sp.spmatrix | sp.sparray, *, max_fraction: float) -> np.ndarray:
    """Genes with more than ``max_fraction`` of some cell's counts in this block.

    The per-block half of ``normalize_total(exclude_highly_expressed=True)``: the OR over
    blocks gives the genes scanpy leaves out of the size factors. Bool array (n_genes,).
    """
    csr = sp.csr_matrix(counts)
    total = library_size(csr)
    limit = np.repeat(max_fraction * total.astype(np.float64), np.diff(csr.indptr))
    hits = np.zeros(csr.shape[1], dtype=bool)
    hits[csr.indices[csr.data > limit]] = True
    return hits


def normalize_total(
    counts: sp.spmatrix | sp.sparray,
    *,
    target_sum: float,
    exclude: np.ndarray | None = None,
    totals: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Scale each cell to ``target_sum`` total counts (``sc.pp.normalize_total``).

    Parameters
    ----------
    counts
        Counts, sparse matrix of shape (n_cells, n_genes).
    target_sum
        Total after normalization (the fitted median when scanpy's ``target_sum=None``).
    exclude
        Genes left out of the size factors, bool array of shape (n_genes,)
        (``exclude_highly_expressed``); they are still scaled.
    totals
        Counts per cell to normalize by, shape (n_cells,) (default:
        ``library_size(counts, exclude=exclude)``); given when ``counts`` holds only some of
        the genes the size factors are computed from.

    Returns
    -------
    scipy.sparse.csr_matrix
        Float32 matrix of shape (n_cells, n_genes); cells with zero counts stay zero.
    """
    csr = _csr32(counts)
    if totals is None:
        totals = library_size(csr, exclude=exclude)
    factor = totals.astype(np.float32) / np.float32(target_sum)
    factor[factor == 0] = 1
    out = csr.copy()
    out.data = (out.data / np.repeat(factor, np.diff(out.indptr))).astype(np.float32)
    return out


def log1p(x: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """``log(1 + x)`` of a sparse matrix, float32 of the same shape (``sc.pp.log1p``)."""
    out = _csr32(x).copy()
    out.data = np.log1p(out.data)
    return out


def _seurat_single(
    mean: np.ndarray,
    var: np.ndarray,
    *,
    n_top_genes: int | None,
    n_bins: int,
    cutoffs: Mapping[str, float],
) -> pd.DataFrame:
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    # scanpy: a bin holding one gene gets normalized dispersion 1
    one = stats["dev"].isnull()
    stats.loc[one, "dev"] = stats.loc[one, "avg"]
    stats.loc[one, "avg"] = 0
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
    norm = df["dispersions_norm"].to_numpy()
    if n_top_genes is None:
        norm = np.nan_to_num(norm)
        df["highly_variable"] = (
            (mean > cutoffs["min_mean"])
            & (mean < cutoffs["max_mean"])
            & (norm > cutoffs["min_disp"])
            & (norm < cutoffs["max_disp"])
        )
    else:
        finite = np.sort(norm[~np.isnan(norm)])[::-1]
        n = min(n_top_genes, len(df), finite.size)
        cut = finite[n - 1] if n else np.inf
        df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cut
    return df.drop(columns="mean_bin")


def highly_variable_genes_seurat(
    stats: ColumnStats,
    *,
    genes: Sequence[str],
    n_top_genes: int | None = None,
    min_mean: float = 0.0125,
    max_mean: float = 3.0,
    min_disp: float = 0.5,
    max_disp: float = np.inf,
    n_bins: int = 20,
    batched: bool = False,
) -> pd.DataFrame:
    """``sc.pp.highly_variable_genes(flavor="seurat")`` from merged column statistics.

    Parameters
    ----------
    stats
        Column statistics of ``expm1`` of the log-normalized values (scanpy's dispersions are
        of the normalized counts), one group per batch, over the genes ``genes``.
    genes
        Gene names, length n_genes.
    n_top_genes, min_mean, max_mean, min_disp, max_disp, n_bins
        As in scanpy; with ``n_top_genes`` the cutoffs are ignored.
    batched
        Whether a ``batch_key`` was given: select per batch (genes unexpressed in a batch are
        left out of it) and merge by the number of batches, as scanpy does.

    Returns
    -------
    pandas.DataFrame
        Index ``genes``; ``means``, ``dispersions``, ``dispersions_norm``,
        ``highly_variable``, and with ``batched`` ``highly_variable_nbatches`` and
        ``highly_variable_intersection``.
    """
    cutoffs = {"min_mean": min_mean, "max_mean": max_mean, "min_disp": min_disp}
    cutoffs["max_disp"] = max_disp
    index = pd.Index(list(genes))
    mean, var = stats.mean(), stats.var()
    if not batched:
        pooled = stats.pooled()
        df = _seurat_single(
            pooled.mean()[0],
            pooled.var()[0],
            n_top_genes=n_top_genes,
            n_bins=n_bins,
            cutoffs=cutoffs,
        )
        df.index = index
        return df
    frames = []
    for b in np.flatnonzero(stats.n > 0):
        expressed = stats.nnz[b] > 0
        df = _seurat_single(
            mean[b, expressed],
            var[b, expressed],
            n_top_genes=n_top_genes,
            n_bins=n_bins,
            cutoffs=cutoffs,
        )
        df.index = index[expressed]
        if not expressed.all():
            missing = pd.DataFrame(
                np.zeros((int((~expressed).sum()), len(df.columns))),
                columns=df.columns,
                index=index[~expressed],
            )
            missing["highly_variable"] = missing["highly_variable"].astype(bool)
            df = pd.concat([df, missing]).loc[index]
        frames.append(df)
    df = pd.concat(frames, axis=0)
    df["highly_variable"] = df["highly_variable"].astype(int)
    df = df.groupby(df.index, observed=True).agg(
        {
            "means": "mean",
            "dispersions": "mean",
            "dispersions_norm": "mean",
            "highly_variable": "sum",
        }
    )
    df["highly_variable_nbatches"] = df["highly_variable"]
    df["highly_variable_intersection"] = df["highly_variable_nbatches"] == len(frames)
    if n_top_genes is not None:
        df = df.sort_values(
            ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
        )
        df["highly_variable"] = np.arange(df.shape[0]) < n_top_genes
        return df.loc[index]
    df = df.loc[index]
    df["dispersions_norm"] = df["dispersions_norm"].fillna(0)
    norm = df["dispersions_norm"]
    df["highly_variable"] = (
        (df["means"] > min_mean) & (df["means"] < max_mean) & (norm > min_disp) & (norm < max_disp)
    )
    return df


def seurat_v3_clip(stats: ColumnStats, *, span: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Fit the ``seurat_v3`` mean-variance trend per batch and the clip of each count.

    Parameters
    ----------
    stats
        Column statistics of raw counts over the kept cells and genes, one group per batch
        (only groups with cells are used).
    span
        Loess span (``skmisc.loess``, degree 2, as scanpy).

    Returns
    -------
    reg_std
        Regularized standard deviation ``sqrt(10 ** loess(log10 mean))``, float64 array of
        shape (n_groups, n_genes) (1 for constant genes).
    clip
        ``reg_std * sqrt(n_cells_in_batch) + mean``, same shape: the upper clip of the
        second pass.

    Raises
    ------
    ImportError
        If scikit-misc is not installed (scanpy's own requirement for ``seurat_v3``).
    """
    try:
        from skmisc.loess import loess
    except ImportError as err:  # pragma: no cover - depends on the environment
        msg = "flavor 'seurat_v3' needs scikit-misc (pip install scikit-misc), as in scanpy"
        raise ImportError(msg) from err
    mean, var = stats.mean(), stats.var()
    reg_std = np.ones_like(mean)
    clip = np.zeros_like(mean)
    for b in range(len(stats.groups)):
        if stats.n[b] == 0:
            continue
        not_const = var[b] > 0
        estimate = np.zeros(stats.n_features)
        model = loess(
            np.log10(mean[b, not_const]), np.log10(var[b, not_const]), span=span, degree=2
        )
        model.fit()
        estimate[not_const] = model.outputs.fitted_values
        reg_std[b] = np.sqrt(10**estimate)
        clip[b] = reg_std[b] * np.sqrt(stats.n[b]) + mean[b]
    return reg_std, clip


def highly_variable_genes_seurat_v3(
    stats: ColumnStats,
    clipped: ColumnStats,
    reg_std: np.ndarray,
    *,
    genes: Sequence[str],
    n_top_genes: int = 2000,
) -> pd.DataFrame:
    """``sc.pp.highly_variable_genes(flavor="seurat_v3")`` from two passes of statistics.

    Parameters
    ----------
    stats
        Raw-count column statistics per batch (first pass).
    clipped
        Column sums of ``min(count, clip)`` per batch (second pass, ``clip`` from
        :func:`seurat_v3_clip`).
    reg_std
        From :func:`seurat_v3_clip`, shape (n_groups, n_genes).
    genes
        Gene names, length n_genes.
    n_top_genes
        Genes to select.

    Returns
    -------
    pandas.DataFrame
        Index ``genes``: ``means``, ``variances`` (pooled), ``highly_variable_rank``,
        ``highly_variable_nbatches``, ``variances_norm``, ``highly_variable``.
    """
    pooled = stats.pooled()
    df = pd.DataFrame(index=pd.Index(list(genes)))
    df["means"], df["variances"] = pooled.mean()[0], pooled.var()[0]
    mean = stats.mean()
    rows = [b for b in range(len(stats.groups)) if stats.n[b] > 0]
    norm = []
    for b in rows:
        n = stats.n[b]
        norm.append(
            (1 / ((n - 1) * np.square(reg_std[b])))
            * (n * np.square(mean[b]) + clipped.total_sq[b] - 2 * clipped.total[b] * mean[b])
        )
    norm_vars = np.vstack(norm)
    ranked = np.argsort(np.argsort(-norm_vars, axis=1), axis=1).astype(np.float32)
    n_batches_hv = np.sum((ranked < n_top_genes).astype(int), axis=0)
    ranked[ranked >= n_top_genes] = np.nan
    median_rank = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df["highly_variable_nbatches"] = n_batches_hv
    df["highly_variable_rank"] = median_rank
    df["variances_norm"] = np.mean(norm_vars, axis=0)
    order = (
        df[["highly_variable_rank", "highly_variable_nbatches"]]
        .sort_values(
            ["highly_variable_rank", "highly_variable_nbatches"],
            ascending=[True, False],
            na_position="last",
        )
        .index
    )
    df["highly_variable"] = False
    df.loc[order[: int(n_top_genes)], "highly_variable"] = True
    return df


def scale_params(stats: ColumnStats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof=1, 0 replaced by 1) per column, as ``sc.pp.scale``.

    Returns
    -------
    mean, std
        Float64 arrays of shape (n_features,).
    """
    pooled = stats.pooled()
    std = np.sqrt(pooled.var()[0])
    std[std == 0] = 1
    return pooled.mean()[0], std


def scale(
    x: sp.spmatrix | sp.sparray | np.ndarray,
    *,
    mean: np.ndarray,
    std: np.ndarray,
    zero_center: bool = True,
    max_value: float | None = 10.0,
) -> np.ndarray | sp.csr_matrix:
    """Standardize columns with fitted ``mean``/``std`` and clip (``sc.pp.scale``).

    Parameters
    ----------
    x
        Values of shape (n_cells, n_features).
    mean, std
        From :func:`scale_params`, shape (n_features,).
    zero_center
        Subtract ``mean`` (the result is dense); otherwise only divide (stays sparse).
    max_value
        Clip to ``[-max_value, max_value]`` (upper bound only without ``zero_center``).

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        Float32 of shape (n_cells, n_features): dense with ``zero_center``, else CSR.
    """
    if not zero_center:
        out = _csr32(x).copy()
        values = out.data / std[out.indices]
        if max_value is not None:
            values = np.minimum(values, max_value)
        out.data = values.astype(np.float32)
        return out
    z = (dense(x).astype(np.float64) - mean) / std
    if max_value is not None:
        np.clip(z, -max_value, max_value, out=z)
    return z.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PcaFit:
    """A PCA fitted from the covariance (scanpy's ``covariance_eigh`` solver).

    Parameters
    ----------
    components
        Principal axes, float64 array of shape (n_comps, n_features), signs as sklearn's
        ``svd_flip`` (largest-magnitude loading positive).
    mean
        Column means, shape (n_features,).
    variance
        Explained variance (ddof=1), shape (n_comps,).
    variance_ratio
        ``variance`` over the total variance (trace of the covariance), shape (n_comps,).
    """

    components: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    variance_ratio: np.ndarray


def default_n_comps(n_cells: int, n_features: int) -> int:
    """Scanpy's default: 50, or ``min(n_cells, n_features) - 1`` if that is at most 50."""
    min_dim = min(n_cells, n_features)
    return min_dim - 1 if min_dim <= 50 else 50


def pca_fit(gram: Gram, *, n_comps: int) -> PcaFit:
    """Exact PCA from merged cross-products: eigendecomposition of the covariance.

    Exact (LAPACK ``syevr`` on the assembled covariance, top ``n_comps`` only), so no seed is
    involved; the covariance costs n_features**2 float64, fine up to a few thousand HVGs.

    Parameters
    ----------
    gram
        :class:`Gram` of the matrix to decompose, shape (n_features, n_features).
    n_comps
        Number of components, at most n_features.
    """
    mean, cov = gram.covariance()
    n_features = cov.shape[0]
    values, vectors = scipy.linalg.eigh(
        cov, subset_by_index=[n_features - n_comps, n_features - 1], driver="evr"
    )
    order = np.argsort(values)[::-1]
    values, components = values[order], vectors[:, order].T
    pivot = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(n_comps), pivot])[:, None]
    total = float(np.trace(cov))
    return PcaFit(components, mean, values, values / total if total > 0 else values * 0)


def pca_transform(x: np.ndarray | sp.spmatrix | sp.sparray, fit: PcaFit) -> np.ndarray:
    """Project ``x`` (n_cells, n_features) on the axes: float32 of shape (n_cells, n_comps)."""
    return ((dense(x).astype(np.float64) - fit.mean) @ fit.components.T).astype(np.float32)
