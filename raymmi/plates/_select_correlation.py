"""The ``correlation`` operation: co-moments (:class:`CoMoments`) and the pairwise decision.

Part of :mod:`raymmi.plates._select` (which re-exports the public names). Pure: no Ray, no
MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from raymmi.plates._moments import as_matrix
from raymmi.schema import RaymmiError

# ==============================================================================================
# Partial statistics
# ==============================================================================================


@dataclasses.dataclass(frozen=True, eq=False)
class CoMoments:
    """Co-moments of the features of a set of rows, for Pearson correlation.

    Two forms. *Complete* (no NaN seen): ``count`` is a 0-d int64 array (rows), ``mean`` has
    shape (n_features,), ``m2`` is ``None`` (it is the diagonal of ``cross``). *Pairwise* (some
    NaN seen): every field has shape (n_features, n_features) and entry ``[i, j]`` is over the
    rows where features i and j are both present: ``count``, ``mean`` (of feature i), ``m2``
    (sum of squared deviations of feature i) and ``cross`` (sum of products of deviations).

    Parameters
    ----------
    count
        int64, shape () or (n_features, n_features).
    mean
        float64, shape (n_features,) or (n_features, n_features).
    cross
        float64, shape (n_features, n_features): ``sum((x_i - mean_i) * (x_j - mean_j))``.
    m2
        float64, shape (n_features, n_features), or ``None`` in the complete form.

    Notes
    -----
    Within a block the data are shifted by their column means before the products (so the
    sums never cancel when ``|mean| >> sd``); blocks combine with the parallel update of Chan,
    Golub and LeVeque, ``cross = cross_a + cross_b + delta_i * delta_j * n_a * n_b / n``,
    elementwise per pair in the pairwise form.
    """

    count: np.ndarray
    mean: np.ndarray
    cross: np.ndarray
    m2: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        """Number of features."""
        return int(self.cross.shape[0])

    @property
    def pairwise(self) -> bool:
        """Whether the statistics are per pair (some value was NaN)."""
        return self.m2 is not None

    @classmethod
    def empty(cls, n_features: int) -> CoMoments:
        """Co-moments of no rows (the identity of :meth:`merge`)."""
        return cls(
            count=np.zeros((), dtype=np.int64),
            mean=np.zeros(n_features),
            cross=np.zeros((n_features, n_features)),
        )

    @classmethod
    def of(cls, x: np.ndarray) -> CoMoments:
        """Co-moments of the rows of ``x``.

        Parameters
        ----------
        x
            Array of shape (n_rows, n_features); NaN marks a missing value.

        Returns
        -------
        CoMoments
            Complete form if ``x`` has no NaN, else pairwise.
        """
        x = as_matrix(x)
        n, p = x.shape
        if n == 0:
            return cls.empty(p)
        missing = np.isnan(x)
        if not missing.any():
            shift = x.mean(axis=0, dtype=np.float64)
            y = np.subtract(x, shift, dtype=np.float64)
            s = y.sum(axis=0)
            return cls(
                count=np.asarray(n, dtype=np.int64),
                mean=shift + s / n,
                cross=y.T @ y - np.outer(s, s) / n,
            )
        present = (~missing).astype(np.float64)
        per_column = present.sum(axis=0)
        filled = np.where(missing, 0.0, x.astype(np.float64))
        shift = np.divide(filled.sum(axis=0), per_column, out=np.zeros(p), where=per_column > 0)
        y = np.where(missing, 0.0, filled - shift)
        count = present.T @ present
        sy = y.T @ present  # [i, j]: sum of y_i over the rows where i and j are present
        syy = (y * y).T @ present
        has = count > 0
        safe = np.where(has, count, 1.0)
        mean = np.where(has, shift[:, None] + sy / safe, 0.0)
        m2 = np.where(has, syy - sy * sy / safe, 0.0)
        cross = np.where(has, y.T @ y - sy * sy.T / safe, 0.0)
        return cls(count=np.rint(count).astype(np.int64), mean=mean, cross=cross, m2=m2)

    def to_pairwise(self) -> CoMoments:
        """The same statistics in the pairwise form."""
        if self.pairwise:
            return self
        p = self.n_features
        return CoMoments(
            count=np.full((p, p), int(self.count), dtype=np.int64),
            mean=np.repeat(self.mean[:, None], p, axis=1),
            cross=self.cross,
            m2=np.repeat(np.diag(self.cross)[:, None], p, axis=1),
        )

    def merge(self, other: CoMoments) -> CoMoments:
        """Co-moments of the union of the rows behind ``self`` and ``other``.

        Returns
        -------
        CoMoments
            Equal, up to rounding, to :meth:`of` on the concatenated rows; pairwise if either
            side is.
        """
        if other.n_features != self.n_features:
            msg = (
                f"cannot merge CoMoments of {self.n_features} features with CoMoments of "
                f"{other.n_features}; every shard must carry the same feature columns"
            )
            raise RaymmiError(msg)
        if not self.pairwise and not other.pairwise:
            n_a, n_b = int(self.count), int(other.count)
            n = n_a + n_b
            if n_a == 0 or n_b == 0:
                return other if n_a == 0 else self
            delta = other.mean - self.mean
            return CoMoments(
                count=np.asarray(n, dtype=np.int64),
                mean=self.mean + delta * (n_b / n),
                cross=self.cross + other.cross + np.outer(delta, delta) * (n_a * n_b / n),
            )
        a, b = self.to_pairwise(), other.to_pairwise()
        assert a.m2 is not None and b.m2 is not None
        count = a.count + b.count
        total = count.astype(np.float64)
        frac_b = np.divide(b.count, total, out=np.zeros_like(total), where=count > 0)
        delta = b.mean - a.mean
        weight = a.count * frac_b
        return CoMoments(
            count=count,
            mean=a.mean + delta * frac_b,
            cross=a.cross + b.cross + delta * delta.T * weight,
            m2=a.m2 + b.m2 + delta * delta * weight,
        )

    def correlation(self) -> np.ndarray:
        """Pearson correlation matrix, shape (n_features, n_features).

        NaN where a feature has no spread (or, pairwise, where a pair shares no row); values
        clipped to [-1, 1] as ``numpy.corrcoef`` and pandas do.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.m2 is None:
                sd = np.sqrt(np.diag(self.cross))
                r = self.cross / sd[:, None]
                r /= sd[None, :]
                flat = sd == 0
                r[flat, :] = np.nan
                r[:, flat] = np.nan
            else:
                denominator = np.sqrt(self.m2 * self.m2.T)
                r = np.where(
                    (denominator > 0) & (self.count > 0), self.cross / denominator, np.nan
                )
        return np.clip(r, -1.0, 1.0)


