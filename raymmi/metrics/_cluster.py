"""Clustering agreement and cluster-quality scores: thin, checked wrappers of sklearn.

Agreement of two labelings of the same cells (NMI, Fowlkes-Mallows; ARI lives in
``_batch.py``) and quality of a labeling on an embedding (silhouette, Davies-Bouldin). Each
function validates shapes and label counts first and names the argument that is wrong, so
that a bad call fails here rather than deep inside sklearn. No Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import (
    davies_bouldin_score,
    fowlkes_mallows_score,
    normalized_mutual_info_score,
    silhouette_score,
)

AverageMethod = Literal["arithmetic", "geometric", "min", "max"]
_AVERAGE_METHODS = ("arithmetic", "geometric", "min", "max")


def _check_labelings(
    labels_true: np.ndarray, labels_pred: np.ndarray, *, name: str
) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(labels_true), np.asarray(labels_pred)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        msg = (
            f"{name} needs two non-empty labelings of shape (n,); got {a.shape} and {b.shape}; "
            "pass one label per cell in both"
        )
        raise ValueError(msg)
    return a, b


def _check_embedding(
    x: np.ndarray, labels: np.ndarray, *, name: str
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        msg = (
            f"{name} needs x of shape (n, d) and labels of shape (n,); got x {x.shape} and "
            f"labels {labels.shape}; pass one label per row of x"
        )
        raise ValueError(msg)
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= x.shape[0] - 1:
        msg = (
            f"{name} needs between 2 and n - 1 = {x.shape[0] - 1} distinct labels; got "
            f"{n_labels}; it is undefined otherwise"
        )
        raise ValueError(msg)
    if not np.isfinite(x).all():
        msg = f"{name}: x holds NaN or infinite values; impute or drop those rows first"
        raise ValueError(msg)
    return x, labels


def normalized_mutual_info(
    labels_true: np.ndarray,
    labels_pred: np.ndarray,
    *,
    average_method: AverageMethod = "arithmetic",
) -> float:
    """Normalized mutual information of two labelings (sklearn; scib's ``nmi`` default).

    Parameters
    ----------
    labels_true, labels_pred
        Labels of the same cells, each of shape (n_cells,); any hashable values.
    average_method
        Normalizer of the mutual information: ``"arithmetic"`` (scib and the NeurIPS 2021
        challenge), ``"geometric"``, ``"min"`` or ``"max"``.

    Returns
    -------
    float
        NMI in [0, 1]; 1 means the labelings agree up to renaming.
    """
    if average_method not in _AVERAGE_METHODS:
        msg = f"average_method={average_method!r} is not one of {sorted(_AVERAGE_METHODS)}"
        raise ValueError(msg)
    a, b = _check_labelings(labels_true, labels_pred, name="normalized_mutual_info")
    return float(normalized_mutual_info_score(a, b, average_method=average_method))


def fowlkes_mallows(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Fowlkes-Mallows index of two labelings (sklearn).

    The geometric mean of pairwise precision and recall: of the cell pairs that share a label
    in one labeling, the share that also do in the other.

    Parameters
    ----------
    labels_true, labels_pred
        Labels of the same cells, each of shape (n_cells,).

    Returns
    -------
    float
        FMI in [0, 1].
    """
    a, b = _check_labelings(labels_true, labels_pred, name="fowlkes_mallows")
    return float(fowlkes_mallows_score(a, b))


def silhouette(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    metric: str = "euclidean",
    scale: bool = False,
) -> float:
    """Mean silhouette width of ``labels`` on the embedding ``x`` (sklearn).

    Parameters
    ----------
    x
        Embedding of shape (n_cells, n_dims).
    labels
        Label per row, shape (n_cells,); between 2 and n_cells - 1 distinct values.
    metric
        Distance of ``sklearn.metrics.silhouette_score``.
    scale
        ``True``: return ``(s + 1) / 2`` in [0, 1], scib's ``silhouette`` (the challenge's
        cell-type ASW); ``False``: the raw silhouette in [-1, 1].

    Returns
    -------
    float
        The (scaled) mean silhouette.
    """
    x, labels = _check_embedding(x, labels, name="silhouette")
    s = float(silhouette_score(x, labels, metric=metric))
    return (s + 1.0) / 2.0 if scale else s


def label_asw(x: np.ndarray, labels: np.ndarray, *, metric: str = "euclidean") -> float:
    """Cell-type ASW of the NeurIPS 2021 challenge: silhouette of cell types, ``(s + 1) / 2``.

    Same as :func:`silhouette` with ``scale=True``; 1 means compact, well-separated types.
    ``x`` has shape (n_cells, n_dims), ``labels`` shape (n_cells,).
    """
    return silhouette(x, labels, metric=metric, scale=True)


def davies_bouldin(x: np.ndarray, labels: np.ndarray) -> float:
    """Davies-Bouldin index of ``labels`` on the embedding ``x`` (sklearn); lower is better.

    The mean over clusters of the largest ratio (within-cluster scatter of the two) / (distance
    of their centroids) to any other cluster.

    Parameters
    ----------
    x
        Embedding of shape (n_cells, n_dims).
    labels
        Label per row, shape (n_cells,); between 2 and n_cells - 1 distinct values.

    Returns
    -------
    float
        Non-negative; 0 means point-like clusters.
    """
    x, labels = _check_embedding(x, labels, name="davies_bouldin")
    return float(davies_bouldin_score(x, labels))
