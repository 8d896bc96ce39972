"""``raymmi tune MODEL``: hyperparameter searches of ``raymmi train`` runs with Ray Tune.

Two kinds of trials, one training loop (:func:`raymmi.run._train._loop.fit_epochs`):

- **In-process** (one worker, the default): the Tune function trainable trains in its own
  process (:mod:`raymmi.run._tune._inprocess`): no ``TorchTrainer``, no Train controller, no
  worker group. The driver decodes the cells once and hands them to every trial through the
  object store (``tune.with_parameters``); trial actors are reused (``reuse_actors``), each
  trial asks for ``--cpus-per-trial`` (default 1) and ``--gpus-per-trial`` (fractional), and
  the driver checks that a trial fits a node before anything starts.
- **Ray Train** (``--workers N > 1``, ``--trial-embeddings``, or cells too large to decode
  into a quarter of the object store): every trial is a real ``raymmi train`` run
  (:func:`raymmi.run._train.train`) inside a function trainable; its Train run reports every
  epoch through a ``TuneReportCallback``. Trial drivers ask for 0.1 CPU and Train workers for
  a share of what is left after one CPU stays free for the Ray Data read tasks (each asks for
  a whole CPU: without it trials hold every CPU and wait forever for data).

Seeds are a dimension: with ``seeds=K`` each configuration trains K times (``optim.seed``,
``+1`` ...); Optuna sees one score per configuration, the mean over its seeds (Ray Tune's
``Repeater``), and ``results.csv`` ranks configurations by that mean with its spread.

MLflow: one parent run per search, created by the driver before any trial (a fresh SQLite
store created by several trials at once fails), one nested run per trial (tagged
``mlflow.parentRunId``; in-process trials log it with a few ``log_batch`` calls through one
client per process, :mod:`raymmi.track`), and on the parent the results table, the best
config as YAML, a heatmap of the metric over two parameters and a parallel-coordinates plot.

``--pack K``: random and grid searches form their packs up front (:func:`_packs`, grouped by
architecture) and Tune grid-searches the pack indices; ``--search optuna`` asks each pack's K
configurations from one Optuna study when the pack starts and tells each its own result when it
ends (:mod:`raymmi.run._tune._packsearch`; the keys that change the architecture are asked once
per pack).

``resume=True`` continues an interrupted search from Ray Tune's experiment state under
``OUT/tune``: finished trials keep their results (a trial whose training had finished replays
its saved reports instead of training again), unfinished ones restart and their training
resumes from its last checkpoint under ``OUT/trials/<trial id>``. A finished pack
(``OUT/trials/<id>/pack.json``) is not trained again; an unfinished pack keeps no checkpoint
and trains again from its first epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from raymmi import models
from raymmi.config import RayConfig, TrackingConfig, TrainConfig, to_dict
from raymmi.io import claiming, work_dir
from raymmi.run._logs import verbose
from raymmi.run._tune._callbacks import _callbacks
from raymmi.run._tune._inprocess import MEMORY_SHARE, TrialData, trial_data
from raymmi.run._tune._mlflow import (
    _log_inputs,
    _log_parent,
    _parent_run,
)
from raymmi.run._tune._pack import (
    Rungs,
    _run_pack_trial,
    check_pack,
    make_packs,
    member_plans,
    member_rows,
    pack_key,
)
from raymmi.run._tune._plan import (
    DRIVER_CPU,
    SCORES,
    ResourcePlan,
    TrialResources,
    check_metric,
    plan_resources,
    plan_trials,
    reported_metrics,
    score_name,
)
from raymmi.run._tune._tables import (
    _collect,
    best_tree,
    config_table,
    heatmap_axes,
    trial_table,
)
from raymmi.run._tune._trial import (
    _encode,
    _run_inprocess_trial,
    _run_trial,
    _Setup,
    _trial_dirname,
    trial_params,
)
from raymmi.schema import RaymmiError
from raymmi.track import close_orphaned_children, mark_stopped, run_label, tracking_uri
from raymmi.tune_space import (
    Dimension,
    SearchSpace,
    TuneConfig,
    load_space,
    thaw,
)

SEARCH_FILE = "search.json"
# Train settings a search may change between a run and its --resume (they do not change trials).
RESUMABLE = ("workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "overwrite")

# What other code imports from this module (raymmi.run, raymmi.cli, tests/test_tune_space.py,
# jobs/bench_tune.py), some of it defined in the _tune_* modules.
__all__ = [
    "DRIVER_CPU",
    "ResourcePlan",
    "TuneOutcome",
    "_callbacks",
    "best_tree",
    "check_metric",
    "config_table",
    "heatmap_axes",
    "plan_resources",
    "summary_lines",
    "trial_params",
    "tune",
]


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
    # seconds of the driver's phases: "setup" (checks, data, MLflow parent, until Tune starts),
    # "trials" (Tune's fit), "report" (tables, plots, best.yaml)
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


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


def _searcher(config: TuneConfig, space: SearchSpace, trials: int) -> tuple[Any, dict, int]:
    """Search algorithm, Tune param space and Tune sample count of the search."""
    from ray import tune

    if config.search == "optuna":
        import optuna

        if not verbose():  # it announces every in-memory study it creates
            optuna.logging.set_verbosity(optuna.logging.WARNING)
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


@claiming(
    lambda config, base, **kw: {
        "uri": config.out,
        "inputs": (base.data, base.extra_data),
        "overwrite": kw.get("overwrite", False) and not kw.get("resume", False),
        "exists_ok": True,
        "marker": "best.yaml",
    }
)
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
    from raymmi.run._train._driver import resolve_optim

    started = time.perf_counter()
    tracking = tracking or TrackingConfig()
    out = work_dir(config.out)  # a staging sibling under --overwrite (raymmi.io._dest)
    cls = models.model_class(base.model_name)
    base = dataclasses.replace(
        base, data=_absolute(base.data), extra_data=base.extra_data and _absolute(base.extra_data)
    )
    if base.val_fraction is None and config.metric.startswith("val_") and not cls.val_fraction:
        # a validation metric needs held-out cells, even for a model that trains on all of them
        base = dataclasses.replace(base, val_fraction=0.1)
        notes_held = [
            f"--metric {config.metric} needs held-out cells: 10% of the cells are held out "
            f"({cls.name} trains on every cell by default; set val_fraction to change it)"
        ]
    else:
        notes_held = []
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
    in_process, path_notes = _in_process(config, base)
    check_pack(config, in_process)
    data: Any = None
    train_plan: Any = None
    if in_process:
        trial_res = _trial_resources(config, trials)
        train_plan, data = _decoded(base)
        limit = MEMORY_SHARE * float(resources.get("object_store_memory", 0))
        if data.nbytes > limit:
            in_process = False
            path_notes.append(
                f"the decoded cells ({data.nbytes / 2**20:.0f} MB) exceed "
                f"{MEMORY_SHARE:.0%} of the object store: trials run as Ray Train runs"
            )
            data = None
    printed: list[str] = list(notes_held)
    if in_process:
        printed += list(trial_res.notes)
        resource_record: dict[str, Any] = {
            "trials": "in-process",
            "concurrent": trial_res.concurrent,
            "cpus_per_trial": trial_res.cpus,
            "gpus_per_trial": trial_res.gpus,
        }
        concurrent = trial_res.concurrent
    else:
        plan = plan_resources(
            float(resources.get("CPU", 1)),
            workers=base.workers,
            cpus_per_worker=base.cpus_per_worker,
            max_concurrent=config.max_concurrent,
            trials=trials * config.seeds,
        )
        printed += list(plan.notes)
        resource_record = {
            "trials": "ray-train",
            "concurrent": plan.concurrent,
            "cpus_per_worker": plan.cpus_per_worker,
            "driver_cpu": DRIVER_CPU,
        }
        concurrent = plan.concurrent
    printed += path_notes
    notes += printed
    for note in printed:
        print(f"raymmi tune: {note}", flush=True)
    bare = score_name(config.metric)
    label_score = bare in SCORES
    trial_base = dict(base_user)
    if config.metric.startswith("all_") or base.score_all:
        if not in_process:
            asked = (
                f"--metric {config.metric}" if config.metric.startswith("all_") else "--score-all"
            )
            msg = (
                f"{asked} scores every cell in in-process trials, and this search's trials "
                f"run as Ray Train runs ({'; '.join(path_notes) or 'Train'}): search on "
                f"val_{bare}, or drop what sends trials to Ray Train"
            )
            raise RaymmiError(msg)
        trial_base["score_all"] = True
    if not in_process:
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
        "resources": resource_record,
    }
    parent_id = saved.get("parent_run_id") if saved else None
    # the parent run says what was searched: "tune cite_pre umint val_ari (24 trials)"
    parent_name = config.name or (
        f"{run_label('tune', {'data': base.data, 'model_name': base.model_name})} "
        f"{config.metric} ({trials} trials)"
    )
    with _parent_run(trial_tracking, parent_name, parent_config, parent_id) as parent:
        if saved is None:
            (out / SEARCH_FILE).write_text(
                json.dumps({**record, "parent_run_id": parent.run_id}, indent=2, default=list)
            )
        elif parent.run_id and uri:
            killed = close_orphaned_children(uri, parent.run_id)
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
            plan=train_plan,
            threads=trial_res.threads if in_process else 1,
            device="cuda" if in_process and trial_res.gpus > 0 else "cpu",
            rungs=Rungs(
                min(config.grace_period, epochs),
                config.reduction_factor,
                epochs,
                config.metric,
                config.mode,
                # one record of every pack's rung values (ASHA across packs), kept on --resume
                record=str(out / "tune" / "rungs") if config.pack > 1 else None,
            )
            if config.scheduler == "asha"
            else None,
            metric=config.metric,
            mode=config.mode,
        )
        packs: list[list[dict[str, Any]]] = []
        packed = config.pack > 1
        pack_search: Any = None
        if packed and config.search == "optuna":
            pack_search, pack_notes = _pack_search(config, space, setup, trials)
        elif packed:
            packs, pack_notes = _packs(config, space, setup, trials)
        if packed:
            notes += pack_notes
            for note in pack_notes:
                print(f"raymmi tune: {note}", flush=True)
            trainable = ray_tune.with_resources(
                ray_tune.with_parameters(_run_pack_trial, setup=setup, data=data, packs=packs),
                {"cpu": trial_res.cpus, "gpu": trial_res.gpus},
            )
        elif in_process:
            # the decoded cells go into the object store once; every trial reads that copy
            trainable = ray_tune.with_resources(
                ray_tune.with_parameters(_run_inprocess_trial, setup=setup, data=data),
                {"cpu": trial_res.cpus, "gpu": trial_res.gpus},
            )
        else:
            trainable = ray_tune.with_resources(
                ray_tune.with_parameters(_run_trial, setup=setup), {"cpu": DRIVER_CPU}
            )
        ours = _callbacks(metric=config.metric)
        storage = out / "tune"
        experiment = storage / name
        if saved is not None and ray_tune.Tuner.can_restore(str(experiment)):
            tuner = ray_tune.Tuner.restore(
                str(experiment), trainable, resume_unfinished=True, resume_errored=True
            )
            print(f"raymmi tune: resuming {experiment}", flush=True)
        else:
            scheduler = None
            if config.scheduler == "asha" and not packed:  # packs stop their members themselves
                scheduler = ASHAScheduler(
                    time_attr="epochs_done",
                    max_t=epochs,
                    grace_period=min(config.grace_period, epochs),
                    reduction_factor=config.reduction_factor,
                    stop_last_trials=False,
                )
            search_alg, param_space, samples = _searcher(config, space, trials)
            if pack_search is not None:
                search_alg, param_space = pack_search, {}
                samples = math.ceil(trials / config.pack)
            elif packed:
                search_alg, samples = None, 1
                param_space = {"pack": ray_tune.grid_search(list(range(len(packs))))}
            tuner = ray_tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=ray_tune.TuneConfig(
                    metric=config.metric,
                    mode=config.mode,
                    search_alg=search_alg,
                    scheduler=scheduler,
                    num_samples=samples,
                    max_concurrent_trials=concurrent,
                    trial_dirname_creator=_trial_dirname,
                    reuse_actors=in_process,
                ),
                run_config=ray_tune.RunConfig(
                    name=name,
                    storage_path=str(storage),
                    callbacks=[*ours, *callbacks],
                    failure_config=ray_tune.FailureConfig(max_failures=0),
                    # Tune's status tables only with --verbose: raymmi prints the summary
                    verbose=1 if verbose() else 0,
                ),
            )
        fit_started = time.perf_counter()
        grid = tuner.fit()
        fit_ended = time.perf_counter()
        clock = next((c for c in _live_callbacks(tuner) if hasattr(c, "times")), None)
        reaper = next((c for c in _live_callbacks(tuner) if hasattr(c, "removed")), None)
        times = clock.times if clock is not None else {}
        if packed:
            ids = [Path(r.path).name.removeprefix("trial_") for r in grid if r.path]
            rows = member_rows(out, ids, space.keys, config.metric)
            failed = [r for r in grid if r.error is not None]
            if failed:
                msg = f"a pack failed: {failed[0].error}"
                raise RaymmiError(msg)
        else:
            rows = _collect(grid, setup, space, config.metric, times)
        # Tune hands back only the trials it started: a search stopped early (Ctrl-C, a
        # SIGTERM) returns normally with fewer trials than it was asked for
        expected = (
            (len(packs) or math.ceil(trials / config.pack)) if packed else trials * config.seeds
        )
        unfinished = (
            max(expected - len(grid), 0) + len(grid) - grid.num_terminated - grid.num_errors
        )
        if unfinished > 0:
            msg = (
                f"the search stopped with {unfinished} of its {expected} trial(s) unfinished; "
                f"continue it with --resume (same --out {str(out)!r})"
            )
            raise RaymmiError(msg)
        trials_frame = trial_table(rows, space, config.metric)
        if trials_frame.empty or (trials_frame["status"] == "error").all():
            first = trials_frame["error"].iloc[0] if not trials_frame.empty else "no trial ran"
            msg = f"every trial failed; the first: {first}"
            raise RaymmiError(msg)
        if parent.run_id and uri:
            stopped = trials_frame.loc[trials_frame["status"] == "stopped", "trial_id"]
            mark_stopped(uri, parent.run_id, set(stopped.astype(str)))
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
        out=str(Path(config.out).resolve()),
        results=results,
        trials=trials_frame,
        best=best,
        parent_run_id=parent.run_id,
        tracking_uri=uri,
        notes=notes,
        wall_seconds=time.perf_counter() - started,
        placement_groups_reaped=reaper.removed if reaper is not None else 0,
        phases={
            "setup": fit_started - started,
            "trials": fit_ended - fit_started,
            "report": time.perf_counter() - fit_ended,
        },
    )


def _in_process(config: TuneConfig, base: TrainConfig) -> tuple[bool, list[str]]:
    """Whether trials train in their own process (one worker) or as Ray Train runs.

    Raises
    ------
    RaymmiError
        Per-trial resources given for multi-worker trials (those take per-worker ones).
    """
    if base.workers > 1:
        if config.cpus_per_trial is not None or config.gpus_per_trial:
            msg = (
                f"--cpus-per-trial/--gpus-per-trial size one-worker trials; with --workers "
                f"{base.workers} each trial is a Ray Train run: use --cpus-per-worker and "
                "--gpus-per-worker"
            )
            raise RaymmiError(msg)
        return False, []
    if config.ray_train:
        return False, []
    if config.trial_embeddings:
        return False, ["--trial-embeddings: trials run as Ray Train runs (they write embeddings)"]
    if base.fault_injection is not None:
        return False, ["fault_injection: trials run as Ray Train runs"]
    return True, []


def _packs(
    config: TuneConfig, space: SearchSpace, setup: _Setup, trials: int
) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """The search's configurations x seeds grouped into packs of one architecture."""
    from raymmi.run._tune._trial import config_id

    configs = space.grid() if config.search == "grid" else space.sample(trials, config.seed)
    first = int(setup.base["optim"].get("seed", 0))
    keyed = []
    for values in configs:
        params = {k: thaw(v) for k, v in values.items()}
        for index in range(config.seeds):
            entry = {"params": params, "seed": first + index, "config_id": config_id(params)}
            plans, _, _ = member_plans(setup, [entry])
            keyed.append((pack_key(plans[0]), entry))
    packs, groups = make_packs(keyed, config.pack)
    notes = [
        f"--pack {config.pack}: {len(keyed)} trials in {len(packs)} pack(s)"
        + (
            f"; they form {groups} groups that differ in architecture or seed, each packed "
            "separately"
            if groups > 1
            else ""
        )
    ]
    return packs, notes


