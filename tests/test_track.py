"""Every command is one MLflow run with config, metrics and shard-set lineage."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from raymmi.cli import main
from raymmi.config import TrackingConfig
from raymmi.io import open_shard_set
from raymmi.track import tracked_run, tracking_uri

pytestmark = pytest.mark.usefixtures("ray_session")


def test_default_uri_is_sqlite_in_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_uri(TrackingConfig(uri="http://127.0.0.1:5000")) == "http://127.0.0.1:5000"


def test_disabled_tracking_is_a_no_op():
    with tracked_run("x", config={"a": 1}, tracking=TrackingConfig(enabled=False)) as run:
        run.log_metrics({"m": 1.0})
        assert run.run_id is None


def test_ingest_then_export_are_linked_runs(tmp_path):
    frame = pd.DataFrame(
        {"Metadata_Plate": ["P1", "P2"], "Metadata_Well": ["A01", "A01"], "f": [1.0, 2.0]}
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "set"
    experiment = "track-test"
    common = ["--experiment", experiment, "--num-cpus", "2"]
    assert main(["ingest", "plates", str(tmp_path / "t.csv"), "--out", str(out), *common]) == 0
    assert main(["export", str(out), "--out", str(tmp_path / "t.parquet"), *common]) == 0

    manifest = open_shard_set(str(out)).manifest
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = {
        r.data.tags["raymmi.command"]: r
        for r in client.search_runs([exp.experiment_id], order_by=["start_time ASC"])
    }
    ingest, export = runs["ingest plates"], runs["export"]
    assert ingest.info.run_id == manifest.producer["mlflow_run_id"]
    assert ingest.info.status == "FINISHED"
    assert ingest.data.params["out"] == str(out)
    assert ingest.data.params["on_nan"] == "fail"
    assert ingest.data.metrics["rows"] == 2 and ingest.data.metrics["plates"] == 2
    out_inputs = [d for d in ingest.inputs.dataset_inputs if d.tags[0].value == "output"]
    in_inputs = [d for d in export.inputs.dataset_inputs if d.tags[0].value == "input"]
    assert out_inputs and in_inputs
    assert out_inputs[0].dataset.digest == in_inputs[0].dataset.digest  # same shard-set version
    artifacts = {a.path for a in client.list_artifacts(ingest.info.run_id)}
    assert {"config.yaml", "lineage"} <= artifacts


def test_failed_command_leaves_a_failed_run(tmp_path):
    pd.DataFrame({"Metadata_Plate": ["P1"], "f": [float("nan")]}).to_csv(tmp_path / "t.csv")
    experiment = "track-fail"
    argv = ["ingest", "plates", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--experiment", experiment, "--num-cpus", "2"]) == 2
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"


def test_normalize_run_has_its_fallback_report(tmp_path):
    from raymmi import testing
    from raymmi.run import generate_plates

    spec = testing.PlateSetSpec(n_plates=2, n_features=12, wells_per_plate=96, n_batches=2)
    generate_plates(spec, out=str(tmp_path / "p"), tracking=TrackingConfig(enabled=False))
    argv = ["normalize", str(tmp_path / "p"), "--out", str(tmp_path / "n")]
    assert main([*argv, "--experiment", "track-normalize", "--num-cpus", "2"]) == 0
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("track-normalize")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert "fallback_report.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.metrics["fallback_unnormalized"] == len(testing.planted_zero_spread(spec))


def test_experiment_opens_on_the_runs_table(tmp_path):
    """MLflow 3 opens an experiment of kind custom_model_development on its runs, not Traces."""
    uri = f"sqlite:///{tmp_path / 'kind.db'}"
    client = mlflow.MlflowClient(uri)
    old = client.create_experiment("older")  # made before raymmi set the tag
    for name in ("fresh", "older"):
        with tracked_run("x", config={}, tracking=TrackingConfig(uri=uri, experiment=name)):
            pass
        tags = client.get_experiment_by_name(name).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development", name
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_run_names_say_what_the_run_did():
    from raymmi.track import run_label

    config = {"source": "/x/jump_plates/", "out": "/x/n", "method": "standardize"}
    assert run_label("normalize", {**config, "reference": "negcon"}) == (
        "normalize jump_plates standardize/negcon"
    )
    assert run_label("export", {"source": "/x/cells_pre", "out": "/x/c.h5ad"}) == (
        "export cells_pre"
    )
    assert run_label("evaluate plates", {"sources": ["/a/raw", "/a/norm"], "out": "r"}) == (
        "evaluate plates raw +1"
    )
    assert run_label("generate plates", {"out": "/d/plates_generated", "seed": 0}) == (
        "generate plates plates_generated"
    )


def test_runs_page_opens_the_runs_table(tmp_path):
    from raymmi.track import runs_page

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'p.db'}", experiment="e")
    with tracked_run("x", config={}, tracking=tracking):
        pass
    url = runs_page(tracking)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/")
    assert url.endswith("/runs?workflowType=machine_learning")
