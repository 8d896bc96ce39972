"""``raymmi demo``: the whole pipeline as it exists, on a local Ray, in one command."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Literal

from raymmi import run, testing
from raymmi.cells import PreprocessCellsConfig
from raymmi.config import (
    ExportConfig,
    IngestCellsConfig,
    IngestPlatesConfig,
    NormalizeConfig,
    OptimConfig,
    RayConfig,
    TrackingConfig,
    TrainConfig,
)
from raymmi.plates import DEFAULT_OPS, SelectConfig
from raymmi.track import runs_page, tracking_uri

TRAIN_COLUMNS = ("train_loss", "val_loss", "ari", "nmi", "silhouette", "reference_ari")
CITE = "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_{}.h5ad"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(
    *,
    out: str = "raymmi-demo",
    small: bool = False,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> dict[str, str]:
    """Generate, ingest and export plates and cells under ``out``; return the outputs.

    Real files from ``../shared/data`` are ingested when present (JUMP, LINCS, raw
    CellProfiler, CITE-seq); generated sets always run. Every step is one MLflow run.
    """
    started = time.perf_counter()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    kw: dict[str, Any] = {"ray_config": ray_config, "tracking": tracking}
    info = run.init_ray(ray_config)
    print(f"Ray: {info.get('CPU', 0):.0f} CPUs")

    _step("generate plates (seeded, with batch effects, DMSO wells, compounds)")
    plates = testing.PlateSetSpec(
        n_plates=4 if small else 16,
        n_features=50 if small else 300,
        n_batches=2 if small else 4,
        seed=0,
    )
    outputs["generated plates"] = str(root / "plates_generated")
    run.generate_plates(plates, out=outputs["generated plates"], overwrite=True, **kw)

    for kind, what in (("multiome", "RNA counts + ATAC peaks"), ("cite", "RNA + ADT counts")):
        _step(f"generate cells ({kind}: {what})")
        cells = testing.CellSetSpec(
            n_cells=2_000 if small else 20_000,
            kind=kind,  # type: ignore[arg-type]
            n_genes=500 if small else 2_000,
            n_peaks=1_000 if small else 5_000,
            chunk_size=1_000 if small else 5_000,
            # as hard to cluster as the real sets: the easy default lets every model and
            # baseline score ARI 1.000, so the printed scores would tell nothing apart
            difficulty="realistic",
            seed=0,
        )
        outputs[f"generated {kind} cells"] = str(root / f"cells_{kind}_generated")
        run.generate_cells(cells, out=outputs[f"generated {kind} cells"], overwrite=True, **kw)

    real: list[tuple[str, str, str | None, Literal["median", "mean"] | None]] = [
        ("JUMP plates", "cellpainting/jump_8plates_3features.parquet", None, None),
        (
            "LINCS plate",
            "cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz",
            "Metadata_broad_sample == 'DMSO'",
            None,
        ),
        ("CellProfiler wells", "cellpainting/cellprofiler_BR00121431", None, "median"),
    ]
    missing = [name for name, rel, _, _ in real if not testing.has_shared_data(rel)]
    if missing or not testing.has_shared_data(CITE.format("rna")):
        print(_SHARED_NOTE.format(root=testing.shared_data_root()))
    for name, rel, negcon, aggregate in real:
        if not testing.has_shared_data(rel):
            print(f"SKIPPED {name}: {rel} is not in the shared data folder")
            continue
        _step(f"ingest {name} ({rel})")
        target = str(root / name.lower().replace(" ", "_"))
        run.ingest_plates(
            IngestPlatesConfig(
                sources=(str(testing.shared_data(rel)),),
                out=target,
                negcon=negcon,
                aggregate=aggregate,
                on_nan="keep",
                overwrite=True,
            ),
            **kw,
        )
        outputs[name] = target

    if not testing.has_shared_data(CITE.format("rna")):
        print(
            "SKIPPED the CITE-seq starter (NeurIPS 2021 tasks, UMINT on real cells): "
            f"{CITE.format('rna')} is not in the shared data folder"
        )
    else:
        _step("ingest CITE-seq cells (RNA + ADT, raw counts from layers['counts'])")
        outputs["CITE cells"] = str(root / "cite_cells")
        run.ingest_cells(
            IngestCellsConfig(
                rna=str(testing.shared_data(CITE.format("rna"))),
                adt=str(testing.shared_data(CITE.format("mod2"))),
                out=outputs["CITE cells"],
                chunk_size=200,
                overwrite=True,
            ),
            **kw,
        )

    for name in [n for n in ("generated plates", "JUMP plates") if n in outputs]:
        for method in ("standardize", "mad_robustize"):
            _step(f"normalize {name}: {method} against each plate's negative controls")
            target = str(root / f"{Path(outputs[name]).name}_{method}")
            manifest = run.normalize(
                NormalizeConfig(source=outputs[name], out=target, method=method, overwrite=True),
                **kw,
            )
            counts = manifest.extra["fallback_counts"]
            print(f"fallbacks (see {target}/_fallback_report.csv): {counts or 'none'}")
            outputs[f"{name} {method}"] = target
        # the default blocklist ships inside pycytominer (a test extra): without it, skip it
        ops = tuple(
            op
            for op in DEFAULT_OPS
            if op != "blocklist" or importlib.util.find_spec("pycytominer")
        )
        _step(f"select features of {name} (mad_robustize): {', '.join(ops)}")
        source = outputs[f"{name} mad_robustize"]
        target = f"{source}_selected"
        manifest = run.select_features(
            SelectConfig(source=source, out=target, ops=ops, overwrite=True), **kw
        )
        info = manifest.extra["feature_selection"]
        print(f"kept {info['features_kept']} of {info['features_in']} features")
        outputs[f"{name} selected"] = target

    for name, label in (("generated plates", "Metadata_Compound"), ("JUMP plates", None)):
        if name not in outputs:
            continue
        _step(f"evaluate {name}: raw vs standardize vs mad_robustize (batch-effect report)")
        target = str(root / f"{Path(outputs[name]).name}_report")
        summary = run.evaluate_plates(
            [outputs[name], outputs[f"{name} standardize"], outputs[f"{name} mad_robustize"]],
            out=target,
            label_key=label or _jump_label(outputs[name]),
            sample=1000 if small else 5000,
            overwrite=True,
            **kw,
        )
        print(run.summary_text(summary))
        print(f"report: {target}/index.html")
        outputs[f"{name} report"] = target

    for name in [n for n in list(outputs) if n.endswith("cells")]:
        _step(
            f"preprocess {name}: QC, normalize_total, log1p, HVG, scale, PCA / TF-IDF, LSI / CLR"
        )
        target = f"{outputs[name]}_preprocessed"
        manifest = run.preprocess_cells(
            PreprocessCellsConfig(), source=outputs[name], out=target, overwrite=True, **kw
        )
        mods = ", ".join(f"{m.name} ({len(m.features)})" for m in manifest.modalities)
        print(f"{manifest.num_rows} cells kept; columns: {mods}")
        outputs[f"{name} preprocessed"] = target

    outputs.update(_train_models(root, outputs, small=small, kw=kw))
    outputs.update(_search(root, outputs, small=small, kw=kw))
    outputs.update(_tasks(root, outputs, kw=kw))
    outputs.update(_images(root, small=small, kw=kw))

    _step("export")
    exports = {}
    for name, path in outputs.items():
        suffix = ".h5ad" if "cells" in name or name.startswith("train ") else ".parquet"
        if "cells" in name and "preprocessed" not in name and f"{name} preprocessed" in outputs:
            continue  # the preprocessed set carries the raw counts too
        if name.startswith(("task ", "tune ")) or name.endswith(" report"):
            continue  # scores.json, reports and the task's own shard set stay in their folder
        if name.startswith("train "):
            path = str(Path(path) / "embeddings")
        stem = Path(path).parent.name if name.startswith("train ") else Path(path).name
        target = str(root / "exports" / f"{stem}{suffix}")
        run.export(ExportConfig(source=path, out=target, overwrite=True), tracking=tracking)
        exports[f"{name} export"] = target
    outputs.update(exports)

    uri = tracking_uri(tracking)
    print(f"\nraymmi demo finished in {time.perf_counter() - started:.0f} s. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:44s} {path}")
    if tracking is None or tracking.enabled:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        print(f"\nMLflow runs: {uri} (experiment {(tracking or TrackingConfig()).experiment!r})")
        print(
            f"Open the UI:  {mlflow_cli} ui --backend-store-uri {uri} --host 127.0.0.1 "
            f"--port 5000\nthen browse {runs_page(tracking)}"
        )
    raw, norm = outputs["generated plates"], outputs["generated plates mad_robustize"]
    print(
        "\nTry next:\n"
        f"  raymmi evaluate plates {raw} {norm} --out {root / 'my_report'}\n"
        f"  raymmi normalize {raw} --out {root / 'plates_combat'} --method combat\n"
        "  raymmi tune umint --data CELLS_PREPROCESSED --out SEARCH --space "
        "jobs/configs/tune_umint.yaml --trials 8 --metric val_loss --mode min"
    )
    return outputs


_SHARED_NOTE = (
    "The real data sets (JUMP and LINCS profiles, raw CellProfiler output, the CITE-seq "
    "starter) are not all in {root}. They ship in the project's shared/data folder beside the "
    "repository (see its README); point RAYMMI_SHARED_DATA at a copy of it to include them."
)


def _jump_label(path: str) -> str:
    """JUMP's compound column (``Metadata_JCP2022``), else the first compound-like column."""
    from raymmi.io import open_shard_set

    metadata = list(open_shard_set(path).manifest.metadata)
    for name in ("Metadata_JCP2022", "Metadata_InChIKey", "Metadata_Compound"):
        if name in metadata:
            return name
    return "Metadata_Well"


