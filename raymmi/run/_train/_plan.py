"""Planning for ``raymmi train``: the model checked against the data, and the datasets.

:func:`plan_training` decides a :class:`TrainPlan` once on the driver (model config, inputs,
dims, optimizer settings), :func:`_cpus_per_worker` the CPUs each worker gets, and
:func:`_datasets` builds the Ray Data train / validation / extra sets that the workers read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raymmi import models
from raymmi.config import OptimConfig, TrainConfig, from_dict, to_dict
from raymmi.io import ShardSet, open_shard_set, resolve
from raymmi.models import BatchLayout
from raymmi.run._datasets import read_dataset
from raymmi.schema import CELL_ID, RaymmiError, depth_column

# A dataset is materialized when its Parquet bytes x expansion fit in this share of the store.
MATERIALIZE_EXPANSION = 4.0
MATERIALIZE_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """Everything a worker needs, decided once on the driver."""

    model_name: str
    model_config: Any
    layout: BatchLayout
    optim: Mapping[str, Any]
    val_fraction: float
    hybrid_every: int
    checkpoint_every: int
    fault_injection: str | None
    threads: int
    label_key: str | None = None
    score_every: int = 1
    # cells (a seeded sample) of the every-cell scores all_ari ... (TrainConfig.score_all); 0: off
    score_all: int = 0

    @property
    def val_layout(self) -> BatchLayout:
        """The model's layout plus the label column as codes (validation scores)."""
        if self.label_key is None or self.label_key in self.layout.inputs.codes:
            return self.layout
        inputs = dataclasses.replace(
            self.layout.inputs, codes=(*self.layout.inputs.codes, self.label_key)
        )
        return dataclasses.replace(self.layout, inputs=inputs)


