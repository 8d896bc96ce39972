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

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from raymmi.config import RayConfig, TrackingConfig, TrainConfig, to_dict
from raymmi.io import ShardSetWriter, claiming, work_dir
from raymmi.run._logs import EpochPrinter, train_log_level
from raymmi.run._plates._driver import producer
from raymmi.run._runtime import init_ray
from raymmi.run._train._embed import _embed, _is_number, _log_plots
from raymmi.run._train._loop import _latest_written_checkpoint as _latest_written_checkpoint
from raymmi.run._train._loop import _worker_loop
from raymmi.run._train._plan import TrainPlan as TrainPlan
from raymmi.run._train._plan import _cpus_per_worker as _cpus_per_worker
from raymmi.run._train._plan import _datasets, plan_training
from raymmi.run._train._plan import resolve_optim as resolve_optim
from raymmi.run._train._plan import split_mask as split_mask
from raymmi.schema import Manifest, RaymmiError
from raymmi.track import Run, tracked_run, tracking_uri

# Settings that may change between a run and its resumption (they do not change the model).
RESUMABLE_KEYS = ("workers", "gpus_per_worker", "cpus_per_worker", "max_failures", "overwrite")


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


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
    if config.overwrite:  # a fresh run in staging, swapped in when done (raymmi.io._dest)
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


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": (config.data, config.extra_data),
        "overwrite": config.overwrite,
        "exists_ok": True,
        "marker": "embeddings/_manifest.json" if config.embed else "metrics.json",
    }
)
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
    if config.score_all:
        msg = (
            "--score-all scores every cell at each epoch in raymmi tune's in-process trials; "
            "raymmi train scores every cell once, after training (ari, nmi in metrics.json): "
            "drop --score-all"
        )
        raise RaymmiError(msg)
    plan, shard, extra = plan_training(config)
    resumed = _prepare_out(config)
    resources = init_ray(ray_config)
    cpus = _cpus_per_worker(config, resources)
    plan = dataclasses.replace(plan, threads=max(1, math.floor(cpus)))
    out = work_dir(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(_model_identity(config), sort_keys=False))
    cfg = to_dict(config)
    cfg["optim_resolved"] = dict(plan.optim)
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    with tracked_run(
        "train",
        config=cfg,
        tracking=tracking,
        run_name=run_name or f"train {plan.model_name} {Path(config.data).name}",
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
                logging_config=LoggingConfig(log_level=train_log_level()),
            ),
            datasets=dict(_datasets(plan, shard, extra)),
        )
        printer = (
            contextlib.nullcontext()
            if callbacks
            else EpochPrinter(out / "checkpoints" / "train", epochs=plan.optim.get("epochs"))
        )
        try:
            with printer:
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
    # once, at the last epoch's step: a metric logged at step 0 after the per-epoch curves
    # draws a false line back to the start of the chart; the curves' own keys are not repeated
    per_epoch = set(history.columns)
    run.log_metrics(
        {k: float(v) for k, v in metrics.items() if _is_number(v) and k not in per_epoch},
        step=int(metrics.get("epoch", 0)),
    )
    run.log_dict(metrics, "metrics.json")
    _log_plots(run, history, samples)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=float))
    tmp.replace(out / "metrics.json")
