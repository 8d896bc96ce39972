"""Seeded synthetic plates and single cells fitted to the real files, and :func:`shared_data`.

Two generators build data sets of any size one independent piece at a time, so that Ray tasks
can produce them in parallel with no shared state:

- :func:`generate_plate` returns one plate of Cell Painting profiles for a :class:`PlateSetSpec`;
  plate ``i`` depends only on ``(spec, i)``.
- :func:`generate_cells` returns one chunk of paired single cells (RNA + ATAC, or RNA + ADT) for
  a :class:`CellSetSpec`; chunk ``i`` depends only on ``(spec, i)`` (and so on ``chunk_size``).

Global parameters (feature scales, correlation structure, compound, batch and cell-type effects)
come from ``numpy.random.SeedSequence(seed)``; the draws of one piece from
``numpy.random.default_rng([seed, index])``. Each process recomputes the global parameters from
the spec alone (cached per spec). Feature names (CellProfiler-style features, genes, peaks,
proteins) do not depend on the seed, so data sets with different seeds share one feature space.

This module is pure: numpy, scipy and pandas only; no Ray, no MLflow, no file I/O at run time
(:func:`shared_data` only resolves paths).

How the figures were fitted
---------------------------
Every fitted figure is a module constant whose comment names the file and the statistic. They
were measured once, by hand, on the files in ``../shared/data``:

- ``cellpainting/jump_8plates_3features.parquet`` (raw JUMP wells, 8 plates, 6 batches,
  4 sources; 3 Zernike features): per feature, the pooled within-plate standard deviation of
  the negative-control wells (the generator's noise unit); the spread of plate medians between
  the two plates of a batch (two batches hold two plates) and of batch means across the six
  batches, both divided by that pooled negcon sd; the same for log plate standard deviations
  (scale effects); then the mean over the 3 features.
- ``cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz`` (one plate, 454 features):
  eigenvalues of the feature correlation matrix over all 384 wells, each divided by 454 (the
  generator's low-rank-plus-noise factor model uses the top 20 as factor variances); per treated
  well, the root-mean-square over features of its profile z-scored against the 24 DMSO wells; a
  well counts as active when that exceeds the 95th percentile of the DMSO wells' own values,
  and its effect size is ``sqrt(rms**2 - 1)``.
- ``cellpainting/cellprofiler_BR00121431/*/{Cells,Cytoplasm,Nuclei}.csv`` (raw single cells):
  log10 of the absolute per-feature median, mean and sd per measurement category, giving the
  raw magnitudes of features.
- ``singlecell/openproblems_bmmc_cite_starter/*.h5ad`` (600 cells, ``layers["counts"]``): per
  cell library sizes (median, sd of log); fraction of zero entries; per gene the mean count and
  the method-of-moments negative-binomial dispersion ``sum((x - s*m)**2 - s*m) / sum((s*m)**2)``
  with size factors ``s`` (over all cells, and within each of the six largest cell types);
  batch effects as the sd of per-gene log ratios of normalized means between the two batches,
  corrected for the same sd between two random halves; ADT count levels likewise.
- ATAC has no real file here: figures from the 10x Genomics Multiome PBMC literature
  (5-15k fragments per cell, 2-8% of peaks accessible per cell), as noted at each constant.

Figures marked *calibrated* are model parameters tuned (by generating and re-measuring) until
the generator reproduces the file statistics named in their comment; figures marked *assumed*
are modelling choices that no file here can measure.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raymmi import schema

__all__ = [
    "CELL_CYCLE_G2M_GENES",
    "CELL_CYCLE_S_GENES",
    "COMPOUND",
    "SHARED_DATA_ENV",
    "CellSetSpec",
    "PlateSetSpec",
    "SpecError",
    "active_compounds",
    "cell_cycle_genes",
    "feature_names",
    "gene_names",
    "generate_cells",
    "generate_plate",
    "generate_plates",
    "has_shared_data",
    "n_chunks",
    "peak_names",
    "planted_zero_spread",
    "plate_ids",
    "protein_names",
    "shared_data",
]

# ==============================================================================================
# Shared data
# ==============================================================================================

SHARED_DATA_ENV = "RAYMMI_SHARED_DATA"


def _shared_root() -> Path:
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(relpath: str) -> Path:
    """Path of a real data file under ``shared/data`` beside the project's root.

    Parameters
    ----------
    relpath
        Path relative to the shared data folder, e.g.
        ``"cellpainting/jump_8plates_3features.parquet"``.

    Returns
    -------
    Path
        The existing file or folder. The folder is ``$RAYMMI_SHARED_DATA`` when that variable is
        set, else ``<repo>/../shared/data``.

    Raises
    ------
    FileNotFoundError
        If the path does not exist (for instance in a fresh clone without ``../shared``).
    """
    root = _shared_root()
    path = root / relpath
    if not path.exists():
        msg = (
            f"shared data {relpath!r} not found: {path} does not exist. The real data sets live "
            f"in <repo>/../shared/data; set {SHARED_DATA_ENV} to the folder that holds them"
        )
        raise FileNotFoundError(msg)
    return path


def has_shared_data(relpath: str) -> bool:
    """Whether :func:`shared_data` finds ``relpath`` (for ``pytest.skip`` with a reason)."""
    return (_shared_root() / relpath).exists()


class SpecError(schema.RaymmiError, ValueError):
    """An invalid generator spec; a ``ValueError`` that the command line prints as one line."""


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise SpecError(msg)


# ==============================================================================================
# Plates: fitted figures
# ==============================================================================================

# jump_8plates_3features.parquet: pooled within-plate sd of the negcon wells / grand mean of the
# feature, mean over the 3 features (0.0137, 0.0127, 0.0179). The noise sd of every feature is
# |mean| times a coefficient of variation drawn around this value.
NEGCON_CV = 0.0148
# *assumed*: spread (sd of log) of that coefficient of variation across features; the file's 3
# Zernike features span only 0.013-0.018, real feature sets far more.
NEGCON_CV_LOG_SD = 0.5
# jump_8plates_3features.parquet: pooled negcon sd / pooled all-well sd within plates, mean of
# the 3 features (0.73, 0.72, 0.70). Reference figure for tests; LINCS (compound dose plate,
# whole-plate normalized) gives 0.44 (median over 454 features of DMSO sd / all-well sd).
NEGCON_OVER_ALL_SD_JUMP = 0.72
NEGCON_OVER_ALL_SD_LINCS = 0.44
# jump_8plates_3features.parquet: sd of the all-well plate medians between the two plates of a
# batch (batches 2021_04_26_Batch1 and 2021_04_17_Batch1), / pooled negcon sd; mean of the 3
# features (0.25, 0.16, 0.15).
PLATE_LOCATION_SD = 0.19
# jump_8plates_3features.parquet: sd over the 6 batches of the batch mean of plate medians,
# / pooled negcon sd; mean of the 3 features (1.43, 2.11, 2.47). The 6 batches span 4 sources
# (labs); between two batches of one source the figure is 0.76 (batch_effect_scale=0.38).
BATCH_LOCATION_SD = 2.0
# jump_8plates_3features.parquet: sd of log(plate sd) between the two plates of a batch,
# mean of the 3 features (0.052, 0.032, 0.068).
PLATE_LOG_SCALE_SD = 0.05
# jump_8plates_3features.parquet: sd over the 6 batches of the batch mean of log(plate sd),
# mean of the 3 features (0.26, 0.19, 0.16).
BATCH_LOG_SCALE_SD = 0.20
# lincs_SQ00015054_normalized_feature_select.csv.gz: top 20 eigenvalues of the 454 x 454
# feature correlation matrix over all 384 wells, each / 454 (they sum to 0.914; the top 10 to
# 0.841). The factor model gives each factor one of these shares of the total variance and the
# remainder to feature-specific noise.
EIGENVALUE_FRACTIONS = (
    0.2519, 0.1598, 0.0988, 0.0926, 0.0763, 0.0498, 0.0372, 0.0306, 0.0251, 0.0193,
    0.0149, 0.0094, 0.0081, 0.0080, 0.0066, 0.0060, 0.0055, 0.0051, 0.0047, 0.0046,
)  # fmt: skip
# lincs_SQ00015054_normalized_feature_select.csv.gz: fraction of the 360 treated wells (all
# doses) whose DMSO-z-scored RMS over features exceeds the 95th percentile of the DMSO wells'
# own (1.29): 131 wells, 0.36. (Per compound, at its top dose: 31 of 58, 0.53.) A plate here
# holds one dose per compound, so the well-level figure is the fraction of active compounds.
ACTIVE_FRACTION = 0.36
# lincs_SQ00015054_normalized_feature_select.csv.gz: effect size of those 131 wells,
# sqrt(rms**2 - 1) in DMSO-sd units: mean and sd of its natural log (median 3.0).
EFFECT_LOG_MEAN = 1.05
EFFECT_LOG_SD = 0.83
# *calibrated*: features respond unequally to compounds (responsiveness exp(N(0, sd)) per
# feature). With it the generator reproduces, on 454 features, LINCS's median over features of
# DMSO sd / all-well sd (0.44) and the 10/25/50/75/90th percentiles of treated wells' RMS
# (LINCS 0.75, 0.88, 1.06, 1.82, 6.26; generated about 0.80, 0.92, 1.11, 2.2, 5.0).
FEATURE_RESPONSE_LOG_SD = 0.5
# *assumed*: sd of the extra noise of one image (site) around its well, in noise units.
SITE_NOISE_SD = 1.0
# cellprofiler_BR00121431/*/{Cells,Cytoplasm,Nuclei}.csv: log10 of the absolute median of each
# feature over the 125 cells, mean and sd per measurement category (161 to 3,743 features each).
FEATURE_LOG10_MAGNITUDE = {
    "AreaShape": (-0.37, 1.97),
    "Correlation": (-0.17, 0.48),
    "Granularity": (-0.24, 1.25),
    "Intensity": (-0.99, 1.35),
    "Neighbors": (1.59, 0.46),
    "RadialDistribution": (-0.71, 0.77),
    "Texture": (-0.02, 1.10),
}

COMPOUND = "Metadata_Compound"  # compound id column of generated plates; "DMSO" in negcon wells
_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
_COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
_PLATE_SHAPES = {96: (8, 12), 384: (16, 24), 1536: (32, 48)}
_NAME_SEED = 20_240_601  # fixed: feature, gene and peak names never depend on the spec's seed


# ==============================================================================================
# Plates: spec
# ==============================================================================================


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlateSetSpec:
    """A seeded set of Cell Painting plates (well- or image-level profiles).

    Parameters
    ----------
    n_plates
        Number of plates; plate ``i`` is named ``P{i+1:04d}``.
    wells_per_plate
        96, 384 or 1536 (8 x 12, 16 x 24 or 32 x 48 wells named ``A01`` ...).
    n_features
        Number of float32 CellProfiler-style features (see :func:`feature_names`).
    n_batches
        Number of batches ``B1`` ...; plates go to batches in contiguous blocks.
    n_compounds
        Size of the compound library ``C0001`` ...; each plate holds
        ``(wells_per_plate - negcon_wells_per_plate) // replicates`` compound slots, filled by
        cycling through the library (plate ``p``, slot ``s`` holds compound
        ``(p * slots + s) % n_compounds``). With the defaults every plate holds all 88 compounds.
    replicates
        Wells per compound slot on a plate (the replicate wells).
    negcon_wells_per_plate
        DMSO wells per plate (``Metadata_Compound == "DMSO"``, ``Metadata_is_negcon``); 0 or
        at least 2.
    active_fraction
        Fraction of compounds with a real effect (LINCS: 0.36 of treated wells).
    compound_effect_scale
        Multiplier of the fitted compound effect sizes.
    zero_spread_features, zero_spread_plates
        That many features are constant over *all* wells of each of that many plates (both the
        negcon and the all-well spread are zero).
    negcon_zero_spread_features
        Further features constant only over the negcon wells of the same plates.
    plate_effect_scale, batch_effect_scale
        Multipliers of the fitted plate and batch location and scale effects (1: as in JUMP,
        0: none).
    sites_per_well
        1: one row per well. More: one row per image, with ``Metadata_Site`` 1 ...
    seed
        Non-negative seed of the whole set.
    """

    n_plates: int = 4
    wells_per_plate: int = 384
    n_features: int = 200
    n_batches: int = 2
    n_compounds: int = 88
    replicates: int = 4
    negcon_wells_per_plate: int = 32
    active_fraction: float = ACTIVE_FRACTION
    compound_effect_scale: float = 1.0
    zero_spread_features: int = 2
    zero_spread_plates: int = 1
    negcon_zero_spread_features: int = 1
    plate_effect_scale: float = 1.0
    batch_effect_scale: float = 1.0
    sites_per_well: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.n_plates >= 1, f"n_plates={self.n_plates!r} must be at least 1")
        _check(
            self.wells_per_plate in _PLATE_SHAPES,
            f"wells_per_plate={self.wells_per_plate!r} is not one of {sorted(_PLATE_SHAPES)}",
        )
        _check(self.n_features >= 1, f"n_features={self.n_features!r} must be at least 1")
        _check(
            1 <= self.n_batches <= self.n_plates,
            f"n_batches={self.n_batches!r} must be between 1 and n_plates={self.n_plates}",
        )
        _check(self.n_compounds >= 1, f"n_compounds={self.n_compounds!r} must be at least 1")
        _check(self.replicates >= 1, f"replicates={self.replicates!r} must be at least 1")
        neg = self.negcon_wells_per_plate
        _check(
            neg == 0 or 2 <= neg <= self.wells_per_plate - self.replicates,
            f"negcon_wells_per_plate={neg!r} must be 0 or between 2 and wells_per_plate - "
            f"replicates = {self.wells_per_plate - self.replicates}",
        )
        treated = self.wells_per_plate - neg
        _check(
            treated % self.replicates == 0,
            f"replicates={self.replicates!r} does not divide the {treated} treated wells "
            f"(wells_per_plate - negcon_wells_per_plate); choose replicates or "
            f"negcon_wells_per_plate so that it does",
        )
        _check(
            0.0 <= self.active_fraction <= 1.0,
            f"active_fraction={self.active_fraction!r} must be between 0 and 1",
        )
        for name in ("compound_effect_scale", "plate_effect_scale", "batch_effect_scale"):
            value = getattr(self, name)
            _check(value >= 0.0, f"{name}={value!r} must be non-negative")
        planted = self.zero_spread_features + self.negcon_zero_spread_features
        _check(
            self.zero_spread_features >= 0 and self.negcon_zero_spread_features >= 0,
            "zero_spread_features and negcon_zero_spread_features must be non-negative, got "
            f"{self.zero_spread_features!r} and {self.negcon_zero_spread_features!r}",
        )
        _check(
            planted <= self.n_features,
            f"zero_spread_features + negcon_zero_spread_features = {planted} exceeds "
            f"n_features={self.n_features}",
        )
        _check(
            0 <= self.zero_spread_plates <= self.n_plates,
            f"zero_spread_plates={self.zero_spread_plates!r} must be between 0 and "
            f"n_plates={self.n_plates}",
        )
        _check(
            neg > 0 or self.negcon_zero_spread_features == 0,
            f"negcon_zero_spread_features={self.negcon_zero_spread_features!r} needs negcon "
            "wells; set it to 0 or negcon_wells_per_plate to at least 2",
        )
        _check(self.sites_per_well >= 1, f"sites_per_well={self.sites_per_well!r} must be >= 1")
        _check(self.seed >= 0, f"seed={self.seed!r} must be non-negative")


# ==============================================================================================
# Plates: names
# ==============================================================================================


@functools.cache
def _feature_pool() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """All CellProfiler-style names in pycytominer order, with their measurement category."""
    shape = [
        "Area", "Perimeter", "FormFactor", "Eccentricity", "Solidity", "Extent", "Compactness",
        "MajorAxisLength", "MinorAxisLength", "Orientation", "MaxFeretDiameter",
        "MinFeretDiameter", "MeanRadius", "MedianRadius", "MaximumRadius", "EulerNumber",
    ]  # fmt: skip
    shape += [f"Zernike_{n}_{m}" for n in range(10) for m in range(n % 2, n + 1, 2)]
    intensity = [
        "IntegratedIntensity", "MeanIntensity", "MedianIntensity", "StdIntensity",
        "MinIntensity", "MaxIntensity", "LowerQuartileIntensity", "UpperQuartileIntensity",
        "MADIntensity", "MassDisplacement", "IntegratedIntensityEdge", "MeanIntensityEdge",
        "StdIntensityEdge", "MinIntensityEdge", "MaxIntensityEdge",
    ]  # fmt: skip
    haralick = [
        "AngularSecondMoment", "Contrast", "Correlation", "Variance", "InverseDifferenceMoment",
        "SumAverage", "SumVariance", "SumEntropy", "Entropy", "DifferenceVariance",
        "DifferenceEntropy", "InfoMeas1", "InfoMeas2",
    ]  # fmt: skip
    pairs = [(a, b) for i, a in enumerate(_CHANNELS) for b in _CHANNELS[i + 1 :]]
    ordered = pairs + [(b, a) for a, b in pairs]
    neighbors = [
        "AngleBetweenNeighbors_Adjacent", "FirstClosestDistance_Adjacent",
        "NumberOfNeighbors_Adjacent", "PercentTouching_Adjacent",
        "SecondClosestDistance_Adjacent",
    ]  # fmt: skip
    names: list[str] = []
    categories: list[str] = []

    def add(category: str, items: Sequence[str]) -> None:
        names.extend(f"{compartment}_{category}_{item}" for item in items)
        categories.extend([category] * len(items))

    for compartment in _COMPARTMENTS:
        add("AreaShape", shape)
        add(
            "Correlation",
            [f"{m}_{a}_{b}" for m in ("Correlation", "Overlap") for a, b in pairs]
            + [f"{m}_{a}_{b}" for m in ("Costes", "K", "Manders", "RWC") for a, b in ordered],
        )
        add("Granularity", [f"{k}_{c}" for c in _CHANNELS for k in range(1, 17)])
        add("Intensity", [f"{m}_{c}" for c in _CHANNELS for m in intensity])
        if compartment != "Cytoplasm":
            add("Neighbors", neighbors)
        add(
            "RadialDistribution",
            [
                f"{m}_{c}_{k}of4"
                for m in ("FracAtD", "MeanFrac", "RadialCV")
                for c in _CHANNELS
                for k in range(1, 5)
            ],
        )
        add(
            "Texture",
            [
                f"{m}_{c}_{scale}_{d:02d}_256"
                for m in haralick
                for c in _CHANNELS
                for scale in (3, 5, 10)
                for d in range(4)
            ],
        )
    return tuple(names), tuple(categories)


@functools.lru_cache(maxsize=16)
def _feature_names_and_categories(n_features: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pool, categories = _feature_pool()
    if n_features <= len(pool):
        pick = np.sort(np.random.default_rng(_NAME_SEED).permutation(len(pool))[:n_features])
        return tuple(pool[i] for i in pick), tuple(categories[i] for i in pick)
    extra = range(n_features - len(pool))
    names = pool + tuple(f"{_COMPARTMENTS[i % 3]}_Texture_Extra_{i:05d}" for i in extra)
    return names, categories + ("Texture",) * len(extra)


def feature_names(spec: PlateSetSpec) -> list[str]:
    """Feature column names of the plates, in column order.

    A fixed selection (independent of the seed) of realistic CellProfiler names over the Cells,
    Cytoplasm and Nuclei compartments, in pycytominer's grouped order, e.g.
    ``Cells_AreaShape_Zernike_5_1``, ``Nuclei_Texture_Contrast_DNA_3_00_256``. Beyond the
    3,433 names in the pool, further names are ``<Compartment>_Texture_Extra_<i>``.

    Returns
    -------
    list of str
        ``spec.n_features`` unique names.
    """
    return list(_feature_names_and_categories(spec.n_features)[0])


def plate_ids(spec: PlateSetSpec) -> list[str]:
    """Plate ids ``P0001`` ... in plate-index order (length ``spec.n_plates``)."""
    return [_plate_id(i) for i in range(spec.n_plates)]


def _plate_id(index: int) -> str:
    return f"P{index + 1:04d}"


def _plate_batch(spec: PlateSetSpec, index: int) -> int:
    return index * spec.n_batches // spec.n_plates


def _well_names(n_wells: int) -> list[str]:
    rows, cols = _PLATE_SHAPES[n_wells]
    letters = [chr(65 + r) if r < 26 else "A" + chr(65 + r - 26) for r in range(rows)]
    return [f"{letter}{c + 1:02d}" for letter in letters for c in range(cols)]


# ==============================================================================================
# Plates: global parameters
# ==============================================================================================


@dataclasses.dataclass(frozen=True)
class _PlateGlobals:
    mean: np.ndarray  # (n_features,) float64
    noise_sd: np.ndarray  # (n_features,) float64
    loadings: np.ndarray  # (n_features, n_factors) float32
    unique_sd: np.ndarray  # (n_features,) float32
    batch_location: np.ndarray  # (n_batches, n_features), noise units
    batch_log_scale: np.ndarray  # (n_batches, n_features)
    effects: np.ndarray  # (n_compounds, n_features) float32, noise units; 0 rows if inactive
    active: np.ndarray  # (n_compounds,) bool
    slot_wells: np.ndarray  # (n_slots, replicates) well positions
    zero_plates: tuple[int, ...]
    zero_features: np.ndarray  # feature indices constant over all wells
    negcon_zero_features: np.ndarray  # feature indices constant over negcon wells only


def _factor_model(rng: np.random.Generator, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Loadings (p, k) and unique sds (p,) of a unit-variance factor model, LINCS spectrum."""
    shares = np.asarray(EIGENVALUE_FRACTIONS[: min(p, len(EIGENVALUE_FRACTIONS))])
    q, _ = np.linalg.qr(rng.standard_normal((p, len(shares))))
    loadings = q * np.sqrt(shares * p)
    psi = 1.0 - shares.sum()
    total = np.sqrt((loadings**2).sum(axis=1) + psi)
    return (
        (loadings / total[:, None]).astype(np.float32),
        (np.sqrt(psi) / total).astype(np.float32),
    )


