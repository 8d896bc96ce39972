"""Ingest and generate ``cells`` shard sets with Ray tasks (one per chunk of cells)."""

from __future__ import annotations

import time
from typing import Any

import ray

from raymmi.cells import check_counts as _check_counts
from raymmi.config import IngestCellsConfig, RayConfig, TrackingConfig, to_dict
from raymmi.io import ShardSetWriter, claiming, write_part
from raymmi.io import _cells as h5
from raymmi.run._plates._driver import producer
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import (
    CELL_ID,
    FileEntry,
    Manifest,
    Modality,
    RaymmiError,
    cell_batch_to_arrow,
)
from raymmi.track import Run, tracked_run


@ray.remote(num_cpus=1)
def _ingest_chunk(
    mods: list[h5.H5Modality],
    positions: list[Any],
    start: int,
    stop: int,
    staging: str,
    index: int,
    batch_key: str,
    check_counts: bool = True,
) -> tuple[FileEntry, list[str]]:
    batch = h5.read_cell_chunk(mods, start, stop, positions=positions, batch_key=batch_key)
    if check_counts:  # impossible counts are refused here, naming the layer, not at preprocess
        # only a counts layer must hold counts; a bare X (stored with a warning) may be
        # normalized on purpose, and preprocess checks it where counts are needed
        for mod in (m for m in mods if m.matrix == "layers/counts"):
            _check_counts(
                batch.modalities[mod.name],
                name=mod.name,
                source=f"{mod.group.rstrip('/')}/{mod.matrix} of {mod.path}".lstrip("/"),
                where=f"cells {start}..{stop - 1}",
            )
    table = cell_batch_to_arrow(batch)
    return write_part(staging, f"part-{index:05d}.parquet", table), table.column_names


def _modalities(config: IngestCellsConfig) -> list[h5.H5Modality]:
    mods = [h5.open_modality(config.rna, name="rna", layer=config.layer)]
    for name in ("atac", "adt"):
        path = getattr(config, name)
        if path is not None:
            mods.append(h5.open_modality(path, name=name, layer=config.layer))
    if len(mods) == 1 and config.rna.lower().endswith(".h5mu"):
        for name in ("atac", "adt"):
            try:
                mods.append(h5.open_modality(config.rna, name=name, layer=config.layer))
                break
            except RaymmiError:
                continue
    return mods


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": (config.rna, config.atac, config.adt),
        "overwrite": config.overwrite,
    }
)
def ingest_cells(
    config: IngestCellsConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Ingest paired ``.h5ad``/``.h5mu`` modalities into a ``cells`` shard set.

    Cells are aligned by id (the first modality's order is kept), raw counts come from
    ``layers["counts"]`` when present, and one Ray task per chunk of ``chunk_size`` cells reads
    its rows from disk and writes one Parquet file, so memory follows the chunk size.
    """
    started = time.perf_counter()
    mods = _modalities(config)
    ids = h5.read_cell_ids(mods[0])
    h5.check_unique_ids(ids, name=mods[0].path)
    positions = [None] + [
        h5.align(ids, h5.read_cell_ids(m), names=(mods[0].path, m.path)) for m in mods[1:]
    ]
    n = len(ids)
    del ids
    if n == 0:
        msg = f"{config.rna!r} holds no cells; nothing to ingest"
        raise RaymmiError(msg)
    init_ray(ray_config)
    cfg = to_dict(config)
    with (
        ShardSetWriter(config.out, overwrite=config.overwrite) as writer,
        tracked_run("ingest cells", config=cfg, tracking=tracking) as run,
    ):
        refs = [
            _ingest_chunk.remote(
                mods,
                positions,
                start,
                min(start + config.chunk_size, n),
                writer.staging,
                i,
                config.batch_key,
                config.check_counts,
            )
            for i, start in enumerate(range(0, n, config.chunk_size))
        ]
        results = gather(refs, desc="ingest cells", unit="chunk")
        manifest = _commit_cells(
            writer,
            results,
            modalities=[m.modality() for m in mods],
            producer_record=producer("ingest cells", cfg, run),
            extra={
                "sources": {m.name: m.path for m in mods},
                "counts_from": {m.name: f"{m.group.rstrip('/')}/{m.matrix}" for m in mods},
                "batch_key": config.batch_key,
            },
        )
        _log_output(run, config.out, manifest, started)
    return manifest


def _commit_cells(
    writer: ShardSetWriter,
    results: list[tuple[FileEntry, list[str]]],
    *,
    modalities: list[Modality],
    producer_record: dict[str, Any],
    extra: dict[str, Any],
) -> Manifest:
    value_columns = {c for m in modalities for c in m.columns()}
    value_columns |= {f"{m.name}_depth" for m in modalities}
    columns = results[0][1]
    metadata = tuple(c for c in columns if c not in value_columns)
    if metadata[0] != CELL_ID:
        msg = f"internal error: first column is {metadata[0]!r}, not {CELL_ID!r}"
        raise RuntimeError(msg)
    manifest = Manifest(
        kind="cells",
        files=tuple(entry for entry, _ in results),
        metadata=metadata,
        modalities=tuple(modalities),
        producer=producer_record,
        extra=extra,
    )
    return writer.commit(manifest)


def _log_output(run: Run, out: str, manifest: Manifest, started: float) -> None:
    seconds = time.perf_counter() - started
    run.log_shard_set(out, manifest.to_dict(), context="output")
    run.log_metrics(
        {
            "cells": manifest.num_rows,
            "files": len(manifest.files),
            "seconds": seconds,
            "cells_per_second": manifest.num_rows / max(seconds, 1e-9),
            **{f"features_{m.name}": len(m.features) for m in manifest.modalities},
        }
    )


@ray.remote(num_cpus=1)
def _generate_chunk(spec: Any, index: int, staging: str) -> tuple[FileEntry, list[str]]:
    from raymmi import testing

    table = cell_batch_to_arrow(testing.generate_cells(spec, index))
    return write_part(staging, f"part-{index:05d}.parquet", table), table.column_names


@claiming(lambda spec, **kw: {"uri": kw["out"], "overwrite": kw.get("overwrite", False)})
def generate_cells(
    spec: Any,
    *,
    out: str,
    overwrite: bool = False,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Generate a seeded ``cells`` shard set (:class:`raymmi.testing.CellSetSpec`) with Ray."""
    from raymmi import testing

    started = time.perf_counter()
    init_ray(ray_config)
    cfg = {"kind": "cells", "out": out, "spec": to_dict(spec)}
    second = (
        ("atac", testing.peak_names(spec))
        if spec.kind == "multiome"
        else ("adt", testing.protein_names(spec))
    )
    modalities = [
        Modality("rna", "sparse", tuple(testing.gene_names(spec))),
        Modality(second[0], "sparse" if second[0] == "atac" else "dense", tuple(second[1])),
    ]
    with (
        ShardSetWriter(out, overwrite=overwrite) as writer,
        tracked_run("generate cells", config=cfg, tracking=tracking) as run,
    ):
        refs = [
            _generate_chunk.remote(spec, i, writer.staging) for i in range(testing.n_chunks(spec))
        ]
        results = gather(refs, desc="generate cells", unit="chunk")
        manifest = _commit_cells(
            writer,
            results,
            modalities=modalities,
            producer_record=producer("generate cells", cfg, run),
            extra={"generator": "raymmi.testing.generate_cells"},
        )
        _log_output(run, out, manifest, started)
    return manifest
