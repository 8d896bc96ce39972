"""The ``frequency`` operation: value counts over hash buckets (:class:`ValueCounts`), decision.

Part of :mod:`raymmi.plates._select` (which re-exports the public names). Pure: no Ray, no
MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from raymmi.plates._moments import as_matrix
from raymmi.plates._select_config import Thresholds
from raymmi.schema import RaymmiError

# ==============================================================================================
# Partial statistics
# ==============================================================================================


def value_buckets(values: np.ndarray, n_buckets: int) -> np.ndarray:
    """Hash bucket in ``[0, n_buckets)`` of each float value.

    Equal values share a bucket, and so do 0.0 and -0.0 (equal for pandas and numpy).

    Parameters
    ----------
    values
        Float array of any shape (float32 or float64).

    Returns
    -------
    numpy.ndarray
        int64 array of the same shape.
    """
    v = np.asarray(values)
    if n_buckets == 1:
        return np.zeros(v.shape, dtype=np.int64)
    canonical = v + v.dtype.type(0)  # -0.0 + 0.0 == +0.0: one bit pattern per value
    unsigned = np.uint32 if v.dtype.itemsize == 4 else np.uint64
    bits = canonical.view(unsigned).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = (bits * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (mixed % np.uint64(n_buckets)).astype(np.int64)


def bucket_columns(values: np.ndarray, *, bucket: int = 0, n_buckets: int = 1) -> list[np.ndarray]:
    """Per column, the non-NaN values of ``values`` that fall in hash bucket ``bucket``.

    Parameters
    ----------
    values
        Array of shape (n_rows, n_features).

    Returns
    -------
    list of numpy.ndarray
        ``n_features`` 1-D arrays.
    """
    x = as_matrix(values, name="values")
    out = []
    for j in range(x.shape[1]):
        column = x[:, j]
        column = column[~np.isnan(column)]
        if n_buckets > 1:
            column = column[value_buckets(column, n_buckets) == bucket]
        out.append(column)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ValueCounts:
    """Per feature, the number of distinct values and the two largest value counts.

    Parameters
    ----------
    n_unique
        int64 of shape (n_features,): distinct non-NaN values.
    top1, top2
        int64 of shape (n_features,): count of the most frequent and of the 2nd most frequent
        value (0 when there is no such value).

    Notes
    -----
    These do not merge across blocks of *rows*; they merge exactly across disjoint sets of
    *values* (hash buckets, :func:`value_buckets`), with :meth:`merge_buckets`, and across
    features with :meth:`concat`.
    """

    n_unique: np.ndarray
    top1: np.ndarray
    top2: np.ndarray

    @classmethod
    def of_columns(cls, columns: Sequence[np.ndarray]) -> ValueCounts:
        """Counts of each 1-D array in ``columns`` (NaN-free), one feature each."""
        n_unique = np.zeros(len(columns), dtype=np.int64)
        top1 = np.zeros(len(columns), dtype=np.int64)
        top2 = np.zeros(len(columns), dtype=np.int64)
        for j, column in enumerate(columns):
            counts = np.unique(column, return_counts=True)[1]
            n_unique[j] = counts.size
            if counts.size >= 2:
                two = np.partition(counts, counts.size - 2)[-2:]
                top1[j], top2[j] = two[1], two[0]
            elif counts.size == 1:
                top1[j] = counts[0]
        return cls(n_unique=n_unique, top1=top1, top2=top2)

    @classmethod
    def of(cls, values: np.ndarray, *, bucket: int = 0, n_buckets: int = 1) -> ValueCounts:
        """Counts over the rows of ``values``, shape (n_rows, n_features), NaN skipped.

        Only the values in hash bucket ``bucket`` of ``n_buckets`` are counted.
        """
        return cls.of_columns(bucket_columns(values, bucket=bucket, n_buckets=n_buckets))

    def merge_buckets(self, other: ValueCounts) -> ValueCounts:
        """Counts over the union of two *disjoint value sets* of the same features and rows."""
        if other.n_unique.shape != self.n_unique.shape:
            msg = "cannot merge ValueCounts of different feature sets"
            raise RaymmiError(msg)
        return ValueCounts(
            n_unique=self.n_unique + other.n_unique,
            top1=np.maximum(self.top1, other.top1),
            top2=np.maximum(np.minimum(self.top1, other.top1), np.maximum(self.top2, other.top2)),
        )

    @classmethod
    def concat(cls, parts: Sequence[ValueCounts]) -> ValueCounts:
        """Counts of consecutive feature chunks, joined in order."""
        return cls(
            n_unique=np.concatenate([p.n_unique for p in parts]),
            top1=np.concatenate([p.top1 for p in parts]),
            top2=np.concatenate([p.top2 for p in parts]),
        )


# ==============================================================================================
# Decision
# ==============================================================================================


def _frequency(
    counts: ValueCounts, n_rows: int, candidates: np.ndarray, t: Thresholds
) -> dict[int, str]:
    out = {}
    for i in candidates:
        n_unique, top1, top2 = counts.n_unique[i], counts.top1[i], counts.top2[i]
        freq = top2 / top1 if n_unique >= 2 else 0.0
        unique = n_unique / n_rows
        why = []
        if freq < t.freq_cut:
            why.append(f"freq_ratio={freq:.4g} < freq_cut={t.freq_cut:g}")
        if unique < t.unique_cut:
            why.append(f"unique_ratio={unique:.4g} < unique_cut={t.unique_cut:g}")
        if why:
            out[int(i)] = "; ".join(why)
    return out
