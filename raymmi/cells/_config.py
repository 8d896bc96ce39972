"""Frozen configuration of ``raymmi preprocess cells``: steps per modality and their parameters.

Defaults follow scanpy (RNA) and muon (ATAC, ADT), except ``scale.max_value=10`` (the common
``sc.pp.scale(adata, max_value=10)``; scanpy's own default is no clipping). Load a tree with
``raymmi.config.from_dict(PreprocessCellsConfig, data)``; every ``__post_init__`` validates its
own values, and :class:`PreprocessCellsConfig` validates the step order of each modality.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

from raymmi.config import check_choice, check_positive
from raymmi.schema import RaymmiError

RNA_STEPS = (
    "filter_cells",
    "filter_genes",
    "highly_variable_genes",
    "normalize_total",
    "log1p",
    "scale",
    "pca",
)
DEFAULT_RNA_STEPS = (
    "filter_cells",
    "filter_genes",
    "normalize_total",
    "log1p",
    "highly_variable_genes",
    "scale",
    "pca",
)
ATAC_STEPS = ("filter_cells", "binarize", "filter_peaks", "tfidf", "lsi")
ADT_STEPS = ("clr",)
HVG_FLAVORS = ("seurat", "seurat_v3")


def _check_optional(name: str, value: float | None, *, minimum: float = 0.0) -> None:
    if value is not None and not value >= minimum:
        msg = f"{name}={value!r} must be >= {minimum} (or null to switch it off)"
        raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class FilterCellsConfig:
    """Per-cell QC on raw RNA counts (``sc.pp.filter_cells`` + ``pct_counts_mt``).

    Parameters
    ----------
    min_counts, max_counts
        Bounds on total counts per cell (``null``: no bound).
    min_genes, max_genes
        Bounds on the number of genes with a non-zero count.
    max_pct_mt
        Upper bound on the percentage of counts in mitochondrial genes.
    mt_prefix
        Gene-name prefix of mitochondrial genes (``MT-`` human, ``mt-`` mouse).
    """

    min_counts: float | None = None
    min_genes: int | None = None
    max_counts: float | None = None
    max_genes: int | None = None
    max_pct_mt: float | None = None
    mt_prefix: str = "MT-"

    def __post_init__(self) -> None:
        for name in ("min_counts", "min_genes", "max_counts", "max_genes", "max_pct_mt"):
            _check_optional(f"rna.filter_cells.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class FilterGenesConfig:
    """Per-gene filter over the cells kept (``sc.pp.filter_genes``)."""

    min_cells: int | None = None
    min_counts: float | None = None
    max_cells: int | None = None
    max_counts: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_cells", "min_counts", "max_cells", "max_counts"):
            _check_optional(f"rna.filter_genes.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class NormalizeTotalConfig:
    """``sc.pp.normalize_total``: ``target_sum`` ``null`` means the median total of the cells."""

    target_sum: float | None = None
    exclude_highly_expressed: bool = False
    max_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.target_sum is not None:
            check_positive("rna.normalize_total.target_sum", self.target_sum)
        if not 0.0 <= self.max_fraction <= 1.0:
            msg = f"rna.normalize_total.max_fraction={self.max_fraction!r} must be in [0, 1]"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class HvgConfig:
    """``sc.pp.highly_variable_genes`` (flavors ``seurat`` and ``seurat_v3``).

    ``seurat`` runs on log-normalized values (place it after ``log1p``); ``seurat_v3`` on raw
    counts (place it before ``normalize_total``) and needs ``n_top_genes`` (default 2000, as in
    scanpy). ``batch_key`` names an ``obs`` column (e.g. ``batch``).
    """

    flavor: Literal["seurat", "seurat_v3"] = "seurat"
    n_top_genes: int | None = None
    min_mean: float = 0.0125
    max_mean: float = 3.0
    min_disp: float = 0.5
    max_disp: float = math.inf
    span: float = 0.3
    n_bins: int = 20
    batch_key: str | None = None

    def __post_init__(self) -> None:
        check_choice("rna.highly_variable_genes.flavor", self.flavor, HVG_FLAVORS)
        if self.n_top_genes is not None:
            check_positive("rna.highly_variable_genes.n_top_genes", self.n_top_genes)
        check_positive("rna.highly_variable_genes.n_bins", self.n_bins)
        if not 0.0 < self.span <= 1.0:
            msg = f"rna.highly_variable_genes.span={self.span!r} must be in (0, 1]"
            raise RaymmiError(msg)

    @property
    def top_genes(self) -> int | None:
        """``n_top_genes``, with scanpy's 2000 for ``seurat_v3`` when unset."""
        if self.flavor == "seurat_v3" and self.n_top_genes is None:
            return 2000
        return self.n_top_genes


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """``sc.pp.scale``: zero-center and divide by the sd (ddof=1), clip at ``max_value``."""

    zero_center: bool = True
    max_value: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_value is not None:
            check_positive("rna.scale.max_value", self.max_value)


