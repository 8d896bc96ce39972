"""``raymmi tune MODEL``: hyperparameter searches of Ray Train runs with Ray Tune.

Every trial is a real ``raymmi train`` run (:func:`raymmi.run._train.train`) inside a Tune
function trainable: its Train run reports every epoch through a ``TuneReportCallback``, so
ASHA can stop it early. Trial drivers ask for 0.1 CPU and Train workers for a share of what is
left after one CPU stays free for the Ray Data read tasks (each asks for a whole CPU: without it
trials hold every CPU and wait forever for data, RAY_NOTES "Ray Tune").

Seeds are a dimension: with ``seeds=K`` each configuration trains K times (``optim.seed``,
``+1`` ...); Optuna sees one score per configuration, the mean over its seeds (Ray Tune's
``Repeater``), and ``results.csv`` ranks configurations by that mean with its spread.

MLflow: one parent run per search, created by the driver before any trial (a fresh SQLite
store created by several trials at once fails), one nested run per trial (the trainer's run,
tagged ``mlflow.parentRunId``), and on the parent the results table, the best config as YAML,
a heatmap of the metric over two parameters and a parallel-coordinates plot.

``resume=True`` continues an interrupted search from Ray Tune's experiment state under
``OUT/tune``: finished trials keep their results (a trial whose training had finished replays
its saved reports instead of training again), unfinished ones restart and their training
resumes from its last checkpoint under ``OUT/trials/<trial id>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from raymmi import models
from raymmi.config import RayConfig, TrackingConfig, TrainConfig, from_dict, to_dict
from raymmi.schema import RaymmiError
from raymmi.track import Run, tracked_run, tracking_uri
from raymmi.tune_space import (
    Dimension,
    SearchSpace,
    TuneConfig,
    apply_params,
    load_space,
    thaw,
)

log = logging.getLogger(__name__)

DRIVER_CPU = 0.1  # a trial's driver (the Tune function actor); 0 is refused by Tune
MIN_WORKER_CPU = 0.25  # below this a Train worker crawls
DATA_CPU = 1.0  # kept free for Ray Data read tasks, which ask for a whole CPU each
SEARCH_FILE = "search.json"
# Train settings a search may change between a run and its --resume (they do not change trials).
RESUMABLE = ("workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "overwrite")
# Per-epoch metrics that are bookkeeping, not objectives.
BOOKKEEPING = ("epoch", "epochs_done", "attempt_start_epoch", "weights_rank_spread")
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

    from raymmi.io._shardset import resolve
    from raymmi.models._batches import arrow_to_batch
    from raymmi.run._train import plan_training

    plan, shard, extra = plan_training(config)
    cls = models.model_class(plan.model_name)
    model = cls(plan.model_config, plan.layout.dims)
    fs, path = resolve(shard.file_uris()[0])
    parquet = pq.ParquetFile(path, filesystem=fs)
    columns = plan.layout.columns(set(parquet.schema_arrow.names))
    table = pa.Table.from_batches([next(parquet.iter_batches(batch_size=32, columns=columns))])
    batch = arrow_to_batch(table, plan.layout)
    terms: set[str] = set()
    epochs = int(plan.optim["epochs"])
    model.train()
    for epoch in sorted({0, max(0, epochs - 1)}):
        terms |= set(model.loss(batch, epoch=epoch).floats())
    out = {f"train_{t}": f"training loss term {t}" for t in sorted(terms)}
    if extra is not None:
        out |= {f"extra_{t}": f"loss term {t} on the --extra-data cells" for t in sorted(terms)}
    if config.val_fraction > 0:
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
    out |= {
        "epoch_seconds": "seconds per epoch",
        "cells_per_second": "training throughput",
        "data_wait_share": "share of the epoch spent waiting for data",
    }
    return out


def check_metric(metric: str, reported: Mapping[str, str], config: TrainConfig) -> None:
    """Raise unless the trainer reports ``metric`` every epoch; name the fix."""
    if metric in reported:
        return
    import difflib

    hint = ""
    bare = metric.removeprefix("val_").removeprefix("reference_")
    if bare in SCORES and config.label_key is None:
        hint = (
            f"; {metric} needs labels: give --label-key (an obs column such as cell_type) and "
            f"use val_{metric.removeprefix('val_')}"
        )
    elif metric in SCORES or metric.startswith("reference_"):
        hint = f"; {metric} is scored once after training: search on val_{metric} (every epoch)"
    elif metric.startswith("val_") and config.val_fraction == 0:
        hint = "; validation metrics need val_fraction > 0"
    else:
        close = difflib.get_close_matches(metric, list(reported), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
    msg = (
        f"--metric {metric!r} is not reported by {config.model_name!r} under this config{hint} "
        f"It reports: {', '.join(sorted(reported))}"
    )
    raise RaymmiError(msg)


# ----------------------------------------------------------------------------------------------
# the trial
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every trial needs, decided once by the search's driver."""

    out: str
    name: str
    base: Mapping[str, Any]  # training config tree (resources of the search filled in)
    fixed: Mapping[str, Any]
    keys: tuple[str, ...]
    seed: int
    tracking: TrackingConfig
    parent_run_id: str | None