def _train_models(
    root: Path, outputs: dict[str, str], *, small: bool, kw: dict[str, Any]
) -> dict[str, str]:
    """Train SAILERX on the multiome cells and UMINT and a plain AE on the CITE cells."""
    runs: list[tuple[str, str, str, dict[str, Any]]] = []
    multiome = outputs.get("generated multiome cells preprocessed")
    if multiome:
        sailerx = {"z_dim": 20, "hidden": [256, 64], "gamma": 100.0}
        runs.append(("sailerx", "generated multiome", multiome, sailerx))
    for source in ("CITE cells preprocessed", "generated cite cells preprocessed"):
        if source in outputs:
            runs.append(("umint", source.removesuffix(" cells preprocessed"), outputs[source], {}))
            if not small:  # the plain-AE baseline beside UMINT
                runs.append(
                    ("ae", source.removesuffix(" cells preprocessed"), outputs[source], {})
                )
    done: dict[str, str] = {}
    table = []
    for model, data_name, data, model_config in runs:
        _step(f"train {model} on {data_name} cells (Ray Train, 1 worker, briefly)")
        target = str(root / f"train_{model}_{data_name.replace(' ', '_')}")
        config = TrainConfig(
            model_name=model,
            data=data,
            out=target,
            model=model_config,
            optim=OptimConfig(epochs=3 if small else 15, lr=1e-3),
            label_key="cell_type",
            overwrite=True,
        )
        metrics = run.train(config, **kw)
        table.append(
            {"model": model, "data": data_name, **{c: metrics.get(c) for c in TRAIN_COLUMNS}}
        )
        done[f"train {model} {data_name}"] = target
    if table:
        import pandas as pd

        print("\n" + pd.DataFrame(table).to_string(index=False, float_format="%.3f"))
    return done


