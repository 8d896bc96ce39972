"""`raymmi demo --small` runs the whole pipeline and says where everything is."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from raymmi.cli import main
from raymmi.io import open_shard_set
from raymmi.schema import MANIFEST_NAME


def _outputs(text: str) -> dict[str, str]:
    """The demo's closing table, ``  NAME   PATH`` per line after "Outputs:"."""
    block = text.split("Outputs:\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip().rsplit(" ", 1) for line in block.splitlines() if line.strip()]
    return {name.strip(): path for name, path in rows}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.heavy
def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--small", "--out", str(out), "--experiment", "demo-test"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    # a log a person reads: the step headers, tables and results, not Ray's internals
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) <= 250, len(lines)
    assert not [line for line in lines if "Traceback" in line]
    # Tune's configuration box and TensorBoard hint, Optuna's study notice: nothing to act on
    for notice in ("Configuration for experiment", "tensorboard --logdir", "A new study created"):
        assert notice not in captured.out + captured.err, notice
    assert "mlflow ui --backend-store-uri" in text and str(out) in text
    # the UI command runs as printed (the interpreter's own mlflow, venv activated or not)
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    assert mlflow_cli.exists() and f"{mlflow_cli} ui --backend-store-uri" in text
    assert "Try next:" in text and "raymmi evaluate plates" in text
    # every output the summary lists is there; every shard set among them is committed and
    # verifies (its files as its manifest lists them), with rows in it
    listed = _outputs(text)
    assert {"generated plates", "generated plates mad_robustize"} <= set(listed)
    assert any(name.endswith(" export") for name in listed)
    for name, path in listed.items():
        assert Path(path).exists(), (name, path)
        if (Path(path) / MANIFEST_NAME).exists():
            shard_set = open_shard_set(path)
            assert shard_set.verify() == [] and shard_set.manifest.num_rows > 0, name
    for name in ["plates_generated", "cells_multiome_generated_preprocessed"]:
        assert open_shard_set(str(out / name)).manifest.num_rows > 0
    # each model trained wrote its weights and scores; the search wrote its table and best config
    for name, path in listed.items():
        if name.endswith(" export"):
            continue
        if name.startswith("train "):
            assert (Path(path) / "model.pt").exists() and (Path(path) / "metrics.json").exists()
        if name.startswith("tune "):
            assert (Path(path) / "results.csv").exists() and (Path(path) / "best.yaml").exists()
        if name.startswith("task "):
            assert (Path(path) / "scores.json").exists(), name
    assert any(n.startswith("train ") for n in listed) and any(n.startswith("tune ") for n in listed)
    assert any(n.startswith("task ") for n in listed)
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
