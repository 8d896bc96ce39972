"""Single cells: fitted figures, :class:`CellSetSpec`, names and global parameters."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Literal

import numpy as np
import pandas as pd

from raymmi.metrics import CELL_CYCLE_G2M_GENES, CELL_CYCLE_S_GENES
from raymmi.testing._common import _NAME_SEED, _check

# ==============================================================================================
# Cells: fitted figures
# ==============================================================================================

# openproblems_bmmc_cite_starter.output_rna.h5ad, layers["counts"] (600 cells x 1,000 genes):
# median library size 3,066 UMIs over the file's 1,000 genes, i.e. 3.07 per gene; the default
# rna_depth scales this to n_genes (6,131 for 2,000 genes), keeping the file's sparsity.
RNA_UMIS_PER_GENE = 3.066
# same file: sd of log library size (0.73 in batch s1d1, 0.55 in s1d2).
RNA_DEPTH_LOG_SD = 0.66
# same file: fraction of zero entries (reference figure for tests).
RNA_SPARSITY = 0.665
# same file: size-adjusted method-of-moments NB dispersion 1/theta within each of the 6 largest
# cell types, median over types of the median over genes with mean > 0.5 (0.04-0.20 per type).
# Reference figure; the generator reaches it as NB noise plus continuous state plus batch (next
# constants). Over all cells the file gives 0.96 (41 cell types); the generator, with 8, 0.4.
RNA_WITHIN_TYPE_DISPERSION = 0.062
# *calibrated*: per-entry NB dispersion 1/theta and sd of the loadings of a 3-d continuous
# within-type state (shared by all modalities), chosen so that the generated within-type
# dispersion is 0.061 (the file's 0.062).
RNA_NB_DISPERSION = 0.02
STATE_LOADING_SD = 0.08
N_STATE = 3
# same file: per-gene mean count (at the median depth of 3,066 over 1,000 genes) has log10 mean
# -0.34 and sd 0.73 over genes. Expression shares are normalized per cell, so only the sd acts;
# *calibrated*: 0.6 before cell-type effects gives 0.75 after them (generated mean -0.32).
RNA_GENE_LOG10_MEAN = (-0.34, 0.6)
# same file: sd of per-gene log ratios of normalized means between batches s1d1 and s1d2 (0.251)
# less the same between two random halves (0.118), divided by sqrt(2): per-batch log scaling.
RNA_BATCH_LOG_SD = 0.157
# same file: cell-type log fold changes (log of type mean / overall mean, 9 types with >= 20
# cells, genes with mean > 0.5) have sd 1.84. *calibrated*: a fraction of genes gets a N(0, sd)
# fold change per type; at 8 types these give sd 1.88 and sparsity 0.679 (file: 0.665), but
# |lfc| > 1 for 47% of entries (file: 28%; its few marker genes are more extreme).
RNA_MARKER_FRACTION = 0.2
RNA_MARKER_LFC_SD = 2.5
# same file, obs["phase"] (scanpy score_genes_cell_cycle calls): G1 9%, S 15%, G2M 76%.
PHASE_FRACTIONS = {"G1": 0.090, "S": 0.153, "G2M": 0.757}
# *assumed*: log fold change of the S-phase genes in S cells and of the G2M genes in G2M cells.
PHASE_LFC = 1.0
# same file, obs["cell_type"]: ranked cell-type sizes fall as rank**-0.99 (top 20 of 41
# types); cell type t has weight (t + 1) ** -CELL_TYPE_ZIPF.
CELL_TYPE_ZIPF = 0.99
# *assumed*: concentration of the per-batch Dirichlet around those weights; donors differ in
# composition (one type has 13 cells in s1d1, 48 in s1d2).
BATCH_COMPOSITION_CONCENTRATION = 10.0
# openproblems_bmmc_cite_starter.output_mod2.h5ad, layers["counts"] (600 cells x 134 ADT):
# median total 5,890 counts, i.e. 43.95 per protein; sd of log total 0.52.
ADT_COUNTS_PER_PROTEIN = 43.95
ADT_DEPTH_LOG_SD = 0.52
# same file: per-protein mean count, mean and sd of log10 over proteins (median 22.7).
ADT_PROTEIN_LOG10_MEAN = (1.38, 0.51)
# same file: within-type dispersion as for RNA, proteins with mean > 5: 0.16 (0.03-0.23 per
# type). *calibrated*: this per-entry NB dispersion gives 0.16 with the batch effects.
ADT_NB_DISPERSION = 0.07
# same file: per-batch log scaling of protein means, as for RNA (0.539 vs 0.134 random halves).
ADT_BATCH_LOG_SD = 0.37
# same file: between-type share of the variance of log1p(counts / total * 1e3), median over
# proteins, is 0.72 (41 types). *calibrated*: this per-type log fold-change sd gives 0.80 at 8
# types, and 10% zero counts (the next figure).
ADT_TYPE_LFC_SD = 1.4
# same file: fraction of zero ADT counts (reference figure for tests).
ADT_ZERO_FRACTION = 0.10
# both files: correlation of log RNA library size and log ADT total over the 600 cells (0.33);
# *assumed* to hold between RNA and ATAC depth as well ("loosely correlated").
DEPTH_CORRELATION = 0.33
# Literature (10x Genomics Multiome PBMC data sets; no ATAC file here): 2-8% of peaks are
# accessible in a cell; the default atac_depth is 4% of n_peaks (median accessible peaks).
ATAC_ACCESSIBLE_FRACTION = 0.04
# Literature (same): 5-15k fragments per cell, read as the 10th-90th percentiles of a
# log-normal: sd of log = log(3) / 2.56. Saturating peaks make the sd of log accessible-peak
# counts a little smaller (0.38 at the defaults).
ATAC_DEPTH_LOG_SD = 0.43
# *assumed*: sd of the log accessibility of peaks around their mean, and the cell-type-specific
# peaks (fraction, log fold-change sd), mirroring RNA.
ATAC_PEAK_LOG_SD = 1.0
ATAC_MARKER_FRACTION = 0.3
ATAC_MARKER_LFC_SD = 1.5
# *assumed*: per-batch log scaling of peak accessibility, as measured for RNA genes.
ATAC_BATCH_LOG_SD = RNA_BATCH_LOG_SD

# difficulty="realistic" (CellSetSpec): figures of the real sets the models are judged on.
# 10x Multiome BMMC set of issue 17 (500 cells, 21 types, 2 batches, 600 genes, 600 peaks; not
# in ../shared/data): ATAC density 0.14 (median 84 peaks a cell of 600), RNA median 384 UMIs
# over 600 genes (0.64 a gene); its RNA PCA-50 reference, Leiden at the best NMI (15-NN,
# resolution 0.1-2.0), scores ARI 0.324 / NMI 0.512.
REALISTIC_ATAC_ACCESSIBLE_FRACTION = 0.14
REALISTIC_MULTIOME_RNA_UMIS_PER_GENE = 0.64
# CITE starter above (600 cells, 41 types, 1,000 genes; counts/libsize 1e4, log1p, z-score,
# PCA-50, k-means k = 41, 10 inits): RNA 0.364 ARI, RNA + ADT concatenated 0.471.
# *calibrated*: multipliers of the RNA marker log fold changes with which generated sets of
# those shapes (cell counts, types, batches, features) score about those figures, seeds 0-1:
# multiome 0.38 gives Leiden ARI 0.28-0.44 / NMI 0.49-0.61 (0.35: 0.17-0.28 / 0.42-0.49; 0.4:
# 0.33-0.44 / 0.57-0.61; the figure is steep in the scale); cite 0.3 gives k-means ARI 0.38 (the
# same protocol on the real file: 0.388). Multiome needs more fold change at its ~5x lower depth.
# The ADT multiplier gives RNA + ADT PCA-50 0.43-0.47 (real file: 0.434 by this script's CLR-free
# ADT scaling, 0.471 with CLR). Tested in tests/test_testing_realistic.py.
REALISTIC_RNA_TYPE_SCALE = types.MappingProxyType({"multiome": 0.38, "cite": 0.3})
REALISTIC_ADT_TYPE_SCALE = 0.2
# *calibrated*: realistic ADT profiles are shared by lineages. On the real starter the 41 types'
# protein centroids are far from most others but close to a few (CLR, z-scored: the distance
# to the nearest type's centroid is 0.84 of the within-type spread, the median distance 2.06;
# the type explains a median 68% of a protein's variance), while independent per-type profiles
# put every pair at about the same distance (1.30 / 1.53, 45%). Each type's profile is its
# lineage's (type index modulo REALISTIC_ADT_LINEAGES) plus its own.
REALISTIC_ADT_LINEAGES = 6
REALISTIC_ADT_LINEAGE_LFC_SD = 0.8
# *assumed*: ATAC markers keep their full fold changes (no real ATAC clustering figure here).
REALISTIC_ATAC_TYPE_SCALE = 1.0

# openproblems_bmmc_cite_starter.output_mod2.h5ad, var index: the 134 ADT panel names.
_PROTEINS = (
    "CD86", "CD274", "CD270", "CD155", "CD112", "CD47", "CD48", "CD40", "CD154", "CD52", "CD3",
    "CD8", "CD56", "CD19", "CD33", "CD11c", "HLA-A-B-C", "CD45RA", "CD123", "CD7", "CD105",
    "CD49f", "CD194", "CD4", "CD44", "CD14", "CD16", "CD25", "CD45RO", "CD279", "TIGIT", "CD20",
    "CD335", "CD31", "Podoplanin", "CD146", "IgM", "CD5", "CD195", "CD32", "CD196", "CD185",
    "CD103", "CD69", "CD62L", "CD161", "CD152", "CD223", "KLRG1", "CD27", "CD107a", "CD95",
    "CD134", "HLA-DR", "CD1c", "CD11b", "CD64", "CD141", "CD1d", "CD314", "CD35", "CD57",
    "CD272", "CD278", "CD58", "CD39", "CX3CR1", "CD24", "CD21", "CD11a", "CD79b", "CD244",
    "CD169", "integrinB7", "CD268", "CD42b", "CD54", "CD62P", "CD119", "TCR", "CD192", "CD122",
    "FceRIa", "CD41", "CD137", "CD163", "CD83", "CD124", "CD13", "CD2", "CD226", "CD29", "CD303",
    "CD49b", "CD81", "IgD", "CD18", "CD28", "CD38", "CD127", "CD45", "CD22", "CD71", "CD26",
    "CD115", "CD63", "CD304", "CD36", "CD172a", "CD72", "CD158", "CD93", "CD49a", "CD49d",
    "CD73", "CD9", "TCRVa7.2", "TCRVd2", "LOX-1", "CD158b", "CD158e1", "CD142", "CD319", "CD352",
    "CD94", "CD162", "CD85j", "CD23", "CD328", "HLA-E", "CD82", "CD101", "CD88", "CD224",
)  # fmt: skip
# GRCh38 chromosome lengths (bp); peaks are spread over chromosomes in proportion.
_CHROMOSOMES = {
    "chr1": 248_956_422, "chr2": 242_193_529, "chr3": 198_295_559, "chr4": 190_214_555,
    "chr5": 181_538_259, "chr6": 170_805_979, "chr7": 159_345_973, "chr8": 145_138_636,
    "chr9": 138_394_717, "chr10": 133_797_422, "chr11": 135_086_622, "chr12": 133_275_309,
    "chr13": 114_364_328, "chr14": 107_043_718, "chr15": 101_991_189, "chr16": 90_338_345,
    "chr17": 83_257_441, "chr18": 80_373_285, "chr19": 58_617_616, "chr20": 64_444_167,
    "chr21": 46_709_983, "chr22": 50_818_468, "chrX": 156_040_895,
}  # fmt: skip
_PEAK_WIDTH = 500
_MAX_PEAKS = 1_000_000
_PHASES = tuple(PHASE_FRACTIONS)
_CELL_CYCLE_MIN_GENES = 2 * (len(CELL_CYCLE_S_GENES) + len(CELL_CYCLE_G2M_GENES))
# Matrix entries per block inside a chunk: temporaries of a few MB stay in cache and bound
# memory whatever the chunk size (measured: 4x faster than one pass over 10,000 x 2,000).
_BLOCK_ELEMENTS = 1 << 20
# Non-zero NB entries with a larger mean are drawn by numpy (gamma-Poisson), smaller ones by
# inversion; both exact, this split is the faster one (measured).
_NB_INVERSION_MAX_MEAN = 10.0
_NB_BULK_STEPS = 3


# ==============================================================================================
# Cells: spec and names
# ==============================================================================================


@dataclasses.dataclass(frozen=True, kw_only=True)
class CellSetSpec:
    """A seeded set of paired single cells: RNA + ATAC (``multiome``) or RNA + ADT (``cite``).

    Parameters
    ----------
    n_cells
        Number of cells, ids ``c000000000`` ...
    kind
        ``"multiome"`` (modalities ``rna``, ``atac``) or ``"cite"`` (``rna``, ``adt``).
    n_genes, n_peaks, n_proteins
        Features per modality (``n_peaks`` is used by ``multiome`` only, ``n_proteins`` by
        ``cite`` only).
    n_cell_types
        Cell types ``T0`` ...; sizes fall off like the file's (rank ** -0.99).
    n_batches
        Batches ``s1`` ..., each with its own composition and feature scaling.
    chunk_size
        Cells per chunk (the unit of :func:`generate_cells`); part of the data set's identity.
    rna_depth
        Median RNA library size; ``None``: 3.07 UMIs per gene (fitted), 6,131 for 2,000 genes
        (``realistic`` multiome: 0.64).
    atac_depth
        Median number of accessible peaks per cell; ``None``: 4% of ``n_peaks``
        (``realistic``: 14%).
    adt_depth
        Median ADT total; ``None``: 43.95 counts per protein (fitted), 5,890 for 134.
    rna_depth_log_sd, atac_depth_log_sd, adt_depth_log_sd
        Spread (sd of the natural log) of the per-cell depths.
    depth_correlation
        Correlation of log RNA depth with log ATAC (or ADT) depth, in [-1, 1].
    batch_effect_scale
        Multiplier of the fitted per-batch feature scaling (0: no batch effect).
    rna_type_programs
        Number of distinct RNA cell-type programs; ``None``: one per type. With
        ``k < n_cell_types``, type ``t`` expresses RNA program ``t % k``, so types that differ
        only by ``k`` cannot be told apart from the RNA (the ATAC and ADT still separate them).
        Must be between 1 and ``n_cell_types``.
    atac_type_signal
        Multiplier of the ATAC marker log fold changes (non-negative; 0: peaks carry no
        cell-type signal at all, only peak, batch, state and depth effects).
    difficulty
        ``"easy"`` (the default): cell types well apart (the fitted fold-change spread), every
        model and baseline clusters them almost perfectly. ``"realistic"``: cell-type fold
        changes shrunk (``REALISTIC_*_TYPE_SCALE``) so that an RNA PCA clusters the types about
        as well as on the real sets (k-means ARI ~0.4 on a 41-type CITE-shaped set, Leiden
        ARI ~0.33 / NMI ~0.53 on a 21-type multiome-shaped set), and, for ``multiome``, the
        real set's depths as defaults: 0.64 RNA UMIs a gene (384 for 600 genes), 14% of peaks
        accessible (84 of 600). Fold changes are scaled, not redrawn: the same seed gives the
        same type programs, only weaker.
    seed
        Non-negative seed of the whole set.
    """

    n_cells: int = 10_000
    kind: Literal["multiome", "cite"] = "multiome"
    n_genes: int = 2_000
    n_peaks: int = 5_000
    n_proteins: int = 134
    n_cell_types: int = 8
    n_batches: int = 3
    chunk_size: int = 10_000
    rna_depth: float | None = None
    atac_depth: float | None = None
    adt_depth: float | None = None
    rna_depth_log_sd: float = RNA_DEPTH_LOG_SD
    atac_depth_log_sd: float = ATAC_DEPTH_LOG_SD
    adt_depth_log_sd: float = ADT_DEPTH_LOG_SD
    depth_correlation: float = DEPTH_CORRELATION
    batch_effect_scale: float = 1.0
    rna_type_programs: int | None = None
    atac_type_signal: float = 1.0
    difficulty: Literal["easy", "realistic"] = "easy"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            self.kind in ("multiome", "cite"),
            f"kind={self.kind!r} is not one of ['cite', 'multiome']",
        )
        for name in ("n_cells", "n_genes", "n_peaks", "n_proteins", "n_cell_types"):
            value = getattr(self, name)
            _check(value >= 1, f"{name}={value!r} must be at least 1")
        _check(
            self.n_peaks <= _MAX_PEAKS,
            f"n_peaks={self.n_peaks!r} exceeds {_MAX_PEAKS:,} (non-overlapping 500 bp peaks)",
        )
        _check(self.n_batches >= 1, f"n_batches={self.n_batches!r} must be at least 1")
        _check(self.chunk_size >= 1, f"chunk_size={self.chunk_size!r} must be at least 1")
        for name in ("rna_depth", "atac_depth", "adt_depth"):
            value = getattr(self, name)
            _check(
                value is None or value > 0,
                f"{name}={value!r} must be positive (or None for the fitted default)",
            )
        _check(
            self.atac_depth is None or self.atac_depth < self.n_peaks,
            f"atac_depth={self.atac_depth!r} must be below n_peaks={self.n_peaks}",
        )
        for name in ("rna_depth_log_sd", "atac_depth_log_sd", "adt_depth_log_sd"):
            value = getattr(self, name)
            _check(value >= 0, f"{name}={value!r} must be non-negative")
        _check(
            -1.0 <= self.depth_correlation <= 1.0,
            f"depth_correlation={self.depth_correlation!r} must be between -1 and 1",
        )
        _check(
            self.batch_effect_scale >= 0,
            f"batch_effect_scale={self.batch_effect_scale!r} must be non-negative",
        )
        _check(
            self.rna_type_programs is None or 1 <= self.rna_type_programs <= self.n_cell_types,
            f"rna_type_programs={self.rna_type_programs!r} must be between 1 and "
            f"n_cell_types={self.n_cell_types} (or None for one program per type)",
        )
        _check(
            math.isfinite(self.atac_type_signal) and self.atac_type_signal >= 0,
            f"atac_type_signal={self.atac_type_signal!r} must be a finite non-negative number "
            "(0: no cell-type signal in the peaks, 1: the default)",
        )
        _check(
            self.difficulty in ("easy", "realistic"),
            f"difficulty={self.difficulty!r} is not one of ['easy', 'realistic']",
        )
        _check(self.seed >= 0, f"seed={self.seed!r} must be non-negative")

    @property
    def median_rna_depth(self) -> float:
        """Median RNA library size: ``rna_depth`` or the fitted per-gene default."""
        if self.rna_depth is not None:
            return self.rna_depth
        if self.difficulty == "realistic" and self.kind == "multiome":
            return REALISTIC_MULTIOME_RNA_UMIS_PER_GENE * self.n_genes
        return RNA_UMIS_PER_GENE * self.n_genes

    @property
    def median_atac_depth(self) -> float:
        """Median accessible peaks per cell: ``atac_depth`` or 4% of ``n_peaks``."""
        if self.atac_depth is not None:
            return self.atac_depth
        if self.difficulty == "realistic":
            return REALISTIC_ATAC_ACCESSIBLE_FRACTION * self.n_peaks
        return ATAC_ACCESSIBLE_FRACTION * self.n_peaks

    @property
    def median_adt_depth(self) -> float:
        """Median ADT total: ``adt_depth`` or the fitted per-protein default."""
        if self.adt_depth is not None:
            return self.adt_depth
        return ADT_COUNTS_PER_PROTEIN * self.n_proteins


def n_chunks(spec: CellSetSpec) -> int:
    """Number of chunks, ``ceil(n_cells / chunk_size)``; the last one may be smaller."""
    return -(-spec.n_cells // spec.chunk_size)


def cell_cycle_genes(spec: CellSetSpec) -> tuple[list[str], list[str]]:
    """The S-phase and G2M genes among :func:`gene_names` (both empty below 194 genes)."""
    if spec.n_genes < _CELL_CYCLE_MIN_GENES:
        return [], []
    return list(CELL_CYCLE_S_GENES), list(CELL_CYCLE_G2M_GENES)


def gene_names(spec: CellSetSpec) -> list[str]:
    """Gene names, in column order (length ``n_genes``).

    The Tirosh et al. cell-cycle genes first (when ``n_genes >= 194``; they respond to the
    ``phase`` of each cell), then ``GENE00000`` ...
    """
    s_genes, g2m_genes = cell_cycle_genes(spec)
    named = s_genes + g2m_genes
    return named + [f"GENE{i:05d}" for i in range(spec.n_genes - len(named))]


@functools.lru_cache(maxsize=16)
def _peaks(n_peaks: int) -> tuple[str, ...]:
    rng = np.random.default_rng(_NAME_SEED)
    lengths = np.array(list(_CHROMOSOMES.values()), dtype=np.float64)
    share = lengths / lengths.sum() * n_peaks
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: n_peaks - counts.sum()]] += 1
    names: list[str] = []
    for (chrom, length), count in zip(_CHROMOSOMES.items(), counts, strict=True):
        slots = np.sort(rng.choice(length // (2 * _PEAK_WIDTH), size=count, replace=False))
        starts = slots * 2 * _PEAK_WIDTH + rng.integers(0, _PEAK_WIDTH, size=count)
        names.extend(f"{chrom}-{s}-{s + _PEAK_WIDTH}" for s in starts)
    return tuple(names)


def peak_names(spec: CellSetSpec) -> list[str]:
    """Peak names ``chr1-10000-10500`` (length ``n_peaks``).

    Non-overlapping 500 bp peaks over chr1 ... chr22 and chrX, in proportion to the GRCh38
    chromosome lengths, sorted by chromosome (natural order) and start; independent of the seed.
    """
    return list(_peaks(spec.n_peaks))


def protein_names(spec: CellSetSpec) -> list[str]:
    """ADT names (length ``n_proteins``): the file's 134-antibody panel, then ``ADT135`` ..."""
    extra = [f"ADT{i + 1}" for i in range(len(_PROTEINS), spec.n_proteins)]
    return list(_PROTEINS[: spec.n_proteins]) + extra


