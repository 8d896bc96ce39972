"""``raymmi tune --pack K``: K configurations of one architecture trained as one stacked model.

The stacking itself is pure (:class:`raymmi.models._pack.PackedModel`); this module groups a
search's configurations into packs (:func:`make_packs`), trains one pack on the search's decoded
cells (:func:`train_pack`: the same batches, validation split, shuffling and per-epoch metrics
as an in-process trial of each member), and is the Tune function trainable of a pack
(:func:`_run_pack_trial`). Each member is still a trial to the user: its own row in
``trials.csv`` / ``results.csv`` and its own nested MLflow run with per-epoch metrics.

Early stopping applies per member: at every ASHA rung (``grace_period * reduction_factor**k``
epochs) a member goes on only if its metric is in the best ``1/reduction_factor`` of every value
recorded at that rung so far -- by the members of this pack *and* of every pack before it
(ASHA's asynchronous rung rule, the cutoff Ray's ``ASHAScheduler`` computes). The record is one
JSON file per rung under ``OUT/tune/rungs/``, appended under a file lock, so packs running at
once on a node (or on nodes sharing ``OUT``) see each other's values and a ``--resume`` keeps
them. Without the shared record every pack would keep its own best member to the last epoch,
and a search's cost would grow with its number of packs, not with ASHA's budget. Stopped
members leave the stacked model. A member whose loss is no longer finite fails (its row names
the configuration and the epoch), the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raymmi import models
from raymmi.config import TrainConfig, from_dict
from raymmi.run._train._plan import TrainPlan
from raymmi.run._tune._inprocess import TrialData, every_cell, split, trial_plan
from raymmi.schema import RaymmiError

# optim / top-level settings every member of a pack shares: they decide the mini-batches
SHARED = ("batch_size", "epochs", "shuffle_buffer", "seed", "amp", "drop_last", "lr_decay")


@dataclasses.dataclass
class Member:
    """One configuration and seed of a pack, and what became of it."""

    params: dict[str, Any]
    seed: int
    config_id: str
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    status: str = "running"  # running -> completed | stopped | error
    error: str = ""


@dataclasses.dataclass
class Rungs:
    """ASHA's rungs over ``epochs_done``: ``grace * eta**k`` below ``max_t``.

    ``record``: a folder holding the values every pack reported at each rung (``None``: the
    members of one pack are ranked among themselves only, :meth:`survivors`).
    """

    grace: int
    eta: int
    max_t: int
    metric: str
    mode: str
    record: str | None = None

    def at(self) -> set[int]:
        out, t = set(), self.grace
        while t < self.max_t:
            out.add(t)
            t *= self.eta
        return out

    def survivors(self, values: Sequence[float]) -> list[int]:
        """Positions that go on: the best ``ceil(n / eta)`` (ties kept), NaN never."""
        finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
        if not finite:
            return []
        keep = max(1, math.ceil(len(values) / self.eta))
        ordered = sorted(finite, reverse=self.mode == "max")
        return self._at_or_past(values, ordered[min(keep, len(ordered)) - 1][0])

    def _at_or_past(self, values: Sequence[float], cutoff: float) -> list[int]:
        """Positions of the finite values at or past ``cutoff`` (above it for ``max``)."""
        sign = 1.0 if self.mode == "max" else -1.0
        return [i for i, v in enumerate(values) if math.isfinite(v) and sign * (v - cutoff) >= 0]

    def recorded_survivors(
        self, rung: int, values: Sequence[float], keys: Sequence[str] | None = None
    ) -> list[int]:
        """Positions that go on against every value recorded at ``rung``, these included.

        ASHA's cutoff: the ``1 - 1/eta`` quantile of the recorded values (``1/eta`` when
        minimizing); a value at or past it goes on, NaN never. ``keys`` name the values in the
        record (a member's configuration and seed), so a pack rerun after an interruption
        replaces its values instead of counting them twice. Without a record, the pack's own
        ranking (:meth:`survivors`).
        """
        if self.record is None:
            return self.survivors(values)
        keys = list(keys) if keys is not None else [f"#{i}" for i in range(len(values))]
        folder = Path(self.record)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rung_{rung}.json"
        with _locked(folder / ".lock"):
            seen = json.loads(path.read_text()) if path.exists() else {}
            if keys and keys[0].startswith("#"):  # unnamed values: never replace each other
                keys = [f"#{len(seen) + i}" for i in range(len(values))]
            seen.update(
                {k: float(v) for k, v in zip(keys, values, strict=True) if math.isfinite(v)}
            )
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(seen))
            tmp.replace(path)
        if not seen:
            return []
        q = 1 - 1 / self.eta if self.mode == "max" else 1 / self.eta
        return self._at_or_past(values, float(np.quantile(np.asarray(list(seen.values())), q)))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` while the block runs (packs of one search share it)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pack_key(plan: TrainPlan) -> tuple[Any, ...]:
    """What the members of a pack must share: architecture, inputs and the batch settings."""
    from raymmi.models import architecture_key, check_packable

    with _meta():
        model = models.model_class(plan.model_name)(plan.model_config, plan.layout.dims)
    check_packable(model)
    shared = tuple(plan.optim.get(k) for k in SHARED)
    return (
        architecture_key(model),
        shared,
        plan.val_fraction,
        plan.hybrid_every,
        plan.score_every,
        plan.label_key,
    )


class _meta:
    """Build models on the meta device (shapes only) while this context is open."""

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_default_device()
        torch.set_default_device("meta")

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_default_device(self.before)


def make_packs(
    keyed: Sequence[tuple[Any, dict[str, Any]]], size: int
) -> tuple[list[list[dict[str, Any]]], int]:
    """Group members by key into packs of at most ``size``; return them and the key count."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for key, member in keyed:
        groups.setdefault(key, []).append(member)
    packs = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
    return packs, len(groups)


# ----------------------------------------------------------------------------------------------
# training one pack (no Tune: the trainable below and the tests call it)
# ----------------------------------------------------------------------------------------------


def train_pack(
    plans: Sequence[TrainPlan],
    members: Sequence[Member],
    data: TrialData,
    *,
    rungs: Rungs | None = None,
    device: str = "cpu",
    report: Callable[[int, list[Member]], None] | None = None,
) -> tuple[list[Member], Any]:
    """Train the members' plans as one stacked model; fill each member's history and status.

    Returns the members and the :class:`~raymmi.models._pack.PackedModel` (holding the
    members still in it at the end, in order).
    """
    import torch

    from raymmi.models import PackedModel
    from raymmi.run._train._loop import MemoryBatches, _epoch_metrics, _to, score_sums

    base = plans[0]
    torch.set_num_threads(base.threads)
    dev = torch.device(device)
    optim = base.optim
    seed, epochs = int(optim["seed"]), int(optim["epochs"])
    built = []
    for plan in plans:
        torch.manual_seed(seed)  # as build_model does for a trial alone
        built.append(models.model_class(plan.model_name)(plan.model_config, plan.layout.dims))
    pack = PackedModel(
        [m.to(dev) for m in built],
        [float(p.optim["lr"]) for p in plans],
        [float(p.optim["weight_decay"]) for p in plans],
    )
    active = list(range(len(plans)))  # member index of each pack position
    train, val = split(data, base)
    batch_size = int(optim["batch_size"])
    train_batches = MemoryBatches(train, batch_size)
    val_batches = MemoryBatches(val, batch_size) if val is not None else None
    every = every_cell(data, base)
    every_batches = MemoryBatches(every, batch_size) if every is not None else None
    shuffle = int(optim["shuffle_buffer"]) > 0
    # as fit_epochs: a batch of fewer cells is skipped (drop_last; 2 for the pairwise terms)
    smallest = batch_size if bool(optim["drop_last"]) else 2
    rung_epochs = rungs.at() if rungs is not None else set()
    for epoch in range(epochs):
        if not active:
            break
        pack.train()
        if epoch > 0:  # as fit_epochs: epoch e trains at lr * lr_decay ** e
            pack.lr.mul_(float(optim["lr_decay"]))
        kl_weight = models.kl_schedule(epoch, **models.annealing(base.model_config))
        tick = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        cells, data_seconds = 0.0, 0.0
        batches = iter(train_batches(shuffle_seed=seed * 1000 + epoch if shuffle else None))
        while True:
            wait = time.perf_counter()
            batch = next(batches, None)
            data_seconds += time.perf_counter() - wait
            if batch is None:
                break
            n = len(next(iter(batch.values())))
            if n < smallest:
                continue
            for key, value in pack.step(_to(batch, dev), kl_weight=kl_weight).items():
                sums[f"train_{key}"] = sums.get(f"train_{key}", 0) + value * n
            cells += n
        seconds = time.perf_counter() - tick
        scores: list[dict[str, float]] = [{} for _ in active]
        val_cells = 0.0
        scored = base.label_key is not None and (
            (epoch + 1) % base.score_every == 0 or epoch == epochs - 1
        )
        if val_batches is not None:
            pack.eval()
            embeddings, labels = [], []
            with torch.no_grad():
                for batch in val_batches():
                    n = len(next(iter(batch.values())))
                    batch = _to(batch, dev)
                    for key, value in pack.losses(batch, kl_weight=kl_weight).items():
                        sums[f"val_{key}"] = sums.get(f"val_{key}", 0) + value * n
                    val_cells += n
                    if scored:
                        embeddings.append(pack.embed(batch).float().cpu().numpy())
                        labels.append(batch[str(base.label_key)].cpu().numpy())
            if scored and embeddings:
                stacked, codes = np.concatenate(embeddings, axis=1), np.concatenate(labels)
                for j in range(len(active)):
                    samples = {"embedding": stacked[j], "labels": codes}
                    scores[j] = score_sums("val", samples, base.label_key)
        if scored and every_batches is not None:
            pack.eval()
            with torch.no_grad():
                label = str(base.label_key)
                pairs = [(pack.embed(_to(b, dev)), b[label]) for b in every_batches()]
            stacked = torch.cat([z for z, _ in pairs], dim=1).float().cpu().numpy()
            codes = torch.cat([c for _, c in pairs]).numpy()
            for j in range(len(active)):
                samples = {"embedding": stacked[j], "labels": codes}
                scores[j].update(score_sums("all", samples, base.label_key))
        totals = {k: v.detach().cpu().double().tolist() for k, v in sums.items()}
        share = len(active)
        keep: list[int] = []
        for j, index in enumerate(active):
            member = members[index]
            row = {k: float(v[j]) for k, v in totals.items()}
            row.update(scores[j])
            row.update(
                cells=cells,
                val_cells=val_cells,
                seconds=seconds / share,  # the member's share of the pack's epoch
                data_seconds=data_seconds / share,
            )
            metrics = _epoch_metrics(row, 1, epoch)
            metrics["attempt_start_epoch"] = 0.0
            metrics["weights_rank_spread"] = 0.0
            metrics["packed_members"] = float(share)
            member.history.append(metrics)
            if not bool(pack.finite[j]) or not math.isfinite(metrics.get("train_loss", 0.0)):
                member.status = "error"
                member.error = (
                    f"diverged: the loss is not finite at epoch {epoch} (configuration "
                    f"{json.dumps(member.params, default=str)}, seed {member.seed})"
                )
            else:
                keep.append(j)
        if rungs is not None and epoch + 1 in rung_epochs and keep:
            values = [members[active[j]].history[-1].get(rungs.metric, math.nan) for j in keep]
            names = [f"{members[active[j]].config_id}:{members[active[j]].seed}" for j in keep]
            going = {keep[p] for p in rungs.recorded_survivors(epoch + 1, values, names)}
            for j in keep:
                if j not in going:
                    members[active[j]].status = "stopped"
            keep = [j for j in keep if j in going]
        if epoch == epochs - 1:
            for j in keep:
                members[active[j]].status = "completed"
        if report is not None:
            report(epoch, [members[i] for i in active])
        if len(keep) < len(active):
            pack.keep(keep)
            active = [active[j] for j in keep]
    return list(members), pack


# ----------------------------------------------------------------------------------------------
# the Tune function trainable of one pack
# ----------------------------------------------------------------------------------------------


def member_plans(
    setup: Any, pack: Sequence[Mapping[str, Any]]
) -> tuple[list[TrainPlan], list[Member], list[dict[str, Any]]]:
    """The members of a pack as training plans, records and config trees."""
    from raymmi.tune_space import apply_params

    plans, members, trees = [], [], []
    for entry in pack:
        tree = apply_params(setup.base, {**setup.fixed, **entry["params"]})
        tree["optim"]["seed"] = int(entry["seed"])
        tree["out"] = setup.out
        config = from_dict(TrainConfig, tree, where="trial")
        plan = dataclasses.replace(trial_plan(setup.plan, config), threads=setup.threads)
        plans.append(plan)
        members.append(Member(dict(entry["params"]), int(entry["seed"]), entry["config_id"]))
        trees.append({k: v for k, v in tree.items() if k not in ("out", "overwrite")})
    return plans, members, trees


def _run_pack_trial(
    config: dict[str, Any], setup: Any, data: TrialData, packs: Sequence[Sequence[dict]]
) -> None:
    """Train one pack; write ``pack.json`` last.

    ``config["pack"]`` indexes ``packs`` (random / grid searches, packs formed up front);
    ``config["members"]`` lists the members themselves (``--search optuna``: one pack's
    configurations x seeds asked by :class:`~raymmi.run._tune._packsearch.PackSearch`). Members
    whose pack keys differ (the seeds of one configuration) train as separate stacked models,
    one after another.
    """
    from ray import tune

    from raymmi import track

    trial_id = tune.get_context().get_trial_id()
    folder = Path(setup.out) / "trials" / trial_id
    done = folder / "pack.json"
    if done.exists():  # finished before an interruption: train nothing
        saved = json.loads(done.read_text())
        tune.report({**saved["report"], "completed": 1.0})
        return
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    entries = config["members"] if "members" in config else packs[int(config["pack"])]
    plans, members, trees = member_plans(setup, entries)
    rungs = setup.rungs
    epochs = int(plans[0].optim["epochs"])
    groups: dict[Any, list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(pack_key(plan), []).append(i)

    def best(group: Sequence[Member]) -> float:
        values = [m.history[-1].get(setup.metric, math.nan) for m in group if m.history]
        finite = [v for v in values if math.isfinite(v)] or [math.nan]
        return max(finite) if setup.mode == "max" else min(finite)

    for g, group in enumerate(groups.values()):

        def report(epoch: int, active: list[Member], g: int = g) -> None:
            done = g * epochs + epoch + 1
            tune.report({"epochs_done": done, setup.metric: best(active), "members": len(active)})

        train_pack(
            [plans[i] for i in group],
            [members[i] for i in group],
            data,
            rungs=rungs,
            device=setup.device,
            report=report,
        )
    wall = time.perf_counter() - started
    uri = setup.tracking.uri if setup.tracking.enabled else None
    rows = []
    logged = 0.0
    for i, (member, tree) in enumerate(zip(members, trees, strict=True)):
        member_id = f"{trial_id}-m{i:02d}"
        final = dict(member.history[-1]) if member.history else {}
        final["epochs_done"] = float(len(member.history))
        if uri is not None:
            tags = {
                "raymmi.command": "train",
                "raymmi.model": plans[i].model_name,
                "raymmi.search": setup.name,
                "raymmi.trial_id": member_id,
                "raymmi.pack": trial_id,
                "raymmi.config_id": member.config_id,
                "raymmi.seed": member.seed,
            }
            if member.status == "stopped":
                tags["raymmi.stopped_early"] = "true"
                tags["raymmi.stopped_at_epoch"] = len(member.history)
            if setup.parent_run_id:
                tags["mlflow.parentRunId"] = setup.parent_run_id
            tick = time.perf_counter()
            run_id = track.start_batched_run(
                uri,
                setup.tracking.experiment,
                run_name=f"{setup.name}-{member_id}",
                config=tree,
                tags=tags,
            )
            track.log_metric_rows(uri, run_id, list(enumerate(member.history)))
            # an early stop is the search working: FINISHED, tagged (KILLED reads as a crash)
            status = {"completed": "FINISHED", "stopped": "FINISHED"}.get(member.status, "FAILED")
            track.end_batched_run(uri, run_id, status)
            logged += time.perf_counter() - tick
        rows.append(
            {
                "trial_id": member_id,
                "params": member.params,
                "seed": member.seed,
                "config_id": member.config_id,
                "status": member.status,
                "error": member.error,
                "final": {k: v for k, v in final.items() if _finite(v)},
                "epoch_seconds": sum(h.get("epoch_seconds", 0.0) for h in member.history),
            }
        )
    counts = {k: sum(m.status == k for m in members) for k in ("completed", "stopped", "error")}
    last = {
        "epochs_done": max((len(m.history) for m in members), default=0),
        setup.metric: best(members),
        **{f"members_{k}": float(v) for k, v in counts.items()},
    }
    saved = {"members": rows, "report": last, "wall_seconds": wall, "mlflow_seconds": logged}
    tmp = folder / "pack.json.tmp"
    tmp.write_text(json.dumps(saved, default=float))
    tmp.replace(done)
    tune.report({**last, "completed": 1.0})


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def member_rows(out: Path, trial_ids: Sequence[str], keys: Sequence[str], metric: str) -> list:
    """Rows of ``trials.csv``, one per member, from the packs' ``pack.json`` files."""
    from raymmi.run._tune._tables import _cell

    rows = []
    for trial_id in trial_ids:
        path = out / "trials" / trial_id / "pack.json"
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        share = saved["wall_seconds"] / max(1, len(saved["members"]))
        for m in saved["members"]:
            final = m["final"]
            row = {
                "trial_id": m["trial_id"],
                "config_id": m["config_id"],
                "seed": m["seed"],
                **{k: _cell(m["params"].get(k)) for k in keys},
                metric: final.get(metric, math.nan),
                "epochs": int(final.get("epochs_done", 0)),
                "status": m["status"],
                "error": m["error"],
                "wall_seconds": share,
                "epoch_seconds": m["epoch_seconds"],
                "train_seconds": math.nan,
                "mlflow_seconds": saved.get("mlflow_seconds", 0.0) / max(1, len(saved["members"])),
                "pack": trial_id,
            }
            for key in (
                *("val_loss", "train_loss", "val_ari", "val_nmi", "val_silhouette"),
                *("all_ari", "all_nmi", "all_silhouette"),
            ):
                if key != metric and key in final:
                    row[key] = final[key]
            rows.append(row)
    return rows


def check_pack(config: Any, in_process: bool) -> None:
    """Raise for ``--pack`` settings no pack can run with."""
    if config.pack <= 1:
        return
    if not in_process:
        msg = "--pack trains one-worker trials in one process: it cannot run with --workers > 1"
        raise RaymmiError(msg)
