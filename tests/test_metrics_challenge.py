"""Predict and match scores of the NeurIPS 2021 challenge, and the matching-format check."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from raymmi import metrics as M


def test_rmse_hand_case_dense_and_sparse():
    y = np.array([[0.0, 1.0], [2.0, 0.0]])
    p = np.array([[1.0, 1.0], [2.0, 3.0]])
    expected = np.sqrt((1 + 0 + 0 + 9) / 4)
    assert M.rmse(y, p) == pytest.approx(expected)
    assert M.rmse(sp.csc_matrix(y), p) == pytest.approx(expected)
    assert M.rmse(sp.csr_matrix(y), sp.csr_matrix(p)) == pytest.approx(expected)


def test_rmse_blocks_agree_with_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    y = sp.random(50, 7, density=0.3, random_state=1, format="csr")
    p = rng.normal(size=(50, 7))
    expected = np.sqrt(np.mean((y.toarray() - p) ** 2))
    monkeypatch.setattr("raymmi.metrics._challenge._RMSE_BLOCK", 8)
    assert M.rmse(y, p) == pytest.approx(expected)


def test_rmse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(2, 3\)"):
        M.rmse(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.rmse(np.zeros((2, 2)), np.full((2, 2), np.nan))


def test_match_score_hand_case():
    # row 0 puts 0.5 on its partner, row 1 1.0 (after normalizing 2 -> 1), row 2 nothing
    m = sp.csr_matrix(np.array([[0.5, 0.5, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(M.match_probabilities(m), [0.5, 1.0, 0.0])
    assert M.match_score(m) == pytest.approx(0.5)
    # negative entries count as 0 (the challenge sets them to 0 before normalizing)
    neg = sp.csr_matrix(np.array([[1.0, -1.0], [0.0, 1.0]]))
    assert M.match_score(neg) == pytest.approx(1.0)
    # explicit partners
    assert M.match_score(m, partner=np.array([1, 1, 0])) == pytest.approx((0.5 + 1 + 1) / 3)


def test_match_score_of_random_and_perfect():
    n = 40
    uniform = sp.csr_matrix(np.full((n, n), 1.0 / n))
    assert M.match_score(uniform) == pytest.approx(1.0 / n)
    assert M.match_score(sp.identity(n, format="csr")) == pytest.approx(1.0)
    perm = np.random.default_rng(0).permutation(n)
    shuffled = sp.csr_matrix((np.ones(n), (np.arange(n), perm)), shape=(n, n))
    assert M.match_score(shuffled, partner=perm) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not square"):
        M.match_score(sp.csr_matrix((3, 4)))


def test_check_matching_accepts_a_valid_matching():
    n = 30
    rng = np.random.default_rng(1)
    dense = rng.random((n, n)) * (rng.random((n, n)) < 0.2)
    dense[np.arange(n), np.arange(n)] += 0.1
    dense /= dense.sum(axis=1, keepdims=True)
    M.check_matching(sp.csr_matrix(dense))
    M.check_matching(sp.csc_matrix(dense), n_cells=n)


def test_check_matching_says_where_it_fails():
    n = 12
    m = sp.lil_matrix(np.eye(n))
    m[3, 3] = 0.5  # row 3 sums to 0.5
    m[7, 1] = -0.25  # row 7: negative value, sums to 0.75
    with pytest.raises(M.MatchingError) as err:
        M.check_matching(m.tocsr())
    text = str(err.value)
    assert "1 rows hold negative values: row 7: -0.25" in text
    assert "row 3: 0.5" in text and "row 7: 0.75" in text and "do not sum to 1" in text


def test_check_matching_limits_non_zeros_per_row():
    n = 6
    dense = np.eye(n)
    dense[2] = 1.0 / n  # row 2 stores n entries
    with pytest.raises(M.MatchingError, match="1 rows store more than 4 entries: row 2: 6"):
        M.check_matching(sp.csr_matrix(dense), max_nonzero=4)
    M.check_matching(sp.csr_matrix(dense), max_nonzero=6)


def test_check_matching_quotes_a_few_rows_of_many():
    with pytest.raises(M.MatchingError, match=r"20 rows do not sum.*and 15 more rows"):
        M.check_matching(sp.csr_matrix(np.eye(20) * 2))


def test_check_matching_format_errors():
    with pytest.raises(M.MatchingError, match="scipy sparse matrix, got ndarray"):
        M.check_matching(np.eye(3))  # type: ignore[arg-type]
    with pytest.raises(M.MatchingError, match=r"shape \(3, 4\), expected \(3, 3\)"):
        M.check_matching(sp.csr_matrix((3, 4)))
    with pytest.raises(M.MatchingError, match=r"expected \(5, 5\)"):
        M.check_matching(sp.identity(3, format="csr"), n_cells=5)
    nan = sp.csr_matrix(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(M.MatchingError, match="1 rows hold NaN or inf: row 0"):
        M.check_matching(nan)
