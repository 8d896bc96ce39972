"""Feature selection as pycytominer 1.7.1 ``feature_select``, from mergeable partial statistics.

Every operation is split into statistics computed per block of rows (a shard file, a record
batch), merged exactly across blocks, and a decision taken once from the merged statistics, so
the selection runs over shard sets of any size with bounded memory per task.

Operations (pycytominer 1.7.1 name in brackets), applied in the order given; like pycytominer,
each one sees only the features that survived the ones before it:

``variance`` (``variance_threshold``)
    sklearn ``VarianceThreshold(min_variance)``: drop unless the population variance (ddof=0,
    NaN skipped) is ``> min_variance``; with ``min_variance=0`` the variance is first replaced
    by the range where that is smaller (sklearn's guard for constant features). Statistics:
    per feature count, mean and sum of squared deviations, merged with Chan's update
    (:class:`~raymmi.plates._moments.Moments`), plus minimum and maximum.
``frequency`` (``frequency_threshold``)
    Drop if (count of the 2nd most frequent value / count of the most frequent)
    ``< freq_cut`` **or** (number of distinct values / number of rows) ``< unique_cut``
    (pycytominer 1.7.1 takes the union; before 1.0 it was the intersection, and it was called
    ``variance_threshold``). Statistics: per feature the number of distinct values and the two
    largest value counts, :class:`ValueCounts`. These cannot be merged across *row* blocks in
    bounded memory (deciding whether any value repeats 1/freq_cut times needs every value), so
    they are computed per *feature* over all rows, with the value space split by a hash into
    buckets whose counts do merge exactly (:meth:`ValueCounts.merge_buckets`).
``correlation`` (``correlation_threshold``)
    Pearson correlation over the surviving features. For each pair with correlation
    ``> corr_threshold`` (signed, as pycytominer compares it: strongly *anti*-correlated pairs
    are kept) the member with the larger sum of absolute correlations to all surviving features
    is dropped; every such pair drops one feature, whether or not its partner was dropped by
    another pair. Statistics: co-moments (:class:`CoMoments`), exact across blocks; with
    missing values, per pair over the rows where both are present (pandas ``DataFrame.corr``).
    Rank correlations (spearman, kendall) are refused: ranks need every row of a feature.
``na`` (``drop_na_columns``)
    Drop if the fraction of NaN rows is ``> na_cutoff``. Statistics: NaN counts.
``blocklist`` (``blocklist``)
    Drop features named in a blocklist.
``outliers`` (``drop_outliers``)
    Drop if ``|max| > outlier_cutoff`` or ``|min| > outlier_cutoff`` (compared in the
    feature's own dtype, as pandas does). Statistics: minimum and maximum.

This module is pure: no Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import pandas as pd

from raymmi.plates._moments import Moments, as_matrix
from raymmi.schema import RaymmiError, is_metadata

OPS: Final = ("variance", "frequency", "correlation", "na", "blocklist", "outliers")
DEFAULT_OPS: Final = ("variance", "correlation", "na", "blocklist", "outliers")
PYCYTOMINER_OPS: Final = {
    "variance_threshold": "variance",
    "frequency_threshold": "frequency",
    "correlation_threshold": "correlation",
    "drop_na_columns": "na",
    "blocklist": "blocklist",
    "drop_outliers": "outliers",
}
CORR_METHODS: Final = ("pearson",)
REPORT_NAME: Final = "_feature_selection.csv"
REPORT_COLUMNS: Final = ("feature", "op", "reason", "kept")


def parse_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
    """Normalize a list of operations to raymmi's short names, in the given order.

    Parameters
    ----------
    ops
        Names, or comma-separated names (``"variance,correlation"``); pycytominer's names
        (``"variance_threshold"``, ``"drop_na_columns"`` ...) are accepted too.

    Returns
    -------
    tuple of str
        Short names from :data:`OPS`, each once.

    Raises
    ------
    RaymmiError
        For an unknown or repeated operation, or an empty list.
    """
    items = [ops] if isinstance(ops, str) else list(ops)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        msg = f"ops={ops!r} names no operation; choose one or more of {list(OPS)}"
        raise RaymmiError(msg)
    out: list[str] = []
    for name in names:
        short = PYCYTOMINER_OPS.get(name, name)
        if short not in OPS:
            hint = (
                " (noise_removal needs perturbation groups per row and is not supported)"
                if name == "noise_removal"
                else ""
            )
            msg = (
                f"ops: {name!r} is not a feature-selection operation{hint}; choose from "
                f"{list(OPS)} (pycytominer's names {sorted(PYCYTOMINER_OPS)} work too)"
            )
            raise RaymmiError(msg)
        if short in out:
            msg = f"ops: {name!r} is listed twice in {names}; give each operation once"
            raise RaymmiError(msg)
        out.append(short)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Cut-offs of the selection operations; defaults are pycytominer 1.7.1's.

    Parameters
    ----------
    na_cutoff
        ``na``: largest tolerated fraction of NaN rows, in [0, 1].
    min_variance
        ``variance``: a feature is kept only if its variance is larger; >= 0.
    freq_cut
        ``frequency``: smallest tolerated ratio of the 2nd to the 1st value count, in [0, 1].
    unique_cut
        ``frequency``: smallest tolerated ratio of distinct values to rows, in [0, 1].
    corr_threshold
        ``correlation``: pairs correlated above it lose one member, in [0, 1].
    corr_method
        ``correlation``: only ``"pearson"``.
    outlier_cutoff
        ``outliers``: largest tolerated absolute value; >= 0.
    """

    na_cutoff: float = 0.05
    min_variance: float = 1e-6
    freq_cut: float = 0.05
    unique_cut: float = 0.01
    corr_threshold: float = 0.9
    corr_method: str = "pearson"
    outlier_cutoff: float = 500.0

    def __post_init__(self) -> None:
        for name in ("na_cutoff", "freq_cut", "unique_cut", "corr_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                msg = f"{name}={value!r} must be a number between 0 and 1"
                raise RaymmiError(msg)
        for name in ("min_variance", "outlier_cutoff"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0.0 or math.isinf(value):
                msg = f"{name}={value!r} must be a finite number >= 0"
                raise RaymmiError(msg)
        if self.corr_method not in CORR_METHODS:
            why = (
                " (rank correlations need every row of a feature at once and cannot be merged "
                "from per-shard partial sums)"
                if self.corr_method in ("spearman", "kendall")
                else ""
            )
            msg = (
                f"corr_method={self.corr_method!r} is not supported{why}; allowed: "
                f"{list(CORR_METHODS)} (pycytominer's default)"
            )
            raise RaymmiError(msg)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """``raymmi select``: drop features of a ``plates`` shard set, as pycytominer would.

    Parameters
    ----------
    source
        Input ``plates`` shard set.
    out
        Output shard-set directory (must differ from ``source``).
    ops
        Operations in order (see :data:`OPS`); a comma-separated string works too.
    na_cutoff, min_variance, freq_cut, unique_cut, corr_threshold, corr_method, outlier_cutoff
        See :class:`Thresholds` (pycytominer's defaults).
    blocklist
        File of feature names for ``blocklist`` (one per line; a first line ``blocklist`` and
        ``#`` comments are skipped; ``.yaml`` files: the ``default`` list of a registry).
        Default: pycytominer's packaged default blocklist, if pycytominer is installed.
    samples
        ``"all"``, or a pandas query choosing the rows the statistics are computed on (as
        pycytominer's ``samples``); every row is written to the output.
    frequency_task_mb
        ``frequency`` only: memory budget of one counting task in MiB (sets how many features
        and value buckets one task counts).
    overwrite
        Replace an existing ``out``.
    """

    source: str
    out: str
    ops: tuple[str, ...] = DEFAULT_OPS
    na_cutoff: float = 0.05
    min_variance: float = 1e-6
    freq_cut: float = 0.05
    unique_cut: float = 0.01
    corr_threshold: float = 0.9
    corr_method: str = "pearson"
    outlier_cutoff: float = 500.0
    blocklist: str | None = None
    samples: str = "all"
    frequency_task_mb: int = 512
    overwrite: bool = False

    def __post_init__(self) -> None:
        # ``ops`` may arrive as "a,b" from a command line or YAML; store the parsed tuple.
        object.__setattr__(self, "ops", parse_ops(self.ops))
        _ = self.thresholds  # builds Thresholds, which checks the cut-offs here, at the edge
        if not isinstance(self.samples, str) or not self.samples.strip():
            msg = f"samples={self.samples!r} must be 'all' or a pandas query over the rows"
            raise RaymmiError(msg)
        if not isinstance(self.frequency_task_mb, int) or self.frequency_task_mb < 1:
            msg = f"frequency_task_mb={self.frequency_task_mb!r} must be a whole number >= 1"
            raise RaymmiError(msg)

    @property
    def thresholds(self) -> Thresholds:
        """The cut-offs as a :class:`Thresholds`."""
        return Thresholds(
            na_cutoff=self.na_cutoff,
            min_variance=self.min_variance,
            freq_cut=self.freq_cut,
            unique_cut=self.unique_cut,
            corr_threshold=self.corr_threshold,
            corr_method=self.corr_method,
            outlier_cutoff=self.outlier_cutoff,
        )


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


def samples_mask(frame: pd.DataFrame, samples: str) -> np.ndarray:
    """Rows of ``frame`` chosen by pycytominer's ``samples``: ``"all"`` or a pandas query.

    Returns
    -------
    numpy.ndarray
        Boolean array of shape (n_rows,).

    Raises
    ------
    RaymmiError
        If the query cannot be evaluated or does not give one True/False per row.
    """
    if samples == "all":
        return np.ones(len(frame), dtype=bool)
    try:
        mask = np.asarray(frame.eval(samples))
    except Exception as err:  # pandas raises many types for a bad expression
        msg = (
            f"samples={samples!r} cannot be evaluated ({type(err).__name__}: {err}); pass 'all' "
            'or a pandas query over the Metadata_ columns, e.g. "Metadata_is_negcon"'
        )
        raise RaymmiError(msg) from err
    if mask.dtype != bool or mask.shape != (len(frame),):
        msg = f"samples={samples!r} does not give one True/False per row; use a comparison"
        raise RaymmiError(msg)
    return mask


def decide(
    stats: FeatureStats,
    *,
    features: Sequence[str],
    ops: str | Sequence[str] = DEFAULT_OPS,
    thresholds: Thresholds | None = None,
    blocklist: Iterable[str] = (),
    blocklist_source: str = "the blocklist",
    frequency: ValueCounts | None = None,
) -> pd.DataFrame:
    """Decide which features to drop, as pycytominer 1.7.1 ``feature_select`` would.

    Parameters
    ----------
    stats
        Merged statistics over all (chosen) rows.
    features
        Feature names in column order, ``stats.n_features`` of them.
    ops
        Operations in order (:func:`parse_ops`); each sees only the survivors of the previous.
    thresholds
        Cut-offs (default: pycytominer's).
    blocklist
        Feature names for ``blocklist``.
    blocklist_source
        Where the blocklist came from, for the report.
    frequency
        Value counts for ``frequency`` (required by it).

    Returns
    -------
    pandas.DataFrame
        One row per feature, in ``features`` order, with columns ``feature``, ``op`` (the
        operation that dropped it, ``""`` if kept), ``reason`` (the statistic and the cut-off,
        e.g. ``"na_fraction=0.12 > na_cutoff=0.05"``) and ``kept`` (bool).

    Raises
    ------
    RaymmiError
        If the inputs do not fit together or an operation lacks its statistics.
    """
    names = list(features)
    ops = parse_ops(ops)
    t = thresholds or Thresholds()
    if stats.n_features != len(names):
        msg = f"stats cover {stats.n_features} features but {len(names)} names were given"
        raise RaymmiError(msg)
    if stats.n_rows == 0:
        msg = "there are no rows to select features on; check the samples query"
        raise RaymmiError(msg)
    if "correlation" in ops and stats.comoments is None:
        msg = "ops include 'correlation' but the statistics have no co-moments"
        raise RaymmiError(msg)
    if "frequency" in ops and (frequency is None or frequency.n_unique.size != len(names)):
        msg = "ops include 'frequency' but no value counts for every feature were given"
        raise RaymmiError(msg)
    p = len(names)
    alive = np.ones(p, dtype=bool)
    dropped_by = np.full(p, "", dtype=object)
    reasons = np.full(p, "", dtype=object)
    blocked = set(blocklist)
    for op in ops:
        candidates = np.flatnonzero(alive)
        if op == "correlation":
            assert stats.comoments is not None
            drops = _correlation(stats.comoments, candidates, names, t.corr_threshold)
        elif op == "frequency":
            assert frequency is not None
            drops = _frequency(frequency, stats.n_rows, candidates, t)
        elif op == "blocklist":
            drops = {
                int(i): f"listed in {blocklist_source}" for i in candidates if names[i] in blocked
            }
        else:
            drops = _PER_FEATURE[op](stats, candidates, t)
        for i, why in drops.items():
            alive[i] = False
            dropped_by[i] = op
            reasons[i] = why
    return pd.DataFrame(
        {"feature": names, "op": dropped_by, "reason": reasons, "kept": alive},
        columns=list(REPORT_COLUMNS),
    )


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


def kept_features(report: pd.DataFrame) -> list[str]:
    """Names of the kept features of a :func:`decide` report, in order."""
    return report.loc[report["kept"].astype(bool), "feature"].tolist()


def feature_selection(
    frame: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    ops: str | Sequence[str] = DEFAULT_OPS,
    thresholds: Thresholds | None = None,
    samples: str = "all",
    blocklist: Iterable[str] = (),
    blocklist_source: str = "the blocklist",
) -> pd.DataFrame:
    """One-shot selection on an in-memory table (the reference the partial path must equal).

    Parameters
    ----------
    frame
        Profiles, one row per well/cell; feature columns numeric.
    features
        Feature columns; default: every column not prefixed ``Metadata_``.
    ops, thresholds, blocklist, blocklist_source
        As :func:`decide`.
    samples
        ``"all"`` or a pandas query choosing the rows the statistics are computed on.

    Returns
    -------
    pandas.DataFrame
        The report of :func:`decide`.
    """
    if features is None:
        names = [str(c) for c in frame.columns if not is_metadata(str(c))]
    else:
        names = list(features)
    missing = [f for f in names if f not in frame.columns]
    if missing:
        msg = f"features {missing[:5]} are not columns of the table ({len(missing)} missing)"
        raise RaymmiError(msg)
    ops = parse_ops(ops)
    rows = frame.loc[samples_mask(frame, samples), names]
    values = rows.to_numpy()
    stats = FeatureStats.of(values, correlation="correlation" in ops, features=names)
    counts = ValueCounts.of(values) if "frequency" in ops else None
    return decide(
        stats,
        features=names,
        ops=ops,
        thresholds=thresholds,
        blocklist=blocklist,
        blocklist_source=blocklist_source,
        frequency=counts,
    )
