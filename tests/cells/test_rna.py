"""RNA steps against scanpy 1.11 on the real CITE starter counts and on generated counts."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from raymmi import cells, testing
from raymmi.config import from_dict

anndata = pytest.importorskip("anndata")
sc = pytest.importorskip("scanpy")

REAL = "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_rna.h5ad"
RAW_FIRST = ["filter_cells", "filter_genes", "highly_variable_genes", "normalize_total", "log1p"]
LOG_FIRST = ["filter_cells", "filter_genes", "normalize_total", "log1p", "highly_variable_genes"]


@pytest.fixture(scope="module")
def real():
    """(counts CSR float32, gene names, batch labels) of the real file's layers['counts']."""
    if not testing.has_shared_data(REAL):
        pytest.skip(f"real data ../shared/data/{REAL} is not here")
    a = anndata.read_h5ad(testing.shared_data(REAL))
    counts = sp.csr_matrix(a.layers["counts"]).astype(np.float32)
    return counts, list(a.var_names), a.obs["batch"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def generated():
    spec = testing.CellSetSpec(n_cells=1500, kind="cite", n_genes=800, n_proteins=10, seed=4)
    batch = testing.generate_cells(spec, 0)
    return (
        sp.csr_matrix(batch.modalities["rna"]),
        testing.gene_names(spec),
        batch.obs["batch"].astype(str).to_numpy(),
    )


def _blocks(counts, batch, n_blocks, seed=0):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, counts.shape[0]), n_blocks - 1, replace=False))
    edges = [0, *cuts.tolist(), counts.shape[0]]
    return [
        cells.Block(rna=counts[a:b], batch=None if batch is None else batch[a:b], where=f"b{i}")
        for i, (a, b) in enumerate(itertools.pairwise(edges))
    ]


def _adata(counts, batch, genes=None):
    a = anndata.AnnData(counts.copy())
    a.obs["batch"] = batch
    if genes is not None:
        a.var_names = list(genes)
    return a


def _config(flavor, batch_key, n_top, **rna):
    steps = LOG_FIRST if flavor == "seurat" else RAW_FIRST
    data = {
        "rna": {
            "steps": [*steps, "scale", "pca"],
            "filter_cells": {"min_genes": 100},
            "filter_genes": {"min_cells": 3},
            "highly_variable_genes": {
                "flavor": flavor,
                "batch_key": batch_key,
                "n_top_genes": n_top,
            },
            "pca": {"n_comps": 20},
            **rna,
        }
    }
    return from_dict(cells.PreprocessCellsConfig, data)


