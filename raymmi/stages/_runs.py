"""What each stage does once its settings are built: call the driver, print one summary."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from raymmi.config import TrainConfig, from_dict
from raymmi.schema import RaymmiError
from raymmi.stages._stage import ray_config, tracking_config

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


def _drive(driver: str, config: Any, args: argparse.Namespace) -> Any:
    """``raymmi.run.<driver>(config)`` on the command line's Ray and MLflow settings."""
    from raymmi import run

    stage = getattr(run, driver)
    return stage(config, ray_config=ray_config(args), tracking=tracking_config(args))


def ingest_plates(config: Any, args: argparse.Namespace) -> int:
    manifest = _drive("ingest_plates", config, args)
    print(
        f"wrote {manifest.num_rows} rows, {len(manifest.plates)} plates, "
        f"{len(manifest.features)} features to {config.out}"
    )
    return 0


def ingest_cells(config: Any, args: argparse.Namespace) -> int:
    manifest = _drive("ingest_cells", config, args)
    mods = ", ".join(f"{m.name} ({len(m.features)})" for m in manifest.modalities)
    print(f"wrote {manifest.num_rows} cells with {mods} to {config.out}")
    return 0


def nuclei_diameter(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """``--nuclei-diameter MIN,MAX``: the two diameter settings in one flag."""
    if not getattr(args, "nuclei_diameter", None):
        return
    try:
        lo, hi = (float(v) for v in args.nuclei_diameter.split(","))
    except ValueError as err:
        msg = f"--nuclei-diameter {args.nuclei_diameter!r} must be MIN,MAX, e.g. 8,80"
        raise RaymmiError(msg) from err
    data.update(nuclei_min_diameter=lo, nuclei_max_diameter=hi)


def ingest_images(config: Any, args: argparse.Namespace) -> int:
    manifest = _drive("ingest_images", config, args)
    qc = manifest.extra["field_qc"]
    print(
        f"wrote {manifest.num_rows} rows ({qc['cells']} cells from {qc['fields']} fields, "
        f"{qc['blank_fields']} blank), {len(manifest.features)} features to {config.out}; "
        f"per-field QC in {config.out}/_field_qc.csv"
    )
    return 0


def normalize(config: Any, args: argparse.Namespace) -> int:
    manifest = _drive("normalize", config, args)
    counts = manifest.extra.get("fallback_counts", {})
    print(
        f"wrote {manifest.num_rows} rows ({config.method}, reference {config.reference}) to "
        f"{config.out}; fallbacks: {counts or 'none'}"
    )
    return 0


def select(config: Any, args: argparse.Namespace) -> int:
    manifest = _drive("select_features", config, args)
    info = manifest.extra["feature_selection"]
    print(
        f"kept {info['features_kept']} of {info['features_in']} features "
        f"(dropped per op: {info['dropped_per_op']}) in {config.out}"
    )
    return 0


def evaluate_plates(config: Any, args: argparse.Namespace) -> int:
    from raymmi import run

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
        ray_config=ray_config(args),
        tracking=tracking_config(args),
    )
    print(run.summary_text(summary))
    print(f"report: {config.out}/index.html")
    return 0


def preprocess_cells(config: Any, args: argparse.Namespace) -> int:
    from raymmi import run

    manifest = run.preprocess_cells(
        config,
        source=args.source,
        out=args.out,
        overwrite=bool(args.overwrite),
        ray_config=ray_config(args),
        tracking=tracking_config(args),
    )
    mods = ", ".join(f"{m.name} ({len(m.features)})" for m in manifest.modalities)
    print(f"wrote {manifest.num_rows} cells with {mods} to {args.out}")
    return 0


def epochs_shortcut(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """``--epochs N``: ``--set optim.epochs=N``, applied before the other ``--set``s."""
    if getattr(args, "epochs", None) is not None:
        data.setdefault("optim", {})["epochs"] = args.epochs


def train(config: Any, args: argparse.Namespace) -> int:
    metrics = _drive("train", config, args)
    shown = {k: v for k, v in metrics.items() if k in TRAIN_SUMMARY and v is not None}
    print(
        f"trained {config.model_name} ({metrics.get('epoch', -1) + 1:.0f} epochs) into "
        f"{config.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
    )
    return 0


def tune_settings(data: dict[str, Any], where: str) -> tuple[Any, TrainConfig]:
    """``raymmi tune``'s settings: the training config, its search under the ``tune`` key."""
    from raymmi.tune_space import TuneConfig

    search = dict(data.pop("tune", None) or {})
    base = from_dict(TrainConfig, data, where=where)
    search.setdefault("out", base.out)
    return from_dict(TuneConfig, search, where=f"{where}.tune"), base


def tune(config: tuple[Any, TrainConfig], args: argparse.Namespace) -> int:
    from raymmi.run import summary_lines
    from raymmi.run import tune as run_tune

    settings, base = config
    outcome = run_tune(
        settings,
        base,
        ray_config=ray_config(args),
        tracking=tracking_config(args),
        resume=bool(args.resume),
        overwrite=bool(args.overwrite),
    )
    for note in outcome.notes:
        print(f"note: {note}")
    trials = outcome.trials
    print(
        f"searched {len(outcome.results)} configurations in {len(trials)} trials "
        f"({int((trials['status'] == 'stopped').sum())} stopped early, "
        f"{int((trials['status'] == 'error').sum())} failed) in {outcome.wall_seconds:.0f} s"
    )
    print("\n".join(summary_lines(outcome, settings.metric)))
    print(
        f"best configuration: {outcome.out}/best.yaml (retrain: raymmi train "
        f"{base.model_name} --config {outcome.out}/best.yaml --out DIR)"
    )
    if outcome.parent_run_id:
        print(f"MLflow: {outcome.tracking_uri} run {outcome.parent_run_id}")
    return 0


def task(config: Any, args: argparse.Namespace) -> int:
    from raymmi.run import score_text

    scores = _drive("run_task", config, args)
    print(f"{config.task} ({config.method or 'default method'}) scores, also in {config.out}:")
    batches = len(config.test_batches) if config.embed_cells == "test" else None
    for name, value in scores.items():
        if isinstance(value, float):
            print(f"  {name:28s} {score_text(name, value, batches=batches)}")
        else:
            print(f"  {name}: {value}")
    return 0


def export(config: Any, args: argparse.Namespace) -> int:
    from raymmi import run

    rows = run.export(config, tracking=tracking_config(args))
    print(f"wrote {rows} rows to {config.out}")
    return 0


def _generate(driver: str) -> Callable[[Any, argparse.Namespace], int]:
    """The run function of ``raymmi generate plates|cells``: ``raymmi.run.<driver>``."""

    def generate(spec: Any, args: argparse.Namespace) -> int:
        from raymmi import run

        manifest = getattr(run, driver)(
            spec,
            out=args.out,
            overwrite=bool(args.overwrite),
            ray_config=ray_config(args),
            tracking=tracking_config(args),
        )
        print(f"wrote {manifest.num_rows} rows to {args.out}")
        return 0

    return generate


generate_plates = _generate("generate_plates")
generate_cells = _generate("generate_cells")


def generate_images(config: Any, args: argparse.Namespace) -> int:
    from raymmi import run

    path = run.generate_images(**dataclasses.asdict(config), ray_config=ray_config(args))
    print(f"wrote {config.plates * config.wells * config.sites} fields; LoadData CSV: {path}")
    return 0
