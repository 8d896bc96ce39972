"""Predict methods on generated CITE-seq cells: the mean baseline and the SVD + KRR recipe."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.kernel_ridge import KernelRidge
from threadpoolctl import threadpool_limits

from raymmi import metrics as M
from raymmi import tasks as T
from raymmi.testing import CellSetSpec, generate_cells


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices on a shared 2-core box: spinning BLAS threads cost ~5x (measured)."""
    with threadpool_limits(limits=1):
        yield


def _normalized_cite(seed: int = 1):
    """Generated CITE cells, RNA log1p(CP10k) (sparse) and ADT log1p counts, with batches."""
    spec = CellSetSpec(
        n_cells=450, kind="cite", n_genes=300, n_proteins=40, n_cell_types=5, n_batches=3,
        seed=seed,
    )  # fmt: skip
    cells = generate_cells(spec, 0)
    rna = sp.csr_matrix(cells.modalities["rna"], dtype=np.float64)
    rna = sp.diags(1e4 / np.maximum(np.asarray(rna.sum(axis=1)).ravel(), 1)) @ rna
    rna = sp.csr_matrix(rna).log1p()
    adt = np.log1p(np.asarray(cells.modalities["adt"], dtype=np.float64))
    return rna, adt, cells.obs["batch"].astype(str).to_numpy()


def test_mean_baseline_is_the_train_mean():
    y = sp.csr_matrix(np.array([[0.0, 2.0], [4.0, 0.0], [2.0, 1.0]]))
    got = T.predict_mean(y, n_cells=2)
    np.testing.assert_allclose(got, [[2.0, 1.0], [2.0, 1.0]])
    assert T.predict_mean(y, n_cells=0).shape == (0, 2)
    with pytest.raises(ValueError, match="non-empty y_train"):
        T.predict_mean(np.zeros((0, 3)), n_cells=2)


def test_batch_halves():
    halves = T.batch_halves(np.array(["s3", "s1", "s2", "s1", "s4"]))
    np.testing.assert_array_equal(halves[0], [False, True, True, True, False])  # s1, s2
    np.testing.assert_array_equal(halves[1], [True, False, False, False, True])  # s3, s4
    assert len(T.batch_halves(np.array(["a", "a"]))) == 1
    assert T.batch_halves(np.array(["a", "a"]))[0].all()


def test_svd_krr_is_the_average_of_kernel_ridge_fits_on_batch_halves():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6))
    y = np.tanh(x[:, :2]) + 0.1 * rng.normal(size=(60, 2))
    x_test = rng.normal(size=(10, 6))
    batch = np.repeat(["a", "b", "c", "d"], 15)
    config = T.SvdKrrConfig(
        n_input_components=None, n_output_components=None, length_scale=3.0, alpha=0.5,
        clip_min=None,
    )  # fmt: skip
    got = T.predict_svd_krr(x, y, x_test, batch=batch, config=config)

    def zscore(a):
        return (a - a.mean(axis=1, keepdims=True)) / a.std(axis=1, keepdims=True)

    expected = np.zeros((10, 2))
    for half in (np.isin(batch, ["a", "b"]), np.isin(batch, ["c", "d"])):
        krr = KernelRidge(alpha=0.5, kernel="rbf", gamma=1 / (2 * 3.0**2))
        expected += krr.fit(zscore(x[half]), y[half]).predict(zscore(x_test)) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_svd_krr_beats_the_mean_on_a_held_out_batch():
    rna, adt, batch = _normalized_cite()
    train, test = T.batch_split(batch, train_batches=["s1", "s2"], test_batches=["s3"])
    config = T.SvdKrrConfig(n_input_components=50, n_output_components=20)
    krr = T.predict_svd_krr(rna[train], adt[train], rna[test], batch=batch[train], config=config)
    baseline = T.predict_mean(adt[train], n_cells=int(test.sum()))
    assert krr.shape == baseline.shape == (test.sum(), adt.shape[1])
    assert (krr >= 0).all()
    assert M.rmse(adt[test], krr) < 0.8 * M.rmse(adt[test], baseline)
    # not transductive: the input SVD sees the training cells only, and still helps
    inductive = T.predict_svd_krr(
        rna[train], adt[train], rna[test], batch=batch[train],
        config=T.SvdKrrConfig(n_input_components=50, n_output_components=20, transductive=False),
    )  # fmt: skip
    assert M.rmse(adt[test], inductive) < 0.8 * M.rmse(adt[test], baseline)


def test_presets_are_the_winners_hyperparameters():
    gex_adt = T.svd_krr_config("rna", "adt")
    assert (gex_adt.n_input_components, gex_adt.n_output_components) == (300, 70)
    assert (gex_adt.length_scale, gex_adt.alpha) == (10.0, 0.2)
    assert T.svd_krr_config("adt", "rna").n_input_components is None
    assert T.svd_krr_config("rna", "atac").n_input_components == 1000
    with pytest.raises(ValueError, match="no SVD \\+ KRR preset for 'adt' → 'atac'"):
        T.svd_krr_config("adt", "atac")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_input_components": 0}, "n_input_components=0 must be a positive"),
        ({"alpha": -1.0}, "alpha=-1.0 must be a positive"),
        ({"length_scale": float("nan")}, "length_scale=nan"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.SvdKrrConfig(**kwargs)


def test_svd_krr_rejects_bad_shapes():
    x, y = np.zeros((5, 3)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="same \\(non-zero\\) number of cells"):
        T.predict_svd_krr(x, y[:4], x, batch=np.zeros(5))
    with pytest.raises(ValueError, match="x_test must have x_train's 3 columns"):
        T.predict_svd_krr(x, y, np.zeros((2, 4)), batch=np.zeros(5))
    with pytest.raises(ValueError, match="one label per training cell"):
        T.predict_svd_krr(x, y, x, batch=np.zeros(4))
