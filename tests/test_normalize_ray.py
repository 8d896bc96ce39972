"""`raymmi normalize` through Ray: per-plate and global references, fallbacks, ComBat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from raymmi import plates as P
from raymmi import testing
from raymmi.cli import main
from raymmi.config import TrackingConfig
from raymmi.io import open_shard_set
from raymmi.run import generate_plates

pytestmark = pytest.mark.usefixtures("ray_session")
KEYS = ["Metadata_Plate", "Metadata_Well"]


def _run(*argv: str) -> int:
    return main([*argv, "--num-cpus", "2", "--no-track"])


def _frame(path) -> pd.DataFrame:
    return open_shard_set(str(path)).read_table().to_pandas().sort_values(KEYS, ignore_index=True)


@pytest.fixture(scope="module")
def jump(tmp_path_factory):
    out = tmp_path_factory.mktemp("jump") / "jump"
    src = shared_file("cellpainting/jump_8plates_3features.parquet")
    assert _run("ingest", "plates", str(src), "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    spec = testing.PlateSetSpec(
        n_plates=4,
        n_features=40,
        n_batches=2,
        wells_per_plate=96,
        seed=5,
        zero_spread_features=2,
        zero_spread_plates=2,
        negcon_zero_spread_features=2,
    )
    out = tmp_path_factory.mktemp("gen") / "plates"
    generate_plates(spec, out=str(out), tracking=TrackingConfig(enabled=False))
    return spec, out


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize", "mean"])
def test_per_plate_negcon_matches_the_pure_fit(tmp_path, jump, method):
    out = tmp_path / "n"
    assert _run("normalize", str(jump), "--out", str(out), "--method", method) == 0
    raw, got = _frame(jump), _frame(out)
    features = list(open_shard_set(str(jump)).manifest.features)
    assert (raw[KEYS].to_numpy() == got[KEYS].to_numpy()).all()
    for _, rows in raw.groupby("Metadata_Plate"):
        x = rows[features].to_numpy(np.float64)
        fit = P.fit_plate(
            x, rows["Metadata_is_negcon"].to_numpy(), method=method, reference="negcon"
        )
        expected = P.apply_location_scale(x, fit)
        np.testing.assert_allclose(got.loc[rows.index, features].to_numpy(), expected, atol=1e-6)


def test_matches_pycytominer_per_plate(tmp_path, jump):
    pycytominer = pytest.importorskip("pycytominer")
    out = tmp_path / "n"
    assert _run("normalize", str(jump), "--out", str(out), "--method", "mad_robustize") == 0
    raw, got = _frame(jump), _frame(out)
    features = list(open_shard_set(str(jump)).manifest.features)
    for _, rows in raw.groupby("Metadata_Plate"):
        # float64 in: pycytominer on float32 columns computes in float32 (errors ~4e-5)
        ref = pycytominer.normalize(
            rows.reset_index(drop=True).astype(dict.fromkeys(features, "float64")),
            features=features,
            meta_features=[c for c in rows.columns if c.startswith("Metadata_")],
            samples="Metadata_is_negcon == True",
            method="mad_robustize",
        )
        np.testing.assert_allclose(
            got.loc[rows.index, features].to_numpy(), ref[features].to_numpy(), atol=1e-5
        )


def test_fallback_report_names_exactly_the_planted_pairs(tmp_path, generated):
    spec, source = generated
    out = tmp_path / "n"
    assert _run("normalize", str(source), "--out", str(out), "--method", "mad_robustize") == 0
    report = pd.read_csv(out / "_fallback_report.csv")
    unnormalized = set(testing.planted_zero_spread(spec, within="all"))
    negcon_only = set(testing.planted_zero_spread(spec, within="negcon")) - unnormalized
    got = {(r.plate, r.feature): r.fallback for r in report.itertuples()}
    assert {k for k, v in got.items() if v == "unnormalized"} == unnormalized
    assert {k for k, v in got.items() if v == "all-wells"} == negcon_only
    assert unnormalized and negcon_only
    m = open_shard_set(str(out)).manifest
    assert m.extra["fallback_counts"] == {
        "unnormalized": len(unnormalized),
        "all-wells": len(negcon_only),
    }
    assert m.parents[0]["uri"] == str(source)
    # unnormalized features pass through bit-identical, never scaled by 1/epsilon
    raw, norm = _frame(source), _frame(out)
    for plate, feature in unnormalized:
        rows = raw["Metadata_Plate"] == plate
        np.testing.assert_array_equal(norm.loc[rows, feature], raw.loc[rows, feature])
    assert np.abs(norm[list(m.features)].to_numpy()).max() < 1e3


@pytest.mark.parametrize("reference", ["negcon-global", "batch"])
@pytest.mark.parametrize("method", ["standardize", "mad_robustize"])
def test_global_references_match_pooled_fit(tmp_path, generated, reference, method):
    _, source = generated
    out = tmp_path / "n"
    args = ["--method", method, "--reference", reference]
    assert _run("normalize", str(source), "--out", str(out), *args) == 0
    raw, got = _frame(source), _frame(out)
    features = list(open_shard_set(str(source)).manifest.features)
    scopes = (
        [raw.index]
        if reference == "negcon-global"
        else [rows.index for _, rows in raw.groupby("Metadata_Batch")]
    )
    for index in scopes:
        x = raw.loc[index, features].to_numpy(np.float64)
        ref = (
            x[raw.loc[index, "Metadata_is_negcon"].to_numpy()]
            if reference == "negcon-global"
            else x
        )
        spread_all = P.fit_location_scale(x, method=method)[1]
        fit = P.fit_global(
            ref,
            method=method,
            all_rows=None if reference == "batch" else spread_all,
            n_rows=len(x),
            reference=reference,
        )
        expected = P.apply_location_scale(x, fit)
        np.testing.assert_allclose(got.loc[index, features].to_numpy(), expected, atol=1e-5)


def test_combat_matches_scanpy(tmp_path, generated):
    import anndata as ad
    import scanpy as sc

    _, source = generated
    out = tmp_path / "n"
    assert _run("normalize", str(source), "--out", str(out), "--method", "combat") == 0
    raw, got = _frame(source), _frame(out)
    features = list(open_shard_set(str(source)).manifest.features)
    adata = ad.AnnData(
        raw[features].to_numpy(np.float64), obs=raw[["Metadata_Batch"]].astype("category")
    )
    expected = sc.pp.combat(adata, key="Metadata_Batch", inplace=False)
    np.testing.assert_allclose(got[features].to_numpy(), expected, atol=1e-4)


def test_spherize_per_plate(tmp_path, generated):
    _, source = generated
    out = tmp_path / "n"
    args = ["--method", "spherize", "--spherize-method", "ZCA", "--reference", "all"]
    assert _run("normalize", str(source), "--out", str(out), *args) == 0
    raw, got = _frame(source), _frame(out)
    features = list(open_shard_set(str(source)).manifest.features)
    for _, rows in raw.groupby("Metadata_Plate"):
        x = rows[features].to_numpy(np.float64)
        fit = P.fit_spherize(x, method="ZCA", epsilon=1e-6)
        np.testing.assert_allclose(
            got.loc[rows.index, features].to_numpy(), P.apply_spherize(x, fit), atol=1e-4
        )


def test_bad_inputs(tmp_path, generated, capsys):
    _, source = generated
    out = tmp_path / "o"

    def fails(*args: str, match: str) -> None:
        assert _run("normalize", *args) == 2
        err = capsys.readouterr().err
        assert match in err, err
        assert not out.exists()

    fails(
        str(source),
        "--out",
        str(out),
        "--negcon",
        "Metadata_Compound == 'nothing'",
        match="have no negative-control rows",
    )
    fails(
        str(source),
        "--out",
        str(out),
        "--method",
        "combat",
        "--batch-key",
        "Metadata_Nope",
        match="--batch-key 'Metadata_Nope' is not a column",
    )
    fails(
        str(source),
        "--out",
        str(out),
        "--method",
        "spherize",
        "--reference",
        "negcon",
        "--spherize-epsilon",
        "0",
        match="fewer",
    )
    with pytest.raises(SystemExit):
        main(["normalize", str(source), "--out", str(out), "--method", "zscore"])
    assert "invalid choice" in capsys.readouterr().err
    cells = tmp_path / "cells"
    from raymmi.run import generate_cells

    generate_cells(
        testing.CellSetSpec(n_cells=50, n_genes=20, n_peaks=30, chunk_size=50),
        out=str(cells),
        tracking=TrackingConfig(enabled=False),
    )
    fails(str(cells), "--out", str(out), match="this stage needs 'plates'")


@pytest.mark.parametrize(
    ("method", "reference"), [("mad_robustize", "negcon"), ("combat", "negcon")]
)
def test_plates_split_over_several_files(tmp_path, generated, method, reference):
    """A plate stored as several parts (two sources) is read whole: same result as one part."""
    _, source = generated
    raw = open_shard_set(str(source)).read_table().to_pandas()
    halves = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    odd = np.arange(len(raw)) % 2 == 1
    raw[~odd].to_parquet(halves[0], index=False)
    raw[odd].to_parquet(halves[1], index=False)
    split = tmp_path / "split"
    assert _run("ingest", "plates", *map(str, halves), "--out", str(split)) == 0
    m = open_shard_set(str(split)).manifest
    assert len(m.files) == 2 * len(m.plates)
    args = ["--method", method, "--reference", reference]
    assert _run("normalize", str(split), "--out", str(tmp_path / "s"), *args) == 0
    assert _run("normalize", str(source), "--out", str(tmp_path / "w"), *args) == 0
    out = open_shard_set(str(tmp_path / "s")).manifest
    assert len(out.files) == len(out.plates)  # one part per plate
    got, whole = _frame(tmp_path / "s"), _frame(tmp_path / "w")
    features = list(m.features)
    np.testing.assert_allclose(got[features].to_numpy(), whole[features].to_numpy(), atol=1e-6)
    assert (got[KEYS].to_numpy() == whole[KEYS].to_numpy()).all()
