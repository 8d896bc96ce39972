"""The joint-embedding baseline: PCA of standardized, concatenated modalities."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from raymmi import tasks as T


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices on a shared 2-core box: spinning BLAS threads cost ~5x (measured)."""
    with threadpool_limits(limits=1):
        yield


def _two_modalities(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(80, 30)) * rng.uniform(0.1, 10, size=30)
    b = sp.random(80, 200, density=0.2, random_state=seed, format="csr")
    return a, b


def test_embed_pca_is_pca_of_the_scaled_blocks():
    a, b = _two_modalities()
    got = T.embed_pca([a, b], n_components=5)
    bd = b.toarray()
    sd_b = bd.std(axis=0)
    scaled = np.hstack(
        [
            a / a.std(axis=0) / np.sqrt(30),
            np.divide(bd, sd_b, out=np.zeros_like(bd), where=sd_b > 0) / np.sqrt(200),
        ]
    )
    expected = PCA(n_components=5).fit_transform(scaled)
    # principal components are defined up to sign
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-8)
    assert got.shape == (80, 5)


def test_balance_gives_each_modality_equal_weight():
    a, b = _two_modalities(1)
    dense = T.embed_pca([a, b.toarray()], n_components=4)
    sparse = T.embed_pca([sp.csr_matrix(a), b], n_components=4)
    np.testing.assert_allclose(np.abs(dense), np.abs(sparse), atol=1e-6)
    # without balance the 200-feature block dominates the first component
    unbalanced = T.embed_pca([a, b.toarray()], n_components=1, balance=False)
    corr_a = abs(np.corrcoef(unbalanced[:, 0], PCA(1).fit_transform(a / a.std(0))[:, 0])[0, 1])
    assert corr_a < 0.5


def test_embed_pca_bad_input():
    a, b = _two_modalities()
    with pytest.raises(ValueError, match="n_components=101 must be between 1 and"):
        T.embed_pca([a, b], n_components=101)
    with pytest.raises(ValueError, match="same cells"):
        T.embed_pca([a, b[:10]])
    with pytest.raises(ValueError, match="at least one modality"):
        T.embed_pca([])
