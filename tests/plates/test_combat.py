"""ComBat from per-batch moments against scanpy and sva's formulas (pure, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raymmi import plates, testing
from raymmi.schema import BATCH, PLATE, RaymmiError

JUMP = "cellpainting/jump_8plates_3features.parquet"


def _scanpy(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    obs = pd.DataFrame({"batch": pd.Categorical(labels)}, index=[str(i) for i in range(len(x))])
    adata = ad.AnnData(x.astype(np.float64), obs=obs)
    return np.asarray(sc.pp.combat(adata, key="batch", inplace=False))


def _combat(x: np.ndarray, labels: np.ndarray, **kw) -> np.ndarray:
    fit = plates.fit_combat(plates.combat_stats(x, labels), **kw)
    return plates.apply_combat(x, labels, fit)


@pytest.fixture(scope="module")
def generated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spec = testing.PlateSetSpec(n_plates=6, n_batches=3, n_features=1000, seed=5)
    frame = testing.generate_plates(spec)
    x = frame[testing.feature_names(spec)].to_numpy()
    x.setflags(write=False)
    return x, frame[BATCH].to_numpy(), frame[PLATE].to_numpy()


def test_parity_scanpy_generated_raw(generated) -> None:
    x, labels, _ = generated
    got = _combat(x, labels)
    expected = _scanpy(x, labels)
    # Raw features reach 3e4, where float32 (our output type) has ulp 2e-3: 1e-4 plus half
    # an ulp of float32.
    np.testing.assert_allclose(got, expected, rtol=2.0**-24, atol=1e-4)


def test_parity_scanpy_generated_normalized(generated) -> None:
    x, labels, plate = generated
    z = np.empty(x.shape, dtype=np.float32)
    for p in np.unique(plate):
        rows = plate == p
        z[rows] = plates.apply_location_scale(
            x[rows], plates.fit_plate(x[rows], None, method="standardize", reference="all")
        )
    got = _combat(z, labels)
    expected = _scanpy(z, labels)
    assert np.abs(got - expected).max() <= 1e-4


def test_parity_scanpy_jump() -> None:
    if not testing.has_shared_data(JUMP):
        pytest.skip(f"real data ../shared/data/{JUMP} is not here (clone without shared/)")
    frame = pd.read_parquet(testing.shared_data(JUMP))
    assert frame[BATCH].value_counts().min() >= 2
    features = [c for c in frame.columns if not c.startswith("Metadata_")]
    x, labels = frame[features].to_numpy(), frame[BATCH].to_numpy()
    assert np.abs(_combat(x, labels) - _scanpy(x, labels)).max() <= 1e-4


def test_stats_merge_across_shards_equals_one_pass(generated) -> None:
    x, labels, _ = generated
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))  # shards that mix batches in any order
    shards = np.array_split(order, 7)
    merged = plates.CombatStats.merge_all(plates.combat_stats(x[s], labels[s]) for s in shards)
    whole = plates.combat_stats(x, labels)
    assert merged.batches == whole.batches == ("B1", "B2", "B3")
    a, b = plates.fit_combat(merged), plates.fit_combat(whole)
    np.testing.assert_allclose(a.gamma, b.gamma, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.delta, b.delta, rtol=1e-9)


def _standardized(x: np.ndarray, labels: np.ndarray):
    """s_data, gamma_hat, delta_hat straight from the rows (scanpy's _standardize_data)."""
    batches = sorted(set(labels))
    means = np.stack([x[labels == b].mean(axis=0) for b in batches])
    counts = np.array([(labels == b).sum() for b in batches])
    grand = counts @ means / counts.sum()
    resid = x - means[[batches.index(b) for b in labels]]
    var_pooled = (resid**2).mean(axis=0)
    s = (x - grand) / np.sqrt(var_pooled)
    gamma_hat = np.stack([s[labels == b].mean(axis=0) for b in batches])
    delta_hat = np.stack([s[labels == b].var(axis=0, ddof=1) for b in batches])
    return batches, s, gamma_hat, delta_hat, grand, var_pooled


def _int_eprior(sdat: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray):
    """sva's int.eprior, line by line (sdat: features x samples of one batch)."""
    g_star, d_star = [], []
    for i in range(sdat.shape[0]):
        g = np.delete(g_hat, i)
        d = np.delete(d_hat, i)
        xi = sdat[i, ~np.isnan(sdat[i])]
        n = xi.size
        dat = np.tile(xi, (g.size, 1))
        sum2 = ((dat - g[:, None]) ** 2) @ np.ones(n)
        lh = 1 / (2 * np.pi * d) ** (n / 2) * np.exp(-sum2 / (2 * d))
        lh[np.isnan(lh)] = 0
        g_star.append((g * lh).sum() / lh.sum())
        d_star.append((d * lh).sum() / lh.sum())
    return np.array(g_star), np.array(d_star)


def test_nonparametric_matches_sva_formula() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(["a", "b", "c"], [6, 5, 7])
    shift = np.repeat(rng.normal(0, 1, (3, 40)), [6, 5, 7], axis=0)
    x = rng.normal(10, 2, (18, 40)) + shift
    batches, s, gamma_hat, delta_hat, grand, var_pooled = _standardized(x, labels)
    fit = plates.fit_combat(plates.combat_stats(x, labels), parametric=False)
    for k, b in enumerate(batches):
        g_star, d_star = _int_eprior(s[labels == b].T, gamma_hat[k], delta_hat[k])
        np.testing.assert_allclose(fit.gamma[k], g_star, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(fit.delta[k], d_star, rtol=1e-8)
    got = plates.apply_combat(x, labels, fit)
    rows = [batches.index(b) for b in labels]
    expected = (s - fit.gamma[rows]) / np.sqrt(fit.delta[rows]) * np.sqrt(var_pooled) + grand
    np.testing.assert_allclose(got, expected, rtol=2.0**-24, atol=1e-5)


def test_nonparametric_does_not_underflow(generated) -> None:
    x, labels, _ = generated  # 768 rows per batch: sva's product of likelihoods is 0/0 here
    fit = plates.fit_combat(plates.combat_stats(x, labels), parametric=False)
    assert np.isfinite(fit.gamma).all() and (fit.delta > 0).all()
    out = plates.apply_combat(x, labels, fit)
    assert np.isfinite(out).all()


def test_constant_feature_goes_to_its_grand_mean() -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat(["a", "b", "c"], 20)
    x = rng.normal(size=(60, 5))
    x[:, 1] = np.repeat([1.0, 2.0, 3.0], 20)  # constant within every batch
    fit = plates.fit_combat(plates.combat_stats(x, labels))
    out = plates.apply_combat(x, labels, fit)
    assert np.allclose(out[:, 1], 2.0) and np.isfinite(out).all()


def test_apply_leaves_input_alone_and_handles_row_order(generated) -> None:
    x, labels, _ = generated
    fit = plates.fit_combat(plates.combat_stats(x, labels))
    whole = plates.apply_combat(x, labels, fit)
    order = np.random.default_rng(5).permutation(len(x))[:500]
    part = plates.apply_combat(x[order], labels[order], fit)  # a batch of mixed rows
    assert np.array_equal(part, whole[order])


def test_errors() -> None:
    x = np.arange(20.0).reshape(5, 4)
    with pytest.raises(RaymmiError, match=r"batch 'b' has 1 row;.*Drop or merge"):
        _combat(x, np.array(["a", "a", "b", "c", "c"]))
    with pytest.raises(RaymmiError, match="at least 2 batches"):
        _combat(x, np.array(["a"] * 5))
    with pytest.raises(RaymmiError, match=r"missing value.*--batch-key"):
        plates.combat_stats(x, np.array(["a", None, "b", "b", "a"], dtype=object))
    fit = plates.fit_combat(plates.combat_stats(x, np.array(["a", "a", "b", "b", "b"])))
    with pytest.raises(RaymmiError, match=r"\['z'\] were not in the data.*\['a', 'b'\]"):
        plates.apply_combat(x, np.array(["a", "z", "b", "b", "b"]), fit)
    with pytest.raises(RaymmiError, match=r"one label per row"):
        plates.apply_combat(x, np.array(["a", "b"]), fit)
