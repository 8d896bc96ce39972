"""ATAC preprocessing as pure functions: binarize, peak filter, TF-IDF, out-of-core LSI.

TF-IDF follows ``muon.atac.pp.tfidf`` and LSI ``muon.atac.tl.lsi`` (an SVD of the TF-IDF
matrix, no centering, embeddings = left singular vectors, optionally standardized). muon runs
``scipy.sparse.linalg.svds`` on the whole matrix; here the right singular vectors come from a
randomized subspace iteration on ``M = A^T A`` whose products ``A_b^T (A_b Q)`` are summed over
blocks of cells, one pass over the data per iteration, followed by Rayleigh-Ritz.

Error statement. Pass ``i`` (of ``n_iter``) computes ``Z_i = M Q_i`` with ``Q_0`` a seeded
Gaussian basis of ``l = n_comps + oversample`` columns and ``Q_i = orth(Z_{i-1})``; the final
Rayleigh-Ritz step uses the whole block Krylov space ``span{Q_0, M Q_0, ..., M^(n_iter-1)
Q_0}`` (block Lanczos), on which ``M`` is known exactly from the passes. That space contains
the subspace-iteration basis ``M^(n_iter-1) Omega = C^(2q) Omega`` (``C = M^(1/2)``,
``q = n_iter - 1``), so the randomized range-finder bound of Halko, Martinsson and Tropp (2011,
Thm. 10.6 with Prop. 8.6) holds: with singular values ``s_j`` of ``A``, ``k = n_comps`` and
``p = oversample``, ``E ||(I - P_K) C|| <= [(1 + sqrt(k/(p-1))) s_{k+1}^(2q) + (e sqrt(k+p)/p)
(sum_{j>k} s_j^(4q))^(1/2)]^(1/(2q))``, and Musco and Musco (2015) give the sharper gap-free
block-Krylov rate (error ~ 1/q^2). As both depend on the unknown spectrum, :func:`lsi_fit`
also returns an a-posteriori certificate, exact from the last pass: the residual
``r_k = ||M v_k - theta_k v_k||`` of each Ritz pair. Some eigenvalue of ``M`` lies within
``r_k`` of ``theta_k = s_k^2``, and the angle between ``v_k`` and the true singular vector is
at most ``asin(r_k / gap_k)`` (Davis-Kahan). Components inside the flat noise bulk of the
spectrum (small gaps) are not determined by any method and show large residuals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from raymmi.cells._partials import ColumnStats


def binarize(x: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """Non-zero entries become 1 (``muon.atac.pp.binarize``); float32 CSR of the same shape."""
    out = sp.csr_matrix(x, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def qc_metrics(counts: sp.spmatrix | sp.sparray) -> pd.DataFrame:
    """Per-cell ``total_counts`` (float64) and ``n_peaks_by_counts`` (int64) of raw counts."""
    csr = sp.csr_matrix(counts)
    total = np.asarray(csr.sum(axis=1, dtype=np.float64)).ravel()
    nonzero = sp.csr_matrix((csr.data != 0, csr.indices, csr.indptr), shape=csr.shape)
    n_peaks = np.asarray(nonzero.sum(axis=1)).ravel().astype(np.int64)
    return pd.DataFrame({"total_counts": total, "n_peaks_by_counts": n_peaks})


def cell_filter(
    metrics: pd.DataFrame,
    *,
    min_counts: float | None = None,
    min_peaks: int | None = None,
    max_counts: float | None = None,
    max_peaks: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Cells passing every bound; returns the mask (n_cells,) and cells failing each bound."""
    total = metrics["total_counts"].to_numpy()
    peaks = metrics["n_peaks_by_counts"].to_numpy()
    tests = {
        "min_counts": (min_counts, total >= (min_counts or 0)),
        "min_peaks": (min_peaks, peaks >= (min_peaks or 0)),
        "max_counts": (max_counts, total <= (max_counts or 0)),
        "max_peaks": (max_peaks, peaks <= (max_peaks or 0)),
    }
    keep = np.ones(len(metrics), dtype=bool)
    removed: dict[str, int] = {}
    for name, (bound, ok) in tests.items():
        if bound is not None:
            removed[name] = int((~ok).sum())
            keep &= ok
    return keep, removed


