"""Trained methods: a train-cells shard set, raymmi.run.train, one apply task per file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raymmi import models
from raymmi.config import OptimConfig, RayConfig, TrackingConfig, TrainConfig, from_dict, to_dict
from raymmi.io import ShardSetWriter, open_shard_set, resolve, write_part
from raymmi.models import BatchLayout
from raymmi.run._runtime import gather
from raymmi.run._task._config import APPLY_ROWS, MODEL_METHODS
from raymmi.run._task._planning import _in_batches, _named, _Plan
from raymmi.run._task._reading import _Cells
from raymmi.run._train._driver import plan_training, train
from raymmi.schema import CELL_ID, FileEntry, Manifest, RaymmiError


@dataclasses.dataclass(frozen=True)
class _Trained:
    model_name: str
    model_config: Any
    layout: BatchLayout
    settings: Mapping[str, Any]
    state_path: str
    metrics: Mapping[str, Any]
    run_id: str | None


def _model_settings(plan: _Plan) -> dict[str, Any] | None:
    """The trained model's ``model.*`` keys (task defaults, then the user's); checked early."""
    if plan.method not in MODEL_METHODS:
        return None
    config = plan.config
    name = MODEL_METHODS[plan.method]
    by_method: dict[str, dict[str, Any]] = {
        "mlp": {"source": plan.source, "target": plan.target},
        "clue": {"modalities": list(plan.modalities)},
        "umint": {"modalities": list(plan.modalities)},
        "ae": {"modalities": list(plan.modalities)},
        "jae": {
            "modalities": list(plan.modalities),
            "type_key": config.label_key,
            "cycle_key": config.phase_key,
            "batch_key": config.batch_key,
        },
        "sailerx": {"batch_key": config.batch_key},
    }
    settings = {**by_method[plan.method], **dict(config.model)}
    cls = models.model_class(name)
    model_config: Any = from_dict(cls.Config, settings, where="model")
    inputs = cls.inputs(model_config)
    manifest = plan.shard.manifest
    needed = [m for m in inputs.modalities if m not in inputs.optional]
    if plan.method == "sailerx":
        needed.append(model_config.reference)
    for m in needed:
        _named(manifest, m, flag=f"model ({name})", task=config.task, uri=config.data)
    return settings


@ray.remote(num_cpus=1)
def _subset_task(
    path: str, staging: str, index: int, batch_key: str, batches: tuple[str, ...]
) -> FileEntry | None:
    fs, local = resolve(path)
    table = pq.read_table(local, filesystem=fs)
    table = table.filter(_in_batches(table, batch_key, batches))
    if table.num_rows == 0:
        return None
    return write_part(staging, f"part-{index:05d}.parquet", table)


def _write_train_cells(plan: _Plan, uri: str, run_config: dict[str, Any]) -> Manifest:
    """The train batches' cells as a shard set of their own (all columns), for training."""
    config, shard = plan.config, plan.shard
    with ShardSetWriter(uri) as writer:
        refs = [
            _subset_task.remote(p, writer.staging, i, config.batch_key, config.train_batches)
            for i, p in enumerate(shard.file_uris())
        ]
        entries = [e for e in gather(refs, desc="task: train cells", unit="file") if e]
        return writer.commit(
            Manifest(
                kind="cells",
                files=tuple(entries),
                metadata=shard.manifest.metadata,
                modalities=shard.manifest.modalities,
                producer={"command": f"task {config.task} (train cells)", "config": run_config},
                parents=(shard.parent_ref(),),
                extra={
                    **shard.manifest.extra,
                    "subset": {"batch_key": config.batch_key, "batches": config.train_batches},
                },
            )
        )


def _train_model(
    plan: _Plan,
    settings: dict[str, Any],
    out: Path,
    ray_config: RayConfig | None,
    tracking: TrackingConfig | None,
) -> _Trained:
    config = plan.config
    _write_train_cells(plan, str(out / "_train_cells"), to_dict(config))
    label = config.label_key if config.label_key in plan.shard.manifest.metadata else None
    cls = models.model_class(MODEL_METHODS[plan.method])
    if label in cls.inputs(from_dict(cls.Config, settings, where="model")).codes:
        # train reads its --label-key beside the model's codes and fails on a column named
        # twice (jae's type_key is the label): the training's own clustering scores are skipped
        label = None
    train_config = TrainConfig(
        model_name=MODEL_METHODS[plan.method],
        data=str(out / "_train_cells"),
        out=str(out / "_train"),
        model=settings,
        optim=OptimConfig(epochs=config.epochs, seed=config.seed),
        label_key=label,
        impute=False,
    )
    metrics = train(
        train_config,
        ray_config=ray_config,
        tracking=tracking,
        tags={"raymmi.task": f"{config.task} {plan.method}"},
        run_name=f"task-{config.task}-{plan.method}-train",
    )
    model_plan, _, _ = plan_training(train_config)
    embeddings = open_shard_set(str(out / "_train" / "embeddings"), kind="cells")
    return _Trained(
        model_name=model_plan.model_name,
        model_config=model_plan.model_config,
        layout=model_plan.layout,
        settings=settings,
        state_path=str(out / "_train" / "model.pt"),
        metrics=metrics,
        run_id=embeddings.manifest.producer.get("mlflow_run_id"),
    )


