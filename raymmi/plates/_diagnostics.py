"""Plate diagnostics: plate correlation, suggested batches, outliers, held-out-batch check.

Pure functions on arrays and small frames (numpy, scipy, pandas, sklearn): no Ray, no MLflow,
no file I/O. The Ray layer computes the per-plate medians and broadcasts the fitted embedding
and mixture; everything here is either plates x plates or a seeded sample of wells.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, roc_auc_score, silhouette_score
from sklearn.mixture import GaussianMixture


def plate_correlation(medians: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation between plates of their negcon median profiles.

    Each feature is first standardized *across plates* (minus its mean over plates, divided by
    its sd over plates), so that the correlation reflects how plates deviate together, not the
    raw magnitudes of CellProfiler features (which would make every pair correlate near 1).
    Features constant over plates are dropped.

    Parameters
    ----------
    medians
        Per-plate median profile of the negcon wells, shape (n_plates, n_features), index =
        plate ids.

    Returns
    -------
    pandas.DataFrame
        Correlation matrix of shape (n_plates, n_plates), index and columns = plate ids, in the
        order of ``medians``. Entries are NaN when no feature varies.
    """
    values = medians.to_numpy(dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        msg = f"plate_correlation needs at least 2 plates, got medians of shape {values.shape}"
        raise ValueError(msg)
    finite = np.isfinite(values).all(axis=0)
    values = values[:, finite]
    sd = values.std(axis=0)
    values = values[:, sd > 0]
    if values.shape[1] < 2:
        corr = np.full((len(medians), len(medians)), np.nan)
    else:
        z = (values - values.mean(axis=0)) / values.std(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(z)
    return pd.DataFrame(corr, index=medians.index, columns=medians.index)


def _distance(corr: pd.DataFrame) -> np.ndarray:
    d = 1.0 - np.nan_to_num(corr.to_numpy(dtype=np.float64), nan=0.0)
    d = (d + d.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, 2.0)


def suggest_batches(
    corr: pd.DataFrame,
    *,
    n_batches: int | None = None,
    max_batches: int = 10,
    method: str = "average",
) -> pd.Series:
    """Cluster plates into suggested batches by hierarchical clustering of ``1 - corr``.

    Parameters
    ----------
    corr
        Plate correlation matrix of shape (n_plates, n_plates) (:func:`plate_correlation`).
    n_batches
        Number of clusters; default: the number in 2 ... ``max_batches`` with the highest
        silhouette on the precomputed distances.
    max_batches
        Upper bound of the search when ``n_batches`` is not given.
    method
        Linkage of ``scipy.cluster.hierarchy.linkage`` (``average``, ``complete`` ...).

    Returns
    -------
    pandas.Series
        Suggested batch per plate (``S1`` ...), index = plate ids in ``corr`` order.
    """
    n = len(corr)
    if n < 2:
        return pd.Series(["S1"] * n, index=corr.index, name="suggested_batch")
    dist = _distance(corr)
    tree = linkage(squareform(dist, checks=False), method=method)
    if n_batches is not None:
        k = max(1, min(int(n_batches), n))
        labels = fcluster(tree, t=k, criterion="maxclust")
    else:
        best, labels = -np.inf, np.ones(n, dtype=int)
        for k in range(2, min(max_batches, n - 1) + 1):
            cand = fcluster(tree, t=k, criterion="maxclust")
            if len(np.unique(cand)) < 2:
                continue
            score = silhouette_score(dist, cand, metric="precomputed")
            if score > best:
                best, labels = score, cand
    # name clusters by first appearance so that the output is stable
    order = {c: i for i, c in enumerate(dict.fromkeys(labels))}
    names = [f"S{order[c] + 1}" for c in labels]
    return pd.Series(names, index=corr.index, name="suggested_batch")


def batch_recovery(suggested: pd.Series, batch: pd.Series) -> float:
    """Adjusted Rand index between suggested batches and the given batch per plate.

    Parameters
    ----------
    suggested, batch
        Per plate, index = plate ids (aligned on the index), shape (n_plates,).
    """
    batch = batch.reindex(suggested.index)
    return float(adjusted_rand_score(batch.astype(str), suggested.astype(str)))


def outlier_plates(corr: pd.DataFrame, *, threshold: float = 3.5) -> pd.DataFrame:
    """Plates whose median correlation to the other plates is unusually low.

    Score: robust z of each plate's median off-diagonal correlation
    (``(m - median(m)) / (1.4826 * MAD(m))``); a plate is an outlier below ``-threshold``.

    Parameters
    ----------
    corr
        Plate correlation matrix of shape (n_plates, n_plates).
    threshold
        Robust-z cut-off (3.5: Iglewicz and Hoaglin's modified z-score rule).

    Returns
    -------
    pandas.DataFrame
        One row per plate: ``plate``, ``median_correlation``, ``robust_z``, ``outlier``,
        sorted by ``robust_z`` (lowest first).
    """
    values = corr.to_numpy(dtype=np.float64).copy()
    np.fill_diagonal(values, np.nan)
    med = np.nanmedian(values, axis=1) if len(values) > 1 else np.full(len(values), np.nan)
    center = np.nanmedian(med)
    mad = 1.4826 * np.nanmedian(np.abs(med - center))
    z = (med - center) / mad if mad > 0 else np.zeros_like(med)
    out = pd.DataFrame(
        {
            "plate": corr.index.astype(str),
            "median_correlation": med,
            "robust_z": z,
            "outlier": z < -threshold,
        }
    )
    return out.sort_values("robust_z", kind="stable", ignore_index=True)


@dataclasses.dataclass(frozen=True)
class Embedding2D:
    """A linear 2-D embedding of profiles fitted on negcon wells, applicable to any well.

    ``transform(x) = ((x - center) / scale) @ components.T``: features standardized by the
    negcon sample, projected on its top two principal axes. Being linear, it is broadcast to
    every shard and applied there.

    Attributes
    ----------
    center, scale
        Per-feature location and spread, shape (n_features,).
    components
        Principal axes, shape (2, n_features).
    """

    center: np.ndarray
    scale: np.ndarray
    components: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Embed profiles of shape (n, n_features) into shape (n, 2), float64."""
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        return np.nan_to_num(z) @ self.components.T


def fit_embedding(negcon: np.ndarray) -> Embedding2D:
    """Fit :class:`Embedding2D` on negcon profiles of shape (n_negcon, n_features).

    Features with zero or non-finite spread get scale 1 (they only shift).
    """
    x = np.asarray(negcon, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        msg = f"fit_embedding needs at least 3 negcon wells of shape (n, d), got {x.shape}"
        raise ValueError(msg)
    center = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    center = np.nan_to_num(center)
    z = np.nan_to_num((x - center) / scale)
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    components = np.zeros((2, x.shape[1]))
    components[: min(2, len(vt))] = vt[:2]
    return Embedding2D(center=center, scale=scale, components=components)


def fit_gmm(points: np.ndarray, *, max_components: int = 5, seed: int = 0) -> GaussianMixture:
    """Gaussian mixture on negcon points, 1 ... ``max_components`` components chosen by BIC.

    Parameters
    ----------
    points
        Embedded negcon wells, shape (n_negcon, 2).
    max_components
        Largest number of components tried (capped at ``n_negcon // 10``, at least 1).
    seed
        Seed of sklearn's initialization.

    Returns
    -------
    sklearn.mixture.GaussianMixture
        The fitted mixture with the lowest BIC (full covariances).
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        msg = f"fit_gmm needs at least 3 points of shape (n, d), got {x.shape}"
        raise ValueError(msg)
    top = max(1, min(int(max_components), x.shape[0] // 10))
    best: GaussianMixture | None = None
    best_bic = np.inf
    for k in range(1, top + 1):
        gmm = GaussianMixture(n_components=k, covariance_type="full", random_state=seed)
        gmm.fit(x)
        bic = gmm.bic(x)
        if bic < best_bic:
            best, best_bic = gmm, bic
    assert best is not None
    return best


def score_wells(gmm: GaussianMixture, points: np.ndarray) -> np.ndarray:
    """Log-likelihood of points of shape (n, 2) under ``gmm``; shape (n,). Low = outlier."""
    x = np.asarray(points, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0)
    return np.asarray(gmm.score_samples(x), dtype=np.float64)


def umap_embedding(
    x: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.3, seed: int = 0
) -> np.ndarray:
    """UMAP (umap-learn) of sampled profiles, features z-scored over the sample first.

    Parameters
    ----------
    x
        Profiles of shape (n_wells, n_features).
    n_neighbors, min_dist
        UMAP settings (``n_neighbors`` capped at ``n_wells - 1``).
    seed
        ``random_state`` of UMAP (makes it deterministic, single-threaded).

    Returns
    -------
    numpy.ndarray
        Coordinates of shape (n_wells, 2), float32.
    """
    import umap

    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    if x.shape[0] < 4:
        msg = f"umap_embedding needs at least 4 wells, got {x.shape[0]}"
        raise ValueError(msg)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    reducer = umap.UMAP(
        n_neighbors=max(2, min(n_neighbors, x.shape[0] - 1)),
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,  # a fixed random_state makes UMAP single-threaded anyway
    )
    return np.asarray(reducer.fit_transform(z), dtype=np.float32)


def pca_embedding(x: np.ndarray, *, n_components: int = 50) -> np.ndarray:
    """PCA of profiles z-scored over the sample: the space of the batch metrics.

    As ``sc.pp.scale`` then ``sc.pp.pca``.

    Parameters
    ----------
    x
        Profiles of shape (n_wells, n_features).
    n_components
        Components kept (capped at ``min(n_wells, n_features)``).

    Returns
    -------
    numpy.ndarray
        Scores of shape (n_wells, n_components), float64.
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    k = max(1, min(n_components, *z.shape))
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    return u[:, :k] * s[:k]


def heldout_batch_models(
    x: np.ndarray,
    negcon: np.ndarray,
    batch: np.ndarray,
    *,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict[str, LogisticRegression]:
    """One logistic regression (treated vs negcon) per batch, trained on all *other* batches.

    Features are standardized inside the model pipeline by the training rows' mean and sd.
    Classes are balanced (negcon wells are the minority).

    Parameters
    ----------
    x
        Profiles of shape (n_wells, n_features).
    negcon
        Negcon flag per row, shape (n_wells,).
    batch
        Batch per row, shape (n_wells,); at least two distinct values.
    seed, max_iter
        Passed to ``LogisticRegression``.

    Returns
    -------
    dict
        Held-out batch → fitted ``sklearn.pipeline.Pipeline`` (scaler + logistic regression);
        ``predict_proba(x)[:, 1]`` is the probability of *treated*.

    Raises
    ------
    ValueError
        With fewer than two batches, or a training set without both classes.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    negcon = np.asarray(negcon, dtype=bool)
    batch = np.asarray(batch).astype(str)
    batches = np.unique(batch)
    if len(batches) < 2:
        msg = f"the held-out-batch check needs at least 2 batches, got {list(batches)}"
        raise ValueError(msg)
    models = {}
    for held in batches:
        train = batch != held
        y = ~negcon[train]
        if y.all() or not y.any():
            msg = f"training rows without batch {held!r} lack negcon or treated wells"
            raise ValueError(msg)
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=max_iter, class_weight="balanced", random_state=seed),
        )
        models[str(held)] = model.fit(x[train], y)
    return models


def heldout_auroc(
    scores: np.ndarray, negcon: np.ndarray, batch: np.ndarray, *, batches: Sequence[str]
) -> pd.DataFrame:
    """AUROC of treated vs negcon per held-out batch, from each well's held-out score.

    Parameters
    ----------
    scores
        Per well, the probability of *treated* from the model that did not see its batch,
        shape (n_wells,).
    negcon
        Negcon flag per row, shape (n_wells,).
    batch
        Batch per row, shape (n_wells,).
    batches
        Batches to report, in order.

    Returns
    -------
    pandas.DataFrame
        ``heldout_batch``, ``auroc`` (NaN if the batch lacks a class), ``n_negcon``,
        ``n_treated``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    negcon = np.asarray(negcon, dtype=bool)
    batch = np.asarray(batch).astype(str)
    rows = []
    for held in batches:
        sel = batch == held
        y = ~negcon[sel]
        auroc = roc_auc_score(y, scores[sel]) if 0 < y.sum() < y.size else float("nan")
        rows.append(
            {
                "heldout_batch": held,
                "auroc": float(auroc),
                "n_negcon": int((~y).sum()),
                "n_treated": int(y.sum()),
            }
        )
    return pd.DataFrame(rows, columns=["heldout_batch", "auroc", "n_negcon", "n_treated"])