@dataclasses.dataclass(frozen=True)
class PcaConfig:
    """``sc.pp.pca`` with zero centering; ``n_comps`` ``null``: 50, or features/cells - 1."""

    n_comps: int | None = None

    def __post_init__(self) -> None:
        if self.n_comps is not None:
            check_positive("rna.pca.n_comps", self.n_comps)


@dataclasses.dataclass(frozen=True)
class RnaConfig:
    """RNA steps, in order, and their parameters (a step's section is used only if listed)."""

    steps: tuple[str, ...] = DEFAULT_RNA_STEPS
    filter_cells: FilterCellsConfig = dataclasses.field(default_factory=FilterCellsConfig)
    filter_genes: FilterGenesConfig = dataclasses.field(default_factory=FilterGenesConfig)
    normalize_total: NormalizeTotalConfig = dataclasses.field(default_factory=NormalizeTotalConfig)
    highly_variable_genes: HvgConfig = dataclasses.field(default_factory=HvgConfig)
    scale: ScaleConfig = dataclasses.field(default_factory=ScaleConfig)
    pca: PcaConfig = dataclasses.field(default_factory=PcaConfig)

    def __post_init__(self) -> None:
        _check_steps("rna", self.steps, RNA_STEPS)
        position = {s: i for i, s in enumerate(self.steps)}
        raw_first = [s for s in ("filter_cells", "filter_genes") if s in position]
        for transform in ("normalize_total", "log1p", "scale"):
            for step in raw_first:
                if transform in position and position[step] > position[transform]:
                    msg = (
                        f"rna.steps: {step} comes after {transform}, but cell and gene filters "
                        f"read raw counts; move {step} before {transform}"
                    )
                    raise RaymmiError(msg)
        _before("rna", position, "normalize_total", "log1p")
        _before("rna", position, "log1p", "scale")
        _before("rna", position, "normalize_total", "scale")
        if "highly_variable_genes" in position:
            hvg = position["highly_variable_genes"]
            if "scale" in position and hvg > position["scale"]:
                msg = (
                    "rna.steps: highly_variable_genes comes after scale, but HVG selection "
                    "cannot run on already-scaled data (dispersions of z-scores are all 1); "
                    "move highly_variable_genes before scale"
                )
                raise RaymmiError(msg)
            if self.highly_variable_genes.flavor == "seurat":
                if "log1p" not in position or hvg < position["log1p"]:
                    msg = (
                        "rna.steps: highly_variable_genes with flavor 'seurat' expects "
                        "log-normalized data; put it after normalize_total and log1p (or use "
                        "flavor 'seurat_v3', which reads raw counts)"
                    )
                    raise RaymmiError(msg)
            else:
                for later in ("normalize_total", "log1p"):
                    if later in position and hvg > position[later]:
                        msg = (
                            "rna.steps: highly_variable_genes with flavor 'seurat_v3' expects "
                            f"raw counts but comes after {later}; move it before normalize_total"
                        )
                        raise RaymmiError(msg)
        if "pca" in position and position["pca"] != len(self.steps) - 1:
            msg = f"rna.steps: pca must be the last step, got {list(self.steps)}"
            raise RaymmiError(msg)
        if "highly_variable_genes" in position and "pca" in position:
            _before("rna", position, "highly_variable_genes", "pca")
            top, n_comps = self.highly_variable_genes.top_genes, self.pca.n_comps
            if top is not None and n_comps is not None and n_comps > top:
                msg = (
                    f"rna.pca.n_comps={n_comps} exceeds rna.highly_variable_genes.n_top_genes="
                    f"{top}: PCA cannot have more components than features; lower n_comps "
                    "or raise n_top_genes"
                )
                raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class FilterAtacCellsConfig:
    """Per-cell QC on raw ATAC counts."""

    min_counts: float | None = None
    min_peaks: int | None = None
    max_counts: float | None = None
    max_peaks: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_counts", "min_peaks", "max_counts", "max_peaks"):
            _check_optional(f"atac.filter_cells.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class FilterPeaksConfig:
    """Keep peaks accessible in enough of the kept cells, or the ``top_k`` most accessible.

    Parameters
    ----------
    min_cells
        Minimum number of cells with the peak accessible.
    min_fraction
        Minimum fraction (0-1) of cells with the peak accessible.
    top_k
        Keep only the ``top_k`` peaks with the most accessible cells (ties: lower index first).
    """

    min_cells: int | None = None
    min_fraction: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        _check_optional("atac.filter_peaks.min_cells", self.min_cells)
        if self.min_fraction is not None and not 0.0 <= self.min_fraction <= 1.0:
            msg = f"atac.filter_peaks.min_fraction={self.min_fraction!r} must be in [0, 1]"
            raise RaymmiError(msg)
        if self.top_k is not None:
            check_positive("atac.filter_peaks.top_k", self.top_k)


@dataclasses.dataclass(frozen=True)
class TfidfConfig:
    """``muon.atac.pp.tfidf``: ``log1p(TF * scale_factor) * log1p(n_cells / DF)`` by default."""

    log_tf: bool = True
    log_idf: bool = True
    log_tfidf: bool = False
    scale_factor: float = 1e4

    def __post_init__(self) -> None:
        if self.log_tfidf and (self.log_tf or self.log_idf):
            msg = (
                "atac.tfidf.log_tfidf=true needs log_tf=false and log_idf=false (muon's rule: "
                "log(TF*IDF) or log(TF)*log(IDF), not both)"
            )
            raise RaymmiError(msg)
        check_positive("atac.tfidf.scale_factor", self.scale_factor)


@dataclasses.dataclass(frozen=True)
class LsiConfig:
    """Truncated SVD of the TF-IDF matrix (``muon.atac.tl.lsi``), out of core.

    Parameters
    ----------
    n_comps
        Components computed (``min(n_comps, peaks)`` as in muon is *not* applied: more
        components than peaks is an error).
    n_iter
        Passes of the randomized block Krylov iteration on ``A^T A`` (one pass over the data
        each, >= 2); the a-posteriori error is logged as ``lsi_max_rel_residual``.
    oversample
        Extra basis vectors beyond ``n_comps``.
    scale_embeddings
        Center and scale each component to unit variance (muon's default).
    drop_first
        Drop the first component (usually the one that tracks sequencing depth).
    """

    n_comps: int = 50
    n_iter: int = 4
    oversample: int = 10
    scale_embeddings: bool = True
    drop_first: bool = False

    def __post_init__(self) -> None:
        check_positive("atac.lsi.n_comps", self.n_comps)
        if self.n_iter < 2:
            msg = (
                f"atac.lsi.n_iter={self.n_iter!r} must be >= 2 (pass 1 only draws the random "
                "start; the error falls geometrically with each further pass)"
            )
            raise RaymmiError(msg)
        _check_optional("atac.lsi.oversample", self.oversample)
        if self.drop_first and self.n_comps < 2:
            msg = "atac.lsi.drop_first=true needs n_comps >= 2"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class AtacConfig:
    """ATAC steps, in order, and their parameters."""

    steps: tuple[str, ...] = ATAC_STEPS
    filter_cells: FilterAtacCellsConfig = dataclasses.field(default_factory=FilterAtacCellsConfig)
    filter_peaks: FilterPeaksConfig = dataclasses.field(default_factory=FilterPeaksConfig)
    tfidf: TfidfConfig = dataclasses.field(default_factory=TfidfConfig)
    lsi: LsiConfig = dataclasses.field(default_factory=LsiConfig)

    def __post_init__(self) -> None:
        _check_steps("atac", self.steps, ATAC_STEPS)
        position = {s: i for i, s in enumerate(self.steps)}
        if "filter_cells" in position and position["filter_cells"] != 0:
            msg = "atac.steps: filter_cells reads raw counts; make it the first step"
            raise RaymmiError(msg)
        _before("atac", position, "binarize", "filter_peaks")
        _before("atac", position, "binarize", "tfidf")
        _before("atac", position, "filter_peaks", "tfidf")
        _before("atac", position, "tfidf", "lsi")
        if "lsi" in position and "tfidf" not in position:
            msg = "atac.steps: lsi is the SVD of the TF-IDF matrix; add tfidf before lsi"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class AdtConfig:
    """ADT steps: ``clr``, per cell, as ``muon.prot.pp.clr(adata, axis=1)``."""

    steps: tuple[str, ...] = ADT_STEPS

    def __post_init__(self) -> None:
        _check_steps("adt", self.steps, ADT_STEPS)


@dataclasses.dataclass(frozen=True)
class PreprocessCellsConfig:
    """``raymmi preprocess cells``: one section per modality; absent modalities are skipped.

    Parameters
    ----------
    rna, atac, adt
        Steps and parameters per modality.
    check_counts
        Refuse count modalities (RNA, ATAC before ``binarize``, ADT) holding negative or
        non-integer values: they are not raw counts.
    seed
        Seed of the randomized LSI (PCA is an exact eigendecomposition, not random).
    max_tasks_in_flight
        Bound on concurrently submitted per-file tasks (``null``: twice the cluster's CPUs),
        which bounds the partial statistics held at once.
    """

    rna: RnaConfig = dataclasses.field(default_factory=RnaConfig)
    atac: AtacConfig = dataclasses.field(default_factory=AtacConfig)
    adt: AdtConfig = dataclasses.field(default_factory=AdtConfig)
    check_counts: bool = True
    seed: int = 0
    max_tasks_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            msg = f"seed={self.seed!r} must be >= 0"
            raise RaymmiError(msg)
        if self.max_tasks_in_flight is not None:
            check_positive("max_tasks_in_flight", self.max_tasks_in_flight)


def _check_steps(modality: str, steps: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = [s for s in steps if s not in allowed]
    if unknown:
        msg = f"{modality}.steps: unknown step(s) {unknown}; allowed: {list(allowed)}"
        raise RaymmiError(msg)
    repeated = sorted({s for s in steps if list(steps).count(s) > 1})
    if repeated:
        msg = f"{modality}.steps: step(s) {repeated} listed more than once; list each once"
        raise RaymmiError(msg)


def _before(modality: str, position: dict[str, int], first: str, then: str) -> None:
    if first in position and then in position and position[first] > position[then]:
        msg = f"{modality}.steps: {first} must come before {then}; reorder the steps"
        raise RaymmiError(msg)
