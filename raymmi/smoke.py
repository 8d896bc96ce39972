"""Tiny end-to-end inputs for every job's ``--smoke-test``: same code path, tiny data."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raymmi import testing

SMOKE_PLATES = {"n_plates": 2, "n_features": 12, "n_batches": 2, "wells_per_plate": 96}
SMOKE_CELLS: dict[str, Any] = {
    "n_cells": 400,
    "n_genes": 200,
    "n_peaks": 300,
    "chunk_size": 200,
    "seed": 0,
}


def smoke_dir(out: str | None) -> Path:
    """The folder for a smoke run's outputs (a fresh temporary folder by default)."""
    path = Path(out) if out else Path(tempfile.mkdtemp(prefix="raymmi-smoke-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke_argv(stage: str, out: str | None) -> list[str]:
    """``raymmi`` arguments that run ``stage`` end to end on tiny data under ``out``.

    ``ingest`` and ``export`` first write their tiny input (a generated plate table, a
    generated shard set) into the same folder.
    """
    root = smoke_dir(out)
    spec = testing.PlateSetSpec(**SMOKE_PLATES)
    if stage == "generate":
        return [
            "generate",
            "plates",
            "--out",
            str(root / "plates"),
            "--overwrite",
            "--plates",
            "2",
            "--features",
            "12",
            "--wells",
            "96",
        ]
    if stage == "ingest":
        table = root / "plates.csv"
        frames = [testing.generate_plate(spec, i) for i in range(spec.n_plates)]
        import pandas as pd

        pd.concat(frames).to_csv(table, index=False)
        return ["ingest", "plates", str(table), "--out", str(root / "ingested"), "--overwrite"]
    if stage == "export":
        from raymmi import run

        source = root / "plates"
        run.generate_plates(spec, out=str(source), overwrite=True)
        return ["export", str(source), "--out", str(root / "plates.parquet"), "--overwrite"]
    if stage == "evaluate":
        from raymmi import run
        from raymmi.config import NormalizeConfig, TrackingConfig

        raw, norm = root / "plates", root / "plates_standardize"
        off = TrackingConfig(enabled=False)
        run.generate_plates(spec, out=str(raw), overwrite=True, tracking=off)
        run.normalize(
            NormalizeConfig(source=str(raw), out=str(norm), method="standardize", overwrite=True),
            tracking=off,
        )
        return [
            "evaluate",
            "plates",
            str(raw),
            str(norm),
            "--out",
            str(root / "report"),
            "--overwrite",
            "--sample",
            "128",
        ]
    if stage == "train":
        from raymmi import run
        from raymmi.cells import PreprocessCellsConfig
        from raymmi.config import from_dict

        spec_c = testing.CellSetSpec(**SMOKE_CELLS)
        run.generate_cells(spec_c, out=str(root / "cells"), overwrite=True)
        config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 8}}})
        run.preprocess_cells(
            config, source=str(root / "cells"), out=str(root / "cells_pre"), overwrite=True
        )
        return [
            "train",
            "sailerx",
            "--data",
            str(root / "cells_pre"),
            "--out",
            str(root / "sailerx"),
            "--overwrite",
            "--epochs",
            "1",
            "--label-key",
            "cell_type",
            *("--set", "model.z_dim=4", "--set", "model.hidden=[32,8]"),
            *("--set", "model.chromosome_widths=[4,2]", "--set", "optim.batch_size=100"),
        ]
    if stage == "ingest images":
        from raymmi import run

        load = run.generate_images(
            out=str(root / "fields"), wells=2, sites=1, size=192, overwrite=True
        )
        return [
            *("ingest", "images", load, "--out", str(root / "cells"), "--overwrite"),
            *("--nuclei-channel", "DNA", "--cell-channel", "AGP"),
            *("--measure", "sizeshape,intensity"),
        ]
    msg = f"no smoke test for stage {stage!r}"
    raise ValueError(msg)


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/<stage>.py``: ``raymmi <stage> ARGS``, or ``--smoke-test``."""
    import argparse

    from raymmi.cli import main as raymmi_main

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--smoke-test", action="store_true", help="tiny end-to-end run")
    parser.add_argument("--out", help="with --smoke-test: folder for its outputs")
    args, rest = parser.parse_known_args(argv)
    if args.smoke_test:
        return raymmi_main(smoke_argv(stage, args.out))
    if args.out is not None:
        rest += ["--out", args.out]
    return raymmi_main([*stage.split(), *rest])