# ==============================================================================================
# Decision
# ==============================================================================================


def _correlation(
    comoments: CoMoments, candidates: np.ndarray, names: Sequence[str], threshold: float
) -> dict[int, str]:
    if candidates.size < 2:
        return {}
    r = comoments.correlation()[np.ix_(candidates, candidates)]
    labels = [names[i] for i in candidates]
    # pycytominer ranks features by the column sums of |r| (NaN skipped), sorted with pandas'
    # default (unstable) sort; the same calls here give the same order, ties included.
    frame = pd.DataFrame(r, index=labels, columns=labels)
    order = frame.abs().sum().sort_values().index
    rank = order.get_indexer_for(pd.Index(labels))
    # Lower triangle: pair_a is the row (later feature), pair_b the column (earlier feature).
    a, b = np.nonzero(np.tril(np.nan_to_num(r, nan=-np.inf) > threshold, k=-1))
    loser = np.where(rank[a] > rank[b], a, b)
    partner = np.where(loser == a, b, a)
    strongest: dict[int, tuple[float, int]] = {}
    for lo, pa, value in zip(loser, partner, r[a, b], strict=True):
        if lo not in strongest or value > strongest[lo][0]:
            strongest[lo] = (float(value), int(pa))
    return {
        int(candidates[lo]): (
            f"pearson r={value:.4f} > corr_threshold={threshold:g} with "
            f"{labels[pa]} (larger sum of |r| over surviving features)"
        )
        for lo, (value, pa) in sorted(strongest.items())
    }
