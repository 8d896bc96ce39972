"""Moments, location/scale normalization and the fallback chain (pure, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raymmi import plates, testing
from raymmi.plates import Moments, PlateFit
from raymmi.schema import BATCH, NEGCON, PLATE, RaymmiError

JUMP = "cellpainting/jump_8plates_3features.parquet"
SCALED = ("standardize", "robustize", "mad_robustize")
# Our output is float32 (the shard-set feature type): besides 1e-5 it may differ from the
# float64 reference by its own rounding, half an ulp of float32 (2**-24 relative).
ATOL, RTOL = 1e-5, 2.0**-24


def _jump() -> pd.DataFrame:
    if not testing.has_shared_data(JUMP):
        pytest.skip(f"real data ../shared/data/{JUMP} is not here (clone without shared/)")
    return pd.read_parquet(testing.shared_data(JUMP))


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def _read_only(x: np.ndarray) -> np.ndarray:
    x = np.array(x)
    x.setflags(write=False)
    return x


@pytest.fixture(scope="module")
def generated() -> tuple[testing.PlateSetSpec, pd.DataFrame]:
    spec = testing.PlateSetSpec(
        n_plates=3,
        n_batches=2,
        n_features=1000,
        zero_spread_features=3,
        zero_spread_plates=2,
        negcon_zero_spread_features=2,
        seed=11,
    )
    return spec, testing.generate_plates(spec)


def _pycytominer(frame: pd.DataFrame, features: list[str], *, method: str, samples: str):
    pycytominer = pytest.importorskip("pycytominer")
    # Reference computed in float64: pycytominer on float32 columns computes in float32 and
    # is itself off by up to 5e-4 (mad_robustize) from its float64 result.
    frame = frame.astype(dict.fromkeys(features, np.float64))
    meta = [c for c in frame.columns if c.startswith("Metadata_")]
    out = pycytominer.normalize(
        frame, features=features, meta_features=meta, samples=samples, method=method
    )
    return out[features].to_numpy(np.float64)


def _pycytominer_spread(x_ref: np.ndarray, method: str) -> np.ndarray:
    """The spread pycytominer divides by (zero where sklearn would replace it by 1)."""
    if method == "standardize":
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x_ref)
        return np.where(scaler.scale_ == 1.0, 0.0, scaler.scale_)
    if method == "robustize":
        q = np.percentile(x_ref, [25, 75], axis=0)
        return q[1] - q[0]
    med = np.median(x_ref, axis=0)
    return np.median(np.abs(x_ref - med), axis=0)


def _per_plate_diff(frame: pd.DataFrame, features: list[str], *, method: str, reference: str):
    samples = f"{NEGCON} == True" if reference == "negcon" else "all"
    worst = 0.0
    for plate, rows in frame.groupby(PLATE, sort=True):
        rows = rows.reset_index(drop=True)
        expected = _pycytominer(rows, features, method=method, samples=samples)
        x = _read_only(rows[features].to_numpy())
        negcon = rows[NEGCON].to_numpy()
        fit = plates.fit_plate(x, negcon, method=method, reference=reference, plate=str(plate))
        got = plates.apply_location_scale(x, fit)
        x_ref = x[negcon] if reference == "negcon" else x
        nonzero = _pycytominer_spread(x_ref.astype(np.float64), method) > 0
        assert (fit.fallback[nonzero] == 0).all()
        np.testing.assert_allclose(got[:, nonzero], expected[:, nonzero], rtol=RTOL, atol=ATOL)
        worst = max(worst, float(np.abs(got[:, nonzero] - expected[:, nonzero]).max()))
    return worst


# --- parity with pycytominer -----------------------------------------------------------------


@pytest.mark.parametrize("reference", ["negcon", "all"])
@pytest.mark.parametrize("method", SCALED)
def test_parity_jump(method: str, reference: str) -> None:
    frame = _jump()
    worst = _per_plate_diff(frame, _features(frame), method=method, reference=reference)
    assert worst <= 1e-5


@pytest.mark.parametrize("method", SCALED)
def test_parity_generated_1000_features(method: str, generated) -> None:
    spec, frame = generated
    _per_plate_diff(frame, testing.feature_names(spec), method=method, reference="negcon")


def test_mean_is_centering_on_negcon(generated) -> None:
    spec, frame = generated
    rows = frame[frame[PLATE] == "P0002"]
    x = rows[testing.feature_names(spec)].to_numpy()
    negcon = rows[NEGCON].to_numpy()
    fit = plates.fit_plate(x, negcon, method="mean", reference="negcon")
    got = plates.apply_location_scale(x, fit)
    expected = x.astype(np.float64) - x[negcon].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)
    assert (fit.fallback == 0).all() and (fit.scale == 1.0).all()


def test_mad_uses_pycytominer_constant_and_epsilon() -> None:
    x = np.array([[1.0], [2.0], [4.0], [8.0], [9.0]])
    center, scale = plates.fit_location_scale(x, method="mad_robustize", epsilon=0.5)
    assert center[0] == 4.0
    assert scale[0] == 1.4826 * 3.0 + 0.5  # |x - 4| = 3 2 0 4 5: MAD 3


@pytest.mark.parametrize("method", SCALED)
def test_global_references_match_pooled_pycytominer(method: str, generated) -> None:
    spec, frame = generated
    features = testing.feature_names(spec)
    x = frame[features].to_numpy()
    negcon = frame[NEGCON].to_numpy()
    # negcon-global: pycytominer on all plates at once, fitted on every negcon row
    expected = _pycytominer(frame, features, method=method, samples=f"{NEGCON} == True")
    fit = plates.fit_global(x[negcon], method=method, reference="negcon-global")
    assert (fit.fallback == 0).all()
    got = plates.apply_location_scale(x, fit)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # batch: pycytominer on the plates of one batch, fitted on all their rows
    for batch, rows in frame.groupby(BATCH):
        expected = _pycytominer(rows, features, method=method, samples="all")
        xb = rows[features].to_numpy()
        fit = plates.fit_global(xb, method=method, reference="batch")
        got = plates.apply_location_scale(xb, fit)
        nonzero = _pycytominer_spread(xb.astype(np.float64), method) > 0
        assert (fit.fallback[nonzero] == 0).all() and (fit.fallback[~nonzero] == 2).all()
        np.testing.assert_allclose(
            got[:, nonzero], expected[:, nonzero], rtol=RTOL, atol=ATOL, err_msg=str(batch)
        )


@pytest.mark.parametrize("method", ["standardize", "mean"])
def test_global_from_merged_moments_equals_rows(method: str, generated) -> None:
    spec, frame = generated
    features = testing.feature_names(spec)
    parts_ref, parts_all = [], []
    for _, rows in frame.groupby(PLATE):
        x = rows[features].to_numpy()
        parts_ref.append(Moments.of(x[rows[NEGCON].to_numpy()]))
        parts_all.append(Moments.of(x))
    x = frame[features].to_numpy()
    by_rows = plates.fit_global(x[frame[NEGCON].to_numpy()], method=method)
    by_moments = plates.fit_global(
        Moments.merge_all(parts_ref), method=method, all_rows=Moments.merge_all(parts_all)
    )
    np.testing.assert_allclose(by_moments.center, by_rows.center, rtol=1e-12)
    np.testing.assert_allclose(by_moments.scale, by_rows.scale, rtol=1e-9)
    assert by_moments.reference_rows == int(frame[NEGCON].sum())
    assert by_moments.plate_rows == len(frame)


# --- the fallback chain ----------------------------------------------------------------------


def _fits(spec, frame, *, method: str, reference: str) -> dict[str, PlateFit]:
    features = testing.feature_names(spec)
    fits = {}
    for plate, rows in frame.groupby(PLATE, sort=True):
        x = rows[features].to_numpy()
        fits[str(plate)] = plates.fit_plate(
            x, rows[NEGCON].to_numpy(), method=method, reference=reference, plate=str(plate)
        )
    return fits


@pytest.mark.parametrize("method", SCALED)
def test_fallback_report_names_exactly_the_planted_pairs(method: str, generated) -> None:
    spec, frame = generated
    features = testing.feature_names(spec)
    report = plates.fallback_report(
        _fits(spec, frame, method=method, reference="negcon"), features
    )
    assert list(report.columns) == ["plate", "feature", "fallback", "reference_rows", "plate_rows"]
    negcon_zero = set(testing.planted_zero_spread(spec, within="negcon"))
    all_zero = set(testing.planted_zero_spread(spec, within="all"))
    assert len(all_zero) == 6 and len(negcon_zero - all_zero) == 4
    pairs = {
        kind: set(zip(rows["plate"], rows["feature"], strict=True))
        for kind, rows in report.groupby("fallback")
    }
    assert pairs == {"all-wells": negcon_zero - all_zero, "unnormalized": all_zero}
    assert (report["reference_rows"] == spec.negcon_wells_per_plate).all()
    assert (report["plate_rows"] == spec.wells_per_plate).all()


def test_fallback_under_reference_all_is_unnormalized_only(generated) -> None:
    spec, frame = generated
    report = plates.fallback_report(
        _fits(spec, frame, method="mad_robustize", reference="all"), testing.feature_names(spec)
    )
    assert set(report["fallback"]) == {"unnormalized"}
    assert set(zip(report["plate"], report["feature"], strict=True)) == set(
        testing.planted_zero_spread(spec, within="all")
    )


def test_mean_never_falls_back(generated) -> None:
    spec, frame = generated
    report = plates.fallback_report(
        _fits(spec, frame, method="mean", reference="negcon"), testing.feature_names(spec)
    )
    assert report.empty
    assert list(report.columns) == ["plate", "feature", "fallback", "reference_rows", "plate_rows"]


@pytest.mark.parametrize("method", SCALED)
def test_fallback_values(method: str, generated) -> None:
    spec, frame = generated
    features = testing.feature_names(spec)
    plate, _ = testing.planted_zero_spread(spec, within="all")[0]
    rows = frame[frame[PLATE] == plate]
    x = _read_only(rows[features].to_numpy())
    negcon = rows[NEGCON].to_numpy()
    fit = plates.fit_plate(x, negcon, method=method, reference="negcon", epsilon=1e-18)
    got = plates.apply_location_scale(x, fit)
    assert np.isfinite(got).all() and np.abs(got).max() < 1e4  # nothing divided by epsilon

    unnormalized = fit.fallback == 2
    assert unnormalized.sum() == spec.zero_spread_features
    assert np.array_equal(got[:, unnormalized], x[:, unnormalized])  # bit for bit
    all_wells = np.flatnonzero(fit.fallback == 1)
    center_ref, _ = plates.fit_location_scale(x[negcon][:, all_wells], method=method)
    _, spread_all = plates.fit_location_scale(x[:, all_wells], method=method)
    expected = (x[:, all_wells].astype(np.float64) - center_ref) / (spread_all + 1e-18)
    np.testing.assert_allclose(got[:, all_wells], expected, rtol=RTOL, atol=1e-6)


def test_near_constant_float64_counts_as_zero_spread() -> None:
    # 0.1 summed 7 times is not 0.7 in float64: the variance is rounding noise, not spread.
    x = np.column_stack([np.full(7, 0.1), np.arange(7.0)])
    negcon = np.ones(7, dtype=bool)
    assert Moments.of(x).m2[0] > 0  # the premise: rounding leaves a tiny "spread"
    fit = plates.fit_plate(x, negcon, method="standardize", reference="negcon")
    assert fit.fallback.tolist() == [2, 0]
    assert np.array_equal(plates.apply_location_scale(x, fit)[:, 0], x[:, 0].astype(np.float32))


def test_nan_aware_and_all_nan_feature() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    x[::7, 0] = np.nan
    x[:, 2] = np.nan
    negcon = np.zeros(50, dtype=bool)
    negcon[:20] = True
    for method in SCALED:
        fit = plates.fit_plate(x, negcon, method=method, reference="negcon")
        assert fit.fallback.tolist() == [0, 0, 2]
        got = plates.apply_location_scale(x, fit)
        assert np.array_equal(np.isnan(got), np.isnan(x))
    center, scale = plates.fit_location_scale(x[negcon], method="standardize")
    assert center[0] == pytest.approx(np.nanmean(x[negcon, 0]))
    assert scale[0] == pytest.approx(np.nanstd(x[negcon, 0]))


def test_global_fallback_chain_and_two_step_recipe() -> None:
    rng = np.random.default_rng(1)
    n, negcon = 200, np.arange(200) < 40
    x = rng.normal(size=(n, 4))
    x[negcon, 1] = 5.0  # zero spread in the pooled negcon rows only
    x[:, 2] = 3.0  # zero spread everywhere
    for method in SCALED:
        first = plates.fit_global(x[negcon], method=method)
        assert first.fallback.tolist() == [0, 2, 2, 0]  # no all-rows spread given yet
        todo = np.flatnonzero(first.fallback != 0)
        spread = np.full(4, np.nan)
        spread[todo] = plates.fit_location_scale(x[:, todo], method=method)[1]
        fit = plates.fit_global(x[negcon], method=method, all_rows=spread, n_rows=n)
        assert fit.fallback.tolist() == [0, 1, 2, 0]
        assert fit.center[1] == 5.0 and fit.scale[1] == spread[1]
        assert (fit.reference_rows, fit.plate_rows) == (40, n)
    by_moments = plates.fit_global(
        Moments.of(x[negcon]), method="standardize", all_rows=Moments.of(x)
    )
    assert by_moments.fallback.tolist() == [0, 1, 2, 0]
    assert by_moments.scale[1] == pytest.approx(x[:, 1].std())


# --- moments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_moments_merge_equals_one_shot(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(1e6, 3.0, size=(500, 7))  # |mean| >> sd: the naive formula fails here
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 3] = np.nan
    x[:100, 4] = np.nan
    cuts = np.sort(rng.choice(np.arange(1, 500), size=6, replace=False))
    parts = [Moments.of(p) for p in np.split(x, cuts)]
    parts.append(Moments.of(x[:0]))
    rng.shuffle(parts)  # type: ignore[arg-type]
    whole = Moments.of(x)
    merged = Moments.merge_all(parts)
    assert np.array_equal(merged.count, whole.count)
    assert np.array_equal(merged.count, (~np.isnan(x)).sum(axis=0))
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-14)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-10)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(merged.var(ddof=1), np.nanvar(x, axis=0, ddof=1), rtol=1e-9)
    assert np.isnan(merged.std()[3]) and merged.count[3] == 0


def test_moments_blocks_and_float32() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(10.0, 2.0, size=(20_000, 300)).astype(np.float32)  # several blocks
    m = Moments.of(_read_only(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(m.mean, x64.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m.var(), x64.var(axis=0), rtol=1e-10)
    a, b = Moments.of(x[:7]), Moments.of(x[7:])
    np.testing.assert_allclose(Moments.merge(a, b).m2, m.m2, rtol=1e-10)


def test_moments_errors() -> None:
    with pytest.raises(RaymmiError, match="no parts"):
        Moments.merge_all([])
    with pytest.raises(RaymmiError, match="same feature columns"):
        Moments.empty(2).merge(Moments.empty(3))
    with pytest.raises(RaymmiError, match="2-D"):
        Moments.of(np.zeros(3))


# --- bad input -------------------------------------------------------------------------------


def test_no_negcon_rows_names_the_plate() -> None:
    x = np.ones((4, 2))
    with pytest.raises(RaymmiError, match=r"plate 'P9'.*--reference all"):
        plates.fit_plate(x, np.zeros(4, dtype=bool), method="standardize", reference="negcon",
                         plate="P9")  # fmt: skip
    with pytest.raises(RaymmiError, match=r"2 plate\(s\).*'A', 'C'.*--reference all"):
        plates.check_negcon({"A": 0, "B": 3, "C": 0}, reference="negcon")
    plates.check_negcon({"A": 0, "B": 3}, reference="negcon-global")
    plates.check_negcon({"A": 0}, reference="all")
    with pytest.raises(RaymmiError, match="no plate"):
        plates.check_negcon({"A": 0, "B": 0}, reference="negcon-global")


def test_unknown_options_list_the_valid_ones() -> None:
    x = np.ones((4, 2))
    with pytest.raises(RaymmiError, match=r"method='zscore'.*'standardize'"):
        plates.check_options(method="zscore", reference="negcon")
    with pytest.raises(RaymmiError, match=r"reference='plate'.*'negcon-global'"):
        plates.check_options(method="standardize", reference="plate")
    with pytest.raises(RaymmiError, match="epsilon=-1"):
        plates.check_options(method="standardize", reference="all", epsilon=-1)
    with pytest.raises(RaymmiError, match="fit_spherize"):
        plates.fit_plate(x, None, method="spherize", reference="all")
    with pytest.raises(RaymmiError, match="fit_global"):
        plates.fit_plate(x, None, method="standardize", reference="batch")
    with pytest.raises(RaymmiError, match="negcon mask"):
        plates.fit_plate(x, None, method="standardize", reference="negcon")
    with pytest.raises(RaymmiError, match=r"shape \(4,\)"):
        plates.fit_plate(x, np.ones(3, dtype=bool), method="standardize", reference="negcon")
    with pytest.raises(RaymmiError, match="needs the reference rows"):
        plates.fit_global(Moments.of(x), method="robustize")
    with pytest.raises(RaymmiError, match="n_rows"):
        plates.fit_global(x, method="robustize", all_rows=np.ones(2))
    fit = plates.fit_plate(x, None, method="mean", reference="all")
    with pytest.raises(RaymmiError, match="3 features but the fit has 2"):
        plates.apply_location_scale(np.ones((2, 3)), fit)
