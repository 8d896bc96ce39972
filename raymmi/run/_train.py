"""``raymmi train MODEL``: a registered model trained with Ray Train (DDP) from a shard set.

The driver plans (model config, inputs, dims, resources), then one ``TorchTrainer`` runs
:func:`_worker_loop` on every worker: data arrive from Ray Data (``get_dataset_shard`` →
``iter_torch_batches`` with a collate function that densifies each mini-batch), gradients are
averaged by DDP (gloo on CPU, NCCL on GPU, bfloat16 autocast on GPU), rank 0 checkpoints every
``checkpoint_every`` epochs and logs per-epoch metrics to MLflow. A killed worker restarts the
group from the last checkpoint (``FailureConfig``); rerunning the same command on an
unfinished ``--out`` resumes it. At the end one Ray task per input file writes the embedding
(and imputations) as a ``cells`` shard set, committed last, and ``metrics.json`` holds the
clustering scores of the embedding and of the reference the model was given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
import yaml
from ray.data.collate_fn import ArrowBatchCollateFn

from raymmi import models
from raymmi.config import (
    OptimConfig,
    RayConfig,
    TrackingConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from raymmi.io._shardset import PartWriter, ShardSet, ShardSetWriter, open_shard_set, resolve
from raymmi.models._batches import BatchLayout, arrow_to_batch
from raymmi.run._datasets import read_dataset
from raymmi.run._plates import producer
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import (
    CELL_ID,
    FileEntry,
    Manifest,
    Modality,
    RaymmiError,
    dense_to_list,
    depth_column,
)
from raymmi.track import Run, tracked_run, tracking_uri

EMBED_ROWS = 4096  # cells embedded at once in an output task
# A dataset is materialized when its Parquet bytes x expansion fit in this share of the store.
MATERIALIZE_EXPANSION = 4.0
MATERIALIZE_SHARE = 0.25
# Settings that may change between a run and its resumption (they do not change the model).
RESUMABLE_KEYS = ("workers", "gpus_per_worker", "cpus_per_worker", "max_failures", "overwrite")


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """Everything a worker needs, decided once on the driver."""

    model_name: str
    model_config: Any
    layout: BatchLayout
    optim: Mapping[str, Any]
    val_fraction: float
    hybrid_every: int
    checkpoint_every: int
    fault_injection: str | None
    threads: int
    label_key: str | None = None
    score_every: int = 1

    @property
    def val_layout(self) -> BatchLayout:
        """The model's layout plus the label column as codes (validation scores)."""
        if self.label_key is None or self.label_key in self.layout.inputs.codes:
            return self.layout
        inputs = dataclasses.replace(
            self.layout.inputs, codes=(*self.layout.inputs.codes, self.label_key)
        )
        return dataclasses.replace(self.layout, inputs=inputs)


