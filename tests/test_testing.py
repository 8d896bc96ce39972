"""Tests of the seeded generators in raymmi.testing (no Ray)."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from raymmi import schema, testing

JUMP = "cellpainting/jump_8plates_3features.parquet"
LINCS = "cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz"
CITE_RNA = (
    "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_rna.h5ad"
)


def _fresh_process() -> None:
    """Drop the per-process caches, as a new Ray worker would start without them."""
    testing._plate_globals.cache_clear()
    testing._cell_globals.cache_clear()


# ----------------------------------------------------------------------------------------------
# shared_data
# ----------------------------------------------------------------------------------------------


def test_shared_data_env_override(tmp_path, monkeypatch):
    (tmp_path / "cellpainting").mkdir()
    (tmp_path / "cellpainting" / "x.csv").write_text("a\n1\n")
    monkeypatch.setenv(testing.SHARED_DATA_ENV, str(tmp_path))
    assert testing.shared_data("cellpainting/x.csv") == tmp_path / "cellpainting" / "x.csv"
    assert testing.has_shared_data("cellpainting/x.csv")
    assert not testing.has_shared_data("cellpainting/missing.csv")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv.*RAYMMI_SHARED_DATA"):
        testing.shared_data("cellpainting/missing.csv")


def test_shared_data_default_is_beside_repo(monkeypatch):
    monkeypatch.delenv(testing.SHARED_DATA_ENV, raising=False)
    if not testing.has_shared_data(JUMP):
        pytest.skip("../shared/data is absent (fresh clone): nothing to resolve")
    path = testing.shared_data(JUMP)
    assert path.is_file()
    assert path.parents[2].name == "shared"


# ----------------------------------------------------------------------------------------------
# plates
# ----------------------------------------------------------------------------------------------

SMALL = testing.PlateSetSpec(n_plates=4, n_features=40, n_batches=2, seed=7)


def test_plate_is_deterministic_and_independent_of_order():
    _fresh_process()
    alone = testing.generate_plate(SMALL, 2)
    _fresh_process()
    for i in (3, 0, 1):
        testing.generate_plate(SMALL, i)
    again = testing.generate_plate(SMALL, 2)
    pd.testing.assert_frame_equal(alone, again)


def test_plates_and_seeds_differ():
    features = testing.feature_names(SMALL)
    p0 = testing.generate_plate(SMALL, 0)[features].to_numpy()
    p1 = testing.generate_plate(SMALL, 1)[features].to_numpy()
    other = testing.generate_plate(dataclass_replace(SMALL, seed=8), 0)[features].to_numpy()
    assert not np.allclose(p0, p1)
    assert not np.allclose(p0, other)


def dataclass_replace(spec, **changes):
    return dataclasses.replace(spec, **changes)


def test_plate_columns_and_dtypes():
    frame = testing.generate_plate(SMALL, 1)
    features = testing.feature_names(SMALL)
    meta = [schema.PLATE, schema.WELL, schema.BATCH, testing.COMPOUND, schema.NEGCON]
    assert list(frame.columns) == meta + features
    assert len(frame) == 384
    assert (frame[schema.PLATE] == "P0002").all()
    assert (frame[schema.BATCH] == "B1").all()
    assert frame[schema.WELL].iloc[0] == "A01" and frame[schema.WELL].iloc[-1] == "P24"
    assert frame[schema.WELL].is_unique
    assert frame[schema.NEGCON].dtype == bool
    assert frame[schema.NEGCON].sum() == SMALL.negcon_wells_per_plate
    assert (frame.loc[frame[schema.NEGCON], testing.COMPOUND] == "DMSO").all()
    assert (frame[features].dtypes == np.float32).all()
    assert np.isfinite(frame[features].to_numpy()).all()
    treated = frame.loc[~frame[schema.NEGCON], testing.COMPOUND]
    assert (treated.value_counts() == SMALL.replicates).all()
    assert treated.nunique() == 88
    assert [testing.generate_plate(SMALL, i)[schema.BATCH].iloc[0] for i in range(4)] == [
        "B1",
        "B1",
        "B2",
        "B2",
    ]


def test_feature_names_are_cellprofiler_like_and_unique():
    names = testing.feature_names(SMALL)
    assert len(set(names)) == len(names) == 40
    pattern = re.compile(r"^(Cells|Cytoplasm|Nuclei)_[A-Za-z]+_\w+$")
    assert all(pattern.match(n) for n in names)
    assert {n.split("_")[0] for n in names} == {"Cells", "Cytoplasm", "Nuclei"}
    many = testing.feature_names(testing.PlateSetSpec(n_features=5_000, n_plates=1, n_batches=1))
    assert len(set(many)) == 5_000
    same_seed_free = testing.feature_names(dataclass_replace(SMALL, seed=123))
    assert same_seed_free == names


def test_sites_give_image_rows():
    spec = dataclass_replace(SMALL, sites_per_well=3, wells_per_plate=96, negcon_wells_per_plate=8)
    frame = testing.generate_plate(spec, 0)
    assert len(frame) == 96 * 3
    assert list(frame.columns[:3]) == [schema.PLATE, schema.WELL, schema.SITE]
    assert frame[schema.SITE].tolist()[:4] == [1, 2, 3, 1]
    assert not frame.duplicated([schema.WELL, schema.SITE]).any()
    assert frame[schema.WELL].iloc[-1] == "H12"


def _zero_pairs(frames: pd.DataFrame, features: list[str], *, negcon_only: bool) -> set:
    rows = frames[frames[schema.NEGCON]] if negcon_only else frames
    spread = rows.groupby(schema.PLATE)[features].agg(lambda x: float(x.max() - x.min()))
    stacked = spread.stack()
    return {pair for pair, value in stacked.items() if value == 0.0}


@pytest.mark.parametrize("sites", [1, 2])
def test_planted_zero_spread_is_exact(sites):
    spec = testing.PlateSetSpec(
        n_plates=5,
        n_batches=2,
        n_features=30,
        zero_spread_features=2,
        zero_spread_plates=2,
        negcon_zero_spread_features=1,
        sites_per_well=sites,
        wells_per_plate=96,
        negcon_wells_per_plate=8,
        seed=3,
    )
    frames = testing.generate_plates(spec)
    features = testing.feature_names(spec)
    planted_all = testing.planted_zero_spread(spec)
    planted_neg = testing.planted_zero_spread(spec, within="negcon")
    assert len(planted_all) == 4 and len(planted_neg) == 6
    assert set(planted_all) < set(planted_neg)
    assert _zero_pairs(frames, features, negcon_only=False) == set(planted_all)
    assert _zero_pairs(frames, features, negcon_only=True) == set(planted_neg)


def test_no_zero_spread_when_none_planted():
    spec = dataclass_replace(SMALL, zero_spread_features=0, negcon_zero_spread_features=0)
    assert testing.planted_zero_spread(spec) == []
    frames = testing.generate_plates(spec)
    features = testing.feature_names(spec)
    assert not _zero_pairs(frames, features, negcon_only=True)


def test_planted_zero_spread_rejects_bad_within():
    with pytest.raises(ValueError, match="within='x'"):
        testing.planted_zero_spread(SMALL, within="x")  # type: ignore[arg-type]
    no_negcon = dataclass_replace(SMALL, negcon_wells_per_plate=0, negcon_zero_spread_features=0)
    with pytest.raises(ValueError, match="negcon wells"):
        testing.planted_zero_spread(no_negcon, within="negcon")


def _dmso_profiles(frames: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    dmso = frames[frames[schema.NEGCON]]
    scale = dmso.groupby(schema.PLATE)[features].std().mean()
    return dmso.groupby(schema.PLATE)[features].median() / scale


def test_batch_effects_exceed_plate_effects():
    spec = testing.PlateSetSpec(n_plates=8, n_batches=2, n_features=60, seed=11)
    frames = testing.generate_plates(spec)
    profiles = _dmso_profiles(frames, testing.feature_names(spec)).to_numpy()
    batch = np.repeat([0, 1], 4)
    dist = np.sqrt(((profiles[:, None] - profiles[None]) ** 2).mean(axis=2))
    same = batch[:, None] == batch[None]
    off = ~np.eye(8, dtype=bool)
    assert dist[~same].mean() > 3 * dist[same & off].mean()

    flat = dataclass_replace(spec, batch_effect_scale=0.0, plate_effect_scale=0.0)
    profiles = _dmso_profiles(testing.generate_plates(flat), testing.feature_names(spec))
    spread = profiles.std().median()
    assert spread < 0.5, "without plate/batch effects DMSO medians differ by sampling noise only"


def test_replicates_of_active_compounds_correlate():
    spec = testing.PlateSetSpec(
        n_plates=1, n_batches=1, n_features=200, zero_spread_plates=0, seed=5
    )
    frame = testing.generate_plate(spec, 0)
    features = testing.feature_names(spec)
    x = frame[features].to_numpy(np.float64)
    negcon = frame[schema.NEGCON].to_numpy()
    z = (x - x[negcon].mean(axis=0)) / x[negcon].std(axis=0)
    compound = frame[testing.COMPOUND].to_numpy()
    active = set(testing.active_compounds(spec))
    assert 0.2 < len(active) / spec.n_compounds < 0.5
    corr = np.corrcoef(z)
    i, j = np.triu_indices(len(z), 1)
    treated = ~negcon[i] & ~negcon[j]
    same = compound[i] == compound[j]
    is_active = np.array([c in active for c in compound])
    replicate = corr[i, j][same & treated & is_active[i]]
    inactive = corr[i, j][same & treated & ~is_active[i]]
    random = corr[i, j][~same & treated]
    assert np.median(replicate) > 0.5
    assert np.median(replicate) > np.median(random) + 0.4
    assert abs(np.median(inactive) - np.median(random)) < 0.15


def test_plate_statistics_near_fitted_figures():
    spec = testing.PlateSetSpec(n_plates=1, n_batches=1, n_features=454, seed=0)
    frame = testing.generate_plate(spec, 0)
    features = [f for p, f in testing.planted_zero_spread(spec, within="negcon")]
    features = [f for f in testing.feature_names(spec) if f not in features]
    x = frame[features].to_numpy(np.float64)
    negcon = frame[schema.NEGCON].to_numpy()
    ratio = np.median(x[negcon].std(axis=0) / x.std(axis=0))
    assert abs(ratio - testing.NEGCON_OVER_ALL_SD_LINCS) < 0.12
    shares = np.linalg.eigvalsh(np.corrcoef(x, rowvar=False))[::-1] / x.shape[1]
    assert abs(shares[0] - testing.EIGENVALUE_FRACTIONS[0]) < 0.08
    assert abs(shares[:10].sum() - sum(testing.EIGENVALUE_FRACTIONS[:10])) < 0.08
    cv = x[negcon].std(axis=0) / np.abs(x[negcon].mean(axis=0))
    assert 0.5 * testing.NEGCON_CV < np.median(cv) < 2 * testing.NEGCON_CV


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_plates": 0}, "n_plates=0"),
        ({"wells_per_plate": 100}, r"wells_per_plate=100 is not one of \[96, 384, 1536\]"),
        ({"n_batches": 9}, "n_batches=9"),
        ({"replicates": 5}, "replicates=5 does not divide the 352 treated wells"),
        ({"negcon_wells_per_plate": 1}, "negcon_wells_per_plate=1"),
        ({"active_fraction": 1.5}, "active_fraction=1.5"),
        ({"zero_spread_features": 40}, "exceeds n_features=40"),
        ({"zero_spread_plates": 5}, "zero_spread_plates=5"),
        ({"batch_effect_scale": -1.0}, "batch_effect_scale=-1.0"),
        ({"sites_per_well": 0}, "sites_per_well=0"),
        ({"negcon_wells_per_plate": 0}, "negcon_zero_spread_features=1 needs negcon wells"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_plate_spec_validation(changes, match):
    with pytest.raises(ValueError, match=match) as info:
        dataclass_replace(SMALL, **changes)
    assert isinstance(info.value, schema.RaymmiError)


def test_plate_index_out_of_range():
    with pytest.raises(ValueError, match="plate_index=4"):
        testing.generate_plate(SMALL, 4)


# ----------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------

MULTIOME = testing.CellSetSpec(
    n_cells=2_500, n_genes=1_000, n_peaks=2_000, chunk_size=1_000, n_batches=2, seed=4
)
CITE = testing.CellSetSpec(kind="cite", n_cells=1_500, n_genes=1_000, chunk_size=1_500, seed=4)


def _assert_batches_equal(a: schema.CellBatch, b: schema.CellBatch) -> None:
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.modalities.keys() == b.modalities.keys()
    for name, matrix in a.modalities.items():
        other = b.modalities[name]
        if sp.issparse(matrix):
            assert (matrix != other).nnz == 0
        else:
            np.testing.assert_array_equal(matrix, other)


def test_cells_are_deterministic_and_independent_of_order():
    _fresh_process()
    alone = testing.generate_cells(MULTIOME, 1)
    _fresh_process()
    testing.generate_cells(MULTIOME, 2)
    testing.generate_cells(MULTIOME, 0)
    _assert_batches_equal(alone, testing.generate_cells(MULTIOME, 1))
    other = testing.generate_cells(dataclass_replace(MULTIOME, seed=5), 1)
    assert (other.modalities["rna"] != alone.modalities["rna"]).nnz > 0


def test_chunks_cover_all_cells_once():
    assert testing.n_chunks(MULTIOME) == 3
    chunks = [testing.generate_cells(MULTIOME, i) for i in range(3)]
    assert [len(c.obs) for c in chunks] == [1_000, 1_000, 500]
    obs = pd.concat([c.obs for c in chunks])
    assert len(obs) == MULTIOME.n_cells and obs.index.is_unique
    assert obs.index[0] == "c000000000" and obs.index[-1] == "c000002499"
    assert obs.index[12] == "c000000012"
    assert obs[schema.CELL_BATCH].dtype == "category"
    assert set(obs[schema.CELL_BATCH]) == {"s1", "s2"}
    assert set(obs[schema.CELL_TYPE]) <= {f"T{t}" for t in range(8)}
    assert set(obs["phase"]) == {"G1", "S", "G2M"}
    rna = sp.vstack([c.modalities["rna"] for c in chunks])
    assert rna.shape == (2_500, 1_000)
    with pytest.raises(ValueError, match="chunk_index=3"):
        testing.generate_cells(MULTIOME, 3)


def test_multiome_modalities():
    batch = testing.generate_cells(MULTIOME, 0)
    assert list(batch.modalities) == ["rna", "atac"]
    rna, atac = batch.modalities["rna"], batch.modalities["atac"]
    assert isinstance(rna, sp.csr_matrix) and isinstance(atac, sp.csr_matrix)
    assert rna.dtype == np.float32 and atac.dtype == np.float32
    assert rna.shape == (1_000, 1_000) and atac.shape == (1_000, 2_000)
    assert rna.has_canonical_format and atac.has_canonical_format
    assert (rna.data >= 1).all() and (rna.data == np.round(rna.data)).all()
    assert (atac.data == 1).all()
    accessible = np.diff(atac.indptr) / MULTIOME.n_peaks
    assert 0.02 < np.median(accessible) < 0.08  # 10x Multiome literature: 2-8%
    rna_depth = np.log(np.asarray(rna.sum(axis=1)).ravel())
    corr = np.corrcoef(rna_depth, np.log(np.diff(atac.indptr)))[0, 1]
    assert 0.1 < corr < 0.6, "ATAC depth is only loosely tied to RNA depth"
    table = schema.cell_batch_to_arrow(batch)
    assert table.num_rows == 1_000 and "atac_depth" in table.column_names


def test_rna_matches_fitted_figures():
    batch = testing.generate_cells(CITE, 0)
    rna = batch.modalities["rna"]
    library = np.asarray(rna.sum(axis=1)).ravel()
    expected = testing.RNA_UMIS_PER_GENE * CITE.n_genes
    assert 0.9 * expected < np.median(library) < 1.1 * expected
    assert abs(np.log(library).std() - testing.RNA_DEPTH_LOG_SD) < 0.08
    sparsity = 1.0 - rna.nnz / np.prod(rna.shape)
    assert abs(sparsity - testing.RNA_SPARSITY) < 0.05
    # method-of-moments NB dispersion within the largest cell type, as measured on the file
    types = batch.obs[schema.CELL_TYPE].to_numpy()
    x = rna[types == pd.Series(types).mode()[0]].toarray().astype(np.float64)
    size = x.sum(axis=1) / x.sum(axis=1).mean()
    x = x[:, x.mean(axis=0) > 0.5]
    expected_counts = np.outer(size, x.mean(axis=0))
    excess = ((x - expected_counts) ** 2 - expected_counts).sum(axis=0)
    dispersion = np.median(excess / (expected_counts**2).sum(axis=0))
    assert dispersion == pytest.approx(testing.RNA_WITHIN_TYPE_DISPERSION, abs=0.03)


def test_cite_modalities_match_fitted_figures():
    batch = testing.generate_cells(CITE, 0)
    assert list(batch.modalities) == ["rna", "adt"]
    adt = batch.modalities["adt"]
    assert isinstance(adt, np.ndarray) and adt.dtype == np.float32
    assert adt.shape == (1_500, 134)
    assert (adt == np.round(adt)).all() and (adt >= 0).all()
    total = adt.sum(axis=1)
    expected = testing.ADT_COUNTS_PER_PROTEIN * 134
    assert 0.85 * expected < np.median(total) < 1.15 * expected
    assert abs((adt == 0).mean() - testing.ADT_ZERO_FRACTION) < 0.05


def test_cell_types_drive_rna():
    batch = testing.generate_cells(CITE, 0)
    rna = batch.modalities["rna"]
    norm = np.log1p(rna.multiply(1e4 / rna.sum(axis=1)).toarray())
    types = batch.obs[schema.CELL_TYPE].to_numpy()
    big = [t for t, n in zip(*np.unique(types, return_counts=True), strict=True) if n >= 50]
    centroids = np.array([norm[types == t].mean(axis=0) for t in big])
    between = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(axis=2))
    within = np.mean(
        [
            np.sqrt(((norm[types == t] - c) ** 2).sum(axis=1)).mean()
            for t, c in zip(big, centroids, strict=True)
        ]
    )
    assert between[np.triu_indices(len(big), 1)].min() > 0.5 * within


def test_feature_names_of_cells():
    genes = testing.gene_names(MULTIOME)
    assert len(genes) == len(set(genes)) == 1_000
    s_genes, g2m_genes = testing.cell_cycle_genes(MULTIOME)
    assert set(s_genes + g2m_genes) <= set(genes) and "MKI67" in g2m_genes
    small = dataclass_replace(MULTIOME, n_genes=50)
    assert testing.cell_cycle_genes(small) == ([], [])
    assert testing.gene_names(small)[0] == "GENE00000"

    peaks = testing.peak_names(MULTIOME)
    assert len(peaks) == len(set(peaks)) == 2_000
    parsed = [re.fullmatch(r"(chr(?:\d+|X))-(\d+)-(\d+)", p) for p in peaks]
    assert all(parsed)
    order = {f"chr{i}": i for i in range(1, 23)} | {"chrX": 23}
    keys = [(order[m[1]], int(m[2]), int(m[3])) for m in parsed]
    assert keys == sorted(keys)
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in itertools.pairwise(keys))
    assert {k[0] for k in keys} == set(range(1, 24))
    assert testing.peak_names(dataclass_replace(MULTIOME, seed=99)) == peaks

    proteins = testing.protein_names(CITE)
    assert len(proteins) == 134 and proteins[:3] == ["CD86", "CD274", "CD270"]
    assert testing.protein_names(dataclass_replace(CITE, n_proteins=136))[-1] == "ADT136"


def test_cell_spec_defaults_and_validation():
    spec = testing.CellSetSpec()
    assert spec.median_rna_depth == pytest.approx(2_000 * testing.RNA_UMIS_PER_GENE)
    assert spec.median_atac_depth == pytest.approx(200)
    assert testing.n_chunks(spec) == 1
    for changes, match in [
        ({"kind": "rna"}, r"kind='rna' is not one of \['cite', 'multiome'\]"),
        ({"n_cells": 0}, "n_cells=0"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"rna_depth": -5.0}, "rna_depth=-5.0"),
        ({"atac_depth": 6_000.0}, "atac_depth=6000.0 must be below n_peaks=5000"),
        ({"depth_correlation": 2.0}, "depth_correlation=2.0"),
        ({"seed": -2}, "seed=-2"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclass_replace(spec, **changes)


# ----------------------------------------------------------------------------------------------
# the fitted figures are what the real files say
# ----------------------------------------------------------------------------------------------


def test_fitted_plate_figures_match_real_files():
    if not (testing.has_shared_data(JUMP) and testing.has_shared_data(LINCS)):
        pytest.skip("../shared/data is absent: cannot re-measure the fitted plate figures")
    jump = pd.read_parquet(testing.shared_data(JUMP))
    features = [c for c in jump.columns if not schema.is_metadata(c)]
    neg = jump[jump[schema.NEGCON]].groupby(schema.PLATE)[features]
    pooled = np.sqrt(
        (neg.var() * (neg.size().to_numpy()[:, None] - 1)).sum() / (neg.size() - 1).sum()
    )
    assert (pooled / jump[features].mean()).mean() == pytest.approx(testing.NEGCON_CV, abs=5e-4)

    lincs = pd.read_csv(testing.shared_data(LINCS))
    x = lincs[[c for c in lincs.columns if not c.startswith("Metadata_")]].to_numpy()
    shares = np.linalg.eigvalsh(np.corrcoef(x, rowvar=False))[::-1] / x.shape[1]
    np.testing.assert_allclose(shares[:20], testing.EIGENVALUE_FRACTIONS, atol=5e-4)


def test_fitted_rna_figures_match_real_file():
    if not testing.has_shared_data(CITE_RNA):
        pytest.skip("../shared/data is absent: cannot re-measure the fitted RNA figures")
    h5py = pytest.importorskip("h5py")
    with h5py.File(testing.shared_data(CITE_RNA), "r") as f:
        group = f["layers/counts"]
        shape = tuple(group.attrs["shape"])
        counts = sp.csc_matrix(
            (group["data"][:], group["indices"][:], group["indptr"][:]), shape=shape
        ).tocsr()
    library = np.asarray(counts.sum(axis=1)).ravel()
    assert np.median(library) / shape[1] == pytest.approx(testing.RNA_UMIS_PER_GENE, abs=1e-3)
    assert np.log(library).std() == pytest.approx(testing.RNA_DEPTH_LOG_SD, abs=0.005)
    assert 1 - counts.nnz / np.prod(shape) == pytest.approx(testing.RNA_SPARSITY, abs=0.001)


@pytest.mark.parametrize("mean", [0.05, 0.7, 4.0, 9.9, 10.1, 60.0])
def test_sparse_negative_binomial_sampler_is_exact(mean):
    # The hand-written sampler (zero decision, then inversion or numpy) against the NB law.
    theta = 1.0 / testing.RNA_NB_DISPERSION if mean < 50 else 2.0
    rng = np.random.default_rng(0)
    shape = (400, 500)
    rows, cols, counts = testing._nb_sparse(np.full(shape, mean, np.float32), theta, rng)
    x = np.zeros(shape, np.float64)
    x[rows, cols] = counts
    assert (counts >= 1).all()
    n = x.size
    var = mean + mean**2 / theta
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / n)
    p0 = (theta / (theta + mean)) ** theta
    assert abs((x == 0).mean() - p0) < 5 * np.sqrt(p0 * (1 - p0) / n) + 1e-9
    p1 = p0 * theta * mean / (theta + mean)
    assert abs((x == 1).mean() - p1) < 5 * np.sqrt(p1 * (1 - p1) / n) + 1e-9
    assert x.var() == pytest.approx(var, rel=0.05)
