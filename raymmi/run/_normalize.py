"""``raymmi normalize``: plain Ray tasks over groups of whole plates, no shuffle anywhere.

Per-plate references (``negcon``, ``all``) take **one pass**: a task reads a plate (all its
files), fits it exactly (medians, IQRs, MADs, sphering: a plate fits in memory), applies the
fit and writes the plate's output part, returning only its fallback-report rows. Global
references (``negcon-global``, ``batch``) and ComBat take **two passes**: a statistics pass
whose tasks each merge their plates into mergeable partials (:class:`raymmi.plates.Moments`,
:class:`raymmi.plates.CombatStats`; for robust statistics and sphering, the reference rows,
which the driver pools), reduced on the driver as tasks finish; then an apply pass over the
same plate groups with the fitted parameters broadcast through the object store.

Why Ray tasks and not Ray Data ``map_batches`` (ARCHITECTURE "The Ray layer" says Ray Data;
this measured better): on this 2-core machine, 26 plates x 1,000 features (10k wells, one
384-row file per plate), the previous design (per-plate statistics tasks, then
``read_parquet -> map_batches(pandas) -> shard-set sink``) took 18-32 s a run, 10-20 s of it
before the first block (file listing, planning) and the rest in *one* task, since the Parquet
reader packs small files into one block; this one pass took 1.4-3.8 s (load 1-8) using
every CPU. A plate is also the natural unit: the scope of per-plate statistics and of an output
part, so tasks never split a plate and never write two plates into one file. The apply works
on the features as one float32 matrix built straight from the Arrow columns (no pandas).

Memory per task is one plate at a time (read, matrix, output), whatever the data set size; the
driver holds per-plate counts, file entries and the merged partials, never rows (except the
pooled reference rows of robust/sphering global references, which are the statistic).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import posixpath
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm

from raymmi import plates as P
from raymmi.config import NormalizeConfig, RayConfig, TrackingConfig, to_dict
from raymmi.io import ShardSet, ShardSetWriter, open_shard_set, resolve
from raymmi.io._plates import negcon_mask
from raymmi.io._shardset import PartWriter
from raymmi.run._plates import producer
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import (
    FALLBACK_REPORT_NAME,
    FEATURE_TYPE,
    NEGCON,
    PLATE,
    FileEntry,
    Manifest,
    RaymmiError,
    plate_dir,
)
from raymmi.track import tracked_run

ROBUST = ("robustize", "mad_robustize")
# Plates per task: at most this many, and few enough that every CPU gets about 4 tasks.
_MAX_PLATES_PER_TASK = 16
_TASKS_PER_CPU = 4

PlateGroup = list[tuple[str, list[FileEntry]]]


@dataclasses.dataclass
class _PlateInfo:
    """What the driver keeps of one plate: counts, its batch, the parts written."""

    plate: str
    rows: int
    negcon_rows: int
    batch: str | None = None
    files: list[FileEntry] = dataclasses.field(default_factory=list)
    names: tuple[str, ...] | None = None  # output feature names (one pass; spherize PCA)


@dataclasses.dataclass
class _Scope:
    """Mergeable statistics of one global scope (``"*"`` or a batch) from a group of plates."""

    rows: int = 0
    moments: Any = None  # Moments of the reference rows (standardize / mean)
    all_moments: Any = None  # Moments of all rows (negcon-global fallback)
    rows_ref: list[np.ndarray] = dataclasses.field(default_factory=list)  # robust / spherize

    def merge(self, other: _Scope) -> _Scope:
        return _Scope(
            rows=self.rows + other.rows,
            moments=_merge(self.moments, other.moments),
            all_moments=_merge(self.all_moments, other.all_moments),
            rows_ref=self.rows_ref + other.rows_ref,
        )


def _merge(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


@dataclasses.dataclass
class _GroupResult:
    """What one task returns for its group of plates."""

    plates: list[_PlateInfo]
    report: pd.DataFrame | None = None  # fallback rows (one pass)
    scopes: dict[str, _Scope] = dataclasses.field(default_factory=dict)  # statistics pass
    combat: Any = None  # CombatStats (statistics pass)


# ----------------------------------------------------------------------------------------------
# reading and writing one plate
# ----------------------------------------------------------------------------------------------


def _read_plate(
    shard_set: ShardSet, files: Sequence[FileEntry], columns: Sequence[str] | None = None
) -> pa.Table:
    """One plate's files as one table; each file read whole (one read), then decoded.

    Reading the bytes first and decoding from memory measured faster than ``read_table`` on
    a path (which also builds a dataset per call) for these small, wide files.
    """
    fs, root = resolve(shard_set.uri)
    tables = []
    for f in files:
        with fs.open_input_stream(posixpath.join(root, f.path)) as stream:
            data = stream.read()
        reader = pq.ParquetFile(pa.BufferReader(data))
        tables.append(reader.read(columns=None if columns is None else list(columns)))
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """The features as one float32 (n_rows, n_features) matrix, column-major: one copy.

    Nulls become NaN. No pandas round trip: 1,000 ``to_pandas`` columns cost more than the
    normalization itself.
    """
    out = np.empty((len(features), table.num_rows), dtype=np.float32)
    for j, name in enumerate(features):
        out[j] = table.column(name).to_numpy()
    return out.T


def _meta_frame(table: pa.Table, names: Sequence[str]) -> pd.DataFrame:
    present = set(table.column_names)
    return table.select([n for n in names if n in present]).to_pandas()


def _needed_columns(shard_set: ShardSet, config: NormalizeConfig) -> list[str]:
    m = shard_set.manifest
    meta = list(m.metadata) if config.negcon else [PLATE, NEGCON]
    if config.reference == "batch" or config.method == "combat":
        meta.append(config.batch_key)
    return list(dict.fromkeys(n for n in meta if n in m.metadata)) + list(m.features)


def _negcon(meta: pd.DataFrame, config: NormalizeConfig, plate: str) -> np.ndarray:
    return negcon_mask(meta, config.negcon, source=f"plate {plate}")


def _single_batch(meta: pd.DataFrame, key: str, plate: str) -> str:
    batches = meta[key].astype(str).unique()
    if len(batches) != 1:
        msg = (
            f"plate {plate!r} spans {len(batches)} values of {key} ({list(batches[:3])}); "
            "a batch reference needs each plate in one batch"
        )
        raise RaymmiError(msg)
    return str(batches[0])


def _output_schema(meta_schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    return pa.schema(list(meta_schema) + [pa.field(n, FEATURE_TYPE) for n in names])


def _write_plate(
    staging: str,
    plate: str,
    table: pa.Table,
    meta: pd.DataFrame,
    out: np.ndarray,
    schema: pa.Schema,
    config: NormalizeConfig,
    n_meta: int,
) -> FileEntry:
    """Write one plate's output part: metadata columns as read, features from ``out``."""
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for field in schema.names[:n_meta]:
        if field == NEGCON and config.negcon:
            arrays.append(pa.array(_negcon(meta, config, plate)))
        else:
            arrays.append(table.column(field))
    columns = np.ascontiguousarray(out.T)  # (n_features, n_rows): each feature contiguous
    arrays += [pa.array(columns[j]) for j in range(columns.shape[0])]
    result = pa.Table.from_arrays(arrays, schema=schema)
    relpath = posixpath.join(plate_dir(plate), "part-00000.parquet")
    with PartWriter(staging, relpath, schema, plate=plate) as part:
        part.write(result)
    return part.close()


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
    """Run ``submit(group)`` for every group, at most a few tasks in flight; yield results.

    Results come as tasks finish, so the driver reduces them without holding them all; and
    only ``_TASKS_PER_CPU`` tasks a CPU are submitted at a time, so the driver's and the
    object store's share of task arguments does not grow with the data set. The first failure
    cancels the tasks in flight and is raised as the task's own exception.
    """
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    todo = iter(groups)
    pending = [submit(g) for g in itertools.islice(todo, _TASKS_PER_CPU * cpus)]
    with tqdm(total=len(groups), desc=desc, unit=unit, disable=None) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                value = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = err.cause if isinstance(err.cause, BaseException) else err
                raise cause from None
            following = next(todo, None)
            if following is not None:
                pending.append(submit(following))
            bar.update(1)
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


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------


