"""``raymmi ingest images``: Cell Painting fields -> single-cell (or well) profiles on Ray Data.

One field is one row of work (with ``--aggregate``, one well: its fields one after another,
so the well's cells can be aggregated where they were measured, with no shuffle). Rows are
grouped into blocks by :func:`raymmi.run.work_blocks` (up to ~16 fields, big blocks first,
single fields last) and flow through ``map_batches`` (one block a call, at most ``workers``
tasks at once, one CPU each, one more queued where the CPUs bound them:
:func:`raymmi.run.tasks_in_flight`); a task profiles its block one field at a time, so a
worker holds one field's stack and its block's cells, however many fields there are. Each
task writes its cells as ``plates`` parts (never two plates in a file) and returns one row:
the parts' entries and its fields' QC records. The driver writes ``_field_qc.csv`` and
commits the manifest last.

``--illum plate`` first runs a statistics pass: Ray tasks each sum a chunk of one plate's
fields per channel; the driver merges the sums, smooths them into illumination functions
(:mod:`raymmi.images`) and puts each plate's functions in the object store once; every field
task of that plate fetches them.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from raymmi.config import IngestImagesConfig, RayConfig, TrackingConfig, to_dict
from raymmi.images import (
    OBJECT_NUMBER,
    IllumSums,
    ProfileConfig,
    SegmentConfig,
    illumination_functions,
    profile_field,
)
from raymmi.io import FieldSpec, ShardSetWriter, read_field, read_load_data, resolve
from raymmi.run._datasets import tasks_in_flight, without_budget_backpressure, work_dataset
from raymmi.run._images._cells import (
    QC_COLUMN,
    ImagePlan,
    ProfileUnits,
    profile_units,
    write_cells,
)
from raymmi.run._plates._driver import producer
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import NEGCON, PLATE, SITE, WELL, FileEntry, Manifest, RaymmiError
from raymmi.track import tracked_run

QC_FILE = "_field_qc.csv"
QC_FIGURE = "_qc_field.png"
_FIELDS_PER_ILLUM_TASK = 16


# ==============================================================================================
# Driver-side planning and checks
# ==============================================================================================


def _check_channels(fields: Sequence[FieldSpec], config: IngestImagesConfig) -> tuple[str, ...]:
    channels = tuple(fields[0].channels)
    for name, value in (
        ("--nuclei-channel", config.nuclei_channel),
        ("--cell-channel", config.cell_channel),
    ):
        if value is not None and value not in channels:
            msg = (
                f"{name} {value!r} is not a channel of {config.load_data}; its channels are "
                f"{list(channels)} (from FileName_<Channel> columns; JUMP's OrigDNA is DNA)"
            )
            raise RaymmiError(msg)
    return channels


def _check_files_exist(fields: Sequence[FieldSpec]) -> None:
    """Every listed plane and mask exists (one metadata call per file, before any work)."""
    by_fs: dict[Any, list[tuple[str, str, int]]] = defaultdict(list)
    fs_of: dict[Any, Any] = {}
    for spec in fields:
        for what, path in [
            *spec.channels.items(),
            *(("objects " + k, v) for k, v in spec.objects.items()),
        ]:
            fs, local = resolve(path)
            key = type(fs).__name__
            fs_of[key] = fs
            by_fs[key].append((local, what, spec.row))
    for key, items in by_fs.items():
        fs = fs_of[key]
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            infos = fs.get_file_info([p for p, _, _ in chunk])
            for (path, what, row), info in zip(chunk, infos, strict=True):
                if not info.is_file:
                    msg = (
                        f"LoadData row {row}: {what} image file {path!r} not found; fix its "
                        "FileName_/PathName_ in the CSV"
                    )
                    raise RaymmiError(msg)


def _negcon(fields: Sequence[FieldSpec], query: str | None) -> list[bool]:
    frame = pd.DataFrame([dict(f.metadata) for f in fields])
    if query is None:
        if NEGCON in frame.columns:
            return [str(v).strip().lower() in ("true", "1", "yes") for v in frame[NEGCON]]
        return [False] * len(fields)
    try:
        mask = frame.eval(query)
    except Exception as err:
        msg = f"--negcon {query!r} is not a valid query over the LoadData metadata ({err})"
        raise RaymmiError(msg) from err
    return [bool(v) for v in np.asarray(mask, dtype=bool)]


def _feature_names(profile: ProfileConfig, channels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Column names the measurements produce, from a small synthetic field with two cells."""
    yy, xx = np.mgrid[:96, :96]
    nuclei = np.zeros((96, 96), np.int32)
    nuclei[(yy - 30) ** 2 + (xx - 30) ** 2 < 64] = 1
    nuclei[(yy - 64) ** 2 + (xx - 66) ** 2 < 81] = 2
    cells = np.zeros_like(nuclei)
    cells[(yy - 30) ** 2 + (xx - 30) ** 2 < 300] = 1
    cells[((yy - 64) ** 2 + (xx - 66) ** 2 < 360) & (cells == 0)] = 2
    rng = np.random.default_rng(0)
    images = {
        c: (0.2 + 0.5 * (cells > 0) + 0.05 * rng.random((96, 96))).astype(np.float32)
        for c in channels
    }
    masks = {"Nuclei": nuclei}
    if profile.cell_channel is not None:
        masks["Cells"] = cells
    result = profile_field(images, masks, config=profile)
    centers = [c for c in result.columns if c.startswith("Metadata_") and c != OBJECT_NUMBER]
    features = [c for c in result.columns if not c.startswith("Metadata_")]
    return centers, features