def _encode(value: Any) -> Any:
    """A choice value as Optuna accepts it (lists as JSON text)."""
    if isinstance(value, tuple | list | dict):
        return "json:" + json.dumps(thaw(value))
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[len("json:") :])
    return thaw(value)


def trial_params(config: Mapping[str, Any], keys: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The searched values and the seed index of a trial's Tune config (any search)."""
    if "params" in config:  # random / grid: pre-made configurations
        values = dict(config["params"])
        index = int(config.get("seed_index", 0))
    else:  # optuna (through Repeater when seeds > 1)
        values = {k: config[k] for k in keys if k in config}
        index = int(config.get("__trial_index__", 0))
    return {k: _decode(v) for k, v in values.items()}, index


def config_id(params: Mapping[str, Any]) -> str:
    """A short stable id of a configuration (its values, not its seed)."""
    text = json.dumps({k: thaw(v) for k, v in sorted(params.items())}, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _epoch_report() -> Any:
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        """``TuneReportCallback`` adding ``epochs_done`` (ASHA's clock, right after a resume)."""

        def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
            first = dict(metrics[0]) if metrics else {}
            if "epoch" in first:
                first["epochs_done"] = int(first["epoch"]) + 1
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def _run_trial(config: dict[str, Any], setup: _Setup) -> None:
    """The Tune function trainable: one Ray Train run of one configuration and seed."""
    from ray import tune

    from raymmi.run._train import finished, train

    trial_id = tune.get_context().get_trial_id()
    folder = Path(setup.out) / "trials" / trial_id
    done = folder / "trial.json"
    if done.exists():  # trained before an interruption: replay its reports, train nothing
        saved = json.loads(done.read_text())
        for row in [*saved["history"], saved["final"]]:
            tune.report(row)
        return
    params, index = trial_params(config, setup.keys)
    seed = int(setup.base["optim"].get("seed", 0)) + index
    tree = apply_params(setup.base, {**setup.fixed, **params})
    tree["optim"]["seed"] = seed
    tree["out"] = str(folder)
    train_config = from_dict(TrainConfig, tree, where="trial")
    cid = config_id(params)
    tags = {
        "raymmi.search": setup.name,
        "raymmi.trial_id": trial_id,
        "raymmi.config_id": cid,
        "raymmi.seed": seed,
    }
    if setup.parent_run_id:
        tags["mlflow.parentRunId"] = setup.parent_run_id
    if finished(folder, embed=train_config.embed):
        # killed after its training finished but before trial.json: do not train again
        metrics = json.loads((folder / "metrics.json").read_text())
    else:
        metrics = train(
            train_config,
            tracking=setup.tracking,
            callbacks=[_epoch_report()],
            tags=tags,
            run_name=f"{setup.name}-{trial_id}",
        )
    history = _history(folder)
    final = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    final["epochs_done"] = len(history) or final.get("epoch", 0) + 1
    final["completed"] = 1.0
    saved = {"params": params, "seed": seed, "config_id": cid, "history": history, "final": final}
    tmp = folder / "trial.json.tmp"
    tmp.write_text(json.dumps(saved, default=float))
    tmp.replace(done)
    tune.report(final)


def _history(folder: Path) -> list[dict[str, float]]:
    """Per-epoch metrics from a finished training's last checkpoint."""
    checkpoints = sorted((folder / "checkpoints" / "train").glob("epoch-*/state.json"))
    if not checkpoints:
        return []
    rows = json.loads(checkpoints[-1].read_text()).get("history", [])
    return [{**r, "epochs_done": int(r.get("epoch", i)) + 1} for i, r in enumerate(rows)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ----------------------------------------------------------------------------------------------
# Tune callbacks run by the search's driver
# ----------------------------------------------------------------------------------------------


def reap_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor is dead; return how many.

    A trial that ASHA stops is killed with its Train controller, but the Train workers'
    placement group outlives them: Train V2 hands its removal to a helper that needs the
    dashboard's state API, and without it the CPUs stay reserved and later trials wait forever
    (RAY_NOTES "Ray Tune"). A placement group created by an actor that has died is reachable
    by nobody, so removing it is safe. Reads the GCS table through Ray's private state accessor
    (no public API gives the creator): pinned Ray version.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    table: Any = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]
    job = ray.get_runtime_context().get_job_id()
    accessor = state._connect_and_get_accessor()
    removed = 0
    for raw in accessor.get_placement_group_table():
        pg = table.FromString(raw)
        if pg.state == table.REMOVED or pg.is_detached:
            continue
        if ray.ActorID(pg.creator_actor_id).is_nil() or not pg.creator_actor_dead:
            continue
        if ray.JobID(pg.creator_job_id).hex() != job:
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
        removed += 1
    return removed


def _callbacks(every_s: float = 1.0) -> list[Any]:
    from ray.tune import Callback

    class Reaper(Callback):
        """Every ``every_s`` seconds, free the CPUs stopped trials' Train workers still hold."""

        def __init__(self) -> None:
            self.last = 0.0
            self.removed = 0
            self.broken = False

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            now = time.monotonic()
            if self.broken or now - self.last < every_s:
                return
            self.last = now
            try:
                self.removed += reap_orphaned_placement_groups()
            except Exception as err:  # private API: warn once, never break the search
                self.broken = True
                log.warning("cannot reap placement groups of stopped trials: %s", err)

        def get_state(self) -> dict[str, Any] | None:
            return {"removed": self.removed}

        def set_state(self, state: dict[str, Any]) -> None:
            self.removed = int(state.get("removed", 0))

    class Clock(Callback):
        """Wall time of every trial, start to end, as its driver sees it (overhead figures)."""

        def __init__(self) -> None:
            self.times: dict[str, list[float]] = {}

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.times[trial.trial_id] = [time.time(), math.nan]

        def _end(self, trial: Any) -> None:
            if trial.trial_id in self.times:
                self.times[trial.trial_id][1] = time.time()

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._end(trial)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._end(trial)

        def get_state(self) -> dict[str, Any] | None:
            return {"times": self.times}

        def set_state(self, state: dict[str, Any]) -> None:
            self.times = dict(state.get("times", {}))

    return [Reaper(), Clock()]


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------


def trial_table(
    rows: Sequence[Mapping[str, Any]], space: SearchSpace, metric: str
) -> pd.DataFrame:
    """One row per trial: its parameters, seed, metric (at its last epoch), epochs, fate."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    first = ["trial_id", "config_id", "seed", *space.keys, metric, "epochs", "status"]
    rest = [c for c in frame.columns if c not in first]
    return frame[[c for c in first if c in frame.columns] + rest]


def config_table(trials: pd.DataFrame, space: SearchSpace, metric: str, mode: str) -> pd.DataFrame:
    """One row per configuration: mean ± sd of the metric over its seeds, ranked.

    Configurations whose every seed trained to the end rank first (ASHA stops the weak ones
    early, and a metric at an early epoch is not comparable), then by the mean.
    """
    if trials.empty:
        return trials
    groups = []
    for cid, group in trials.groupby("config_id", sort=False):
        values = pd.to_numeric(group[metric], errors="coerce").dropna()
        row: dict[str, Any] = {"config_id": cid}
        for key in space.keys:
            row[key] = group[key].iloc[0]
        row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
        row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        row[metric] = _pm(row[f"{metric}_mean"], row[f"{metric}_sd"])
        row["seeds"] = len(values)
        row["completed"] = int((group["status"] == "completed").sum())
        row["stopped_early"] = int((group["status"] == "stopped").sum())
        row["failed"] = int((group["status"] == "error").sum())
        row["epochs_mean"] = float(pd.to_numeric(group["epochs"], errors="coerce").mean())
        row["all_completed"] = bool((group["status"] == "completed").all())
        row["trials"] = " ".join(group["trial_id"].astype(str))
        groups.append(row)
    table = pd.DataFrame(groups)
    ascending = mode == "min"
    table["_key"] = table[f"{metric}_mean"] * (1 if ascending else -1)
    table = table.sort_values(
        ["all_completed", "_key"], ascending=[False, True], na_position="last", kind="stable"
    ).drop(columns="_key")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def _pm(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4g} ± {sd:.2g}" if math.isfinite(sd) else f"{mean:.4g}"


def best_tree(base: Mapping[str, Any], space: SearchSpace, row: Mapping[str, Any]) -> dict:
    """The training config of a result row, loadable by ``raymmi train MODEL --config``."""
    params = {k: _decode(row[k]) for k in space.keys}
    tree = apply_params(base, {**space.fixed, **params})
    for key in ("out", "overwrite", "fault_injection"):
        tree.pop(key, None)
    return tree


# ----------------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TuneOutcome:
    """What a search produced (also on disk under ``out``)."""

    out: str
    results: pd.DataFrame
    trials: pd.DataFrame
    best: dict[str, Any]
    parent_run_id: str | None
    tracking_uri: str | None
    notes: list[str]
    wall_seconds: float
    placement_groups_reaped: int = 0


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if "://" not in path else path


def _identity(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tree.items() if k not in (*RESUMABLE, "out")}


def _search_record(
    config: TuneConfig, space: SearchSpace, base_user: Mapping[str, Any], name: str
) -> dict[str, Any]:
    settings = dataclasses.asdict(config)
    for key in ("out", "max_concurrent", "space", "name"):
        settings.pop(key)
    return {
        "name": name,
        "settings": settings,
        "space": json.loads(json.dumps(space.to_dict(), default=list)),
        "base": json.loads(json.dumps(_identity(base_user), default=list)),
    }


def _prepare_out(
    out: Path, record: Mapping[str, Any], *, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Check ``out`` against the request; return the saved search when resuming."""
    saved_path = out / SEARCH_FILE
    if overwrite and not resume and out.exists():
        shutil.rmtree(out)
    if resume:
        if not saved_path.exists():
            msg = f"--resume: {str(out)!r} holds no search to resume (no {SEARCH_FILE})"
            raise RaymmiError(msg)
        saved = json.loads(saved_path.read_text())
        diffs = [
            f"{part}: {json.dumps(saved.get(part))} -> {json.dumps(record[part])}"
            for part in ("settings", "space", "base")
            if json.loads(json.dumps(saved.get(part))) != json.loads(json.dumps(record[part]))
        ]
        if diffs:
            msg = (
                f"--resume: the search in {str(out)!r} was started with other settings "
                f"({'; '.join(diffs)}); resume with the same ones, or use a new --out"
            )
            raise RaymmiError(msg)
        return dict(saved)
    if (out / "best.yaml").exists():
        msg = f"--out {str(out)!r} holds a finished search; use --overwrite or a new --out"
        raise RaymmiError(msg)
    if saved_path.exists():
        msg = (
            f"--out {str(out)!r} holds an unfinished search: add --resume to continue it, or "
            "--overwrite to start again"
        )
        raise RaymmiError(msg)
    if out.exists() and any(out.iterdir()):
        msg = f"--out {str(out)!r} exists and is not a raymmi search folder"
        raise RaymmiError(msg)
    return None


@contextmanager
def _parent_run(
    tracking: TrackingConfig, name: str, config: Mapping[str, Any], run_id: str | None
) -> Iterator[Run]:
    if not tracking.enabled:
        yield Run(None, None)
        return
    if run_id is None:
        with tracked_run("tune", config=config, tracking=tracking, run_name=name) as run:
            yield run
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking))
    with mlflow.start_run(run_id=run_id):
        yield Run(run_id, mlflow)


