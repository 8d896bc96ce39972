"""Clustering agreement and quality metrics against sklearn, and their input checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    davies_bouldin_score,
    fowlkes_mallows_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from raymmi import metrics as M


def _labeled_blobs(seed: int = 0, n: int = 90):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c"], n // 3)
    centers = {"a": (0.0, 0.0), "b": (5.0, 0.0), "c": (0.0, 5.0)}
    x = np.array([centers[label] for label in labels]) + rng.normal(size=(n, 2))
    noisy = labels.copy()
    flip = rng.random(n) < 0.2
    noisy[flip] = rng.choice(["a", "b", "c", "d"], size=flip.sum())
    return x, labels, noisy


def test_agreement_scores_are_sklearn():
    _, labels, noisy = _labeled_blobs()
    for method in ("arithmetic", "geometric", "min", "max"):
        got = M.normalized_mutual_info(labels, noisy, average_method=method)
        assert got == pytest.approx(
            normalized_mutual_info_score(labels, noisy, average_method=method)
        )
    assert M.fowlkes_mallows(labels, noisy) == pytest.approx(fowlkes_mallows_score(labels, noisy))
    assert 0.3 < M.normalized_mutual_info(labels, noisy) < 1.0


def test_agreement_hand_cases():
    a = np.array([0, 0, 1, 1])
    assert M.normalized_mutual_info(a, np.array(["x", "x", "y", "y"])) == pytest.approx(1.0)
    # pairs sharing a label: truth {01, 23}, prediction {01}; precision 1, recall 1/2
    assert M.fowlkes_mallows(a, np.array([0, 0, 1, 2])) == pytest.approx(np.sqrt(0.5))


def test_quality_scores_are_sklearn():
    x, labels, _ = _labeled_blobs(1)
    s = silhouette_score(x, labels)
    assert M.silhouette(x, labels) == pytest.approx(s)
    assert M.silhouette(x, labels, scale=True) == pytest.approx((s + 1) / 2)
    assert M.label_asw(x, labels) == pytest.approx((s + 1) / 2)
    assert M.silhouette(x, labels, metric="cosine") == pytest.approx(
        silhouette_score(x, labels, metric="cosine")
    )
    assert M.davies_bouldin(x, labels) == pytest.approx(davies_bouldin_score(x, labels))


def test_quality_moves_with_separation():
    x, labels, _ = _labeled_blobs(2)
    centers = np.array([x[labels == g].mean(axis=0) for g in labels])
    far, near = x + 2 * centers, x - 0.8 * centers  # same noise, centers 3x vs 0.2x apart
    assert M.silhouette(far, labels) > M.silhouette(near, labels)
    assert M.davies_bouldin(far, labels) < M.davies_bouldin(near, labels)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.normalized_mutual_info([0, 1], [0, 1, 1]), "shape"),
        (lambda: M.normalized_mutual_info([0, 1], [0, 1], average_method="mean"), "not one"),
        (lambda: M.fowlkes_mallows([], []), "non-empty"),
        (lambda: M.silhouette(np.zeros((4, 2)), np.zeros(3)), "one label per row"),
        (lambda: M.silhouette(np.arange(8.0).reshape(4, 2), np.zeros(4)), "distinct labels"),
        (lambda: M.davies_bouldin(np.arange(8.0).reshape(4, 2), np.arange(4)), "n - 1 = 3"),
        (
            lambda: M.silhouette(np.array([[0.0], [np.nan], [1.0]]), np.array([0, 1, 1])),
            "NaN",
        ),
    ],
)
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
