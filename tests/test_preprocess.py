"""`preprocess_cells` through Ray: generated multiome and CITE sets end to end, bad inputs."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest

from raymmi import cells, testing
from raymmi.config import TrackingConfig, from_dict
from raymmi.io import ShardSetWriter, open_shard_set, write_part
from raymmi.run import generate_cells, preprocess_cells
from raymmi.schema import (
    Manifest,
    Modality,
    RaymmiError,
    cell_batch_to_arrow,
    list_to_dense,
    lists_to_sparse,
)

pytestmark = pytest.mark.usefixtures("ray_session")
OFF = TrackingConfig(enabled=False)
MULTIOME = testing.CellSetSpec(
    n_cells=900, kind="multiome", n_genes=300, n_peaks=1000, chunk_size=300, seed=5
)
CITE = testing.CellSetSpec(
    n_cells=900, kind="cite", n_genes=300, n_proteins=20, chunk_size=300, seed=6
)


@pytest.fixture(scope="module")
def multiome(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pp") / "multiome")
    generate_cells(MULTIOME, out=out, tracking=OFF)
    return out


@pytest.fixture(scope="module")
def cite(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pp") / "cite")
    generate_cells(CITE, out=out, tracking=OFF)
    return out


def _whole(uri, batch_key="batch"):
    """The whole input as one in-memory block."""
    shard = open_shard_set(uri)
    table = shard.read_table()
    mods = {}
    for m in shard.manifest.modalities:
        if m.encoding == "sparse":
            mods[m.name] = lists_to_sparse(
                table.column(f"{m.name}_indices"),
                table.column(f"{m.name}_values"),
                n_features=len(m.features),
            )
        else:
            mods[m.name] = list_to_dense(table.column(m.name))
    batch = np.asarray(table.column(batch_key).to_pylist()).astype(str)
    return shard, cells.Block(
        rna=mods["rna"], atac=mods.get("atac"), adt=mods.get("adt"), batch=batch
    )


def _column(table, name, manifest):
    m = manifest.modality(name)
    if m.encoding == "dense":
        return list_to_dense(table.column(name))
    return lists_to_sparse(
        table.column(f"{name}_indices"), table.column(f"{name}_values"), n_features=len(m.features)
    )


def _same_up_to_sign(a, b, tol):
    signs = np.sign(np.sum(a * b, axis=0))
    assert np.abs(a * signs - b).max() <= tol


CONFIG = {
    "rna": {
        "filter_cells": {"min_genes": 60},
        "filter_genes": {"min_cells": 3},
        "highly_variable_genes": {"n_top_genes": 100, "batch_key": "batch"},
        "pca": {"n_comps": 10},
    },
    "atac": {
        "filter_peaks": {"min_fraction": 0.01},
        "lsi": {"n_comps": 6, "drop_first": True},
    },
}


def test_multiome_end_to_end_matches_in_memory_and_scanpy(multiome, tmp_path):
    config = from_dict(cells.PreprocessCellsConfig, CONFIG)
    out = str(tmp_path / "pp")
    manifest = preprocess_cells(config, source=multiome, out=out, tracking=OFF)
    source, block = _whole(multiome)
    assert len(manifest.files) == len(source.manifest.files)
    assert manifest.parents == (source.parent_ref(),)
    names = [m.name for m in manifest.modalities]
    assert names == ["rna", "rna_hvg", "rna_pca", "atac", "atac_lsi"]
    assert manifest.modality("rna_pca").features[:2] == ("PC1", "PC2")
    assert manifest.modality("atac_lsi").features == ("LSI2", "LSI3", "LSI4", "LSI5", "LSI6")
    assert "rna_n_genes_by_counts" in manifest.metadata

    # the same plan on the whole matrix in memory
    state = cells.fit_blocks(
        [block],
        config=config,
        state=cells.initial_state(
            config,
            genes=source.manifest.modality("rna").features,
            peaks=source.manifest.modality("atac").features,
        ),
    )
    expected = cells.transform_block(block, config=config, state=state)
    assert manifest.num_rows == expected.keep.sum() < 900
    assert manifest.modality("rna_hvg").features == tuple(
        state.genes[i] for i in state.rna_columns
    )
    table = open_shard_set(out).read_table()
    assert table.column("cell_id").to_pylist() == [
        f"c{i:09d}" for i in np.flatnonzero(expected.keep)
    ]
    hvg = _column(table, "rna_hvg", manifest)
    assert np.abs(hvg - expected.values["rna_hvg"]).max() <= 1e-5
    _same_up_to_sign(_column(table, "rna_pca", manifest), expected.values["rna_pca"], 1e-3)
    atac = _column(table, "atac", manifest)
    assert (atac != expected.values["atac"]).nnz == 0
    np.testing.assert_allclose(
        table.column("atac_depth").to_numpy(), np.asarray(atac.sum(axis=1)).ravel()
    )
    _same_up_to_sign(_column(table, "atac_lsi", manifest), expected.values["atac_lsi"], 1e-2)
    raw = _column(table, "rna", manifest)
    assert (raw != block.rna[expected.keep]).nnz == 0  # raw counts kept
    with pytest.raises(RaymmiError, match="already holds processed modalities"):
        preprocess_cells(config, source=out, out=str(tmp_path / "again"), tracking=OFF)

    # and scanpy on the same counts
    sc = pytest.importorskip("scanpy")
    ad = pytest.importorskip("anndata")
    a = ad.AnnData(block.rna.copy())
    a.obs["batch"] = block.batch
    a.var_names = list(source.manifest.modality("rna").features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.filter_cells(a, min_genes=60)
        sc.pp.filter_genes(a, min_cells=3)
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=100, batch_key="batch")
        b = a[:, a.var["highly_variable"]].copy()
        sc.pp.scale(b, max_value=10)
    assert list(b.var_names) == list(manifest.modality("rna_hvg").features)
    assert np.abs(hvg - b.X).max() <= 1e-5

    # exported as scanpy leaves it: counts in X and layers["counts"], highly_variable, X_pca
    from raymmi.io import export_cells

    export_cells(open_shard_set(out), str(tmp_path / "pp.h5ad"))
    back = ad.read_h5ad(tmp_path / "pp.h5ad")
    assert (back.layers["counts"] != raw).nnz == 0 and (back.X != raw).nnz == 0
    assert list(back.var_names[back.var["highly_variable"]]) == list(b.var_names)
    # the HVG statistics land in .var where scanpy puts them (genes filtered out: NaN)
    kept = a.var_names
    for column in ("means", "dispersions", "dispersions_norm", "highly_variable_nbatches"):
        ours = back.var.loc[kept, column].to_numpy(dtype=float)
        np.testing.assert_allclose(ours, a.var[column].to_numpy(dtype=float), rtol=1e-4, atol=1e-5)
    assert back.var.loc[~back.var_names.isin(kept), "means"].isna().all()
    assert back.var.loc[kept, "highly_variable_intersection"].dtype == bool
    assert {"X_pca", "X_lsi", "rna_hvg", "atac"} <= set(back.obsm)
    assert back.obsm["X_pca"].shape == (
        manifest.num_rows,
        len(manifest.modality("rna_pca").features),
    )
    sc.pp.neighbors(back, use_rep="X_pca", n_neighbors=5)


def test_cite_end_to_end_with_tracking(cite, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    config = from_dict(
        cells.PreprocessCellsConfig,
        {
            "rna": {
                "steps": [
                    "filter_genes",
                    "highly_variable_genes",
                    "normalize_total",
                    "log1p",
                    "scale",
                    "pca",
                ],
                "filter_genes": {"min_cells": 3},
                "highly_variable_genes": {"flavor": "seurat_v3", "n_top_genes": 120},
                "pca": {"n_comps": 8},
            }
        },
    )
    out = str(tmp_path / "pp")
    manifest = preprocess_cells(config, source=cite, out=out, tracking=TrackingConfig())
    assert [m.name for m in manifest.modalities] == ["rna", "rna_hvg", "rna_pca", "adt", "adt_clr"]
    assert manifest.num_rows == 900
    _, block = _whole(cite)
    table = open_shard_set(out).read_table()
    assert np.abs(_column(table, "adt_clr", manifest) - cells.clr(block.adt)).max() <= 1e-6
    np.testing.assert_array_equal(_column(table, "adt", manifest), block.adt)
    run = mlflow.get_run(manifest.producer["mlflow_run_id"])
    assert run.data.metrics["cells_kept"] == 900
    assert run.data.metrics["hvgs"] == 120
    assert 0 < run.data.metrics["pca_variance_explained"] < 1
    artifacts = {
        f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "preprocess")
    }
    assert {"preprocess/hvg.csv", "preprocess/pca_variance_ratio.png"} <= artifacts

    # .h5mu on request, in muon's layout
    import mudata as md

    from raymmi.io import export_cells

    assert export_cells(open_shard_set(out), str(tmp_path / "pp.h5mu")) == 900
    mdata = md.read_h5mu(tmp_path / "pp.h5mu")
    assert set(mdata.mod) == {"rna", "adt"}
    np.testing.assert_array_equal(np.asarray(mdata["adt"].X), block.adt)
    assert np.abs(mdata["adt"].layers["clr"] - cells.clr(block.adt)).max() <= 1e-6
    assert mdata["rna"].obsm["X_pca"].shape == (900, 8)
    assert int(mdata["rna"].var["highly_variable"].sum()) == 120
    v3 = mdata["rna"].var
    assert {"means", "variances", "variances_norm", "highly_variable_rank"} <= set(v3.columns)
    assert v3.loc[v3["highly_variable"], "highly_variable_rank"].max() < 120
    assert "cell_type" in mdata.obs


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def _rewrite(tmp_path, name, *, change_values=None, features=None):
    """A copy of a small multiome set with its values or feature list altered."""
    spec = dataclasses.replace(MULTIOME, n_cells=600, chunk_size=300)
    uri = str(tmp_path / name)
    with ShardSetWriter(uri) as writer:
        entries = []
        for i in range(2):
            batch = testing.generate_cells(spec, i)
            if change_values is not None:
                rna = batch.modalities["rna"].copy()
                rna.data = change_values(rna.data)
                batch = dataclasses.replace(batch, modalities={**batch.modalities, "rna": rna})
            entries.append(
                write_part(writer.staging, f"part-{i:05d}.parquet", cell_batch_to_arrow(batch))
            )
        genes = tuple(testing.gene_names(spec))
        writer.commit(
            Manifest(
                kind="cells",
                files=tuple(entries),
                metadata=("cell_id", "batch", "cell_type", "phase"),
                modalities=(
                    Modality("rna", "sparse", features or genes),
                    Modality("atac", "sparse", tuple(testing.peak_names(spec))),
                ),
                producer={"command": "test"},
                extra={"counts_from": {"rna": "/X"}, "sources": {"rna": "made.h5ad"}},
            )
        )
    return uri


@pytest.mark.parametrize(
    ("case", "match"),
    [
        (
            "log",
            r"rna values in part-0000\d\.parquet .*ingested from /X of made\.h5ad.*"
            r"not raw counts",
        ),
        ("features", r"rna_indices holds feature index 29\d .* manifest lists 250 rna features"),
        ("filtered", r"all 600 cells were filtered out \(rna.filter_cells.min_genes removed 600"),
        ("n_comps", r"rna.pca.n_comps=150 exceeds the \d+ genes"),
    ],
)
def test_bad_inputs_raise_and_write_nothing(tmp_path, case, match):
    kwargs = {}
    data: dict = {"atac": {"lsi": {"n_comps": 4}}}
    if case == "log":
        kwargs["change_values"] = np.log1p
    if case == "features":
        kwargs["features"] = tuple(f"G{i}" for i in range(250))
    if case == "filtered":
        data["rna"] = {"filter_cells": {"min_genes": 10**6}}
    if case == "n_comps":
        data["rna"] = {"pca": {"n_comps": 150}}
    source = _rewrite(tmp_path, "in", **kwargs)
    out = tmp_path / "out"
    config = from_dict(cells.PreprocessCellsConfig, data)
    with pytest.raises(RaymmiError, match=match):
        preprocess_cells(config, source=source, out=str(out), tracking=OFF)
    _nothing_written(out)


def test_refuses_a_missing_batch_key_and_an_existing_output(multiome, tmp_path):
    config = from_dict(
        cells.PreprocessCellsConfig, {"rna": {"highly_variable_genes": {"batch_key": "donor"}}}
    )
    with pytest.raises(RaymmiError, match=r"batch_key='donor' is not a column"):
        preprocess_cells(config, source=multiome, out=str(tmp_path / "o"), tracking=OFF)
    with pytest.raises(RaymmiError, match="is the input"):
        preprocess_cells(
            cells.PreprocessCellsConfig(), source=multiome, out=multiome, tracking=OFF
        )
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RaymmiError, match="already exists"):
        preprocess_cells(
            cells.PreprocessCellsConfig(), source=multiome, out=str(existing), tracking=OFF
        )
    assert not list(existing.iterdir())
