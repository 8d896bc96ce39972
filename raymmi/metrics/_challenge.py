"""Scores of the NeurIPS 2021 multimodal challenge's predict and match tasks.

Definitions follow the challenge (Lance et al. 2022; ``neurips2021_multimodal_viash``
metrics): predict is scored by the RMSE over all test cells x features of the normalized
values; match by the mean, over cells, of the weight a row-stochastic N x N matrix puts on
the cell's true partner (random guessing scores 1/N). :func:`check_matching` is the format
check a submission had to pass, with messages that say where it fails. No Ray, no MLflow, no
file I/O.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Most non-zeros a row of a matching matrix may hold (the challenge's limit).
MAX_MATCH_NONZERO = 1000
_SHOW = 5  # offending rows quoted in a message
_RMSE_BLOCK = 4096  # rows densified at a time


class MatchingError(ValueError):
    """A matching matrix breaks the challenge's format; the message says where."""


def _dense_rows(m: np.ndarray | sp.spmatrix | sp.sparray, start: int, stop: int) -> np.ndarray:
    block = m[start:stop]
    if sp.issparse(block):
        block = block.toarray()  # type: ignore[union-attr]
    return np.asarray(block, dtype=np.float64)


def rmse(
    y_true: np.ndarray | sp.spmatrix | sp.sparray,
    y_pred: np.ndarray | sp.spmatrix | sp.sparray,
) -> float:
    """Root mean squared error over every cell x feature entry (the predict task's score).

    Parameters
    ----------
    y_true
        Observed normalized values, dense or sparse, shape (n_cells, n_features).
    y_pred
        Predicted values, dense or sparse, same shape.

    Returns
    -------
    float
        ``sqrt(mean((y_true - y_pred) ** 2))``; sparse inputs are densified a block of rows
        at a time, never whole.
    """
    if y_true.shape != y_pred.shape or len(y_true.shape) != 2 or 0 in y_true.shape:
        msg = (
            f"rmse needs y_true and y_pred of the same non-empty shape (n_cells, n_features); "
            f"got {y_true.shape} and {y_pred.shape}; predict every test cell and feature"
        )
        raise ValueError(msg)
    y_true = y_true.tocsr() if sp.issparse(y_true) else y_true  # type: ignore[union-attr]
    y_pred = y_pred.tocsr() if sp.issparse(y_pred) else y_pred  # type: ignore[union-attr]
    n, m = y_true.shape
    total = 0.0
    for start in range(0, n, _RMSE_BLOCK):
        stop = min(n, start + _RMSE_BLOCK)
        diff = _dense_rows(y_true, start, stop) - _dense_rows(y_pred, start, stop)
        total += float(np.sum(diff * diff))
    if not np.isfinite(total):
        msg = "rmse: y_true or y_pred holds NaN or infinite values"
        raise ValueError(msg)
    return float(np.sqrt(total / (n * m)))