def _close(name: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# Loop settings a model's ``optim_defaults`` may leave out: a constant rate, every batch kept.
LOOP_DEFAULTS: dict[str, Any] = {"lr_decay": 1.0, "drop_last": False}


def resolve_optim(cls: type[models.Model], optim: OptimConfig) -> dict[str, Any]:
    """Optimizer settings with the model's reference defaults (then the loop's) filled in."""
    out = {**LOOP_DEFAULTS, **cls.optim_defaults}
    for key, value in to_dict(optim).items():
        if value is not None:
            out[key] = value
    return out


def resolve_val_fraction(config: TrainConfig) -> float:
    """``config.val_fraction``, or the model's own share when it is not given."""
    if config.val_fraction is not None:
        return float(config.val_fraction)
    return float(models.model_class(config.model_name).val_fraction)


def _columns(shard: ShardSet) -> set[str]:
    """Column names of a shard set (its parts share one schema)."""
    fs, path = resolve(shard.file_uris()[0])
    return set(pq.read_schema(path, filesystem=fs).names)


def _obs_stats(
    shard: ShardSet, codes: tuple[str, ...], depths: tuple[str, ...]
) -> tuple[dict[str, set[str]], dict[str, list[np.ndarray]]]:
    schema_names = _columns(shard)
    cats: dict[str, set[str]] = {c: set() for c in codes}
    logs: dict[str, list[np.ndarray]] = {m: [] for m in depths}
    wanted = [c for c in codes if c in schema_names] + [
        depth_column(m) for m in depths if depth_column(m) in schema_names
    ]
    for uri in shard.file_uris():
        fs, path = resolve(uri)
        table = pq.read_table(path, columns=wanted, filesystem=fs)
        for c in codes:
            if c in table.column_names:
                cats[c].update(str(v) for v in table.column(c).unique().to_pylist())
        for m in depths:
            if depth_column(m) in table.column_names:
                depth = table.column(depth_column(m)).to_numpy().astype(np.float64)
                logs[m].append(np.log1p(depth))
    return cats, logs


def plan_training(config: TrainConfig) -> tuple[TrainPlan, ShardSet, ShardSet | None]:
    """Check the model against the data and decide the plan; raise on any mismatch."""
    cls = models.model_class(config.model_name)
    model_config: Any = from_dict(cls.Config, dict(config.model), where="model")
    inputs = cls.inputs(model_config)
    shard = open_shard_set(config.data, kind="cells")
    extra = open_shard_set(config.extra_data, kind="cells") if config.extra_data else None
    present = {m.name: m for m in shard.manifest.modalities}
    columns = _columns(shard)
    for name in inputs.modalities:
        if name not in present and name not in inputs.optional:
            msg = (
                f"model {cls.name!r} needs modality {name!r}, which {config.data!r} does not "
                f"have{_close(name, list(present))}; present: {sorted(present)}. Run `raymmi "
                "preprocess cells` to make it, or point the model at another column with "
                "--set model.<input>=<modality>"
            )
            raise RaymmiError(msg)
    for name in inputs.depths:
        if depth_column(name) not in columns and depth_column(name) not in inputs.optional:
            msg = f"model {cls.name!r} needs column {depth_column(name)!r}, not in {config.data!r}"
            raise RaymmiError(msg)
    for name in inputs.codes:
        if name not in columns and name not in inputs.optional:
            msg = (
                f"model {cls.name!r} needs obs column {name!r}{_close(name, sorted(columns))}; "
                f"{config.data!r} has {sorted(shard.manifest.metadata)}"
            )
            raise RaymmiError(msg)
    if config.label_key is not None and config.label_key not in columns:
        msg = (
            f"--label-key {config.label_key!r} is not an obs column of {config.data!r}"
            f"{_close(config.label_key, sorted(columns))}; it has "
            f"{sorted(shard.manifest.metadata)}"
        )
        raise RaymmiError(msg)
    if extra is not None:
        extra_present = {m.name for m in extra.manifest.modalities}
        needed = [m for m in inputs.modalities if m not in inputs.optional]
        lacking = [m for m in needed if m not in extra_present]
        if lacking:
            msg = f"--extra-data {config.extra_data!r} lacks modality {lacking}; it needs {needed}"
            raise RaymmiError(msg)
    label = () if config.label_key is None else (config.label_key,)
    wanted = tuple(dict.fromkeys((*inputs.codes, *label)))  # the label may be an input too
    cats, logs = _obs_stats(shard, wanted, inputs.depths)
    if extra is not None:
        extra_cats, extra_logs = _obs_stats(extra, inputs.codes, inputs.depths)
        for key, values in extra_cats.items():
            cats[key] |= values
        for key, arrays in extra_logs.items():
            logs[key] += arrays
    depth_stats = {}
    for name, arrays in logs.items():
        if arrays:
            logged = np.concatenate(arrays)
            depth_stats[name] = (float(logged.mean()), float(logged.std() or 1.0))
    encodings = {m.name: m.encoding for m in shard.manifest.modalities}
    dims = models.Dims(
        features={m.name: tuple(m.features) for m in shard.manifest.modalities},
        categories={k: tuple(sorted(v)) for k, v in cats.items()},
        depth_stats=depth_stats,
    )
    layout = BatchLayout(inputs=inputs, dims=dims, encodings=encodings)
    plan = TrainPlan(
        model_name=cls.name,
        model_config=model_config,
        layout=layout,
        optim=resolve_optim(cls, config.optim),
        val_fraction=resolve_val_fraction(config),
        hybrid_every=config.hybrid_every,
        checkpoint_every=config.checkpoint_every,
        fault_injection=config.fault_injection,
        threads=max(1, math.floor(config.cpus_per_worker or 1)),
        label_key=config.label_key,
        score_every=config.score_every,
        score_all=score_all_cells(config),
    )
    return plan, shard, extra


def score_all_cells(config: TrainConfig) -> int:
    """``TrainPlan.score_all`` of ``config``: its ``metrics_max_cells``, or 0 when off."""
    return config.metrics_max_cells if config.score_all and config.label_key is not None else 0


def _cpus_per_worker(config: TrainConfig, resources: Mapping[str, float]) -> float:
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    if config.gpus_per_worker and config.workers * config.gpus_per_worker > gpus:
        msg = (
            f"--workers {config.workers} x --gpus-per-worker {config.gpus_per_worker} needs "
            f"{config.workers * config.gpus_per_worker:g} GPUs; the cluster has {gpus:g}. Use "
            f"--workers {max(1, int(gpus // config.gpus_per_worker))} or fewer GPUs per worker"
        )
        raise RaymmiError(msg)
    if config.cpus_per_worker is not None:
        need = config.workers * config.cpus_per_worker
        if need > cpus:
            msg = (
                f"--workers {config.workers} x {config.cpus_per_worker:g} CPUs needs {need:g} "
                f"CPUs; the cluster has {cpus:g}. Use --workers "
                f"{max(1, int(cpus // config.cpus_per_worker))} or fewer CPUs per worker"
            )
            raise RaymmiError(msg)
        return config.cpus_per_worker
    # Leave one CPU for the Ray Data tasks (each asks for a whole CPU), or training waits
    # forever for data that no task can read (seen on 2 CPUs with 2 workers at 0.75 each).
    share = min(1.0, (cpus - 1.0) / config.workers)
    if share < 0.25:
        msg = (
            f"--workers {config.workers} does not fit on {cpus:g} CPUs (each worker needs at "
            f"least 0.25 CPU, and one CPU stays free for the data readers); use --workers "
            f"{max(1, int((cpus - 1.0) / 0.25))} or fewer, or a larger cluster"
        )
        raise RaymmiError(msg)
    return round(share, 3)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def split_mask(cell_ids: pa.Array | pa.ChunkedArray, fraction: float, seed: int) -> np.ndarray:
    """True for the cells held out for validation: a seeded hash of the id, stable per cell."""
    ids = np.asarray(cell_ids.to_pylist(), dtype=object)
    key = f"raymmi{seed:010d}"[:16]
    hashed = pd.util.hash_array(ids, hash_key=key, categorize=False)
    return (hashed % np.uint64(1_000_000)) < np.uint64(round(fraction * 1_000_000))


class _Select:
    """Ray Data UDF: keep the training (``val=False``) or validation rows of a batch."""

    def __init__(self, *, val: bool, fraction: float, seed: int, columns: list[str]) -> None:
        self.val, self.fraction, self.seed, self.columns = val, fraction, seed, columns

    def __call__(self, table: pa.Table) -> pa.Table:
        mask = split_mask(table.column(CELL_ID), self.fraction, self.seed)
        keep = mask if self.val else ~mask
        return table.filter(pa.array(keep)).select(self.columns)


def _datasets(plan: TrainPlan, shard: ShardSet, extra: ShardSet | None) -> dict[str, Any]:
    seed = int(plan.optim["seed"])
    columns = plan.layout.columns(_columns(shard))
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch, not bars
    ds = read_dataset(shard, columns=[CELL_ID, *columns])
    out = {
        "train": ds.map_batches(
            _Select(val=False, fraction=plan.val_fraction, seed=seed, columns=columns),
            batch_format="pyarrow",
        )
    }
    if plan.val_fraction > 0:
        val_columns = plan.val_layout.columns(_columns(shard))
        ds_val = read_dataset(shard, columns=list(dict.fromkeys([CELL_ID, *val_columns])))
        out["val"] = ds_val.map_batches(
            _Select(val=True, fraction=plan.val_fraction, seed=seed, columns=val_columns),
            batch_format="pyarrow",
        )
    if extra is not None:
        out["extra"] = read_dataset(extra, columns=plan.layout.columns(_columns(extra)))
    # Small sets are read once and kept in the object store: re-reading a few MB every epoch
    # cost ~3 s of Ray Data start-up per epoch here. Large sets stream from storage.
    store = float(ray.cluster_resources().get("object_store_memory", 0))
    for name, sset in (("train", shard), ("val", shard), ("extra", extra)):
        on_disk = sum(f.bytes for f in sset.manifest.files) if sset is not None else 0
        if name in out and on_disk * MATERIALIZE_EXPANSION < store * MATERIALIZE_SHARE:
            # in file order, not task-completion order: the same seed then gives the same
            # batches and the same run (a search compares configurations, not data orders)
            out[name].context.execution_options.preserve_order = True
            out[name] = out[name].materialize()
    return out
