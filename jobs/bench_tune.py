"""Benchmark of `raymmi tune`: per-trial overhead, trials per hour, packing, and ASHA vs a grid.

    python jobs/bench_tune.py [--cells 10000] [--epochs 20] [--out DIR] [--smoke-test]

1. Overhead of a trial: its wall time (start to end, as the search's driver sees it) minus its
   training time (the sum of its epochs' seconds), and trials per hour of search wall, for
   (a) plain function trials (each reports `--epochs` times after 0.1 s of "work"),
   (b) Train-in-Tune trials (every trial a `raymmi train` Ray Train run, the path before
       in-process trials; `--train-trials` of them),
   (c) in-process trials (the default path: one worker, the loop in the trial's process),
   (d) packed trials, `--pack 8` and `--pack 32` (members of one stacked model; a member's
       wall is its pack's wall divided by its members), and `--pack 8 --search optuna` (K
       configurations a pack asked from one Optuna study).
   (b)-(d) train the same UMINT configurations (a grid over alpha x lr x lambda_2) on the
   same cells, grid search, no early stopping; the baseline of the ratios is (b).
2. On a small SAILERX space (gamma x lambda, a 5 x 3 grid, log-spaced), the exhaustive grid
   (every configuration trained `--epochs` epochs) against ASHA over the same configurations
   (grace period 1 epoch, halving rate `--reduction-factor`), both with in-process trials:
   the best `val_ari` each found and the compute each spent (epochs trained, and
   trial-seconds). The goal: within 1% of the grid's best for at most 35% of its epochs.

Runs on a local Ray of `--num-cpus` (default 2) CPUs. Prints the tables and `uptime`'s load.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

WORK_S = 0.1  # "training" per report of a function trial
# The SAILERX ranges (gamma 10..1e5, lambda 0.01..100), a decade / two decades apart.
GAMMAS = [10.0, 100.0, 1000.0, 10000.0, 100000.0]
LAMS = [0.01, 1.0, 100.0]


def _data(root: Path, cells: int) -> str:
    from raymmi import run, testing
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.config import TrackingConfig, from_dict

    spec = testing.CellSetSpec(
        n_cells=cells,
        n_genes=300,
        n_peaks=600,
        n_cell_types=4,
        chunk_size=max(100, cells // 2),
        seed=3,
    )
    off = TrackingConfig(enabled=False)
    run.generate_cells(spec, out=str(root / "raw"), overwrite=True, tracking=off)
    config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 10}}})
    run.preprocess_cells(
        config, source=str(root / "raw"), out=str(root / "pre"), overwrite=True, tracking=off
    )
    return str(root / "pre")


def _function_trial(config: dict[str, Any]) -> None:
    from ray import tune

    for i in range(int(config["epochs"])):
        time.sleep(WORK_S)
        tune.report({"loss": float(config["x"]) / (i + 1), "epochs_done": i + 1})


def function_trials(n: int, epochs: int, concurrent: int, root: Path) -> dict[str, Any]:
    """N plain function trials through the same driver resources and callbacks as a search."""
    from ray import tune

    from raymmi.run._tune._driver import DRIVER_CPU, _callbacks

    callbacks = _callbacks()
    clock = callbacks[1]
    tuner = tune.Tuner(
        tune.with_resources(_function_trial, {"cpu": DRIVER_CPU}),
        param_space={"x": tune.uniform(0, 1), "epochs": epochs},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", num_samples=n, max_concurrent_trials=concurrent
        ),
        run_config=tune.RunConfig(
            name="function-trials", storage_path=str(root / "tune"), callbacks=callbacks
        ),
    )
    started = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - started
    spans = [end - start for start, end in clock.times.values()]
    train = epochs * WORK_S
    return {
        "kind": "function trials",
        "trials": n,
        "concurrent": concurrent,
        "wall_s": wall,
        "trial_wall_s": sum(spans) / len(spans),
        "train_s": train,
        "overhead_s": sum(spans) / len(spans) - train,
        "trials_per_hour": n / wall * 3600,
    }


def _search(
    data: str,
    root: Path,
    name: str,
    grid: tuple[list[float], list[float]],
    *,
    scheduler: str,
    epochs: int,
    reduction: int,
) -> Any:
    from raymmi.config import OptimConfig, TrackingConfig, TrainConfig
    from raymmi.run import tune
    from raymmi.tune_space import TuneConfig

    space = root / f"{name}.yaml"
    space.write_text(
        yaml.safe_dump({"model": {"gamma": {"grid": grid[0]}, "lam": {"grid": grid[1]}}})
    )
    settings = TuneConfig(
        space=str(space),
        out=str(root / name),
        metric="val_ari",
        mode="max",
        search="grid",
        scheduler=scheduler,  # type: ignore[arg-type]
        grace_period=1,
        reduction_factor=reduction,
        name=f"bench-{name}",
    )
    base = TrainConfig(
        model_name="sailerx",
        data=data,
        out=str(root / name),
        model={
            "z_dim": 8,
            "hidden": [64, 32],
            "chromosome_split": False,
            "warmup_epochs": 1,
            "kl_cycle": 0,
        },
        optim=OptimConfig(epochs=epochs, batch_size=64, lr=1e-3),
        label_key="cell_type",
        impute=False,
    )
    started = time.perf_counter()
    outcome = tune(
        settings,
        base,
        overwrite=True,
        tracking=TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="bench-tune"),
    )
    return outcome, time.perf_counter() - started


def _umint_space(n: int) -> dict[str, Any]:
    """A UMINT grid of about ``n`` configurations: alpha x lr x lambda_2 (one architecture)."""
    import numpy as np

    side = max(2, round(n ** (1 / 3)))
    alphas = [float(a) for a in np.logspace(-5, -1, side)]
    lrs = [float(a) for a in np.logspace(-3.5, -2, side)]
    lams = [float(a) for a in np.logspace(-1, 1, max(1, n // (side * side)))]
    return {
        "model.alpha": {"grid": alphas},
        "optim.lr": {"grid": lrs},
        "model.lambdas.1": {"grid": lams},
    }


def _umint_row(
    kind: str,
    data: str,
    root: Path,
    space: dict[str, Any],
    epochs: int,
    *,
    ray_train: bool = False,
    pack: int = 1,
    limit: int | None = None,
    search: str = "grid",
) -> dict[str, Any]:
    from raymmi.config import OptimConfig, TrackingConfig, TrainConfig
    from raymmi.run import tune
    from raymmi.tune_space import TuneConfig

    if limit is not None:  # fewer configurations (Train trials are slow): the first `limit`
        space = dict(space)
        space["model.lambdas.1"] = {"grid": space["model.lambdas.1"]["grid"][:1]}
        space["optim.lr"] = {"grid": space["optim.lr"]["grid"][:1]}
        space["model.alpha"] = {"grid": space["model.alpha"]["grid"][:limit]}
    name = kind.split()[0].lower() + str(pack) + ("-optuna" if search == "optuna" else "")
    path = root / f"umint-{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    settings = TuneConfig(
        space=str(path),
        out=str(root / f"umint-{name}"),
        metric="val_ari",
        mode="max",
        search=search,
        # optuna: as many configurations as the grid has, TPE's choice among its values
        trials=math.prod(len(v["grid"]) for v in space.values()) if search == "optuna" else None,
        scheduler="none",
        name=f"bench-umint-{name}",
        pack=pack,
        ray_train=ray_train,
    )
    base = TrainConfig(
        model_name="umint",
        data=data,
        out=settings.out,
        model={
            "modalities": ["rna_hvg", "atac_lsi"],
            "widths": [64, 16],
            "bottleneck": 16,
            "lambdas": [1.0, 1.0],
        },
        optim=OptimConfig(epochs=epochs),
        label_key="cell_type",
        impute=False,
    )
    started = time.perf_counter()
    outcome = tune(
        settings,
        base,
        overwrite=True,
        tracking=TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="bench-tune"),
    )
    wall = time.perf_counter() - started
    trials = outcome.trials
    per_trial = float(trials["wall_seconds"].mean())
    train_s = float(trials["epoch_seconds"].mean())
    return {
        "kind": kind,
        "trials": len(trials),
        "wall_s": wall,
        "trial_wall_s": per_trial,
        "train_s": train_s,
        "overhead_s": per_trial - train_s,
        "trials_per_hour": len(trials) / wall * 3600,
        "trials_per_hour_in_trials": len(trials) / outcome.phases["trials"] * 3600,
    }


def _uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _search_row(name: str, outcome: Any, wall: float) -> dict[str, Any]:
    trials = outcome.trials
    best = outcome.results.iloc[0]
    return {
        "search": name,
        "configs": len(outcome.results),
        "best_val_ari": float(best["val_ari_mean"]),
        "best_config": f"gamma={best['model.gamma']:g} lam={best['model.lam']:g}",
        "epochs_trained": int(trials["epochs"].sum()),
        "trial_seconds": float(trials["wall_seconds"].sum()),
        "stopped_early": int((trials["status"] == "stopped").sum()),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--function-trials", type=int, default=16)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--umint-configs", type=int, default=32, help="UMINT grid size (x2)")
    parser.add_argument("--train-trials", type=int, default=4, help="trials of (b)")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, same code path")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.cells, args.epochs, args.function_trials = 200, 2, 4
        args.umint_configs, args.train_trials = 8, 2
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-tune-")).resolve()
    root.mkdir(parents=True, exist_ok=True)

    from raymmi.config import RayConfig
    from raymmi.run import init_ray

    init_ray(RayConfig(num_cpus=args.num_cpus, object_store_mb=512))
    data = _data(root, args.cells)
    grid_values = (GAMMAS[:2], LAMS[:1]) if args.smoke_test else (GAMMAS, LAMS)

    overhead = [function_trials(args.function_trials, args.epochs, 2, root)]
    umint_space = _umint_space(args.umint_configs)
    for kind, settings in (
        ("Train-in-Tune trials", {"ray_train": True, "limit": args.train_trials}),
        ("in-process trials", {}),
        ("packed trials K=8", {"pack": 8}),
        ("packed trials K=32", {"pack": 32}),
        ("packed optuna trials K=8", {"pack": 8, "search": "optuna"}),
    ):
        overhead.append(_umint_row(kind, data, root, umint_space, args.epochs, **settings))
    grid, grid_wall = _search(
        data, root, "grid", grid_values, scheduler="none", epochs=args.epochs, reduction=3
    )
    asha, asha_wall = _search(
        data,
        root,
        "asha",
        grid_values,
        scheduler="asha",
        epochs=args.epochs,
        reduction=args.reduction_factor,
    )
    rows = [
        _search_row("grid (exhaustive)", grid, grid_wall),
        _search_row("asha", asha, asha_wall),
    ]
    table = pd.DataFrame(rows)
    table["compute_vs_grid_epochs"] = table["epochs_trained"] / rows[0]["epochs_trained"]
    table["compute_vs_grid_seconds"] = table["trial_seconds"] / rows[0]["trial_seconds"]
    table["gap_to_grid_best"] = 1 - table["best_val_ari"] / rows[0]["best_val_ari"]
    goal = (
        table.loc[1, "gap_to_grid_best"] <= 0.01 and table.loc[1, "compute_vs_grid_epochs"] <= 0.35
    )
    pd.set_option("display.width", 200)
    frame = pd.DataFrame(overhead)
    baseline = frame.loc[frame["kind"] == "Train-in-Tune trials", "trials_per_hour"]
    if len(baseline):
        frame["trials_per_hour_vs_train"] = frame["trials_per_hour"] / float(baseline.iloc[0])
    overhead = frame.to_dict("records")
    print(
        f"\n== per-trial overhead ({args.num_cpus} CPUs, {args.cells} cells, {args.epochs} epochs)"
    )
    print(pd.DataFrame(overhead).round(2).to_string(index=False))
    print(
        f"\n== ASHA vs exhaustive grid: SAILERX gamma {grid_values[0]} x lambda "
        f"{grid_values[1]}, val_ari (max)"
    )
    print(table.round(3).to_string(index=False))
    print(
        f"\ngoal (within 1% of the grid's best for <= 35% of its epochs): "
        f"{'met' if goal else 'not met'}"
    )
    print(f"uptime: {_uptime()}")
    print(f"outputs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
