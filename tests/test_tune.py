"""raymmi tune: real Ray Tune searches of Ray Train runs on small generated multiome data."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from raymmi import testing
from raymmi.config import OptimConfig, TrackingConfig, TrainConfig, from_dict, load_yaml
from raymmi.schema import RaymmiError
from raymmi.tune_space import TuneConfig

# Small models and few epochs: every trial is a real Ray Train run, two at a time on 2 CPUs.
SAILERX = {
    "z_dim": 8,
    "hidden": [64, 32],
    "chromosome_split": False,
    "warmup_epochs": 1,
    "kl_cycle": 0,
}
AE = {"modalities": ["rna_hvg", "atac_lsi"], "hidden": [32], "bottleneck": 8}


@pytest.fixture(scope="module")
def multiome(ray_session, tmp_path_factory) -> str:
    """600 preprocessed multiome cells (rna, rna_hvg, rna_pca, atac, atac_lsi), 4 cell types."""
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.run import generate_cells, preprocess_cells

    root = tmp_path_factory.mktemp("tune")
    spec = testing.CellSetSpec(
        n_cells=600, n_genes=300, n_peaks=600, n_cell_types=4, chunk_size=300, seed=3
    )
    off = TrackingConfig(enabled=False)
    generate_cells(spec, out=str(root / "raw"), tracking=off)
    config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 10}}})
    preprocess_cells(config, source=str(root / "raw"), out=str(root / "pre"), tracking=off)
    return str(root / "pre")


def _space(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _driver_process(args: list[str]) -> subprocess.Popen:
    """``raymmi ARGS`` in its own process group, on this session's Ray, output discarded."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.Popen(
        [sys.executable, "-m", "raymmi.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _children(parent_run_id: str) -> pd.DataFrame:
    import mlflow

    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
    )


@pytest.mark.slow
def test_asha_optuna_search_over_gamma_and_lambda(multiome, tmp_path):
    import mlflow

    from raymmi.run import tune

    out = tmp_path / "search"
    settings = TuneConfig(
        space=_space(
            tmp_path,
            {"model": {"gamma": {"loguniform": [10, 1e5]}, "lam": {"loguniform": [0.01, 100]}}},
        ),
        out=str(out),
        metric="val_loss",
        mode="min",
        trials=8,
        search="optuna",
        scheduler="asha",
        max_concurrent=8,  # more than 2 CPUs can place: capped, not a deadlock
        reduction_factor=2,
        name="gamma-lambda",
    )
    base = TrainConfig(
        model_name="sailerx",
        data=multiome,
        out=str(out),
        model=SAILERX,
        optim=OptimConfig(epochs=4, batch_size=64, lr=1e-3),
        label_key="cell_type",
        impute=False,
    )
    started = time.perf_counter()
    outcome = tune(settings, base)
    print(f"8-trial ASHA + Optuna search: {time.perf_counter() - started:.0f} s")
    assert any("capping at 2" in note for note in outcome.notes)
    # SAILERX trains on every cell by default: a val_* metric holds out 10%, and says so
    assert any("needs held-out cells" in note for note in outcome.notes), outcome.notes

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 8
    assert (trials["status"] == "stopped").sum() >= 1  # ASHA stopped at least one early
    assert (trials["status"] == "error").sum() == 0
    stopped = trials[trials["status"] == "stopped"]
    # in-process trials report asynchronously: a trial may train an epoch or two more before
    # ASHA's stop reaches it (it then ends without trial.json), so not every stopped one is < 4
    assert (stopped["epochs"] < 4).any()
    assert (trials.loc[trials["status"] == "completed", "epochs"] == 4).all()

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and list(results["rank"]) == list(range(1, 9))
    best = results.iloc[0]
    assert best["all_completed"]
    completed = results[results["all_completed"]]
    assert best["val_loss_mean"] == completed["val_loss_mean"].min()

    # best.yaml is a training config: `raymmi train sailerx --config best.yaml` loads it
    tree = load_yaml(out / "best.yaml")
    config = from_dict(TrainConfig, {**tree, "out": str(tmp_path / "retrain")})
    assert config.model["gamma"] == pytest.approx(best["model.gamma"])
    assert config.model["lam"] == pytest.approx(best["model.lam"])
    assert config.model["z_dim"] == 8 and config.impute is False
    assert config.val_fraction == pytest.approx(0.1)  # retrains on the search's split

    # MLflow: the parent and one nested run per trial, with per-epoch metrics
    parent = mlflow.get_run(outcome.parent_run_id)
    assert parent.info.run_name == "gamma-lambda"  # the search's --name
    children = _children(outcome.parent_run_id)
    assert len(children) == 8  # 9 runs: 1 parent + 8 nested
    assert set(children["tags.raymmi.trial_id"]) == set(trials["trial_id"])
    history = mlflow.MlflowClient().get_metric_history(children.iloc[0]["run_id"], "val_loss")
    assert len(history) >= 1
    # ASHA's stops end FINISHED (KILLED reads as a crash), tagged with the epoch they stopped at
    assert (children["status"] == "FINISHED").all()
    early = children[children["tags.raymmi.stopped_early"] == "true"]
    assert set(early["tags.raymmi.trial_id"]) == set(stopped["trial_id"])
    assert early["tags.raymmi.stopped_at_epoch"].astype(int).ge(1).all()
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "tune")}
    assert {
        "tune/results.csv",
        "tune/trials.csv",
        "tune/best.yaml",
        "tune/heatmap.png",
        "tune/parallel_coordinates.png",
    } <= artifacts
    assert parent.data.metrics["trials_stopped_early"] >= 1

    # the same --out again: finished, so it refuses instead of searching again
    with pytest.raises(RaymmiError, match="holds a finished search"):
        tune(settings, base)