def _kept_metadata(fields: Sequence[FieldSpec], aggregate: str | None) -> tuple[str, ...]:
    names = list(fields[0].metadata)
    if not aggregate:
        return tuple(n for n in names if n != NEGCON)
    # per well: the columns that are constant within every well (Site never is)
    values: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for f in fields:
        for n in names:
            values[(f.metadata[PLATE], f.metadata[WELL])][n].add(f.metadata[n])
    return tuple(
        n
        for n in names
        if n not in (SITE, NEGCON) and all(len(v[n]) == 1 for v in values.values())
    )


def _units(
    fields: Sequence[FieldSpec], negcon: Sequence[bool], aggregate: str | None
) -> list[dict[str, Any]]:
    """Rows of work: one per field, or one per well (its fields) with ``aggregate``.

    ``index`` numbers them; a block's parts are named by its first row's.
    """
    if not aggregate:
        return [
            {"index": i, "fields": json.dumps([f.to_dict()]), "negcon": bool(n)}
            for i, (f, n) in enumerate(zip(fields, negcon, strict=True))
        ]
    wells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    well_negcon: dict[tuple[str, str], bool] = {}
    for f, n in zip(fields, negcon, strict=True):
        key = (f.metadata[PLATE], f.metadata[WELL])
        wells[key].append(f.to_dict())
        well_negcon[key] = well_negcon.get(key, False) or bool(n)
    return [
        {"index": i, "fields": json.dumps(specs), "negcon": well_negcon[key]}
        for i, (key, specs) in enumerate(sorted(wells.items()))
    ]


# ==============================================================================================
# Illumination statistics pass
# ==============================================================================================


@ray.remote(num_cpus=1)
def _illum_sums(specs: list[dict[str, Any]], channels: tuple[str, ...]) -> IllumSums:
    sums = IllumSums()
    for data in specs:
        images, _ = read_field(FieldSpec.from_dict(data), channels=channels)
        sums.add(images)
    return sums


def _illumination(
    fields: Sequence[FieldSpec], channels: tuple[str, ...]
) -> dict[str, ray.ObjectRef]:
    by_plate: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in fields:
        by_plate[f.metadata[PLATE]].append(f.to_dict())
    jobs: list[tuple[str, ray.ObjectRef]] = []
    for plate, specs in by_plate.items():
        for start in range(0, len(specs), _FIELDS_PER_ILLUM_TASK):
            chunk = specs[start : start + _FIELDS_PER_ILLUM_TASK]
            jobs.append((plate, _illum_sums.remote(chunk, channels)))
    partials = _gather_user(lambda: gather([r for _, r in jobs], desc="illumination", unit="task"))
    merged: dict[str, IllumSums] = {}
    for (plate, _), part in zip(jobs, partials, strict=True):
        merged[plate] = merged[plate].merge(part) if plate in merged else part
    return {plate: ray.put(illumination_functions(s)) for plate, s in merged.items()}