def _close_orphaned_children(uri: str, parent_run_id: str) -> int:
    """Mark nested runs an interrupted search left RUNNING as KILLED; return how many."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = _child_runs(client, parent_run_id, "and status = 'RUNNING'")
    for run in runs:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


def _child_runs(client: Any, parent_run_id: str, extra: str = "") -> list[Any]:
    """Every nested run of a parent (all result pages)."""
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' {extra}".strip()
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment], filter_string=query, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _mark_stopped(uri: str, parent_run_id: str, stopped: set[str]) -> None:
    """Nested runs of trials ASHA stopped: status KILLED, tag ``raymmi.stopped_early``.

    A stopped trial's process is ended mid-training, so its run is left RUNNING (or closed
    as FINISHED by MLflow's exit hook): neither says what happened.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for run in _child_runs(client, parent_run_id):
        trial_id = run.data.tags.get("raymmi.trial_id")
        if trial_id in stopped:
            client.set_tag(run.info.run_id, "raymmi.stopped_early", "true")
            client.set_terminated(run.info.run_id, status="KILLED")
        elif run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")


def _searcher(config: TuneConfig, space: SearchSpace, trials: int) -> tuple[Any, dict, int]:
    """Search algorithm, Tune param space and Tune sample count of the search."""
    from ray import tune

    if config.search == "optuna":
        import optuna
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        dists = {d.key: _optuna_distribution(d) for d in space.dims}
        sampler = optuna.samplers.TPESampler(seed=config.seed)
        searcher: Any = OptunaSearch(
            space=dists, metric=config.metric, mode=config.mode, sampler=sampler
        )
        if config.seeds > 1:
            searcher = Repeater(searcher, repeat=config.seeds, set_index=True)
        return searcher, {}, trials * config.seeds
    configs = space.grid() if config.search == "grid" else space.sample(trials, config.seed)
    param_space = {
        "params": tune.grid_search([{k: thaw(v) for k, v in c.items()} for c in configs]),
        "seed_index": tune.grid_search(list(range(config.seeds))),
    }
    return None, param_space, 1


