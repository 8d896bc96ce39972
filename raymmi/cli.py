"""The ``raymmi`` command line: ``raymmi <stage> [...] [--config file.yaml] [--set key=value]``.

Known errors (bad input, bad configuration) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from raymmi.config import (
    EvaluatePlatesConfig,
    ExportConfig,
    IngestCellsConfig,
    IngestPlatesConfig,
    NormalizeConfig,
    RayConfig,
    TrackingConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)
from raymmi.schema import RaymmiError

T = TypeVar("T")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--config", help="YAML file with this stage's settings")
    group.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    group.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    group.add_argument("--num-cpus", type=int, help="CPUs of the local Ray")
    group.add_argument("--object-store-mb", type=int, help="object store of the local Ray (MiB)")
    group.add_argument(
        "--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    group.add_argument("--experiment", default="raymmi", help="MLflow experiment name")
    group.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    group.add_argument("--overwrite", action="store_true", default=None, help="replace --out")
    group.add_argument(
        "--verbose", action="store_true", help="also print Ray's own logs (Ray Data, Ray Train)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse that answers a mistyped command, choice or option with "did you mean"."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, "_parser"):  # the deepest subcommand's parser names itself first
            parsed._parser = self
        return parsed, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = self.parse_known_args(args, namespace)
        owner = parsed.__dict__.pop("_parser", self)
        if extras:
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str):  # type: ignore[override]
        super().error(message + _did_you_mean(message, self))

    def format_help(self) -> str:
        _annotate(self)
        return super().format_help()


# The settings dataclass behind each command's flags (imported only to print --help): its
# field defaults are the command's defaults, its fields without one are required.
CONFIGS: dict[str, tuple[str, str]] = {
    "ingest plates": ("raymmi.config", "IngestPlatesConfig"),
    "ingest cells": ("raymmi.config", "IngestCellsConfig"),
    "normalize": ("raymmi.config", "NormalizeConfig"),
    "select": ("raymmi.plates", "SelectConfig"),
    "evaluate plates": ("raymmi.config", "EvaluatePlatesConfig"),
    "export": ("raymmi.config", "ExportConfig"),
    "train": ("raymmi.config", "TrainConfig"),
    "tune": ("raymmi.config", "TrainConfig"),
    "task": ("raymmi.run._tasks._config", "TaskConfig"),
    "generate plates": ("raymmi.testing", "PlateSetSpec"),
    "generate cells": ("raymmi.testing", "CellSetSpec"),
}
# flags whose setting has another name
ALIASES = {
    "model": "model_name",
    "plates": "n_plates",
    "wells": "wells_per_plate",
    "features": "n_features",
    "batches": "n_batches",
    "cells": "n_cells",
    "genes": "n_genes",
    "peaks": "n_peaks",
    "cell_kind": "kind",
}
EXAMPLES: dict[str, str] = {
    "ingest plates": "raymmi ingest plates profiles.csv.gz --out plates --negcon "
    "\"Metadata_broad_sample == 'DMSO'\"\n  raymmi ingest plates site_folders/ --out wells "
    "--aggregate median",
    "ingest cells": "raymmi ingest cells --rna rna.h5ad --adt adt.h5ad --out cite",
    "normalize": "raymmi normalize plates --out plates_norm --method mad_robustize "
    "--reference negcon\n  raymmi normalize plates --out plates_combat --method combat",
    "select": "raymmi select plates_norm --out plates_sel --ops variance,correlation,na",
    "evaluate plates": "raymmi evaluate plates plates plates_norm --out report",
    "preprocess cells": "raymmi preprocess cells cite --out cite_pre --config "
    "jobs/configs/preprocess_cells.yaml",
    "train": "raymmi train umint --data cite_pre --out umint --label-key cell_type\n  "
    "raymmi train sailerx --data multiome_pre --out sailerx --workers 2 --set model.gamma=600",
    "tune": "raymmi tune umint --data cite_pre --out search --space "
    "jobs/configs/tune_umint.yaml --trials 16 --metric val_ari --mode max --label-key "
    "cell_type",
    "task": "raymmi task predict --data cite_pre --out pred --train-batches s1d1 "
    "--test-batches s1d2 --method svd_krr",
    "export": "raymmi export plates_norm --out plates_norm.parquet\n  raymmi export "
    "umint/embeddings --out umint.h5ad",
    "generate plates": "raymmi generate plates --out plates --plates 16 --features 300",
    "generate cells": "raymmi generate cells --out cells --kind cite --cells 20000",
    "inspect": "raymmi inspect plates --verify",
    "demo": "raymmi demo --small",
}


def _command(parser: argparse.ArgumentParser) -> str:
    return parser.prog.removeprefix("raymmi").strip()


def _annotate(parser: argparse.ArgumentParser) -> None:
    """Defaults and required settings (from the stage's dataclass) and examples, into --help."""
    if getattr(parser, "_annotated", False):
        return
    parser._annotated = True  # type: ignore[attr-defined]
    command = _command(parser)
    if command in EXAMPLES and not parser.epilog:
        parser.epilog = "example:\n  " + EXAMPLES[command]
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if command in CONFIGS:
        import dataclasses
        import importlib

        module, name = CONFIGS[command]
        fields = {
            f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))
        }
        for action in parser._actions:
            field = fields.get(ALIASES.get(action.dest, action.dest))
            if field is None or action.help == argparse.SUPPRESS:
                continue
            action.help = action.help or ""
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                if "required" not in action.help:
                    action.help = f"{action.help} (required: here or in --config)".lstrip()
            elif "default" not in action.help and field.default not in (None, (), False):
                action.help = f"{action.help} (default: {_shown(field.default)})".lstrip()
    for action in parser._actions:
        if action.dest == "model" and action.help and "{MODELS}" in action.help:
            from raymmi.models import model_names

            action.help = action.help.replace("{MODELS}", ", ".join(model_names()))


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).replace("%", "%%")