def _correlated(
    rng: np.random.Generator, n: int, loadings: np.ndarray, unique_sd: np.ndarray
) -> np.ndarray:
    """Draw (n, p) float32 rows with unit variances and the factor model's correlations."""
    factors = rng.standard_normal((n, loadings.shape[1]), dtype=np.float32)
    noise = rng.standard_normal((n, loadings.shape[0]), dtype=np.float32)
    out = factors @ loadings.T
    out += noise * unique_sd
    return out


@functools.lru_cache(maxsize=16)
def _plate_globals(spec: PlateSetSpec) -> _PlateGlobals:
    s_features, s_factors, s_compounds, s_batches, s_layout, s_zero = np.random.SeedSequence(
        spec.seed
    ).spawn(6)
    p = spec.n_features
    names, categories = _feature_names_and_categories(p)
    rng = np.random.default_rng(s_features)
    magnitude = np.array([FEATURE_LOG10_MAGNITUDE[c] for c in categories])
    mean = 10.0 ** rng.normal(magnitude[:, 0], magnitude[:, 1])
    # CellProfiler's InfoMeas1 is never positive.
    mean[np.array(["InfoMeas1" in n for n in names], dtype=bool)] *= -1.0
    noise_sd = np.abs(mean) * NEGCON_CV * np.exp(rng.normal(0.0, NEGCON_CV_LOG_SD, p))

    loadings, unique_sd = _factor_model(np.random.default_rng(s_factors), p)

    rng = np.random.default_rng(s_compounds)
    n_active = round(spec.active_fraction * spec.n_compounds)
    active = np.zeros(spec.n_compounds, dtype=bool)
    active[rng.permutation(spec.n_compounds)[:n_active]] = True
    directions = _correlated(rng, spec.n_compounds, loadings, unique_sd)
    directions *= np.exp(rng.normal(0.0, FEATURE_RESPONSE_LOG_SD, p)).astype(np.float32)
    directions /= np.sqrt((directions**2).mean(axis=1, keepdims=True))
    size = np.exp(rng.normal(EFFECT_LOG_MEAN, EFFECT_LOG_SD, spec.n_compounds))
    size *= spec.compound_effect_scale * active
    effects = (directions * size[:, None].astype(np.float32)).astype(np.float32)

    rng = np.random.default_rng(s_batches)
    scale = spec.batch_effect_scale
    batch_location = _correlated(rng, spec.n_batches, loadings, unique_sd).astype(np.float64)
    batch_location *= BATCH_LOCATION_SD * scale
    batch_log_scale = rng.normal(0.0, BATCH_LOG_SCALE_SD * scale, (spec.n_batches, p))

    wells = np.random.default_rng(s_layout).permutation(spec.wells_per_plate)
    slot_wells = wells[spec.negcon_wells_per_plate :].reshape(-1, spec.replicates)

    rng = np.random.default_rng(s_zero)
    plates = rng.permutation(spec.n_plates)[: spec.zero_spread_plates]
    features = rng.permutation(p)
    n_zero = spec.zero_spread_features
    return _PlateGlobals(
        mean=mean,
        noise_sd=noise_sd,
        loadings=loadings,
        unique_sd=unique_sd,
        batch_location=batch_location,
        batch_log_scale=batch_log_scale,
        effects=effects,
        active=active,
        slot_wells=slot_wells,
        zero_plates=tuple(sorted(int(i) for i in plates)),
        zero_features=np.sort(features[:n_zero]),
        negcon_zero_features=np.sort(features[n_zero : n_zero + spec.negcon_zero_spread_features]),
    )


