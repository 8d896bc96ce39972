"""`evaluate_plates` through Ray: planted batch effects found in raw, mixed after normalization."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raymmi import testing
from raymmi.config import NormalizeConfig, TrackingConfig
from raymmi.run import HELDOUT, SCORE, evaluate_plates, generate_plates, normalize
from raymmi.schema import RaymmiError

pytestmark = pytest.mark.usefixtures("ray_session")
OFF = TrackingConfig(enabled=False)
SPEC = testing.PlateSetSpec(
    n_plates=8, n_batches=2, wells_per_plate=96, n_features=60, n_compounds=16, replicates=4,
    negcon_wells_per_plate=16, compound_effect_scale=2.0, batch_effect_scale=1.5, seed=3,
)  # fmt: skip


def _generate(spec: testing.PlateSetSpec, path) -> str:
    generate_plates(spec, out=str(path), tracking=OFF)
    return str(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    raw = _generate(SPEC, root / "raw")
    norm = str(root / "standardized")
    normalize(NormalizeConfig(source=raw, out=norm, method="standardize"), tracking=OFF)
    out = root / "report"
    summary = evaluate_plates([raw, norm], out=str(out), sample=1000, seed=0)  # tracked
    return summary.set_index("set"), out


def test_report_files_are_complete(report):
    summary, out = report
    assert list(summary.index) == ["raw", "standardized"]
    on_disk = pd.read_csv(out / "summary.csv").set_index("set")
    pd.testing.assert_frame_equal(on_disk, summary, check_dtype=False, check_exact=False)
    html = (out / "index.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "umap_grid.png" in pngs
    for name in ("raw", "standardized"):
        for fig in ("plate_corr_by_plate", "plate_corr_by_batch", "outliers", "feature_heatmap"):
            assert f"{name}_{fig}.png" in pngs
    assert all(f"alt='{p}'" in html for p in pngs)  # every figure inlined in the page
    # no staging leftovers next to the report
    assert not [p for p in os.listdir(out.parent) if p.startswith(".report")]


def test_every_well_is_scored(report):
    summary, out = report
    for name in ("raw", "standardized"):
        scores = pq.read_table(out / f"{name}_scores.parquet").to_pandas()
        assert len(scores) == SPEC.n_plates * SPEC.wells_per_plate
        assert np.isfinite(scores[SCORE]).all() and np.isfinite(scores[HELDOUT]).all()
        assert summary.loc[name, "wells"] == len(scores)


def test_raw_shows_block_structure(report):
    summary, out = report
    raw = summary.loc["raw"]
    assert raw["suggested_batch_ari"] >= 0.9
    assert raw["plate_corr_within_batch"] > 0.5 > raw["plate_corr_between_batch"]
    assert raw["batch_silhouette_negcon"] > 0.3
    batches = pd.read_csv(out / "raw_plate_batches.csv")
    assert len(batches) == SPEC.n_plates


def test_normalized_mixes_batches_and_keeps_replicates(report):
    summary, _ = report
    raw, norm = summary.loc["raw"], summary.loc["standardized"]
    assert norm["batch_silhouette_negcon"] < raw["batch_silhouette_negcon"]
    assert norm["batch_asw"] > raw["batch_asw"]
    assert norm["ilisi"] > raw["ilisi"] + 0.3
    assert norm["suggested_batch_ari"] < 0.5
    # negcon-normalized: the plate matrix uses treated wells (negcon medians are zero)
    assert raw["plate_profile"] == "negcon median"
    assert norm["plate_profile"] == "treated median"
    assert np.isfinite(norm["plate_corr_within_batch"])
    assert norm["map_mean"] >= raw["map_mean"] - 0.02


def test_planted_strong_compounds_are_top_outliers(report):
    _, out = report
    active = set(testing.active_compounds(SPEC))
    for name in ("raw", "standardized"):
        top = pd.read_csv(out / f"{name}_top_outlier_wells.csv")
        assert len(top) == 20
        assert set(top["Metadata_Compound"]) <= active


def test_heldout_batch_table(report):
    _, out = report
    table = pd.read_csv(out / "standardized_heldout_auroc.csv")
    assert list(table["heldout_batch"]) == ["B1", "B2"]
    assert (table["auroc"] > 0.5).all()


def test_bad_inputs(tmp_path, report):
    summary, out = report
    raw = summary.loc["raw", "uri"]
    with pytest.raises(RaymmiError, match="already exists"):
        evaluate_plates([raw], out=str(out), tracking=OFF)
    fewer = _generate(dataclasses.replace(SPEC, n_plates=6, n_batches=2), tmp_path / "fewer")
    with pytest.raises(RaymmiError, match=r"different plates.*P0007"):
        evaluate_plates([raw, fewer], out=str(tmp_path / "r1"), tracking=OFF)
    narrow = _generate(dataclasses.replace(SPEC, n_features=50), tmp_path / "narrow")
    with pytest.raises(RaymmiError, match="different features"):
        evaluate_plates([raw, narrow], out=str(tmp_path / "r2"), tracking=OFF)
    with pytest.raises(RaymmiError, match="--label-key 'Metadata_JCP2022'"):
        evaluate_plates([raw], out=str(tmp_path / "r3"), label_key="Metadata_JCP2022")
    none = _generate(
        dataclasses.replace(
            SPEC, n_plates=2, n_batches=1, negcon_wells_per_plate=0, negcon_zero_spread_features=0
        ),
        tmp_path / "none",
    )
    with pytest.raises(RaymmiError, match="no negcon rows"):
        evaluate_plates([none], out=str(tmp_path / "r4"), tracking=OFF)
    assert not (tmp_path / "r4").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".r4")]


def test_single_batch_skips_heldout_check(tmp_path):
    one = _generate(dataclasses.replace(SPEC, n_plates=3, n_batches=1), tmp_path / "one")
    summary = evaluate_plates([one], out=str(tmp_path / "rep"), sample=300, tracking=OFF)
    assert np.isnan(summary.loc[0, "heldout_auroc_mean"])
    assert np.isnan(summary.loc[0, "batch_asw"])
    assert np.isfinite(summary.loc[0, "map_mean"])
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "held-out-batch check skipped" in html
    assert not (tmp_path / "rep" / "one_heldout_auroc.csv").exists()


def test_one_mlflow_run_holds_the_report(report):
    import mlflow

    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`raymmi.command` = 'evaluate plates'",
        output_format="list",
    )
    assert runs
    run = runs[0]
    stored = {
        a.path.removeprefix("report/") for a in client.list_artifacts(run.info.run_id, "report")
    }
    assert {"index.html", "summary.csv", "umap_grid.png"} <= stored
    # every image and link of index.html resolves inside MLflow's artifact view too
    html = (report[1] / "index.html").read_text()
    linked = set(re.findall(r"href='([^']+)'", html))
    assert linked and {p for p in linked if not p.endswith(".parquet")} <= stored
    assert "src='data:image/png;base64," in html  # images show without a base address
    assert run.data.metrics["raw.suggested_batch_ari"] >= 0.9