def _close(name: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def resolve_optim(cls: type[models.Model], optim: OptimConfig) -> dict[str, Any]:
    """Optimizer settings with the model's reference defaults filled in."""
    out = dict(cls.optim_defaults)
    for key, value in to_dict(optim).items():
        if value is not None:
            out[key] = value
    return out


def _columns(shard: ShardSet) -> set[str]:
    """Column names of a shard set (its parts share one schema)."""
    fs, path = resolve(shard.file_uris()[0])
    return set(pq.read_schema(path, filesystem=fs).names)


def _obs_stats(
    shard: ShardSet, codes: tuple[str, ...], depths: tuple[str, ...]
) -> tuple[dict[str, set[str]], dict[str, list[np.ndarray]]]:
    schema_names = _columns(shard)
    cats: dict[str, set[str]] = {c: set() for c in codes}
    logs: dict[str, list[np.ndarray]] = {m: [] for m in depths}
    wanted = [c for c in codes if c in schema_names] + [
        depth_column(m) for m in depths if depth_column(m) in schema_names
    ]
    for uri in shard.file_uris():
        fs, path = resolve(uri)
        table = pq.read_table(path, columns=wanted, filesystem=fs)
        for c in codes:
            if c in table.column_names:
                cats[c].update(str(v) for v in table.column(c).unique().to_pylist())
        for m in depths:
            if depth_column(m) in table.column_names:
                depth = table.column(depth_column(m)).to_numpy().astype(np.float64)
                logs[m].append(np.log1p(depth))
    return cats, logs


def plan_training(config: TrainConfig) -> tuple[TrainPlan, ShardSet, ShardSet | None]:
    """Check the model against the data and decide the plan; raise on any mismatch."""
    cls = models.model_class(config.model_name)
    model_config: Any = from_dict(cls.Config, dict(config.model), where="model")
    inputs = cls.inputs(model_config)
    shard = open_shard_set(config.data, kind="cells")
    extra = open_shard_set(config.extra_data, kind="cells") if config.extra_data else None
    present = {m.name: m for m in shard.manifest.modalities}
    columns = _columns(shard)
    for name in inputs.modalities:
        if name not in present and name not in inputs.optional:
            msg = (
                f"model {cls.name!r} needs modality {name!r}, which {config.data!r} does not "
                f"have{_close(name, list(present))}; present: {sorted(present)}. Run `raymmi "
                "preprocess cells` to make it, or point the model at another column with "
                "--set model.<input>=<modality>"
            )
            raise RaymmiError(msg)
    for name in inputs.depths:
        if depth_column(name) not in columns and depth_column(name) not in inputs.optional:
            msg = f"model {cls.name!r} needs column {depth_column(name)!r}, not in {config.data!r}"
            raise RaymmiError(msg)
    for name in inputs.codes:
        if name not in columns and name not in inputs.optional:
            msg = (
                f"model {cls.name!r} needs obs column {name!r}{_close(name, sorted(columns))}; "
                f"{config.data!r} has {sorted(shard.manifest.metadata)}"
            )
            raise RaymmiError(msg)
    if config.label_key is not None and config.label_key not in columns:
        msg = (
            f"--label-key {config.label_key!r} is not an obs column of {config.data!r}"
            f"{_close(config.label_key, sorted(columns))}; it has "
            f"{sorted(shard.manifest.metadata)}"
        )
        raise RaymmiError(msg)
    if extra is not None:
        extra_present = {m.name for m in extra.manifest.modalities}
        needed = [m for m in inputs.modalities if m not in inputs.optional]
        lacking = [m for m in needed if m not in extra_present]
        if lacking:
            msg = f"--extra-data {config.extra_data!r} lacks modality {lacking}; it needs {needed}"
            raise RaymmiError(msg)
    label = () if config.label_key is None else (config.label_key,)
    wanted = tuple(dict.fromkeys((*inputs.codes, *label)))  # the label may be an input too
    cats, logs = _obs_stats(shard, wanted, inputs.depths)
    if extra is not None:
        extra_cats, extra_logs = _obs_stats(extra, inputs.codes, inputs.depths)
        for key, values in extra_cats.items():
            cats[key] |= values
        for key, arrays in extra_logs.items():
            logs[key] += arrays
    depth_stats = {}
    for name, arrays in logs.items():
        if arrays:
            logged = np.concatenate(arrays)
            depth_stats[name] = (float(logged.mean()), float(logged.std() or 1.0))
    encodings = {m.name: m.encoding for m in shard.manifest.modalities}
    dims = models.Dims(
        features={m.name: tuple(m.features) for m in shard.manifest.modalities},
        categories={k: tuple(sorted(v)) for k, v in cats.items()},
        depth_stats=depth_stats,
    )
    layout = BatchLayout(inputs=inputs, dims=dims, encodings=encodings)
    plan = TrainPlan(
        model_name=cls.name,
        model_config=model_config,
        layout=layout,
        optim=resolve_optim(cls, config.optim),
        val_fraction=config.val_fraction,
        hybrid_every=config.hybrid_every,
        checkpoint_every=config.checkpoint_every,
        fault_injection=config.fault_injection,
        threads=max(1, math.floor(config.cpus_per_worker or 1)),
        label_key=config.label_key,
        score_every=config.score_every,
    )
    return plan, shard, extra


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def split_mask(cell_ids: pa.Array | pa.ChunkedArray, fraction: float, seed: int) -> np.ndarray:
    """True for the cells held out for validation: a seeded hash of the id, stable per cell."""
    ids = np.asarray(cell_ids.to_pylist(), dtype=object)
    key = f"raymmi{seed:010d}"[:16]
    hashed = pd.util.hash_array(ids, hash_key=key, categorize=False)
    return (hashed % np.uint64(1_000_000)) < np.uint64(round(fraction * 1_000_000))


class _Select:
    """Ray Data UDF: keep the training (``val=False``) or validation rows of a batch."""

    def __init__(self, *, val: bool, fraction: float, seed: int, columns: list[str]) -> None:
        self.val, self.fraction, self.seed, self.columns = val, fraction, seed, columns

    def __call__(self, table: pa.Table) -> pa.Table:
        mask = split_mask(table.column(CELL_ID), self.fraction, self.seed)
        keep = mask if self.val else ~mask
        return table.filter(pa.array(keep)).select(self.columns)


class _Objective(torch.nn.Module):
    """Wraps a model so that DDP sees ``loss`` as ``forward`` (its gradient hooks then run)."""

    def __init__(self, model: models.Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, torch.Tensor], epoch: int) -> models.LossOutput:
        return self.model.loss(batch, epoch=epoch)


