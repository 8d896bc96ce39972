"""Pure operations on plate profiles: moments, normalization, sphering, ComBat.

numpy, scipy and pandas only: no Ray, no MLflow, no file I/O. Every transform is a fit on
statistics followed by a pure per-batch apply that returns a new float32 array.
"""

from raymmi.plates._combat import (
    CombatFit,
    CombatStats,
    apply_combat,
    combat_stats,
    fit_combat,
)
from raymmi.plates._moments import Moments
from raymmi.plates._normalize import (
    LOCATION_SCALE_METHODS,
    METHODS,
    REFERENCES,
    PlateFit,
    apply_location_scale,
    check_negcon,
    check_options,
    fallback_report,
    fit_global,
    fit_location_scale,
    fit_plate,
)
from raymmi.plates._select import (
    DEFAULT_OPS,
    OPS,
    CoMoments,
    FeatureStats,
    SelectConfig,
    Thresholds,
    ValueCounts,
    decide,
    feature_selection,
    kept_features,
    parse_ops,
)
from raymmi.plates._spherize import (
    SPHERIZE_METHODS,
    SpherizeFit,
    apply_spherize,
    fit_spherize,
    spherize_feature_names,
)

__all__ = [
    "DEFAULT_OPS",
    "LOCATION_SCALE_METHODS",
    "METHODS",
    "OPS",
    "REFERENCES",
    "SPHERIZE_METHODS",
    "CoMoments",
    "CombatFit",
    "CombatStats",
    "FeatureStats",
    "Moments",
    "PlateFit",
    "SelectConfig",
    "SpherizeFit",
    "Thresholds",
    "ValueCounts",
    "apply_combat",
    "apply_location_scale",
    "apply_spherize",
    "check_negcon",
    "check_options",
    "combat_stats",
    "decide",
    "fallback_report",
    "feature_selection",
    "fit_combat",
    "fit_global",
    "fit_location_scale",
    "fit_plate",
    "fit_spherize",
    "kept_features",
    "parse_ops",
    "spherize_feature_names",
]
