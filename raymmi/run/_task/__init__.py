"""``raymmi task predict|match|embed``: the NeurIPS 2021 multimodal tasks on a ``cells`` shard set.

The three tasks of the challenge (Lance et al. 2022) on any paired ``cells`` shard set split
by batch: *predict* one modality from the other (scored by the RMSE over all test cells x
features), *match* the test cells across modalities with their pairing hidden (the weight
on the true partner, random = 1/N), and *embed* both modalities jointly (the six-metric
score of :func:`raymmi.metrics.embed_score`).

One Ray task per input file reads the rows of the named batches (only the columns the task
needs) and the driver gathers them: the pure methods of :mod:`raymmi.tasks` fit there (the
challenge's sets fit in memory; the kernel of the kernel ridge regression is the limit).
Torch methods train with :func:`raymmi.run.train` on a shard set of the train cells only
(``OUT/_train_cells``) and are applied to the cells they score by one Ray task per file.

Everything goes to one MLflow run (``task <name>``); a trained model's own run (per-epoch
losses) is made its child. Outputs under ``OUT``: ``config.yaml``, ``scores.json`` (metric
name → value, ``null`` for a metric that could not be computed), the task's shard set
(``predictions``, ``matches`` or ``embedding``), committed last by its manifest, and for
match ``matching.npz`` (the N x N sparse matrix, ``scipy.sparse.load_npz``) and
``pairing.npz`` (cell ids of its rows and columns, the permutation that hid the pairing).
Bad input raises a :class:`~raymmi.schema.RaymmiError` before anything is written; a failure
after ``OUT`` was created removes it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from raymmi import plots
from raymmi.config import RayConfig, TrackingConfig
from raymmi.io import claiming, work_dir
from raymmi.metrics import MatchingError, check_matching, match_probabilities
from raymmi.run._runtime import init_ray
from raymmi.run._task._config import _OTHER_CANDIDATES as _OTHER_CANDIDATES
from raymmi.run._task._config import _RNA_CANDIDATES as _RNA_CANDIDATES
from raymmi.run._task._config import APPLY_ROWS as APPLY_ROWS
from raymmi.run._task._config import METHODS as METHODS
from raymmi.run._task._config import MODEL_METHODS as MODEL_METHODS
from raymmi.run._task._config import OUTPUT_NAMES as OUTPUT_NAMES
from raymmi.run._task._config import PLOT_POINTS as PLOT_POINTS
from raymmi.run._task._config import PSEUDOTIME_PREFIX as PSEUDOTIME_PREFIX
from raymmi.run._task._config import PURE_SETTINGS as PURE_SETTINGS
from raymmi.run._task._config import TASKS as TASKS
from raymmi.run._task._config import Matrix as Matrix
from raymmi.run._task._config import TaskConfig as TaskConfig
from raymmi.run._task._config import score_text as score_text
from raymmi.run._task._embedding import _embed
from raymmi.run._task._methods import _Result, _settings
from raymmi.run._task._output import _finish
from raymmi.run._task._planning import _check_batches, _Plan, _plan
from raymmi.run._task._planning import _default as _default
from raymmi.run._task._planning import _scaled as _scaled
from raymmi.run._task._prediction import _predict
from raymmi.run._task._reading import _Cells, _read_cells
from raymmi.run._task._trained import _apply, _model_settings, _train_model, _Trained
from raymmi.schema import CELL_ID, RaymmiError
from raymmi.tasks import knn_softmax_matching, match_cca

# The match task stays in this module rather than one of its own: tests patch
# ``raymmi.run._task.match_cca``, which ``_match`` reads from this module's namespace.


def _check_valid(matching: sp.csr_matrix, n: int, method: str) -> None:
    try:
        check_matching(matching, n_cells=n)
    except MatchingError as err:
        msg = (
            f"method {method!r} produced an invalid matching, nothing was written: {err}. A "
            "matching must be sparse N x N, non-negative, at most 1000 entries per row, rows "
            "summing to 1; fix the method (or its model.* settings)"
        )
        raise RaymmiError(msg) from None


def _match(plan: _Plan, cells: _Cells, trained: _Trained | None) -> _Result:
    config = plan.config
    first, second = plan.modalities
    train = cells.rows(config.batch_key, config.train_batches)
    test = cells.rows(config.batch_key, config.test_batches)
    n = int(test.sum())
    # the hidden pairing: column j of the matching is test cell perm[j] of the second modality
    perm = np.random.default_rng(config.seed).permutation(n)
    partner = np.argsort(perm)
    x, y = cells.values[first], cells.values[second]
    if plan.method == "cca":
        settings = {"seed": config.seed, **_settings("cca", config.model)}
        matching = match_cca(x[train], y[train], x[test], y[test][perm], **settings)
    else:
        assert trained is not None
        views = _apply(plan, trained, cells, test, (f"view:{first}", f"view:{second}"))
        matching = knn_softmax_matching(views[f"view:{first}"], views[f"view:{second}"][perm])
    matching = sp.csr_matrix(matching)
    _check_valid(matching, n, plan.method)
    weights = match_probabilities(matching, partner=partner)
    score = float(weights.mean())
    scores = {
        "match_score": score,
        "random_score": 1.0 / n,
        "ratio_to_random": score * n,
        "cells_train": float(train.sum()),
        "cells_test": float(n),
    }
    ids = cells.obs[CELL_ID].to_numpy()[test].astype(str)
    top = np.asarray(matching.argmax(axis=1)).ravel()
    top_weight = np.asarray(matching.max(axis=1).toarray()).ravel()
    result = _Result(
        scores=scores,
        rows=test,
        columns={
            "match_cell_id": ids[perm][top],
            "match_weight": top_weight.astype(np.float32),
            "partner_weight": weights.astype(np.float32),
        },
        dense={},
        extra={"modalities": [first, second], "rows": first, "columns": second},
    )

    def save_matching(out: Path) -> None:
        sp.save_npz(out / "matching.npz", matching)
        np.savez(
            out / "pairing.npz",
            row_cell_id=ids,
            column_cell_id=ids[perm],
            permutation=perm,
            partner=partner,
        )

    result.files["matching.npz"] = save_matching
    result.figures["task/partner_weights.png"] = plots.partner_weights_plot(
        weights, chance=1.0 / n, title=f"{first} x {second}, {plan.method}: score {score:.4f}"
    )
    return result


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": [config.data],
        "overwrite": config.overwrite,
        "marker": "scores.json",
    }
)
def run_task(
    config: TaskConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> dict[str, float]:
    """Run one NeurIPS 2021 task on a ``cells`` shard set; return its scores.

    Returns
    -------
    dict
        Metric name → value, as in ``OUT/scores.json`` (NaN where ``null`` there). predict:
        ``rmse``; match: ``match_score``, ``random_score`` (1/N), ``ratio_to_random``;
        embed: ``nmi``, ``asw_label``, ``cc_cons``, ``ti_cons``, ``asw_batch``,
        ``graph_conn``, their ``mean`` and ``ilisi``; each with cell counts.

    Raises
    ------
    RaymmiError
        Overlapping or empty train/test batches, a batch with no cells, a set with fewer than
        two batches, a modality or obs column the task needs missing (named, with those
        present), unknown ``model.*`` settings, an existing ``out`` without ``overwrite``, a
        matching that fails :func:`raymmi.metrics.check_matching`. Nothing is written (a
        failure after ``out`` was created removes it).
    """
    started = time.perf_counter()
    plan = _plan(config)
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        msg = f"--out {config.out!r} already exists; choose another --out or pass --overwrite"
        raise RaymmiError(msg)
    if out.exists() and not out.is_dir():
        msg = f"--out {config.out!r} is a file; choose a folder"
        raise RaymmiError(msg)
    settings = _model_settings(plan)
    init_ray(ray_config)
    _check_batches(plan)
    cells = _read_cells(plan)
    run = {"predict": _predict, "match": _match, "embed": _embed}[config.task]
    result = run(plan, cells, None) if settings is None else None  # pure: before any write
    out = work_dir(config.out)  # a staging sibling under --overwrite (raymmi.io._dest)
    out.mkdir(parents=True, exist_ok=True)
    try:
        trained = None
        if settings is not None:
            trained = _train_model(plan, settings, out, ray_config, tracking)
            result = run(plan, cells, trained)
        assert result is not None
        return _finish(plan, cells, result, trained, out, tracking, started)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