def peak_filter(
    stats: ColumnStats,
    *,
    min_cells: int | None = None,
    min_fraction: float | None = None,
    top_k: int | None = None,
) -> np.ndarray:
    """Peaks accessible in enough cells, then the ``top_k`` most accessible of those.

    Parameters
    ----------
    stats
        Column statistics of the peaks over the kept cells (``nnz`` = accessible cells).
    min_cells, min_fraction, top_k
        Bounds; ``None``: off. ``top_k`` ties break towards the lower peak index.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape (n_peaks,).
    """
    pooled = stats.pooled()
    cells = pooled.nnz[0]
    keep = np.ones(stats.n_features, dtype=bool)
    if min_cells is not None:
        keep &= cells >= min_cells
    if min_fraction is not None:
        keep &= cells >= min_fraction * pooled.n[0]
    if top_k is not None and keep.sum() > top_k:
        order = np.lexsort((np.arange(cells.size), -np.where(keep, cells, -1)))
        top = np.zeros_like(keep)
        top[order[:top_k]] = True
        keep &= top
    return keep


def idf(stats: ColumnStats, *, log_idf: bool = True) -> np.ndarray:
    """Inverse document frequency ``n_cells / column sum`` (``log1p`` of it with ``log_idf``).

    Peaks with a zero column sum get 0 (they have no entries to weight). Float64 (n_peaks,).
    """
    pooled = stats.pooled()
    total = pooled.total[0]
    with np.errstate(divide="ignore"):
        out = np.where(total > 0, pooled.n[0] / np.where(total > 0, total, 1), 0.0)
    return np.log1p(out) if log_idf else out


def tfidf(
    x: sp.spmatrix | sp.sparray,
    *,
    idf: np.ndarray,
    log_tf: bool = True,
    log_tfidf: bool = False,
    scale_factor: float = 1e4,
) -> sp.csr_matrix:
    """TF-IDF of a block of cells (``muon.atac.pp.tfidf``), float32 CSR (n_cells, n_peaks).

    ``tf = x / rowsum(x) * scale_factor`` (no scaling when ``scale_factor`` is 1), ``log1p``
    of it with ``log_tf``, times ``idf`` (from :func:`idf` over all cells), then ``log1p`` of
    the product with ``log_tfidf``.
    """
    out = sp.csr_matrix(x, dtype=np.float64, copy=True)
    rows = np.asarray(out.sum(axis=1)).ravel()
    rows[rows == 0] = 1
    tf = out.data / np.repeat(rows, np.diff(out.indptr))
    if scale_factor not in (0, 1):
        tf = tf * scale_factor
    if log_tf:
        tf = np.log1p(tf)
    values = tf * idf[out.indices]
    if log_tfidf:
        values = np.log1p(values)
    out.data = values
    return out.astype(np.float32)


def lsi_start(n_features: int, *, n_comps: int, oversample: int, seed: int) -> np.ndarray:
    """Seeded orthonormal Gaussian start basis, float64 of shape (n_features, l).

    ``l = min(n_comps + oversample, n_features)``.
    """
    width = min(n_comps + oversample, n_features)
    omega = np.random.default_rng(seed).standard_normal((n_features, width))
    return np.linalg.qr(omega)[0]


def gram_product(a: sp.spmatrix | sp.sparray, q: np.ndarray) -> np.ndarray:
    """``A^T (A Q)`` of one block, float64 of shape (n_features, l): the summand of ``M Q``."""
    csr = sp.csr_matrix(a)
    return np.asarray(csr.T @ (csr @ q))


