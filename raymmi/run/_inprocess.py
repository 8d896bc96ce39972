"""Train a model with ``raymmi train``'s loop in this process and embed every cell.

For benchmarks and claim tests on small sets (``jobs/bench_models.py``): the cells are decoded
once (:func:`decode_cells`), then each run (:func:`train_embed`) builds the model and trains it
with :func:`raymmi.run._train._loop.fit_epochs` exactly as ``raymmi tune``'s in-process trials
do (the loop a one-worker ``raymmi train`` runs; its seeded split and shuffling), and embeds
every cell with ``Model.embed``. No Ray, no MLflow.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raymmi import models
from raymmi.config import OptimConfig, TrainConfig, to_dict
from raymmi.run._train._plan import TrainPlan, _columns, plan_training
from raymmi.run._tune._inprocess import TrialData, _read, train_in_process, trial_data, trial_plan
from raymmi.schema import CELL_ID, RaymmiError


@dataclasses.dataclass(frozen=True)
class DecodedCells:
    """A cells set decoded for one model: its plan, its arrays (file order), ``obs`` columns."""

    path: str
    plan: TrainPlan
    data: TrialData
    obs: Mapping[str, np.ndarray]
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cell_ids(self) -> list[str]:
        return [str(c) for c in self.data.cell_ids.to_pylist()]

    @property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """The model's inputs (and label codes), one array of ``n_cells`` rows each."""
        return self.data.arrays


@dataclasses.dataclass(frozen=True)
class TrainedEmbedding:
    """One run of :func:`train_embed`: the embedding of every cell and the training time."""

    embedding: np.ndarray
    seconds: float
    history: list[dict[str, float]]


def decode_cells(
    data: str,
    *,
    model_name: str,
    model: Mapping[str, Any] | None = None,
    obs: Sequence[str] = (),
) -> DecodedCells:
    """Decode the cells set ``data`` for ``model_name`` (settings ``model``), once.

    ``obs`` names ``obs`` columns (e.g. ``cell_type``, ``rna_depth``) returned as arrays in
    the same order as the cells.
    """
    config = TrainConfig(model_name=model_name, data=data, out="unused", model=dict(model or {}))
    plan, shard, extra = plan_training(config)
    missing = [c for c in obs if c not in _columns(shard)]
    if missing:
        msg = f"{data!r} has no obs column {missing}; it has {sorted(shard.manifest.metadata)}"
        raise RaymmiError(msg)
    table = _read(shard, [CELL_ID, *obs])
    columns = {c: np.asarray(table.column(c).to_pylist()) for c in obs}
    return DecodedCells(data, plan, trial_data(plan, shard, extra), columns, dict(model or {}))


def replace_modalities(
    cells: DecodedCells,
    arrays: Mapping[str, np.ndarray],
    *,
    features: Mapping[str, Sequence[str]],
) -> DecodedCells:
    """``cells`` with modalities replaced by other values of the same cells, in the same order.

    ``arrays[name]`` has shape (n_cells, len(features[name])); the model then sees those
    features (e.g. another preprocessing of the same counts).
    """
    n = len(cells.data.cell_ids)
    for name, values in arrays.items():
        if values.shape != (n, len(features[name])):
            msg = f"{name}: got shape {values.shape}, expected ({n}, {len(features[name])})"
            raise RaymmiError(msg)
    dims = cells.plan.layout.dims
    names = {k: tuple(v) for k, v in features.items()}
    dims = dataclasses.replace(dims, features={**dims.features, **names})
    plan = dataclasses.replace(
        cells.plan, layout=dataclasses.replace(cells.plan.layout, dims=dims)
    )
    data = dataclasses.replace(cells.data, arrays={**cells.data.arrays, **arrays})
    return dataclasses.replace(cells, plan=plan, data=data)


def train_embed(
    cells: DecodedCells,
    *,
    model: Mapping[str, Any] | None = None,
    optim: OptimConfig | None = None,
    val_fraction: float | None = None,
    init_seed: int | None = None,
) -> TrainedEmbedding:
    """Train on ``cells`` with ``raymmi train``'s loop and embed every cell.

    Parameters
    ----------
    cells
        From :func:`decode_cells`.
    model, optim, val_fraction
        As ``raymmi train``'s ``model.*`` (over those given to :func:`decode_cells`),
        ``optim.*`` and ``val_fraction`` (unset: the model's defaults; ``optim.seed`` seeds
        the weights, the split and the shuffling).
    init_seed
        Draw the initial weights from this seed instead of ``optim.seed`` (the split and the
        shuffling still follow ``optim.seed``).
    """
    import torch

    config = TrainConfig(
        model_name=cells.plan.model_name,
        data=cells.path,
        out="unused",
        model={**cells.model, **(model or {})},
        optim=optim or OptimConfig(),
        val_fraction=val_fraction,
    )
    plan = trial_plan(cells.plan, config)
    with tempfile.TemporaryDirectory(prefix="raymmi_inprocess_") as folder:
        start = time.perf_counter()
        run = train_in_process(
            plan, cells.data, Path(folder), config=to_dict(config), init_seed=init_seed
        )
        seconds = time.perf_counter() - start
    net = models.model_class(plan.model_name)(plan.model_config, plan.layout.dims)
    net.load_state_dict(run.state_dict)
    net.eval()
    with torch.no_grad():
        batch = {k: torch.from_numpy(np.asarray(v)) for k, v in cells.data.arrays.items()}
        z = net.embed(batch).float().numpy()
    return TrainedEmbedding(z, seconds, run.history)