def _cell_ids(start: int, stop: int) -> pd.Index:
    return pd.Index([f"c{i:09d}" for i in range(start, stop)], dtype=object)


# ==============================================================================================
# Cells: global parameters
# ==============================================================================================


@dataclasses.dataclass(frozen=True)
class _CellGlobals:
    type_cdf: np.ndarray  # (n_batches, n_cell_types) cumulative composition per batch
    rna_log: np.ndarray  # (n_cell_types, n_batches, n_genes) float32 log expression shares
    rna_state: np.ndarray  # (N_STATE, n_genes) float32
    rna_phase: np.ndarray  # (3, n_genes) float32 log fold change per phase
    atac_cdf: np.ndarray  # (n_groups * n_peaks,) group-offset cumulative peak distribution
    atac_guide: np.ndarray  # (n_groups * n_peaks,) where to start searching atac_cdf
    atac_total: np.ndarray  # (n_cell_types, n_batches) total accessibility rate at depth 1
    atac_rate: float  # depth factor of the median cell
    atac_state: np.ndarray  # (n_peaks, N_STATE) float32
    adt_log: np.ndarray  # (n_cell_types, n_batches, n_proteins) float32, normalized per group
    adt_state: np.ndarray  # (N_STATE, n_proteins) float32


def _markers(
    rng: np.random.Generator, shape: tuple[int, int], fraction: float, sd: float
) -> np.ndarray:
    """Per-type log fold changes (n_types, n_features): N(0, sd) on a fraction of features."""
    lfc = rng.normal(0.0, sd, shape)
    lfc *= rng.random(shape) < fraction
    return lfc