class _Collate(ArrowBatchCollateFn):
    """``iter_torch_batches`` collate function: densify the whole mini-batch at once."""

    def __init__(self, layout: BatchLayout) -> None:
        self.layout = layout

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return arrow_to_batch(batch, self.layout)


def _datasets(plan: TrainPlan, shard: ShardSet, extra: ShardSet | None) -> dict[str, Any]:
    seed = int(plan.optim["seed"])
    columns = plan.layout.columns(_columns(shard))
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch, not bars
    ds = read_dataset(shard, columns=[CELL_ID, *columns])
    out = {
        "train": ds.map_batches(
            _Select(val=False, fraction=plan.val_fraction, seed=seed, columns=columns),
            batch_format="pyarrow",
        )
    }
    if plan.val_fraction > 0:
        val_columns = plan.val_layout.columns(_columns(shard))
        ds_val = read_dataset(shard, columns=list(dict.fromkeys([CELL_ID, *val_columns])))
        out["val"] = ds_val.map_batches(
            _Select(val=True, fraction=plan.val_fraction, seed=seed, columns=val_columns),
            batch_format="pyarrow",
        )
    if extra is not None:
        out["extra"] = read_dataset(extra, columns=plan.layout.columns(_columns(extra)))
    # Small sets are read once and kept in the object store: re-reading a few MB every epoch
    # cost ~3 s of Ray Data start-up per epoch here. Large sets stream from storage.
    store = float(ray.cluster_resources().get("object_store_memory", 0))
    for name, sset in (("train", shard), ("val", shard), ("extra", extra)):
        on_disk = sum(f.bytes for f in sset.manifest.files) if sset is not None else 0
        if name in out and on_disk * MATERIALIZE_EXPANSION < store * MATERIALIZE_SHARE:
            # in file order, not task-completion order: the same seed then gives the same
            # batches and the same run (a search compares configurations, not data orders)
            out[name].context.execution_options.preserve_order = True
            out[name] = out[name].materialize()
    return out


# ----------------------------------------------------------------------------------------------
# the loop every worker runs
# ----------------------------------------------------------------------------------------------


def _maybe_fail(plan: TrainPlan, rank: int, epoch: int, storage: str) -> None:
    if plan.fault_injection is None:
        return
    target_rank, target_epoch = (int(v) for v in plan.fault_injection.split(":"))
    marker = Path(storage) / f".fault-injected-{target_rank}-{target_epoch}"
    if rank == target_rank and epoch == target_epoch and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("killed once by fault_injection\n")
        os.kill(os.getpid(), signal.SIGKILL)