def _fit_global(
    scopes: Mapping[str, _Scope],
    config: NormalizeConfig,
    shard_set: ShardSet,
    by_plate: Mapping[str, list[FileEntry]],
) -> dict[str, Any]:
    """One fit per scope (``"*"`` for negcon-global, batch ids for ``batch``)."""
    fits: dict[str, Any] = {}
    for scope, stats in scopes.items():
        if config.method in ("standardize", "mean"):
            fits[scope] = P.fit_global(
                stats.moments,
                method=config.method,
                epsilon=config.epsilon,
                all_rows=stats.all_moments,
                reference=config.reference,
            )
            continue
        rows = np.concatenate(stats.rows_ref)
        if config.method == "spherize":
            fits[scope] = P.fit_spherize(
                rows, method=config.spherize_method, epsilon=config.spherize_epsilon
            )
            continue
        spread_all = None
        if config.reference == "negcon-global":
            _, spread = P.fit_location_scale(rows, method=config.method)
            zero = np.flatnonzero(~(np.isfinite(spread) & (spread > 0)))
            spread_all = np.full(len(spread), np.nan)
            if zero.size:
                # gather only the zero-spread columns of every row: the rare fallback
                names = [shard_set.manifest.features[i] for i in zero]
                view = ray.put(_task_view(shard_set))
                refs = [_plate_columns.remote(view, fs, names) for fs in by_plate.values()]
                block = np.concatenate(gather(refs, desc="fallback columns", unit="plate"))
                spread_all[zero] = P.fit_location_scale(block, method=config.method)[1]
        fits[scope] = P.fit_global(
            rows,
            method=config.method,
            epsilon=config.epsilon,
            all_rows=spread_all,
            n_rows=stats.rows,
            reference=config.reference,
        )
    return fits


