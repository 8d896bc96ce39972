"""Agreement of an embedding's clusters with known labels: the models' side-by-side protocol.

Two procedures, the ones the model benchmarks (``jobs/bench_models.py``) apply to every
embedding alike:

- :func:`cluster_scores`: k-means (``n_init=10``, ``random_state=seed``) and Ward
  agglomerative clustering with a fixed number of clusters (UMINT's protocol: ``k`` = the
  number of cell types), each scored by ARI, NMI and FMI against the labels;
- :func:`leiden_scores`: Leiden clusters of the 15-NN graph at every resolution 0.1 ... 2.0,
  keeping the resolution of best NMI (scib's ``opt_louvain``; SAILERX's protocol), with the
  ARI of that same clustering.

No Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans

from raymmi.metrics._batch import adjusted_rand
from raymmi.metrics._cluster import fowlkes_mallows, normalized_mutual_info
from raymmi.metrics._embed import CHALLENGE_RESOLUTIONS, optimal_leiden_nmi


class Agreement(NamedTuple):
    """ARI, NMI and FMI of one clustering against the labels."""

    ari: float
    nmi: float
    fmi: float


class ClusterScores(NamedTuple):
    """:func:`cluster_scores`: the agreement of k-means and of Ward clusters."""

    kmeans: Agreement
    ward: Agreement

    def flat(self) -> dict[str, float]:
        """``{"kmeans_ari": ..., "ward_fmi": ...}``: the six scores as one flat mapping."""
        return {
            f"{method}_{name}": float(value)
            for method, scores in (("kmeans", self.kmeans), ("ward", self.ward))
            for name, value in scores._asdict().items()
        }


class LeidenScores(NamedTuple):
    """:func:`leiden_scores`: ARI and NMI at the resolution of best NMI, and its clusters."""

    ari: float
    nmi: float
    resolution: float
    n_clusters: int


def _check(
    embedding: np.ndarray, labels: np.ndarray, *, name: str
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embedding, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 3:
        msg = (
            f"{name} needs an embedding of shape (n_cells >= 3, n_dims) and one label per row; "
            f"got embedding {x.shape} and labels {y.shape}"
        )
        raise ValueError(msg)
    if not np.isfinite(x).all():
        msg = f"{name}: the embedding holds NaN or infinite values"
        raise ValueError(msg)
    return x, y


def agreement(labels: np.ndarray, clusters: np.ndarray) -> Agreement:
    """ARI, NMI (arithmetic) and FMI of ``clusters`` against ``labels``, shape (n,) each."""
    return Agreement(
        adjusted_rand(labels, clusters),
        normalized_mutual_info(labels, clusters),
        fowlkes_mallows(labels, clusters),
    )


def cluster_scores(
    embedding: np.ndarray, labels: np.ndarray, *, n_clusters: int, seed: int = 0
) -> ClusterScores:
    """ARI/NMI/FMI of k-means and Ward clusters of ``embedding`` against ``labels``.

    Parameters
    ----------
    embedding
        Shape (n_cells, n_dims).
    labels
        Known label per cell (cell type), shape (n_cells,).
    n_clusters
        Clusters of both methods (UMINT's protocol: the number of cell types), 2 to n_cells.
    seed
        ``random_state`` of k-means (``n_init=10``); Ward is deterministic.

    Returns
    -------
    ClusterScores
        ``kmeans`` and ``ward``, each an :class:`Agreement`.
    """
    x, y = _check(embedding, labels, name="cluster_scores")
    if not 2 <= n_clusters <= x.shape[0]:
        msg = f"cluster_scores: n_clusters={n_clusters!r} must be in [2, {x.shape[0]}]"
        raise ValueError(msg)
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x)
    ward = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(x)
    return ClusterScores(agreement(y, km), agreement(y, ward))


def leiden_scores(
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    n_neighbors: int = 15,
    resolutions: Sequence[float] = CHALLENGE_RESOLUTIONS,
    seed: int = 0,
) -> LeidenScores:
    """ARI and NMI of Leiden clusters at the resolution (of ``resolutions``) of best NMI.

    Parameters
    ----------
    embedding
        Shape (n_cells, n_dims).
    labels
        Known label per cell, shape (n_cells,).
    n_neighbors
        Neighbours per cell of the kNN graph (scanpy's default 15).
    resolutions
        Leiden resolutions tried, default 0.1, 0.2, ... 2.0; the first of best NMI is kept.
    seed
        Seed of the graph (when approximate) and of Leiden.

    Returns
    -------
    LeidenScores
        ARI and NMI of that clustering, its resolution and its number of clusters.
    """
    x, y = _check(embedding, labels, name="leiden_scores")
    best = optimal_leiden_nmi(x, y, resolutions=resolutions, n_neighbors=n_neighbors, seed=seed)
    return LeidenScores(
        adjusted_rand(y, best.clusters),
        best.nmi,
        best.resolution,
        len(np.unique(best.clusters)),
    )
