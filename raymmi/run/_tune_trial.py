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
