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

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from raymmi.plates._select_config import (
    CORR_METHODS,
    DEFAULT_OPS,
    OPS,
    PYCYTOMINER_OPS,
    REPORT_COLUMNS,
    REPORT_NAME,
    SelectConfig,
    Thresholds,
    parse_ops,
)
from raymmi.plates._select_correlation import CoMoments, _correlation
from raymmi.plates._select_frequency import ValueCounts, _frequency, bucket_columns, value_buckets
from raymmi.plates._select_stats import _PER_FEATURE, FeatureStats
from raymmi.query import parse_query
from raymmi.schema import RaymmiError, is_metadata

__all__ = [
    "CORR_METHODS",
    "DEFAULT_OPS",
    "OPS",
    "PYCYTOMINER_OPS",
    "REPORT_COLUMNS",
    "REPORT_NAME",
    "CoMoments",
    "FeatureStats",
    "SelectConfig",
    "Thresholds",
    "ValueCounts",
    "bucket_columns",
    "decide",
    "feature_selection",
    "kept_features",
    "parse_ops",
    "samples_mask",
    "value_buckets",
]

# ==============================================================================================
# Decision
# ==============================================================================================


def samples_mask(frame: pd.DataFrame, samples: str) -> np.ndarray:
    """Rows of ``frame`` chosen by pycytominer's ``samples``: ``"all"`` or a query.

    The query is a :mod:`raymmi.query` expression, parsed and evaluated column by column (never
    run as code).

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
    return parse_query(samples, what="samples").evaluate(frame, what="samples")


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
