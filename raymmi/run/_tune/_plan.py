"""``raymmi tune``: resources of a search and the metrics its trials can be ranked by."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from raymmi import models
from raymmi.config import TrainConfig
from raymmi.run._train._plan import resolve_val_fraction
from raymmi.schema import RaymmiError

DRIVER_CPU = 0.1  # a trial's driver (the Tune function actor); 0 is refused by Tune
MIN_WORKER_CPU = 0.25  # below this a Train worker crawls
DATA_CPU = 1.0  # kept free for Ray Data read tasks, which ask for a whole CPU each
SCORES = ("ari", "nmi", "silhouette")


# ----------------------------------------------------------------------------------------------
# resources
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResourcePlan:
    """Trials at once, CPUs per Train worker, and what was capped (to print)."""

    concurrent: int
    cpus_per_worker: float
    notes: tuple[str, ...] = ()

    @property
    def per_trial(self) -> float:
        return DRIVER_CPU + self.cpus_per_worker


def plan_resources(
    cluster_cpus: float,
    *,
    workers: int,
    cpus_per_worker: float | None,
    max_concurrent: int | None,
    trials: int,
) -> ResourcePlan:
    """Decide how many trials run at once and how many CPUs each Train worker gets.

    One CPU stays free for the Ray Data read tasks; each trial holds ``0.1`` CPU for its
    driver plus ``workers x cpus_per_worker``. With ``cpus_per_worker`` unset, workers get up
    to one CPU each, less (down to 0.25) so that at least two trials run at once.

    Raises
    ------
    RaymmiError
        A cluster too small for even one trial.
    """
    free = cluster_cpus - DATA_CPU
    smallest = DRIVER_CPU + workers * (cpus_per_worker or MIN_WORKER_CPU)
    fit = math.floor(free / smallest + 1e-9) if free > 0 else 0
    if fit < 1:
        msg = (
            f"one trial needs {smallest:g} CPUs ({DRIVER_CPU:g} for its driver + {workers} "
            f"worker(s) x {cpus_per_worker or MIN_WORKER_CPU:g}) besides the {DATA_CPU:g} CPU "
            f"kept free for Ray Data reads; the cluster has {cluster_cpus:g}. Use fewer "
            "--workers or --cpus-per-worker, or a larger cluster"
        )
        raise RaymmiError(msg)
    notes: list[str] = []
    if max_concurrent is not None and max_concurrent > fit:
        notes.append(
            f"--max-concurrent {max_concurrent} is more than the cluster can place: each trial "
            f"needs at least {smallest:g} CPUs ({DRIVER_CPU:g} driver + {workers} worker(s) x "
            f"{cpus_per_worker or MIN_WORKER_CPU:g}) and {DATA_CPU:g} of the "
            f"{cluster_cpus:g} CPUs stays free for Ray Data reads; capping at {fit}"
        )
    if max_concurrent is not None:
        concurrent = min(max_concurrent, fit)
    else:
        at_one = math.floor(free / (DRIVER_CPU + workers * (cpus_per_worker or 1.0)) + 1e-9)
        concurrent = max(at_one, min(2, fit))
    concurrent = max(1, min(concurrent, trials))
    if cpus_per_worker is None:
        share = (free / concurrent - DRIVER_CPU) / workers
        cpus_per_worker = max(MIN_WORKER_CPU, min(1.0, math.floor(share * 1000) / 1000))
    return ResourcePlan(concurrent, float(cpus_per_worker), tuple(notes))


@dataclasses.dataclass(frozen=True)
class TrialResources:
    """In-process trials: resources of one trial, how many run at once, torch threads."""

    concurrent: int
    cpus: float
    gpus: float
    threads: int
    notes: tuple[str, ...] = ()


def _describe(nodes: list[Mapping[str, float]]) -> str:
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    sizes = ", ".join(
        f"{float(n.get('CPU', 0)):g} CPU" + (f" + {float(n['GPU']):g} GPU" if n.get("GPU") else "")
        for n in nodes
    )
    return f"{len(nodes)} node(s) with {cpus:g} CPUs and {gpus:g} GPUs in all ({sizes})"


def plan_trials(
    nodes: list[Mapping[str, float]],
    *,
    cpus_per_trial: float | None,
    gpus_per_trial: float,
    max_concurrent: int | None,
    trials: int,
) -> TrialResources:
    """Check that one in-process trial fits a node of the cluster; decide how many run at once.

    ``nodes`` are the alive nodes' resources (``ray.nodes()``). A trial asks for
    ``cpus_per_trial`` CPUs (default 1, less on a node smaller than that) and
    ``gpus_per_trial`` GPUs; trials at once are what the nodes can place.

    Raises
    ------
    RaymmiError
        GPUs asked for on a cluster without any, or more CPUs or GPUs per trial than the
        largest node has: the message says what the cluster has.
    """
    if not nodes:
        msg = "the Ray cluster has no alive node"
        raise RaymmiError(msg)
    largest_cpu = max(float(n.get("CPU", 0)) for n in nodes)
    largest_gpu = max(float(n.get("GPU", 0)) for n in nodes)
    if gpus_per_trial > 0 and largest_gpu == 0:
        msg = (
            f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs, but the cluster has none: "
            f"{_describe(nodes)}. Drop --gpus-per-trial (trials train on CPUs) or connect to "
            "a cluster with GPUs (--address)"
        )
        raise RaymmiError(msg)
    if gpus_per_trial > largest_gpu:
        msg = (
            f"--gpus-per-trial {gpus_per_trial:g} is more than any node has (the largest has "
            f"{largest_gpu:g}): {_describe(nodes)}. Use --gpus-per-trial {largest_gpu:g} or less"
        )
        raise RaymmiError(msg)
    if cpus_per_trial is not None and cpus_per_trial > largest_cpu:
        msg = (
            f"--cpus-per-trial {cpus_per_trial:g} is more than any node has (the largest has "
            f"{largest_cpu:g}): {_describe(nodes)}. Use --cpus-per-trial {largest_cpu:g} or less"
        )
        raise RaymmiError(msg)
    cpus = cpus_per_trial if cpus_per_trial is not None else min(1.0, largest_cpu)
    if cpus <= 0:
        msg = f"the cluster has no CPU to run a trial on: {_describe(nodes)}"
        raise RaymmiError(msg)
    fit = 0
    for node in nodes:
        by_cpu = math.floor(float(node.get("CPU", 0)) / cpus + 1e-9)
        by_gpu = (
            math.floor(float(node.get("GPU", 0)) / gpus_per_trial + 1e-9)
            if gpus_per_trial > 0
            else by_cpu
        )
        fit += min(by_cpu, by_gpu)
    notes: list[str] = []
    concurrent = fit
    if max_concurrent is not None:
        if max_concurrent > fit:
            notes.append(
                f"--max-concurrent {max_concurrent} is more than the cluster can place: each "
                f"trial needs {cpus:g} CPU(s)"
                + (f" and {gpus_per_trial:g} GPU" if gpus_per_trial else "")
                + f" on {_describe(nodes)}; capping at {fit}"
            )
        concurrent = min(max_concurrent, fit)
    concurrent = max(1, min(concurrent, trials))
    return TrialResources(
        concurrent, float(cpus), float(gpus_per_trial), max(1, math.floor(cpus)), tuple(notes)
    )


# ----------------------------------------------------------------------------------------------
# metrics the trainer reports
# ----------------------------------------------------------------------------------------------


def reported_metrics(config: TrainConfig) -> dict[str, str]:
    """Every metric the trainer reports each epoch under ``config``, with what it is.

    The loss terms come from the model itself: it is built on the data's dimensions and its
    loss is evaluated on the first few cells (at the first and at the last epoch, for terms
    that start after a warm-up).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymmi.io import resolve
    from raymmi.models import arrow_to_batch
    from raymmi.run._train._driver import plan_training

    plan, shard, extra = plan_training(config)
    cls = models.model_class(plan.model_name)
    model = cls(plan.model_config, plan.layout.dims)
    fs, path = resolve(shard.file_uris()[0])
    parquet = pq.ParquetFile(path, filesystem=fs)
    columns = plan.layout.columns(set(parquet.schema_arrow.names))
    table = pa.Table.from_batches([next(parquet.iter_batches(batch_size=32, columns=columns))])
    batch = arrow_to_batch(table, plan.layout)
    terms: set[str] = set()
    model.train()
    terms |= set(model.objective(batch).floats())
    out = {f"train_{t}": f"training loss term {t}" for t in sorted(terms)}
    if extra is not None:
        out |= {f"extra_{t}": f"loss term {t} on the --extra-data cells" for t in sorted(terms)}
    if resolve_val_fraction(config) > 0:
        out |= {f"val_{t}": f"validation loss term {t}" for t in sorted(terms)}
        if config.label_key is not None:
            out |= {
                f"val_{s}": f"{s} of the validation embedding vs {config.label_key}"
                for s in SCORES
            }
            if model.reference(batch) is not None:
                out |= {
                    f"val_reference_{s}": f"{s} of the reference embedding (the same in "
                    "every trial: a baseline, not an objective)"
                    for s in SCORES
                }
    if config.label_key is not None and config.workers == 1:
        out |= {
            f"all_{s}": f"{s} of every cell's embedding vs {config.label_key} (in-process and "
            "packed trials; sets score_all)"
            for s in SCORES
        }
    out |= {
        "epoch_seconds": "seconds per epoch",
        "cells_per_second": "training throughput",
        "data_wait_share": "share of the epoch spent waiting for data",
    }
    return out


