"""The predict task: ``svd_krr``, ``mean`` and the trained ``mlp``."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raymmi import plots
from raymmi.config import from_dict, to_dict
from raymmi.metrics import rmse
from raymmi.run._task._config import PLOT_POINTS, Matrix
from raymmi.run._task._methods import _Result, _settings
from raymmi.run._task._planning import _Plan
from raymmi.run._task._reading import _Cells
from raymmi.run._task._trained import _apply, _Trained
from raymmi.schema import RaymmiError
from raymmi.tasks import SVD_KRR_PRESETS, SvdKrrConfig, predict_mean, predict_svd_krr


def _kind(name: str) -> str:
    """``rna_norm`` → ``rna``: the modality family that selects an SVD + KRR preset."""
    return name.split("_")[0]


def _svd_krr_config(plan: _Plan) -> tuple[SvdKrrConfig, str]:
    assert plan.source is not None and plan.target is not None
    key = (_kind(plan.source), _kind(plan.target))
    if key in SVD_KRR_PRESETS:
        base, note = SVD_KRR_PRESETS[key], f"svd_krr preset {key[0]}→{key[1]}"
    else:
        base, note = SvdKrrConfig(), f"no svd_krr preset for {key[0]}→{key[1]}: GEX→ADT's"
    settings = {f.name: getattr(base, f.name) for f in dataclasses.fields(SvdKrrConfig)}
    settings["seed"] = plan.config.seed
    settings.update(_settings("svd_krr", plan.config.model))
    try:
        return from_dict(SvdKrrConfig, settings, where="model"), note
    except ValueError as err:
        raise RaymmiError(str(err)) from err


def _dense(m: Matrix) -> np.ndarray:
    if sp.issparse(m):
        return np.asarray(cast(Any, m).toarray(), dtype=np.float64)
    return np.asarray(m, dtype=np.float64)


def _predict_figure(y: Matrix, prediction: np.ndarray, title: str, seed: int) -> Any:
    n = y.shape[0] * y.shape[1]
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, size=min(n, PLOT_POINTS), replace=False)
    rows, cols = np.divmod(pick, y.shape[1])
    observed = (
        np.asarray(sp.csr_matrix(y)[rows, cols]).ravel() if sp.issparse(y) else y[rows, cols]
    )
    return plots.predicted_vs_observed(observed, prediction[rows, cols], title=title)


def _predict(plan: _Plan, cells: _Cells, trained: _Trained | None) -> _Result:
    config = plan.config
    assert plan.source is not None and plan.target is not None
    train = cells.rows(config.batch_key, config.train_batches)
    test = cells.rows(config.batch_key, config.test_batches)
    x, y = cells.values[plan.source], cells.values[plan.target]
    extra: dict[str, Any] = {"source": plan.source, "target": plan.target}
    if plan.method == "mean":
        _settings("mean", config.model)
        prediction = predict_mean(y[train], n_cells=int(test.sum()))
    elif plan.method == "svd_krr":
        svd_config, note = _svd_krr_config(plan)
        extra["svd_krr"] = to_dict(svd_config)
        extra["notes"] = [note]
        batch = cells.obs[config.batch_key].to_numpy()[train]
        prediction = predict_svd_krr(x[train], y[train], x[test], batch=batch, config=svd_config)
    else:
        assert trained is not None
        applied = _apply(plan, trained, cells, test, (f"impute:{plan.target}",))
        prediction = applied[f"impute:{plan.target}"].astype(np.float64)
    y_test = y[test]
    score = rmse(y_test, prediction)
    scores = {
        "rmse": score,
        "cells_train": float(train.sum()),
        "cells_test": float(test.sum()),
        "features": float(y.shape[1]),
    }
    features = plan.shard.manifest.modality(plan.target).features
    result = _Result(
        scores=scores,
        rows=test,
        columns={},
        dense={f"{plan.target}_predicted": (prediction, features)},
        extra=extra,
    )
    title = f"{plan.source}→{plan.target}, {plan.method}: RMSE {score:.4f}"
    result.figures["task/predicted_vs_observed.png"] = _predict_figure(
        y_test, prediction, title, config.seed
    )
    if y.shape[1] <= 20_000:
        per_feature = np.sqrt(np.mean((_dense(y_test) - prediction) ** 2, axis=0))
        result.tables["task/rmse_per_feature.csv"] = pd.DataFrame(
            {"feature": features, "rmse": per_feature}
        ).sort_values("rmse", ascending=False)
    return result
