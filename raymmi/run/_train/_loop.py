"""The training loop of ``raymmi train``, shared by Ray Train workers and in-process trials.

:func:`fit_epochs` is the one epoch / step / validation / checkpoint loop. Two callers:

- :func:`_worker_loop`, run by every Ray Train worker of ``raymmi train`` (and of a Tune trial
  with ``--workers N > 1``): data arrive from Ray Data (``get_dataset_shard`` ->
  ``iter_torch_batches`` with a collate function that densifies each mini-batch), gradients
  are averaged by DDP, rank 0 checkpoints and logs per-epoch metrics to MLflow; a restarted
  worker group resumes from the last checkpoint (:func:`_restore`,
  :func:`_latest_written_checkpoint`).
- ``raymmi.run._tune._inprocess``, a one-worker Tune trial that trains in its own process on
  tensors the search's driver decoded once (:class:`MemoryBatches`).

What differs between them is passed in as an :class:`EpochIO`: where mini-batches come from,
how per-epoch sums are reduced over workers, and what happens at the end of an epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from raymmi import models
from raymmi.models import BatchLayout, arrow_to_batch
from raymmi.run._train._embed import _is_number, _scores
from raymmi.run._train._plan import TrainPlan

if TYPE_CHECKING:  # loaded on the workers by Ray Train's torch backend
    import ray.train.torch

Batch = Mapping[str, torch.Tensor]

# ----------------------------------------------------------------------------------------------
# the loop both paths run
# ----------------------------------------------------------------------------------------------


class _Objective(torch.nn.Module):
    """Wraps a model so that DDP sees forward + ``loss`` as ``forward`` (its hooks then run)."""

    def __init__(self, model: models.Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, torch.Tensor], kl_weight: float) -> models.LossOutput:
        return self.model.loss(batch, self.model(batch), kl_weight=kl_weight)


@dataclasses.dataclass
class EpochIO:
    """What differs between a Ray Train worker and an in-process trial.

    Parameters
    ----------
    train
        ``epoch -> mini-batches`` of the training cells (shuffled per epoch as the caller does).
    val
        ``() -> mini-batches`` of the validation cells (with the label codes), or None.
    extra
        ``() -> mini-batches`` of SAILERX's ``--extra-data`` cells, or None.
    reduce
        Per-epoch sums -> sums over every worker (identity for one worker).
    end_epoch
        ``(epoch, metrics, history)``: checkpoint, report, log. Called after ``history`` got
        the epoch's metrics.
    world
        Number of workers (scores are summed over workers and divided by it).
    before_epoch
        ``epoch ->``: called before the epoch trains.
    every
        ``() -> mini-batches`` of every cell with the label codes (``TrainPlan.score_all``:
        the ``all_*`` scores), or None.
    """

    train: Callable[[int], Iterator[Batch]]
    val: Callable[[], Iterable[Batch]] | None
    extra: Callable[[], Iterator[Batch]] | None
    reduce: Callable[[dict[str, float]], dict[str, float]]
    end_epoch: Callable[[int, dict[str, float], list[dict[str, float]]], None]
    world: int = 1
    before_epoch: Callable[[int], None] | None = None
    every: Callable[[], Iterable[Batch]] | None = None


def build_model(
    plan: TrainPlan, device: torch.device, *, init_seed: int | None = None
) -> tuple[models.Model, torch.optim.Optimizer]:
    """The model (seeded with ``optim.seed``) and its Adam optimizer, as every path builds them.

    ``init_seed``: draw the weights from this seed instead (benchmarks: one initialization for
    runs whose split and shuffling differ).
    """
    optim = plan.optim
    torch.manual_seed(int(optim["seed"]) if init_seed is None else init_seed)
    model = models.model_class(plan.model_name)(plan.model_config, plan.layout.dims)
    model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"])
    )
    return model, optimizer


def fit_epochs(
    plan: TrainPlan,
    model: models.Model,
    forward: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    io: EpochIO,
    device: torch.device,
    *,
    start: int,
    history: list[dict[str, float]],
) -> list[dict[str, float]]:
    """Train epochs ``start .. optim.epochs - 1``: steps, validation, per-epoch metrics.

    ``forward`` is ``_Objective(model)`` or its DDP wrapper. Returns ``history`` with one row
    of metrics per epoch appended; ``io.end_epoch`` checkpoints and reports each. The KL
    annealing weight of each epoch comes from :func:`raymmi.models.kl_schedule` of the model
    config (models without a KL term ignore it); epoch ``e`` trains at learning rate
    ``optim.lr * optim.lr_decay ** e``; a mini-batch of fewer than ``optim.batch_size`` cells
    (with ``optim.drop_last``) or of one cell (batch norm needs two) is skipped.
    """
    optim = plan.optim
    amp = device.type == "cuda" and bool(optim["amp"])
    epochs = int(optim["epochs"])
    lr, decay = float(optim["lr"]), float(optim["lr_decay"])
    # fewer cells than this end the epoch's batches unused (drop_last); 2 for batch norm
    smallest = int(optim["batch_size"]) if bool(optim["drop_last"]) else 2

    def step(batch: Mapping[str, torch.Tensor], kl_weight: float) -> dict[str, float]:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward(batch, kl_weight=kl_weight)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        return out.floats()

    for epoch in range(start, epochs):
        if io.before_epoch is not None:
            io.before_epoch(epoch)
        model.train()
        for group in optimizer.param_groups:  # set from the epoch, so a resumed run agrees
            group["lr"] = lr * decay**epoch
        kl_weight = models.kl_schedule(epoch, **models.annealing(plan.model_config))
        sums: dict[str, float] = {"cells": 0.0, "data_seconds": 0.0}
        tick = time.perf_counter()
        extra_iter = iter(io.extra()) if io.extra is not None else None
        batches = io.train(epoch)
        index = 0
        while True:
            wait = time.perf_counter()
            batch = next(batches, None)
            sums["data_seconds"] += time.perf_counter() - wait
            if batch is None:
                break
            n = len(next(iter(batch.values())))
            if n < smallest:  # equal splits make every rank skip it
                continue
            for key, value in step(_to(batch, device), kl_weight).items():
                sums[f"train_{key}"] = sums.get(f"train_{key}", 0.0) + value * n
            sums["cells"] += n
            index += 1
            if extra_iter is not None and index % (plan.hybrid_every - 1) == 0:
                extra_batch = next(extra_iter, None)
                if extra_batch is None:
                    extra_iter = None  # one pass over the extra cells per epoch
                else:
                    m = len(next(iter(extra_batch.values())))
                    for key, value in step(_to(extra_batch, device), kl_weight).items():
                        sums[f"extra_{key}"] = sums.get(f"extra_{key}", 0.0) + value * m
                    sums["extra_cells"] = sums.get("extra_cells", 0.0) + m
        if extra_iter is not None:
            for _ in extra_iter:  # drain, so every split of the extra set finishes its epoch
                pass
        sums["seconds"] = time.perf_counter() - tick
        scored = plan.label_key is not None and (
            (epoch + 1) % plan.score_every == 0 or epoch == epochs - 1
        )
        if io.val is not None:
            sums.update(_validate(model, io.val(), plan, kl_weight, device, scored))
        if scored and io.every is not None:
            model.eval()
            with torch.no_grad():
                pairs = [(model.embed(b), b[str(plan.label_key)]) for b in io.every()]
            if pairs:
                embedding = torch.cat([z for z, _ in pairs]).float().cpu().numpy()
                codes = torch.cat([c for _, c in pairs]).cpu().numpy()
                samples = {"embedding": embedding, "labels": codes}
                sums.update(score_sums("all", samples, plan.label_key))
        metrics = _epoch_metrics(io.reduce(sums), io.world, epoch)
        metrics["attempt_start_epoch"] = float(start)
        metrics["weights_rank_spread"] = _weights_spread(model, io.world)
        history.append(metrics)
        io.end_epoch(epoch, metrics, history)
    return history


def write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    config: Mapping[str, Any],
    metrics: Mapping[str, float],
    history: list[dict[str, float]],
) -> None:
    """Fill a checkpoint folder: ``model.pt``, ``optim.pt``, ``state.json`` (:func:`_restore`)."""
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save(optimizer.state_dict(), folder / "optim.pt")
    state = {"epoch": epoch, "config": config, "metrics": metrics, "history": history}
    (folder / "state.json").write_text(json.dumps(state, default=str))


def _validate(
    model: models.Model,
    batches: Iterable[Batch],
    plan: TrainPlan,
    kl_weight: float,
    device: torch.device,
    scored: bool,
) -> dict[str, float]:
    """Validation loss sums, and (when ``scored``) label scores of this worker's val cells."""
    model.eval()
    sums: dict[str, float] = {}
    embeddings, references, labels = [], [], []
    with torch.no_grad():
        for batch in batches:
            n = len(next(iter(batch.values())))
            batch = _to(batch, device)
            for key, value in model.objective(batch, kl_weight=kl_weight).floats().items():
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
        sums.update(score_sums("val", samples, plan.label_key))
    return sums