def _did_you_mean(message: str, parser: argparse.ArgumentParser) -> str:
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        typed, options = choice[1], re.findall(r"'([^']*)'", choice[2])
    elif message.startswith("unrecognized arguments: "):
        flags = [a for a in message.split()[2:] if a.startswith("-")]
        if not flags:
            return ""
        typed = flags[0].split("=")[0]
        options = [o for a in parser._actions for o in a.option_strings]
    else:
        return ""
    close = difflib.get_close_matches(typed, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every stage."""
    from raymmi import __version__

    parser = _Parser(
        prog="raymmi",
        description="Cell Painting plates and multimodal single cells, distributed on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"raymmi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on generated and real data")
    demo.add_argument("--out", default="raymmi-demo", help="folder for every output")
    demo.add_argument("--small", action="store_true", help="tiny sizes (tests, smoke runs)")
    _common(demo)

    ingest = sub.add_parser("ingest", help="bring tables or h5ad/h5mu files into shard sets")
    ingest_sub = ingest.add_subparsers(dest="kind", required=True)
    plates = ingest_sub.add_parser("plates", help="profile tables or CellProfiler folders")
    plates.add_argument("sources", nargs="*", help="CSV/CSV.gz/Parquet files or site folders")
    plates.add_argument("--out", help="output shard set")
    plates.add_argument(
        "--negcon", help="query marking negative controls (\"Metadata_pert_type == 'control'\")"
    )
    plates.add_argument("--on-nan", choices=["fail", "drop-rows", "keep"], help="NaN/inf policy")
    plates.add_argument("--aggregate", choices=["median", "mean"], help="cells to wells")
    plates.add_argument("--batch-rows", type=int, help="rows per streamed batch")
    _common(plates)
    cells = ingest_sub.add_parser("cells", help="paired RNA + ATAC or RNA + ADT")
    cells.add_argument("--rna", help="RNA .h5ad (or .h5mu with the other modality inside)")
    cells.add_argument("--atac", help="ATAC .h5ad/.h5mu")
    cells.add_argument("--adt", help="ADT (protein) .h5ad/.h5mu")
    cells.add_argument("--out", help="output shard set")
    cells.add_argument("--chunk-size", type=int, help="cells per chunk and per file")
    cells.add_argument("--batch-key", help="obs column with the batch (default: batch)")
    cells.add_argument(
        "--layer",
        help="matrix to read: X, or a name in layers (default: layers['counts'] if present, "
        "else X)",
    )
    _common(cells)
    _images_parser(ingest_sub)

    norm = sub.add_parser("normalize", help="per-plate / global normalization of plates")
    norm.add_argument("source", nargs="?", help="plates shard set")
    norm.add_argument("--out", help="output shard set")
    norm.add_argument(
        "--method",
        choices=["standardize", "robustize", "mad_robustize", "mean", "spherize", "combat"],
    )
    norm.add_argument("--reference", choices=["negcon", "all", "negcon-global", "batch"])
    norm.add_argument(
        "--negcon", help="query re-defining negative controls (columns, literals, comparisons)"
    )
    norm.add_argument("--batch-key", help="batch column (default Metadata_Batch)")
    norm.add_argument("--epsilon", type=float, help="added to the spread")
    norm.add_argument("--spherize-method", choices=["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
    norm.add_argument("--spherize-epsilon", type=float)
    norm.add_argument("--nonparametric", action="store_true", default=None, help="ComBat")
    _common(norm)

    pre = sub.add_parser("preprocess", help="out-of-core single-cell preprocessing")
    pre_sub = pre.add_subparsers(dest="kind", required=True)
    pc = pre_sub.add_parser("cells", help="RNA (QC, normalize, HVG, scale, PCA), ATAC, ADT")
    pc.add_argument("source", help="cells shard set")
    pc.add_argument("--out", required=True, help="output shard set")
    _common(pc)

    tr = sub.add_parser("train", help="train a model (SAILERX, UMINT, AE ...) with Ray Train")
    tr.add_argument("model", help="registered model: {MODELS}")
    tr.add_argument("--data", help="cells shard set (from raymmi preprocess cells)")
    tr.add_argument("--out", help="output folder (checkpoints, model, metrics, embeddings)")
    tr.add_argument("--workers", type=int, help="Ray Train workers (DDP processes)")
    tr.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU)")
    tr.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: auto)")
    tr.add_argument("--epochs", type=int, help="shortcut for --set optim.epochs=N")
    tr.add_argument("--label-key", help="obs column with labels: ARI/NMI/silhouette")
    tr.add_argument("--extra-data", help="SAILERX hybrid training: ATAC-only cells set")
    tr.add_argument(
        "--impute",
        action="store_true",
        default=None,
        help="also write the decoder's imputations (dense; large) beside the embedding",
    )
    tr.add_argument(
        "--impute-format",
        choices=["float32", "float16", "sparse"],
        help="with --impute: dense float32, dense float16, or sparse (see --impute-threshold)",
    )
    tr.add_argument(
        "--impute-threshold",
        type=float,
        help="with --impute-format sparse: drop values with |value| below it (e.g. 0.1)",
    )
    _common(tr)

    tu = sub.add_parser("tune", help="hyperparameter search of Ray Train runs with Ray Tune")
    tu.add_argument("model", help="registered model: {MODELS}")
    tu.add_argument("--data", help="cells shard set (from raymmi preprocess cells)")
    tu.add_argument("--out", help="output folder (results.csv, best.yaml, trials/, tune/)")
    tu.add_argument("--space", required=True, help="search space YAML (jobs/configs/tune_*.yaml)")
    tu.add_argument("--trials", type=int, help="configurations to try (grid: all of them)")
    tu.add_argument("--metric", required=True, help="reported metric (val_loss, val_ari ...)")
    tu.add_argument("--mode", required=True, choices=["max", "min"], help="optimize direction")
    tu.add_argument("--scheduler", choices=["asha", "none"], default="asha")
    tu.add_argument("--search", choices=["optuna", "random", "grid"], default="optuna")
    tu.add_argument("--seeds", type=int, default=1, help="trainings per configuration")
    tu.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    tu.add_argument("--name", help="search name (MLflow parent run, Tune experiment)")
    tu.add_argument("--resume", action="store_true", help="continue an interrupted search")
    tu.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a stop")
    tu.add_argument("--reduction-factor", type=int, default=3, help="ASHA: halving rate")
    tu.add_argument(
        "--trial-embeddings",
        action="store_true",
        help="every trial also writes its embeddings set and full-data scores (slower)",
    )
    tu.add_argument("--search-seed", type=int, default=0, help="seed of the sampler")
    tu.add_argument("--epochs", type=int, help="shortcut for --set optim.epochs=N")
    tu.add_argument("--label-key", help="obs column with labels: val_ari/val_nmi metrics")
    tu.add_argument("--workers", type=int, help="Ray Train workers per trial")
    tu.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: auto)")
    tu.add_argument("--cpus-per-trial", type=float, help="CPUs of a one-worker trial (default 1)")
    tu.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (0.25: 4 share one)"
    )
    tu.add_argument(
        "--pack", type=int, default=1, help="configurations trained as one stacked model"
    )
    _common(tu)

    task = sub.add_parser("task", help="NeurIPS 2021 tasks: predict, match, embed, scored")
    task.add_argument("task", choices=["predict", "match", "embed"])
    task.add_argument("--data", help="paired cells shard set")
    task.add_argument("--out", help="output folder (scores.json, predictions/matching/embedding)")
    task.add_argument("--train-batches", help="comma-separated training batches")
    task.add_argument("--test-batches", help="comma-separated test batches")
    task.add_argument(
        "--method", help="predict: mean|svd_krr|mlp; match: cca|clue; embed: pca|..."
    )
    task.add_argument("--source", help="predict: input modality")
    task.add_argument("--target", help="predict: output modality")
    task.add_argument("--modalities", help="match/embed: comma-separated modalities")
    task.add_argument("--label-key", help="cell-type column (default cell_type)")
    task.add_argument("--batch-key", help="batch column (default batch)")
    task.add_argument("--epochs", type=int, help="epochs of trained methods")
    task.add_argument("--embed-cells", choices=["test", "all"], help="embed: cells scored")
    _common(task)

    sel = sub.add_parser("select", help="drop features as pycytominer feature_select would")
    sel.add_argument("source", nargs="?", help="plates shard set")
    sel.add_argument("--out", help="output shard set")
    sel.add_argument(
        "--ops", help="comma-separated: variance,frequency,correlation,na,blocklist,outliers"
    )
    sel.add_argument("--na-cutoff", type=float, help="max NaN fraction (0.05)")
    sel.add_argument("--min-variance", type=float, help="variance op threshold (1e-6)")
    sel.add_argument("--freq-cut", type=float, help="frequency op: 2nd/1st count ratio (0.05)")
    sel.add_argument("--unique-cut", type=float, help="frequency op: unique ratio (0.01)")
    sel.add_argument("--corr-threshold", type=float, help="correlation op threshold (0.9)")
    sel.add_argument("--corr-method", help="pearson")
    sel.add_argument("--outlier-cutoff", type=float, help="max |value| (500)")
    sel.add_argument("--blocklist", help="file of feature names (default: pycytominer's)")
    sel.add_argument("--samples", help="'all' or a query choosing the rows (never run as code)")
    sel.add_argument("--frequency-task-mb", type=int, help="memory of one counting task")
    _common(sel)

    ev = sub.add_parser("evaluate", help="batch-effect diagnostics of plates, one report")
    ev_sub = ev.add_subparsers(dest="kind", required=True)
    ep = ev_sub.add_parser(
        "plates",
        help="raw vs normalized plates: plate correlation, UMAP, outliers, held-out batch, mAP",
        description="Diagnose one or more plates shard sets side by side (e.g. raw and "
        "normalized) and write one HTML report. Example: raymmi evaluate plates RAW NORM "
        "--out REPORT",
    )
    ep.add_argument("sources", nargs="*", help="plates shard sets with the same plates")
    ep.add_argument("--out", help="report directory (index.html, figures, summary.csv)")
    ep.add_argument("--batch-key", help="batch column (default Metadata_Batch)")
    ep.add_argument("--label-key", help="compound column (default Metadata_Compound)")
    ep.add_argument("--sample", type=int, help="wells sampled per set (default 5000)")
    ep.add_argument("--seed", type=int, help="seed of samples and fits (default 0)")
    _common(ep)

    export = sub.add_parser("export", help="shard set to .parquet/.csv (plates) or .h5ad")
    export.add_argument("source", nargs="?", help="shard set directory")
    export.add_argument("--out", help="output file")
    _common(export)

    generate = sub.add_parser("generate", help="seeded synthetic shard sets of any size")
    gen_sub = generate.add_subparsers(dest="kind", required=True)
    gp = gen_sub.add_parser("plates", help="plates with batch effects, controls, compounds")
    gp.add_argument("--out", required=True)
    gp.add_argument("--seed", type=int, default=0)
    gp.add_argument("--plates", type=int, help="number of plates")
    gp.add_argument("--wells", type=int, help="wells per plate")
    gp.add_argument("--features", type=int, help="features")
    gp.add_argument("--batches", type=int, help="batches")
    _common(gp)
    gc = gen_sub.add_parser("cells", help="multiome (RNA+ATAC) or CITE (RNA+ADT) cells")
    gc.add_argument("--out", required=True)
    gc.add_argument("--seed", type=int, default=0)
    gc.add_argument("--kind", dest="cell_kind", choices=["multiome", "cite"])
    gc.add_argument("--cells", type=int, help="number of cells")
    gc.add_argument("--genes", type=int, help="genes")
    gc.add_argument("--peaks", type=int, help="ATAC peaks")
    gc.add_argument("--batches", type=int, help="batches")
    _common(gc)
    _generate_images_parser(gen_sub)

    inspect = sub.add_parser("inspect", help="print a shard set's manifest summary")
    inspect.add_argument("source", help="shard set directory")
    inspect.add_argument("--verify", action="store_true", help="re-hash every file")
    return parser


def _images_parser(ingest_sub: Any) -> None:
    im = ingest_sub.add_parser("images", help="Cell Painting fields (LoadData CSV) to profiles")
    im.add_argument("load_data", nargs="?", help="CellProfiler LoadData CSV, one row per field")
    im.add_argument("--out", help="output shard set (one row per cell, or per well)")
    im.add_argument("--nuclei-channel", help="channel with the nuclei (DNA)")
    im.add_argument("--cell-channel", help="channel the cells are grown over (AGP)")
    im.add_argument(
        "--measure",
        help="comma-separated: sizeshape,intensity,texture,granularity,radial,correlation",
    )
    im.add_argument("--illum", choices=["none", "plate"], help="illumination correction")
    im.add_argument("--aggregate", choices=["median", "mean"], help="cells to wells")
    im.add_argument("--negcon", help="pandas query over the LoadData metadata: negative controls")
    im.add_argument("--nuclei-diameter", help="MIN,MAX nucleus diameter in pixels (8,80)")
    im.add_argument("--threshold", choices=["otsu", "otsu3", "li"], help="threshold method")
    im.add_argument(
        "--discard-border-cells", action="store_true", default=None, help="drop edge cells"
    )
    im.add_argument("--embed", help="CNN for per-cell crop embeddings (Embedding_<i> columns)")
    im.add_argument("--weights", help="weights file of --embed (or 'random', tests only)")
    im.add_argument("--crop-size", type=int, help="side of the per-cell crops (64)")
    im.add_argument("--embed-only", action="store_true", default=None, help="no measurements")
    im.add_argument("--workers", type=int, help="fields measured at once (default: CPUs)")
    _common(im)


def _generate_images_parser(gen_sub: Any) -> None:
    gi = gen_sub.add_parser("images", help="synthetic Cell Painting fields (TIFFs + LoadData)")
    gi.add_argument("--out", required=True, help="folder for the TIFFs and load_data.csv")
    gi.add_argument("--seed", type=int, default=0)
    gi.add_argument("--plates", type=int, default=1, help="plates")
    gi.add_argument("--wells", type=int, default=4, help="wells per plate")
    gi.add_argument("--sites", type=int, default=2, help="fields per well")
    gi.add_argument("--size", type=int, default=256, help="field side in pixels")
    _common(gi)


def _ingest_images(args: argparse.Namespace) -> int:
    from raymmi import run
    from raymmi.config import IngestImagesConfig

    diameters: dict[str, Any] = {}
    if args.nuclei_diameter:
        try:
            lo, hi = (float(v) for v in args.nuclei_diameter.split(","))
        except ValueError as err:
            msg = f"--nuclei-diameter {args.nuclei_diameter!r} must be MIN,MAX, e.g. 8,80"
            raise RaymmiError(msg) from err
        diameters = {"nuclei_min_diameter": lo, "nuclei_max_diameter": hi}
    flags = {
        "load_data": args.load_data,
        "out": args.out,
        "nuclei_channel": args.nuclei_channel,
        "cell_channel": args.cell_channel,
        "measures": None if args.measure is None else [m for m in args.measure.split(",") if m],
        "illum": args.illum,
        "aggregate": args.aggregate,
        "negcon": args.negcon,
        "threshold": args.threshold,
        "discard_border_cells": args.discard_border_cells,
        "embed": args.embed,
        "weights": args.weights,
        "crop_size": args.crop_size,
        "embed_only": args.embed_only,
        "workers": args.workers,
        "overwrite": args.overwrite,
        **diameters,
    }
    config = _settings(IngestImagesConfig, args, flags, where="ingest images")
    manifest = run.ingest_images(config, ray_config=_ray(args), tracking=_tracking(args))
    qc = manifest.extra["field_qc"]
    print(
        f"wrote {manifest.num_rows} rows ({qc['cells']} cells from {qc['fields']} fields, "
        f"{qc['blank_fields']} blank), {len(manifest.features)} features to {config.out}; "
        f"per-field QC in {config.out}/_field_qc.csv"
    )
    return 0


def _generate_images(args: argparse.Namespace) -> int:
    from raymmi import run

    path = run.generate_images(
        out=args.out,
        plates=args.plates,
        wells=args.wells,
        sites=args.sites,
        size=args.size,
        seed=args.seed,
        overwrite=bool(args.overwrite),
        ray_config=_ray(args),
    )
    print(f"wrote {args.plates * args.wells * args.sites} fields; LoadData CSV: {path}")
    return 0


def _settings(cls: type[T], args: argparse.Namespace, flags: dict[str, Any], *, where: str) -> T:
    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    data.update({k: v for k, v in flags.items() if v is not None and v != []})
    data = apply_overrides(data, getattr(args, "set", []))
    return from_dict(cls, data, where=where)


def _ray(args: argparse.Namespace) -> RayConfig:
    return RayConfig(
        address=args.address, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb
    )


def _tracking(args: argparse.Namespace) -> TrackingConfig:
    return TrackingConfig(
        uri=args.tracking_uri, experiment=args.experiment, enabled=not args.no_track
    )


def _ingest(args: argparse.Namespace) -> int:
    from raymmi import run

    if args.kind == "images":
        return _ingest_images(args)
    if args.kind == "plates":
        config = _settings(
            IngestPlatesConfig,
            args,
            {
                "sources": args.sources,
                "out": args.out,
                "negcon": args.negcon,
                "on_nan": args.on_nan,
                "aggregate": args.aggregate,
                "batch_rows": args.batch_rows,
                "overwrite": args.overwrite,
            },
            where="ingest plates",
        )
        manifest = run.ingest_plates(config, ray_config=_ray(args), tracking=_tracking(args))
        print(
            f"wrote {manifest.num_rows} rows, {len(manifest.plates)} plates, "
            f"{len(manifest.features)} features to {config.out}"
        )
        return 0
    config_c = _settings(
        IngestCellsConfig,
        args,
        {
            "rna": args.rna,
            "atac": args.atac,
            "adt": args.adt,
            "out": args.out,
            "chunk_size": args.chunk_size,
            "batch_key": args.batch_key,
            "layer": args.layer,
            "overwrite": args.overwrite,
        },
        where="ingest cells",
    )
    manifest = run.ingest_cells(config_c, ray_config=_ray(args), tracking=_tracking(args))
    mods = ", ".join(f"{m.name} ({len(m.features)})" for m in manifest.modalities)
    print(f"wrote {manifest.num_rows} cells with {mods} to {config_c.out}")
    return 0


def _normalize(args: argparse.Namespace) -> int:
    from raymmi import run

    flags = {
        "source": args.source,
        "out": args.out,
        "method": args.method,
        "reference": args.reference,
        "negcon": args.negcon,
        "batch_key": args.batch_key,
        "epsilon": args.epsilon,
        "spherize_method": args.spherize_method,
        "spherize_epsilon": args.spherize_epsilon,
        "nonparametric": args.nonparametric,
        "overwrite": args.overwrite,
    }
    config = _settings(NormalizeConfig, args, flags, where="normalize")
    manifest = run.normalize(config, ray_config=_ray(args), tracking=_tracking(args))
    counts = manifest.extra.get("fallback_counts", {})
    print(
        f"wrote {manifest.num_rows} rows ({config.method}, reference {config.reference}) to "
        f"{config.out}; fallbacks: {counts or 'none'}"
    )
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from raymmi import run
    from raymmi.cells import PreprocessCellsConfig

    config = _settings(PreprocessCellsConfig, args, {}, where="preprocess cells")
    manifest = run.preprocess_cells(
        config,
        source=args.source,
        out=args.out,
        overwrite=bool(args.overwrite),
        ray_config=_ray(args),
        tracking=_tracking(args),
    )
    mods = ", ".join(f"{m.name} ({len(m.features)})" for m in manifest.modalities)
    print(f"wrote {manifest.num_rows} cells with {mods} to {args.out}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from raymmi import run
    from raymmi.plates import SelectConfig

    names = [
        "source",
        "out",
        "ops",
        "na_cutoff",
        "min_variance",
        "freq_cut",
        "unique_cut",
        "corr_threshold",
        "corr_method",
        "outlier_cutoff",
        "blocklist",
        "samples",
        "frequency_task_mb",
        "overwrite",
    ]
    config = _settings(SelectConfig, args, {n: getattr(args, n) for n in names}, where="select")
    manifest = run.select_features(config, ray_config=_ray(args), tracking=_tracking(args))
    info = manifest.extra["feature_selection"]
    print(
        f"kept {info['features_kept']} of {info['features_in']} features "
        f"(dropped per op: {info['dropped_per_op']}) in {config.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from raymmi import run

    flags = {
        "sources": args.sources,
        "out": args.out,
        "batch_key": args.batch_key,
        "label_key": args.label_key,
        "sample": args.sample,
        "seed": args.seed,
        "overwrite": args.overwrite,
    }
    config = _settings(EvaluatePlatesConfig, args, flags, where="evaluate plates")
    summary = run.evaluate_plates(
        list(config.sources),
        out=config.out,
        batch_key=config.batch_key,
        label_key=config.label_key,
        sample=config.sample,
        map_plates_per_batch=config.map_plates_per_batch,
        umap_plates_per_batch=config.umap_plates_per_batch,
        top_n=config.top_n,
        seed=config.seed,
        overwrite=config.overwrite,
        ray_config=_ray(args),
        tracking=_tracking(args),
    )
    print(run.summary_text(summary))
    print(f"report: {config.out}/index.html")
    return 0


def _export(args: argparse.Namespace) -> int:
    from raymmi import run

    config = _settings(
        ExportConfig,
        args,
        {"source": args.source, "out": args.out, "overwrite": args.overwrite},
        where="export",
    )
    rows = run.export(config, tracking=_tracking(args))
    print(f"wrote {rows} rows to {config.out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from raymmi import run, testing

    if args.kind == "images":
        return _generate_images(args)
    if args.kind == "plates":
        flags = {
            "seed": args.seed,
            "n_plates": args.plates,
            "wells_per_plate": args.wells,
            "n_features": args.features,
            "n_batches": args.batches,
        }
        spec = _settings(testing.PlateSetSpec, args, flags, where="generate plates")
        manifest = run.generate_plates(
            spec,
            out=args.out,
            overwrite=bool(args.overwrite),
            ray_config=_ray(args),
            tracking=_tracking(args),
        )
    else:
        flags = {
            "seed": args.seed,
            "kind": args.cell_kind,
            "n_cells": args.cells,
            "n_genes": args.genes,
            "n_peaks": args.peaks,
            "n_batches": args.batches,
        }
        spec_c = _settings(testing.CellSetSpec, args, flags, where="generate cells")
        manifest = run.generate_cells(
            spec_c,
            out=args.out,
            overwrite=bool(args.overwrite),
            ray_config=_ray(args),
            tracking=_tracking(args),
        )
    print(f"wrote {manifest.num_rows} rows to {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from raymmi.io import open_shard_set

    shard_set = open_shard_set(args.source)
    m = shard_set.manifest
    print(f"{args.source}: {m.kind} shard set, schema v{m.schema_version}")
    print(f"  rows {m.num_rows}, files {len(m.files)}")
    if m.kind == "plates":
        print(f"  plates {len(m.plates)}, features {len(m.features)}, metadata {list(m.metadata)}")
    for mod in m.modalities:
        print(f"  modality {mod.name}: {mod.encoding}, {len(mod.features)} features")
    print(
        f"  produced by: {m.producer.get('command')} "
        f"(MLflow run {m.producer.get('mlflow_run_id')})"
    )
    for parent in m.parents:
        print(f"  parent: {parent.get('uri')}")
    if args.verify:
        problems = shard_set.verify()
        for p in problems:
            print(f"  DAMAGED {p}")
        if problems:
            return 1
        print("  every checksum matches the manifest")
    return 0


def _train(args: argparse.Namespace) -> int:
    from raymmi import run

    flags = {
        "model_name": args.model,
        "data": args.data,
        "out": args.out,
        "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
        "cpus_per_worker": args.cpus_per_worker,
        "label_key": args.label_key,
        "extra_data": args.extra_data,
        "impute": args.impute,
        "impute_format": args.impute_format,
        "impute_threshold": args.impute_threshold,
        "overwrite": args.overwrite,
    }
    if args.epochs is not None:
        args.set = [*args.set, f"optim.epochs={args.epochs}"]
    config = _settings(TrainConfig, args, flags, where="train")
    metrics = run.train(config, ray_config=_ray(args), tracking=_tracking(args))
    shown = {k: v for k, v in metrics.items() if k in TRAIN_SUMMARY and v is not None}
    print(
        f"trained {config.model_name} ({metrics.get('epoch', -1) + 1:.0f} epochs) into "
        f"{config.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
    )
    return 0


def _tune(args: argparse.Namespace) -> int:
    from raymmi.run import tune
    from raymmi.tune_space import TuneConfig

    flags = {
        "model_name": args.model,
        "data": args.data,
        "out": args.out,
        "workers": args.workers,
        "cpus_per_worker": args.cpus_per_worker,
        "label_key": args.label_key,
    }
    if args.epochs is not None:
        args.set = [*args.set, f"optim.epochs={args.epochs}"]
    base = _settings(TrainConfig, args, flags, where="tune")
    settings = TuneConfig(
        space=args.space,
        out=base.out,
        metric=args.metric,
        mode=args.mode,
        trials=args.trials,
        seeds=args.seeds,
        search=args.search,
        scheduler=args.scheduler,
        max_concurrent=args.max_concurrent,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        trial_embeddings=args.trial_embeddings,
        name=args.name,
        seed=args.search_seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        pack=args.pack,
    )
    outcome = tune(
        settings,
        base,
        ray_config=_ray(args),
        tracking=_tracking(args),
        resume=args.resume,
        overwrite=bool(args.overwrite),
    )
    from raymmi.run._tune import summary_lines

    for note in outcome.notes:
        print(f"note: {note}")
    trials = outcome.trials
    print(
        f"searched {len(outcome.results)} configurations in {len(trials)} trials "
        f"({int((trials['status'] == 'stopped').sum())} stopped early, "
        f"{int((trials['status'] == 'error').sum())} failed) in {outcome.wall_seconds:.0f} s"
    )
    print("\n".join(summary_lines(outcome, args.metric)))
    print(
        f"best configuration: {outcome.out}/best.yaml (retrain: raymmi train {args.model} "
        f"--config {outcome.out}/best.yaml --out DIR)"
    )
    if outcome.parent_run_id:
        print(f"MLflow: {outcome.tracking_uri} run {outcome.parent_run_id}")
    return 0


def _task(args: argparse.Namespace) -> int:
    from raymmi import run

    def listed(value: str | None) -> list[str] | None:
        return None if value is None else [v for v in value.split(",") if v]

    flags = {
        "task": args.task,
        "data": args.data,
        "out": args.out,
        "train_batches": listed(args.train_batches),
        "test_batches": listed(args.test_batches),
        "method": args.method,
        "source": args.source,
        "target": args.target,
        "modalities": listed(args.modalities),
        "label_key": args.label_key,
        "batch_key": args.batch_key,
        "epochs": args.epochs,
        "embed_cells": args.embed_cells,
        "overwrite": args.overwrite,
    }
    config = _settings(run.TaskConfig, args, flags, where="task")
    scores = run.run_task(config, ray_config=_ray(args), tracking=_tracking(args))
    print(f"{config.task} ({config.method or 'default method'}) scores, also in {config.out}:")
    batches = len(config.test_batches) if config.embed_cells == "test" else None
    for name, value in scores.items():
        if isinstance(value, float):
            print(f"  {name:28s} {run.score_text(name, value, batches=batches)}")
        else:
            print(f"  {name}: {value}")
    return 0


TRAIN_SUMMARY = (
    "train_loss",
    "val_loss",
    "ari",
    "nmi",
    "silhouette",
    "reference_ari",
    "reference_nmi",
    "reference_silhouette",
)


def _demo(args: argparse.Namespace) -> int:
    from raymmi.demo import run_demo

    run_demo(
        out=args.out,
        small=args.small,
        ray_config=_ray(args),
        tracking=_tracking(args),
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "ingest": _ingest,
    "normalize": _normalize,
    "select": _select,
    "train": _train,
    "task": _task,
    "tune": _tune,
    "preprocess": _preprocess,
    "evaluate": _evaluate,
    "export": _export,
    "generate": _generate,
    "inspect": _inspect,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``raymmi`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from raymmi.run._logs import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    try:
        return COMMANDS[args.command](args)
    except RaymmiError as err:
        print(f"raymmi: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raymmi: interrupted", file=sys.stderr)
        return 130


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text if os.environ.get("RAYMMI_DEBUG") is None else repr(err)


if __name__ == "__main__":
    sys.exit(main())
