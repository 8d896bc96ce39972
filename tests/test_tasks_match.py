"""Matching baselines on generated CITE-seq cells: valid matrices that beat random."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from raymmi import metrics as M
from raymmi import tasks as T
from raymmi.testing import CellSetSpec, generate_cells


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices on a shared 2-core box: spinning BLAS threads cost ~5x (measured)."""
    with threadpool_limits(limits=1):
        yield


def test_knn_softmax_hand_case():
    e1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    e2 = np.array([[0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    m = T.knn_softmax_matching(e1, e2, k=2, temperature=1.0)
    assert isinstance(m, sp.csr_matrix) and m.shape == (2, 3)
    # row 0: cosine 1 with column 1, 1/sqrt(2) with column 2; softmax of those two
    w = np.exp([1.0, 1 / np.sqrt(2)])
    np.testing.assert_allclose(m.toarray()[0], [0.0, *(w / w.sum())])
    np.testing.assert_allclose(m.toarray()[1], [w[0] / w.sum(), 0.0, w[1] / w.sum()])


def test_knn_softmax_is_a_valid_matching(monkeypatch):
    monkeypatch.setattr("raymmi.tasks._match._BLOCK", 7)  # several blocks
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 5))
    m = T.knn_softmax_matching(e, e + 0.01 * rng.normal(size=e.shape), k=10)
    M.check_matching(m, max_nonzero=10)
    assert np.diff(m.indptr).tolist() == [10] * 50
    assert M.match_score(m) > 0.5
    full = T.knn_softmax_matching(e[:5], e[:5], k=1000)  # k capped at n2
    assert full.nnz == 25
    with pytest.raises(ValueError, match="k=1001 must be between 1 and 1000"):
        T.knn_softmax_matching(e, e, k=1001)
    with pytest.raises(ValueError, match="same d"):
        T.knn_softmax_matching(e, e[:, :3])


def test_cca_matching_beats_random_on_generated_cells():
    spec = CellSetSpec(n_cells=500, kind="cite", n_genes=300, n_proteins=40, n_batches=2, seed=3)
    cells = generate_cells(spec, 0)
    rna = sp.csr_matrix(cells.modalities["rna"], dtype=np.float64).log1p()
    adt = np.log1p(np.asarray(cells.modalities["adt"], dtype=np.float64))
    batch = cells.obs["batch"].astype(str).to_numpy()
    train, test = T.batch_split(batch, train_batches=["s1"], test_batches=["s2"])
    m = T.match_cca(rna[train], adt[train], rna[test], adt[test], n_pcs=30, k=50)
    M.check_matching(m)
    n = int(test.sum())
    assert m.shape == (n, n)
    assert M.match_score(m) > 3.0 / n
    e1, e2 = T.cca_embeddings(rna[train], adt[train], rna[test], adt[test], n_components=5)
    assert e1.shape == (n, 5) and e2.shape == (n, 5)
    with pytest.raises(ValueError, match="same paired cells"):
        T.match_cca(rna[train], adt[test], rna[test], adt[test])