def _check_config(shard_set: ShardSet, config: NormalizeConfig) -> None:
    m = shard_set.manifest
    P.check_options(method=config.method, reference=config.reference, epsilon=config.epsilon)
    needs_batch = config.reference == "batch" or config.method == "combat"
    if needs_batch and config.batch_key not in m.metadata:
        batchy = [c for c in m.metadata if "batch" in c.lower()]
        msg = (
            f"--batch-key {config.batch_key!r} is not a column of {shard_set.uri!r}; "
            f"metadata columns that look like batches: {batchy or list(m.metadata)[:8]}"
        )
        raise RaymmiError(msg)


_EMPTY_REPORT = P.fallback_report({}, ())


def _run_one_pass(
    shard_set: ShardSet,
    groups: list[PlateGroup],
    config: NormalizeConfig,
    staging: str,
    meta_schema: pa.Schema,
) -> tuple[list[_PlateInfo], pd.DataFrame, list[str]]:
    view = ray.put(_task_view(shard_set))
    infos: list[_PlateInfo] = []
    reports = []
    results = _stream(
        lambda g: _one_pass.remote(view, g, config, staging, meta_schema),
        groups,
        desc="normalize plates",
        unit="task",
    )
    for result in results:
        infos.extend(result.plates)
        if result.report is not None:
            reports.append(result.report)
    P.check_negcon({i.plate: i.negcon_rows for i in infos}, reference=config.reference)
    names = {i.names for i in infos if i.names is not None}
    if len(names) != 1:
        msg = f"plates gave {len(names)} different output feature sets; this is a bug"
        raise RuntimeError(msg)
    report = pd.concat(reports, ignore_index=True) if reports else _EMPTY_REPORT
    report = report.sort_values("plate", kind="stable", ignore_index=True)
    return infos, report, list(next(iter(names)))


