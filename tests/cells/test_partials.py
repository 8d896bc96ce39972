"""Partial statistics merged over random splits equal the one-shot statistic."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from raymmi import cells, testing
from raymmi.config import from_dict
from raymmi.schema import RaymmiError


def _splits(n, k, seed):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), k - 1, replace=False))
    return list(zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True))


@pytest.fixture(scope="module")
def counts():
    spec = testing.CellSetSpec(n_cells=1200, kind="cite", n_genes=400, n_proteins=5, seed=9)
    batch = testing.generate_cells(spec, 0)
    return sp.csr_matrix(batch.modalities["rna"]), batch.obs["batch"].astype(str).to_numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_stats_merge_equals_one_shot(counts, seed):
    x, batch = counts
    labels = tuple(sorted(set(batch)))
    codes = np.searchsorted(labels, batch)
    clip = np.random.default_rng(seed).uniform(1, 5, (len(labels), x.shape[1]))
    whole = cells.column_stats(x, groups=codes, labels=labels, clip=clip)
    parts = []
    for a, b in _splits(x.shape[0], 6, seed):
        local = tuple(sorted(set(batch[a:b])))  # blocks see only some batches
        parts.append(
            cells.column_stats(
                x[a:b],
                groups=np.searchsorted(local, batch[a:b]),
                labels=local,
                clip=clip[[labels.index(g) for g in local]],
            )
        )
    merged = parts[0]
    for p in parts[::-1][:-1]:
        merged = merged.merge(p)
    assert merged.groups == whole.groups
    np.testing.assert_array_equal(merged.n, whole.n)
    np.testing.assert_array_equal(merged.nnz, whole.nnz)
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-12)
    np.testing.assert_allclose(merged.total_sq, whole.total_sq, rtol=1e-12)
    dense = np.minimum(x.toarray(), clip[codes])
    np.testing.assert_allclose(whole.total[0], dense[codes == 0].sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(
        whole.var()[1], dense[codes == 1].var(axis=0, ddof=1), rtol=1e-8, atol=1e-12
    )


def test_gram_value_counts_any_merge_equal_one_shot(counts):
    x, _ = counts
    dense = np.log1p(x.toarray()[:, :50])
    whole = cells.gram(dense)
    parts = [cells.gram(dense[a:b]) for a, b in _splits(len(dense), 5, 3)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    np.testing.assert_allclose(merged.cross, whole.cross, rtol=1e-5)
    _, cov = merged.covariance()
    np.testing.assert_allclose(cov, np.cov(dense, rowvar=False), rtol=1e-4, atol=1e-6)
    depth = np.asarray(x.sum(axis=1)).ravel()
    vcs = [cells.value_counts(depth[a:b]) for a, b in _splits(len(depth), 7, 4)]
    merged_vc = vcs[0]
    for p in vcs[1:]:
        merged_vc = merged_vc.merge(p)
    assert merged_vc.median() == np.median(depth)
    assert cells.value_counts(depth[:-1]).median() == np.median(depth[:-1])
    hits = [
        cells.AnyColumn(cells.highly_expressed(x[a:b], max_fraction=0.02))
        for a, b in _splits(x.shape[0], 4, 5)
    ]
    merged_any = hits[0]
    for h in hits[1:]:
        merged_any = merged_any.merge(h)
    np.testing.assert_array_equal(merged_any.hits, cells.highly_expressed(x, max_fraction=0.02))


@pytest.mark.parametrize("seed", [0, 1])
def test_pipeline_state_does_not_depend_on_the_split(counts, seed):
    x, batch = counts
    genes = [f"G{i}" for i in range(x.shape[1])]
    config = from_dict(
        cells.PreprocessCellsConfig,
        {
            "rna": {
                "highly_variable_genes": {"n_top_genes": 100, "batch_key": "batch"},
                "normalize_total": {"exclude_highly_expressed": True},
                "pca": {"n_comps": 10},
            }
        },
    )
    one = cells.fit_blocks(
        [cells.Block(rna=x, batch=batch)],
        config=config,
        state=cells.initial_state(config, genes=genes),
    )
    blocks = [cells.Block(rna=x[a:b], batch=batch[a:b]) for a, b in _splits(x.shape[0], 5, seed)]
    many = cells.fit_blocks(blocks, config=config, state=cells.initial_state(config, genes=genes))
    assert one.passes == many.passes == 5  # raw, HEG, depth, log moments, Gram
    assert one.target_sum == many.target_sum
    np.testing.assert_array_equal(one.hvg, many.hvg)
    np.testing.assert_allclose(one.scale_mean, many.scale_mean, rtol=1e-10)
    # float32 block Gram products: the split changes the rounding, not the subspace
    cosines = np.linalg.svd(one.pca.components @ many.pca.components.T, compute_uv=False)
    assert cosines.min() >= 1 - 1e-9
    np.testing.assert_allclose(one.pca.variance, many.pca.variance, rtol=1e-6)


def test_bad_inputs_raise_clear_errors(counts):
    x, _ = counts
    fractional = x.copy()
    fractional.data = np.log1p(fractional.data)
    with pytest.raises(
        RaymmiError, match=r"rna values in f7 \(read from layers/counts of x\.h5ad"
    ):
        cells.check_counts(fractional, name="rna", source="layers/counts of x.h5ad", where="f7")
    negative = x.copy()
    negative.data[0] = -1
    with pytest.raises(RaymmiError, match="1 negative"):
        cells.check_counts(negative, name="rna", source="X", where="f0")
    genes = [f"G{i}" for i in range(x.shape[1])]
    config = from_dict(
        cells.PreprocessCellsConfig,
        {"rna": {"filter_cells": {"min_genes": 10**6, "max_counts": 10**9}}},
    )
    state = cells.initial_state(config, genes=genes)
    with pytest.raises(
        RaymmiError, match=r"all 1200 cells.*rna.filter_cells.min_genes removed 1200"
    ):
        cells.fit_blocks([cells.Block(rna=x)], config=config, state=state)
    config = from_dict(cells.PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 399}}})
    with pytest.raises(RaymmiError, match=r"rna.pca.n_comps=399 exceeds the \d+ genes"):
        cells.fit_blocks(
            [cells.Block(rna=x)], config=config, state=cells.initial_state(config, genes=genes)
        )


@pytest.mark.parametrize(
    ("rna", "match"),
    [
        (
            {"steps": ["normalize_total", "log1p", "scale", "highly_variable_genes"]},
            "cannot run on already-scaled data",
        ),
        (
            {"steps": ["highly_variable_genes", "normalize_total", "log1p"]},
            "flavor 'seurat' expects log-normalized",
        ),
        (
            {
                "steps": ["normalize_total", "highly_variable_genes"],
                "highly_variable_genes": {"flavor": "seurat_v3"},
            },
            "expects raw counts",
        ),
        ({"steps": ["normalize_total", "pca", "log1p"]}, "pca must be the last step"),
        ({"steps": ["log1p", "filter_cells"]}, "filter_cells comes after log1p"),
        ({"steps": ["normalize_total", "umap"]}, r"unknown step\(s\) \['umap'\]"),
        (
            {"highly_variable_genes": {"n_top_genes": 30}, "pca": {"n_comps": 40}},
            "n_comps=40 exceeds rna.highly_variable_genes.n_top_genes=30",
        ),
    ],
)
def test_step_orders_that_cannot_work_are_refused(rna, match):
    with pytest.raises(RaymmiError, match=match):
        from_dict(cells.PreprocessCellsConfig, {"rna": rna})


def test_config_defaults_follow_scanpy():
    config = cells.PreprocessCellsConfig()
    hvg = config.rna.highly_variable_genes
    assert (hvg.flavor, hvg.min_mean, hvg.max_mean, hvg.min_disp, hvg.n_bins) == (
        "seurat",
        0.0125,
        3.0,
        0.5,
        20,
    )
    assert config.rna.normalize_total.target_sum is None
    assert config.rna.scale.max_value == 10.0
    assert from_dict(cells.HvgConfig, {"flavor": "seurat_v3"}).top_genes == 2000


def test_example_yaml_config_loads():
    from pathlib import Path

    from raymmi.config import apply_overrides, load_yaml

    path = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "preprocess_cells.yaml"
    data = apply_overrides(load_yaml(path), ["rna.pca.n_comps=30", "atac.lsi.drop_first=false"])
    config = from_dict(cells.PreprocessCellsConfig, data)
    assert config.rna.pca.n_comps == 30
    assert config.rna.highly_variable_genes.batch_key == "batch"
    assert config.rna.highly_variable_genes.max_disp == np.inf
    assert config.atac.lsi.drop_first is False
