"""Every job's --smoke-test runs its stage end to end (in-process, on the session's Ray)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from raymmi.io import open_shard_set
from raymmi.schema import MANIFEST_NAME
from raymmi.smoke import SMOKES

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _stage_job():
    spec = importlib.util.spec_from_file_location("job_stage", JOBS / "stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job(stage: str):
    """``jobs/stage.py STAGE ...`` as a ``main(argv)``."""
    module = _stage_job()
    return SimpleNamespace(main=lambda argv: module.main([*stage.split(), *argv]))


def test_every_stage_has_a_smoke_test():
    from raymmi.stages import STAGES

    assert list(SMOKES) == list(STAGES)
    assert sorted(p.name for p in JOBS.glob("*.py") if not p.name.startswith(("bench", "_"))) == [
        "fault_runs.py",
        "probe_bad_inputs.py",
        "stage.py",
    ]


def test_job_names_a_stage(capsys):
    assert _stage_job().main(["normalise", "--smoke-test"]) == 2
    assert "is no stage" in capsys.readouterr().err
    assert _stage_job().main(["--help"]) == 0
    assert "usage: jobs/stage.py NAME" in capsys.readouterr().out


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("job", "output"),
    [
        ("generate plates", "plates"),
        ("ingest plates", "ingested"),
        ("export", "plates.parquet"),
        ("normalize", "plates_mad"),
        ("select", "plates_selected"),
    ],
)
def test_smoke_test(tmp_path, job, output):
    assert _job(job).main(["--smoke-test", "--out", str(tmp_path)]) == 0
    target = tmp_path / output
    assert target.exists()
    if target.is_dir():
        assert open_shard_set(str(target)).manifest.num_rows == 2 * 96


COVERED = {"generate plates", "ingest plates", "export", "normalize", "select"}  # above
COVERED |= {"train", "evaluate plates", "ingest images", "generate cells", "generate images"}
COVERED |= {"ingest cells", "preprocess cells", "task"}  # their own tests below


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("stage", [s for s in SMOKES if s not in COVERED])
def test_every_other_stage_runs_its_smoke_test(tmp_path, capsys, stage):
    """The stages not checked one by one: the job exits 0 and commits its output."""
    import shlex

    assert _job(stage).main(["--smoke-test", "--out", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("smoke test of"))
    argv = shlex.split(line.split(": raymmi ", 1)[1])
    out = Path(argv[argv.index("--out") + 1])
    assert out.exists(), line
    if (out / MANIFEST_NAME).exists():
        assert open_shard_set(str(out)).verify() == []


@pytest.mark.usefixtures("ray_session")
def test_job_passes_arguments_through(tmp_path, capsys):
    assert _job("export").main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_train_job_smoke_test(tmp_path):
    import json

    assert _job("train").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "sailerx" / "metrics.json").read_text())
    assert "ari" in metrics and "reference_ari" in metrics
    assert open_shard_set(str(tmp_path / "sailerx" / "embeddings")).manifest.num_rows == 400


@pytest.mark.usefixtures("ray_session")
def test_evaluate_job_smoke_test(tmp_path, capsys):
    """`jobs/stage.py evaluate plates --smoke-test`: raw vs standardized plates."""
    import pandas as pd

    assert _job("evaluate plates").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    report = tmp_path / "report"
    assert (report / "index.html").exists()
    summary = pd.read_csv(report / "summary.csv")
    assert list(summary["set"]) == ["plates", "plates_standardize"]
    assert "report:" in capsys.readouterr().out


@pytest.mark.usefixtures("ray_session")
def test_evaluate_cli_bad_input(tmp_path, capsys):
    from raymmi.cli import main

    out = tmp_path / "report"
    assert main(["evaluate", "plates", "--out", str(out)]) == 2
    assert "sources" in capsys.readouterr().err
    assert main(["evaluate", "plates", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("ray_session")
def test_ingest_images_job_smoke_test(tmp_path):
    assert _job("ingest images").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    manifest = open_shard_set(str(tmp_path / "cells")).manifest
    assert manifest.num_rows > 0 and "Nuclei_AreaShape_Area" in manifest.features


@pytest.mark.usefixtures("ray_session")
def test_evaluate_refuses_a_report_inside_its_input(tmp_path, capsys):
    from raymmi.cli import main
    from raymmi.config import TrackingConfig
    from raymmi.run import generate_plates
    from raymmi.smoke import SMOKE_PLATES
    from raymmi.testing import PlateSetSpec

    raw = tmp_path / "raw"
    generate_plates(
        PlateSetSpec(**SMOKE_PLATES), out=str(raw), tracking=TrackingConfig(enabled=False)
    )
    assert main(["evaluate", "plates", str(raw), "--out", str(raw / "report")]) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert not (raw / "report").exists()


@pytest.mark.usefixtures("ray_session")
def test_generate_cells_and_images_jobs_smoke_test(tmp_path):
    assert _job("generate cells").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    manifest = open_shard_set(str(tmp_path / "cells")).manifest
    assert manifest.num_rows == 300 and [m.name for m in manifest.modalities] == ["rna", "adt"]
    assert _job("generate images").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "fields" / "load_data.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_cell_stage_jobs_smoke_test(tmp_path):
    """ingest cells, preprocess cells and task on 400 generated cells (133 s, 2 cores, load 16)."""
    import json

    assert _job("ingest cells").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    assert open_shard_set(str(tmp_path / "ingested")).manifest.num_rows == 400
    assert _job("preprocess cells").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    pre = open_shard_set(str(tmp_path / "cells_pre")).manifest
    assert pre.num_rows == 400 and "rna_pca" in {m.name for m in pre.modalities}
    assert _job("task").main(["--smoke-test", "--out", str(tmp_path)]) == 0
    scores = json.loads((tmp_path / "predict" / "scores.json").read_text())
    assert scores["rmse"] > 0
