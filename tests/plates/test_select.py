"""Feature selection as pure functions: parity with pycytominer 1.7.1, partials == one shot."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from raymmi import testing
from raymmi.plates import (
    DEFAULT_OPS,
    OPS,
    PYCYTOMINER_OPS,
    CoMoments,
    FeatureStats,
    SelectConfig,
    Thresholds,
    ValueCounts,
    decide,
    feature_selection,
    kept_features,
    parse_ops,
    samples_mask,
    value_buckets,
)
from raymmi.schema import RaymmiError

LINCS = "cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz"
TO_PYCYTOMINER = {short: long for long, short in PYCYTOMINER_OPS.items()}


def pycytominer_dropped(
    frame: pd.DataFrame,
    features: list[str],
    ops: tuple[str, ...],
    *,
    blocklist: list[str] | None = None,
    samples: str = "all",
    **thresholds: float,
) -> set[str]:
    pycytominer = pytest.importorskip("pycytominer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pycytominer.feature_select(
            frame,
            features=list(features),
            operation=[TO_PYCYTOMINER[op] for op in ops],
            samples=samples,
            blocklist=blocklist,
            **thresholds,
        )
    return set(features) - set(out.columns)


def ours_dropped(
    frame: pd.DataFrame,
    features: list[str],
    ops: tuple[str, ...],
    *,
    blocklist: list[str] | None = None,
    samples: str = "all",
    **thresholds: float,
) -> set[str]:
    report = feature_selection(
        frame,
        features=features,
        ops=ops,
        thresholds=Thresholds(**thresholds),
        samples=samples,
        blocklist=blocklist or (),
    )
    return set(report.loc[~report["kept"], "feature"])


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["float64", "float32"])
def lincs(request: pytest.FixtureRequest) -> tuple[pd.DataFrame, list[str]]:
    """The real LINCS plate (feature-selected already: the defaults drop nothing), with NaN
    planted in 40 features at 0-10% of rows; float32 is how raymmi stores features."""
    if not testing.has_shared_data(LINCS):
        pytest.skip(f"real data ../shared/data/{LINCS} is not here")
    frame = pd.read_csv(testing.shared_data(LINCS))
    features = [c for c in frame.columns if not c.startswith("Metadata_")]
    frame[features] = frame[features].astype(request.param)
    rng = np.random.default_rng(7)
    for j, name in enumerate(features[:40]):
        frame.loc[rng.random(len(frame)) < 0.02 * (j % 6), name] = np.nan
    return frame, features


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, list[str]]:
    """Generated plates plus one column per way of being dropped (and a few ways of not)."""
    spec = testing.PlateSetSpec(
        n_plates=3, wells_per_plate=96, n_features=80, negcon_wells_per_plate=8, seed=3
    )
    frame = testing.generate_plates(spec)
    base = testing.feature_names(spec)
    n = len(frame)
    rng = np.random.default_rng(11)
    normal = rng.standard_normal((n, 8)).astype(np.float32)
    planted_columns = {
        "Cells_Planted_Constant": np.full(n, 2.5, np.float32),
        "Cells_Planted_Tiny": (1 + 1e-4 * normal[:, 0]).astype(np.float32),
        "Cells_Planted_Duplicate": frame[base[5]] * 2 + 1,
        "Cells_Planted_Anti": -frame[base[7]],
        "Cells_Planted_Outlier": np.where(np.arange(n) == 17, 1e3, normal[:, 1]).astype(
            np.float32
        ),
        "Cells_Planted_ZeroInflated": np.where(rng.random(n) < 0.9, 0, normal[:, 2]).astype(
            np.float32
        ),
        "Cells_Planted_ManyNaN": np.where(rng.random(n) < 0.1, np.nan, normal[:, 3]).astype(
            np.float32
        ),
        "Cells_Planted_FewNaN": np.where(rng.random(n) < 0.02, np.nan, normal[:, 4]).astype(
            np.float32
        ),
        "Cells_Planted_TwoLevels": rng.integers(0, 2, n).astype(np.float32),
        "Cells_Planted_AllNaN": np.full(n, np.nan, np.float32),
    }
    frame = pd.concat([frame, pd.DataFrame(planted_columns)], axis=1)
    return frame, [*base, *planted_columns]


# ---------------------------------------------------------------------------------------------
# Parity with pycytominer 1.7.1
# ---------------------------------------------------------------------------------------------

LINCS_CASES = [
    ("variance", {"min_variance": 1.0}),
    ("variance", {"min_variance": 0.0}),
    ("frequency", {}),
    ("frequency", {"freq_cut": 0.3, "unique_cut": 0.9}),
    ("correlation", {}),
    ("correlation", {"corr_threshold": 0.5}),
    ("correlation", {"corr_threshold": 0.7}),
    ("correlation", {"corr_threshold": 0.8}),
    ("na", {}),
    ("na", {"na_cutoff": 0.1}),
    ("outliers", {}),
    ("outliers", {"outlier_cutoff": 15.0}),
]


@pytest.mark.parametrize(("op", "thresholds"), LINCS_CASES)
def test_each_op_matches_pycytominer_on_lincs(lincs, op, thresholds):
    frame, features = lincs
    expected = pycytominer_dropped(frame, features, (op,), **thresholds)
    assert ours_dropped(frame, features, (op,), **thresholds) == expected


def test_lincs_cases_drop_something(lincs):
    """The parity above is not vacuous: most cases drop features."""
    frame, features = lincs
    sizes = [len(ours_dropped(frame, features, (op,), **t)) for op, t in LINCS_CASES]
    assert sum(s > 0 for s in sizes) >= 8
    assert max(sizes) > 300


@pytest.mark.parametrize(
    "ops", [DEFAULT_OPS, OPS, ("correlation", "variance", "na"), ("na", "correlation")]
)
def test_op_sequences_match_pycytominer_on_lincs(lincs, ops):
    frame, features = lincs
    thresholds = {"corr_threshold": 0.7, "min_variance": 1.0, "outlier_cutoff": 20.0}
    blocklist = [features[3], features[100], "Cells_Not_A_Column"]
    expected = pycytominer_dropped(frame, features, ops, blocklist=blocklist, **thresholds)
    got = ours_dropped(frame, features, ops, blocklist=blocklist, **thresholds)
    assert got == expected
    assert len(got) > 100


def test_samples_query_matches_pycytominer_on_lincs(lincs):
    frame, features = lincs
    samples = "Metadata_broad_sample == 'DMSO'"
    ops = ("variance", "correlation", "na", "outliers")
    thresholds = {"corr_threshold": 0.8, "min_variance": 0.5, "outlier_cutoff": 10.0}
    expected = pycytominer_dropped(frame, features, ops, samples=samples, **thresholds)
    assert ours_dropped(frame, features, ops, samples=samples, **thresholds) == expected
    assert expected != pycytominer_dropped(frame, features, ops, **thresholds)


@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_pycytominer_on_planted(planted, op):
    frame, features = planted
    blocklist = ["Cells_Planted_Constant", "Nuclei_Correlation_Manders_ER_RNA"]
    expected = pycytominer_dropped(frame, features, (op,), blocklist=blocklist)
    got = ours_dropped(frame, features, (op,), blocklist=blocklist)
    assert got == expected
    assert got  # every op drops something here


def test_planted_columns_go_where_pycytominer_sends_them(planted):
    frame, features = planted
    report = feature_selection(frame, features=features, ops=OPS).set_index("feature")
    assert report.loc["Cells_Planted_Constant", "op"] == "variance"
    assert report.loc["Cells_Planted_Tiny", "op"] == "variance"
    assert report.loc["Cells_Planted_AllNaN", "op"] == "variance"
    assert report.loc["Cells_Planted_ZeroInflated", "op"] == "frequency"
    assert report.loc["Cells_Planted_TwoLevels", "op"] == "frequency"
    assert report.loc["Cells_Planted_ManyNaN", "op"] == "na"
    assert report.loc["Cells_Planted_Outlier", "op"] == "outliers"
    assert report.loc["Cells_Planted_FewNaN", "kept"]
    # pycytominer compares the signed correlation: a perfect anti-correlate survives.
    assert report.loc["Cells_Planted_Anti", "kept"]
    assert report.loc[["Cells_Planted_Duplicate", features[5]], "kept"].sum() == 1
    assert "na_fraction=" in report.loc["Cells_Planted_ManyNaN", "reason"]


@pytest.mark.parametrize("ops", [DEFAULT_OPS, OPS])
def test_op_sequences_match_pycytominer_on_planted(planted, ops):
    frame, features = planted
    blocklist = ["Cells_Planted_Constant", "Nuclei_Correlation_Manders_ER_RNA"]
    for thresholds in ({}, {"corr_threshold": 0.6, "min_variance": 0.0, "outlier_cutoff": 50.0}):
        expected = pycytominer_dropped(frame, features, ops, blocklist=blocklist, **thresholds)
        assert ours_dropped(frame, features, ops, blocklist=blocklist, **thresholds) == expected


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cutoffs_are_strict_like_pycytominer(dtype):
    """Statistics exactly at a cut-off: the comparisons' direction and strictness."""
    n = 40
    rng = np.random.default_rng(5)
    unique = rng.standard_normal(n)
    one_nan = unique.copy()
    one_nan[[3, 9]] = np.nan  # na fraction 0.05 exactly
    two_nan = unique.copy()
    two_nan[[1, 2, 3]] = np.nan
    ratio = np.concatenate([np.zeros(20), [1.0], unique[:19] + 5])  # 2nd / 1st = 1 / 20
    under = np.concatenate([np.zeros(21), [1.0], unique[:18] + 5])  # 1 / 21
    frame = pd.DataFrame(
        {
            "Cells_NaN_AtCut": one_nan,
            "Cells_NaN_Over": two_nan,
            "Cells_Max_AtCut": np.where(np.arange(n) == 0, 500.0, unique),
            "Cells_Min_Over": np.where(np.arange(n) == 0, -500.5, unique),
            "Cells_Var_AtCut": np.tile([-1.0, 1.0], n // 2),  # variance 1.0 exactly
            "Cells_Freq_AtCut": ratio,
            "Cells_Freq_Under": under,
        }
    ).astype(dtype)
    features = list(frame.columns)
    for op, thresholds, expected in [
        ("na", {}, {"Cells_NaN_Over"}),
        ("outliers", {}, {"Cells_Min_Over"}),
        ("variance", {"min_variance": 1.0}, set()),
        ("frequency", {}, {"Cells_Freq_Under"}),
    ]:
        if op == "variance":
            expected = {f for f in features if frame[f].var(ddof=0) <= 1.0}
            assert "Cells_Var_AtCut" in expected
        assert pycytominer_dropped(frame, features, (op,), **thresholds) == expected, op
        assert ours_dropped(frame, features, (op,), **thresholds) == expected, op


def test_min_variance_zero_uses_the_range_like_sklearn():
    frame = pd.DataFrame({"Cells_A": [0.1, 0.1, 0.1], "Cells_B": [1.0, 2.0, 3.0]})
    assert np.var(frame["Cells_A"].to_numpy()) > 0  # rounding: a constant with variance 2e-34
    thresholds = {"min_variance": 0.0}
    expected = pycytominer_dropped(frame, ["Cells_A", "Cells_B"], ("variance",), **thresholds)
    assert expected == {"Cells_A"}
    assert ours_dropped(frame, ["Cells_A", "Cells_B"], ("variance",), **thresholds) == expected


# ---------------------------------------------------------------------------------------------
# Partial statistics merged over random splits == one shot
# ---------------------------------------------------------------------------------------------


def _random_blocks(x: np.ndarray, rng: np.random.Generator, n_blocks: int) -> list[np.ndarray]:
    cuts = np.sort(rng.integers(0, len(x) + 1, n_blocks - 1))  # repeats give empty blocks
    return np.split(x, cuts)


@pytest.mark.parametrize("seed", range(4))
def test_merged_partials_equal_one_shot(planted, seed):
    frame, features = planted
    x = frame[features].to_numpy()
    rng = np.random.default_rng(seed)
    if seed % 2:  # also blocks with no NaN at all, merged into pairwise ones
        x = x[:, [j for j, f in enumerate(features) if "NaN" not in f]]
        features = [f for f in features if "NaN" not in f]
        x[rng.integers(0, len(x), 5), rng.integers(0, x.shape[1], 5)] = np.nan
    one = FeatureStats.of(x, correlation=True)
    blocks = _random_blocks(x, rng, int(rng.integers(2, 12)))
    parts = [FeatureStats.of(b, correlation=True) for b in blocks]
    order = rng.permutation(len(parts))
    merged = FeatureStats.merge_all(parts[i] for i in order)

    assert merged.n_rows == one.n_rows
    np.testing.assert_array_equal(merged.moments.count, one.moments.count)
    np.testing.assert_allclose(merged.moments.mean, one.moments.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.moments.var(), one.moments.var(), rtol=1e-9, atol=1e-30)
    np.testing.assert_array_equal(merged.minimum, one.minimum)
    np.testing.assert_array_equal(merged.maximum, one.maximum)
    assert merged.comoments is not None and one.comoments is not None
    np.testing.assert_allclose(
        merged.comoments.correlation(), one.comoments.correlation(), atol=1e-12
    )
    for ops in (DEFAULT_OPS, ("na", "outliers", "correlation", "variance")):
        pd.testing.assert_frame_equal(
            decide(merged, features=features, ops=ops),
            decide(one, features=features, ops=ops),
        )


def test_comoments_match_numpy_and_pandas():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 6))
    x = base @ rng.standard_normal((6, 6))
    x[:, 2] = 1e4 + 1e-3 * x[:, 2]  # |mean| >> sd: naive sums of squares lose every digit
    blocks = _random_blocks(x, rng, 7)
    merged = CoMoments.of(blocks[0])
    for block in blocks[1:]:
        merged = merged.merge(CoMoments.of(block))
    np.testing.assert_allclose(merged.correlation(), np.corrcoef(x.T), atol=1e-10)
    x[rng.random(x.shape) < 0.05] = np.nan
    merged = CoMoments.empty(6)
    for block in _random_blocks(x, rng, 5):
        merged = merged.merge(CoMoments.of(block))
    assert merged.pairwise
    np.testing.assert_allclose(merged.correlation(), pd.DataFrame(x).corr().to_numpy(), atol=1e-10)


