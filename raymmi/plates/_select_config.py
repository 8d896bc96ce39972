"""Feature-selection options: operation names, :func:`parse_ops`, cut-offs, :class:`SelectConfig`.

Part of :mod:`raymmi.plates._select` (which re-exports everything here). Pure: no Ray, no
MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Final

from raymmi.query import parse_query
from raymmi.schema import RaymmiError

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
    # the cut-offs, flat for the command line and YAML; defaults are Thresholds'
    na_cutoff: float = Thresholds.na_cutoff
    min_variance: float = Thresholds.min_variance
    freq_cut: float = Thresholds.freq_cut
    unique_cut: float = Thresholds.unique_cut
    corr_threshold: float = Thresholds.corr_threshold
    corr_method: str = Thresholds.corr_method
    outlier_cutoff: float = Thresholds.outlier_cutoff
    blocklist: str | None = None
    samples: str = "all"
    frequency_task_mb: int = 512
    overwrite: bool = False

    def __post_init__(self) -> None:
        # ``ops`` may arrive as "a,b" from a command line or YAML; store the parsed tuple.
        object.__setattr__(self, "ops", parse_ops(self.ops))
        _ = self.thresholds  # builds Thresholds, which checks the cut-offs here, at the edge
        if not isinstance(self.samples, str) or not self.samples.strip():
            msg = f"samples={self.samples!r} must be 'all' or a query over the rows"
            raise RaymmiError(msg)
        if self.samples != "all":
            parse_query(self.samples, what="samples")
        if not isinstance(self.frequency_task_mb, int) or self.frequency_task_mb < 1:
            msg = f"frequency_task_mb={self.frequency_task_mb!r} must be a whole number >= 1"
            raise RaymmiError(msg)

    @property
    def thresholds(self) -> Thresholds:
        """The cut-offs as a :class:`Thresholds`."""
        names = [f.name for f in dataclasses.fields(Thresholds)]
        return Thresholds(**{name: getattr(self, name) for name in names})