def _pack_search(
    config: TuneConfig, space: SearchSpace, setup: _Setup, trials: int
) -> tuple[Any, list[str]]:
    """The searcher of ``--search optuna --pack K`` (ask-and-tell, K configurations a pack)."""
    from raymmi.run._tune._packsearch import PackSearch, shared_dims

    if not verbose():
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = shared_dims(space, setup)
    searcher = PackSearch(
        {d.key: _optuna_distribution(d) for d in space.dims},
        space.dims,
        shared,
        size=config.pack,
        configs=trials,
        seeds=config.seeds,
        first_seed=int(setup.base["optim"].get("seed", 0)),
        seed=config.seed,
        metric=config.metric,
        mode=config.mode,
        out=setup.out,
    )
    packs = math.ceil(trials / config.pack)
    note = (
        f"--pack {config.pack} --search optuna: {trials} configurations x {config.seeds} "
        f"seed(s) asked from one Optuna study in {packs} pack(s) of up to {config.pack}"
        + (
            f"; {', '.join(shared)} change(s) the architecture: fixed within a pack at its "
            "first configuration's value"
            if shared
            else ""
        )
    )
    return searcher, [note]


def _trial_resources(config: TuneConfig, trials: int) -> TrialResources:
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return plan_trials(
        nodes,
        cpus_per_trial=config.cpus_per_trial,
        gpus_per_trial=config.gpus_per_trial,
        max_concurrent=config.max_concurrent,
        trials=trials * config.seeds,
    )


def _decoded(base: TrainConfig) -> tuple[Any, TrialData]:
    """The search's training plan and its cells decoded once (in-process trials)."""
    from raymmi.run._train._driver import plan_training

    train_plan, shard, extra = plan_training(base)
    return train_plan, trial_data(train_plan, shard, extra)


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
