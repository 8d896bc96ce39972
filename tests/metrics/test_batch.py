"""Batch-mixing metrics against sklearn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import adjusted_rand_score, silhouette_samples, silhouette_score

from raymmi import metrics as M


def _blobs(shift: float, *, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = np.repeat(["a", "b"], n // 2)
    labels = np.tile(["t1", "t2", "t3"], n // 3)
    x = rng.normal(size=(n, 4))
    x[batch == "b", 0] += shift
    x[labels == "t2", 1] += 6.0
    x[labels == "t3", 2] += 6.0
    return x, batch, labels


def test_batch_silhouette_is_sklearn_silhouette():
    x, batch, _ = _blobs(4.0)
    assert M.batch_silhouette(x, batch) == pytest.approx(silhouette_score(x, batch))
    assert np.isnan(M.batch_silhouette(x, np.full(len(x), "a")))


def test_batch_asw_is_scib_definition():
    x, batch, labels = _blobs(4.0)
    expected = np.mean(
        [
            np.mean(1 - np.abs(silhouette_samples(x[labels == g], batch[labels == g])))
            for g in np.unique(labels)
        ]
    )
    assert M.batch_asw(x, batch, labels) == pytest.approx(expected)
    unscaled = M.batch_asw(x, batch, labels, scale=False)
    assert unscaled == pytest.approx(1 - expected)


def test_batch_asw_skips_single_batch_groups():
    x, batch, labels = _blobs(4.0)
    keep = ~((labels == "t1") & (batch == "b"))  # t1 now lives in batch a only: skipped
    x, batch, labels = x[keep], batch[keep], labels[keep]
    expected = np.mean(
        [
            np.mean(1 - np.abs(silhouette_samples(x[labels == g], batch[labels == g])))
            for g in ("t2", "t3")
        ]
    )
    assert M.batch_asw(x, batch, labels) == pytest.approx(expected)
    assert np.isnan(M.batch_asw(x[labels == "t1"], batch[labels == "t1"], labels[labels == "t1"]))


def test_batch_metrics_move_with_mixing():
    mixed, separated = _blobs(0.0), _blobs(8.0)
    assert M.batch_asw(*mixed) > M.batch_asw(*separated)
    assert M.ilisi(mixed[0], mixed[1], perplexity=5) > M.ilisi(*separated[:2], perplexity=5)
    assert M.batch_silhouette(*separated[:2]) > 0.3
    assert abs(M.batch_silhouette(*mixed[:2])) < 0.1


def test_lisi_hand_case_equidistant_neighbours():
    # a regular tetrahedron: each point has its 3 neighbours at the same distance, so the
    # Gaussian weights are 1/3 each whatever the bandwidth. Point 0 (batch a) sees a, b, b:
    # Simpson = (1/3)^2 + (2/3)^2 = 5/9, LISI = 9/5.
    x = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    batch = np.array(["a", "a", "b", "b"])
    got = M.lisi(x, batch, perplexity=2.0, n_neighbors=3)
    np.testing.assert_allclose(got, [1.8, 1.8, 1.8, 1.8], rtol=1e-9)
    # scaled iLISI (scib): (1.8 - 1) / (2 - 1)
    assert M.ilisi(x, batch, perplexity=2.0, n_neighbors=3) == pytest.approx(0.8)
    assert M.ilisi(x, batch, perplexity=2.0, n_neighbors=3, scale=False) == pytest.approx(1.8)


def test_lisi_hand_case_perplexity_calibration():
    # two neighbours at different distances: the bandwidth is bisected until the entropy of
    # (p, 1 - p) is log(perplexity), so p solves -p log p - (1-p) log(1-p) = log(1.5); with the
    # two neighbours in different batches LISI = 1 / (p^2 + (1 - p)^2).
    x = np.array([[0.0], [1.0], [3.0]])
    batch = np.array(["a", "a", "b"])
    perplexity = 1.5

    def entropy_gap(p: float) -> float:
        return -p * np.log(p) - (1 - p) * np.log(1 - p) - np.log(perplexity)

    p = brentq(entropy_gap, 0.5, 1 - 1e-12)
    # point 0: nearest is point 1 (a), then point 2 (b): weights p (a), 1 - p (b)
    expected = 1.0 / (p**2 + (1 - p) ** 2)
    got = M.lisi(x, batch, perplexity=perplexity, n_neighbors=2)
    assert got[0] == pytest.approx(expected, rel=1e-4)


def test_lisi_default_neighbours_follow_harmonypy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    batch = rng.choice(["a", "b", "c"], size=200)
    # harmonypy: 3 * perplexity neighbours including the point itself
    a = M.lisi(x, batch, perplexity=10)
    b = M.lisi(x, batch, perplexity=10, n_neighbors=29)
    np.testing.assert_allclose(a, b)
    assert 1.0 <= np.nanmin(a) and np.nanmax(a) <= 3.0


def test_graph_connectivity():
    rng = np.random.default_rng(2)
    # label "split" lives in two far-apart halves -> largest component holds half of it
    x = np.concatenate([rng.normal(size=(20, 2)), rng.normal(size=(20, 2)) + 100])
    x = np.concatenate([x, rng.normal(size=(20, 2)) + 50])
    labels = np.array(["split"] * 40 + ["whole"] * 20)
    assert M.graph_connectivity(x, labels, n_neighbors=5) == pytest.approx((0.5 + 1.0) / 2)


def test_ari_helpers_match_sklearn():
    a = np.array([0, 0, 1, 1, 2, 2])
    b = np.array([1, 1, 0, 0, 0, 2])
    assert M.adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b))
    x, batch, _ = _blobs(20.0)
    assert M.kmeans_ari(x[:, :1], batch) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labelings of shape"):
        M.adjusted_rand(a, b[:3])


def test_bad_shapes_name_the_arguments():
    with pytest.raises(ValueError, match="x of shape"):
        M.batch_asw(np.zeros((3, 2)), np.zeros(4), np.zeros(4))