def _run_two_passes(
    shard_set: ShardSet,
    groups: list[PlateGroup],
    by_plate: Mapping[str, list[FileEntry]],
    config: NormalizeConfig,
    staging: str,
    meta_schema: pa.Schema,
) -> tuple[list[_PlateInfo], pd.DataFrame, list[str]]:
    features = list(shard_set.manifest.features)
    view = ray.put(_task_view(shard_set))
    infos: list[_PlateInfo] = []
    scopes: dict[str, _Scope] = {}
    combat: P.CombatStats | None = None
    stats = _stream(
        lambda g: _stats_pass.remote(view, g, config),
        groups,
        desc="plate statistics",
        unit="task",
    )
    for result in stats:
        infos.extend(result.plates)
        combat = _merge(combat, result.combat)
        for key, part in result.scopes.items():
            scopes[key] = scopes[key].merge(part) if key in scopes else part
    report = _EMPTY_REPORT
    names = features
    if config.method == "combat":
        assert combat is not None  # a shard set has at least one file
        params: dict[str, Any] = {
            "combat": P.fit_combat(combat, parametric=not config.nonparametric)
        }
    else:
        P.check_negcon({i.plate: i.negcon_rows for i in infos}, reference=config.reference)
        fits = _fit_global(scopes, config, shard_set, by_plate)
        plate_scope = {
            i.plate: "*" if config.reference == "negcon-global" else str(i.batch) for i in infos
        }
        params = {"fits": fits, "plate_scope": plate_scope}
        if config.method == "spherize":
            names = P.spherize_feature_names(next(iter(fits.values())), features)
        else:
            report = P.fallback_report({p: fits[s] for p, s in plate_scope.items()}, features)
    schema = _output_schema(meta_schema, names)
    params_ref = ray.put(params)
    by_name = {i.plate: i for i in infos}
    applied = _stream(
        lambda g: _apply_pass.remote(
            view, g, config, params_ref, staging, schema, len(meta_schema)
        ),
        groups,
        desc="apply",
        unit="task",
    )
    for written in applied:
        for plate, entry in written:
            by_name[plate].files.append(entry)
    return infos, report, list(names)


def normalize(
    config: NormalizeConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Normalize a ``plates`` shard set (see :class:`raymmi.config.NormalizeConfig`).

    Returns the committed manifest; the fallback report is ``_fallback_report.csv`` in the
    output and a table artifact of the MLflow run.
    """
    started = time.perf_counter()
    shard_set = open_shard_set(config.source, kind="plates")
    _check_config(shard_set, config)
    init_ray(ray_config)
    m = shard_set.manifest
    by_plate: dict[str, list[FileEntry]] = defaultdict(list)
    for entry in m.files:
        by_plate[entry.plate or ""].append(entry)
    groups = _groups(by_plate)
    meta_schema = _metadata_schema(shard_set)
    cfg = to_dict(config)
    one_pass = config.method != "combat" and config.reference in ("negcon", "all")
    with (
        ShardSetWriter(config.out, overwrite=config.overwrite) as writer,
        tracked_run("normalize", config=cfg, tracking=tracking) as run,
    ):
        run.log_shard_set(config.source, m.to_dict(), context="input")
        if one_pass:
            infos, report, names = _run_one_pass(
                shard_set, groups, config, writer.staging, meta_schema
            )
        else:
            infos, report, names = _run_two_passes(
                shard_set, groups, by_plate, config, writer.staging, meta_schema
            )
        files = sorted((f for i in infos for f in i.files), key=lambda e: (e.plate or "", e.path))
        _write_report(writer.staging, report)
        counts = report["fallback"].value_counts().to_dict() if len(report) else {}
        manifest = writer.commit(
            Manifest(
                kind="plates",
                files=tuple(files),
                metadata=m.metadata,
                features=tuple(names),
                producer=producer("normalize", cfg, run),
                parents=(shard_set.parent_ref(),),
                extra={
                    "method": config.method,
                    "reference": config.reference,
                    "epsilon": config.epsilon,
                    "fallback_counts": counts,
                    "fallback_report": FALLBACK_REPORT_NAME,
                },
            )
        )
        run.log_table(report, "fallback_report.csv")
        run.log_shard_set(config.out, manifest.to_dict(), context="output")
        run.log_metrics(
            {
                "rows": manifest.num_rows,
                "plates": len(by_plate),
                "features": len(names),
                "fallback_all_wells": counts.get("all-wells", 0),
                "fallback_unnormalized": counts.get("unnormalized", 0),
                "seconds": time.perf_counter() - started,
            }
        )
    return manifest


def _metadata_schema(shard_set: ShardSet) -> pa.Schema:
    """The stored metadata fields (types as in the first file), in manifest order."""
    first = shard_set.manifest.files[0]
    fs, root = resolve(shard_set.uri)
    schema = pq.read_schema(posixpath.join(root, first.path), filesystem=fs)
    return pa.schema([schema.field(n) for n in shard_set.manifest.metadata])


def _write_report(staging: str, report: pd.DataFrame) -> None:
    fs, root = resolve(staging)
    buffer = io.StringIO()
    report.to_csv(buffer, index=False)
    with fs.open_output_stream(posixpath.join(root, FALLBACK_REPORT_NAME)) as f:
        f.write(buffer.getvalue().encode())
