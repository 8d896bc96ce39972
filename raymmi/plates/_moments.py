"""Per-feature count, mean and sum of squared deviations, mergeable across shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from raymmi.schema import RaymmiError

# Rows per block in Moments.of: the float64 work arrays of one block stay near 32 MiB.
_BLOCK_ELEMENTS = 1 << 22


def as_matrix(x: object, *, name: str = "x") -> np.ndarray:
    """``x`` as a 2-D floating array (no copy when it already is one).

    Raises
    ------
    RaymmiError
        If ``x`` is not 2-D or not numeric.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        msg = f"{name} must be a 2-D array of shape (n_rows, n_features), got shape {arr.shape}"
        raise RaymmiError(msg)
    if not np.issubdtype(arr.dtype, np.floating):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            msg = f"{name} must hold numbers, got dtype {arr.dtype}; select numeric features"
            raise RaymmiError(msg)
        arr = arr.astype(np.float64)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Moments:
    """Per-feature moments of a set of rows, NaN ignored.

    Parameters
    ----------
    count
        int64 array of shape (n_features,): non-NaN values per feature.
    mean
        float64 array of shape (n_features,): mean of those values (0 where ``count`` is 0).
    m2
        float64 array of shape (n_features,): sum of squared deviations from ``mean``.

    Notes
    -----
    Two sets of moments combine with the parallel update of Chan, Golub and LeVeque (1979),
    ``delta = mean_b - mean_a``, ``mean = mean_a + delta * n_b / n``,
    ``m2 = m2_a + m2_b + delta**2 * n_a * n_b / n``, which never subtracts two large sums of
    squares and so keeps the variance accurate when ``|mean| >> sd`` (the naive
    ``sum(x**2) - n * mean**2`` loses every digit there). Within one block :meth:`of` uses the
    two-pass algorithm in float64.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @property
    def n_features(self) -> int:
        """Number of features."""
        return int(self.count.shape[0])

    @classmethod
    def empty(cls, n_features: int) -> Moments:
        """Moments of no rows (the identity of :meth:`merge`)."""
        return cls(
            count=np.zeros(n_features, dtype=np.int64),
            mean=np.zeros(n_features),
            m2=np.zeros(n_features),
        )

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of the rows of ``x``.

        Parameters
        ----------
        x
            Array of shape (n_rows, n_features), any float dtype; NaN values are skipped.
            Processed in blocks of rows, so the float64 work memory stays bounded.

        Returns
        -------
        Moments
            Over the ``n_rows`` rows, per feature.
        """
        x = as_matrix(x)
        n, p = x.shape
        step = max(1, _BLOCK_ELEMENTS // max(1, p))
        if n <= step:
            return cls._of_block(x)
        return cls.merge_all(cls._of_block(x[i : i + step]) for i in range(0, n, step))

    @classmethod
    def _of_block(cls, x: np.ndarray) -> Moments:
        n, p = x.shape
        if n == 0:
            return cls.empty(p)
        mean = x.mean(axis=0, dtype=np.float64)
        if np.isfinite(mean).all():  # no NaN (nor inf): skip the mask
            dev = np.subtract(x, mean, dtype=np.float64)
            return cls(
                count=np.full(p, n, dtype=np.int64),
                mean=mean,
                m2=np.einsum("ij,ij->j", dev, dev),
            )
        nan = np.isnan(x)
        count = n - nan.sum(axis=0)
        filled = np.where(nan, 0.0, x.astype(np.float64))
        mean = np.divide(filled.sum(axis=0), count, out=np.zeros(p), where=count > 0)
        dev = np.where(nan, 0.0, filled - mean)
        return cls(count=count.astype(np.int64), mean=mean, m2=np.einsum("ij,ij->j", dev, dev))

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of the rows behind ``self`` and ``other``.

        Parameters
        ----------
        other
            Moments over the same features.

        Returns
        -------
        Moments
            Equal, up to rounding, to :meth:`of` on the concatenated rows.
        """
        if other.n_features != self.n_features:
            msg = (
                f"cannot merge Moments of {self.n_features} features with Moments of "
                f"{other.n_features}; every shard must carry the same feature columns"
            )
            raise RaymmiError(msg)
        n_a = self.count.astype(np.float64)
        n_b = other.count.astype(np.float64)
        count = self.count + other.count
        n = count.astype(np.float64)
        has = count > 0
        delta = other.mean - self.mean
        frac_b = np.divide(n_b, n, out=np.zeros_like(n), where=has)
        mean = self.mean + delta * frac_b
        m2 = self.m2 + other.m2 + delta * delta * n_a * frac_b
        return Moments(count=count, mean=np.where(has, mean, 0.0), m2=np.where(has, m2, 0.0))

    @classmethod
    def merge_all(cls, parts: Iterable[Moments]) -> Moments:
        """Merge any number of Moments (pairwise, as a balanced tree).

        Raises
        ------
        RaymmiError
            If ``parts`` is empty (use :meth:`empty` for a known feature count).
        """
        level = list(parts)
        if not level:
            msg = "Moments.merge_all got no parts; pass at least one Moments"
            raise RaymmiError(msg)
        while len(level) > 1:
            paired = [a.merge(b) for a, b in zip(level[::2], level[1::2], strict=False)]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
        return level[0]

    def var(self, *, ddof: int = 0) -> np.ndarray:
        """Variance per feature, shape (n_features,); NaN where ``count <= ddof``."""
        denom = (self.count - ddof).astype(np.float64)
        return np.divide(self.m2, denom, out=np.full(self.n_features, np.nan), where=denom > 0)

    def constant(self) -> np.ndarray:
        """Boolean array of shape (n_features,): variance indistinguishable from zero.

        sklearn's bound for the two-pass algorithm (``StandardScaler``),
        ``var <= n * eps * var + (n * |mean| * eps)**2`` with float64's eps: rounding leaves a
        variance of about 1e-33 on a constant float64 column, which must count as zero. Also
        True where the variance is not finite (no values).
        """
        var = self.var(ddof=0)
        eps = np.finfo(np.float64).eps
        n = self.count.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            bound = n * eps * var + (n * np.abs(self.mean) * eps) ** 2
        return np.asarray(~np.isfinite(var) | (var <= bound))

    def std(self, *, ddof: int = 0) -> np.ndarray:
        """Standard deviation per feature, shape (n_features,); NaN where ``count <= ddof``."""
        return np.sqrt(self.var(ddof=ddof))
