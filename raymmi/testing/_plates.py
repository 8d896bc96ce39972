"""Cell Painting plates: fitted figures, :class:`PlateSetSpec`, names and global parameters."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal

import numpy as np

from raymmi.testing._common import _NAME_SEED, _check

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