def _atac_median_rate(log_rate: np.ndarray, weights: np.ndarray, target: float) -> float:
    """Depth factor r with sum_p (1 - exp(-r * a_p)) = target, averaged over groups."""
    rates = np.exp(log_rate.reshape(-1, log_rate.shape[-1]))

    def expected(r: float) -> float:
        return float(weights @ (-np.expm1(-r * rates)).sum(axis=1))

    lo, hi = 0.0, 1.0
    while expected(hi) < target:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=8)
def _cell_globals(spec: CellSetSpec) -> _CellGlobals:
    s_types, s_rna, s_atac, s_adt, s_state = np.random.SeedSequence(spec.seed).spawn(5)
    t_, b_ = spec.n_cell_types, spec.n_batches
    batch_scale = spec.batch_effect_scale
    real = spec.difficulty == "realistic"

    rng = np.random.default_rng(s_types)
    base = (np.arange(1, t_ + 1, dtype=np.float64)) ** -CELL_TYPE_ZIPF
    base /= base.sum()
    composition = rng.dirichlet(BATCH_COMPOSITION_CONCENTRATION * base * t_, size=b_)
    type_cdf = np.cumsum(composition, axis=1)
    type_cdf[:, -1] = 1.0
    weights = (composition.T / b_).reshape(-1)  # share of each (type, batch) group

    rng = np.random.default_rng(s_state)
    state = {
        n: rng.normal(0.0, STATE_LOADING_SD, (N_STATE, m)).astype(np.float32)
        for n, m in (("rna", spec.n_genes), ("atac", spec.n_peaks), ("adt", spec.n_proteins))
    }

    rng = np.random.default_rng(s_rna)
    g = spec.n_genes
    log_mean = rng.normal(RNA_GENE_LOG10_MEAN[0], RNA_GENE_LOG10_MEAN[1], g) * math.log(10.0)
    lfc = _markers(rng, (t_, g), RNA_MARKER_FRACTION, RNA_MARKER_LFC_SD)
    if real:
        lfc *= REALISTIC_RNA_TYPE_SCALE[spec.kind]
    if spec.rna_type_programs is not None:
        # All t_ programs are drawn whatever k, so the later draws (and the default) do not move.
        lfc = lfc[np.arange(t_) % spec.rna_type_programs]
    batch = rng.normal(0.0, RNA_BATCH_LOG_SD * batch_scale, (b_, g))
    rna_log = log_mean + lfc[:, None, :] + batch[None, :, :]
    rna_log -= np.log(np.exp(rna_log).sum(axis=2, keepdims=True))  # exp sums to 1 per group
    rna_phase = np.zeros((len(_PHASES), g), dtype=np.float32)
    s_genes, g2m_genes = cell_cycle_genes(spec)
    rna_phase[_PHASES.index("S"), : len(s_genes)] = PHASE_LFC
    rna_phase[_PHASES.index("G2M"), len(s_genes) : len(s_genes) + len(g2m_genes)] = PHASE_LFC

    rng = np.random.default_rng(s_atac)
    p = spec.n_peaks
    peak = rng.normal(0.0, ATAC_PEAK_LOG_SD, p)
    lfc = _markers(rng, (t_, p), ATAC_MARKER_FRACTION, ATAC_MARKER_LFC_SD)
    lfc *= spec.atac_type_signal * (REALISTIC_ATAC_TYPE_SCALE if real else 1.0)  # exact at 1.0
    batch = rng.normal(0.0, ATAC_BATCH_LOG_SD * batch_scale, (b_, p))
    atac_log = peak + lfc[:, None, :] + batch[None, :, :]  # (t, b, p)
    rates = np.exp(atac_log - atac_log.max())
    atac_total = rates.sum(axis=2)
    cdf = np.cumsum(rates.reshape(t_ * b_, p), axis=1) / atac_total.reshape(-1, 1)
    cdf[:, -1] = 1.0
    cdf += np.arange(t_ * b_)[:, None]
    cdf = cdf.reshape(-1)
    # Guide table (Chen and Asau 1974): entry g * p + k is the first index with
    # cdf > g + k / p, so a draw u in group g starts its search at entry g * p + floor(u * p)
    # and walks about one step: O(1) per event instead of a binary search.
    starts = (np.arange(t_ * b_)[:, None] + np.arange(p) / p).reshape(-1)
    guide = np.searchsorted(cdf, starts, side="right")
    atac_rate = _atac_median_rate(atac_log - atac_log.max(), weights, spec.median_atac_depth)

    rng = np.random.default_rng(s_adt)
    n = spec.n_proteins
    log_mean = rng.normal(ADT_PROTEIN_LOG10_MEAN[0], ADT_PROTEIN_LOG10_MEAN[1], n) * math.log(10)
    lfc = rng.normal(0.0, ADT_TYPE_LFC_SD, (t_, n))
    if real:
        lfc *= REALISTIC_ADT_TYPE_SCALE
    batch = rng.normal(0.0, ADT_BATCH_LOG_SD * batch_scale, (b_, n))
    if real:  # drawn last, so the easy sets' proteins do not move
        lineage = rng.normal(0.0, REALISTIC_ADT_LINEAGE_LFC_SD, (REALISTIC_ADT_LINEAGES, n))
        lfc += lineage[np.arange(t_) % REALISTIC_ADT_LINEAGES]
    adt_log = log_mean + lfc[:, None, :] + batch[None, :, :]
    adt_log -= np.log(np.exp(adt_log).sum(axis=2, keepdims=True))

    return _CellGlobals(
        type_cdf=type_cdf,
        rna_log=rna_log.astype(np.float32),
        rna_state=state["rna"],
        rna_phase=rna_phase,
        atac_cdf=cdf,
        atac_guide=guide,
        atac_total=atac_total,
        atac_rate=atac_rate,
        atac_state=np.ascontiguousarray(state["atac"].T),
        adt_log=adt_log.astype(np.float32),
        adt_state=state["adt"],
    )
