"""``raymmi normalize``: per-plate statistics by Ray tasks, a broadcast apply in Ray Data.

Pass 1 runs one task per plate over that plate's files (a plate fits in memory, so medians,
IQRs and MADs are exact). Per-plate references are fitted right there; global references
(``negcon-global``, ``batch``) and ComBat return mergeable moments, or, for robust statistics,
the reference rows, which the driver pools. Pass 2 is ``map_batches`` over the whole set with
the fitted parameters broadcast through the object store, written by the shard-set sink. No
shuffle anywhere.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from raymmi import plates as P
from raymmi.config import NormalizeConfig, RayConfig, TrackingConfig, to_dict
from raymmi.io import ShardSet, ShardSetWriter, open_shard_set, resolve
from raymmi.io._plates import negcon_mask
from raymmi.run._datasets import read_dataset, write_parts
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
)
from raymmi.track import tracked_run

ROBUST = ("robustize", "mad_robustize")


@dataclasses.dataclass
class _PlateResult:
    """What pass 1 learns from one plate."""

    plate: str
    rows: int
    negcon_rows: int
    batch: str | None = None
    fit: Any = None  # PlateFit / SpherizeFit for per-plate references
    moments: Any = None  # Moments of the reference rows (global standardize / mean)
    all_moments: Any = None  # Moments of all rows (fallback of negcon-global standardize)
    rows_ref: np.ndarray | None = None  # reference rows (global robust / spherize)
    combat: Any = None  # CombatStats


def _read_plate(
    shard_set: ShardSet, files: Sequence[FileEntry], columns: Sequence[str]
) -> pd.DataFrame:
    fs, root = resolve(shard_set.uri)
    import pyarrow.parquet as pq

    tables = [
        pq.read_table(posixpath.join(root, f.path), columns=list(columns), filesystem=fs)
        for f in files
    ]
    return pa.concat_tables(tables).to_pandas()


def _needed_columns(shard_set: ShardSet, config: NormalizeConfig) -> list[str]:
    m = shard_set.manifest
    meta = list(m.metadata) if config.negcon else [PLATE, NEGCON]
    if config.reference == "batch" or config.method == "combat":
        meta.append(config.batch_key)
    return list(dict.fromkeys(meta)) + list(m.features)


def _negcon(frame: pd.DataFrame, config: NormalizeConfig, plate: str) -> np.ndarray:
    return negcon_mask(frame, config.negcon, source=f"plate {plate}")


def _single_batch(frame: pd.DataFrame, key: str, plate: str) -> str:
    batches = frame[key].astype(str).unique()
    if len(batches) != 1:
        msg = (
            f"plate {plate!r} spans {len(batches)} values of {key} ({list(batches[:3])}); "
            "a batch reference needs each plate in one batch"
        )
        raise RaymmiError(msg)
    return str(batches[0])


@ray.remote(num_cpus=1)
def _plate_pass(
    shard_set: ShardSet, plate: str, files: list[FileEntry], config: NormalizeConfig
) -> _PlateResult:
    features = list(shard_set.manifest.features)
    frame = _read_plate(shard_set, files, _needed_columns(shard_set, config))
    x = frame[features].to_numpy(dtype=np.float32)
    negcon = _negcon(frame, config, plate)
    result = _PlateResult(plate=plate, rows=len(frame), negcon_rows=int(negcon.sum()))
    if config.method == "combat":
        result.combat = P.combat_stats(x, frame[config.batch_key].astype(str).to_numpy())
        return result
    if config.reference == "batch":
        result.batch = _single_batch(frame, config.batch_key, plate)
    if config.reference in ("negcon", "all"):
        if config.reference == "negcon" and not negcon.any():
            return result  # reported with every other such plate by check_negcon
        if config.method == "spherize":
            ref = x[negcon] if config.reference == "negcon" else x
            result.fit = P.fit_spherize(
                ref, method=config.spherize_method, epsilon=config.spherize_epsilon
            )
        else:
            result.fit = P.fit_plate(
                x,
                negcon,
                method=config.method,
                reference=config.reference,
                epsilon=config.epsilon,
                plate=plate,
            )
        return result
    ref_rows = x[negcon] if config.reference == "negcon-global" else x
    if config.method in ("standardize", "mean"):
        result.moments = P.Moments.of(ref_rows)
        result.all_moments = P.Moments.of(x)
    else:
        result.rows_ref = ref_rows
    return result


@ray.remote(num_cpus=1)
def _plate_columns(shard_set: ShardSet, files: list[FileEntry], columns: list[str]) -> np.ndarray:
    frame = _read_plate(shard_set, files, columns)
    return frame.to_numpy(dtype=np.float64)


def _fit_global(
    results: Sequence[_PlateResult],
    config: NormalizeConfig,
    shard_set: ShardSet,
    by_plate: Mapping[str, list[FileEntry]],
) -> dict[str, Any]:
    """Fits per scope (``"*"`` for negcon-global, batch ids for ``batch``); plate → scope."""
    scopes: dict[str, list[_PlateResult]] = defaultdict(list)
    for r in results:
        scopes["*" if config.reference == "negcon-global" else str(r.batch)].append(r)
    fits: dict[str, Any] = {}
    for scope, members in scopes.items():
        if config.method in ("standardize", "mean"):
            ref = P.Moments.merge_all(r.moments for r in members)
            all_rows = (
                P.Moments.merge_all(r.all_moments for r in members)
                if config.reference == "negcon-global"
                else None
            )
            fits[scope] = P.fit_global(
                ref,
                method=config.method,
                epsilon=config.epsilon,
                all_rows=all_rows,
                reference=config.reference,
            )
            continue
        rows = np.concatenate([r.rows_ref for r in members if r.rows_ref is not None])
        if config.method == "spherize":
            fits[scope] = P.fit_spherize(
                rows, method=config.spherize_method, epsilon=config.spherize_epsilon
            )
            continue
        spread_all = None
        n_rows = sum(r.rows for r in members)
        if config.reference == "negcon-global":
            _, spread = P.fit_location_scale(rows, method=config.method)
            zero = np.flatnonzero(~(np.isfinite(spread) & (spread > 0)))
            spread_all = np.full(len(spread), np.nan)
            if zero.size:
                # gather only the zero-spread columns of every row: the rare fallback
                names = [shard_set.manifest.features[i] for i in zero]
                refs = [
                    _plate_columns.remote(shard_set, by_plate[r.plate], names) for r in members
                ]
                block = np.concatenate(gather(refs, desc="fallback columns", unit="plate"))
                spread_all[zero] = P.fit_location_scale(block, method=config.method)[1]
        fits[scope] = P.fit_global(
            rows,
            method=config.method,
            epsilon=config.epsilon,
            all_rows=spread_all,
            n_rows=n_rows,
            reference=config.reference,
        )
    plate_scope = {
        r.plate: "*" if config.reference == "negcon-global" else str(r.batch) for r in results
    }
    return {"fits": fits, "plate_scope": plate_scope}


_PARAMS: dict[str, Any] = {}


def _params(ref: ray.ObjectRef) -> Any:
    """The broadcast parameters, fetched once per worker process."""
    key = ref.hex()
    if key not in _PARAMS:
        _PARAMS.clear()
        _PARAMS[key] = ray.get(ref)
    return _PARAMS[key]


def _apply_fn(
    params_ref: ray.ObjectRef,
    config: NormalizeConfig,
    features: Sequence[str],
    names: Sequence[str],
):
    """The per-batch apply of pass 2; a plain function so Ray Data fuses it with the read."""
    features = list(features)

    def apply(batch: pd.DataFrame) -> pd.DataFrame:
        params = _params(params_ref)
        x = batch[features].to_numpy(dtype=np.float32)
        out = np.empty((len(batch), len(names)), dtype=np.float32)
        if config.method == "combat":
            labels = batch[config.batch_key].astype(str).to_numpy()
            out[:] = P.apply_combat(x, labels, params["combat"])
        else:
            transform = P.apply_spherize if config.method == "spherize" else P.apply_location_scale
            plates = batch[PLATE].astype(str).to_numpy()
            for plate in np.unique(plates):
                rows = plates == plate
                out[rows] = transform(x[rows], _fit_of(params, plate))
        meta = batch.drop(columns=features)
        if config.negcon:
            meta[NEGCON] = negcon_mask(batch, config.negcon, source="normalize")
        return pd.concat([meta, pd.DataFrame(out, columns=list(names), index=batch.index)], axis=1)

    return apply


def _fit_of(params: Mapping[str, Any], plate: str) -> Any:
    if "per_plate" in params:
        return params["per_plate"][plate]
    return params["fits"][params["plate_scope"][plate]]


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
    cfg = to_dict(config)
    with (
        ShardSetWriter(config.out, overwrite=config.overwrite) as writer,
        tracked_run("normalize", config=cfg, tracking=tracking) as run,
    ):
        run.log_shard_set(config.source, m.to_dict(), context="input")
        refs = [_plate_pass.remote(shard_set, p, fs, config) for p, fs in by_plate.items()]
        results: list[_PlateResult] = gather(refs, desc="plate statistics", unit="plate")
        if config.method != "combat":
            P.check_negcon({r.plate: r.negcon_rows for r in results}, reference=config.reference)
        params, report = _fit(results, config, shard_set, by_plate)
        names = _output_names(params, config, m.features)
        apply = _apply_fn(ray.put(params), config, m.features, names)
        ds = read_dataset(shard_set).map_batches(apply, batch_format="pandas")
        schema = _output_schema(shard_set, names)
        files = write_parts(ds, writer.staging, kind="plates", schema=schema)
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


def _fit(
    results: list[_PlateResult],
    config: NormalizeConfig,
    shard_set: ShardSet,
    by_plate: Mapping[str, list[FileEntry]],
) -> tuple[dict[str, Any], pd.DataFrame]:
    features = shard_set.manifest.features
    empty = pd.DataFrame(columns=["plate", "feature", "fallback", "reference_rows", "plate_rows"])
    if config.method == "combat":
        stats = P.CombatStats.merge_all(r.combat for r in results)
        return {"combat": P.fit_combat(stats, parametric=not config.nonparametric)}, empty
    if config.reference in ("negcon", "all"):
        per_plate = {r.plate: r.fit for r in results}
        params: dict[str, Any] = {"per_plate": per_plate}
        if config.method == "spherize":
            return params, empty
        return params, P.fallback_report(per_plate, features)
    params = _fit_global(results, config, shard_set, by_plate)
    if config.method == "spherize":
        return params, empty
    scoped = {p: params["fits"][s] for p, s in params["plate_scope"].items()}
    return params, P.fallback_report(scoped, features)


def _output_names(params: dict[str, Any], config: NormalizeConfig, features) -> list[str]:
    if config.method != "spherize":
        return list(features)
    fit = next(iter((params.get("per_plate") or params["fits"]).values()))
    return P.spherize_feature_names(fit, features)


def _output_schema(shard_set: ShardSet, names: Sequence[str]) -> pa.Schema:
    first = shard_set.manifest.files[0]
    fs, root = resolve(shard_set.uri)
    import pyarrow.parquet as pq

    schema = pq.read_schema(posixpath.join(root, first.path), filesystem=fs)
    meta = [schema.field(n) for n in shard_set.manifest.metadata]
    return pa.schema(meta + [pa.field(n, FEATURE_TYPE) for n in names])


def _write_report(staging: str, report: pd.DataFrame) -> None:
    fs, root = resolve(staging)
    buffer = io.StringIO()
    report.to_csv(buffer, index=False)
    with fs.open_output_stream(posixpath.join(root, FALLBACK_REPORT_NAME)) as f:
        f.write(buffer.getvalue().encode())
