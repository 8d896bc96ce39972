"""Settings of the plate stages: ``raymmi ingest plates``, ``normalize``, ``evaluate plates``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from raymmi.config._base import check_choice, check_positive
from raymmi.query import parse_query
from raymmi.schema import RaymmiError


@dataclasses.dataclass(frozen=True)
class IngestPlatesConfig:
    """``raymmi ingest plates``: wide tables or CellProfiler folders into a ``plates`` set.

    Parameters
    ----------
    sources
        CSV / CSV.gz / Parquet files, or folders of CellProfiler sites.
    out
        Output shard-set directory.
    negcon
        Query marking negative-control rows (:mod:`raymmi.query` grammar, never run as
        code); default: ``Metadata_is_negcon`` if present.
    on_nan
        Non-finite feature values: ``fail`` (default), ``drop-rows`` or ``keep`` (as NaN).
    aggregate
        CellProfiler folders only: aggregate cells to wells by ``median`` or ``mean``.
    batch_rows
        Rows per streamed record batch (memory bound per task); default: about 4 million
        feature values per batch.
    """

    sources: tuple[str, ...]
    out: str
    negcon: str | None = None
    on_nan: Literal["fail", "drop-rows", "keep"] = "fail"
    aggregate: Literal["median", "mean"] | None = None
    batch_rows: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("on_nan", self.on_nan, ("fail", "drop-rows", "keep"))
        check_choice("aggregate", self.aggregate, (None, "median", "mean"))
        if not self.sources:
            msg = "ingest plates needs at least one source table or CellProfiler folder"
            raise RaymmiError(msg)
        if self.batch_rows is not None:
            check_positive("batch_rows", self.batch_rows)
        if self.negcon is not None:
            parse_query(self.negcon, what="--negcon query")


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
    """``raymmi normalize``: per-plate / global normalization of a ``plates`` shard set.

    Parameters
    ----------
    source
        Input ``plates`` shard set.
    out
        Output shard set.
    method
        ``standardize`` (mean/sd), ``robustize`` (median/IQR), ``mad_robustize``
        ((x - median) / (1.4826 MAD + epsilon)), ``mean`` (centering), ``spherize`` (see
        ``spherize_method``) or ``combat`` (by ``batch_key``; ``nonparametric`` priors).
    reference
        Rows the statistics come from: ``negcon`` (the plate's negative controls), ``all``
        (every row of the plate), ``negcon-global`` (negative controls of all plates pooled),
        ``batch`` (every row of the plate's batch). ComBat always uses all rows per batch.
    negcon
        query re-defining the negative controls (:mod:`raymmi.query`) (default: the stored flag).
    batch_key
        Metadata column holding the batch (``batch`` reference, ComBat).
    epsilon
        Added to the spread of ``standardize``/``robustize``/``mad_robustize``.
    spherize_method, spherize_epsilon
        ``spherize``: the whitening (``ZCA``, ``PCA``; ``-cor`` on the correlation matrix) and
        the epsilon added to every singular value.
    nonparametric
        ``combat``: nonparametric (instead of parametric) empirical-Bayes priors.
    """

    source: str
    out: str
    method: Literal["standardize", "robustize", "mad_robustize", "mean", "spherize", "combat"] = (
        "standardize"
    )
    reference: Literal["negcon", "all", "negcon-global", "batch"] = "negcon"
    negcon: str | None = None
    batch_key: str = "Metadata_Batch"
    epsilon: float = 0.0
    spherize_method: Literal["ZCA", "ZCA-cor", "PCA", "PCA-cor"] = "ZCA"
    spherize_epsilon: float = 1e-6
    nonparametric: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice(
            "method",
            self.method,
            ("standardize", "robustize", "mad_robustize", "mean", "spherize", "combat"),
        )
        check_choice("reference", self.reference, ("negcon", "all", "negcon-global", "batch"))
        check_choice("spherize_method", self.spherize_method, ("ZCA", "ZCA-cor", "PCA", "PCA-cor"))
        if self.epsilon < 0 or self.spherize_epsilon < 0:
            msg = f"epsilon={self.epsilon!r} and spherize_epsilon must be >= 0"
            raise RaymmiError(msg)
        if self.negcon is not None:
            parse_query(self.negcon, what="--negcon query")


@dataclasses.dataclass(frozen=True)
class EvaluatePlatesConfig:
    """``raymmi evaluate plates``: diagnostics of ``plates`` shard sets side by side, one report.

    Parameters
    ----------
    sources
        ``plates`` shard sets holding the same plates, typically raw and normalized.
    out
        Local report directory (``index.html``, figures, ``summary.csv``, per-well scores).
    batch_key, label_key
        Metadata columns of the batch and of the compound (JUMP: ``Metadata_JCP2022``).
    sample
        Wells in the seeded sample per shard set (embedding, GMM, classifiers, UMAP).
    map_plates_per_batch, umap_plates_per_batch
        Plates per batch whose wells enter the replicate mAP / are drawn over the UMAP.
    top_n
        Most and least outlying treated wells listed.
    seed
        Seed of every sample and fit.
    """

    sources: tuple[str, ...]
    out: str
    batch_key: str = "Metadata_Batch"
    label_key: str = "Metadata_Compound"
    sample: int = 5000
    map_plates_per_batch: int = 4
    umap_plates_per_batch: int = 2
    top_n: int = 20
    seed: int = 0
    overwrite: bool = False
