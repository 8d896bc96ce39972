"""The task's outputs: ``config.yaml``, ``scores.json``, the shard set, the MLflow run."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from raymmi.config import TrackingConfig, to_dict
from raymmi.io import ShardSetWriter, write_part
from raymmi.run._plates._driver import producer
from raymmi.run._task._config import OUTPUT_NAMES
from raymmi.run._task._methods import _Result
from raymmi.run._task._planning import _Plan
from raymmi.run._task._reading import _Cells
from raymmi.run._task._trained import _Trained
from raymmi.schema import CELL_ID, FileEntry, Manifest, Modality, dense_to_list, depth_column
from raymmi.track import Run, set_parent, tracked_run, tracking_uri


def _json_scores(scores: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in scores.items()}


def _write_rows(
    plan: _Plan, cells: _Cells, result: _Result, staging: str
) -> tuple[list[FileEntry], tuple[str, ...], tuple[Modality, ...]]:
    """One output part per input file that holds output rows."""
    config = plan.config
    obs = cells.obs[result.rows]
    part = cells.part[result.rows]
    columns: dict[str, np.ndarray] = {
        CELL_ID: obs[CELL_ID].to_numpy().astype(str),
        config.batch_key: obs[config.batch_key].to_numpy().astype(str),
        **result.columns,
    }
    entries = []
    for index in np.unique(part):
        take = np.flatnonzero(part == index)
        arrays: dict[str, pa.Array] = {k: pa.array(v[take]) for k, v in columns.items()}
        for name, (values, _) in result.dense.items():  # the cells layout: values + row sums
            block = np.asarray(values[take], dtype=np.float32)
            arrays[name] = dense_to_list(block)
            arrays[depth_column(name)] = pa.array(block.sum(axis=1, dtype=np.float32))
        entries.append(write_part(staging, f"part-{int(index):05d}.parquet", pa.table(arrays)))
    modalities = tuple(Modality(n, "dense", f) for n, (_, f) in result.dense.items())
    return entries, tuple(columns), modalities


def _finish(
    plan: _Plan,
    cells: _Cells,
    result: _Result,
    trained: _Trained | None,
    out: Path,
    tracking: TrackingConfig | None,
    started: float,
) -> dict[str, float]:
    config = plan.config
    cfg = to_dict(config)
    resolved = {
        "method": plan.method,
        "source": plan.source,
        "target": plan.target,
        "modalities": list(plan.modalities),
        **({"model": dict(trained.settings)} if trained is not None else {}),
    }
    cfg["resolved"] = resolved
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    scores = result.scores
    name = OUTPUT_NAMES[config.task]
    with tracked_run(
        f"task {config.task}",
        config=cfg,
        tracking=tracking,
        run_name=f"task-{config.task}-{plan.method}",
    ) as run:
        run.set_tags({"raymmi.task": config.task, "raymmi.method": plan.method})
        run.log_shard_set(config.data, plan.shard.manifest.to_dict(), context="input")
        _link_training(run, trained, tracking)
        for path, figure in result.figures.items():
            run.log_figure(figure, path)
        for path, table in result.tables.items():
            run.log_table(table, path)
        for write in result.files.values():
            write(out)
        for file in sorted(out.glob("*.npz")):
            run.log_artifact(file, "task")
        (out / "scores.json").write_text(json.dumps(_json_scores(scores), indent=2) + "\n")
        run.log_dict(_json_scores(scores), "task/scores.json")
        seconds = time.perf_counter() - started
        run.log_metrics({k: v for k, v in scores.items() if math.isfinite(v)})
        run.log_metrics({"seconds": seconds})
        notes = [*plan.notes, *result.extra.pop("notes", [])]
        if notes:
            result.extra["notes"] = notes
            run.set_tags({"raymmi.notes": " | ".join(notes)})
        run.log_dict(result.extra, "task/details.json")
        with ShardSetWriter(str(out / name)) as writer:
            entries, metadata, modalities = _write_rows(plan, cells, result, writer.staging)
            extra = {
                "task": {
                    "task": config.task,
                    "method": plan.method,
                    "train_batches": list(config.train_batches),
                    "test_batches": list(config.test_batches),
                    "scores": _json_scores(scores),
                    **result.extra,
                }
            }
            manifest = writer.commit(
                Manifest(
                    kind="cells",
                    files=tuple(entries),
                    metadata=metadata,
                    modalities=modalities,
                    producer=producer(f"task {config.task}", cfg, run),
                    parents=(plan.shard.parent_ref(),),
                    extra=extra,
                )
            )
        run.log_shard_set(str(out / name), manifest.to_dict(), context="output")
    return dict(scores)


def _link_training(run: Run, trained: _Trained | None, tracking: TrackingConfig | None) -> None:
    """Log the training's final metrics here and make its MLflow run a child of this one."""
    if trained is None or not run.enabled:
        return
    numbers = {
        f"train_{k}": float(v)
        for k, v in trained.metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    run.log_metrics(numbers)
    if trained.run_id and run.run_id:
        set_parent(tracking_uri(tracking), trained.run_id, run.run_id)
        run.set_tags({"raymmi.train_run_id": trained.run_id})