def _tasks(root: Path, outputs: dict[str, str], *, kw: dict[str, Any]) -> dict[str, str]:
    """The three NeurIPS 2021 tasks on the CITE starter (train s1d1, test s1d2)."""
    data = outputs.get("CITE cells preprocessed")
    if data is None:
        print("(skipping the NeurIPS 2021 tasks: the CITE starter is not here)")
        return {}
    done: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for task, method in (
        ("predict", "mean"),
        ("predict", "svd_krr"),
        ("match", "cca"),
        ("embed", "pca"),
    ):
        _step(f"task {task} ({method}) on the CITE starter: train s1d1, test s1d2")
        target = str(root / f"task_{task}_{method}")
        config = run.TaskConfig(
            task=task,  # type: ignore[arg-type]
            data=data,
            out=target,
            train_batches=("s1d1",),
            test_batches=("s1d2",),
            method=method,
            overwrite=True,
        )
        scores = run.run_task(config, **kw)
        rows.extend(
            {
                "task": task,
                "method": method,
                "score": name,
                "value": run.score_text(name, value, batches=1),
            }
            for name, value in scores.items()
            if isinstance(value, float)
        )
        done[f"task {task} {method}"] = target
    import pandas as pd

    print("\n" + pd.DataFrame(rows).to_string(index=False))
    return done