def _optuna_distribution(dim: Dimension) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if dim.is_range:
        assert dim.low is not None and dim.high is not None
        if dim.integer:
            return IntDistribution(math.ceil(dim.low), math.floor(dim.high), log=dim.log)
        return FloatDistribution(dim.low, dim.high, log=dim.log)
    return CategoricalDistribution([_encode(v) for v in dim.values])


def _collect(
    grid: Any, setup: _Setup, space: SearchSpace, metric: str, times: Mapping[str, list]
) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        path = Path(result.path) if result.path else None
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or (path.name.removeprefix("trial_") if path else "")
        params, index = trial_params(result.config or {}, space.keys)
        done = Path(setup.out) / "trials" / trial_id / "trial.json"
        if result.error is not None:
            status = "error"
        elif done.exists():
            status = "completed"
        else:
            status = "stopped"
        frame = result.metrics_dataframe
        epoch_seconds = (
            float(pd.to_numeric(frame["epoch_seconds"], errors="coerce").iloc[:-1].sum())
            if frame is not None and "epoch_seconds" in frame and status == "completed"
            else float(pd.to_numeric(frame["epoch_seconds"], errors="coerce").sum())
            if frame is not None and "epoch_seconds" in frame
            else math.nan
        )
        start, end = times.get(trial_id, [math.nan, math.nan])
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "config_id": config_id(params),
            "seed": int(setup.base["optim"].get("seed", 0)) + index,
            **{k: _cell(params.get(k)) for k in space.keys},
            metric: metrics.get(metric, math.nan),
            "epochs": int(metrics.get("epochs_done", 0) or 0),
            "status": status,
            "error": "" if result.error is None else _last_line(result.error),
            "wall_seconds": end - start,
            "epoch_seconds": epoch_seconds,
            "train_seconds": metrics.get("train_seconds", math.nan)
            if status == "completed"
            else math.nan,
        }
        for key in ("val_loss", "train_loss", *SCORES, *(f"val_{s}" for s in SCORES)):
            if key != metric and key in metrics:
                row[key] = metrics[key]
        rows.append(row)
    return rows


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def tune(
    config: TuneConfig,
    base: TrainConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
) -> TuneOutcome:
    """Search ``config.space`` around the training config ``base``; see the module docstring.

    Writes ``OUT/search.json`` first, then ``OUT/tune/`` (Ray Tune state), ``OUT/trials/``,
    ``OUT/trials.csv``, ``OUT/results.csv`` and, last, ``OUT/best.yaml``.

    Raises
    ------
    RaymmiError
        A bad space (unknown key, empty range), a metric the model never reports, an ``OUT``
        holding another search, a cluster too small for one trial, every trial failing, or an
        interrupted search (rerun with ``resume=True``).
    """
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    from raymmi.run._runtime import init_ray
    from raymmi.run._train import resolve_optim

    started = time.perf_counter()
    tracking = tracking or TrackingConfig()
    out = Path(config.out).resolve()
    cls = models.model_class(base.model_name)
    base = dataclasses.replace(
        base, data=_absolute(base.data), extra_data=base.extra_data and _absolute(base.extra_data)
    )
    base_user = to_dict(base)
    space = load_space(config.space, cls.Config, base=base_user)
    if config.search == "grid":
        trials = space.grid_size()
    else:
        assert config.trials is not None
        trials = config.trials
    notes: list[str] = []
    if config.search == "grid" and config.trials not in (None, trials):
        notes.append(f"--search grid runs all {trials} configurations of the grid (not --trials)")
    reported = reported_metrics(base)
    check_metric(config.metric, reported, base)
    name = config.name or f"tune-{base.model_name}"
    record = _search_record(config, space, base_user, name)
    saved = _prepare_out(out, record, resume=resume, overwrite=overwrite)
    if saved is not None and (out / "best.yaml").exists():
        notes.append(f"the search in {out} had already finished; nothing to resume")
        return _finished(out, saved, notes, started)
    if saved is not None:
        name = saved["name"]

    resources = init_ray(ray_config)
    plan = plan_resources(
        float(resources.get("CPU", 1)),
        workers=base.workers,
        cpus_per_worker=base.cpus_per_worker,
        max_concurrent=config.max_concurrent,
        trials=trials * config.seeds,
    )
    notes += list(plan.notes)
    for note in plan.notes:
        print(f"raymmi tune: {note}", flush=True)
    label_score = config.metric.removeprefix("val_").removeprefix("reference_") in SCORES
    trial_base = dict(base_user)
    trial_base["cpus_per_worker"] = plan.cpus_per_worker
    trial_base["embed"] = config.trial_embeddings
    if label_score:
        trial_base["score_every"] = 1  # Tune needs the metric in every report
    epochs = int(resolve_optim(cls, base.optim)["epochs"])
    uri = tracking_uri(tracking) if tracking.enabled else None
    trial_tracking = dataclasses.replace(tracking, uri=uri)

    out.mkdir(parents=True, exist_ok=True)
    parent_config = {
        "search": {**record["settings"], "name": name, "trials": trials, "epochs": epochs},
        "space": record["space"],
        "base": _identity(base_user),
        "resources": {
            "concurrent": plan.concurrent,
            "cpus_per_worker": plan.cpus_per_worker,
            "driver_cpu": DRIVER_CPU,
        },
    }
    parent_id = saved.get("parent_run_id") if saved else None
    with _parent_run(trial_tracking, name, parent_config, parent_id) as parent:
        if saved is None:
            (out / SEARCH_FILE).write_text(
                json.dumps({**record, "parent_run_id": parent.run_id}, indent=2, default=list)
            )
        elif parent.run_id and uri:
            killed = _close_orphaned_children(uri, parent.run_id)
            if killed:
                notes.append(f"marked {killed} nested run(s) of the interrupted search KILLED")
        parent.set_tags({"raymmi.model": base.model_name, "raymmi.search": name})
        if saved is None:
            _log_inputs(parent, base)
        setup = _Setup(
            out=str(out),
            name=name,
            base=trial_base,
            fixed=dict(space.fixed),
            keys=space.keys,
            seed=config.seed,
            tracking=trial_tracking,
            parent_run_id=parent.run_id,
        )
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(_run_trial, setup=setup), {"cpu": DRIVER_CPU}
        )
        ours = _callbacks()
        storage = out / "tune"
        experiment = storage / name
        if saved is not None and ray_tune.Tuner.can_restore(str(experiment)):
            tuner = ray_tune.Tuner.restore(
                str(experiment), trainable, resume_unfinished=True, resume_errored=True
            )
            print(f"raymmi tune: resuming {experiment}", flush=True)
        else:
            scheduler = None
            if config.scheduler == "asha":
                scheduler = ASHAScheduler(
                    time_attr="epochs_done",
                    max_t=epochs,
                    grace_period=min(config.grace_period, epochs),
                    reduction_factor=config.reduction_factor,
                    stop_last_trials=False,
                )
            search_alg, param_space, samples = _searcher(config, space, trials)
            tuner = ray_tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=ray_tune.TuneConfig(
                    metric=config.metric,
                    mode=config.mode,
                    search_alg=search_alg,
                    scheduler=scheduler,
                    num_samples=samples,
                    max_concurrent_trials=plan.concurrent,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=ray_tune.RunConfig(
                    name=name,
                    storage_path=str(storage),
                    callbacks=[*ours, *callbacks],
                    failure_config=ray_tune.FailureConfig(max_failures=0),
                    verbose=1,
                ),
            )
        grid = tuner.fit()
        clock = next((c for c in _live_callbacks(tuner) if hasattr(c, "times")), None)
        reaper = next((c for c in _live_callbacks(tuner) if hasattr(c, "removed")), None)
        times = clock.times if clock is not None else {}
        rows = _collect(grid, setup, space, config.metric, times)
        if grid.num_terminated + grid.num_errors < len(grid):
            msg = (
                f"the search stopped with {len(grid) - grid.num_terminated - grid.num_errors} "
                f"trial(s) unfinished; continue it with --resume (same --out {str(out)!r})"
            )
            raise RaymmiError(msg)
        trials_frame = trial_table(rows, space, config.metric)
        if trials_frame.empty or (trials_frame["status"] == "error").all():
            first = trials_frame["error"].iloc[0] if not trials_frame.empty else "no trial ran"
            msg = f"every trial failed; the first: {first}"
            raise RaymmiError(msg)
        if parent.run_id and uri:
            stopped = trials_frame.loc[trials_frame["status"] == "stopped", "trial_id"]
            _mark_stopped(uri, parent.run_id, set(stopped.astype(str)))
        results = config_table(trials_frame, space, config.metric, config.mode)
        best_row = results.iloc[0].to_dict()
        best = best_tree(base_user, space, best_row)
        _log_parent(parent, trials_frame, results, best, space, config, best_row)
        trials_frame.to_csv(out / "trials.csv", index=False)
        results.to_csv(out / "results.csv", index=False)
        header = (
            f"# raymmi tune {name}: best of {len(results)} configurations by {config.metric} "
            f"({config.mode}) = {best_row[config.metric]} over {best_row['seeds']} seed(s)\n"
            f"# retrain: raymmi train {base.model_name} --config best.yaml --out DIR\n"
        )
        tmp = out / "best.yaml.tmp"
        tmp.write_text(header + yaml.safe_dump(best, sort_keys=False))
        tmp.replace(out / "best.yaml")  # the commit marker: written last
    return TuneOutcome(
        out=str(out),
        results=results,
        trials=trials_frame,
        best=best,
        parent_run_id=parent.run_id,
        tracking_uri=uri,
        notes=notes,
        wall_seconds=time.perf_counter() - started,
        placement_groups_reaped=reaper.removed if reaper is not None else 0,
    )


