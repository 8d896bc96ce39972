"""The Ray tasks of ``raymmi normalize``, each over a group of whole plates, and their streaming.

See :mod:`raymmi.run._normalize._driver` for the design.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from raymmi import plates as P
from raymmi.config import NormalizeConfig
from raymmi.io import ShardSet
from raymmi.run._normalize._plate import (
    PlateGroup,
    _GroupResult,
    _matrix,
    _merge,
    _meta_frame,
    _needed_columns,
    _negcon,
    _output_schema,
    _PlateInfo,
    _read_plate,
    _Scope,
    _single_batch,
    _write_plate,
)
from raymmi.run._runtime import stream
from raymmi.schema import (
    FileEntry,
)

# Plates per task: at most this many, and few enough that every CPU gets about 4 tasks.
_MAX_PLATES_PER_TASK = 16
_TASKS_PER_CPU = 4


# ----------------------------------------------------------------------------------------------
# the tasks
# ----------------------------------------------------------------------------------------------


@ray.remote(num_cpus=1)
def _one_pass(
    shard_set: ShardSet,
    group: PlateGroup,
    config: NormalizeConfig,
    staging: str,
    meta_schema: pa.Schema,
) -> _GroupResult:
    """Per-plate reference: read, fit, apply and write each plate of the group."""
    features = list(shard_set.manifest.features)
    result = _GroupResult(plates=[])
    reports = []
    for plate, files in group:
        table = _read_plate(shard_set, files)
        meta = _meta_frame(table, meta_schema.names)
        negcon = _negcon(meta, config, plate)
        info = _PlateInfo(plate=plate, rows=table.num_rows, negcon_rows=int(negcon.sum()))
        result.plates.append(info)
        if config.reference == "negcon" and not negcon.any():
            continue  # reported with every other such plate by check_negcon
        x = _matrix(table, features)
        if config.method == "spherize":
            ref = x[negcon] if config.reference == "negcon" else x
            sfit = P.fit_spherize(
                ref, method=config.spherize_method, epsilon=config.spherize_epsilon
            )
            out = P.apply_spherize(x, sfit)
            names = tuple(P.spherize_feature_names(sfit, features))
        else:
            fit = P.fit_plate(
                x,
                negcon,
                method=config.method,
                reference=config.reference,
                epsilon=config.epsilon,
                plate=plate,
            )
            out = P.apply_location_scale(x, fit)
            names = tuple(features)
            if (fit.fallback != 0).any():
                reports.append(P.fallback_report({plate: fit}, features))
        info.names = names
        schema = _output_schema(meta_schema, names)
        info.files = [
            _write_plate(staging, plate, table, meta, out, schema, config, n_meta=len(meta_schema))
        ]
    if reports:
        result.report = pd.concat(reports, ignore_index=True)
    return result


@ray.remote(num_cpus=1)
def _stats_pass(shard_set: ShardSet, group: PlateGroup, config: NormalizeConfig) -> _GroupResult:
    """Global reference or ComBat: the group's plates merged into mergeable partials."""
    features = list(shard_set.manifest.features)
    columns = _needed_columns(shard_set, config)
    result = _GroupResult(plates=[])
    for plate, files in group:
        table = _read_plate(shard_set, files, columns)
        meta = _meta_frame(table, [c for c in columns if c not in features])
        x = _matrix(table, features)
        negcon = _negcon(meta, config, plate)
        info = _PlateInfo(plate=plate, rows=table.num_rows, negcon_rows=int(negcon.sum()))
        result.plates.append(info)
        if config.method == "combat":
            stats = P.combat_stats(x, meta[config.batch_key].astype(str).to_numpy())
            result.combat = _merge(result.combat, stats)
            continue
        scope = "*"
        if config.reference == "batch":
            scope = info.batch = _single_batch(meta, config.batch_key, plate)
        ref_rows = x[negcon] if config.reference == "negcon-global" else x
        part = _Scope(rows=len(x))
        if config.method in ("standardize", "mean"):
            part.moments = P.Moments.of(ref_rows)
            if config.reference == "negcon-global":
                part.all_moments = P.Moments.of(x)
        else:
            part.rows_ref = [np.ascontiguousarray(ref_rows)]
        result.scopes[scope] = result.scopes[scope].merge(part) if scope in result.scopes else part
    return result


@ray.remote(num_cpus=1)
def _apply_pass(
    shard_set: ShardSet,
    group: PlateGroup,
    config: NormalizeConfig,
    params: dict[str, Any],
    staging: str,
    schema: pa.Schema,
    n_meta: int,
) -> list[tuple[str, FileEntry]]:
    """Global reference or ComBat: apply the broadcast parameters to each plate and write it."""
    features = list(shard_set.manifest.features)
    written = []
    for plate, files in group:
        table = _read_plate(shard_set, files)
        meta = _meta_frame(table, schema.names[:n_meta])
        x = _matrix(table, features)
        if config.method == "combat":
            labels = meta[config.batch_key].astype(str).to_numpy()
            out = P.apply_combat(x, labels, params["combat"])
        else:
            fit = params["fits"][params["plate_scope"][plate]]
            transform = P.apply_spherize if config.method == "spherize" else P.apply_location_scale
            out = transform(x, fit)
        written.append(
            (plate, _write_plate(staging, plate, table, meta, out, schema, config, n_meta))
        )
    return written


@ray.remote(num_cpus=1)
def _plate_columns(shard_set: ShardSet, files: list[FileEntry], columns: list[str]) -> np.ndarray:
    table = _read_plate(shard_set, files, columns)
    return _matrix(table, columns).astype(np.float64)


def _stream(
    submit: Callable[[PlateGroup], ray.ObjectRef],
    groups: Sequence[PlateGroup],
    *,
    desc: str,
    unit: str,
) -> Iterator[Any]:
    """:func:`stream` with ``_TASKS_PER_CPU`` tasks a CPU in flight; yield the results."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    limit = _TASKS_PER_CPU * cpus
    for _, value in stream(submit, groups, max_in_flight=limit, desc=desc, unit=unit):
        yield value


def _task_view(shard_set: ShardSet) -> ShardSet:
    """The input as tasks see it: location, metadata and features, without the file list.

    Each task gets its own plates' files; the whole manifest per task made task arguments
    grow as plates x tasks (measured: +207 MiB peak at 1M wells, +549 MiB at 6.6M).
    """
    m = dataclasses.replace(shard_set.manifest, files=(), producer={}, parents=(), extra={})
    return ShardSet(uri=shard_set.uri, manifest=m)


def _groups(by_plate: Mapping[str, list[FileEntry]]) -> list[PlateGroup]:
    """Plates in manifest order, a few per task (about ``_TASKS_PER_CPU`` tasks per CPU)."""
    items = list(by_plate.items())
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_task = max(1, min(_MAX_PLATES_PER_TASK, len(items) // (_TASKS_PER_CPU * cpus)))
    return [items[i : i + per_task] for i in range(0, len(items), per_task)]
