"""cluster_scores / leiden_scores against independent computations (sklearn, scipy, scanpy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    fowlkes_mallows_score,
    normalized_mutual_info_score,
)

from raymmi import metrics as M


def _blobs(seed: int = 0, n_types: int = 6, per: int = 30, spread: float = 1.6):
    """Overlapping blobs of unequal sizes: k-means seeds and Ward give different partitions."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per // 2, 2 * per, size=n_types)
    centers = rng.normal(scale=3.0, size=(n_types, 5))
    labels = np.repeat(np.arange(n_types), sizes)
    x = centers[labels] + rng.normal(scale=spread, size=(labels.size, 5))
    return x, np.array([f"t{i}" for i in labels])


def _sk(labels, clusters):
    return (
        adjusted_rand_score(labels, clusters),
        normalized_mutual_info_score(labels, clusters),
        fowlkes_mallows_score(labels, clusters),
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_kmeans_scores_are_sklearn_kmeans_with_that_seed(seed):
    x, labels = _blobs()
    scores = M.cluster_scores(x, labels, n_clusters=6, seed=seed)
    clusters = KMeans(n_clusters=6, n_init=10, random_state=seed).fit_predict(x)
    np.testing.assert_allclose(tuple(scores.kmeans), _sk(labels, clusters), rtol=1e-12)


def test_kmeans_uses_the_seed():
    # On overlapping blobs some seed gives another partition; the scores must follow it.
    x, labels = _blobs(spread=2.5)
    by_seed = {s: M.cluster_scores(x, labels, n_clusters=6, seed=s).kmeans.ari for s in range(8)}
    expected = {
        s: adjusted_rand_score(labels, KMeans(6, n_init=10, random_state=s).fit_predict(x))
        for s in range(8)
    }
    assert len(set(np.round(list(expected.values()), 12))) > 1
    np.testing.assert_allclose(list(by_seed.values()), list(expected.values()), rtol=1e-12)


def test_ward_is_scipy_ward_linkage_cut_at_k():
    x, labels = _blobs(seed=1)
    scores = M.cluster_scores(x, labels, n_clusters=6, seed=0)
    clusters = fcluster(linkage(x, method="ward"), t=6, criterion="maxclust")
    assert len(np.unique(clusters)) == 6
    np.testing.assert_allclose(tuple(scores.ward), _sk(labels, clusters), rtol=1e-12)
    flat = scores.flat()
    assert set(flat) == {f"{m}_{s}" for m in ("kmeans", "ward") for s in ("ari", "nmi", "fmi")}
    assert flat["ward_ari"] == scores.ward.ari


def test_perfect_and_random_embeddings():
    x, labels = _blobs(spread=0.01)
    perfect = M.cluster_scores(x, labels, n_clusters=6)
    assert perfect.kmeans == pytest.approx((1.0, 1.0, 1.0))
    assert perfect.ward == pytest.approx((1.0, 1.0, 1.0))
    noise = np.random.default_rng(0).normal(size=x.shape)
    assert M.cluster_scores(noise, labels, n_clusters=6).ward.ari < 0.1


def test_leiden_scores_match_scanpy_leiden_at_the_best_resolution():
    import anndata as ad
    import scanpy as sc

    x, labels = _blobs(seed=2, spread=2.0)
    resolutions = (0.1, 0.5, 1.0, 2.0)
    got = M.leiden_scores(x, labels, resolutions=resolutions)
    adata = ad.AnnData(x.astype(np.float32))
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X", method="umap")
    by_resolution = {}
    for r in resolutions:
        sc.tl.leiden(
            adata, resolution=r, flavor="igraph", n_iterations=2, directed=False, random_state=0
        )
        clusters = adata.obs["leiden"].to_numpy()
        by_resolution[r] = (normalized_mutual_info_score(labels, clusters), clusters)
    best = max(resolutions, key=lambda r: by_resolution[r][0])  # first of the best
    nmi, clusters = by_resolution[best]
    assert got.resolution == best
    assert got.nmi == pytest.approx(nmi, abs=1e-9)
    assert got.ari == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-9)
    assert got.n_clusters == len(np.unique(clusters))
    # The scan keeps the best: no single resolution of the list scores higher.
    for r in resolutions:
        assert M.leiden_scores(x, labels, resolutions=(r,)).nmi <= got.nmi + 1e-12


def test_bad_inputs_name_the_problem():
    x, labels = _blobs()
    with pytest.raises(ValueError, match="one label per row"):
        M.cluster_scores(x, labels[:-1], n_clusters=6)
    with pytest.raises(ValueError, match="n_clusters"):
        M.cluster_scores(x, labels, n_clusters=1)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.leiden_scores(bad, labels)
