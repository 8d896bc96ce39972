"""``raymmi tune``: a one-worker trial trained in the trial's own process.

No ``TorchTrainer``, no Train controller, no worker group: the Tune function trainable
:func:`_run_inprocess_trial` builds the model and runs :func:`raymmi.run._train._loop.fit_epochs`
(the loop ``raymmi train``'s Ray Train workers run) on tensors the search's driver decoded
once (:func:`trial_data`) and handed to every trial through the object store
(``tune.with_parameters``: one copy per node, read zero-copy by the trials).

A trial writes what a ``raymmi train --embed false`` run writes that a search reads:
checkpoints under ``trials/<id>/checkpoints/train/epoch-*`` (the same files, so an interrupted
trial resumes from its last one), ``metrics.json`` and then ``trial.json``. Its MLflow run is
nested under the search's parent and logged in batches (:mod:`raymmi.track`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymmi import models
from raymmi.config import OptimConfig, TrainConfig, from_dict
from raymmi.io import ShardSet, resolve
from raymmi.models import arrow_to_batch
from raymmi.run._train._plan import (
    TrainPlan,
    _columns,
    resolve_optim,
    resolve_val_fraction,
    score_all_cells,
    split_mask,
)
from raymmi.schema import CELL_ID, RaymmiError

# Decoded (dense) data larger than this share of the object store trains on the Train path.
MEMORY_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class TrialData:
    """A search's cells, decoded once by its driver: dense arrays in file order.

    ``arrays`` holds every batch key of the model's validation layout (inputs plus the label
    codes); ``train_keys`` those a training batch carries; ``cell_ids`` decide each trial's
    validation split (it depends on the trial's seed and ``val_fraction``).
    """

    arrays: Mapping[str, np.ndarray]
    train_keys: tuple[str, ...]
    cell_ids: pa.Array
    extra: Mapping[str, np.ndarray] | None = None

    @property
    def nbytes(self) -> int:
        total = sum(a.nbytes for a in self.arrays.values())
        return total + sum(a.nbytes for a in (self.extra or {}).values())


def _read(shard: ShardSet, columns: list[str]) -> pa.Table:
    """Every file of a shard set, in manifest order (the order a one-worker Train run reads)."""
    tables = []
    for uri in shard.file_uris():
        fs, path = resolve(uri)
        tables.append(pq.read_table(path, columns=columns, filesystem=fs))
    return pa.concat_tables(tables)


def trial_data(plan: TrainPlan, shard: ShardSet, extra: ShardSet | None) -> TrialData:
    """Decode the training (and ``--extra-data``) cells once, for every trial of a search."""
    available = _columns(shard)
    columns = list(dict.fromkeys([CELL_ID, *plan.val_layout.columns(available)]))
    table = _read(shard, columns)
    decoded = arrow_to_batch(table, plan.val_layout)
    train_keys = tuple(k for k in arrow_to_batch(table.slice(0, 1), plan.layout) if k in decoded)
    arrays = {k: v.numpy() for k, v in decoded.items()}
    extra_arrays = None
    if extra is not None:
        extra_table = _read(extra, plan.layout.columns(_columns(extra)))
        extra_arrays = {k: v.numpy() for k, v in arrow_to_batch(extra_table, plan.layout).items()}
    ids = table.column(CELL_ID).combine_chunks()
    return TrialData(arrays, train_keys, ids, extra_arrays)


def trial_plan(base: TrainPlan, config: TrainConfig) -> TrainPlan:
    """``base`` (the search's plan: dims, layout) with one trial's settings.

    Raises
    ------
    RaymmiError
        The trial changes what the model reads (its inputs): the decoded data would not fit.
    """
    cls = models.model_class(config.model_name)
    model_config = from_dict(cls.Config, dict(config.model), where="model")
    if cls.inputs(model_config) != base.layout.inputs:
        msg = (
            f"this configuration changes the inputs of {cls.name!r} "
            f"({cls.inputs(model_config)} vs the search's {base.layout.inputs}); in-process "
            "trials share one decoded dataset: search inputs with --workers 2 (Train trials)"
        )
        raise RaymmiError(msg)
    optim = config.optim if isinstance(config.optim, OptimConfig) else OptimConfig()
    return dataclasses.replace(
        base,
        model_config=model_config,
        optim=resolve_optim(cls, optim),
        val_fraction=resolve_val_fraction(config),
        hybrid_every=config.hybrid_every,
        checkpoint_every=config.checkpoint_every,
        fault_injection=None,
        label_key=config.label_key,
        score_every=config.score_every,
        score_all=score_all_cells(config),
    )


def split(data: TrialData, plan: TrainPlan) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Training and validation tensors of one trial (its seed's split, as ``raymmi train``)."""
    import torch

    if plan.val_fraction > 0:
        mask = split_mask(data.cell_ids, plan.val_fraction, int(plan.optim["seed"]))
    else:
        mask = np.zeros(len(data.cell_ids), dtype=bool)
    train = {k: torch.from_numpy(data.arrays[k][~mask]) for k in data.train_keys}
    val = None
    if plan.val_fraction > 0:
        val = {k: torch.from_numpy(v[mask]) for k, v in data.arrays.items()}
    return train, val


def every_cell(data: TrialData, plan: TrainPlan) -> dict[str, Any] | None:
    """The cells of a trial's every-cell scores (``TrainPlan.score_all``), or None when off.

    Every cell, training and validation, with its label code; above ``plan.score_all`` cells
    a seeded sample of that many (the same cells in every trial of a search).
    """
    import torch

    if not plan.score_all or plan.label_key is None:
        return None
    n = len(data.cell_ids)
    rows = None
    if n > plan.score_all:
        rows = np.sort(np.random.default_rng(0).choice(n, plan.score_all, replace=False))
    return {k: torch.from_numpy(v if rows is None else v[rows]) for k, v in data.arrays.items()}


# ----------------------------------------------------------------------------------------------
# the training of one trial (no Tune: the trainable below and the tests call it)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrialRun:
    """What one in-process training produced."""

    state_dict: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, float]
    start_epoch: int


def train_in_process(
    plan: TrainPlan,
    data: TrialData,
    folder: Path,
    *,
    config: Mapping[str, Any],
    keep_checkpoints: int = 2,
    device: str = "cpu",
    report: Any = None,
    init_seed: int | None = None,
) -> TrialRun:
    """Train ``plan`` on ``data`` in this process with the loop of ``raymmi train``.

    Checkpoints go to ``folder/checkpoints/train/epoch-NNNNN`` every ``checkpoint_every``
    epochs and at the last (the newest ``keep_checkpoints`` kept); a folder holding one
    resumes from it. ``report(epoch, metrics)`` is called after every epoch's checkpoint.
    ``init_seed``: initial weights from this seed instead of ``optim.seed``.
    """
    import torch

    from raymmi.run._train._loop import (
        EpochIO,
        MemoryBatches,
        _latest_written_checkpoint,
        _Objective,
        _restore,
        build_model,
        fit_epochs,
        write_checkpoint,
    )

    torch.set_num_threads(plan.threads)
    dev = torch.device(device)
    model, optimizer = build_model(plan, dev, init_seed=init_seed)
    root = folder / "checkpoints" / "train"
    start, history = 0, []
    written = _latest_written_checkpoint(root)
    if written is not None:
        start, history = _restore(written, model, optimizer)
    optim = plan.optim
    batch_size = int(optim["batch_size"])
    train, val = split(data, plan)
    train_batches = MemoryBatches(train, batch_size)
    val_batches = MemoryBatches(val, batch_size) if val is not None else None
    every = every_cell(data, plan)
    every_batches = MemoryBatches(every, batch_size) if every is not None else None
    extra_batches = (
        MemoryBatches(
            {k: torch.from_numpy(np.array(v)) for k, v in data.extra.items()}, batch_size
        )
        if data.extra is not None
        else None
    )
    shuffle = int(optim["shuffle_buffer"]) > 0
    epochs = int(optim["epochs"])

    def batches(epoch: int) -> Iterator[Any]:
        seed = int(optim["seed"]) * 1000 + epoch if shuffle else None
        return iter(train_batches(shuffle_seed=seed))

    def end_epoch(epoch: int, metrics: dict[str, float], history: list[dict[str, float]]) -> None:
        if (epoch + 1) % plan.checkpoint_every == 0 or epoch == epochs - 1:
            root.mkdir(parents=True, exist_ok=True)
            staging = root / f".epoch-{epoch:05d}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            write_checkpoint(
                staging,
                model,
                optimizer,
                epoch=epoch,
                config=config,
                metrics=metrics,
                history=history,
            )
            final = root / f"epoch-{epoch:05d}"
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            for old in sorted(root.glob("epoch-*"))[:-keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if report is not None:
            report(epoch, metrics)

    io = EpochIO(
        train=batches,
        val=(lambda: val_batches()) if val_batches is not None else None,
        extra=(lambda: iter(extra_batches())) if extra_batches is not None else None,
        reduce=lambda sums: sums,
        end_epoch=end_epoch,
        every=(lambda: every_batches()) if every_batches is not None else None,
    )
    history = fit_epochs(
        plan, model, _Objective(model), optimizer, io, dev, start=start, history=history
    )
    if not history:
        msg = "training finished without an epoch (check optim.epochs)"
        raise RaymmiError(msg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return TrialRun(state, history, dict(history[-1]), start)


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def write_metrics(folder: Path, metrics: Mapping[str, Any], started: float) -> dict[str, Any]:
    """``metrics.json`` as ``raymmi train --embed false`` writes it (marks the run finished)."""
    out = dict(metrics)
    out["train_seconds"] = round(time.perf_counter() - started, 2)
    out["resumed"] = False
    tmp = folder / "metrics.json.tmp"
    tmp.write_text(json.dumps(out, indent=2, default=float))
    tmp.replace(folder / "metrics.json")
    return out