def _log_inputs(parent: Run, base: TrainConfig) -> None:
    """Record the search's input shard sets on the parent, before any trial starts.

    Every trial's run logs the same data set as its input; MLflow creates the data set's row
    on first use, and two trials starting together both tried to (``UNIQUE constraint failed:
    datasets...`` on SQLite, one trial lost). Created here first, the trials only reuse it.
    """
    from raymmi.io import open_shard_set

    for uri in (base.data, base.extra_data):
        if uri:
            parent.log_shard_set(uri, open_shard_set(uri).manifest.to_dict(), context="input")


def _live_callbacks(tuner: Any) -> list[Any]:
    """The callbacks the search ran with (restored ones after ``Tuner.restore``)."""
    try:
        run_config = tuner._local_tuner.get_run_config()
        return list(run_config.callbacks or [])
    except AttributeError:
        return []


def _finished(
    out: Path, saved: Mapping[str, Any], notes: list[str], started: float
) -> TuneOutcome:
    results = pd.read_csv(out / "results.csv")
    trials = pd.read_csv(out / "trials.csv")
    best = yaml.safe_load((out / "best.yaml").read_text())
    return TuneOutcome(
        out=str(out),
        results=results,
        trials=trials,
        best=best,
        parent_run_id=saved.get("parent_run_id"),
        tracking_uri=None,
        notes=notes,
        wall_seconds=time.perf_counter() - started,
    )


