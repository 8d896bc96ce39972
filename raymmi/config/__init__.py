"""Frozen configuration dataclasses for every stage, loaded from YAML/dicts with clear errors.

Every stage's configuration is one dataclass tree. Command-line flags, ``--config file.yaml``
and ``--set key=value`` overrides all end up in the same tree; :func:`to_dict` turns it into
the plain dictionary logged to MLflow and stored in output manifests. One module per stage
(``_plates``, ``_cells``, ``_images``, ``_export``, ``_train``), the Ray and MLflow settings they
share (``_ray``) and the loading helpers (``_base``); everything is imported from here.
"""

from __future__ import annotations

from raymmi.config._base import apply_overrides as apply_overrides
from raymmi.config._base import check_choice as check_choice
from raymmi.config._base import check_positive as check_positive
from raymmi.config._base import flatten as flatten
from raymmi.config._base import from_dict as from_dict
from raymmi.config._base import load_yaml as load_yaml
from raymmi.config._base import to_dict as to_dict
from raymmi.config._cells import IngestCellsConfig as IngestCellsConfig
from raymmi.config._export import ExportConfig as ExportConfig
from raymmi.config._images import GenerateImagesConfig as GenerateImagesConfig
from raymmi.config._images import IngestImagesConfig as IngestImagesConfig
from raymmi.config._images import MEASURES as MEASURES
from raymmi.config._plates import EvaluatePlatesConfig as EvaluatePlatesConfig
from raymmi.config._plates import IngestPlatesConfig as IngestPlatesConfig
from raymmi.config._plates import NormalizeConfig as NormalizeConfig
from raymmi.config._ray import RayConfig as RayConfig
from raymmi.config._ray import TrackingConfig as TrackingConfig
from raymmi.config._train import OptimConfig as OptimConfig
from raymmi.config._train import TrainConfig as TrainConfig
