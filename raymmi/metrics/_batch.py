"""Batch-mixing metrics on an embedding: batch ASW, iLISI, graph connectivity, ARI.

Definitions follow scib (Luecken et al. 2022, ``scib/metrics``) and harmonypy's LISI
(Korsunsky et al. 2019, ``harmonypy/lisi.py``); each function names the one it follows.
numpy, scipy and sklearn only: no Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_samples, silhouette_score
from sklearn.neighbors import NearestNeighbors

from raymmi.metrics._neighbors import largest_component_share

# harmonypy compute_simpson: bisection tolerance on the entropy and number of tries.
_LISI_TOL = 1e-5
_LISI_TRIES = 50


def _check_rows(x: np.ndarray, labels: np.ndarray, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        msg = (
            f"{name} needs x of shape (n, d) and labels of shape (n,); got x {x.shape} and "
            f"labels {labels.shape}; pass one label per row of x"
        )
        raise ValueError(msg)
    return x, labels


def batch_silhouette(x: np.ndarray, batch: np.ndarray, *, metric: str = "euclidean") -> float:
    """Signed silhouette of the batch labels: high (up to 1) means batches form blocks.

    This is sklearn's ``silhouette_score(x, batch)``; it measures batch *separation*, the
    opposite reading of :func:`batch_asw`.

    Parameters
    ----------
    x
        Embedding of shape (n_wells, n_dims).
    batch
        Batch label per row, shape (n_wells,); at least two distinct values.

    Returns
    -------
    float
        Mean silhouette in [-1, 1]; NaN with fewer than two batches.
    """
    x, batch = _check_rows(x, batch, name="batch_silhouette")
    n_labels = len(np.unique(batch))
    if n_labels < 2 or n_labels >= len(batch):
        return float("nan")
    return float(silhouette_score(x, batch, metric=metric))


def batch_asw(
    x: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    *,
    metric: str = "euclidean",
    scale: bool = True,
) -> float:
    """Batch average silhouette width, scib's ``silhouette_batch``: 1 means batches mixed.

    Within each label group (cell type; here compound, ``DMSO`` for negcon wells) the
    silhouette of every row is taken with respect to the *batch* labels of that group; with
    ``scale`` each becomes ``1 - |s|``. The result is the mean over groups of the group means.
    Groups with one batch, or with as many batches as rows, are skipped (as in scib).

    Parameters
    ----------
    x
        Embedding of shape (n_wells, n_dims).
    batch
        Batch label per row, shape (n_wells,).
    labels
        Biological label per row, shape (n_wells,).
    metric
        Distance of ``sklearn.metrics.silhouette_samples``.
    scale
        ``True``: ``1 - |s|`` (scib's default). ``False``: ``|s|``.

    Returns
    -------
    float
        Batch ASW in [0, 1]; NaN when no group has two batches.
    """
    x, batch = _check_rows(x, batch, name="batch_asw")
    labels = np.asarray(labels)
    means = []
    for group in np.unique(labels):
        rows = labels == group
        n_batches = len(np.unique(batch[rows]))
        if n_batches == 1 or n_batches == rows.sum():
            continue
        s = np.abs(silhouette_samples(x[rows], batch[rows], metric=metric))
        means.append(float(np.mean(1.0 - s if scale else s)))
    return float(np.mean(means)) if means else float("nan")


def _simpson(distances: np.ndarray, codes: np.ndarray, n_labels: int, perplexity: float) -> float:
    """Harmonypy ``compute_simpson`` for one row: Gaussian weights bisected to ``perplexity``."""
    log_u = np.log(perplexity)
    beta, beta_min, beta_max = 1.0, -np.inf, np.inf

    def weights(b: float) -> tuple[np.ndarray, float]:
        p = np.exp(-distances * b)
        total = p.sum()
        if total == 0:
            return p, 0.0
        h = np.log(total) + b * float(np.sum(distances * p)) / total
        return p / total, h

    p, h = weights(beta)
    for _ in range(_LISI_TRIES):
        diff = h - log_u
        if abs(diff) < _LISI_TOL:
            break
        if diff > 0:
            beta_min = beta
            beta = beta * 2 if beta_max == np.inf else (beta + beta_max) / 2
        else:
            beta_max = beta
            beta = beta / 2 if beta_min == -np.inf else (beta + beta_min) / 2
        p, h = weights(beta)
    if h == 0:
        return float("nan")
    mass = np.bincount(codes, weights=p, minlength=n_labels)
    return float(np.sum(mass**2))


def lisi(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    perplexity: float = 30.0,
    n_neighbors: int | None = None,
) -> np.ndarray:
    """Local inverse Simpson's index of ``labels`` per row (harmonypy ``compute_lisi``).

    For each row, its ``n_neighbors`` nearest other rows (Euclidean) get Gaussian weights whose
    bandwidth is bisected until their entropy is ``log(perplexity)``; LISI is
    ``1 / sum_b (sum of weights of neighbours with label b) ** 2``: the effective number of
    labels around the row (1 to the number of labels).

    Parameters
    ----------
    x
        Embedding of shape (n_wells, n_dims).
    labels
        Label per row, shape (n_wells,).
    perplexity
        Effective number of neighbours of the Gaussian kernel.
    n_neighbors
        Neighbours per row, excluding the row itself; default ``3 * perplexity - 1``
        (harmonypy asks sklearn for ``3 * perplexity`` neighbours including the row itself),
        capped at ``n_wells - 1``.

    Returns
    -------
    numpy.ndarray
        LISI per row, shape (n_wells,), float64; NaN where the kernel degenerates.
    """
    x, labels = _check_rows(x, labels, name="lisi")
    n = x.shape[0]
    if n < 2:
        msg = f"lisi needs at least 2 rows, got {n}"
        raise ValueError(msg)
    k = int(3 * perplexity - 1) if n_neighbors is None else int(n_neighbors)
    k = max(1, min(k, n - 1))
    _, codes = np.unique(labels, return_inverse=True)
    n_labels = int(codes.max()) + 1
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    # drop each row itself (column 0 unless exact duplicates tie with it)
    own = indices == np.arange(n)[:, None]
    keep = ~own
    keep[own.sum(axis=1) == 0, -1] = False
    distances = distances[keep].reshape(n, k)
    indices = indices[keep].reshape(n, k)
    out = np.empty(n)
    for i in range(n):
        simpson = _simpson(distances[i], codes[indices[i]], n_labels, perplexity)
        out[i] = 1.0 / simpson if np.isfinite(simpson) and simpson > 0 else np.nan
    return out


def ilisi(
    x: np.ndarray,
    batch: np.ndarray,
    *,
    perplexity: float = 30.0,
    n_neighbors: int | None = None,
    scale: bool = True,
) -> float:
    """Integration LISI of the batch labels: median per-row :func:`lisi` over ``batch``.

    With ``scale`` (scib's ``ilisi_graph``) the median is mapped to [0, 1] by
    ``(median - 1) / (n_batches - 1)``: 0 means every neighbourhood holds one batch, 1 means
    all batches are equally mixed everywhere.

    Parameters
    ----------
    x
        Embedding of shape (n_wells, n_dims).
    batch
        Batch label per row, shape (n_wells,).
    perplexity, n_neighbors
        As in :func:`lisi`.
    scale
        Map to [0, 1] as scib does; ``False`` returns the median LISI itself.

    Returns
    -------
    float
        The (scaled) median iLISI; NaN with fewer than two batches when ``scale``.
    """
    values = lisi(x, batch, perplexity=perplexity, n_neighbors=n_neighbors)
    median = float(np.nanmedian(values))
    if not scale:
        return median
    n_batches = len(np.unique(np.asarray(batch)))
    if n_batches < 2:
        return float("nan")
    return (median - 1.0) / (n_batches - 1.0)


def graph_connectivity(x: np.ndarray, labels: np.ndarray, *, n_neighbors: int = 15) -> float:
    """Scib's graph connectivity: mean over labels of the largest connected share.

    A k-nearest-neighbour graph (``n_neighbors``, undirected) is built on all rows; for each
    label, the subgraph of its rows is split into connected components and the share of its
    rows in the largest one is taken. 1 means every label forms one connected piece.

    Parameters
    ----------
    x
        Embedding of shape (n_wells, n_dims).
    labels
        Label per row, shape (n_wells,).
    n_neighbors
        Neighbours per row (excluding itself).

    Returns
    -------
    float
        Graph connectivity in (0, 1].
    """
    x, labels = _check_rows(x, labels, name="graph_connectivity")
    k = max(1, min(n_neighbors, x.shape[0] - 1))
    graph = NearestNeighbors(n_neighbors=k).fit(x).kneighbors_graph(x, mode="connectivity")
    return largest_component_share(graph, labels)


def adjusted_rand(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same rows (sklearn), shape (n,) each."""
    a, b = np.asarray(labels_true), np.asarray(labels_pred)
    if a.shape != b.shape or a.ndim != 1:
        msg = (
            f"adjusted_rand needs two labelings of shape (n,); got {a.shape} and {b.shape}; "
            "pass one label per row in both"
        )
        raise ValueError(msg)
    return float(adjusted_rand_score(a, b))


def kmeans_ari(
    x: np.ndarray, labels: np.ndarray, *, n_clusters: int | None = None, seed: int = 0
) -> float:
    """ARI between k-means clusters of ``x`` and ``labels`` (scib's ARI with k-means).

    For batch labels a low value means batches are mixed; for biological labels a high value
    means they are kept apart.

    Parameters
    ----------
    x
        Embedding of shape (n_wells, n_dims).
    labels
        Label per row, shape (n_wells,).
    n_clusters
        Clusters of k-means; default the number of distinct labels.
    seed
        Seed of k-means.

    Returns
    -------
    float
        Adjusted Rand index in [-0.5, 1].
    """
    x, labels = _check_rows(x, labels, name="kmeans_ari")
    k = n_clusters or len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return adjusted_rand(labels, clusters)