def score_name(metric: str) -> str:
    """The label score a metric names, without its ``val_`` / ``reference_`` / ``all_`` prefix."""
    return metric.removeprefix("val_").removeprefix("reference_").removeprefix("all_")


def check_metric(metric: str, reported: Mapping[str, str], config: TrainConfig) -> None:
    """Raise unless the trainer reports ``metric`` every epoch; name the fix."""
    if metric in reported:
        return
    import difflib

    hint = ""
    bare = score_name(metric)
    if bare in SCORES and config.label_key is None:
        hint = (
            f"; {metric} needs labels: give --label-key (an obs column such as cell_type) and "
            f"use val_{bare} or all_{bare}"
        )
    elif metric.startswith("all_") and bare in SCORES:
        hint = (
            f"; {metric} scores every cell in one-worker (in-process) trials: with --workers "
            f"{config.workers} search on val_{bare}"
        )
    elif metric in SCORES or metric.startswith("reference_"):
        hint = f"; {metric} is scored once after training: search on val_{metric} (every epoch)"
    elif metric.startswith("val_") and resolve_val_fraction(config) == 0:
        hint = "; validation metrics need val_fraction > 0 (--set val_fraction=0.1)"
    else:
        close = difflib.get_close_matches(metric, list(reported), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
    msg = (
        f"--metric {metric!r} is not reported by {config.model_name!r} under this config{hint} "
        f"It reports: {', '.join(sorted(reported))}"
    )
    raise RaymmiError(msg)