def _compound_name(index: int) -> str:
    return f"C{index + 1:04d}"


def active_compounds(spec: PlateSetSpec) -> list[str]:
    """Ids of the compounds with a real effect (``round(active_fraction * n_compounds)``)."""
    active = _plate_globals(spec).active
    return [_compound_name(int(i)) for i in np.flatnonzero(active)]


def planted_zero_spread(
    spec: PlateSetSpec, *, within: Literal["all", "negcon"] = "all"
) -> list[tuple[str, str]]:
    """The (plate, feature) pairs planted with zero spread, sorted.

    Parameters
    ----------
    spec
        The plate set.
    within
        ``"all"``: pairs whose feature is constant over all rows of the plate (so both the
        negcon and the all-well spread are zero: a normalizer leaves them unnormalized and
        reports them). ``"negcon"``: pairs whose negcon rows are constant, i.e. the ``"all"``
        pairs plus those planted in the negcon wells only (a normalizer falls back to the
        all-well spread for these).

    Returns
    -------
    list of (str, str)
        ``(Metadata_Plate, feature)`` pairs; no other pair has zero spread in that sense.
    """
    if within not in ("all", "negcon"):
        msg = f"within={within!r} is not one of ['all', 'negcon']"
        raise ValueError(msg)
    if within == "negcon" and spec.negcon_wells_per_plate == 0:
        msg = "within='negcon' needs negcon wells, but spec.negcon_wells_per_plate is 0"
        raise ValueError(msg)
    g = _plate_globals(spec)
    features = g.zero_features
    if within == "negcon":
        features = np.sort(np.concatenate([g.zero_features, g.negcon_zero_features]))
    names = feature_names(spec)
    return [(_plate_id(p), names[int(j)]) for p in g.zero_plates for j in features]