def score_sums(
    prefix: str, samples: Mapping[str, np.ndarray], label_key: str | None
) -> dict[str, float]:
    """Label scores of one model's embedding as per-epoch sums, ``score_<prefix>_<name>``.

    ``samples`` as :func:`raymmi.run._train._embed._scores` takes them (``embedding``,
    ``labels`` codes, optional ``reference``). Summed over workers and divided by the world
    size in :func:`_epoch_metrics`: ``val_ari`` ... for ``"val"``, ``all_ari`` ... for ``"all"``.
    """
    return {
        f"score_{prefix}_{k}": float(v)
        for k, v in _scores(samples, label_key).items()
        if _is_number(v) and k != "metric_cells"
    }


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


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _weights_spread(model: torch.nn.Module, world: int) -> float:
    """Max minus min over ranks of a checksum of the weights: 0 when DDP kept them in sync."""
    if world == 1:
        return 0.0
    with torch.no_grad():
        checksum = sum(float(p.double().abs().sum()) for p in model.parameters())
    import torch.distributed as dist

    high = torch.tensor([checksum], dtype=torch.float64)
    low = torch.tensor([-checksum], dtype=torch.float64)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return float(high.item() + low.item())


# ----------------------------------------------------------------------------------------------
# mini-batches held in memory (in-process trials)
# ----------------------------------------------------------------------------------------------


