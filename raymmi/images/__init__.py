"""Pure per-field image ops: segmentation, CellProfiler measurements, QC, illumination, crops.

No Ray, no MLflow, no file I/O (TIFF and LoadData reading live in :mod:`raymmi.io`).
"""

from raymmi.images._embed import (
    CropEmbedder,
    adapt_input_conv,
    adapt_state_dict,
    build_cnn,
    build_network,
    crops,
    drop_classifier,
    embedding_dim,
    parse_architecture,
)
from raymmi.images._illum import IllumSums, illumination_function, illumination_functions
from raymmi.images._measure import MEASURES, check_measures, measure_objects, object_centers
from raymmi.images._profile import (
    COMPARTMENTS,
    OBJECT_NUMBER,
    FieldProfile,
    ProfileConfig,
    field_qc,
    find_objects,
    profile_field,
)
from raymmi.images._segment import (
    SegmentConfig,
    cytoplasm,
    labels_from_mask,
    segment_cells,
    segment_nuclei,
    threshold,
)

__all__ = [
    "COMPARTMENTS",
    "MEASURES",
    "OBJECT_NUMBER",
    "CropEmbedder",
    "FieldProfile",
    "IllumSums",
    "ProfileConfig",
    "SegmentConfig",
    "adapt_input_conv",
    "adapt_state_dict",
    "build_cnn",
    "build_network",
    "check_measures",
    "crops",
    "cytoplasm",
    "drop_classifier",
    "embedding_dim",
    "field_qc",
    "find_objects",
    "illumination_function",
    "illumination_functions",
    "labels_from_mask",
    "measure_objects",
    "object_centers",
    "parse_architecture",
    "profile_field",
    "segment_cells",
    "segment_nuclei",
    "threshold",
]