# ==============================================================================================
# Plates: generation
# ==============================================================================================


def generate_plate(spec: PlateSetSpec, plate_index: int) -> pd.DataFrame:
    """Generate one plate's profiles, deterministically from ``(spec, plate_index)``.

    Each row is ``mean + sd * (batch_shift + plate_shift + exp(batch_log_scale +
    plate_log_scale) * (noise + compound_effect))`` per feature, with correlated noise (factor
    model), compound effects shared by replicate wells, and the planted zero-spread features
    (:func:`planted_zero_spread`) set to the plate's location.

    Parameters
    ----------
    spec
        The plate set.
    plate_index
        0 ... ``spec.n_plates - 1``.

    Returns
    -------
    pandas.DataFrame
        ``wells_per_plate * sites_per_well`` rows in well order (then site order), with columns
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (int, only when
        ``sites_per_well > 1``), ``Metadata_Batch``, ``Metadata_Compound`` (``"DMSO"`` in negcon
        wells), ``Metadata_is_negcon`` (bool), then the float32 features of
        :func:`feature_names`.
    """
    if not 0 <= plate_index < spec.n_plates:
        msg = f"plate_index={plate_index!r} must be between 0 and {spec.n_plates - 1}"
        raise ValueError(msg)
    g = _plate_globals(spec)
    rng = np.random.default_rng([spec.seed, plate_index])
    n_wells, n_sites, p = spec.wells_per_plate, spec.sites_per_well, spec.n_features
    batch = _plate_batch(spec, plate_index)

    scale = spec.plate_effect_scale
    location = _correlated(rng, 1, g.loadings, g.unique_sd)[0] * (PLATE_LOCATION_SD * scale)
    log_scale = rng.normal(0.0, PLATE_LOG_SCALE_SD * scale, p)
    location = g.batch_location[batch] + location
    gain = (np.exp(g.batch_log_scale[batch] + log_scale) * g.noise_sd).astype(np.float32)
    center = g.mean + g.noise_sd * location

    compound = np.full(n_wells, -1, dtype=np.int64)
    n_slots = g.slot_wells.shape[0]
    slot_compound = (plate_index * n_slots + np.arange(n_slots)) % spec.n_compounds
    compound[g.slot_wells] = slot_compound[:, None]

    z = _correlated(rng, n_wells, g.loadings, g.unique_sd)
    treated = compound >= 0
    z[treated] += g.effects[compound[treated]]
    if n_sites > 1:
        z = np.repeat(z, n_sites, axis=0)
        z += SITE_NOISE_SD * _correlated(rng, n_wells * n_sites, g.loadings, g.unique_sd)
    values = z * gain
    values += center.astype(np.float32)

    negcon = compound < 0
    if plate_index in g.zero_plates:
        values[:, g.zero_features] = center[g.zero_features].astype(np.float32)
        rows = np.repeat(negcon, n_sites)
        cols = g.negcon_zero_features
        values[np.ix_(rows, cols)] = center[cols].astype(np.float32)

    # compound -1 (negcon wells) indexes the last name, DMSO
    names = np.array([_compound_name(i) for i in range(spec.n_compounds)] + ["DMSO"], object)
    meta: dict[str, object] = {
        schema.PLATE: _plate_id(plate_index),
        schema.WELL: np.repeat(np.array(_well_names(n_wells), dtype=object), n_sites),
    }
    if n_sites > 1:
        meta[schema.SITE] = np.tile(np.arange(1, n_sites + 1, dtype=np.int64), n_wells)
    meta[schema.BATCH] = f"B{batch + 1}"
    meta[COMPOUND] = np.repeat(names[compound], n_sites)
    meta[schema.NEGCON] = np.repeat(negcon, n_sites)
    frame = pd.DataFrame(meta, index=pd.RangeIndex(n_wells * n_sites))
    features = pd.DataFrame(values, columns=feature_names(spec), copy=False)
    return pd.concat([frame, features], axis=1)


