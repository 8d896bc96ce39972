"""``raymmi tune``: the Tune function trainable that runs one trial, and its helpers.

Ray Tune pickles :func:`_run_trial` by reference: it and everything it uses stay importable
at this module's top level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raymmi.config import TrackingConfig, TrainConfig, from_dict
from raymmi.tune_space import apply_params, thaw

FLUSH_S = 5.0  # in-process trials: seconds between MLflow log_batch calls (and one at the end)

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
    # in-process trials: the search's training plan (dims, layout), torch threads, device
    plan: Any = None
    threads: int = 1
    device: str = "cpu"
    # packed trials: ASHA's rungs (applied to a pack's members), the metric and its mode
    rungs: Any = None
    metric: str = ""
    mode: str = "max"


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
    """The Tune function trainable of a Train trial: one Ray Train run of a config and seed."""
    from ray import tune

    from raymmi.run._train._driver import finished, train

    trial_id = tune.get_context().get_trial_id()
    folder = Path(setup.out) / "trials" / trial_id
    done = folder / "trial.json"
    if done.exists():  # trained before an interruption: replay its reports, train nothing
        _replay(done)
        return
    params, seed, tree, cid = _trial_config(config, setup)
    tree["out"] = str(folder)
    train_config = from_dict(TrainConfig, tree, where="trial")
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
    tune.report(_finish(folder, params, seed, cid, metrics))


def _trial_config(config: Mapping[str, Any], setup: _Setup) -> tuple[dict, int, dict, str]:
    """A trial's searched values, seed, training config tree and config id."""
    params, index = trial_params(config, setup.keys)
    seed = int(setup.base["optim"].get("seed", 0)) + index
    tree = apply_params(setup.base, {**setup.fixed, **params})
    tree["optim"]["seed"] = seed
    return params, seed, tree, config_id(params)


def _replay(done: Path) -> None:
    """Report a finished trial's saved rows again (a resumed search), train nothing."""
    from ray import tune

    saved = json.loads(done.read_text())
    for row in [*saved["history"], saved["final"]]:
        tune.report(row)


def _finish(
    folder: Path, params: Mapping[str, Any], seed: int, cid: str, metrics: Mapping[str, Any]
) -> dict[str, float]:
    """Write ``trial.json`` (the trial's commit marker) and return its final report."""
    history = _history(folder)
    final = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    final["epochs_done"] = len(history) or final.get("epoch", 0) + 1
    final["completed"] = 1.0
    saved = {"params": params, "seed": seed, "config_id": cid, "history": history, "final": final}
    tmp = folder / "trial.json.tmp"
    tmp.write_text(json.dumps(saved, default=float))
    tmp.replace(folder / "trial.json")
    return final


def _run_inprocess_trial(config: dict[str, Any], setup: _Setup, data: Any) -> None:
    """The Tune function trainable of a one-worker trial: trains in this process.

    The loop is ``raymmi train``'s (:func:`raymmi.run._tune._inprocess.train_in_process`);
    ``data`` is the search's decoded cells from the object store. Every epoch is reported to
    Tune (ASHA's clock is ``epochs_done``); MLflow gets the epochs in ``log_batch`` calls.
    """
    import time

    from ray import tune

    from raymmi import track
    from raymmi.run._train._driver import finished
    from raymmi.run._tune._inprocess import train_in_process, trial_plan, write_metrics

    started = time.perf_counter()
    trial_id = tune.get_context().get_trial_id()
    folder = Path(setup.out) / "trials" / trial_id
    done = folder / "trial.json"
    if done.exists():
        _replay(done)
        return
    params, seed, tree, cid = _trial_config(config, setup)
    tree["out"] = str(folder)
    train_config = from_dict(TrainConfig, tree, where="trial")
    plan = dataclasses.replace(trial_plan(setup.plan, train_config), threads=setup.threads)
    folder.mkdir(parents=True, exist_ok=True)
    identity = {k: v for k, v in tree.items() if k not in ("out", "overwrite")}
    uri = setup.tracking.uri if setup.tracking.enabled else None
    run_id = None
    logging_started = time.perf_counter()
    if uri is not None:
        tags = {
            "raymmi.command": "train",
            "raymmi.model": train_config.model_name,
            "raymmi.search": setup.name,
            "raymmi.trial_id": trial_id,
            "raymmi.config_id": cid,
            "raymmi.seed": seed,
            "raymmi.in_process": "true",
        }
        if setup.parent_run_id:
            tags["mlflow.parentRunId"] = setup.parent_run_id
        run_id = track.start_batched_run(
            uri,
            setup.tracking.experiment,
            run_name=f"{setup.name}-{trial_id}",
            config=identity,
            tags=tags,
        )
    started_logging = time.perf_counter() - logging_started
    pending: list[tuple[int, dict[str, float]]] = []
    clock = {"logged": started_logging, "last": time.perf_counter()}

    def flush() -> None:
        if run_id is not None and uri is not None and pending:
            tick = time.perf_counter()
            track.log_metric_rows(uri, run_id, pending)
            clock["logged"] += time.perf_counter() - tick
            clock["last"] = time.perf_counter()
        pending.clear()

    def report(epoch: int, metrics: dict[str, float]) -> None:
        pending.append((epoch, metrics))
        # Buffered: one log_batch every FLUSH_S seconds and at the end. A trial ASHA stops
        # leaves tune.report through SystemExit, and the `finally` below logs the rest.
        if time.perf_counter() - clock["last"] > FLUSH_S:
            flush()
        tune.report({**metrics, "epochs_done": epoch + 1})

    status = "KILLED"
    try:
        if finished(folder, embed=False):  # killed after training, before trial.json
            metrics = json.loads((folder / "metrics.json").read_text())
        else:
            run = train_in_process(
                plan,
                data,
                folder,
                config=identity,
                keep_checkpoints=train_config.keep_checkpoints,
                device=setup.device,
                report=report,
            )
            metrics = write_metrics(folder, run.metrics, started)
        status = "FINISHED"
    except Exception:
        status = "FAILED"
        raise
    finally:
        flush()
        if run_id is not None and uri is not None:
            tick = time.perf_counter()
            track.end_batched_run(uri, run_id, status)
            clock["logged"] += time.perf_counter() - tick
    # MLflow's share of the trial: creating, logging and closing its run
    metrics = {**metrics, "mlflow_seconds": round(clock["logged"], 4)}
    tune.report(_finish(folder, params, seed, cid, metrics))


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