_REMOTE_USER_ERROR = re.compile(r"RaymmiError: (.+)")


def _user_error(err: BaseException) -> RaymmiError | None:
    """The RaymmiError a Ray task or a Ray Data UDF raised, if that is what failed.

    Ray Data hands the driver a ``UserCodeException`` whose text holds the remote traceback,
    not the remote exception object; the user error's message is its last
    ``RaymmiError: ...`` line.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) is RaymmiError:
            return e
        cause = getattr(e, "cause", None)
        stack += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
        found = _REMOTE_USER_ERROR.findall(str(e))
        if found:
            return RaymmiError(found[-1].strip())
    return None


def _gather_user(fn: Any) -> Any:
    try:
        return fn()
    except Exception as err:
        user = _user_error(err)
        if user is not None:
            raise RaymmiError(str(user)) from err
        raise


# ==============================================================================================
# Driver
# ==============================================================================================


def plan_images(config: IngestImagesConfig) -> tuple[list[FieldSpec], ImagePlan]:
    """Read and check the LoadData CSV; fix the output schema (no Ray, no image work)."""
    fields = read_load_data(config.load_data)
    channels = _check_channels(fields, config)
    for spec in fields:
        if tuple(spec.channels) != channels:
            msg = (
                f"LoadData row {spec.row} lists channels {list(spec.channels)}, "
                f"not {list(channels)}"
            )
            raise RaymmiError(msg)
    _check_files_exist(fields)
    segment = SegmentConfig(
        nuclei_min_diameter=config.nuclei_min_diameter,
        nuclei_max_diameter=config.nuclei_max_diameter,
        nuclei_threshold=config.threshold,
        cells_threshold=config.threshold,
        discard_border_cells=config.discard_border_cells,
    )
    measures = ("sizeshape",) if config.embed_only else (tuple(config.measures) or ("sizeshape",))
    profile = ProfileConfig(
        nuclei_channel=config.nuclei_channel,
        cell_channel=config.cell_channel,
        measures=measures,
        segment=segment,
    )
    centers, features = _feature_names(profile, channels)
    embed = None
    if config.embed:
        from raymmi.images import CropEmbedder, embedding_dim

        try:
            dim = embedding_dim(
                config.embed, in_channels=len(channels), crop_size=config.crop_size
            )
        except ValueError as err:
            raise RaymmiError(str(err)) from err
        if config.weights != "random":
            try:  # once on the driver: a wrong file fails here, not in every actor
                CropEmbedder(
                    model=config.embed,
                    weights=str(config.weights),
                    channels=channels,
                    crop_size=config.crop_size,
                )
            except Exception as err:  # torch.load raises pickle, struct, zip errors
                msg = (
                    f"--weights {config.weights!r} is not a {config.embed} state_dict for "
                    f"{len(channels)} channels ({type(err).__name__}: {str(err)[:200]})"
                )
                raise RaymmiError(msg) from err
        embed = {
            "model": config.embed,
            "weights": config.weights,
            "channels": channels,
            "crop_size": config.crop_size,
        }
        dims = [f"Embedding_{i}" for i in range(dim)]
        features = dims if config.embed_only else [*features, *dims]
    plan = ImagePlan(
        profile=profile,
        channels=channels,
        metadata=_kept_metadata(fields, config.aggregate),
        centers=tuple(centers),
        features=tuple(features),
        aggregate=config.aggregate,
        embed=embed,
    )
    return fields, plan


def ingest_images(
    config: IngestImagesConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Profile the fields of a LoadData CSV into a ``plates`` shard set (see the module doc).

    Returns
    -------
    Manifest
        The committed manifest; ``extra["field_qc"]`` summarizes the QC table written to
        ``<out>/_field_qc.csv``.
    """
    started = time.perf_counter()
    fields, plan = plan_images(config)
    negcon = _negcon(fields, config.negcon)
    resources = init_ray(ray_config)
    cpus = max(1, int(resources.get("CPU", 1)))
    workers = config.workers or cpus
    cfg = to_dict(config)
    with (
        ShardSetWriter(config.out, overwrite=config.overwrite) as writer,
        tracked_run("ingest images", config=cfg, tracking=tracking) as run,
    ):
        illum_refs = _illumination(fields, plan.channels) if config.illum == "plate" else {}
        units = _units(fields, negcon, config.aggregate)
        # up to ~16 fields a map task (a well of 9 sites with --aggregate: one or two wells)
        ds = work_dataset(units, workers, most=max(1, 16 * len(units) // max(1, len(fields))))
        blocks = ds.num_blocks()
        size = max(1, min(workers, blocks))
        # cells: each map task writes its block's parts; well rows (a few a task) come back
        # and are written here, one part per plate, not one tiny part per well
        staging = None if plan.aggregate else writer.staging
        if plan.embed is None:
            # stateless: Ray tasks on reused worker processes (an autoscaling actor pool began
            # with one actor and started the rest late, so a few fields ran one at a time)
            ds = ds.map_batches(
                profile_units,
                batch_size=None,  # one block = one call = one part per plate
                fn_kwargs={"plan": plan, "illum": [illum_refs], "staging": staging},
                # one task queued ahead: a freed worker starts it on its lease, no ~0.15 s gap
                compute=ray.data.TaskPoolStrategy(size=tasks_in_flight(workers, cpus, blocks)),
                num_cpus=1,
                batch_format="numpy",
            )
        else:  # the CNN is loaded once per actor
            ds = ds.map_batches(
                ProfileUnits,
                batch_size=None,
                fn_constructor_kwargs={
                    "plan": plan,
                    "illum": [illum_refs],
                    "embed": plan.embed,
                    "staging": staging,
                },
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=1,
                batch_format="numpy",
            )
        without_budget_backpressure(ds)
        results = pa.concat_tables(_gather_user(lambda: ray.get(ds.to_arrow_refs())))
        files: list[FileEntry] = []
        records: list[dict[str, Any]] = []
        if staging is None:  # the well rows, their fields' QC beside each
            for text in results.column(QC_COLUMN).to_pylist():
                records += json.loads(text)
            wells = results.drop_columns([QC_COLUMN])
            files = write_cells(wells, writer.staging, plan.schema(), "part-000000.parquet")
        else:  # one row per map task: its parts' entries and QC records
            for row in results.to_pylist():
                files += [FileEntry(**e) for e in json.loads(row["files"])]
                records += json.loads(row["qc"])
        files.sort(key=lambda e: (e.plate or "", e.path))
        qc = _in_load_data_order(pd.DataFrame(records), fields)
        _write_qc(writer.staging, qc)
        figure = _qc_figure(fields[0], plan, illum_refs)
        if figure is not None:
            import posixpath

            fs, base = resolve(writer.staging)
            with fs.open_output_stream(posixpath.join(base, QC_FIGURE)) as handle:
                figure.savefig(handle, format="png", dpi=100)
            run.log_figure(figure, QC_FIGURE.lstrip("_"))
        summary = _qc_summary(qc)
        manifest = Manifest(
            kind="plates",
            files=tuple(files),
            metadata=plan.stored_metadata(),
            features=plan.features,
            producer=producer("ingest images", cfg, run),
            extra={
                "load_data": config.load_data,
                "fields": len(fields),
                "channels": list(plan.channels),
                "aggregate": config.aggregate,
                "illum": config.illum,
                "field_qc": summary,
                "qc_file": QC_FILE,
            },
        )
        # no cells at all is still an answer: an empty set with its QC table
        manifest = writer.commit(manifest)
        seconds = time.perf_counter() - started
        run.log_shard_set(config.out, manifest.to_dict(), context="output")
        run.log_table(qc, "field_qc.json")
        run.log_metrics(
            {
                "fields": len(fields),
                "cells": summary["cells"],
                "blank_fields": summary["blank_fields"],
                "rows": manifest.num_rows,
                "features": len(manifest.features),
                "seconds": seconds,
                "fields_per_second": len(fields) / max(seconds, 1e-9),
            }
        )
    return manifest


def _qc_figure(spec: FieldSpec, plan: ImagePlan, illum_refs: dict[str, Any]) -> Any:
    """The first field drawn with its objects (re-measured on the driver: one field)."""
    from raymmi.images import find_objects
    from raymmi.plots import field_qc_figure

    images, masks = read_field(spec)
    plate = spec.metadata[PLATE]
    if plate in illum_refs:
        illum = ray.get(illum_refs[plate])
        images = {c: images[c] / illum[c] for c in images}
    objects = find_objects(images, masks, config=plan.profile)
    order = [
        plan.profile.nuclei_channel,
        *(c for c in plan.channels if c != plan.profile.nuclei_channel),
    ]
    return field_qc_figure(
        images,
        objects,
        channels=order,
        title=f"{plate} {spec.metadata[WELL]} site {spec.metadata[SITE]}: "
        f"{int(objects['Nuclei'].max())} nuclei",
    )


def _in_load_data_order(qc: pd.DataFrame, fields: Sequence[FieldSpec]) -> pd.DataFrame:
    """The QC rows in the LoadData CSV's row order (tasks finish in any order)."""
    keys = [k for k in (PLATE, WELL, SITE) if k in qc.columns]
    if qc.empty or not keys:
        return qc
    order = {tuple(str(f.metadata.get(k)) for k in keys): i for i, f in enumerate(fields)}
    rank = [
        order.get(tuple(str(v) for v in row), len(order)) for row in qc[keys].itertuples(False)
    ]
    return qc.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)


def _write_qc(staging: str, qc: pd.DataFrame) -> None:
    import posixpath

    fs, base = resolve(staging)
    with fs.open_output_stream(posixpath.join(base, QC_FILE)) as handle:
        handle.write(qc.to_csv(index=False).encode())


def _qc_summary(qc: pd.DataFrame) -> dict[str, Any]:
    if qc.empty:
        return {"fields": 0, "cells": 0, "blank_fields": 0}
    return {
        "fields": len(qc),
        "cells": int(qc["Count_Cells"].sum()),
        "blank_fields": int(qc["blank"].sum()),
        "fields_without_cells": int((qc["Count_Cells"] == 0).sum()),
    }


# ==============================================================================================
# raymmi generate images
# ==============================================================================================


@ray.remote(num_cpus=1)
def _generate_fields(
    spec: Any, keys: list[tuple[int, int, int]], root: str
) -> list[dict[str, str]]:
    import posixpath

    from raymmi import testing
    from raymmi.io import write_plane

    rows = []
    for plate, well, site in keys:
        planes, _ = testing.generate_field(spec, plate, well, site)
        meta = testing.field_metadata(spec, plate, well, site)
        folder = posixpath.join("images", meta["Metadata_Plate"])
        row: dict[str, str] = dict(meta)
        for channel, plane in planes.items():
            name = f"{meta['Metadata_Well']}_s{meta['Metadata_Site']}_{channel}.tiff"
            write_plane(posixpath.join(root, folder, name), plane)
            row[f"FileName_Orig{channel}"] = name
            row[f"PathName_Orig{channel}"] = folder
        rows.append(row)
    return rows


def generate_images(
    *,
    out: str,
    plates: int = 1,
    wells: int = 4,
    sites: int = 2,
    size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    ray_config: RayConfig | None = None,
) -> str:
    """Write synthetic fields (uint16 TIFFs) and their LoadData CSV under ``out``.

    The fields are made by Ray tasks, a few fields each; everything is staged in a hidden
    sibling folder and renamed into place at the end, so a failed run leaves nothing.

    Returns
    -------
    str
        Path of ``out/load_data.csv`` (paths in it are relative to it).
    """
    import os
    import shutil
    import uuid
    from pathlib import Path

    from raymmi import testing
    from raymmi.io import write_load_data

    spec = testing.FieldSetSpec(plates=plates, wells=wells, sites=sites, size=size, seed=seed)
    target = Path(out)
    if target.exists() and not overwrite:
        msg = f"output {out!r} already exists; choose another --out or pass --overwrite"
        raise RaymmiError(msg)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        resources = init_ray(ray_config)
        keys = [(p, w, s) for p in range(plates) for w in range(wells) for s in range(sites)]
        per_task = max(1, len(keys) // (4 * max(1, int(resources.get("CPU", 1)))))
        refs = [
            _generate_fields.remote(spec, keys[i : i + per_task], str(staging))
            for i in range(0, len(keys), per_task)
        ]
        rows = [r for chunk in gather(refs, desc="generate images", unit="task") for r in chunk]
        write_load_data(str(staging / "load_data.csv"), rows)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target / "load_data.csv")