def generate_plates(spec: PlateSetSpec) -> pd.DataFrame:
    """All plates of a (small) set in one frame: :func:`generate_plate` for each, concatenated.

    Returns
    -------
    pandas.DataFrame
        ``n_plates * wells_per_plate * sites_per_well`` rows, columns as in
        :func:`generate_plate`.
    """
    frames = [generate_plate(spec, i) for i in range(spec.n_plates)]
    return pd.concat(frames, ignore_index=True)


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

# Tirosh et al. 2016 cell-cycle genes, as in scanpy's regev_lab_cell_cycle_genes.txt.
CELL_CYCLE_S_GENES = (
    "MCM5", "PCNA", "TYMS", "FEN1", "MCM2", "MCM4", "RRM1", "UNG", "GINS2", "MCM6", "CDCA7",
    "DTL", "PRIM1", "UHRF1", "MLF1IP", "HELLS", "RFC2", "RPA2", "NASP", "RAD51AP1", "GMNN",
    "WDR76", "SLBP", "CCNE2", "UBR7", "POLD3", "MSH2", "ATAD2", "RAD51", "RRM2", "CDC45",
    "CDC6", "EXO1", "TIPIN", "DSCC1", "BLM", "CASP8AP2", "USP1", "CLSPN", "POLA1", "CHAF1B",
    "BRIP1", "E2F8",
)  # fmt: skip
CELL_CYCLE_G2M_GENES = (
    "HMGB2", "CDK1", "NUSAP1", "UBE2C", "BIRC5", "TPX2", "TOP2A", "NDC80", "CKS2", "NUF2",
    "CKS1B", "MKI67", "TMPO", "CENPF", "TACC3", "FAM64A", "SMC4", "CCNB2", "CKAP2L", "CKAP2",
    "AURKB", "BUB1", "KIF11", "ANP32E", "TUBB4B", "GTSE1", "KIF20B", "HJURP", "CDCA3", "HN1",
    "CDC20", "TTK", "CDC25C", "KIF2C", "RANGAP1", "NCAPD2", "DLGAP5", "CDCA2", "CDCA8", "ECT2",
    "KIF23", "HMMR", "AURKA", "PSRC1", "ANLN", "LBR", "CKAP5", "CENPE", "CTCF", "NEK2", "G2E3",
    "GAS2L3", "CBX5", "CENPA",
)  # fmt: skip
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
        Median RNA library size; ``None``: 3.07 UMIs per gene (fitted), 6,131 for 2,000 genes.
    atac_depth
        Median number of accessible peaks per cell; ``None``: 4% of ``n_peaks``.
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
        _check(self.seed >= 0, f"seed={self.seed!r} must be non-negative")

    @property
    def median_rna_depth(self) -> float:
        """Median RNA library size: ``rna_depth`` or the fitted per-gene default."""
        return self.rna_depth if self.rna_depth is not None else RNA_UMIS_PER_GENE * self.n_genes

    @property
    def median_atac_depth(self) -> float:
        """Median accessible peaks per cell: ``atac_depth`` or 4% of ``n_peaks``."""
        if self.atac_depth is not None:
            return self.atac_depth
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
    lfc *= spec.atac_type_signal  # exact for the default 1.0
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
    batch = rng.normal(0.0, ADT_BATCH_LOG_SD * batch_scale, (b_, n))
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


