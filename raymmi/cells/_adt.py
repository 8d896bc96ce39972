"""ADT (CITE-seq protein) preprocessing: centered log ratio per cell."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def clr(x: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """Centered log ratio per cell, ``muon.prot.pp.clr(adata, axis=1)`` (flavor ``seurat``).

    ``log1p(x / exp(mean_j log1p(x_ij)))`` for each cell ``i``: counts divided by the
    geometric mean of ``1 + x`` of the cell (the formula of muon 0.1.9's ``clr`` with
    ``axis=1``), computed in float64.

    Parameters
    ----------
    x
        Non-negative ADT counts of shape (n_cells, n_proteins).

    Returns
    -------
    numpy.ndarray
        Float32 array of shape (n_cells, n_proteins).
    """
    dense = (np.asarray(x.toarray()) if not isinstance(x, np.ndarray) else x).astype(np.float64)
    geo = np.exp(np.log1p(dense).mean(axis=1, keepdims=True))
    return np.log1p(dense / geo).astype(np.float32)
