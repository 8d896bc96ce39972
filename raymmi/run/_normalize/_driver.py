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

import io
import posixpath
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from raymmi import plates as P
from raymmi.config import NormalizeConfig, RayConfig, TrackingConfig, to_dict
from raymmi.io import ShardSet, ShardSetWriter, claiming, open_part, open_shard_set, resolve
from raymmi.run._normalize._plate import PlateGroup, _merge, _output_schema, _PlateInfo, _Scope
from raymmi.run._normalize._tasks import (
    _apply_pass,
    _groups,
    _one_pass,
    _plate_columns,
    _stats_pass,
    _stream,
    _task_view,
)
from raymmi.run._plates._driver import producer
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import (
    FALLBACK_REPORT_NAME,
    FileEntry,
    Manifest,
    RaymmiError,
)
from raymmi.track import tracked_run

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


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": [config.source],
        "overwrite": config.overwrite,
    }
)
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
    # The first file, verified (checksum, footer, columns) before its schema is trusted.
    schema = open_part(shard_set.uri, shard_set.manifest.files[0]).schema_arrow
    return pa.schema([schema.field(n) for n in shard_set.manifest.metadata])


def _write_report(staging: str, report: pd.DataFrame) -> None:
    fs, root = resolve(staging)
    buffer = io.StringIO()
    report.to_csv(buffer, index=False)
    with fs.open_output_stream(posixpath.join(root, FALLBACK_REPORT_NAME)) as f:
        f.write(buffer.getvalue().encode())