def _partners(partner: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    n_rows, n_cols = shape
    if partner is None:
        if n_rows != n_cols:
            msg = (
                f"matching matrix of shape {shape} is not square: pass partner= (the column of "
                "each row's true partner)"
            )
            raise ValueError(msg)
        return np.arange(n_rows)
    partner = np.asarray(partner)
    if partner.shape != (n_rows,) or not np.issubdtype(partner.dtype, np.integer):
        msg = (
            f"partner needs one integer column index per row, shape ({n_rows},); got "
            f"{partner.shape} of {partner.dtype}"
        )
        raise ValueError(msg)
    if partner.size and (partner.min() < 0 or partner.max() >= n_cols):
        msg = f"partner holds column indices outside 0 ... {n_cols - 1}"
        raise ValueError(msg)
    return partner


def match_probabilities(
    matrix: np.ndarray | sp.spmatrix | sp.sparray, *, partner: np.ndarray | None = None
) -> np.ndarray:
    """Per-cell weight on the true partner, as the challenge scores it.

    Negative entries count as 0 and each row is divided by its sum (a row summing to 0
    scores 0), so the score does not depend on a method normalizing exactly.

    Parameters
    ----------
    matrix
        Matching weights of shape (n_cells_mod1, n_cells_mod2), dense or sparse.
    partner
        Column of each row's true partner, int array of shape (n_cells_mod1,); default: the
        diagonal (row i pairs with column i).

    Returns
    -------
    numpy.ndarray
        Shape (n_cells_mod1,), values in [0, 1].
    """
    if len(matrix.shape) != 2:
        msg = f"matrix must be 2-d (n_cells_mod1, n_cells_mod2); got shape {matrix.shape}"
        raise ValueError(msg)
    cols = _partners(partner, matrix.shape)
    m = sp.csr_matrix(matrix, dtype=np.float64)
    m.data = np.maximum(m.data, 0.0)
    row_sum = np.asarray(m.sum(axis=1)).ravel()
    on_partner = np.asarray(m[np.arange(m.shape[0]), cols]).ravel()
    out = np.zeros(m.shape[0])
    np.divide(on_partner, row_sum, out=out, where=row_sum > 0)
    return out


def match_score(
    matrix: np.ndarray | sp.spmatrix | sp.sparray, *, partner: np.ndarray | None = None
) -> float:
    """The match task's score: mean over cells of :func:`match_probabilities`.

    ``matrix`` has shape (n_cells_mod1, n_cells_mod2), ``partner`` shape (n_cells_mod1,).
    Random guessing scores ``1 / n_cells_mod2``; a perfect matching scores 1.
    """
    return float(np.mean(match_probabilities(matrix, partner=partner)))


def _rows_quote(rows: np.ndarray, values: np.ndarray, what: str) -> str:
    pairs = zip(rows[:_SHOW], values[:_SHOW], strict=True)
    shown = ", ".join(f"row {r}: {v:.6g}" for r, v in pairs)
    more = f" (and {len(rows) - _SHOW} more rows)" if len(rows) > _SHOW else ""
    return f"{len(rows)} rows {what}: {shown}{more}"


def check_matching(
    matrix: sp.spmatrix | sp.sparray,
    *,
    n_cells: int | None = None,
    max_nonzero: int = MAX_MATCH_NONZERO,
    atol: float = 1e-5,
) -> None:
    """Check a matching matrix against the challenge's format; say where it fails.

    A valid matrix is sparse, square (n_cells x n_cells), finite and non-negative, holds at
    most ``max_nonzero`` stored entries per row, and every row sums to 1 within ``atol``.

    Parameters
    ----------
    matrix
        The matching, a scipy sparse matrix of shape (n_cells, n_cells).
    n_cells
        Expected number of cells; default: the number of rows.
    max_nonzero
        Most stored entries per row (the challenge's 1,000).
    atol
        Tolerance of ``|row sum - 1|``.

    Raises
    ------
    MatchingError
        Listing every broken rule, with the first offending rows (index and value) of each.
    """
    if not sp.issparse(matrix):
        msg = (
            f"matching matrix must be a scipy sparse matrix, got {type(matrix).__name__}; "
            "keep at most the top entries per row and pass scipy.sparse.csr_matrix(...)"
        )
        raise MatchingError(msg)
    n = matrix.shape[0] if n_cells is None else n_cells
    if matrix.shape != (n, n):
        msg = f"matching matrix has shape {matrix.shape}, expected ({n}, {n}) (cells x cells)"
        raise MatchingError(msg)
    m = sp.csr_matrix(matrix, dtype=np.float64)
    rows_of_entries = np.repeat(np.arange(n), np.diff(m.indptr))
    problems = []
    bad = ~np.isfinite(m.data)
    if bad.any():
        rows = np.unique(rows_of_entries[bad])
        problems.append(_rows_quote(rows, np.full(len(rows), np.nan), "hold NaN or inf"))
    negative = m.data < 0
    if negative.any():
        order = np.flatnonzero(negative)
        rows, first = np.unique(rows_of_entries[order], return_index=True)
        problems.append(_rows_quote(rows, m.data[order[first]], "hold negative values"))
    per_row = np.diff(m.indptr)
    crowded = np.flatnonzero(per_row > max_nonzero)
    if crowded.size:
        problems.append(
            _rows_quote(crowded, per_row[crowded], f"store more than {max_nonzero} entries")
        )
    sums = np.asarray(m.sum(axis=1)).ravel()
    off = np.flatnonzero(~(np.abs(sums - 1.0) <= atol))
    if off.size:
        problems.append(_rows_quote(off, sums[off], f"do not sum to 1 (atol {atol:g}); sums"))
    if problems:
        msg = "matching matrix is not a valid matching: " + "; ".join(problems)
        raise MatchingError(msg)
