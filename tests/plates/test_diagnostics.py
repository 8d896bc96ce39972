"""Plate diagnostics as pure functions: plate matrix, suggested batches, GMM, held-out check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from raymmi import testing
from raymmi.plates import _diagnostics as D

SPEC = testing.PlateSetSpec(
    n_plates=8, n_batches=2, wells_per_plate=96, n_features=40, n_compounds=20,
    negcon_wells_per_plate=16, compound_effect_scale=2.0, seed=11,
)  # fmt: skip


@pytest.fixture(scope="module")
def wells() -> pd.DataFrame:
    return testing.generate_plates(SPEC)


def _medians(frame: pd.DataFrame) -> pd.DataFrame:
    features = testing.feature_names(SPEC)
    neg = frame[frame["Metadata_is_negcon"]]
    return neg.groupby("Metadata_Plate")[features].median()


def test_plate_correlation_is_pearson_of_standardized_medians(wells):
    medians = _medians(wells)
    corr = D.plate_correlation(medians)
    values = medians.to_numpy(dtype=float)
    values = values[:, values.std(axis=0) > 0]
    z = (values - values.mean(axis=0)) / values.std(axis=0)
    expected = pd.DataFrame(z.T).corr().to_numpy()
    np.testing.assert_allclose(corr.to_numpy(), expected, atol=1e-12)
    assert list(corr.index) == list(medians.index)


def test_suggested_batches_recover_planted_batches(wells):
    corr = D.plate_correlation(_medians(wells))
    batch = wells.groupby("Metadata_Plate")["Metadata_Batch"].first()
    auto = D.suggest_batches(corr)
    given = D.suggest_batches(corr, n_batches=2)
    assert D.batch_recovery(given, batch) == pytest.approx(1.0)
    assert D.batch_recovery(auto, batch) == pytest.approx(
        adjusted_rand_score(batch.reindex(auto.index), auto)
    )
    assert auto.nunique() == 2


def test_outlier_plates_flags_a_broken_plate(wells):
    medians = _medians(wells)
    rng = np.random.default_rng(0)
    broken = medians.copy()
    broken.iloc[3] = broken.iloc[3] * rng.lognormal(0, 1.0, broken.shape[1])
    table = D.outlier_plates(D.plate_correlation(broken), threshold=3.5)
    assert table.iloc[0]["plate"] == medians.index[3]
    assert table["outlier"].sum() >= 1
    assert list(table.columns) == ["plate", "median_correlation", "robust_z", "outlier"]


def test_gmm_by_bic_and_scores():
    rng = np.random.default_rng(3)
    one = rng.normal(size=(300, 2))
    two = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 12])
    assert D.fit_gmm(one, seed=0).n_components == 1
    gmm = D.fit_gmm(two, seed=0)
    assert gmm.n_components == 2
    points = np.array([[0.0, 0.0], [6.0, 6.0], [40.0, 40.0]])
    scores = D.score_wells(gmm, points)
    assert scores[0] > scores[1] > scores[2]
    np.testing.assert_allclose(scores, gmm.score_samples(points))


def test_embedding_ranks_active_compounds_as_outliers(wells):
    features = testing.feature_names(SPEC)
    x = wells[features].to_numpy(dtype=float)
    neg = wells["Metadata_is_negcon"].to_numpy()
    emb = D.fit_embedding(x[neg])
    assert emb.transform(x).shape == (len(x), 2)
    gmm = D.fit_gmm(emb.transform(x[neg]), seed=0)
    scores = D.score_wells(gmm, emb.transform(x[~neg]))
    top = wells.loc[~neg, "Metadata_Compound"].to_numpy()[np.argsort(scores)[:20]]
    assert set(top) <= set(testing.active_compounds(SPEC))


def test_heldout_batch_models_and_auroc():
    rng = np.random.default_rng(4)
    n = 400
    batch = np.repeat(["B1", "B2"], n // 2)
    neg = rng.random(n) < 0.3
    x = rng.normal(size=(n, 5))
    x[~neg, 0] += 2.0  # treatment signal shared by both batches
    x[batch == "B2"] += 5.0  # batch shift the standardization inside the model cannot undo
    models = D.heldout_batch_models(x, neg, batch, seed=0)
    assert sorted(models) == ["B1", "B2"]
    prob = np.empty(n)
    for b, model in models.items():
        prob[batch == b] = model.predict_proba(x[batch == b])[:, 1]
    table = D.heldout_auroc(prob, neg, batch, batches=["B1", "B2"])
    assert list(table["heldout_batch"]) == ["B1", "B2"]
    assert (table["auroc"] > 0.8).all()
    assert table["n_negcon"].sum() == neg.sum()
    with pytest.raises(ValueError, match="at least 2 batches"):
        D.heldout_batch_models(x, neg, np.full(n, "B1"))


def test_pca_and_umap_embeddings_shapes():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 12)) * np.arange(1, 13)
    pcs = D.pca_embedding(x, n_components=50)
    assert pcs.shape == (60, 12)
    # z-scored first: the variance is spread, not dominated by the widest feature
    assert pcs[:, 0].var() < 3 * pcs[:, 1].var()
    coords = D.umap_embedding(x[:30], seed=0)
    assert coords.shape == (30, 2) and np.isfinite(coords).all()
