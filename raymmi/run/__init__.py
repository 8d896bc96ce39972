"""The one layer that touches Ray: tasks and Ray Data pipelines composing the pure parts.

The public names load on first use: a Ray worker that runs one stage's task (which imports
``raymmi.run._<stage>._<module>``; one package per stage) does not import every other stage,
torch and MLflow with it (importing all of them took 10-14 s per worker process on 2 cores).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raymmi.run._cells._driver import generate_cells, ingest_cells
    from raymmi.run._datasets import (
        ShardPartsSink,
        read_dataset,
        tasks_in_flight,
        without_budget_backpressure,
        work_blocks,
        work_dataset,
    )
    from raymmi.run._evaluate._driver import HELDOUT, SCORE, evaluate_plates, summary_text
    from raymmi.run._export._driver import export
    from raymmi.run._images._driver import generate_images, ingest_images
    from raymmi.run._inprocess import (
        DecodedCells,
        TrainedEmbedding,
        decode_cells,
        replace_modalities,
        train_embed,
    )
    from raymmi.run._logs import (
        VERBOSE_ENV,
        EpochPrinter,
        epoch_line,
        quiet_driver,
        train_log_level,
        verbose,
        worker_log_env,
    )
    from raymmi.run._normalize._driver import normalize
    from raymmi.run._plates._driver import generate_plates, ingest_plates
    from raymmi.run._preprocess._driver import preprocess_cells
    from raymmi.run._runtime import (
        PRIVATE_STATE_CHECKED,
        check_private_state_api,
        gather,
        init_ray,
        stream,
    )
    from raymmi.run._select._driver import select_features
    from raymmi.run._task import TaskConfig, run_task, score_text
    from raymmi.run._train._driver import train
    from raymmi.run._tune._callbacks import trial_line
    from raymmi.run._tune._driver import summary_lines, tune

_WHERE = {
    "DecodedCells": "_inprocess",
    "TrainedEmbedding": "_inprocess",
    "decode_cells": "_inprocess",
    "replace_modalities": "_inprocess",
    "train_embed": "_inprocess",
    "PRIVATE_STATE_CHECKED": "_runtime",
    "check_private_state_api": "_runtime",
    "ShardPartsSink": "_datasets",
    "EpochPrinter": "_logs",
    "HELDOUT": "_evaluate._driver",
    "SCORE": "_evaluate._driver",
    "TaskConfig": "_task",
    "VERBOSE_ENV": "_logs",
    "epoch_line": "_logs",
    "evaluate_plates": "_evaluate._driver",
    "export": "_export._driver",
    "gather": "_runtime",
    "generate_cells": "_cells._driver",
    "generate_images": "_images._driver",
    "generate_plates": "_plates._driver",
    "ingest_cells": "_cells._driver",
    "ingest_images": "_images._driver",
    "ingest_plates": "_plates._driver",
    "init_ray": "_runtime",
    "normalize": "_normalize._driver",
    "preprocess_cells": "_preprocess._driver",
    "quiet_driver": "_logs",
    "read_dataset": "_datasets",
    "run_task": "_task",
    "score_text": "_task",
    "select_features": "_select._driver",
    "stream": "_runtime",
    "summary_lines": "_tune._driver",
    "summary_text": "_evaluate._driver",
    "train": "_train._driver",
    "train_log_level": "_logs",
    "trial_line": "_tune._callbacks",
    "tune": "_tune._driver",
    "verbose": "_logs",
    "worker_log_env": "_logs",
    "tasks_in_flight": "_datasets",
    "without_budget_backpressure": "_datasets",
    "work_blocks": "_datasets",
    "work_dataset": "_datasets",
}
__all__ = [
    "HELDOUT",
    "PRIVATE_STATE_CHECKED",
    "SCORE",
    "VERBOSE_ENV",
    "DecodedCells",
    "EpochPrinter",
    "ShardPartsSink",
    "TaskConfig",
    "TrainedEmbedding",
    "check_private_state_api",
    "decode_cells",
    "epoch_line",
    "evaluate_plates",
    "export",
    "gather",
    "generate_cells",
    "generate_images",
    "generate_plates",
    "ingest_cells",
    "ingest_images",
    "ingest_plates",
    "init_ray",
    "normalize",
    "preprocess_cells",
    "quiet_driver",
    "read_dataset",
    "replace_modalities",
    "run_task",
    "score_text",
    "select_features",
    "stream",
    "summary_lines",
    "summary_text",
    "tasks_in_flight",
    "train",
    "train_embed",
    "train_log_level",
    "trial_line",
    "tune",
    "verbose",
    "without_budget_backpressure",
    "work_blocks",
    "work_dataset",
    "worker_log_env",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        msg = f"module 'raymmi.run' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"raymmi.run.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
