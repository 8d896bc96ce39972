"""Match cells across modalities with the pairing hidden: a CCA + nearest-neighbour baseline.

Both modalities of the test cells are put into one space (here: canonical variates of a CCA
fitted on the paired training cells), and each modality-1 cell spreads a softmax of its
similarities over its ``k`` most similar modality-2 cells: a sparse row-stochastic N x N
matrix with at most ``k`` non-zeros per row, as the challenge asks (``k <= 1000``).
No Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from raymmi.metrics import MAX_MATCH_NONZERO

Matrix: TypeAlias = np.ndarray | sp.spmatrix | sp.sparray

_BLOCK = 2048  # rows of modality 1 scored at a time: a (block x n2) float64 similarity block


def knn_softmax_matching(
    emb1: np.ndarray,
    emb2: np.ndarray,
    *,
    k: int = 100,
    temperature: float = 0.05,
) -> sp.csr_matrix:
    """Row-stochastic sparse matching from two embeddings in one space.

    Row i gets, over the ``k`` modality-2 cells of highest cosine similarity ``s``, the
    weights ``softmax(s / temperature)``; every other entry is 0. The search is exact, a block
    of rows at a time.

    Parameters
    ----------
    emb1
        Modality-1 cells in the shared space, shape (n1, d).
    emb2
        Modality-2 cells in the same space, shape (n2, d).
    k
        Non-zeros per row, at most 1,000 (the challenge's limit); capped at n2.
    temperature
        Softmax temperature on cosine similarities; smaller is sharper.

    Returns
    -------
    scipy.sparse.csr_matrix
        float64 of shape (n1, n2), rows summing to 1, ``min(k, n2)`` non-zeros per row.
    """
    e1 = np.asarray(emb1, dtype=np.float64)
    e2 = np.asarray(emb2, dtype=np.float64)
    if e1.ndim != 2 or e2.ndim != 2 or e1.shape[1] != e2.shape[1] or 0 in (*e1.shape, *e2.shape):
        msg = (
            f"emb1 and emb2 must be non-empty (n1, d) and (n2, d) with the same d; got "
            f"{e1.shape} and {e2.shape}"
        )
        raise ValueError(msg)
    if not 1 <= k <= MAX_MATCH_NONZERO:
        msg = f"k={k!r} must be between 1 and {MAX_MATCH_NONZERO} (the challenge's limit)"
        raise ValueError(msg)
    if not temperature > 0:
        msg = f"temperature={temperature!r} must be positive"
        raise ValueError(msg)
    e1 = e1 / np.maximum(np.linalg.norm(e1, axis=1, keepdims=True), 1e-12)
    e2 = e2 / np.maximum(np.linalg.norm(e2, axis=1, keepdims=True), 1e-12)
    n1, n2 = e1.shape[0], e2.shape[0]
    k = min(k, n2)
    columns = np.empty((n1, k), dtype=np.int64)
    weights = np.empty((n1, k))
    for start in range(0, n1, _BLOCK):
        sims = e1[start : start + _BLOCK] @ e2.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n2 else np.argsort(-sims)
        best = np.take_along_axis(sims, top, axis=1) / temperature
        best = np.exp(best - best.max(axis=1, keepdims=True))
        columns[start : start + len(top)] = top
        weights[start : start + len(top)] = best / best.sum(axis=1, keepdims=True)
    indptr = np.arange(0, n1 * k + 1, k)
    return sp.csr_matrix((weights.ravel(), columns.ravel(), indptr), shape=(n1, n2))


def _reduce(train: Matrix, test: Matrix, n_components: int, seed: int) -> tuple[np.ndarray, ...]:
    """TruncatedSVD of one modality (train and test rows), columns standardized on train."""
    both = (
        sp.vstack([sp.csr_matrix(train), sp.csr_matrix(test)], format="csr")
        if sp.issparse(train) or sp.issparse(test)
        else np.vstack([np.asarray(train, float), np.asarray(test, float)])
    )
    n_components = min(n_components, min(both.shape) - 1)
    z = TruncatedSVD(n_components=n_components, random_state=seed).fit_transform(both)
    z_train, z_test = z[: train.shape[0]], z[train.shape[0] :]
    mean, sd = z_train.mean(axis=0), z_train.std(axis=0)
    sd[sd == 0] = 1.0
    return (z_train - mean) / sd, (z_test - mean) / sd


def _inverse_sqrt(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(c)
    return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def cca_embeddings(
    train1: Matrix,
    train2: Matrix,
    test1: Matrix,
    test2: Matrix,
    *,
    n_pcs: int = 50,
    n_components: int = 20,
    regularization: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical variates of the test cells of both modalities, from a CCA on training pairs.

    Each modality is reduced by TruncatedSVD (fitted on its train and test rows) to ``n_pcs``
    standardized components; a ridge-regularized CCA on the paired training cells gives the
    projections (``C_xx + r I`` and ``C_yy + r I`` whitened, then the SVD of the whitened
    cross-covariance: the closed form, which sklearn's iterative ``CCA`` lacks with a ridge,
    and which projects each side alone). Variates are scaled by their canonical correlation
    so that the better-shared directions weigh more.

    Parameters
    ----------
    train1, train2
        Paired training cells, shapes (n_train, p1) and (n_train, p2), dense or sparse.
    test1, test2
        Test cells of each modality, shapes (n1, p1) and (n2, p2); their pairing is unknown.
    n_pcs
        SVD components per modality before the CCA.
    n_components
        Canonical directions kept.
    regularization
        Ridge ``r`` added to each (standardized) covariance.
    seed
        Seed of the SVDs.

    Returns
    -------
    emb1, emb2 : numpy.ndarray
        float64 of shapes (n1, n_components) and (n2, n_components).
    """
    if train1.shape[0] != train2.shape[0] or train1.shape[0] < 2:
        msg = (
            f"train1 and train2 must hold the same paired cells (at least 2); got "
            f"{train1.shape[0]} and {train2.shape[0]} rows"
        )
        raise ValueError(msg)
    if test1.shape[1] != train1.shape[1] or test2.shape[1] != train2.shape[1]:
        msg = (
            f"test1/test2 must have the features of train1/train2 ({train1.shape[1]}, "
            f"{train2.shape[1]}); got {test1.shape[1]} and {test2.shape[1]}"
        )
        raise ValueError(msg)
    if regularization < 0:
        msg = f"regularization={regularization!r} must be non-negative"
        raise ValueError(msg)
    x_train, x_test = _reduce(train1, test1, n_pcs, seed)
    y_train, y_test = _reduce(train2, test2, n_pcs, seed)
    n = x_train.shape[0]
    c_xx = x_train.T @ x_train / (n - 1) + regularization * np.eye(x_train.shape[1])
    c_yy = y_train.T @ y_train / (n - 1) + regularization * np.eye(y_train.shape[1])
    c_xy = x_train.T @ y_train / (n - 1)
    w_x, w_y = _inverse_sqrt(c_xx), _inverse_sqrt(c_yy)
    u, corr, vt = np.linalg.svd(w_x @ c_xy @ w_y)
    c = min(n_components, len(corr))
    a = w_x @ u[:, :c] * corr[:c]
    b = w_y @ vt[:c].T * corr[:c]
    return x_test @ a, y_test @ b


def match_cca(
    train1: Matrix,
    train2: Matrix,
    test1: Matrix,
    test2: Matrix,
    *,
    n_pcs: int = 50,
    n_components: int = 20,
    regularization: float = 0.1,
    k: int = 100,
    temperature: float = 0.05,
    seed: int = 0,
) -> sp.csr_matrix:
    """The matching baseline: :func:`cca_embeddings` then :func:`knn_softmax_matching`.

    Shapes as in :func:`cca_embeddings`; returns a row-stochastic csr matrix of shape
    (n1, n2) with ``min(k, n2)`` non-zeros per row (row i: test1 cell i; column j: test2
    cell j).
    """
    emb1, emb2 = cca_embeddings(
        train1,
        train2,
        test1,
        test2,
        n_pcs=n_pcs,
        n_components=n_components,
        regularization=regularization,
        seed=seed,
    )
    return knn_softmax_matching(emb1, emb2, k=k, temperature=temperature)
