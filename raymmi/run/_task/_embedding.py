"""The embed task: ``pca`` and the trained models, scored by the six metrics."""

from __future__ import annotations

import numpy as np

from raymmi import plots
from raymmi.metrics import cell_cycle_scores, embed_score
from raymmi.run._task._config import PSEUDOTIME_PREFIX
from raymmi.run._task._methods import _Result, _settings
from raymmi.run._task._planning import _Plan
from raymmi.run._task._reading import _Cells
from raymmi.run._task._trained import _apply, _Trained
from raymmi.schema import RaymmiError
from raymmi.tasks import embed_pca


def _embed(plan: _Plan, cells: _Cells, trained: _Trained | None) -> _Result:
    config = plan.config
    rows = cells.rows(config.batch_key, plan.read_batches)
    notes: list[str] = []
    if plan.method == "pca":
        settings = {"n_components": 50, "seed": config.seed, **_settings("pca", config.model)}
        blocks = [cells.values[m][rows] for m in plan.modalities]
        n_features = sum(b.shape[1] for b in blocks)
        if "n_components" not in config.model:
            settings["n_components"] = min(50, int(rows.sum()) - 1, n_features - 1)
        try:
            x = embed_pca(blocks, **settings)
        except ValueError as err:
            raise RaymmiError(f"embed pca: {err}") from None
    else:
        assert trained is not None
        x = _apply(plan, trained, cells, rows, ("embed",))["embed"].astype(np.float64)
    obs = cells.obs[rows]
    batch = obs[config.batch_key].astype(str).to_numpy()
    cell_type = obs[config.label_key].astype(str).to_numpy()
    x_pre = cycle = None
    if plan.source is not None:
        x_pre = cells.values[plan.source][rows]
        genes = plan.shard.manifest.modality(plan.source).features
        try:
            cycle = cell_cycle_scores(x_pre, genes, batch=batch)
        except ValueError as err:
            notes.append(f"cc_cons not computed: {err}")
    pseudotimes = {
        c.removeprefix(PSEUDOTIME_PREFIX).strip("_") or c: obs[c].to_numpy(dtype=np.float64)
        for c in plan.obs
        if c.startswith(PSEUDOTIME_PREFIX)
    }
    if len(set(batch)) < 2:
        notes.append(
            "asw_batch and iLISI need two batches among the embedded cells; embed_cells=all "
            "or more test batches give them"
        )
    result_scores = embed_score(
        x,
        cell_type=cell_type,
        batch=batch,
        x_pre=x_pre,
        cycle_scores=cycle,
        pseudotimes=pseudotimes or None,
        seed=config.seed,
    )
    scores = result_scores.as_dict()
    scores["cells_scored"] = float(rows.sum())
    scores["dims"] = float(x.shape[1])
    name = f"X_{plan.method}"
    result = _Result(
        scores=scores,
        rows=rows,
        columns={config.label_key: cell_type},
        dense={name: (x, tuple(f"z{i}" for i in range(x.shape[1])))},
        extra={
            "modalities": list(plan.modalities),
            "cc_reference": plan.source,
            "missing": list(result_scores.missing),
            "neighbors": result_scores.neighbors,
            "leiden_resolution": result_scores.resolution,
            "notes": notes,
        },
    )
    result.figures["task/embed_scores.png"] = plots.score_bars(
        {k: v for k, v in scores.items() if k not in ("cells_scored", "dims")},
        highlight="mean",
        title=f"embed {plan.method} ({int(rows.sum())} cells)",
    )
    return result