def _all_reduce(sums: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return sums
    import torch.distributed as dist

    keys = sorted(sums)
    tensor = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def _restore(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """Load a checkpoint folder; the epoch to start at and the history so far."""
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    optimizer.load_state_dict(torch.load(folder / "optim.pt", weights_only=True))
    saved = json.loads((folder / "state.json").read_text())
    return int(saved["epoch"]) + 1, list(saved["history"])


def _latest_written_checkpoint(root: Path) -> Path | None:
    """The newest complete ``epoch-*`` checkpoint folder under ``root``, or None.

    Ray Train hands a restarted worker group only the checkpoints its controller registered;
    one uploaded just before a worker died can be on disk but unregistered (seen on a loaded
    2-core machine: the restart began again at epoch 0). Every rank reads the same folder, so
    the ranks agree on where they start.
    """
    for folder in sorted(root.glob("epoch-*"), reverse=True):
        files = [folder / name for name in ("state.json", "model.pt", "optim.pt")]
        if not all(f.is_file() for f in files):
            continue
        try:
            saved = json.loads(files[0].read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and "epoch" in saved and "history" in saved:
            return folder
    return None


def _weights_spread(model: torch.nn.Module, world: int) -> float:
    """Max minus min over ranks of a checksum of the weights: 0 when DDP kept them in sync."""
    with torch.no_grad():
        checksum = sum(float(p.double().abs().sum()) for p in model.parameters())
    if world == 1:
        return 0.0
    import torch.distributed as dist

    high = torch.tensor([checksum], dtype=torch.float64)
    low = torch.tensor([-checksum], dtype=torch.float64)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return float(high.item() + low.item())


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _log_mlflow(ctx: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    if ctx.get("run_id") is None:
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=ctx["tracking_uri"])
    stamp = int(time.time() * 1000)
    items = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if math.isfinite(v)]
    client.log_batch(ctx["run_id"], metrics=items)


def _worker_loop(ctx: dict[str, Any]) -> None:
    plan: TrainPlan = ctx["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(plan.threads)
    device = ray.train.torch.get_device()
    optim = plan.optim
    torch.manual_seed(int(optim["seed"]))
    model = models.model_class(plan.model_name)(plan.model_config, plan.layout.dims)
    model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"])
    )
    start = 0
    history: list[dict[str, float]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start, history = _restore(Path(folder), model, optimizer)
    else:
        written = _latest_written_checkpoint(Path(ctx["storage"]) / "train")
        if written is not None:  # saved by a worker group that died before Train registered it
            start, history = _restore(written, model, optimizer)
    ddp = ray.train.torch.prepare_model(_Objective(model), move_to_device=False)
    amp = device.type == "cuda" and bool(optim["amp"])
    collate = _Collate(plan.layout)
    batch_size = int(optim["batch_size"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if plan.val_fraction > 0 else None
    extra_shard = ray.train.get_dataset_shard("extra") if ctx["has_extra"] else None

    def step(batch: Mapping[str, torch.Tensor], epoch: int) -> dict[str, float]:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = ddp(batch, epoch=epoch)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        return out.floats()

    for epoch in range(start, int(optim["epochs"])):
        _maybe_fail(plan, rank, epoch, ctx["storage"])
        model.train()
        sums: dict[str, float] = {"cells": 0.0, "data_seconds": 0.0}
        tick = time.perf_counter()
        extra_iter = (
            iter(extra_shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate))
            if extra_shard is not None
            else None
        )
        batches = iter(
            train_shard.iter_torch_batches(
                batch_size=batch_size,
                collate_fn=collate,
                local_shuffle_buffer_size=int(optim["shuffle_buffer"]) or None,
                local_shuffle_seed=int(optim["seed"]) * 1000 + epoch,
            )
        )
        index = 0
        while True:
            wait = time.perf_counter()
            batch = next(batches, None)
            sums["data_seconds"] += time.perf_counter() - wait
            if batch is None:
                break
            n = len(next(iter(batch.values())))
            if n < 2:  # batch norm needs two cells; equal splits make every rank skip it
                continue
            for key, value in step(_to(batch, device), epoch).items():
                sums[f"train_{key}"] = sums.get(f"train_{key}", 0.0) + value * n
            sums["cells"] += n
            index += 1
            if extra_iter is not None and index % (plan.hybrid_every - 1) == 0:
                extra_batch = next(extra_iter, None)
                if extra_batch is None:
                    extra_iter = None  # one pass over the extra cells per epoch
                else:
                    m = len(next(iter(extra_batch.values())))
                    for key, value in step(_to(extra_batch, device), epoch).items():
                        sums[f"extra_{key}"] = sums.get(f"extra_{key}", 0.0) + value * m
                    sums["extra_cells"] = sums.get("extra_cells", 0.0) + m
        if extra_iter is not None:
            for _ in extra_iter:  # drain, so every split of the extra set finishes its epoch
                pass
        elapsed = time.perf_counter() - tick
        sums["seconds"] = elapsed
        if val_shard is not None:
            scored = plan.label_key is not None and (
                (epoch + 1) % plan.score_every == 0 or epoch == int(optim["epochs"]) - 1
            )
            sums.update(_validate(model, val_shard, plan, epoch, device, batch_size, scored))
        total = _all_reduce(sums, world)
        metrics = _epoch_metrics(total, world, epoch)
        metrics["attempt_start_epoch"] = float(start)
        metrics["weights_rank_spread"] = _weights_spread(model, world)
        history.append(metrics)
        last = epoch == int(optim["epochs"]) - 1
        save = rank == 0 and ((epoch + 1) % plan.checkpoint_every == 0 or last)
        if rank == 0:
            _log_mlflow(ctx, metrics, epoch)
        if save:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(model.state_dict(), Path(folder) / "model.pt")
                torch.save(optimizer.state_dict(), Path(folder) / "optim.pt")
                state = {
                    "epoch": epoch,
                    "config": ctx["config"],
                    "metrics": metrics,
                    "history": history,
                }
                (Path(folder) / "state.json").write_text(json.dumps(state, default=str))
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"epoch-{epoch:05d}",
                )
        else:
            ray.train.report(metrics)


def _validate(
    model: models.Model,
    shard: Any,
    plan: TrainPlan,
    epoch: int,
    device: torch.device,
    batch_size: int,
    scored: bool,
) -> dict[str, float]:
    """Validation loss sums, and (when ``scored``) label scores of this worker's val cells."""
    model.eval()
    sums: dict[str, float] = {}
    embeddings, references, labels = [], [], []
    with torch.no_grad():
        for batch in shard.iter_torch_batches(
            batch_size=batch_size, collate_fn=_Collate(plan.val_layout)
        ):
            n = len(next(iter(batch.values())))
            batch = _to(batch, device)
            for key, value in model.loss(batch, epoch=epoch).floats().items():
                sums[f"val_{key}"] = sums.get(f"val_{key}", 0.0) + value * n
            sums["val_cells"] = sums.get("val_cells", 0.0) + n
            if scored:
                embeddings.append(model.embed(batch).float().cpu().numpy())
                reference = model.reference(batch)
                if reference is not None:
                    references.append(reference.float().cpu().numpy())
                labels.append(batch[str(plan.label_key)].cpu().numpy())
    if scored and embeddings:
        samples = {"embedding": np.concatenate(embeddings), "labels": np.concatenate(labels)}
        if references:
            samples["reference"] = np.concatenate(references)
        for key, value in _scores(samples, plan.label_key).items():
            if _is_number(value) and key != "metric_cells":
                # summed over workers, divided by the world size in _epoch_metrics
                sums[f"score_val_{key}"] = float(value)
    return sums


def _epoch_metrics(total: Mapping[str, float], world: int, epoch: int) -> dict[str, float]:
    metrics: dict[str, float] = {"epoch": float(epoch)}
    for prefix, count in (("train_", "cells"), ("extra_", "extra_cells"), ("val_", "val_cells")):
        n = total.get(count, 0.0)
        for key, value in total.items():
            if key.startswith(prefix) and key != count and n:
                metrics[key] = value / n
    if total.get("extra_cells"):
        metrics["extra_cells"] = total["extra_cells"]
    for key, value in total.items():
        if key.startswith("score_"):
            metrics[key[len("score_") :]] = value / world
    seconds = total["seconds"] / world
    metrics["epoch_seconds"] = seconds
    metrics["cells_per_second"] = total["cells"] / seconds if seconds else float("nan")
    metrics["data_wait_share"] = total["data_seconds"] / total["seconds"] if seconds else 0.0
    return metrics


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def _cpus_per_worker(config: TrainConfig, resources: Mapping[str, float]) -> float:
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    if config.gpus_per_worker and config.workers * config.gpus_per_worker > gpus:
        msg = (
            f"--workers {config.workers} x --gpus-per-worker {config.gpus_per_worker} needs "
            f"{config.workers * config.gpus_per_worker:g} GPUs; the cluster has {gpus:g}. Use "
            f"--workers {max(1, int(gpus // config.gpus_per_worker))} or fewer GPUs per worker"
        )
        raise RaymmiError(msg)
    if config.cpus_per_worker is not None:
        need = config.workers * config.cpus_per_worker
        if need > cpus:
            msg = (
                f"--workers {config.workers} x {config.cpus_per_worker:g} CPUs needs {need:g} "
                f"CPUs; the cluster has {cpus:g}. Use --workers "
                f"{max(1, int(cpus // config.cpus_per_worker))} or fewer CPUs per worker"
            )
            raise RaymmiError(msg)
        return config.cpus_per_worker
    # Leave one CPU for the Ray Data tasks (each asks for a whole CPU), or training waits
    # forever for data that no task can read (seen on 2 CPUs with 2 workers at 0.75 each).
    share = min(1.0, (cpus - 1.0) / config.workers)
    if share < 0.25:
        msg = (
            f"--workers {config.workers} does not fit on {cpus:g} CPUs (each worker needs at "
            f"least 0.25 CPU, and one CPU stays free for the data readers); use --workers "
            f"{max(1, int((cpus - 1.0) / 0.25))} or fewer, or a larger cluster"
        )
        raise RaymmiError(msg)
    return round(share, 3)


def _model_identity(config: TrainConfig) -> dict[str, Any]:
    data = to_dict(config)
    return {k: v for k, v in data.items() if k not in RESUMABLE_KEYS}


def finished(out: str | Path, *, embed: bool = True) -> bool:
    """Whether ``out`` holds a finished training run: its last output committed.

    That is the ``embeddings`` manifest, or with ``embed=False`` ``metrics.json``.
    """
    out = Path(out)
    if (out / "embeddings" / "_manifest.json").exists():
        return True
    return not embed and (out / "metrics.json").exists()


def _prepare_out(config: TrainConfig) -> bool:
    """Decide between a fresh run and a resumption; return True when resuming."""
    out = Path(config.out)
    if not out.exists():
        return False
    done = finished(out, embed=config.embed)
    if config.overwrite:
        shutil.rmtree(out)
        return False
    if done:
        msg = f"--out {config.out!r} holds a finished training run; use --overwrite or a new --out"
        raise RaymmiError(msg)
    saved = out / "config.yaml"
    if not saved.exists():
        if any(out.iterdir()):
            msg = f"--out {config.out!r} exists and is not a raymmi training folder"
            raise RaymmiError(msg)
        return False
    before = yaml.safe_load(saved.read_text())
    now = _model_identity(config)
    diff = sorted(
        k
        for k in set(_flat(before)) | set(_flat(now))
        if _flat(before).get(k) != _flat(now).get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {_flat(before).get(k)!r} -> {_flat(now).get(k)!r}" for k in diff)
        msg = (
            f"--out {config.out!r} holds checkpoints of a different config ({shown}); resume "
            "with the same settings, or use --overwrite or a new --out"
        )
        raise RaymmiError(msg)
    return True


def _flat(data: Mapping[str, Any]) -> dict[str, Any]:
    from raymmi.config import flatten

    return flatten(dict(data))


def train(
    config: TrainConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
    callbacks: Sequence[Any] = (),
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Train ``config.model_name`` on ``config.data`` with Ray Train; return the final metrics.

    Writes ``OUT/config.yaml`` (at start), ``OUT/checkpoints/`` (Ray Train storage),
    ``OUT/model.pt`` (final weights, load with ``torch.load(..., weights_only=True)``),
    ``OUT/metrics.json`` and the ``OUT/embeddings`` shard set (``X_<model>`` plus imputed
    modalities), whose manifest is written last.

    ``callbacks`` go to the Train ``RunConfig`` (Ray Tune passes ``TuneReportCallback`` so
    every epoch's report reaches the scheduler); ``tags`` and ``run_name`` go to the MLflow
    run (a Tune trial sets ``mlflow.parentRunId`` to nest it under its search).

    Raises
    ------
    RaymmiError
        Unknown model or ``model.*`` key, a modality or column the model needs missing from
        the data, more workers than the cluster can place, an ``--out`` holding another
        config's checkpoints, or a training failure beyond ``max_failures``.
    """
    started = time.perf_counter()
    plan, shard, extra = plan_training(config)
    resumed = _prepare_out(config)
    resources = init_ray(ray_config)
    cpus = _cpus_per_worker(config, resources)
    plan = dataclasses.replace(plan, threads=max(1, math.floor(cpus)))
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(_model_identity(config), sort_keys=False))
    cfg = to_dict(config)
    cfg["optim_resolved"] = dict(plan.optim)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tracked_run(
        "train",
        config=cfg,
        tracking=tracking,
        run_name=run_name or f"train-{plan.model_name}",
        tags=tags,
    ) as run:
        run.set_tags({"raymmi.model": plan.model_name, "raymmi.resumed": resumed})
        run.log_shard_set(config.data, shard.manifest.to_dict(), context="input")
        ctx = {
            "plan": plan,
            "has_extra": extra is not None,
            "storage": str(out / "checkpoints"),
            "config": _model_identity(config),
            "run_id": run.run_id,
            "tracking_uri": tracking_uri(tracking) if run.enabled else None,
        }
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config=ctx,
            scaling_config=ScalingConfig(
                num_workers=config.workers,
                use_gpu=config.gpus_per_worker > 0,
                resources_per_worker={"CPU": cpus, "GPU": config.gpus_per_worker}
                if config.gpus_per_worker
                else {"CPU": cpus},
            ),
            run_config=RunConfig(
                name="train",
                storage_path=str(out / "checkpoints"),
                checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
                failure_config=FailureConfig(  # the V2 class, at run time
                    max_failures=config.max_failures,
                    controller_failure_limit=3,  # type: ignore[call-arg]
                ),
                callbacks=list(callbacks),
            ),
            datasets=dict(_datasets(plan, shard, extra)),
        )
        try:
            result = trainer.fit()
        except Exception as err:  # Ray wraps worker errors; show the cause in one line
            cause = err.__cause__ or err
            if isinstance(cause, RaymmiError):
                raise cause from None
            msg = f"training failed after {config.max_failures} restarts: {cause}"
            raise RaymmiError(msg) from err
        if result.checkpoint is None:
            msg = "training finished without a checkpoint (no epoch ran: check optim.epochs)"
            raise RaymmiError(msg)
        with result.checkpoint.as_directory() as folder:
            state_dict = torch.load(Path(folder) / "model.pt", weights_only=True)
            last = json.loads((Path(folder) / "state.json").read_text())
        torch.save(state_dict, out / "model.pt")
        run.log_artifact(out / "model.pt", "model")
        history = pd.DataFrame(last["history"])
        metrics: dict[str, Any] = dict(last["metrics"])
        if not config.embed:  # a Tune trial: the per-epoch metrics are the result
            _record(run, out, metrics, history, {}, started=started, resumed=resumed)
            return metrics
        with ShardSetWriter(str(out / "embeddings"), overwrite=True) as writer:
            embedded = _embed(config, plan, shard, state_dict, writer.staging)
            metrics.update(embedded.scores)
            _record(run, out, metrics, history, embedded.samples, started=started, resumed=resumed)
            cfg_plain = to_dict(config)
            manifest = writer.commit(
                Manifest(
                    kind="cells",
                    files=tuple(embedded.entries),
                    metadata=embedded.metadata,
                    modalities=embedded.modalities,
                    producer=producer("train", cfg_plain, run),
                    parents=(shard.parent_ref(),),
                    extra={"train": {"model": plan.model_name, "metrics": embedded.scores}},
                )
            )
        run.log_shard_set(str(out / "embeddings"), manifest.to_dict(), context="output")
    return metrics


def _record(
    run: Run,
    out: Path,
    metrics: dict[str, Any],
    history: pd.DataFrame,
    samples: Mapping[str, np.ndarray],
    *,
    started: float,
    resumed: bool,
) -> None:
    """Close a run's record: its wall time, MLflow metrics and plots, then ``metrics.json``.

    ``metrics.json`` is written last and atomically: without an embedding pass it is what marks
    the run finished (:func:`finished`).
    """
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metrics["resumed"] = resumed
    run.log_metrics({k: float(v) for k, v in metrics.items() if _is_number(v)})
    run.log_dict(metrics, "metrics.json")
    _log_plots(run, history, samples)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=float))
    tmp.replace(out / "metrics.json")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------
# embeddings, imputations, scores
# ----------------------------------------------------------------------------------------------


# DEFAULT: never captured by a caller's placement group (a Tune trial's 0.1-CPU bundle could
# not fit a 1-CPU task: "cannot fit into any bundles"); Ray Data and Train schedule likewise.
@ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")
def _embed_task(
    path: str,
    plan: TrainPlan,
    state_dict: Mapping[str, torch.Tensor],
    metadata: tuple[str, ...],
    staging: str,
    index: int,
    impute: bool,
    sample_fraction: float,
    label_key: str | None,
) -> tuple[FileEntry | None, dict[str, np.ndarray]]:
    torch.set_num_threads(1)
    model = models.model_class(plan.model_name)(plan.model_config, plan.layout.dims)
    model.load_state_dict(state_dict)
    model.eval()
    fs, local = resolve(path)
    parquet = pq.ParquetFile(local, filesystem=fs)
    names = set(parquet.schema_arrow.names)
    keep = [c for c in (CELL_ID, *metadata) if c in names]
    columns = list(dict.fromkeys(keep + plan.layout.columns(names)))
    writer: PartWriter | None = None
    samples: dict[str, list[np.ndarray]] = {"embedding": [], "reference": [], "labels": []}
    try:
        for record in parquet.iter_batches(batch_size=EMBED_ROWS, columns=columns):
            table = pa.Table.from_batches([record])
            with torch.no_grad():
                batch = arrow_to_batch(table, plan.layout)
                z = model.embed(batch).float().numpy()
                imputed = model.impute(batch) if impute else None
                reference = model.reference(batch)
            arrays = {c: table.column(c) for c in keep}
            outputs = {f"X_{plan.model_name}": z}
            for name, tensor in (imputed or {}).items():
                outputs[f"{name}_imputed"] = tensor.float().numpy()
            for name, matrix in outputs.items():  # the cells layout: values + row sums
                arrays[name] = dense_to_list(matrix)
                arrays[depth_column(name)] = pa.array(matrix.sum(axis=1, dtype=np.float32))
            out = pa.table(arrays)
            if writer is None:
                writer = PartWriter(staging, f"part-{index:05d}.parquet", out.schema)
            writer.write(out)
            pick = split_mask(table.column(CELL_ID), sample_fraction, 7)
            samples["embedding"].append(z[pick])
            if reference is not None:
                samples["reference"].append(reference.float().numpy()[pick])
            if label_key is not None:
                labels = table.column(label_key) if label_key in table.column_names else None
                if labels is not None:
                    samples["labels"].append(np.asarray(labels.to_pylist(), dtype=object)[pick])
    finally:
        entry = writer.close() if writer is not None else None
    return entry, {k: np.concatenate(v) for k, v in samples.items() if v}


@dataclasses.dataclass
class _Embedded:
    entries: list[FileEntry]
    samples: dict[str, np.ndarray]
    scores: dict[str, Any]
    metadata: tuple[str, ...]
    modalities: tuple[Modality, ...]


def _embed(
    config: TrainConfig,
    plan: TrainPlan,
    shard: ShardSet,
    state_dict: Mapping[str, torch.Tensor],
    staging: str,
) -> _Embedded:
    """Embed (and impute) every cell, one task per input file; score a seeded sample."""
    metadata = tuple(shard.manifest.metadata)
    label_key = config.label_key
    if label_key is not None and label_key not in metadata:
        metadata = (*metadata, label_key)
    fraction = min(1.0, config.metrics_max_cells / max(1, shard.manifest.num_rows))
    state_ref: Any = ray.put(dict(state_dict))
    refs = [
        _embed_task.remote(
            path, plan, state_ref, metadata, staging, i, config.impute, fraction, label_key
        )
        for i, path in enumerate(shard.file_uris())
    ]
    results = gather(refs, desc=f"embed ({plan.model_name})", unit="file")
    entries = [e for e, _ in results if e is not None]
    samples = {
        key: np.concatenate([s[key] for _, s in results if key in s])
        for key in ("embedding", "reference", "labels")
        if any(key in s for _, s in results)
    }
    width = int(samples["embedding"].shape[1])
    modalities = [Modality(f"X_{plan.model_name}", "dense", tuple(f"z{i}" for i in range(width)))]
    columns = set(_part_columns(staging, entries[0])) if entries else set()
    for name in plan.layout.inputs.modalities:
        if f"{name}_imputed" in columns:
            features = plan.layout.dims.features[name]
            modalities.append(Modality(f"{name}_imputed", "dense", features))
    return _Embedded(
        entries=entries,
        samples=samples,
        scores=_scores(samples, label_key),
        metadata=metadata,
        modalities=tuple(modalities),
    )


def _part_columns(staging: str, entry: FileEntry) -> list[str]:
    fs, base = resolve(staging)
    return pq.read_schema(posixpath.join(base, entry.path), filesystem=fs).names


def _scores(samples: Mapping[str, np.ndarray], label_key: str | None) -> dict[str, Any]:
    """ARI/NMI (k-means with k = number of labels) and silhouette, model and reference."""
    if label_key is None or "labels" not in samples or len(samples["labels"]) < 3:
        return {}
    from sklearn.cluster import KMeans
    from sklearn.metrics import (
        adjusted_rand_score,
        normalized_mutual_info_score,
        silhouette_score,
    )

    labels = samples["labels"].astype(str)
    k = len(np.unique(labels))
    out: dict[str, Any] = {"clustering": f"kmeans(k={k}, n_init=10, seed=0)"}
    out["metric_cells"] = len(labels)
    for prefix, key in (("", "embedding"), ("reference_", "reference")):
        if key not in samples or len(samples[key]) != len(labels) or k < 2:
            continue
        x = np.asarray(samples[key], dtype=np.float64)
        clusters = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x)
        out[f"{prefix}ari"] = float(adjusted_rand_score(labels, clusters))
        out[f"{prefix}nmi"] = float(normalized_mutual_info_score(labels, clusters))
        out[f"{prefix}silhouette"] = float(silhouette_score(x, labels, random_state=0))
    return out


def _log_plots(run: Run, history: pd.DataFrame, samples: Mapping[str, np.ndarray]) -> None:
    if not run.enabled:
        return
    from raymmi import plots

    if not history.empty:
        run.log_figure(plots.loss_curves(history), "train/loss_curves.png")
        run.log_table(history, "train/history.csv")
    if "labels" in samples and len(samples.get("embedding", ())) >= 10:
        figure = plots.embedding_scatter(
            {
                name: samples[key]
                for name, key in (("model", "embedding"), ("reference", "reference"))
                if key in samples and len(samples[key]) == len(samples["labels"])
            },
            list(samples["labels"].astype(str)),
        )
        run.log_figure(figure, "train/embedding.png")