class MemoryBatches:
    """Mini-batches sliced from decoded tensors, in the order ``iter_torch_batches`` gives.

    Without a shuffle buffer (``optim.shuffle_buffer=0``) the batches are the consecutive
    ``batch_size`` rows in file order: exactly what a one-worker Ray Train run reads from its
    (materialized, order-preserving) dataset, so both train the same model. With a buffer,
    each epoch is a seeded permutation of all rows (``seed * 1000 + epoch``, the seed Ray
    Data's local shuffle gets): the same seed gives the same run, but not Ray Data's order.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], batch_size: int) -> None:
        self.tensors = dict(tensors)
        self.batch_size = batch_size
        self.rows = len(next(iter(self.tensors.values()))) if self.tensors else 0

    def __call__(self, epoch: int | None = None, *, shuffle_seed: int | None = None) -> Iterator:
        order = None
        if shuffle_seed is not None:
            generator = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(self.rows, generator=generator)
        for begin in range(0, self.rows, self.batch_size):
            if order is None:
                yield {k: v[begin : begin + self.batch_size] for k, v in self.tensors.items()}
            else:
                rows = order[begin : begin + self.batch_size]
                yield {k: v[rows] for k, v in self.tensors.items()}


# ----------------------------------------------------------------------------------------------
# the Ray Train worker
# ----------------------------------------------------------------------------------------------


class _Collate(ArrowBatchCollateFn):
    """``iter_torch_batches`` collate function: densify the whole mini-batch at once."""

    def __init__(self, layout: BatchLayout) -> None:
        self.layout = layout

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return arrow_to_batch(batch, self.layout)


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


def _log_mlflow(ctx: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    if ctx.get("run_id") is None:
        return
    from raymmi.track import log_metric_rows

    log_metric_rows(ctx["tracking_uri"], ctx["run_id"], [(step, metrics)])


def _worker_loop(ctx: dict[str, Any]) -> None:
    plan: TrainPlan = ctx["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(plan.threads)
    device = ray.train.torch.get_device()
    optim = plan.optim
    model, optimizer = build_model(plan, device)
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
    collate = _Collate(plan.layout)
    batch_size = int(optim["batch_size"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if plan.val_fraction > 0 else None
    extra_shard = ray.train.get_dataset_shard("extra") if ctx["has_extra"] else None

    def train_batches(epoch: int) -> Iterator[Batch]:
        return iter(
            train_shard.iter_torch_batches(
                batch_size=batch_size,
                collate_fn=collate,
                local_shuffle_buffer_size=int(optim["shuffle_buffer"]) or None,
                local_shuffle_seed=int(optim["seed"]) * 1000 + epoch,
            )
        )

    def val_batches() -> Iterable[Batch]:
        assert val_shard is not None
        return val_shard.iter_torch_batches(
            batch_size=batch_size, collate_fn=_Collate(plan.val_layout)
        )

    def extra_batches() -> Iterator[Batch]:
        assert extra_shard is not None
        return iter(extra_shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate))

    def end_epoch(epoch: int, metrics: dict[str, float], history: list[dict[str, float]]) -> None:
        last = epoch == int(optim["epochs"]) - 1
        if rank == 0:
            _log_mlflow(ctx, metrics, epoch)
        if rank == 0 and ((epoch + 1) % plan.checkpoint_every == 0 or last):
            with tempfile.TemporaryDirectory() as folder:
                write_checkpoint(
                    Path(folder),
                    model,
                    optimizer,
                    epoch=epoch,
                    config=ctx["config"],
                    metrics=metrics,
                    history=history,
                )
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"epoch-{epoch:05d}",
                )
        else:
            ray.train.report(metrics)

    io = EpochIO(
        train=train_batches,
        val=val_batches if val_shard is not None else None,
        extra=extra_batches if extra_shard is not None else None,
        reduce=lambda sums: _all_reduce(sums, world),
        end_epoch=end_epoch,
        world=world,
        before_epoch=lambda epoch: _maybe_fail(plan, rank, epoch, ctx["storage"]),
    )
    fit_epochs(plan, model, ddp, optimizer, io, device, start=start, history=history)
