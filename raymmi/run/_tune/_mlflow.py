"""``raymmi tune``: the search's MLflow parent run and its trials' nested runs."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pandas as pd

from raymmi.config import TrackingConfig, TrainConfig
from raymmi.run._tune._tables import heatmap_axes
from raymmi.run._tune._trial import _is_number
from raymmi.track import Run, resumed_run, tracked_run
from raymmi.tune_space import SearchSpace, TuneConfig


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
    with resumed_run(tracking, run_id) as run:
        yield run


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
