"""``raymmi tune``: a search's results as tables (trials, configurations, best config)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raymmi.run._tune._plan import SCORES
from raymmi.run._tune._trial import _decode, _Setup, config_id, trial_params
from raymmi.tune_space import SearchSpace, apply_params

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
        keys = ("val_loss", "train_loss", "mlflow_seconds", *SCORES, *(f"val_{s}" for s in SCORES))
        for key in keys:
            if key != metric and key in metrics:
                row[key] = metrics[key]
        rows.append(row)
    return rows


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def heatmap_axes(space: SearchSpace) -> tuple[str, str] | None:
    """The two parameters of the heatmap: γ x λ when searched, else the two most varied."""
    keys = space.keys
    if "model.gamma" in keys and "model.lam" in keys:
        return "model.gamma", "model.lam"
    if len(keys) < 2:
        return None
    ranked = sorted(space.dims, key=lambda d: (not d.is_range, -len(d.values)), reverse=False)
    return ranked[0].key, ranked[1].key
