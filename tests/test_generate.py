"""`raymmi generate` through Ray: deterministic shard sets of generated plates and cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from raymmi import testing
from raymmi.cli import main
from raymmi.io import open_shard_set

pytestmark = pytest.mark.usefixtures("ray_session")


def _gen(*argv: str) -> int:
    return main(["generate", *argv, "--num-cpus", "2", "--no-track"])


def test_generated_plates_are_deterministic_and_match_the_pure_generator(tmp_path):
    args = ["plates", "--plates", "5", "--features", "30", "--wells", "96", "--seed", "3"]
    assert _gen(*args, "--out", str(tmp_path / "a")) == 0
    assert _gen(*args, "--out", str(tmp_path / "b")) == 0
    a, b = open_shard_set(str(tmp_path / "a")), open_shard_set(str(tmp_path / "b"))
    assert [f.sha256 for f in a.manifest.files] == [f.sha256 for f in b.manifest.files]
    assert len(a.manifest.plates) == 5 and a.manifest.num_rows == 5 * 96
    spec = testing.PlateSetSpec(n_plates=5, n_features=30, wells_per_plate=96, seed=3)
    stored = a.read_table().to_pandas()
    plate = stored[stored["Metadata_Plate"] == testing.plate_ids(spec)[2]].reset_index(drop=True)
    direct = testing.generate_plate(spec, 2)
    features = list(a.manifest.features)
    np.testing.assert_array_equal(plate[features].to_numpy(), direct[features].to_numpy())
    assert [list(p) for p in testing.planted_zero_spread(spec)] == a.manifest.extra[
        "planted_zero_spread"
    ]
    assert plate["Metadata_is_negcon"].sum() == spec.negcon_wells_per_plate


def test_generated_cells_export_to_h5ad(tmp_path):
    args = ["cells", "--cells", "1500", "--genes", "300", "--peaks", "800", "--seed", "1"]
    out = tmp_path / "cells"
    assert _gen(*args, "--out", str(out), "--set", "chunk_size=500") == 0
    m = open_shard_set(str(out)).manifest
    assert m.num_rows == 1500 and len(m.files) == 3
    assert [(x.name, x.encoding, len(x.features)) for x in m.modalities] == [
        ("rna", "sparse", 300),
        ("atac", "sparse", 800),
    ]
    assert main(["export", str(out), "--out", str(tmp_path / "c.h5ad"), "--no-track"]) == 0
    adata = ad.read_h5ad(tmp_path / "c.h5ad")
    assert adata.shape == (1500, 300) and adata.obsm["atac"].shape == (1500, 800)
    spec = testing.CellSetSpec(n_cells=1500, n_genes=300, n_peaks=800, seed=1, chunk_size=500)
    chunk = testing.generate_cells(spec, 1)
    np.testing.assert_array_equal(adata.X[500:1000].toarray(), chunk.modalities["rna"].toarray())
    assert set(np.unique(adata.obsm["atac"].data)) == {1.0}
    assert pd.Series(adata.obs["batch"]).nunique() == spec.n_batches


def test_bad_generator_settings_exit_2(tmp_path, capsys):
    assert _gen("plates", "--plates", "0", "--out", str(tmp_path / "x")) == 2
    assert "n_plates" in capsys.readouterr().err
    assert _gen("plates", "--out", str(tmp_path / "x"), "--set", "nope=1") == 2
    assert "unknown key(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
