"""Row-mergeable statistics (:class:`FeatureStats`) and the per-feature operations on them.

``variance``, ``na`` and ``outliers`` are decided feature by feature from :class:`FeatureStats`
alone. Part of :mod:`raymmi.plates._select` (which re-exports the public names). Pure: no Ray,
no MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from raymmi.plates._moments import Moments, as_matrix
from raymmi.plates._select_config import Thresholds
from raymmi.plates._select_correlation import CoMoments
from raymmi.schema import RaymmiError

# ==============================================================================================
# Partial statistics
# ==============================================================================================


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureStats:
    """The row-mergeable statistics of every operation but ``frequency``.

    Parameters
    ----------
    n_rows
        Rows seen (NaN or not).
    moments
        Per-feature count of non-NaN values, mean and sum of squared deviations.
    minimum, maximum
        Per-feature extremes, shape (n_features,), in the data's dtype; NaN if no value.
    comoments
        Co-moments for ``correlation``, or ``None`` when it is not needed.
    """

    n_rows: int
    moments: Moments
    minimum: np.ndarray
    maximum: np.ndarray
    comoments: CoMoments | None = None

    @property
    def n_features(self) -> int:
        """Number of features."""
        return self.moments.n_features

    @property
    def na_count(self) -> np.ndarray:
        """NaN values per feature, int64 of shape (n_features,)."""
        return self.n_rows - self.moments.count

    @classmethod
    def of(
        cls, values: np.ndarray, *, correlation: bool, features: Sequence[str] | None = None
    ) -> FeatureStats:
        """Statistics of one block of rows.

        Parameters
        ----------
        values
            Array of shape (n_rows, n_features); NaN marks a missing value.
        correlation
            Also compute the co-moments (``n_features**2`` float64 values, or four times that
            if ``values`` hold NaN).
        features
            Names of the columns, for error messages.

        Raises
        ------
        RaymmiError
            If ``values`` hold +-inf (raymmi shard sets store non-finite values as NaN;
            sklearn, under pycytominer's ``variance_threshold``, refuses them).
        """
        x = as_matrix(values, name="values")
        infinite = np.isinf(x).any(axis=0)
        if infinite.any():
            where = np.flatnonzero(infinite)
            names = [features[i] for i in where[:5]] if features is not None else where[:5]
            msg = (
                f"{int(infinite.sum())} feature(s) hold +-inf values (e.g. {list(names)}); "
                "replace them by NaN first (raymmi ingest --on-nan keep does)"
            )
            raise RaymmiError(msg)
        if x.shape[0]:
            minimum, maximum = np.fmin.reduce(x, axis=0), np.fmax.reduce(x, axis=0)
        else:
            minimum = maximum = np.full(x.shape[1], np.nan, dtype=x.dtype)
        return cls(
            n_rows=int(x.shape[0]),
            moments=Moments.of(x),
            minimum=minimum,
            maximum=maximum,
            comoments=CoMoments.of(x) if correlation else None,
        )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of the rows behind ``self`` and ``other``."""
        if (self.comoments is None) != (other.comoments is None):
            msg = "cannot merge FeatureStats with and without co-moments; compute both alike"
            raise RaymmiError(msg)
        comoments = None
        if self.comoments is not None and other.comoments is not None:
            comoments = self.comoments.merge(other.comoments)
        return FeatureStats(
            n_rows=self.n_rows + other.n_rows,
            moments=self.moments.merge(other.moments),
            minimum=np.fmin(self.minimum, other.minimum),
            maximum=np.fmax(self.maximum, other.maximum),
            comoments=comoments,
        )

    @classmethod
    def merge_all(cls, parts: Iterable[FeatureStats]) -> FeatureStats:
        """Merge any number of partial statistics (at least one)."""
        merged: FeatureStats | None = None
        for part in parts:
            merged = part if merged is None else merged.merge(part)
        if merged is None:
            msg = "FeatureStats.merge_all got no parts; pass at least one"
            raise RaymmiError(msg)
        return merged


# ==============================================================================================
# Decision
# ==============================================================================================


def _na(stats: FeatureStats, candidates: np.ndarray, t: Thresholds) -> dict[int, str]:
    fraction = stats.na_count[candidates] / stats.n_rows
    return {
        int(i): f"na_fraction={f:.4g} > na_cutoff={t.na_cutoff:g}"
        for i, f in zip(candidates, fraction, strict=True)
        if f > t.na_cutoff
    }


def _variance(stats: FeatureStats, candidates: np.ndarray, t: Thresholds) -> dict[int, str]:
    var = stats.moments.var()[candidates]
    if t.min_variance == 0:
        # sklearn: min(variance, range), the range being NaN when the feature has a NaN.
        complete = stats.moments.count[candidates] == stats.n_rows
        spread = stats.maximum[candidates].astype(np.float64) - stats.minimum[candidates]
        var = np.fmin(var, np.where(complete, spread, np.nan))
    out = {}
    for i, v in zip(candidates, var, strict=True):
        if not v > t.min_variance:
            what = f"variance={v:.4g}" if np.isfinite(v) else "no values"
            out[int(i)] = f"{what} <= min_variance={t.min_variance:g}"
    return out


def _outliers(stats: FeatureStats, candidates: np.ndarray, t: Thresholds) -> dict[int, str]:
    # Compared in the feature's dtype, as pandas compares a float32 column with a Python float.
    top = np.abs(stats.maximum[candidates])
    bottom = np.abs(stats.minimum[candidates])
    out = {}
    for i, hi, lo in zip(candidates, top, bottom, strict=True):
        if hi > t.outlier_cutoff or lo > t.outlier_cutoff:
            out[int(i)] = f"max |value|={max(hi, lo):.4g} > outlier_cutoff={t.outlier_cutoff:g}"
    return out


_PER_FEATURE = {"na": _na, "variance": _variance, "outliers": _outliers}