@ray.remote(num_cpus=1)
def _apply_task(
    path: str,
    trained: _Trained,
    layout: BatchLayout,
    state: Mapping[str, Any],
    batch_key: str,
    batches: tuple[str, ...],
    outputs: tuple[str, ...],
) -> tuple[list[str], dict[str, np.ndarray]]:
    import torch

    from raymmi.models import arrow_to_batch

    torch.set_num_threads(1)
    model = models.model_class(trained.model_name)(trained.model_config, layout.dims)
    model.load_state_dict(state)
    model.eval()
    fs, local = resolve(path)
    parquet = pq.ParquetFile(local, filesystem=fs)
    names = set(parquet.schema_arrow.names)
    columns = list(dict.fromkeys([CELL_ID, batch_key, *layout.columns(names)]))
    ids: list[str] = []
    pieces: dict[str, list[np.ndarray]] = {key: [] for key in outputs}
    for record in parquet.iter_batches(batch_size=APPLY_ROWS, columns=columns):
        table = pa.Table.from_batches([record])
        table = table.filter(_in_batches(table, batch_key, batches))
        if table.num_rows == 0:
            continue
        ids += [str(v) for v in table.column(CELL_ID).to_pylist()]
        with torch.no_grad():
            batch = arrow_to_batch(table, layout)
            for key in outputs:
                what, _, modality = key.partition(":")
                if what == "embed":
                    values = model.embed(batch)
                elif what == "impute":
                    imputed = model.impute(batch)
                    if imputed is None or modality not in imputed:
                        msg = f"model {trained.model_name!r} does not impute {modality!r}"
                        raise RaymmiError(msg)
                    values = imputed[modality]
                else:
                    values = cast(Any, model).embed_modality(batch, modality)
                pieces[key].append(values.float().numpy())
    empty = np.zeros((0, 0), np.float32)
    return ids, {k: np.concatenate(v) if v else empty for k, v in pieces.items()}


def _apply(
    plan: _Plan,
    trained: _Trained,
    cells: _Cells,
    rows: np.ndarray,
    outputs: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Pass the ``rows`` cells through the trained model, one Ray task per file.

    Only the modalities the outputs need are read (no obs codes: the test batches are
    categories the model never saw, and no model reads them to embed or impute).
    """
    import torch

    config = plan.config
    inputs = trained.layout.inputs
    needed: tuple[str, ...]
    if plan.method == "mlp":
        assert plan.source is not None
        needed = (plan.source,)
    elif plan.method == "clue":
        needed = plan.modalities
    else:
        needed = tuple(m for m in inputs.modalities if m not in inputs.optional)
    depth_keys = tuple(f"{m}_depth" for m in inputs.depths)
    layout = dataclasses.replace(
        trained.layout,
        inputs=models.Inputs(modalities=needed, depths=inputs.depths, optional=depth_keys),
    )
    state = ray.put(torch.load(trained.state_path, weights_only=True))
    batches = tuple(sorted(set(cells.obs[config.batch_key][rows].astype(str))))
    refs = [
        _apply_task.remote(p, trained, layout, state, config.batch_key, batches, outputs)
        for p in plan.shard.file_uris()
    ]
    results = gather(refs, desc=f"task: apply {trained.model_name}", unit="file")
    ids = pd.Index([i for file_ids, _ in results for i in file_ids])
    wanted = cells.obs[CELL_ID].to_numpy()[rows]
    where = ids.get_indexer(wanted)
    if (where < 0).any() or not ids.is_unique:
        msg = "internal error: the model's output cells differ from the gathered cells"
        raise RuntimeError(msg)
    return {
        key: np.concatenate([r[key] for _, r in results if len(r[key])])[where] for key in outputs
    }
