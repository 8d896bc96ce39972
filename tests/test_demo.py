"""`raymmi demo --small` runs the whole pipeline and says where everything is."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from raymmi.cli import main
from raymmi.io import open_shard_set


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--small", "--out", str(out), "--experiment", "demo-test"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    # a log a person reads: the step headers, tables and results, not Ray's internals
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) <= 250, len(lines)
    assert not [line for line in lines if "Traceback" in line]
    assert "mlflow ui --backend-store-uri" in text and str(out) in text
    # the UI command runs as printed (the interpreter's own mlflow, venv activated or not)
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    assert mlflow_cli.exists() and f"{mlflow_cli} ui --backend-store-uri" in text
    assert "Try next:" in text and "raymmi evaluate plates" in text
    for name in ["plates_generated", "cells_multiome_generated_preprocessed"]:
        assert open_shard_set(str(out / name)).manifest.num_rows > 0
    assert (out / "exports" / "plates_generated.parquet").exists()
    # the plate half ends with its batch-effect report: raw vs the two normalizations
    report = out / "plates_generated_report"
    assert (report / "index.html").exists()
    assert set(pd.read_csv(report / "summary.csv")["set"]) == {
        "plates_generated",
        "plates_generated_standardize",
        "plates_generated_mad_robustize",
    }
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("demo-test")
    runs = client.search_runs([exp.experiment_id])
    # every run finished, search trials that ASHA stopped early included (tagged as such)
    unfinished = [r.info.run_name for r in runs if r.info.status != "FINISHED"]
    assert len(runs) >= 4 and not unfinished, unfinished
    assert any(r.info.run_name.startswith("train sailerx") for r in runs)
    assert any(r.info.run_name.startswith("task-predict") for r in runs)
    assert any(r.info.run_name.startswith("evaluate") for r in runs)