@pytest.mark.parametrize("n_buckets", [1, 2, 7])
def test_value_counts_merge_over_buckets(lincs, n_buckets):
    frame, features = lincs
    x = frame[features].to_numpy()
    one = ValueCounts.of(x)
    parts = [ValueCounts.of(x, bucket=b, n_buckets=n_buckets) for b in range(n_buckets)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge_buckets(part)
    chunks = ValueCounts.concat([ValueCounts.of(x[:, :100]), ValueCounts.of(x[:, 100:])])
    for got in (merged, chunks):
        np.testing.assert_array_equal(got.n_unique, one.n_unique)
        np.testing.assert_array_equal(got.top1, one.top1)
        np.testing.assert_array_equal(got.top2, one.top2)
    for j in range(0, len(features), 50):
        counts = frame[features[j]].value_counts().to_numpy()
        assert one.n_unique[j] == counts.size
        assert (one.top1[j], one.top2[j]) == (counts[0], counts[1])


def test_value_buckets_treat_signed_zero_as_one_value():
    for dtype in (np.float32, np.float64):
        v = np.array([0.0, -0.0, 1.5, 1.5], dtype=dtype)
        b = value_buckets(v, 5)
        assert b[0] == b[1] and b[2] == b[3]
        assert ValueCounts.of(v[:, None]).n_unique[0] == 2
    spread = np.bincount(value_buckets(np.arange(10_000, dtype=np.float32), 4), minlength=4)
    assert spread.min() > 2000


# ---------------------------------------------------------------------------------------------
# Report and errors
# ---------------------------------------------------------------------------------------------


def test_report_shape_and_kept_features(planted):
    frame, features = planted
    report = feature_selection(frame, features=features, ops=DEFAULT_OPS)
    assert list(report.columns) == ["feature", "op", "reason", "kept"]
    assert list(report["feature"]) == features
    assert report["kept"].dtype == bool
    dropped = report[~report["kept"]]
    assert (dropped["op"] != "").all() and (dropped["reason"] != "").all()
    assert (report.loc[report["kept"], "op"] == "").all()
    assert kept_features(report) == [f for f in features if f not in set(dropped["feature"])]


def test_parse_ops_accepts_pycytominer_names_and_commas():
    assert parse_ops("variance,correlation") == ("variance", "correlation")
    assert parse_ops(["drop_na_columns", "drop_outliers, blocklist"]) == (
        "na",
        "outliers",
        "blocklist",
    )
    assert SelectConfig(source="a", out="b", ops=("na,variance",)).ops == ("na", "variance")


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        ("variance,bogus", r"'bogus' is not a feature-selection operation.*'variance'"),
        ("na,na", "listed twice"),
        ("", "names no operation"),
        ("noise_removal", "perturbation groups"),
    ],
)
def test_bad_ops_name_the_valid_ones(ops, match):
    with pytest.raises(RaymmiError, match=match):
        parse_ops(ops)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"na_cutoff": 1.5}, r"na_cutoff=1.5 must be a number between 0 and 1"),
        ({"corr_threshold": -0.1}, "corr_threshold"),
        ({"min_variance": -1.0}, r"min_variance=-1.0 must be a finite number >= 0"),
        ({"outlier_cutoff": float("nan")}, "outlier_cutoff"),
        ({"corr_method": "spearman"}, r"cannot be merged.*allowed: \['pearson'\]"),
        ({"corr_method": "cosine"}, r"corr_method='cosine' is not supported"),
    ],
)
def test_bad_thresholds_are_refused(kwargs, match):
    with pytest.raises(RaymmiError, match=match):
        Thresholds(**kwargs)
    with pytest.raises(RaymmiError, match=match):
        SelectConfig(source="a", out="b", **kwargs)


def test_decide_refuses_missing_statistics(planted):
    frame, features = planted
    stats = FeatureStats.of(frame[features].to_numpy(), correlation=False)
    with pytest.raises(RaymmiError, match="no co-moments"):
        decide(stats, features=features, ops=("correlation",))
    with pytest.raises(RaymmiError, match="no value counts"):
        decide(stats, features=features, ops=("frequency",))
    with pytest.raises(RaymmiError, match="names were given"):
        decide(stats, features=features[:-1], ops=("na",))


def test_infinite_values_and_bad_samples_are_refused(planted):
    frame, features = planted
    bad = frame.copy()
    bad.loc[3, features[0]] = np.inf
    with pytest.raises(RaymmiError, match=rf"hold \+-inf values.*{features[0]}"):
        feature_selection(bad, features=features, ops=("na",))
    with pytest.raises(RaymmiError, match=r"samples 'Metadata_Nope == 1' names column\(s\)"):
        samples_mask(frame, "Metadata_Nope == 1")
    with pytest.raises(RaymmiError, match="no rows"):
        feature_selection(frame, features=features, ops=("na",), samples="Metadata_Batch == 'X'")
