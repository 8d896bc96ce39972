"""raymmi tune: search-space parsing, validation, resources and result tables (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from raymmi import models
from raymmi.config import TrainConfig, from_dict, to_dict
from raymmi.run._tune._driver import (
    ResourcePlan,
    best_tree,
    check_metric,
    config_table,
    heatmap_axes,
    plan_resources,
    trial_params,
)
from raymmi.schema import RaymmiError
from raymmi.tune_space import TuneConfig, apply_params, load_space, parse_space, split_index


def _base(model: str = "sailerx") -> dict:
    return to_dict(TrainConfig(model_name=model, data="/data", out="/out"))


def _parse(data: dict, model: str = "sailerx"):
    return parse_space(data, models.model_class(model).Config, base=_base(model))


def test_ready_made_spaces_parse(tmp_path):
    for model in ("sailerx", "umint"):
        space = load_space(
            f"jobs/configs/tune_{model}.yaml", models.model_class(model).Config, base=_base(model)
        )
        assert len(space.dims) >= 4
    sailerx = load_space(
        "jobs/configs/tune_sailerx.yaml", models.model_class("sailerx").Config, base=_base()
    )
    assert sailerx.dim("model.gamma").log and sailerx.dim("model.gamma").high == 1e5
    assert sailerx.dim("model.lam").low == 0.01
    assert sailerx.dim("model.z_dim").kind == "choice"
    umint = load_space(
        "jobs/configs/tune_umint.yaml", models.model_class("umint").Config, base=_base("umint")
    )
    assert {"model.lambdas.0", "model.lambdas.1", "model.alpha", "model.beta"} <= set(umint.keys)


def test_nested_dotted_and_typed_forms_mean_the_same():
    a = _parse({"model": {"gamma": {"loguniform": [10, 100]}}, "optim.lr": {"uniform": [0.1, 1]}})
    b = _parse(
        {
            "model.gamma": {"type": "loguniform", "low": 10, "high": 100},
            "optim": {"lr": {"type": "uniform", "low": 0.1, "high": 1}},
        }
    )
    assert a == b
    # YAML 1.1 reads 1e5 (no dot) as a string: accepted as a number
    c = _parse(yaml.safe_load("model.gamma: {loguniform: [10, 1e5]}"))
    assert c.dim("model.gamma").high == 1e5


def test_integer_settings_are_rounded_and_fixed_values_kept():
    space = _parse({"model.z_dim": {"loguniform": [4, 64]}, "model.recon_weight": 10.0})
    assert space.dim("model.z_dim").integer
    values = [c["model.z_dim"] for c in space.sample(20, 1)]
    assert all(isinstance(v, int) and 4 <= v <= 64 for v in values)
    assert space.fixed == {"model.recon_weight": 10.0}


def test_sampling_is_seeded_and_grid_is_exhaustive():
    space = _parse({"model.gamma": {"grid": [10, 100]}, "model.lam": {"choice": [0.1, 1, 10]}})
    assert space.grid_size() == 6
    grid = space.grid()
    assert len({(g["model.gamma"], g["model.lam"]) for g in grid}) == 6
    ranged = _parse({"model.gamma": {"loguniform": [10, 1e5]}})
    assert ranged.sample(5, 3) == ranged.sample(5, 3)
    gammas = np.array([c["model.gamma"] for c in ranged.sample(400, 0)])
    assert 10 <= gammas.min() and gammas.max() <= 1e5
    assert 0.3 < np.mean(gammas < 1000) < 0.7  # log-uniform: half below the log midpoint
    with pytest.raises(RaymmiError, match="--search grid needs grid or choice"):
        ranged.grid()


def test_unknown_key_names_close_matches():
    with pytest.raises(RaymmiError, match=r"'model.gama'.*did you mean model.gamma"):
        _parse({"model.gama": {"loguniform": [10, 100]}})
    with pytest.raises(RaymmiError, match=r"'gamma'.*did you mean.*model.gamma"):
        _parse({"gamma": {"loguniform": [10, 100]}})
    with pytest.raises(RaymmiError, match=r"'optim.lrr'.*did you mean optim.lr"):
        _parse({"optim.lrr": {"loguniform": [1e-4, 1e-2]}})
    # model.* keys are the model's own: ae has alpha, sailerx has not
    with pytest.raises(RaymmiError, match=r"'model\.alpha' is not a setting"):
        _parse({"model.alpha": {"loguniform": [1e-4, 1e-2]}})
    assert _parse({"model.alpha": {"loguniform": [1e-4, 1e-2]}}, "ae").keys == ("model.alpha",)
    with pytest.raises(RaymmiError, match="use --seeds"):
        _parse({"optim.seed": {"choice": [0, 1]}})
    with pytest.raises(RaymmiError, match="not a list setting"):
        _parse({"model.gamma.0": {"loguniform": [10, 100]}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"loguniform": [100, 10]}, "empty range: low 100 >= high 10"),
        ({"uniform": [5, 5]}, "empty range.*write the value itself"),
        ({"choice": []}, "empty range: choice lists no value"),
        ({"grid": []}, "empty range: grid lists no value"),
        ({"loguniform": [0, 10]}, "loguniform needs low > 0"),
        ({"loguniform": [10]}, r"takes \[low, high\]"),
        ({"choice": [1, 1]}, "lists 1 twice"),
        ({"normal": [0, 1]}, "unknown range 'normal'"),
        ({"uniform": ["a", 2]}, "not a number"),
    ],
)
def test_bad_ranges_are_refused(spec, message):
    with pytest.raises(RaymmiError, match=message):
        _parse({"model.gamma": spec})


def test_integer_range_without_integers_is_empty():
    with pytest.raises(RaymmiError, match="no integer between"):
        _parse({"model.z_dim": {"uniform": [4.2, 4.8]}})


def test_values_the_setting_refuses_fail_at_parse_time():
    with pytest.raises(RaymmiError, match=r"model.z_dim=0.*invalid.*positive integer"):
        _parse({"model.z_dim": {"choice": [8, 0]}})
    with pytest.raises(RaymmiError, match="empty"):
        _parse({})
    with pytest.raises(RaymmiError, match="no key has a range"):
        _parse({"model.gamma": 10.0})


def test_list_elements_assemble_into_the_list():
    space = _parse(
        {"model.lambdas.0": {"loguniform": [0.1, 10]}, "model.lambdas[1]": {"choice": [1, 2]}},
        "umint",
    )
    tree = apply_params(_base("umint"), {"model.lambdas.0": 0.5, "model.lambdas[1]": 2})
    assert tree["model"]["lambdas"] == [0.5, 2]
    config = from_dict(TrainConfig, tree)
    assert from_dict(models.UMINTConfig, dict(config.model)).lambdas == (0.5, 2.0)
    assert split_index("model.lambdas[1]") == ("model.lambdas", 1)
    with pytest.raises(RaymmiError, match="has 1 entries for 2 modalities"):
        _parse({"model.lambdas.0": {"loguniform": [0.1, 10]}}, "umint")
    with pytest.raises(RaymmiError, match=r"model.lambdas.0'\] are missing"):
        apply_params(_base("umint"), {"model.lambdas.1": 2.0})
    assert len(space.dims) == 2


def test_tune_settings_check_their_flags():
    with pytest.raises(RaymmiError, match="needs --trials"):
        TuneConfig(space="s", out="o", metric="val_loss", mode="min")
    TuneConfig(space="s", out="o", metric="val_loss", mode="min", search="grid")
    with pytest.raises(RaymmiError, match="--mode"):
        TuneConfig(space="s", out="o", metric="m", mode="up", trials=2)  # type: ignore[arg-type]
    with pytest.raises(RaymmiError, match="--seeds"):
        TuneConfig(space="s", out="o", metric="m", mode="max", trials=2, seeds=0)


def test_resources_keep_a_cpu_for_data_and_cap_concurrency():
    plan = plan_resources(2, workers=1, cpus_per_worker=None, max_concurrent=None, trials=8)
    assert plan == ResourcePlan(2, 0.4)
    assert 2 * plan.per_trial <= 1.0  # one CPU stays free for the Ray Data readers
    capped = plan_resources(2, workers=1, cpus_per_worker=None, max_concurrent=8, trials=8)
    assert capped.concurrent == 2
    assert "--max-concurrent 8 is more than the cluster can place" in capped.notes[0]
    assert "capping at 2" in capped.notes[0]
    assert plan_resources(2, workers=1, cpus_per_worker=None, max_concurrent=1, trials=8) == (
        ResourcePlan(1, 0.9)
    )
    big = plan_resources(16, workers=2, cpus_per_worker=None, max_concurrent=None, trials=100)
    assert big.cpus_per_worker == 1.0 and big.concurrent == 7
    few = plan_resources(16, workers=1, cpus_per_worker=None, max_concurrent=None, trials=3)
    assert few.concurrent == 3
    with pytest.raises(RaymmiError, match="one trial needs"):
        plan_resources(1, workers=1, cpus_per_worker=None, max_concurrent=None, trials=2)
    with pytest.raises(RaymmiError, match=r"one trial needs 2\.1 CPUs"):
        plan_resources(2, workers=2, cpus_per_worker=1.0, max_concurrent=None, trials=2)


def test_metric_check_names_the_fix():
    config = TrainConfig(model_name="ae", data="d", out="o")
    reported = {"train_loss": "", "val_loss": "", "val_MSE": ""}
    check_metric("val_loss", reported, config)
    with pytest.raises(RaymmiError, match="did you mean val_loss"):
        check_metric("val_los", reported, config)
    with pytest.raises(RaymmiError, match="needs labels: give --label-key"):
        check_metric("val_ari", reported, config)
    labelled = TrainConfig(model_name="ae", data="d", out="o", label_key="cell_type")
    with pytest.raises(RaymmiError, match="scored once after training: search on val_ari"):
        check_metric("ari", reported, labelled)


def _trials() -> pd.DataFrame:
    rows = []
    for cid, gamma, values, statuses in (
        ("a", 10.0, [0.50, 0.52], ["completed", "completed"]),
        ("b", 100.0, [0.70, 0.60], ["completed", "completed"]),
        ("c", 1000.0, [0.90, 0.10], ["stopped", "completed"]),
    ):
        for seed, (value, status) in enumerate(zip(values, statuses, strict=True)):
            rows.append(
                {
                    "trial_id": f"{cid}{seed}",
                    "config_id": cid,
                    "seed": seed,
                    "model.gamma": gamma,
                    "model.lam": 1.0,
                    "val_ari": value,
                    "epochs": 4 if status == "completed" else 1,
                    "status": status,
                }
            )
    return pd.DataFrame(rows)


def test_configurations_rank_by_mean_over_seeds_with_sd():
    space = _parse({"model.gamma": {"loguniform": [1, 1e4]}, "model.lam": {"choice": [1.0]}})
    table = config_table(_trials(), space, "val_ari", "max")
    assert list(table["config_id"]) == ["b", "a", "c"]  # c has a seed stopped early: last
    assert table.loc[0, "val_ari_mean"] == pytest.approx(0.65)
    assert table.loc[0, "val_ari_sd"] == pytest.approx(np.std([0.7, 0.6], ddof=1))
    assert table.loc[0, "val_ari"] == "0.65 ± 0.071"
    assert list(table["seeds"]) == [2, 2, 2]
    assert table.loc[2, "stopped_early"] == 1
    low = config_table(_trials(), space, "val_ari", "min")
    assert list(low["config_id"]) == ["a", "b", "c"]
    single = config_table(_trials().iloc[[0]], space, "val_ari", "max")
    assert math.isnan(single.loc[0, "val_ari_sd"])
    tree = best_tree(_base(), space, table.iloc[0].to_dict())
    assert tree["model"]["gamma"] == 100.0 and "out" not in tree
    assert from_dict(TrainConfig, {**tree, "out": "x"}).model["gamma"] == 100.0


def test_trial_params_from_either_search():
    keys = ("model.gamma", "model.hidden")
    optuna = {"model.gamma": 3.0, "model.hidden": "json:[64, 32]", "__trial_index__": 1}
    assert trial_params(optuna, keys) == ({"model.gamma": 3.0, "model.hidden": [64, 32]}, 1)
    basic = {"params": {"model.gamma": 3.0, "model.hidden": [64, 32]}, "seed_index": 2}
    assert trial_params(basic, keys) == ({"model.gamma": 3.0, "model.hidden": [64, 32]}, 2)


def test_heatmap_prefers_gamma_and_lambda():
    space = _parse(
        {
            "optim.lr": {"loguniform": [1e-4, 1e-2]},
            "model.gamma": {"loguniform": [10, 1e5]},
            "model.lam": {"loguniform": [0.01, 100]},
        }
    )
    assert heatmap_axes(space) == ("model.gamma", "model.lam")
    assert heatmap_axes(_parse({"model.gamma": {"loguniform": [10, 1e5]}})) is None


def test_plots_draw_from_a_results_table():
    from raymmi import plots

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "model.gamma": 10 ** rng.uniform(1, 5, 30),
            "model.lam": 10 ** rng.uniform(-2, 2, 30),
            "model.z_dim": rng.choice([16, 32], 30),
            "val_ari_mean": rng.uniform(0, 1, 30),
        }
    )
    fig = plots.metric_heatmap(
        frame, "model.gamma", "model.lam", "val_ari_mean", log_x=True, log_y=True
    )
    assert len(fig.axes) == 2  # heatmap + colorbar
    fig = plots.parallel_coordinates(
        frame,
        ["model.gamma", "model.lam", "model.z_dim"],
        "val_ari_mean",
        log=["model.gamma", "model.lam"],
        highlight=0,
    )
    assert len(fig.axes) == 2


def test_search_plots_are_legible(tmp_path):
    """Big enough to read, titles not clipped, stopped and empty cells marked, legend inside."""
    from raymmi import plots

    frame = pd.DataFrame(
        {
            "model.gamma": [10.0, 10.0, 100.0, 1000.0],
            "model.lam": [0.01, 1.0, 0.01, 1.0],
            "val_ari_mean": [0.9, 0.5, 0.7, 0.2],
            "completed": [1, 1, 0, 1],
            "stopped_early": [0, 0, 1, 0],
        }
    )
    fig = plots.metric_heatmap(frame, "model.gamma", "model.lam", "val_ari_mean", log_x=True)
    width, height = fig.get_size_inches() * 100
    assert width >= 600 and height >= 450  # at dpi 100 (was 300 x 240)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "no trial" in texts  # (gamma 100, lam 1) and (1000, 0.01) were not tried
    assert any("stopped" in t for t in texts)
    assert ax.get_title().startswith("val_ari (higher is better)")
    assert fig.axes[1].get_ylabel() == "mean val_ari"
    fig.savefig(tmp_path / "heatmap.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.get_window_extent(renderer)
    title = ax.title.get_window_extent(renderer)
    assert box.x0 <= title.x0 and title.x1 <= box.x1  # not clipped
    fig = plots.parallel_coordinates(
        frame, ["model.gamma", "model.lam"], "val_ari_mean", log=["model.gamma"], highlight=0
    )
    ax = fig.axes[0]
    assert not fig.legends and "(red: the best)" in ax.get_title()  # nothing outside the axes
    assert len([t for t in ax.texts]) >= 2 * 5  # 5 ticks per numeric axis, not min/max


def test_embedding_plot_is_umap_by_type_and_by_batch():
    from raymmi import plots

    rng = np.random.default_rng(0)
    labels = np.repeat([f"type{i}" for i in range(25)], 8)
    x = rng.normal(size=(200, 6)) + (np.arange(200) // 8)[:, None] * 0.5
    batch = np.tile(["s1d1", "s2d1"], 100)
    fig = plots.embedding_scatter({"model": x, "reference": x[:, :4]}, labels, batch=batch)
    axes = fig.axes
    assert len(axes) == 4
    assert [a.get_title() for a in axes] == [
        "model (6 dims), by label",
        "reference (4 dims), by label",
        "model (6 dims), by batch",
        "reference (4 dims), by batch",
    ]
    assert axes[0].get_xlabel() == "UMAP 1"
    assert {t.get_text() for t in axes[0].texts} == set(labels)  # 25 types: named on the plot
    assert axes[3].get_legend() is not None  # 2 batches: a legend
