"""ATAC (binarize, peak filter, TF-IDF, LSI) and ADT (CLR) against muon."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from raymmi import cells, testing

anndata = pytest.importorskip("anndata")


@pytest.fixture(scope="module")
def atac():
    spec = testing.CellSetSpec(n_cells=2000, kind="multiome", n_genes=50, n_peaks=3000, seed=2)
    return testing.generate_cells(spec, 0).modalities["atac"], testing.peak_names(spec)


def _muon():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("muon")


def _blocks(x, size):
    return [cells.Block(atac=x[i : i + size], where=f"b{i}") for i in range(0, x.shape[0], size)]


def test_tfidf_matches_muon(atac):
    mu = _muon()
    x, _ = atac
    counts = x.copy()
    counts.data = counts.data * 3  # counts, not just 0/1: binarize must undo this
    binary = cells.binarize(counts)
    assert set(np.unique(binary.data)) == {1.0}
    stats = cells.column_stats(binary[:700]).merge(cells.column_stats(binary[700:]))
    ours = cells.tfidf(binary, idf=cells.idf(stats))
    a = anndata.AnnData(counts.copy())
    mu.atac.pp.binarize(a)
    mu.atac.pp.tfidf(a)
    ref = sp.csr_matrix(a.X).toarray()
    assert np.abs(ours.toarray() - ref).max() <= 1e-5 * np.abs(ref).max()


def test_peak_filter_fraction_and_top_k(atac):
    x, _ = atac
    stats = cells.column_stats(x)
    cells_per_peak = np.asarray((x != 0).sum(axis=0)).ravel()
    keep = cells.peak_filter(stats, min_fraction=0.05)
    np.testing.assert_array_equal(keep, cells_per_peak >= 0.05 * x.shape[0])
    top = cells.peak_filter(stats, top_k=100)
    assert top.sum() == 100
    assert cells_per_peak[top].min() >= cells_per_peak[~top].max()


def test_lsi_matches_muon_on_the_signal_components(atac):
    mu = _muon()
    x, peaks = atac
    config = cells.PreprocessCellsConfig(
        atac=cells.AtacConfig(
            filter_peaks=cells.FilterPeaksConfig(min_cells=5), lsi=cells.LsiConfig(n_comps=20)
        )
    )
    blocks = _blocks(x, 600)
    state = cells.fit_blocks(blocks, config=config, state=cells.initial_state(config, peaks=peaks))
    assert state.passes == 1 + config.atac.lsi.n_iter
    lsi = np.vstack(
        [cells.transform_block(b, config=config, state=state).values["atac_lsi"] for b in blocks]
    )
    a = anndata.AnnData(x[:, state.peak_keep].copy())
    mu.atac.pp.binarize(a)
    mu.atac.pp.tfidf(a)
    mu.atac.tl.lsi(a, n_comps=20)
    # The generator plants ~8 cell-type axes; past them the spectrum is a flat noise bulk
    # where no two SVDs agree (muon's svds included), and the residual certificate says so.
    signal = 6
    cos = np.abs(np.sum(state.lsi.components[:signal] * a.varm["LSI"].T[:signal], axis=1))
    assert cos.min() >= 0.999
    assert state.lsi.rel_residual[:signal].max() < 0.01
    assert state.lsi.rel_residual[-1] > state.lsi.rel_residual[0]
    ref = a.obsm["X_lsi"][:, :signal]
    signs = np.sign(np.sum(lsi[:, :signal] * ref, axis=0))
    assert np.abs(lsi[:, :signal] * signs - ref).max() <= 0.05
    s_ref = a.uns["lsi"]["stdev"][:signal] * np.sqrt(x.shape[0] - 1)
    np.testing.assert_allclose(state.lsi.singular_values[:signal], s_ref, rtol=1e-4)


def test_lsi_drop_first_names_components_from_two():
    config = cells.PreprocessCellsConfig(
        atac=cells.AtacConfig(lsi=cells.LsiConfig(n_comps=4, drop_first=True))
    )
    assert cells.lsi_names(config) == ["LSI2", "LSI3", "LSI4"]


def test_clr_matches_muon_per_cell():
    mu = _muon()
    spec = testing.CellSetSpec(n_cells=500, kind="cite", n_genes=50, n_proteins=40, seed=3)
    adt = testing.generate_cells(spec, 0).modalities["adt"]
    a = anndata.AnnData(adt.astype(np.float64))
    mu.prot.pp.clr(a, axis=1)
    assert np.abs(cells.clr(adt) - a.X).max() <= 1e-6
    # the formula, written out: log1p(x / exp(mean(log1p(x)))) per cell
    x = adt.astype(np.float64)
    manual = np.log1p(x / np.exp(np.log1p(x).mean(axis=1, keepdims=True)))
    assert np.abs(cells.clr(adt) - manual).max() <= 1e-6


def test_clr_matches_muon_on_the_real_adt_counts():
    mu = _muon()
    rel = (
        "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_mod2.h5ad"
    )
    if not testing.has_shared_data(rel):
        pytest.skip(f"real data ../shared/data/{rel} is not here")
    m = anndata.read_h5ad(testing.shared_data(rel))
    counts = m.layers["counts"] if "counts" in m.layers else m.X
    adt = np.asarray(sp.csr_matrix(counts).toarray(), dtype=np.float64)
    a = anndata.AnnData(adt.copy())
    mu.prot.pp.clr(a, axis=1)
    assert np.abs(cells.clr(adt) - a.X).max() <= 1e-6
