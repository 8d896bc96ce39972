"""The stages of raymmi: the one list the command line, the jobs and the README follow.

Each :class:`Stage` in :data:`STAGES` names its settings dataclass; ``raymmi <stage>`` gets one
flag per scalar field of it (``--batch-key`` for ``batch_key``, choices from a ``Literal``,
help from the dataclass's docstring), plus ``--config file.yaml`` and ``--set key=value`` for
every field, nested ones included. ``jobs/stage.py NAME`` runs any stage as a Ray job, with
the stage's ``--smoke-test`` from :data:`raymmi.smoke.SMOKES`. ``tests/test_stages.py`` checks
that the README's command table and code map name every stage listed here.
"""

from __future__ import annotations

from raymmi.stages._registry import GROUPS, STAGES
from raymmi.stages._stage import (
    Extra,
    FieldFlag,
    Stage,
    field_docs,
    ray_config,
    tracking_config,
)

__all__ = [
    "GROUPS",
    "STAGES",
    "Extra",
    "FieldFlag",
    "Stage",
    "field_docs",
    "ray_config",
    "tracking_config",
]
