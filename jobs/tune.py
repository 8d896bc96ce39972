"""Ray job: a hyperparameter search (`raymmi tune MODEL`) of Ray Train runs on a Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/tune.py sailerx \
        --data s3://bucket/multiome_pre --out /shared/tune_sailerx \
        --space jobs/configs/tune_sailerx.yaml --trials 64 --seeds 3 \
        --metric val_ari --mode max --label-key cell_type

ARGS are those of `raymmi tune` (`raymmi tune --help`). `--out` must be storage every node
sees (a shared file system): the trials write their checkpoints and outputs under it. A job
killed mid-way continues with the same command plus `--resume`. `--smoke-test` runs a 4-trial
SAILERX search over gamma and lambda on 400 generated cells (written under `--out`, default a
temporary folder) on whatever Ray it finds.
"""

from __future__ import annotations

import sys

import yaml

from raymmi.smoke import job_main, smoke_dir


def smoke_argv(out: str | None) -> list[str]:
    """Tiny data and a tiny space, then the `raymmi tune` arguments that search it."""
    from raymmi import run, testing
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.config import TrackingConfig, from_dict

    root = smoke_dir(out)
    spec = testing.CellSetSpec(
        n_cells=400, n_genes=200, n_peaks=400, n_cell_types=3, chunk_size=200, seed=0
    )
    off = TrackingConfig(enabled=False)
    run.generate_cells(spec, out=str(root / "raw"), overwrite=True, tracking=off)
    config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 8}}})
    run.preprocess_cells(
        config, source=str(root / "raw"), out=str(root / "pre"), overwrite=True, tracking=off
    )
    space = root / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {"model": {"gamma": {"loguniform": [10, 1e5]}, "lam": {"loguniform": [0.01, 100]}}}
        )
    )
    base = root / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {"z_dim": 8, "hidden": [32, 16], "chromosome_split": False},
                "optim": {"epochs": 2, "batch_size": 64, "lr": 1e-3},
                "impute": False,
            }
        )
    )
    return [
        "tune",
        "sailerx",
        "--data",
        str(root / "pre"),
        "--out",
        str(root / "search"),
        "--overwrite",
        "--space",
        str(space),
        "--config",
        str(base),
        "--trials",
        "4",
        "--metric",
        "val_ari",
        "--mode",
        "max",
        "--label-key",
        "cell_type",
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from raymmi.cli import main as raymmi_main

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--smoke-test", action="store_true", help="tiny end-to-end search")
    parser.add_argument("--out")
    args, _ = parser.parse_known_args(argv)
    if args.smoke_test:
        return raymmi_main(smoke_argv(args.out))
    return job_main("tune", argv)


if __name__ == "__main__":
    sys.exit(main())