def orthonormalize(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis (QR) of the columns of ``z``, shape (n_features, l)."""
    return np.linalg.qr(z)[0]


@dataclasses.dataclass(frozen=True)
class LsiFit:
    """Fitted LSI: right singular vectors and what the projection needs.

    Parameters
    ----------
    components
        Right singular vectors, float64 of shape (n_comps, n_peaks), largest loading positive.
    singular_values
        Shape (n_comps,).
    embedding_mean, embedding_std
        Mean and sd (ddof=0) over cells of each left singular vector, shape (n_comps,):
        muon's ``scale_embeddings`` standardization, exact from column sums.
    rel_residual
        ``||M v_k - theta_k v_k|| / theta_k`` per component, shape (n_comps,).
    variance_ratio
        ``s_k^2`` over the squared Frobenius norm of ``A`` (when known), shape (n_comps,).
    """

    components: np.ndarray
    singular_values: np.ndarray
    embedding_mean: np.ndarray
    embedding_std: np.ndarray
    rel_residual: np.ndarray
    variance_ratio: np.ndarray


def lsi_fit(
    bases: Sequence[np.ndarray],
    products: Sequence[np.ndarray],
    *,
    n_comps: int,
    n_cells: int,
    column_sums: np.ndarray,
    total_sq: float | None = None,
) -> LsiFit:
    """Rayleigh-Ritz on the block Krylov space of all passes (block Lanczos).

    Pass ``i`` computed ``Z_i = M Q_i`` for the basis ``Q_i`` it was given, so ``M`` is known
    on ``K = [Q_0 ... Q_{q-1}]``, which spans ``{Omega, M Omega, ..., M^(q-1) Omega}``: the
    Ritz vectors come from that whole space at no extra pass (it contains the last subspace
    iterate, so the subspace-iteration bound holds a fortiori). ``K`` is orthonormalized by
    an SVD, dropping directions below 1e-10 of the largest (converged, repeated vectors).

    Parameters
    ----------
    bases
        The bases ``Q_i`` given to each pass, each of shape (n_peaks, l).
    products
        ``A^T A Q_i`` summed over all cells, same shapes.
    n_comps
        Components to keep.
    n_cells
        Rows of ``A``.
    column_sums
        ``1^T A``, shape (n_peaks,), for the embedding means.
    total_sq
        ``||A||_F^2`` (for ``variance_ratio``), or ``None``.
    """
    k = np.hstack(list(bases))
    mk = np.hstack(list(products))
    u, sigma, wt = np.linalg.svd(k, full_matrices=False)
    rank = sigma > 1e-10 * sigma[0]
    u = u[:, rank]
    mu = mk @ (wt[rank].T / sigma[rank])
    h = u.T @ mu
    theta, w = scipy.linalg.eigh((h + h.T) / 2)
    order = np.argsort(theta)[::-1][:n_comps]
    theta, w = theta[order], w[:, order]
    theta = np.maximum(theta, np.finfo(np.float64).tiny)
    residual = np.linalg.norm(mu @ w - (u @ w) * theta, axis=0) / theta
    components = (u @ w).T
    pivot = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(len(theta)), pivot])[:, None]
    s = np.sqrt(theta)
    mean = (components @ column_sums) / (n_cells * s)
    std = np.sqrt(np.maximum(1.0 / n_cells - mean**2, 0.0))
    ratio = theta / total_sq if total_sq else np.full_like(theta, np.nan)
    return LsiFit(components, s, mean, std, residual, ratio)


def lsi_transform(
    a: sp.spmatrix | sp.sparray, fit: LsiFit, *, scale_embeddings: bool = True
) -> np.ndarray:
    """Cell embeddings ``A V / s`` (muon's ``X_lsi``), standardized with ``scale_embeddings``.

    Returns float32 of shape (n_cells, n_comps).
    """
    u = np.asarray(sp.csr_matrix(a) @ fit.components.T) / fit.singular_values
    if scale_embeddings:
        u = (u - fit.embedding_mean) / np.where(fit.embedding_std > 0, fit.embedding_std, 1.0)
    return u.astype(np.float32)