def _cli_args(multiome: str, out: Path, space: str, *extra: str) -> list[str]:
    return [
        "tune",
        "ae",
        "--data",
        multiome,
        "--out",
        str(out),
        "--space",
        space,
        "--metric",
        "val_loss",
        "--mode",
        "min",
        "--search",
        "grid",
        "--scheduler",
        "none",
        "--max-concurrent",
        "2",
        "--epochs",
        "2",
        "--set",
        f"model={json.dumps(AE)}",
        "--set",
        "impute=false",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.heavy
def test_killed_search_resumes_without_rerunning_finished_trials(multiome, tmp_path):

    from raymmi.cli import main

    space = _space(
        tmp_path, {"model.alpha": {"grid": [1e-4, 1e-3]}, "optim.lr": {"grid": [1e-3, 3e-3]}}
    )
    out = tmp_path / "killed"
    args = _cli_args(multiome, out, space)
    # the search's driver in its own process on this session's Ray, killed once two trials
    # have finished training
    driver = _driver_process(args)
    deadline = time.monotonic() + 240
    try:
        while len(list(out.glob("trials/*/trial.json"))) < 2:
            assert driver.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no two trials finished in time"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trials/*/trial.json")}
    assert not (out / "best.yaml").exists()
    time.sleep(3)  # Ray notices the dead driver and frees its trials' resources

    # rerunning without --resume refuses, and names the fix
    assert main(args) == 2
    assert main([*args, "--resume"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    for trial_id, mtime in finished.items():
        # not trained again: its saved result is untouched, and it has one MLflow run
        assert (out / "trials" / trial_id / "trial.json").stat().st_mtime_ns == mtime
    saved = json.loads((out / "search.json").read_text())
    children = _children(saved["parent_run_id"])
    per_trial = children.groupby("tags.raymmi.trial_id").size()
    assert all(per_trial[t] == 1 for t in finished)
    assert set(trials["trial_id"]) <= set(per_trial.index)
    assert (out / "best.yaml").exists()
    assert len(pd.read_csv(out / "results.csv")) == 4


@pytest.mark.slow
def test_seeds_give_mean_and_sd_per_configuration(multiome, tmp_path, capsys):
    from raymmi.cli import main

    space = _space(tmp_path, {"model.alpha": {"grid": [1e-4, 1e-2]}})
    out = tmp_path / "seeds"
    args = _cli_args(multiome, out, space, "--seeds", "2", "--set", "optim.seed=5")
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "searched 2 configurations in 4 trials" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["seed"]) == [5, 5, 6, 6]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2
    assert {"val_loss_mean", "val_loss_sd", "val_loss", "seeds"} <= set(results.columns)
    assert (results["seeds"] == 2).all()
    # unnamed, the parent run says what was searched
    import mlflow

    parent = mlflow.get_run(json.loads((out / "search.json").read_text())["parent_run_id"])
    assert parent.info.run_name.startswith("tune pre ae val_loss ("), parent.info.run_name
    for _, row in results.iterrows():
        values = trials.loc[trials["config_id"] == row["config_id"], "val_loss"]
        assert row["val_loss_mean"] == pytest.approx(values.mean())
        assert row["val_loss_sd"] == pytest.approx(values.std(ddof=1))
        assert "±" in row["val_loss"]
    assert results["val_loss_mean"].is_monotonic_increasing  # ranked by the mean (min)
    assert load_yaml(out / "best.yaml")["optim"]["seed"] == 5


def test_bad_input_is_refused_before_any_trial(multiome, tmp_path, capsys):
    from raymmi.cli import main

    def run(space: dict, *extra: str) -> str:
        out = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        code = main(
            [
                "tune",
                "sailerx",
                "--data",
                multiome,
                "--out",
                str(out),
                "--space",
                _space(tmp_path, space),
                "--trials",
                "2",
                *extra,
            ]
        )
        assert code == 2
        assert not out.exists()  # nothing written, no trial started
        return capsys.readouterr().err

    ok = {"model.gamma": {"loguniform": [10, 1e5]}}
    metric = ["--metric", "val_loss", "--mode", "min"]
    assert "did you mean model.gamma" in run({"model.gama": {"loguniform": [10, 1e5]}}, *metric)
    assert "empty range: low 100 >= high 10" in run(
        {"model.lam": {"loguniform": [100, 10]}}, *metric
    )
    assert "empty range: choice lists no value" in run({"model.z_dim": {"choice": []}}, *metric)
    err = run(ok, "--metric", "val_los", "--mode", "min")
    assert "is not reported by 'sailerx'" in err and "did you mean val_loss" in err
    assert "val_gamma_L_Local" in err  # the model's own loss terms are listed
    assert "needs labels: give --label-key" in run(ok, "--metric", "val_ari", "--mode", "max")
    # resources and packs: refused with what the cluster has, before any trial
    err = run(ok, *metric, "--gpus-per-trial", "0.25")
    assert "asks for GPUs, but the cluster has none" in err and "2 CPUs and 0 GPUs" in err
    assert "more than any node has (the largest has 2)" in run(
        ok, *metric, "--cpus-per-trial", "64"
    )
    assert "cannot run with --workers > 1" in run(ok, *metric, "--pack", "4", "--workers", "2")
    assert "scored once after training" in run(
        ok, "--metric", "ari", "--mode", "max", "--label-key", "cell_type"
    )
    label = ["--mode", "max", "--label-key", "cell_type"]
    err = run(ok, "--metric", "all_ari", *label, "--workers", "2")
    assert "scores every cell in one-worker (in-process) trials" in err and "val_ari" in err
    err = run(ok, "--metric", "all_ari", *label, "--trial-embeddings")
    assert "scores every cell in in-process trials" in err and "--trial-embeddings" in err


@pytest.mark.slow
def test_in_process_trial_trains_what_raymmi_train_trains(multiome, tmp_path):
    """One loop: a one-worker `raymmi train` run and an in-process trial give the same model.

    Without a shuffle buffer both read the cells in file order, so the same config and seed
    give the same batches; ~50 s (the Train run's start-up), the trial ~2 s.
    """
    import dataclasses

    import torch

    from raymmi.run import train
    from raymmi.run._train._driver import plan_training
    from raymmi.run._tune._inprocess import train_in_process, trial_data, trial_plan

    config = TrainConfig(
        model_name="sailerx",
        data=multiome,
        out=str(tmp_path / "train"),
        model=SAILERX,
        optim=OptimConfig(epochs=2, batch_size=64, lr=1e-3, shuffle_buffer=0, seed=7),
        label_key="cell_type",
        val_fraction=0.1,  # SAILERX holds out nothing by default
        impute=False,
        embed=False,
        cpus_per_worker=1.0,
    )
    metrics = train(config, tracking=TrackingConfig(enabled=False))
    weights = torch.load(tmp_path / "train" / "model.pt", weights_only=True)

    plan, shard, extra = plan_training(config)
    data = trial_data(plan, shard, extra)
    trial = dataclasses.replace(trial_plan(plan, config), threads=1)
    run = train_in_process(trial, data, tmp_path / "trial", config={})
    assert set(run.state_dict) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(run.state_dict[key], value, rtol=1e-6, atol=1e-7)
    for key in ("train_loss", "train_gamma_L_Local", "val_loss", "val_ari", "val_nmi"):
        assert run.metrics[key] == pytest.approx(metrics[key], rel=1e-6), key
    assert len(run.history) == 2
    # a folder holding the trial's last checkpoint resumes from it: nothing left to train
    again = train_in_process(trial, data, tmp_path / "trial", config={})
    assert again.start_epoch == 2
    for key, value in weights.items():
        torch.testing.assert_close(again.state_dict[key], value, rtol=1e-6, atol=1e-7)


UMINT = {"modalities": ["rna_hvg", "atac_lsi"], "widths": [16, 8], "bottleneck": 8}


def test_a_packed_member_trains_as_it_would_alone_and_a_diverging_one_fails(multiome, tmp_path):
    """Three UMINT configurations (loss weights, lr) packed == each trained alone (~10 s)."""
    import dataclasses

    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from raymmi import models
    from raymmi.run._train._driver import plan_training
    from raymmi.run._tune._inprocess import train_in_process, trial_data, trial_plan
    from raymmi.run._tune._pack import Member, Rungs, train_pack

    def config(lam: float, alpha: float, lr: float) -> TrainConfig:
        return TrainConfig(
            model_name="umint",
            data=multiome,
            out=str(tmp_path / "unused"),
            model={**UMINT, "lambdas": [1.0, lam], "alpha": alpha},
            optim=OptimConfig(
                epochs=3, lr=lr, batch_size=32, seed=3, drop_last=True, lr_decay=0.9
            ),
            label_key="cell_type",
            impute=False,
            score_all=True,
        )

    configs = [config(1.0, 1e-4, 1e-3), config(5.0, 1e-2, 3e-3), config(0.1, 0.0, 1e6)]
    plan, shard, extra = plan_training(configs[0])
    data = trial_data(plan, shard, extra)
    plans = [dataclasses.replace(trial_plan(plan, c), threads=1) for c in configs]
    members = [Member({"optim.lr": c.optim.lr}, 3, str(i)) for i, c in enumerate(configs)]
    members, pack = train_pack(plans, members, data)
    assert [m.status for m in members] == ["completed", "completed", "error"]
    assert "not finite" in members[2].error and '"optim.lr": 1000000.0' in members[2].error
    assert len(pack) == 2  # the diverged member left the stacked model
    for i in (0, 1):
        alone = train_in_process(plans[i], data, tmp_path / f"alone{i}", config={})
        for key, value in alone.state_dict.items():
            torch.testing.assert_close(pack.state_dict(i)[key], value, rtol=1e-4, atol=1e-5)
        for key in ("train_loss", "val_loss", "val_ari", "all_ari", "all_nmi"):
            assert members[i].history[-1][key] == pytest.approx(alone.metrics[key], rel=1e-4)
        assert len(members[i].history) == 3
    # all_ari: k-means of every cell's embedding by the trained model, as raymmi train scores
    model = models.model_class("umint")(plans[0].model_config, plans[0].layout.dims)
    model.load_state_dict(pack.state_dict(0))
    model.eval()
    with torch.no_grad():
        z = model.embed({k: torch.from_numpy(v) for k, v in data.arrays.items()}).numpy()
    codes = data.arrays["cell_type"]
    assert len(codes) == 600 and len(set(codes.tolist())) == 4
    clusters = KMeans(n_clusters=4, n_init=10, random_state=0).fit_predict(z.astype(np.float64))
    want = adjusted_rand_score(codes.astype(str), clusters)
    assert members[0].history[-1]["all_ari"] == pytest.approx(want, abs=1e-6)
    # ASHA's rung rule inside a pack: of 2 members at rung 1, the better one goes on
    rungs = Rungs(grace=1, eta=2, max_t=3, metric="val_loss", mode="min")
    assert rungs.at() == {1, 2} and rungs.survivors([3.0, 1.0]) == [1]
    assert rungs.survivors([3.0, 1.0, math.nan, 2.0]) == [1, 3]  # NaN never goes on
    members = [Member({}, 3, str(i)) for i in range(2)]
    members, _ = train_pack(plans[:2], members, data, rungs=rungs)
    assert sorted(m.status for m in members) == ["completed", "stopped"]
    assert sorted(len(m.history) for m in members) == [1, 3]


def test_asha_rungs_shared_by_packs_stop_a_whole_weak_pack(tmp_path):
    """The rung record across packs: ASHA's cutoff over every pack's values at the rung."""
    from raymmi.run._tune._pack import Rungs

    rungs = Rungs(grace=1, eta=2, max_t=4, metric="val_loss", mode="min", record=str(tmp_path))
    assert rungs.recorded_survivors(1, [3.0, 1.0]) == [1]  # the first pack: its own median
    assert rungs.recorded_survivors(1, [2.5, 0.5]) == [1]  # median of 4 values: 1.75
    assert rungs.recorded_survivors(1, [5.0, math.nan]) == []  # a weak pack stops whole
    assert rungs.recorded_survivors(2, [9.0]) == [0]  # each rung has its own record
    assert rungs.recorded_survivors(3, [1.0, 2.0], ["a:0", "b:0"]) == [0]
    assert rungs.recorded_survivors(3, [1.0, 2.0], ["a:0", "b:0"]) == [0]  # a rerun replaces
    assert json.loads((tmp_path / "rung_3.json").read_text()) == {"a:0": 1.0, "b:0": 2.0}
    record = str(tmp_path / "m")
    again = Rungs(grace=1, eta=2, max_t=4, metric="val_ari", mode="max", record=record)
    assert again.recorded_survivors(1, [0.2, 0.4, 0.6]) == [1, 2]  # at or past the cutoff
    assert (tmp_path / "rung_1.json").exists()  # a --resume reads the same record


@pytest.mark.slow
def test_packed_search_gives_every_member_its_row_and_run(multiome, tmp_path, capsys):
    from raymmi.cli import main

    space = _space(
        tmp_path,
        {
            "model.widths": {"grid": [[16, 8], [8, 4]]},
            "model.alpha": {"grid": [1e-4, 1e-2]},
            "optim.lr": {"grid": [1e-3, 3e-3]},
        },
    )
    out = tmp_path / "packed"
    args = [
        "tune", "umint", "--data", multiome, "--out", str(out), "--space", space,
        "--metric", "val_ari", "--mode", "max", "--label-key", "cell_type",
        "--search", "grid", "--scheduler", "asha", "--reduction-factor", "2",
        "--epochs", "3", "--seeds", "2", "--pack", "4",
        "--set", f"model={json.dumps(UMINT)}", "--set", "impute=false",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    # 8 configurations x 2 seeds, 2 architectures x 2 seeds = 4 groups of 4: 4 packs
    assert "16 trials in 4 pack(s)" in printed and "each packed separately" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 16 and trials["pack"].nunique() == 4
    assert (trials["status"] == "stopped").sum() >= 1 and (trials["status"] == "error").sum() == 0
    for _, group in trials.groupby("pack"):  # one architecture and one seed per pack
        assert group["model.widths"].nunique() == 1 and group["seed"].nunique() == 1
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and (results["seeds"] == 2).all()
    saved = json.loads((out / "search.json").read_text())
    children = _children(saved["parent_run_id"])
    assert set(children["tags.raymmi.trial_id"]) == set(trials["trial_id"])
    import mlflow

    done = trials.loc[trials["status"] == "completed", "trial_id"].iloc[0]
    run_id = children.loc[children["tags.raymmi.trial_id"] == done, "run_id"].iloc[0]
    assert len(mlflow.MlflowClient().get_metric_history(run_id, "val_ari")) == 3
    tree = load_yaml(out / "best.yaml")
    assert from_dict(TrainConfig, {**tree, "out": str(tmp_path / "retrain")}).model_name == "umint"


@pytest.mark.slow
def test_optuna_packed_search_asks_k_configurations_of_one_architecture(
    multiome, tmp_path, capsys
):
    """--search optuna --pack 3: 6 configurations x 2 seeds asked in 2 packs (~25 s)."""
    from raymmi.cli import main

    space = _space(
        tmp_path,
        {
            "model.widths": {"choice": [[16, 8], [8, 4]]},
            "model.alpha": {"loguniform": [1e-5, 1e-2]},
            "optim.lr": {"loguniform": [1e-3, 1e-2]},
        },
    )
    out = tmp_path / "optuna-packed"
    args = [
        "tune", "umint", "--data", multiome, "--out", str(out), "--space", space,
        "--metric", "all_ari", "--mode", "max", "--label-key", "cell_type",
        "--search", "optuna", "--scheduler", "asha", "--reduction-factor", "2",
        "--trials", "6", "--epochs", "3", "--seeds", "2", "--pack", "3",
        "--set", f"model={json.dumps(UMINT)}", "--set", "impute=false",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "6 configurations x 2 seed(s) asked from one Optuna study in 2 pack(s)" in printed
    assert "model.widths change(s) the architecture" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 12 and trials["pack"].nunique() == 2
    assert (trials["status"] == "stopped").sum() >= 1 and (trials["status"] == "error").sum() == 0
    for _, group in trials.groupby("pack"):  # one architecture per pack, its seeds apart
        assert group["model.widths"].nunique() == 1 and group["config_id"].nunique() == 3
        assert sorted(group["seed"].value_counts()) == [3, 3]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and (results["seeds"] == 2).all()
    assert results["all_ari_mean"].between(-1, 1).all()  # every cell scored, by every member
    assert results["model.alpha"].nunique() == 6  # TPE's own values beside the shared width
    saved = json.loads((out / "search.json").read_text())
    children = _children(saved["parent_run_id"])
    assert set(children["tags.raymmi.trial_id"]) == set(trials["trial_id"])
    tree = load_yaml(out / "best.yaml")
    assert from_dict(TrainConfig, {**tree, "out": str(tmp_path / "retrain")}).model_name == "umint"
    # every configuration was told its result: the study holds 6 finished Optuna trials
    [state] = (out / "tune").glob("*/searcher-state-*.pkl")
    import pickle

    study = pickle.loads(state.read_bytes())["study"]
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 6
    # run again with --resume: the finished search trains nothing
    assert main([*args, "--resume"]) == 0
    assert "had already finished" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_packed_search_is_not_taken_for_finished(multiome, tmp_path):
    """Ctrl-C after the first of 4 packs: exit non-zero, no best.yaml; --resume asks the rest."""
    import pickle

    from raymmi.cli import main

    space = _space(
        tmp_path,
        {"model.alpha": {"loguniform": [1e-5, 1e-2]}, "optim.lr": {"loguniform": [1e-3, 1e-2]}},
    )
    out = tmp_path / "interrupted"
    args = [
        "tune", "umint", "--data", multiome, "--out", str(out), "--space", space,
        "--metric", "val_ari", "--mode", "max", "--label-key", "cell_type",
        "--search", "optuna", "--scheduler", "none", "--max-concurrent", "1",
        "--trials", "8", "--epochs", "2", "--pack", "2", "--no-track",
        "--set", f"model={json.dumps(UMINT)}", "--set", "impute=false",
    ]  # fmt: skip
    driver = _driver_process(args)
    deadline = time.monotonic() + 240
    try:
        while not list(out.glob("trials/*/pack.json")):
            assert driver.poll() is None, "the search ended before it could be interrupted"
            assert time.monotonic() < deadline, "no pack finished in time"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends: Tune stops and saves its state
        code = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    packs_done = len(list(out.glob("trials/*/pack.json")))
    assert code != 0 and packs_done < 4, "the interrupt came too late to test anything"
    assert not (out / "best.yaml").exists() and not (out / "results.csv").exists()
    time.sleep(3)  # Ray frees the interrupted driver's trial resources
    assert main([*args, "--resume"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 8 and trials["config_id"].nunique() == 8
    assert (trials["status"] == "completed").all()
    # the restored study went on from where it stopped: 8 configurations asked, each told once
    # one state file per run of the driver, named by its start time: the resumed run's is last
    state = sorted((out / "tune").glob("*/searcher-state-*.pkl"))[-1]
    study = pickle.loads(state.read_bytes())["study"]
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 8