def _log_parent(
    parent: Run,
    trials: pd.DataFrame,
    results: pd.DataFrame,
    best: Mapping[str, Any],
    space: SearchSpace,
    config: TuneConfig,
    best_row: Mapping[str, Any],
) -> None:
    if not parent.enabled:
        return
    from raymmi import plots

    metric = config.metric
    parent.log_table(results, "tune/results.csv")
    parent.log_table(trials, "tune/trials.csv")
    parent.log_dict(dict(best), "tune/best.yaml")
    mean = best_row.get(f"{metric}_mean")
    summary: dict[str, Any] = {
        f"best_{metric}_mean": mean,
        f"best_{metric}_sd": best_row.get(f"{metric}_sd"),
        "configurations": len(results),
        "trials": len(trials),
        "trials_completed": int((trials["status"] == "completed").sum()),
        "trials_stopped_early": int((trials["status"] == "stopped").sum()),
        "trials_failed": int((trials["status"] == "error").sum()),
        "epochs_trained": int(pd.to_numeric(trials["epochs"], errors="coerce").sum()),
    }
    parent.log_metrics({k: v for k, v in summary.items() if _is_number(v)})
    parent.set_tags({"raymmi.best_config_id": best_row.get("config_id")})
    frame = results.copy()
    frame[f"{metric}_mean"] = pd.to_numeric(frame[f"{metric}_mean"], errors="coerce")
    pair = heatmap_axes(space)
    if pair is not None and len(frame) >= 2:
        x, y = pair
        # ranges: about sqrt(n) bins per axis; grids and choices: one cell per value
        bins = max(
            2,
            min(6, round(math.sqrt(len(frame)))),
            *(len(space.dim(k).values) for k in pair),
        )
        figure = plots.metric_heatmap(
            frame,
            x,
            y,
            f"{metric}_mean",
            log_x=space.dim(x).log,
            log_y=space.dim(y).log,
            bins=bins,
            mode=config.mode,
        )
        parent.log_figure(figure, "tune/heatmap.png")
    figure = plots.parallel_coordinates(
        frame,
        list(space.keys),
        f"{metric}_mean",
        log=[d.key for d in space.dims if d.log],
        mode=config.mode,
        highlight=0,
    )
    parent.log_figure(figure, "tune/parallel_coordinates.png")


def heatmap_axes(space: SearchSpace) -> tuple[str, str] | None:
    """The two parameters of the heatmap: γ x λ when searched, else the two most varied."""
    keys = space.keys
    if "model.gamma" in keys and "model.lam" in keys:
        return "model.gamma", "model.lam"
    if len(keys) < 2:
        return None
    ranked = sorted(space.dims, key=lambda d: (not d.is_range, -len(d.values)), reverse=False)
    return ranked[0].key, ranked[1].key


def summary_lines(outcome: TuneOutcome, metric: str, *, top: int = 5) -> list[str]:
    """A few printable lines: the ranking's top rows and the best configuration."""
    results = outcome.results
    params = [
        c
        for c in results.columns
        if c.startswith(("model.", "optim.")) or c in ("hybrid_every", "val_fraction")
    ]
    shown = results[["rank", *params, metric, "seeds", "completed", "stopped_early"]].head(top)
    lines = shown.to_string(index=False).splitlines()
    return lines
