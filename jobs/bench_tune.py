"""Benchmark of `raymmi tune`: per-trial overhead, trials per hour, and ASHA against a full grid.

    python jobs/bench_tune.py [--cells 10000] [--epochs 20] [--out DIR] [--smoke-test]

1. Overhead of a trial: its wall time (start to end, as the search's driver sees it) minus its
   training time, and trials per hour, for plain function trials (each reports `--epochs`
   times after 0.1 s of "work") and for Train trials (real `raymmi train` runs of SAILERX; the
   training time is the sum of their epochs' seconds). The Train trials are those of the grid
   search of part 2.
2. On a small SAILERX space (γ x λ, a 5 x 3 grid, log-spaced), the exhaustive grid (every
   configuration trained `--epochs` epochs) against ASHA over the same configurations (grace
   period 1 epoch, halving rate `--reduction-factor`): the best `val_ari` each found and the
   compute each spent (epochs trained, and trial-seconds, which include every trial's fixed
   start-up that no scheduler can save). The goal: within 1% of the grid's best for at most
   35% of its epochs. Small sets train in file order, so a configuration and seed give the same
   run in both searches. ASHA can only save epochs that last longer than its decision takes to
   reach the trial (a report travels worker -> Train controller -> Tune driver, ~1-2 s here):
   with 0.3 s epochs (2,000 cells) trials it stopped had already finished; hence 10,000 cells
   (1 s epochs) and 20 epochs (at 12, stops still landed a rung late: 38% of the epochs).

Runs on a local Ray of `--num-cpus` (default 2) CPUs, two trials at a time. Prints the tables.
"""

from __future__ import annotations

import argparse
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

    from raymmi.run._tune import DRIVER_CPU, _callbacks

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
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, same code path")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.cells, args.epochs, args.function_trials = 200, 2, 4
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-tune-")).resolve()
    root.mkdir(parents=True, exist_ok=True)

    from raymmi.config import RayConfig
    from raymmi.run import init_ray

    init_ray(RayConfig(num_cpus=args.num_cpus, object_store_mb=512))
    data = _data(root, args.cells)
    grid_values = (GAMMAS[:2], LAMS[:1]) if args.smoke_test else (GAMMAS, LAMS)

    overhead = [function_trials(args.function_trials, args.epochs, 2, root)]
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
    trials = grid.trials
    per_trial = trials["wall_seconds"].mean()
    train_s = trials["epoch_seconds"].mean()
    overhead.append(
        {
            "kind": "Train trials (SAILERX)",
            "trials": len(trials),
            "concurrent": 2,
            "wall_s": grid_wall,
            "trial_wall_s": per_trial,
            "train_s": train_s,
            "overhead_s": per_trial - train_s,
            "trials_per_hour": len(trials) / grid_wall * 3600,
        }
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
    print(f"outputs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
