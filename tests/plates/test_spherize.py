"""Sphering against pycytominer 1.7 ``Spherize`` (pure, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raymmi import plates, testing
from raymmi.schema import NEGCON, PLATE, RaymmiError

JUMP = "cellpainting/jump_8plates_3features.parquet"
ATOL, RTOL = 1e-5, 2.0**-24  # see test_normalize: our output is float32


def _jump() -> pd.DataFrame:
    if not testing.has_shared_data(JUMP):
        pytest.skip(f"real data ../shared/data/{JUMP} is not here (clone without shared/)")
    return pd.read_parquet(testing.shared_data(JUMP))


def _plate(n_features: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    spec = testing.PlateSetSpec(
        n_plates=1,
        n_batches=1,
        n_features=n_features,
        zero_spread_features=0,
        negcon_zero_spread_features=0,
        seed=4,
        **kw,
    )
    frame = testing.generate_plate(spec, 0)
    x = frame[testing.feature_names(spec)].to_numpy()
    x.setflags(write=False)
    return x, frame[NEGCON].to_numpy()


def _compare(x_ref: np.ndarray, x: np.ndarray, method: str, epsilon: float = 1e-6) -> float:
    """Max abs difference to pycytominer; PCA up to the sign of each component."""
    operations = pytest.importorskip("pycytominer.operations")
    ref = operations.Spherize(epsilon=epsilon, center=True, method=method, return_numpy=True)
    # float64 input: on float32 columns pycytominer whitens in float32.
    ref.fit(pd.DataFrame(x_ref.astype(np.float64)))
    expected = ref.transform(pd.DataFrame(x.astype(np.float64)))
    fit = plates.fit_spherize(x_ref, method=method, epsilon=epsilon)
    got = plates.apply_spherize(x, fit).astype(np.float64)
    assert got.shape == expected.shape == x.shape
    if method.startswith("PCA"):
        # Components beyond the rank of the reference span its null space, whose basis is
        # arbitrary: only the first `rank` are defined.
        k = fit.rank
        got, expected = got[:, :k], expected[:, :k]
        sign = np.sign((got * expected).sum(axis=0))
        assert (sign != 0).all()
        got *= sign
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("method", plates.SPHERIZE_METHODS)
def test_parity_jump_per_plate_negcon(method: str) -> None:
    frame = _jump()
    features = [c for c in frame.columns if not c.startswith("Metadata_")]
    for _, rows in frame.groupby(PLATE):
        x = rows[features].to_numpy()
        assert _compare(x[rows[NEGCON].to_numpy()], x, method) <= 1e-5


@pytest.mark.parametrize("method", plates.SPHERIZE_METHODS)
def test_parity_generated_fewer_reference_rows_than_features(method: str) -> None:
    x, negcon = _plate(1000)  # 32 negcon rows, 1,000 features: the fill-and-epsilon case
    _compare(x[negcon], x, method)


@pytest.mark.parametrize("method", plates.SPHERIZE_METHODS)
def test_parity_generated_more_rows_than_features(method: str) -> None:
    x, _ = _plate(200)  # all 384 wells as the reference
    _compare(x, x, method)


@pytest.mark.parametrize("method", plates.SPHERIZE_METHODS)
def test_whitens_the_reference(method: str) -> None:
    x, _ = _plate(50)
    fit = plates.fit_spherize(x, method=method, epsilon=0.0)
    out = plates.apply_spherize(x, fit).astype(np.float64)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(50), atol=1e-5)
    names = plates.spherize_feature_names(fit, [f"f{i}" for i in range(50)])
    assert names[0] == ("PC1" if method.startswith("PCA") else "f0")


def test_zca_low_rank_equals_dense_matrix() -> None:
    x, negcon = _plate(300)  # 32 reference rows: W is stored low-rank
    fit = plates.fit_spherize(x[negcon], method="ZCA", epsilon=1e-6)
    assert fit.weights is None and fit.basis is not None and fit.basis.shape == (300, 31)
    dense = ((x.astype(np.float64) - fit.center) / fit.scale) @ fit.matrix()
    np.testing.assert_allclose(plates.apply_spherize(x, fit), dense, rtol=1e-6, atol=1e-6)


def test_pca_sign_convention() -> None:
    x, _ = _plate(20)
    fit = plates.fit_spherize(x, method="PCA", epsilon=0.0)
    # each component's largest loading is positive, so the fit does not depend on LAPACK
    w = fit.weights
    assert (w[np.abs(w).argmax(axis=0), np.arange(20)] > 0).all()


def test_apply_does_not_mutate_read_only_input() -> None:
    x, negcon = _plate(30)
    before = x.copy()
    fit = plates.fit_spherize(x[negcon], method="ZCA-cor")
    out = plates.apply_spherize(x, fit)
    assert out.dtype == np.float32 and np.array_equal(x, before)


def test_errors() -> None:
    x, negcon = _plate(100)
    with pytest.raises(RaymmiError, match=r"32 reference rows for 100 features.*epsilon > 0"):
        plates.fit_spherize(x[negcon], method="ZCA", epsilon=0.0)
    with pytest.raises(RaymmiError, match="ZCA-cor with epsilon"):
        plates.fit_spherize(x[negcon], method="PCA", epsilon=0.0)
    x64 = x.astype(np.float64)
    dependent = np.column_stack([x64[:, :10], x64[:, :1] + x64[:, 1:2]])
    with pytest.raises(RaymmiError, match="linearly dependent"):
        plates.fit_spherize(dependent, method="ZCA", epsilon=0.0)
    plates.fit_spherize(dependent, method="ZCA", epsilon=1e-6)  # regularized: allowed
    constant = x[:, :5].copy()
    constant[:, 2] = 7.0
    with pytest.raises(RaymmiError, match=r"zero variance.*\[2\].*--ops variance"):
        plates.fit_spherize(constant, method="ZCA-cor")
    with_nan = x[:, :5].copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(RaymmiError, match=r"NaN.*--ops na"):
        plates.fit_spherize(with_nan, method="ZCA")
    with pytest.raises(RaymmiError, match="'whiten' is not one of"):
        plates.fit_spherize(x, method="whiten")
    with pytest.raises(RaymmiError, match="center=True"):
        plates.fit_spherize(x, method="PCA-cor", center=False)
    with pytest.raises(RaymmiError, match="at least 2"):
        plates.fit_spherize(x[:1], method="ZCA")
