"""Embed jointly: the baseline, PCA of the standardized, concatenated modalities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

Matrix: TypeAlias = np.ndarray | sp.spmatrix | sp.sparray

#: Most dimensions a joint embedding may have in the challenge.
MAX_EMBED_DIMS = 100


def _scaled_block(m: Matrix, weight: float) -> Matrix:
    """Columns divided by their sd (zero-variance columns dropped to 0), times ``weight``.

    Centering is left to PCA, so sparse blocks stay sparse.
    """
    if sp.issparse(m):
        csr = sp.csr_matrix(m, dtype=np.float64)
        mean = np.asarray(csr.mean(axis=0)).ravel()
        mean_sq = np.asarray(csr.multiply(csr).mean(axis=0)).ravel()
        sd = np.sqrt(np.maximum(mean_sq - mean**2, 0.0))
    else:
        csr = None
        dense = np.asarray(m, dtype=np.float64)
        sd = dense.std(axis=0)
    scale = np.divide(weight, sd, out=np.zeros_like(sd), where=sd > 0)
    if csr is not None:
        return sp.csr_matrix(csr @ sp.diags(scale))
    return dense * scale


def embed_pca(
    modalities: Sequence[Matrix],
    *,
    n_components: int = 50,
    balance: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Joint embedding baseline: PCA of the concatenated, standardized modalities.

    Every feature is standardized (unit variance over the cells; constant features dropped);
    with ``balance`` each modality's block is further divided by the square root of its
    feature count, so every modality carries the same total variance whatever its size (134
    proteins weigh as much as 13,000 genes). PCA centers the columns (implicitly for sparse
    input, via ARPACK, so sparse data are never densified).

    Parameters
    ----------
    modalities
        Normalized values of each modality for the same cells, shapes (n_cells, p_m), dense
        or sparse.
    n_components
        Embedding dimensions, 1 to 100 (the challenge's limit) and below the cell count and
        the total feature count.
    balance
        Equal total variance per modality (see above); ``False``: per-feature only.
    seed
        Seed of ARPACK's start vector.

    Returns
    -------
    numpy.ndarray
        float64 of shape (n_cells, n_components).
    """
    if not modalities:
        msg = "embed_pca needs at least one modality"
        raise ValueError(msg)
    n_cells = modalities[0].shape[0]
    if any(len(m.shape) != 2 or m.shape[0] != n_cells for m in modalities):
        msg = (
            f"every modality must be 2-d with the same cells; got shapes "
            f"{[m.shape for m in modalities]}"
        )
        raise ValueError(msg)
    n_features = sum(m.shape[1] for m in modalities)
    if not 1 <= n_components <= min(MAX_EMBED_DIMS, n_cells - 1, n_features - 1):
        msg = (
            f"n_components={n_components!r} must be between 1 and "
            f"min({MAX_EMBED_DIMS}, n_cells - 1, n_features - 1) = "
            f"{min(MAX_EMBED_DIMS, n_cells - 1, n_features - 1)}"
        )
        raise ValueError(msg)
    blocks = [_scaled_block(m, 1.0 / np.sqrt(m.shape[1]) if balance else 1.0) for m in modalities]
    if any(sp.issparse(b) for b in blocks):
        joint: Matrix = sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr")
        pca = PCA(n_components=n_components, svd_solver="arpack", random_state=seed)
    else:
        joint = np.hstack([np.asarray(b) for b in blocks])
        pca = PCA(n_components=n_components, svd_solver="full")
    return np.asarray(pca.fit_transform(joint), dtype=np.float64)
