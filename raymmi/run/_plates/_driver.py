"""Ingest and generate ``plates`` shard sets with Ray tasks (one per source, plate or group)."""

from __future__ import annotations

import posixpath
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import ray

import raymmi
from raymmi.config import IngestPlatesConfig, RayConfig, TrackingConfig, to_dict
from raymmi.io import ShardSetWriter, claiming
from raymmi.io import _cellprofiler as cp
from raymmi.io import _plates as tables
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import FileEntry, Manifest, RaymmiError
from raymmi.track import Run, tracked_run


def producer(command: str, config: dict[str, Any], run: Run) -> dict[str, Any]:
    """The ``producer`` record of a manifest."""
    return {
        "command": command,
        "argv": sys.argv,
        "config": config,
        "mlflow_run_id": run.run_id,
        "raymmi_version": raymmi.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@ray.remote(num_cpus=1)
def _ingest_table(
    src: str, staging: str, index: int, plan: tables.IngestPlan
) -> tables.SourceSummary:
    return tables.ingest_table_source(
        src, staging, part_name=f"part-{index:05d}.parquet", plan=plan
    )


@ray.remote(num_cpus=1)
def _ingest_cellprofiler(
    plate: str, wells: list[list[str]], staging: str, plan: tables.IngestPlan, aggregate: Any
) -> tables.SourceSummary:
    frames = tables.iter_cellprofiler_wells(wells, aggregate=aggregate)
    source = f"CellProfiler plate {plate}"
    return tables.ingest_tables(
        frames, staging, source=source, part_name="part-00000.parquet", plan=plan
    )


@ray.remote(num_cpus=1)
def _duplicates(staging: str, files: list[FileEntry], keys: list[str]) -> tuple[int, list]:
    return tables.find_duplicate_keys(staging, files, keys=keys)


def _check(summaries: Sequence[tables.SourceSummary], config: IngestPlatesConfig) -> list[str]:
    problems: list[str] = []
    nonfinite: Counter[str] = Counter()
    for s in summaries:
        nonfinite.update(s.nonfinite_per_column)
    if nonfinite and config.on_nan == "fail":
        worst = ", ".join(f"{k}: {v}" for k, v in nonfinite.most_common(10))
        problems.append(
            f"{sum(nonfinite.values())} NaN/inf feature values in {len(nonfinite)} column(s) "
            f"({worst}); pass --on-nan drop-rows to drop those rows or --on-nan keep to store NaN"
        )
    kept = sum(sum(s.rows_per_plate.values()) for s in summaries)
    if kept == 0 and config.on_nan == "drop-rows" and nonfinite:
        every = [k for k, _ in nonfinite.most_common(5)]
        problems.append(
            f"--on-nan drop-rows dropped every row: NaN/inf in every row (most in {every}); "
            "drop the empty feature column(s) from the source, or pass --on-nan keep"
        )
    if config.negcon is not None:
        rows: Counter[str] = Counter()
        negcon: Counter[str] = Counter()
        for s in summaries:
            rows.update(s.rows_per_plate)
            negcon.update(s.negcon_per_plate)
        empty = sorted(p for p in rows if negcon[p] == 0)
        if empty:
            problems.append(
                f"--negcon {config.negcon!r} matches no row on {len(empty)} plate(s): "
                f"{empty[:10]}; fix the query or drop those plates"
            )
    return problems


def _plan(
    config: IngestPlatesConfig,
) -> tuple[list[str], dict[str, list[list[str]]], pa.Schema, tuple[str, ...]]:
    """Split sources into tables and CellProfiler plates; unify their schemas on the driver."""
    table_sources: list[str] = []
    cp_wells: dict[str, list[list[str]]] = {}
    schemas: dict[str, pa.Schema] = {}
    for src in config.sources:
        if tables.source_type(src) == "cellprofiler":
            sites = cp.find_sites(src)
            grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
            for site in sites:
                plate, well = tables.cellprofiler_site_keys(site)
                grouped[(plate, well)].append(str(site))
            for (plate, _), group in sorted(grouped.items()):
                cp_wells.setdefault(plate, []).append(group)
            first = cp.read_cellprofiler_site(sites[0])
            if config.aggregate:
                first = cp.aggregate_to_wells(first, how=config.aggregate)
            schemas[src] = pa.Table.from_pandas(first, preserve_index=False).schema
        else:
            if config.aggregate:
                msg = "--aggregate applies to CellProfiler folders only, not to profile tables"
                raise RaymmiError(msg)
            table_sources.append(src)
            schemas[src] = tables.read_source_schema(src)
    metadata, features = tables.plan_schema(schemas)
    return table_sources, cp_wells, metadata, features


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": config.sources,
        "overwrite": config.overwrite,
    }
)
def ingest_plates(
    config: IngestPlatesConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Ingest profile tables / CellProfiler output into a ``plates`` shard set.

    One Ray task per table source (or per CellProfiler plate) streams its rows into per-plate
    Parquet parts in a staging directory; the driver checks the summaries (non-finite values,
    negcon coverage, duplicate keys per plate) and commits the manifest, or removes everything.
    """
    started = time.perf_counter()
    table_sources, cp_plates, metadata, features = _plan(config)
    init_ray(ray_config)
    cfg = to_dict(config)
    with (
        ShardSetWriter(config.out, overwrite=config.overwrite) as writer,
        tracked_run("ingest plates", config=cfg, tracking=tracking) as run,
    ):
        plan = tables.IngestPlan(
            metadata=metadata,
            features=features,
            negcon_query=config.negcon,
            on_nan=config.on_nan,
            batch_rows=config.batch_rows,
        )
        refs = [
            _ingest_table.remote(src, writer.staging, i, plan)
            for i, src in enumerate(table_sources)
        ]
        refs += [
            _ingest_cellprofiler.remote(p, wells, writer.staging, plan, config.aggregate)
            for p, wells in cp_plates.items()
        ]
        summaries = gather(refs, desc="ingest plates", unit="source")
        manifest = _commit_plates(
            writer,
            summaries,
            metadata=metadata,
            features=features,
            problems=_check(summaries, config),
            producer_record=producer("ingest plates", cfg, run),
            extra={
                "sources": list(config.sources),
                "negcon_query": config.negcon,
                "on_nan": config.on_nan,
                "aggregate": config.aggregate,
            },
        )
        _log_output(run, config.out, manifest, started)
    return manifest


def _commit_plates(
    writer: ShardSetWriter,
    summaries: Sequence[tables.SourceSummary],
    *,
    metadata: pa.Schema,
    features: Sequence[str],
    problems: list[str],
    producer_record: dict[str, Any],
    extra: dict[str, Any],
    parents: tuple[dict[str, Any], ...] = (),
) -> Manifest:
    files = sorted((f for s in summaries for f in s.files), key=lambda f: (f.plate, f.path))
    by_plate: dict[str, list[FileEntry]] = defaultdict(list)
    for entry in files:
        by_plate[entry.plate or ""].append(entry)
    keys = tables.key_columns(metadata.names)
    # Each task found the repeats within its own parts; only a plate split over several
    # sources needs a second look across its files.
    duplicates = {p: d for s in summaries for p, d in s.duplicates.items()}
    shared = {p: fs for p, fs in by_plate.items() if len(fs) > 1 and p not in duplicates}
    refs = [_duplicates.remote(writer.staging, fs, keys) for fs in shared.values()]
    duplicates.update(zip(shared, gather(refs, desc="check keys", unit="plate"), strict=True))
    for plate, (count, examples) in sorted(duplicates.items()):
        if count:
            problems.append(
                f"plate {plate!r}: {count} duplicate {keys} key(s), e.g. {examples[:3]}; "
                "each (plate, well[, site]) must appear once: drop repeats or add Metadata_Site"
            )
    if problems:
        raise RaymmiError(
            "; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)
        )
    if not files:
        msg = "the inputs hold no rows; nothing to ingest"
        raise RaymmiError(msg)
    nonfinite: Counter[str] = Counter()
    for s in summaries:
        nonfinite.update(s.nonfinite_per_column)
    manifest = Manifest(
        kind="plates",
        files=tuple(files),
        metadata=tuple(metadata.names),
        features=tuple(features),
        producer=producer_record,
        parents=parents,
        extra={
            **extra,
            "rows_dropped": sum(s.rows_dropped for s in summaries),
            "nonfinite_per_column": dict(nonfinite),
        },
    )
    return writer.commit(manifest)


def _log_output(run: Run, out: str, manifest: Manifest, started: float) -> None:
    seconds = time.perf_counter() - started
    run.log_shard_set(out, manifest.to_dict(), context="output")
    run.log_metrics(
        {
            "rows": manifest.num_rows,
            "plates": len(manifest.plates),
            "features": len(manifest.features),
            "files": len(manifest.files),
            "rows_dropped": manifest.extra.get("rows_dropped", 0),
            "seconds": seconds,
            "rows_per_second": manifest.num_rows / max(seconds, 1e-9),
        }
    )


def _generated_table(frame: Any, schema: pa.Schema, features: Sequence[str]) -> pa.Table:
    """One generated plate (a DataFrame) as a table of ``schema``, with no per-column pandas.

    ``pa.Table.from_pandas`` plus the ingest's validation cost ~90 ms a 384 x 1,000 plate;
    the generator's output is valid by construction (float32 features, one plate, unique
    wells), so the features go straight from its one float32 block to Arrow (~3 ms).
    """
    import numpy as np

    values = np.ascontiguousarray(frame[list(features)].to_numpy(dtype=np.float32).T)
    n_meta = len(schema) - len(features)
    arrays: list[pa.Array] = [
        pa.array(frame[schema.field(i).name].to_numpy(), type=schema.field(i).type)
        for i in range(n_meta)
    ]
    arrays += [pa.array(values[j]) for j in range(len(features))]
    return pa.Table.from_arrays(arrays, schema=schema)


@ray.remote(num_cpus=1)
def _generate_plates(
    spec: Any, indices: list[int], staging: str, plan: tables.IngestPlan
) -> tables.SourceSummary:
    """Generate and write the plates ``indices``, one part per plate (memory: one plate)."""
    import numpy as np

    from raymmi import testing
    from raymmi.io import PartWriter
    from raymmi.schema import NEGCON, PLATE, plate_dir

    schema = plan.stored_schema()
    summary = tables.SourceSummary(source=f"generated plates {indices[0]}..{indices[-1]}")
    for i in indices:
        table = _generated_table(testing.generate_plate(spec, i), schema, plan.features)
        plate = table.column(PLATE)[0].as_py()
        summary.rows_per_plate[plate] += table.num_rows
        summary.negcon_per_plate[plate] += int(np.sum(table.column(NEGCON).to_numpy()))
        for name in plan.features:
            bad = table.column(name).null_count + int(
                np.count_nonzero(~np.isfinite(table.column(name).to_numpy()))
            )
            if bad:
                summary.nonfinite_per_column[name] += bad
        relpath = posixpath.join(plate_dir(plate), "part-00000.parquet")
        with PartWriter(staging, relpath, schema, plate=plate) as part:
            part.write(table)
        summary.files.append(part.close())
    return summary


@claiming(lambda spec, **kw: {"uri": kw["out"], "overwrite": kw.get("overwrite", False)})
def generate_plates(
    spec: Any,
    *,
    out: str,
    overwrite: bool = False,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Generate a seeded ``plates`` shard set (:class:`raymmi.testing.PlateSetSpec`) with Ray.

    Plates are generated independently in parallel tasks, a few plates per task; memory per
    task is one plate.
    """
    from raymmi import testing

    started = time.perf_counter()
    init_ray(ray_config)
    first = pa.Table.from_pandas(testing.generate_plate(spec, 0), preserve_index=False)
    metadata, features = tables.plan_schema({"generated": first.schema})
    cfg = {"kind": "plates", "out": out, "spec": to_dict(spec)}
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_task = max(1, min(16, spec.n_plates // (4 * cpus)))
    groups = [
        list(range(i, min(i + per_task, spec.n_plates))) for i in range(0, spec.n_plates, per_task)
    ]
    plan = tables.IngestPlan(metadata=metadata, features=features, on_nan="keep")
    with (
        ShardSetWriter(out, overwrite=overwrite) as writer,
        tracked_run("generate plates", config=cfg, tracking=tracking) as run,
    ):
        refs = [_generate_plates.remote(spec, g, writer.staging, plan) for g in groups]
        summaries = gather(refs, desc="generate plates", unit="group")
        manifest = _commit_plates(
            writer,
            summaries,
            metadata=metadata,
            features=features,
            problems=[],
            producer_record=producer("generate plates", cfg, run),
            extra={
                "generator": "raymmi.testing.generate_plate",
                "planted_zero_spread": [list(p) for p in testing.planted_zero_spread(spec)],
            },
        )
        _log_output(run, out, manifest, started)
    return manifest