def _search(
    root: Path, outputs: dict[str, str], *, small: bool, kw: dict[str, Any]
) -> dict[str, str]:
    """A tiny Ray Tune search (4 trials, ASHA + Optuna) of the plain AE on the CITE cells."""
    data = outputs.get("CITE cells preprocessed") or outputs.get(
        "generated cite cells preprocessed"
    )
    if data is None:
        return {}
    import yaml

    from raymmi.run import summary_lines, tune
    from raymmi.tune_space import TuneConfig

    _step("tune: 4 trials of the plain AE (bottleneck x lr), ASHA + Optuna, on val_loss")
    space = root / "tune_space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "model": {"bottleneck": {"choice": [16, 64]}},
                "optim": {"lr": {"loguniform": [1e-4, 1e-2]}},
            }
        )
    )
    target = str(root / "tune_ae")
    base = TrainConfig(
        model_name="ae",
        data=data,
        out=target,
        optim=OptimConfig(epochs=2 if small else 6),
        label_key="cell_type",
    )
    outcome = tune(
        TuneConfig(space=str(space), out=target, metric="val_loss", mode="min", trials=4),
        base,
        overwrite=True,
        **kw,
    )
    print("\n".join(summary_lines(outcome, "val_loss", top=4)))
    print(f"best configuration: {target}/best.yaml")
    if outcome.parent_run_id:
        print(f"MLflow parent run: {outcome.parent_run_id} ({outcome.tracking_uri})")
    return {"tune ae": target}


NF1_FIELDS = "cellpainting/images/NF1_cellpainting_data_shrunken"


def _images(root: Path, *, small: bool, kw: dict[str, Any]) -> dict[str, str]:
    """Fields to profiles: the real NF1 fields on CellProfiler's masks, a generated plate."""
    import csv

    from raymmi.config import IngestImagesConfig

    done: dict[str, str] = {}
    if testing.has_shared_data(NF1_FIELDS):
        _step("ingest images: the five real NF1 fields, measured on CellProfiler's own masks")
        folder = testing.shared_data(NF1_FIELDS)
        load = root / "nf1_load_data.csv"
        with load.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
                + [f"{p}_{c}" for c in ("DAPI", "GFP", "RFP") for p in ("FileName", "PathName")]
                + [
                    f"Objects{p}_{o}"
                    for o in ("Nuclei", "Cells")
                    for p in ("FileName", "PathName")
                ]
            )
            for dapi in sorted((folder / "Plate_2_images").glob("*_DAPI_001.tif")):
                well, _, _, site = dapi.name.split("_")[:4]
                names = {
                    c: next((folder / "Plate_2_images").glob(f"{well}_01_*_{c}_001.tif"))
                    for c in ("DAPI", "GFP", "RFP")
                }
                masks = folder / "Plate_2_masks"
                writer.writerow(
                    ["Plate_2", well, site]
                    + [
                        v
                        for c in ("DAPI", "GFP", "RFP")
                        for v in (names[c].name, str(names[c].parent))
                    ]
                    + [f"{dapi.stem}_MaskNuclei.tiff", str(masks)]
                    + [f"{names['RFP'].stem}_MaskCells.tiff", str(masks)]
                )
        target = str(root / "nf1_fields_profiles")
        manifest = run.ingest_images(
            IngestImagesConfig(
                load_data=str(load),
                out=target,
                nuclei_channel="DAPI",
                cell_channel="RFP",
                measures=("sizeshape", "intensity"),
                overwrite=True,
            ),
            **kw,
        )
        print(
            f"{manifest.num_rows} cells x {len(manifest.features)} features; "
            f"QC {manifest.extra['field_qc']}"
        )
        done["NF1 fields profiles"] = target
    _step("generate images (1 plate x 8 wells) -> ingest images --aggregate median -> normalize")
    load_g = run.generate_images(
        out=str(root / "fields_generated"),
        wells=8,
        sites=1 if small else 2,
        size=224,
        overwrite=True,
        ray_config=kw["ray_config"],
    )
    wells = str(root / "fields_generated_wells")
    manifest = run.ingest_images(
        IngestImagesConfig(
            load_data=load_g,
            out=wells,
            nuclei_channel="DNA",
            cell_channel="AGP",
            measures=("sizeshape", "intensity"),
            aggregate="median",
            illum="plate",
            negcon="Metadata_Treatment == 'DMSO'",
            overwrite=True,
        ),
        **kw,
    )
    print(f"{manifest.num_rows} wells from {manifest.extra['field_qc']['cells']} cells")
    normalized = f"{wells}_standardize"
    run.normalize(NormalizeConfig(source=wells, out=normalized, overwrite=True), **kw)
    done["generated fields wells"] = wells
    done["generated fields wells standardize"] = normalized
    return done