# ==============================================================================================
# Cells: samplers
# ==============================================================================================


def _nb_sparse(
    mean: np.ndarray, theta: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Negative-binomial counts of a dense (n, m) mean matrix, returned sparse.

    A dense NB draw (gamma then Poisson per entry) of 10,000 x 2,000 takes seconds; here one
    uniform per entry decides zero versus non-zero from the closed-form P(0), and only the
    non-zero entries (about a third) are drawn, by inversion of the zero-truncated NB for small
    means and by rejection from ``Generator.negative_binomial`` for large ones.

    Returns
    -------
    rows, cols, counts
        Coordinates in row-major order and float32 counts (>= 1) of the non-zero entries.
    """
    p0 = np.log1p(mean * np.float32(1.0 / theta))
    p0 *= np.float32(-theta)
    np.exp(p0, out=p0)
    u = rng.random(mean.shape, dtype=np.float32)
    flat = np.flatnonzero(u >= p0)
    rows, cols = np.divmod(flat, mean.shape[1])
    mu = mean.ravel().take(flat)
    counts = np.ones(flat.size, dtype=np.float32)

    big = np.flatnonzero(mu > _NB_INVERSION_MAX_MEAN)
    if big.size:
        mb = mu[big].astype(np.float64)
        draw = rng.negative_binomial(theta, theta / (theta + mb))
        zero = np.flatnonzero(draw == 0)
        while zero.size:
            draw[zero] = rng.negative_binomial(theta, theta / (theta + mb[zero]))
            zero = zero[draw[zero] == 0]
        counts[big] = draw
    # Inversion: count > k while u >= F(k); track the residual u - F(k) and P(k) by the
    # recurrence P(k) = P(k-1) * q * (k - 1 + theta) / k, q = mean / (theta + mean), in float64
    # so that F reaches 1 within 1e-15 (u < 1 - 2**-24 always ends the walk). The first steps
    # run on all entries at once; only the few larger counts go on in the compacting loop.
    small = np.flatnonzero(mu <= _NB_INVERSION_MAX_MEAN)
    m = mu[small].astype(np.float64)
    q = m / (theta + m)
    pk = np.exp(-theta * np.log1p(m / theta))
    resid = u.ravel().take(flat[small]) - pk
    part = np.ones(small.size, dtype=np.float32)
    for k in range(1, _NB_BULK_STEPS + 1):
        pk *= q * ((k - 1 + theta) / k)
        resid -= pk
        part += resid >= 0.0
    counts[small] = part
    more = np.flatnonzero(resid >= 0.0)
    small, pk, resid, q = small[more], pk[more], resid[more], q[more]
    k = _NB_BULK_STEPS
    while small.size and k < 100_000:
        k += 1
        pk *= q * ((k - 1 + theta) / k)
        resid -= pk
        going = resid >= 0.0
        small, pk, resid, q = small[going], pk[going], resid[going], q[going]
        counts[small] = k + 1
    return rows, cols, counts


def _blocks(n: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_ELEMENTS // max(1, width))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _rna(
    spec: CellSetSpec,
    g: _CellGlobals,
    rng: np.random.Generator,
    *,
    cell_type: np.ndarray,
    batch: np.ndarray,
    phase: np.ndarray,
    state: np.ndarray,
    depth_z: np.ndarray,
) -> sp.csr_matrix:
    n, n_genes = len(cell_type), spec.n_genes
    library = spec.median_rna_depth * np.exp(spec.rna_depth_log_sd * depth_z)
    theta = 1.0 / RNA_NB_DISPERSION
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start, stop in _blocks(n, n_genes):
        rows = slice(start, stop)
        # einsum, not matmul: with 3 inner dimensions it is ~10x faster than BLAS (measured).
        log_mean = np.einsum("ik,kj->ij", state[rows], g.rna_state)
        log_mean += g.rna_log[cell_type[rows], batch[rows]]
        log_mean += g.rna_phase[phase[rows]]
        mean = np.exp(log_mean, out=log_mean)
        mean *= (library[rows] / mean.sum(axis=1, dtype=np.float64)).astype(np.float32)[:, None]
        r, c, v = _nb_sparse(mean, theta, rng)
        parts.append((np.bincount(r, minlength=stop - start), c.astype(np.int32), v))
    return _csr(parts, (n, n_genes))


def _csr(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shape: tuple[int, int]
) -> sp.csr_matrix:
    """CSR from consecutive row blocks (non-zeros per row, column indices, values).

    Each block's entries are in row-major order, so no sorting is needed.
    """
    values = np.concatenate([p[2] for p in parts])
    index_dtype = np.int32 if values.size < 2**31 else np.int64
    indptr = np.zeros(shape[0] + 1, dtype=index_dtype)
    np.cumsum(np.concatenate([p[0] for p in parts]), out=indptr[1:])
    cols = np.concatenate([p[1] for p in parts]).astype(index_dtype, copy=False)
    return sp.csr_matrix((values, cols, indptr), shape=shape)


def _atac(
    spec: CellSetSpec,
    g: _CellGlobals,
    rng: np.random.Generator,
    *,
    cell_type: np.ndarray,
    batch: np.ndarray,
    state: np.ndarray,
    depth_z: np.ndarray,
) -> sp.csr_matrix:
    """Binary peaks: peak p is open with probability 1 - exp(-lambda_p), drawn sparse.

    ``lambda_p = depth * a_{type,batch,p} * 2 * sigmoid(state @ loadings_p)``. Open peaks are
    those hit at least once by a Poisson process of that intensity: events from the
    state-free proposal (twice the rate, sampled by inverse CDF per type and batch) are kept
    with probability sigmoid(...), the exact thinning. Cost is proportional to the number of
    open peaks, not to n_cells x n_peaks.
    """
    n, n_peaks = len(cell_type), spec.n_peaks
    group = cell_type * spec.n_batches + batch
    depth = g.atac_rate * np.exp(spec.atac_depth_log_sd * depth_z)
    proposal = 2.0 * depth * g.atac_total[cell_type, batch]
    parts = []
    for start, stop in _blocks(n, n_peaks):
        cell = np.repeat(np.arange(start, stop), rng.poisson(proposal[start:stop]))
        u = rng.random(cell.size)
        offset = group[cell] * n_peaks
        position = g.atac_guide[offset + (u * n_peaks).astype(np.int64)]
        u += group[cell]
        todo = np.flatnonzero(g.atac_cdf[position] <= u)
        while todo.size:
            position[todo] += 1
            todo = todo[g.atac_cdf[position[todo]] <= u[todo]]
        peak = position - offset
        logit = np.einsum("ij,ij->i", state[cell], g.atac_state[peak])
        keep = rng.random(cell.size, dtype=np.float32) * (1.0 + np.exp(-logit)) < 1.0
        hit = np.zeros((stop - start, n_peaks), dtype=bool)
        hit[cell[keep] - start, peak[keep]] = True
        r, c = np.divmod(np.flatnonzero(hit), n_peaks)
        counts = np.bincount(r, minlength=stop - start)
        parts.append((counts, c.astype(np.int32), np.ones(r.size, dtype=np.float32)))
    return _csr(parts, (n, n_peaks))


def _adt(
    spec: CellSetSpec,
    g: _CellGlobals,
    rng: np.random.Generator,
    *,
    cell_type: np.ndarray,
    batch: np.ndarray,
    state: np.ndarray,
    depth_z: np.ndarray,
) -> np.ndarray:
    total = spec.median_adt_depth * np.exp(spec.adt_depth_log_sd * depth_z)
    log_mean = g.adt_log[cell_type, batch] + np.einsum("ik,kj->ij", state, g.adt_state)
    mean = np.exp(log_mean) * total[:, None]
    theta = 1.0 / ADT_NB_DISPERSION
    return rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)


# ==============================================================================================
# Cells: generation
# ==============================================================================================


def generate_cells(spec: CellSetSpec, chunk_index: int) -> schema.CellBatch:
    """Generate one chunk of cells, deterministically from ``(spec, chunk_index)``.

    Cells ``chunk_index * chunk_size`` ... (at most ``chunk_size`` of them). Each cell has a
    batch, a cell type (batch-specific composition), a cell-cycle phase, a 3-d continuous state
    and a depth per modality (log-normal, RNA and the second modality correlated by
    ``depth_correlation``). RNA counts are negative binomial around cell-type programs scaled
    per batch; ATAC peaks are Bernoulli from cell-type-specific accessibility; ADT counts are
    negative binomial around cell-type-specific protein levels.

    Parameters
    ----------
    spec
        The cell set.
    chunk_index
        0 ... ``n_chunks(spec) - 1``.

    Returns
    -------
    raymmi.schema.CellBatch
        ``obs``: index = cell ids ``c000000012``; columns ``batch`` (``s1`` ...),
        ``cell_type`` (``T0`` ...) and ``phase`` (``G1``/``S``/``G2M``), categoricals with
        the full category list. ``modalities``: ``rna``, a float32 ``csr_matrix`` of integer
        counts of shape (n_cells, n_genes); then ``atac``, a float32 binary ``csr_matrix`` of
        shape (n_cells, n_peaks), or ``adt``, a float32 ``ndarray`` of integer counts of shape
        (n_cells, n_proteins).
    """
    chunks = n_chunks(spec)
    if not 0 <= chunk_index < chunks:
        msg = f"chunk_index={chunk_index!r} must be between 0 and {chunks - 1}"
        raise ValueError(msg)
    g = _cell_globals(spec)
    rng = np.random.default_rng([spec.seed, chunk_index])
    start = chunk_index * spec.chunk_size
    stop = min(spec.n_cells, start + spec.chunk_size)
    n = stop - start

    batch = rng.integers(0, spec.n_batches, n)
    cell_type = (rng.random(n)[:, None] > g.type_cdf[batch]).sum(axis=1)
    phase_cdf = np.cumsum(list(PHASE_FRACTIONS.values()))
    phase = np.minimum(np.searchsorted(phase_cdf, rng.random(n)), len(_PHASES) - 1)
    state = rng.standard_normal((n, N_STATE), dtype=np.float32)
    z = rng.standard_normal((2, n))
    rho = spec.depth_correlation
    other_z = rho * z[0] + math.sqrt(1.0 - rho * rho) * z[1]

    modalities: dict[str, sp.csr_matrix | np.ndarray] = {
        "rna": _rna(
            spec, g, rng, cell_type=cell_type, batch=batch, phase=phase, state=state, depth_z=z[0]
        )
    }
    if spec.kind == "multiome":
        modalities["atac"] = _atac(
            spec, g, rng, cell_type=cell_type, batch=batch, state=state, depth_z=other_z
        )
    else:
        modalities["adt"] = _adt(
            spec, g, rng, cell_type=cell_type, batch=batch, state=state, depth_z=other_z
        )
    obs = pd.DataFrame(
        {
            schema.CELL_BATCH: pd.Categorical.from_codes(
                batch, [f"s{b + 1}" for b in range(spec.n_batches)]
            ),
            schema.CELL_TYPE: pd.Categorical.from_codes(
                cell_type, [f"T{t}" for t in range(spec.n_cell_types)]
            ),
            "phase": pd.Categorical.from_codes(phase, list(_PHASES)),
        },
        index=_cell_ids(start, stop),
    )
    return schema.CellBatch(obs=obs, modalities=modalities)