def _scanpy(counts, batch, genes, flavor, batch_key, n_top):
    a = _adata(counts, batch, genes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.filter_cells(a, min_genes=100)
        sc.pp.filter_genes(a, min_cells=3)
        if flavor == "seurat_v3":
            sc.pp.highly_variable_genes(a, flavor=flavor, n_top_genes=n_top, batch_key=batch_key)
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
        if flavor == "seurat":
            sc.pp.highly_variable_genes(a, flavor=flavor, n_top_genes=n_top, batch_key=batch_key)
        b = a[:, a.var["highly_variable"]].copy()
        sc.pp.scale(b, max_value=10)
        sc.pp.pca(b, n_comps=20)
    return a, b


def test_normalize_total_log1p_match_scanpy(real):
    counts, _, _ = real
    parts = [cells.value_counts(cells.library_size(b.rna)) for b in _blocks(counts, None, 7)]
    target = parts[0]
    for p in parts[1:]:
        target = target.merge(p)
    ours = cells.log1p(cells.normalize_total(counts, target_sum=target.median()))
    a = _adata(counts, np.zeros(counts.shape[0]))
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    assert np.abs(ours.toarray() - a.X.toarray()).max() <= 1e-5


def test_normalize_total_exclude_highly_expressed_matches_scanpy(real):
    counts, _, _ = real
    hits = np.zeros(counts.shape[1], dtype=bool)
    for b in _blocks(counts, None, 5):
        hits |= cells.highly_expressed(b.rna, max_fraction=0.01)
    assert hits.any()
    target = cells.value_counts(cells.library_size(counts, exclude=hits)).median()
    ours = cells.normalize_total(counts, target_sum=target, exclude=hits)
    a = _adata(counts, np.zeros(counts.shape[0]))
    sc.pp.normalize_total(a, exclude_highly_expressed=True, max_fraction=0.01)
    assert np.abs(ours.toarray() - a.X.toarray()).max() <= 1e-5


CASES = [
    ("seurat", None, None),
    ("seurat", None, 200),
    ("seurat", "batch", 200),
    ("seurat", "batch", None),
    ("seurat_v3", None, 200),
    ("seurat_v3", "batch", 200),
]


@pytest.mark.parametrize(("flavor", "batch_key", "n_top"), CASES)
def test_pipeline_matches_scanpy_on_real_counts(real, flavor, batch_key, n_top):
    pytest.importorskip("skmisc")
    counts, genes, batch = real
    config = _config(flavor, batch_key, n_top)
    blocks = _blocks(counts, batch, 5, seed=1)
    state = cells.fit_blocks(blocks, config=config, state=cells.initial_state(config, genes=genes))
    a, b = _scanpy(counts, batch, genes, flavor, batch_key, n_top)
    ours = {genes[i] for i in state.hvg}
    theirs = set(a.var_names[a.var["highly_variable"]])
    # Reported: on this file every flavor selects exactly scanpy's set (0 genes differ).
    assert len(ours ^ theirs) <= 0.01 * len(theirs)
    assert ours == theirs
    assert state.n_cells == a.n_obs
    outs = [cells.transform_block(blk, config=config, state=state) for blk in blocks]
    scaled = np.vstack([o.values["rna_hvg"] for o in outs])
    assert np.abs(scaled - b.X).max() <= 1e-5
    # every principal-angle cosine between the two 20-d subspaces
    cosines = np.linalg.svd(state.pca.components @ b.varm["PCs"], compute_uv=False)
    assert cosines.min() >= 0.999
    pcs = np.vstack([o.values["rna_pca"] for o in outs])
    ref = b.obsm["X_pca"]
    signs = np.sign(np.sum(pcs * ref, axis=0))
    assert np.abs(pcs * signs - ref).max(axis=0).max() <= 1e-3 * ref.std(axis=0).min()
    np.testing.assert_allclose(state.pca.variance_ratio, b.uns["pca"]["variance_ratio"], rtol=1e-5)


def test_seurat_hvg_on_generated_counts_matches_scanpy(generated):
    counts, genes, batch = generated
    config = _config("seurat", "batch", 300)
    state = cells.fit_blocks(
        _blocks(counts, batch, 4), config=config, state=cells.initial_state(config, genes=genes)
    )
    a, b = _scanpy(counts, batch, genes, "seurat", "batch", 300)
    assert {genes[i] for i in state.hvg} == set(a.var_names[a.var["highly_variable"]])
    cosines = np.linalg.svd(state.pca.components @ b.varm["PCs"], compute_uv=False)
    assert cosines.min() >= 0.999


def test_scale_without_zero_center_stays_sparse_and_clips_above(generated):
    counts, _, _ = generated
    logged = cells.log1p(cells.normalize_total(counts, target_sum=1e4))
    mean, std = cells.scale_params(cells.column_stats(logged))
    ours = cells.scale(logged, mean=mean, std=std, zero_center=False, max_value=1.0)
    assert sp.issparse(ours)
    theirs = sc.pp.scale(logged.copy(), zero_center=False, max_value=1.0)
    assert np.abs(ours.toarray() - theirs.toarray()).max() <= 1e-5


def test_qc_filters_report_what_they_removed(generated):
    counts, genes, _ = generated
    mt = np.zeros(len(genes), dtype=bool)
    mt[:5] = True
    metrics = cells.qc_metrics(counts, mt=mt)
    keep, removed = cells.cell_filter(metrics, min_genes=300, max_pct_mt=1.0)
    assert set(removed) == {"min_genes", "max_pct_mt"}
    assert (
        keep.sum()
        == ((metrics["n_genes_by_counts"] >= 300) & (metrics["pct_counts_mt"] <= 1)).sum()
    )
    a = _adata(counts, np.zeros(counts.shape[0]))
    sc.pp.filter_cells(a, min_genes=300)
    assert removed["min_genes"] == counts.shape[0] - a.n_obs
