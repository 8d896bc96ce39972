"""``raymmi tune --search optuna --pack K``: Optuna's ask-and-tell in rounds of K.

A pack is one Tune trial; :class:`PackSearch` is its searcher. Its ``suggest`` asks one Optuna
study for K configurations: the first with every dimension, the other K - 1 with the
*shared* keys (:func:`shared_dims`: those that change the architecture or the mini-batches, such
as widths, the bottleneck or the batch size) enqueued at the first one's values, so a pack is
always one architecture and the rest of each member is TPE's own suggestion. Each configuration
trains once per seed (``--seeds``: the pack trial trains one pack per seed, one after another).

When the pack ends, each configuration is told its own result from the pack's ``pack.json``:
the mean over its seeds of its last metric (a member ASHA's rung rule stopped is told the value
it stopped with, as Ray's ``OptunaSearch`` tells a trial the scheduler stopped); a configuration
whose every seed diverged, or every configuration of a pack that failed, is told as failed.
Optuna therefore learns in rounds: the packs running at once are asked without each other's
results. The searcher's state (the study, the packs still open) is pickled under ``OUT/tune``
for ``--resume``.

This module imports Ray Tune's ``Searcher`` at its top: the driver imports it only for such a
search.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from raymmi.run._tune._pack import member_plans, pack_key
from raymmi.run._tune._trial import _decode, config_id
from raymmi.tune_space import thaw


def shared_dims(space: Any, setup: Any) -> list[str]:
    """The searched keys whose value changes what a pack's members share (:func:`pack_key`).

    Each dimension is tried at its values (a range at its two ends) with the others at one
    sampled configuration; a key whose value changes the pack key is shared within a pack.
    """
    start = {k: thaw(v) for k, v in space.sample(1, 0)[0].items()}
    keys = []
    for dim in space.dims:
        tried = [dim.cast(dim.low), dim.cast(dim.high)] if dim.is_range else list(dim.values)
        seen = set()
        for value in tried:
            params = {**start, dim.key: thaw(value)}
            entry = {"params": params, "seed": 0, "config_id": config_id(params)}
            plans, _, _ = member_plans(setup, [entry])
            seen.add(pack_key(plans[0]))
            if len(seen) > 1:
                keys.append(dim.key)
                break
    return keys


class PackSearch(Searcher):
    """Tune searcher of packed Optuna trials; see the module docstring.

    Parameters
    ----------
    dists
        Optuna distribution of each searched key.
    dims
        The searched :class:`~raymmi.tune_space.Dimension` s (to cast values as the setting).
    shared
        Keys every member of a pack takes from the pack's first member.
    size
        K, configurations per pack.
    configs
        Configurations of the whole search (``--trials``); the last pack may be smaller.
    seeds, first_seed
        Each configuration trains with seeds ``first_seed``, ``+1`` ... (``seeds`` of them).
    """

    def __init__(
        self,
        dists: Mapping[str, Any],
        dims: Sequence[Any],
        shared: Sequence[str],
        *,
        size: int,
        configs: int,
        seeds: int,
        first_seed: int,
        seed: int,
        metric: str,
        mode: str,
        out: str,
    ) -> None:
        import optuna

        super().__init__(metric=metric, mode=mode)
        self.dists = dict(dists)
        self.casts = {d.key: d for d in dims}
        self.shared = list(shared)
        self.size, self.configs, self.seeds, self.first_seed = size, configs, seeds, first_seed
        self.out = out
        self.study = optuna.create_study(
            direction="maximize" if mode == "max" else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        self.asked = 0
        self.open: dict[str, list[tuple[int, str]]] = {}  # trial id -> (Optuna number, config)

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True  # metric and mode are the search's own, given at construction

    def _params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: self.casts[k].cast(_decode(v)) if k in self.casts else _decode(v)
            for k, v in raw.items()
        }

    def suggest(self, trial_id: str) -> Any:
        if self.asked >= self.configs:
            return Searcher.FINISHED
        take = min(self.size, self.configs - self.asked)
        asked: list[tuple[int, dict[str, Any]]] = []
        fixed: dict[str, Any] = {}
        for i in range(take):
            if i and fixed:
                self.study.enqueue_trial(fixed)  # the rest of the member is TPE's
            trial = self.study.ask(self.dists)
            if not i:
                fixed = {k: trial.params[k] for k in self.shared if k in trial.params}
            asked.append((trial.number, self._params(trial.params)))
        self.asked += take
        self.open[trial_id] = [(number, config_id(params)) for number, params in asked]
        members = [
            {"params": params, "seed": self.first_seed + s, "config_id": config_id(params)}
            for s in range(self.seeds)
            for _, params in asked
        ]
        return {"members": members}

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        import optuna

        numbers = self.open.pop(trial_id, None)
        if numbers is None:
            return
        path = Path(self.out) / "trials" / trial_id / "pack.json"
        values: dict[str, list[float]] = {}
        if not error and path.exists():
            for m in json.loads(path.read_text())["members"]:
                value = m["final"].get(str(self.metric), math.nan)
                if m["status"] == "error":
                    value = math.nan
                values.setdefault(m["config_id"], []).append(float(value))
        for number, cid in numbers:
            finite = [v for v in values.get(cid, []) if math.isfinite(v)]
            if finite:
                self.study.tell(number, float(np.mean(finite)))
            else:
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"study": self.study, "asked": self.asked, "open": self.open}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.study, self.asked, self.open = state["study"], state["asked"], state["open"]
