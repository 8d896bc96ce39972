"""What the methods share: their result, their checked settings, a figure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raymmi.run._task._config import PURE_SETTINGS
from raymmi.run._task._planning import _close
from raymmi.schema import RaymmiError


@dataclasses.dataclass
class _Result:
    """What a task produced: scores, the output rows and their columns, files, figures."""

    scores: dict[str, float]
    rows: np.ndarray  # bool mask over the gathered cells (output rows, in file order)
    columns: dict[str, np.ndarray]  # obs-like columns of the output rows
    dense: dict[str, tuple[np.ndarray, tuple[str, ...]]]  # modality → (values, features)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, Callable[[Path], None]] = dataclasses.field(default_factory=dict)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)


def _settings(method: str, model: Mapping[str, Any]) -> dict[str, Any]:
    allowed = PURE_SETTINGS[method]
    unknown = sorted(set(model) - set(allowed))
    if unknown:
        msg = (
            f"model.{unknown[0]} is not a setting of method {method!r}"
            f"{_close(unknown[0], allowed)}; it takes {list(allowed) or 'none'}"
        )
        raise RaymmiError(msg)
    return dict(model)
