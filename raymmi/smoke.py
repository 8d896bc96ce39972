"""Every stage's ``--smoke-test``: its tiny inputs, then the ``raymmi`` arguments that run it.

Each entry of :data:`SMOKES` writes what its stage reads (a generated plate table, a shard
set, a search space) under a folder and returns the stage's command line: the same code path
as a real run, on tiny data. ``jobs/stage.py NAME --smoke-test [--out DIR]`` runs one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
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


def _off() -> Any:
    from raymmi.config import TrackingConfig

    return TrackingConfig(enabled=False)


def _plates(root: Path) -> Path:
    from raymmi import run

    source = root / "plates"
    spec = testing.PlateSetSpec(**SMOKE_PLATES)
    run.generate_plates(spec, out=str(source), overwrite=True, tracking=_off())
    return source


def _cells(root: Path, *, kind: str = "multiome", preprocess: bool = True) -> Path:
    from raymmi import run
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.config import from_dict

    raw, pre = root / f"cells_{kind}", root / f"cells_{kind}_pre"
    spec = testing.CellSetSpec(**{**SMOKE_CELLS, "kind": kind})
    run.generate_cells(spec, out=str(raw), overwrite=True, tracking=_off())
    if not preprocess:
        return raw
    config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 8}}})
    run.preprocess_cells(config, source=str(raw), out=str(pre), overwrite=True, tracking=_off())
    return pre


def _generate_plates(root: Path) -> list[str]:
    return [
        *("generate", "plates", "--out", str(root / "plates"), "--overwrite"),
        *("--plates", "2", "--features", "12", "--wells", "96"),
    ]


def _generate_cells(root: Path) -> list[str]:
    return [
        *("generate", "cells", "--out", str(root / "cells"), "--overwrite"),
        *("--kind", "cite", "--cells", "300", "--genes", "100", "--proteins", "20"),
    ]


def _generate_images(root: Path) -> list[str]:
    return [
        *("generate", "images", "--out", str(root / "fields"), "--overwrite"),
        *("--wells", "2", "--sites", "1", "--size", "128"),
    ]


def _ingest_plates(root: Path) -> list[str]:
    import pandas as pd

    spec = testing.PlateSetSpec(**SMOKE_PLATES)
    table = root / "plates.csv"
    pd.concat([testing.generate_plate(spec, i) for i in range(spec.n_plates)]).to_csv(
        table, index=False
    )
    return ["ingest", "plates", str(table), "--out", str(root / "ingested"), "--overwrite"]


def _ingest_cells(root: Path) -> list[str]:
    from raymmi import run
    from raymmi.config import ExportConfig

    h5mu = root / "cells.h5mu"
    source = _cells(root, preprocess=False)
    run.export(ExportConfig(source=str(source), out=str(h5mu), overwrite=True), tracking=_off())
    return ["ingest", "cells", "--rna", str(h5mu), "--out", str(root / "ingested"), "--overwrite"]


def _ingest_images(root: Path) -> list[str]:
    from raymmi import run

    load = run.generate_images(
        out=str(root / "fields"), wells=2, sites=1, size=192, overwrite=True
    )
    return [
        *("ingest", "images", load, "--out", str(root / "cells"), "--overwrite"),
        *("--nuclei-channel", "DNA", "--cell-channel", "AGP"),
        *("--measure", "sizeshape,intensity"),
    ]


def _normalize(root: Path) -> list[str]:
    source = _plates(root)
    return [
        *("normalize", str(source), "--out", str(root / "plates_mad"), "--overwrite"),
        *("--method", "mad_robustize", "--reference", "negcon"),
    ]


def _select(root: Path) -> list[str]:
    source = _plates(root)
    return [
        *("select", str(source), "--out", str(root / "plates_selected"), "--overwrite"),
        *("--ops", "variance,correlation,na"),
    ]


def _evaluate_plates(root: Path) -> list[str]:
    from raymmi import run
    from raymmi.config import NormalizeConfig

    raw, norm = _plates(root), root / "plates_standardize"
    run.normalize(
        NormalizeConfig(source=str(raw), out=str(norm), method="standardize", overwrite=True),
        tracking=_off(),
    )
    return [
        *("evaluate", "plates", str(raw), str(norm), "--out", str(root / "report")),
        *("--overwrite", "--sample", "128"),
    ]


def _preprocess_cells(root: Path) -> list[str]:
    source = _cells(root, preprocess=False)
    return [
        *("preprocess", "cells", str(source), "--out", str(root / "cells_pre"), "--overwrite"),
        *("--set", "rna.pca.n_comps=8"),
    ]


def _train(root: Path) -> list[str]:
    data = _cells(root)
    return [
        *("train", "sailerx", "--data", str(data), "--out", str(root / "sailerx")),
        *("--overwrite", "--epochs", "1", "--label-key", "cell_type"),
        *("--set", "model.z_dim=4", "--set", "model.hidden=[32,8]"),
        *("--set", "model.chromosome_widths=[4,2]", "--set", "optim.batch_size=100"),
    ]


def _tune(root: Path) -> list[str]:
    import yaml

    data = _cells(root)
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
        *("tune", "sailerx", "--data", str(data), "--out", str(root / "search")),
        *("--overwrite", "--space", str(space), "--config", str(base), "--trials", "4"),
        *("--metric", "val_ari", "--mode", "max", "--label-key", "cell_type"),
    ]


def _task(root: Path) -> list[str]:
    data = _cells(root, kind="cite")
    return [
        *("task", "predict", "--data", str(data), "--out", str(root / "predict")),
        *("--overwrite", "--train-batches", "s1,s2", "--test-batches", "s3"),
        *("--method", "mean"),
    ]


def _export(root: Path) -> list[str]:
    source = _plates(root)
    return ["export", str(source), "--out", str(root / "plates.parquet"), "--overwrite"]


SMOKES: dict[str, Callable[[Path], list[str]]] = {
    "ingest plates": _ingest_plates,
    "ingest cells": _ingest_cells,
    "ingest images": _ingest_images,
    "normalize": _normalize,
    "select": _select,
    "evaluate plates": _evaluate_plates,
    "preprocess cells": _preprocess_cells,
    "train": _train,
    "tune": _tune,
    "task": _task,
    "export": _export,
    "generate plates": _generate_plates,
    "generate cells": _generate_cells,
    "generate images": _generate_images,
}


def smoke_argv(stage: str, out: str | None) -> list[str]:
    """``raymmi`` arguments that run ``stage`` end to end on tiny data under ``out``."""
    if stage not in SMOKES:
        msg = f"no smoke test for stage {stage!r}; stages: {sorted(SMOKES)}"
        raise ValueError(msg)
    return SMOKES[stage](smoke_dir(out))


def job_main(argv: list[str] | None = None) -> int:
    """``jobs/stage.py NAME ARGS``: ``raymmi NAME ARGS``, or NAME's ``--smoke-test``."""
    import argparse
    import sys

    from raymmi.cli import main as raymmi_main
    from raymmi.stages import STAGES

    words = list(sys.argv[1:] if argv is None else argv)
    stage = next(
        (" ".join(words[:n]) for n in (2, 1) if len(words) >= n and " ".join(words[:n]) in STAGES),
        None,
    )
    if stage is None and words[:1] in (["-h"], ["--help"]):
        print(
            "usage: jobs/stage.py NAME [ARGS ...] | NAME --smoke-test [--out DIR]\n"
            f"NAME: one of {sorted(STAGES)}; ARGS: those of `raymmi NAME --help`"
        )
        return 0
    if stage is None:
        given = " ".join(w for w in words[:2] if not w.startswith("-")) or "nothing"
        print(
            f"jobs/stage.py: {given!r} is no stage; give one of {sorted(STAGES)} first "
            "(e.g. jobs/stage.py generate plates --smoke-test)",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--smoke-test", action="store_true", help="tiny end-to-end run")
    parser.add_argument("--out", help="with --smoke-test: folder for its outputs")
    args, rest = parser.parse_known_args(words[len(stage.split()) :])
    if args.smoke_test:
        import shlex

        argv = smoke_argv(stage, args.out)
        print(f"smoke test of {stage}: raymmi {shlex.join(argv)}", flush=True)
        return raymmi_main(argv)
    if args.out is not None:
        rest += ["--out", args.out]
    return raymmi_main([*stage.split(), *rest])
