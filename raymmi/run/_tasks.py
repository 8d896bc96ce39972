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

import dataclasses
import difflib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import scipy.sparse as sp
import yaml

from raymmi import models
from raymmi.config import OptimConfig, RayConfig, TrackingConfig, TrainConfig, from_dict, to_dict
from raymmi.io._shardset import ShardSet, ShardSetWriter, open_shard_set, resolve, write_part
from raymmi.metrics import (
    MatchingError,
    cell_cycle_scores,
    check_matching,
    embed_score,
    match_probabilities,
    rmse,
)
from raymmi.models._batches import BatchLayout
from raymmi.run._plates import producer
from raymmi.run._runtime import gather, init_ray
from raymmi.run._train import plan_training, train
from raymmi.schema import (
    CELL_ID,
    FileEntry,
    Manifest,
    Modality,
    RaymmiError,
    dense_to_list,
    depth_column,
    indices_column,
    list_to_dense,
    lists_to_sparse,
    values_column,
)
from raymmi.tasks import (
    SVD_KRR_PRESETS,
    SvdKrrConfig,
    embed_pca,
    knn_softmax_matching,
    match_cca,
    predict_mean,
    predict_svd_krr,
)
from raymmi.track import Run, tracked_run, tracking_uri

Matrix: TypeAlias = np.ndarray | sp.csr_matrix

TASKS = ("predict", "match", "embed")
#: Methods of each task; the first is the default.
METHODS: Mapping[str, tuple[str, ...]] = {
    "predict": ("svd_krr", "mean", "mlp"),
    "match": ("cca", "clue"),
    "embed": ("pca", "umint", "sailerx", "jae", "ae"),
}
#: Methods trained with Ray Train, and the registered model each one trains.
MODEL_METHODS: Mapping[str, str] = {
    "mlp": "mlp_predict",
    "clue": "clue_match",
    "umint": "umint",
    "sailerx": "sailerx",
    "jae": "jae",
    "ae": "ae",
}
#: ``model.*`` settings the pure methods accept (svd_krr: :class:`raymmi.tasks.SvdKrrConfig`).
PURE_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "mean": (),
    "svd_krr": tuple(f.name for f in dataclasses.fields(SvdKrrConfig)),
    "cca": ("n_pcs", "n_components", "regularization", "k", "temperature"),
    "pca": ("n_components", "balance"),
}
# Candidates for the default modalities: normalized RNA, then the other modality's
# normalized values, first present wins (``rna``/``adt``/``atac`` only when not raw counts).
_RNA_CANDIDATES = ("rna_norm", "rna_hvg", "rna")
_OTHER_CANDIDATES = ("adt_clr", "adt", "atac")
PSEUDOTIME_PREFIX = "pseudotime_order"
APPLY_ROWS = 4096  # cells passed through a trained model at once in an apply task
PLOT_POINTS = 50_000  # (observed, predicted) pairs drawn in the predict scatter
OUTPUT_NAMES = {"predict": "predictions", "match": "matches", "embed": "embedding"}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """``raymmi task predict|match|embed``: one challenge task on a paired ``cells`` shard set.

    Parameters
    ----------
    task
        ``predict``, ``match`` or ``embed``.
    data
        The ``cells`` shard set (usually ``raymmi preprocess cells`` output).
    out
        Output folder (see the module docstring); must not exist unless ``overwrite``.
    train_batches, test_batches
        Batch names of each side: non-empty and disjoint (a comma-separated string is split).
    method
        predict: ``svd_krr`` (default; TruncatedSVD + RBF kernel ridge, the GEX→ADT
        winner), ``mean`` (baseline), ``mlp`` (``mlp_predict`` trained with Ray Train).
        match: ``cca`` (default; CCA + kNN softmax), ``clue`` (``clue_match``). embed:
        ``pca`` (default), ``umint``, ``sailerx``, ``jae``, ``ae`` (trained models).
    source
        predict: the input modality; embed: the normalized RNA whose cell-cycle variance
        ``cc_cons`` compares against. ``None``: the first present of ``rna_norm``,
        ``rna_hvg``, or ``rna`` when it was ingested from a file's ``.X`` (not raw counts).
    target
        predict: the predicted modality. ``None``: the first present of ``adt_clr``, ``adt``
        ingested from ``.X``, or normalized (binarized by preprocess) ``atac``.
    modalities
        match: the two modalities (rows, columns of the matching); embed: those embedded
        (PCA, and the ``modalities`` of ``umint``/``jae``/``ae``). Empty: (source, target).
    label_key, batch_key, phase_key
        ``obs`` columns of cell types (embed's scores; ``jae``'s type term), batches, and
        cell-cycle phases (``jae``'s cycle term, when present).
    model
        The method's settings: ``model.*`` keys of the trained model (defaults filled from
        the task: modalities, keys), or the pure method's keyword settings
        (:data:`PURE_SETTINGS`).
    epochs
        Training epochs of a trained method; ``None``: the model's default.
    embed_cells
        Cells embedded and scored: ``test`` (the challenge's protocol; the batch metrics need
        two test batches) or ``all`` (train and test batches; a trained model saw the train
        cells).
    seed
        Seed of the hidden pairing, the SVDs, PCA and training.
    overwrite
        Replace an existing ``out``.
    """

    task: Literal["predict", "match", "embed"]
    data: str
    out: str
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    method: str | None = None
    source: str | None = None
    target: str | None = None
    modalities: tuple[str, ...] = ()
    label_key: str = "cell_type"
    batch_key: str = "batch"
    phase_key: str = "phase"
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int | None = None
    embed_cells: Literal["test", "all"] = "test"
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            msg = f"task={self.task!r} is not one of {list(TASKS)}"
            raise RaymmiError(msg)
        if self.method is not None and self.method not in METHODS[self.task]:
            msg = (
                f"--method {self.method!r} is not a method of task {self.task!r}; choose one of "
                f"{list(METHODS[self.task])}"
            )
            raise RaymmiError(msg)
        for side in ("train_batches", "test_batches"):
            value = getattr(self, side)
            items = [value] if isinstance(value, str) else list(value)
            names = tuple(n.strip() for v in items for n in str(v).split(",") if n.strip())
            object.__setattr__(self, side, names)
            if not names:
                msg = f"--{side.replace('_', '-')} is empty; name at least one batch"
                raise RaymmiError(msg)
            if len(set(names)) != len(names):
                msg = f"--{side.replace('_', '-')} names a batch twice: {list(names)}"
                raise RaymmiError(msg)
        if overlap := sorted(set(self.train_batches) & set(self.test_batches)):
            msg = (
                f"--train-batches and --test-batches overlap in {overlap}: a batch is either "
                "trained on or held out, never both; remove it from one side"
            )
            raise RaymmiError(msg)
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.task == "match" and self.modalities and len(self.modalities) != 2:
            msg = f"match pairs two modalities; --modalities names {list(self.modalities)}"
            raise RaymmiError(msg)
        if len(set(self.modalities)) != len(self.modalities):
            msg = f"--modalities names a modality twice: {list(self.modalities)}"
            raise RaymmiError(msg)
        if self.epochs is not None and self.epochs < 1:
            msg = f"epochs={self.epochs!r} must be >= 1"
            raise RaymmiError(msg)
        if self.embed_cells not in ("test", "all"):
            msg = f"embed_cells={self.embed_cells!r} is not one of ['all', 'test']"
            raise RaymmiError(msg)
        if self.seed < 0:
            msg = f"seed={self.seed!r} must be >= 0"
            raise RaymmiError(msg)

    @property
    def resolved_method(self) -> str:
        """The method that runs: ``method``, or the task's default."""
        return self.method or METHODS[self.task][0]


# ----------------------------------------------------------------------------------------------
# planning: modalities, columns, batches (no writes)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    config: TaskConfig
    method: str
    shard: ShardSet
    source: str | None  # predict: input; embed: normalized RNA for cc_cons (None: skipped)
    target: str | None  # predict: output
    modalities: tuple[str, ...]  # match: (rows, columns); embed: embedded; predict: both
    obs: tuple[str, ...]  # obs columns read besides cell_id and the batch
    read_batches: tuple[str, ...]  # batches whose cells are read
    notes: tuple[str, ...]

    @property
    def reads(self) -> tuple[str, ...]:
        """Modalities read from every file."""
        names = [*self.modalities, *(n for n in (self.source, self.target) if n is not None)]
        return tuple(dict.fromkeys(names))


def _close(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _is_normalized(manifest: Manifest, name: str) -> bool:
    """Whether modality ``name`` holds normalized values rather than raw counts.

    ``raymmi ingest cells`` stores ``layers['counts']`` when a file has it and ``.X``
    otherwise (recorded in ``extra.counts_from``); preprocess keeps raw ``rna``/``adt`` and
    writes binarized ``atac``; derived modalities (``rna_norm``, ``adt_clr`` ...) are values.
    """
    counts_from = manifest.extra.get("counts_from") or {}
    recorded = str(counts_from.get(name, "")).rstrip("/")
    if recorded.split("/")[-1] == "X":
        return True
    if name in ("rna", "adt"):
        return False
    if name == "atac":
        return manifest.producer.get("command") == "preprocess cells"
    return True


def _scaled(manifest: Manifest, name: str) -> bool:
    """Whether preprocess scaled ``name`` (z-scores, not the challenge's log-normalized values)."""
    if name not in ("rna_norm", "rna_hvg"):
        return False
    steps = ((manifest.producer.get("config") or {}).get("rna") or {}).get("steps") or ()
    return "scale" in steps


def _present(manifest: Manifest) -> list[str]:
    return [
        m.name if _is_normalized(manifest, m.name) else f"{m.name} (raw counts)"
        for m in manifest.modalities
    ]


def _default(manifest: Manifest, candidates: Sequence[str], *, flag: str, what: str) -> str:
    names = {m.name for m in manifest.modalities}
    for name in candidates:
        if name in names and _is_normalized(manifest, name):
            return name
    msg = (
        f"no {what} modality to default {flag} to: looked for {list(candidates)} (rna/adt/atac "
        f"only when not raw counts); the data has {_present(manifest)}. Run `raymmi "
        f"preprocess cells` on it, or name one with {flag}"
    )
    raise RaymmiError(msg)


def _named(manifest: Manifest, name: str, *, flag: str, task: str, uri: str) -> str:
    names = [m.name for m in manifest.modalities]
    if name not in names:
        msg = (
            f"{flag} {name!r}: task {task} needs modality {name!r}, which {uri!r} does not "
            f"have{_close(name, names)}; present: {_present(manifest)}"
        )
        raise RaymmiError(msg)
    return name


def _plan(config: TaskConfig) -> _Plan:
    """Resolve modalities and columns against the manifest; raise on anything missing."""
    shard = open_shard_set(config.data, kind="cells")
    manifest = shard.manifest
    method = config.resolved_method
    notes: list[str] = []

    def pick(name: str | None, candidates: Sequence[str], flag: str, what: str) -> str:
        if name is not None:
            return _named(manifest, name, flag=flag, task=config.task, uri=config.data)
        return _default(manifest, candidates, flag=flag, what=what)

    source: str | None
    target: str | None = None
    if config.task == "predict":
        source = pick(config.source, _RNA_CANDIDATES, "--source", "normalized RNA")
        target = pick(config.target, _OTHER_CANDIDATES, "--target", "normalized ADT/ATAC")
        if source == target:
            msg = f"--source and --target are both {source!r}; predict one modality from another"
            raise RaymmiError(msg)
        modalities: tuple[str, ...] = (source, target)
    else:
        if config.modalities:
            modalities = tuple(
                _named(manifest, m, flag="--modalities", task=config.task, uri=config.data)
                for m in config.modalities
            )
        else:
            modalities = (
                pick(config.source, _RNA_CANDIDATES, "--source", "normalized RNA"),
                pick(config.target, _OTHER_CANDIDATES, "--target", "normalized ADT/ATAC"),
            )
        source = None
        if config.task == "embed":
            if config.source is not None:
                source = _named(
                    manifest, config.source, flag="--source", task="embed", uri=config.data
                )
            else:
                try:
                    source = _default(manifest, _RNA_CANDIDATES, flag="--source", what="RNA")
                except RaymmiError:
                    notes.append("cc_cons not computed: no normalized RNA modality (--source)")
    for name in dict.fromkeys([*modalities, *(n for n in (source, target) if n)]):
        if _scaled(manifest, name):
            notes.append(
                f"{name} holds scaled z-scores (preprocess rna.steps has scale), not the "
                "challenge's log-normalized values; preprocess without scale for its protocol"
            )
    metadata = manifest.metadata
    if config.batch_key not in metadata:
        msg = (
            f"--batch-key {config.batch_key!r} is not an obs column of {config.data!r}"
            f"{_close(config.batch_key, metadata)}; it has {list(metadata)}"
        )
        raise RaymmiError(msg)
    obs: list[str] = []
    if config.task == "embed":
        if config.label_key not in metadata:
            msg = (
                f"--label-key {config.label_key!r} is not an obs column of {config.data!r}"
                f"{_close(config.label_key, metadata)}: embed scores need cell types; it has "
                f"{list(metadata)}"
            )
            raise RaymmiError(msg)
        obs = [config.label_key, *(c for c in metadata if c.startswith(PSEUDOTIME_PREFIX))]
        if not any(c.startswith(PSEUDOTIME_PREFIX) for c in metadata):
            notes.append(f"ti_cons not computed: no {PSEUDOTIME_PREFIX}_* obs column")
    read_batches = (*config.train_batches, *config.test_batches)
    if config.task == "embed" and config.embed_cells == "test":
        read_batches = config.test_batches
    return _Plan(
        config=config,
        method=method,
        shard=shard,
        source=source,
        target=target,
        modalities=modalities,
        obs=tuple(dict.fromkeys(c for c in obs if c not in (CELL_ID, config.batch_key))),
        read_batches=read_batches,
        notes=tuple(notes),
    )


def _in_batches(table: pa.Table, batch_key: str, batches: Sequence[str]) -> pa.Array:
    column = pc.cast(table.column(batch_key), pa.string())
    return pc.is_in(column, value_set=pa.array(list(batches), pa.string()))


@ray.remote(num_cpus=1)
def _batch_counts_task(path: str, batch_key: str) -> dict[str, int]:
    fs, local = resolve(path)
    column = pq.read_table(local, columns=[batch_key], filesystem=fs).column(batch_key)
    counts = pc.value_counts(pc.cast(column, pa.string()))
    return {
        str(v): int(n)
        for v, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


def _check_batches(plan: _Plan) -> dict[str, int]:
    """Cells per batch over the whole set; the split must name present, distinct batches."""
    config = plan.config
    refs = [_batch_counts_task.remote(p, config.batch_key) for p in plan.shard.file_uris()]
    counts: dict[str, int] = {}
    for part in gather(refs, desc="task: batches", unit="file"):
        for name, n in part.items():
            counts[name] = counts.get(name, 0) + n
    shown = ", ".join(f"{b} ({n} cells)" for b, n in sorted(counts.items()))
    if len(counts) < 2:
        msg = (
            f"{config.data!r} holds fewer than two batches ({shown or 'no cells'} in "
            f"{config.batch_key!r}): the tasks hold whole batches out, so they need at least "
            "two; ingest with the right --batch-key, or use a set with more batches"
        )
        raise RaymmiError(msg)
    absent = [b for b in (*config.train_batches, *config.test_batches) if b not in counts]
    if absent:
        msg = f"batches {absent} have no cells in {config.data!r}; its batches: {shown}"
        raise RaymmiError(msg)
    return counts


# ----------------------------------------------------------------------------------------------
# reading the cells of the named batches
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Cells:
    """Gathered rows, in file order: obs, values per modality, the file of each row."""

    obs: pd.DataFrame
    values: dict[str, Matrix]
    part: np.ndarray

    def rows(self, batch_key: str, batches: Sequence[str]) -> np.ndarray:
        return self.obs[batch_key].astype(str).isin(list(batches)).to_numpy()


@ray.remote(num_cpus=1)
def _read_cells_task(
    path: str,
    batch_key: str,
    batches: tuple[str, ...],
    obs_columns: tuple[str, ...],
    modalities: tuple[Modality, ...],
) -> tuple[pd.DataFrame, dict[str, Matrix]]:
    fs, local = resolve(path)
    value_columns = [c for m in modalities for c in m.columns()]
    names = list(dict.fromkeys([CELL_ID, batch_key, *obs_columns, *value_columns]))
    table = pq.read_table(local, columns=names, filesystem=fs)
    table = table.filter(_in_batches(table, batch_key, batches))
    obs = table.select([CELL_ID, batch_key, *obs_columns]).to_pandas()
    obs[CELL_ID] = obs[CELL_ID].astype(str)
    obs[batch_key] = obs[batch_key].astype(str)
    values: dict[str, Matrix] = {}
    for m in modalities:
        if m.encoding == "sparse":
            values[m.name] = lists_to_sparse(
                table.column(indices_column(m.name)),
                table.column(values_column(m.name)),
                n_features=len(m.features),
            )
        elif table.num_rows:
            values[m.name] = np.array(list_to_dense(table.column(m.name)), dtype=np.float32)
        else:
            values[m.name] = np.zeros((0, len(m.features)), dtype=np.float32)
    return obs, values


def _read_cells(plan: _Plan) -> _Cells:
    manifest = plan.shard.manifest
    mods = tuple(manifest.modality(name) for name in plan.reads)
    config = plan.config
    refs = [
        _read_cells_task.remote(path, config.batch_key, plan.read_batches, plan.obs, mods)
        for path in plan.shard.file_uris()
    ]
    parts = gather(refs, desc=f"task {config.task}: read cells", unit="file")
    obs = pd.concat([o for o, _ in parts], ignore_index=True)
    values: dict[str, Matrix] = {}
    for m in mods:
        blocks = [v[m.name] for _, v in parts]
        if m.encoding == "sparse":
            values[m.name] = sp.vstack(blocks, format="csr")
        else:
            values[m.name] = np.vstack(blocks)
    part = np.repeat(np.arange(len(parts)), [len(o) for o, _ in parts])
    return _Cells(obs=obs, values=values, part=part)


# ----------------------------------------------------------------------------------------------
# the methods
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Result:
    """What a task produced: scores, the output rows and their columns, files, figures."""

    scores: dict[str, float]
    rows: np.ndarray  # bool mask over the gathered cells (output rows, in file order)
    columns: dict[str, np.ndarray]  # obs-like columns of the output rows
    dense: dict[str, tuple[np.ndarray, tuple[str, ...]]]  # modality → (values, features)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, Callable[[Path], None]] = dataclasses.field(default_factory=dict)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)


def _settings(method: str, model: Mapping[str, Any]) -> dict[str, Any]:
    allowed = PURE_SETTINGS[method]
    unknown = sorted(set(model) - set(allowed))
    if unknown:
        msg = (
            f"model.{unknown[0]} is not a setting of method {method!r}"
            f"{_close(unknown[0], allowed)}; it takes {list(allowed) or 'none'}"
        )
        raise RaymmiError(msg)
    return dict(model)


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


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _predict_figure(y: Matrix, prediction: np.ndarray, title: str, seed: int) -> Any:
    n = y.shape[0] * y.shape[1]
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, size=min(n, PLOT_POINTS), replace=False)
    rows, cols = np.divmod(pick, y.shape[1])
    observed = (
        np.asarray(sp.csr_matrix(y)[rows, cols]).ravel() if sp.issparse(y) else y[rows, cols]
    )
    predicted = prediction[rows, cols]
    fig = _figure(4.5, 4.2)
    ax = fig.add_subplot()
    ax.hexbin(observed, predicted, gridsize=60, bins="log", mincnt=1, cmap="viridis")
    low = float(min(observed.min(), predicted.min()))
    high = float(max(observed.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--")
    ax.set_xlabel("observed (normalized)")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    return fig


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
    fig = _figure(4.5, 3.2)
    ax = fig.add_subplot()
    ax.hist(weights, bins=40, color="tab:blue")
    ax.axvline(1.0 / n, color="tab:red", lw=1, label=f"random 1/N = {1.0 / n:.2g}")
    ax.set_xlabel("weight on the true partner")
    ax.set_ylabel("test cells")
    ax.set_title(f"{first} x {second}, {plan.method}: score {score:.4f}", fontsize=9)
    ax.legend(fontsize=8)
    result.figures["task/partner_weights.png"] = fig
    return result


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
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    labels = [k for k in scores if k not in ("cells_scored", "dims")]
    heights = [scores[k] if math.isfinite(scores[k]) else 0.0 for k in labels]
    colors = ["tab:orange" if k == "mean" else "tab:blue" for k in labels]
    ax.bar(labels, heights, color=colors)
    for i, k in enumerate(labels):
        text = f"{scores[k]:.3f}" if math.isfinite(scores[k]) else "n/a"
        ax.text(i, heights[i] + 0.01, text, ha="center", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.set_title(f"embed {plan.method} ({int(rows.sum())} cells)", fontsize=9)
    result.figures["task/embed_scores.png"] = fig
    return result


# ----------------------------------------------------------------------------------------------
# trained methods: a train-cells shard set, raymmi.run.train, one apply task per file
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Trained:
    model_name: str
    model_config: Any
    layout: BatchLayout
    settings: Mapping[str, Any]
    state_path: str
    metrics: Mapping[str, Any]
    run_id: str | None


def _model_settings(plan: _Plan) -> dict[str, Any] | None:
    """The trained model's ``model.*`` keys (task defaults, then the user's); checked early."""
    if plan.method not in MODEL_METHODS:
        return None
    config = plan.config
    name = MODEL_METHODS[plan.method]
    by_method: dict[str, dict[str, Any]] = {
        "mlp": {"source": plan.source, "target": plan.target},
        "clue": {"modalities": list(plan.modalities)},
        "umint": {"modalities": list(plan.modalities)},
        "ae": {"modalities": list(plan.modalities)},
        "jae": {
            "modalities": list(plan.modalities),
            "type_key": config.label_key,
            "cycle_key": config.phase_key,
            "batch_key": config.batch_key,
        },
        "sailerx": {"batch_key": config.batch_key},
    }
    settings = {**by_method[plan.method], **dict(config.model)}
    cls = models.model_class(name)
    model_config: Any = from_dict(cls.Config, settings, where="model")
    inputs = cls.inputs(model_config)
    manifest = plan.shard.manifest
    needed = [m for m in inputs.modalities if m not in inputs.optional]
    if plan.method == "sailerx":
        needed.append(model_config.reference)
    for m in needed:
        _named(manifest, m, flag=f"model ({name})", task=config.task, uri=config.data)
    return settings


@ray.remote(num_cpus=1)
def _subset_task(
    path: str, staging: str, index: int, batch_key: str, batches: tuple[str, ...]
) -> FileEntry | None:
    fs, local = resolve(path)
    table = pq.read_table(local, filesystem=fs)
    table = table.filter(_in_batches(table, batch_key, batches))
    if table.num_rows == 0:
        return None
    return write_part(staging, f"part-{index:05d}.parquet", table)


def _write_train_cells(plan: _Plan, uri: str, run_config: dict[str, Any]) -> Manifest:
    """The train batches' cells as a shard set of their own (all columns), for training."""
    config, shard = plan.config, plan.shard
    with ShardSetWriter(uri) as writer:
        refs = [
            _subset_task.remote(p, writer.staging, i, config.batch_key, config.train_batches)
            for i, p in enumerate(shard.file_uris())
        ]
        entries = [e for e in gather(refs, desc="task: train cells", unit="file") if e]
        return writer.commit(
            Manifest(
                kind="cells",
                files=tuple(entries),
                metadata=shard.manifest.metadata,
                modalities=shard.manifest.modalities,
                producer={"command": f"task {config.task} (train cells)", "config": run_config},
                parents=(shard.parent_ref(),),
                extra={
                    **shard.manifest.extra,
                    "subset": {"batch_key": config.batch_key, "batches": config.train_batches},
                },
            )
        )


def _train_model(
    plan: _Plan,
    settings: dict[str, Any],
    out: Path,
    ray_config: RayConfig | None,
    tracking: TrackingConfig | None,
) -> _Trained:
    config = plan.config
    _write_train_cells(plan, str(out / "_train_cells"), to_dict(config))
    label = config.label_key if config.label_key in plan.shard.manifest.metadata else None
    cls = models.model_class(MODEL_METHODS[plan.method])
    if label in cls.inputs(from_dict(cls.Config, settings, where="model")).codes:
        # train reads its --label-key beside the model's codes and fails on a column named
        # twice (jae's type_key is the label): the training's own clustering scores are skipped
        label = None
    train_config = TrainConfig(
        model_name=MODEL_METHODS[plan.method],
        data=str(out / "_train_cells"),
        out=str(out / "_train"),
        model=settings,
        optim=OptimConfig(epochs=config.epochs, seed=config.seed),
        label_key=label,
        impute=False,
    )
    metrics = train(
        train_config,
        ray_config=ray_config,
        tracking=tracking,
        tags={"raymmi.task": f"{config.task} {plan.method}"},
        run_name=f"task-{config.task}-{plan.method}-train",
    )
    model_plan, _, _ = plan_training(train_config)
    embeddings = open_shard_set(str(out / "_train" / "embeddings"), kind="cells")
    return _Trained(
        model_name=model_plan.model_name,
        model_config=model_plan.model_config,
        layout=model_plan.layout,
        settings=settings,
        state_path=str(out / "_train" / "model.pt"),
        metrics=metrics,
        run_id=embeddings.manifest.producer.get("mlflow_run_id"),
    )


@ray.remote(num_cpus=1)
def _apply_task(
    path: str,
    trained: _Trained,
    layout: BatchLayout,
    state: Mapping[str, Any],
    batch_key: str,
    batches: tuple[str, ...],
    outputs: tuple[str, ...],
) -> tuple[list[str], dict[str, np.ndarray]]:
    import torch

    from raymmi.models._batches import arrow_to_batch

    torch.set_num_threads(1)
    model = models.model_class(trained.model_name)(trained.model_config, layout.dims)
    model.load_state_dict(state)
    model.eval()
    fs, local = resolve(path)
    parquet = pq.ParquetFile(local, filesystem=fs)
    names = set(parquet.schema_arrow.names)
    columns = list(dict.fromkeys([CELL_ID, batch_key, *layout.columns(names)]))
    ids: list[str] = []
    pieces: dict[str, list[np.ndarray]] = {key: [] for key in outputs}
    for record in parquet.iter_batches(batch_size=APPLY_ROWS, columns=columns):
        table = pa.Table.from_batches([record])
        table = table.filter(_in_batches(table, batch_key, batches))
        if table.num_rows == 0:
            continue
        ids += [str(v) for v in table.column(CELL_ID).to_pylist()]
        with torch.no_grad():
            batch = arrow_to_batch(table, layout)
            for key in outputs:
                what, _, modality = key.partition(":")
                if what == "embed":
                    values = model.embed(batch)
                elif what == "impute":
                    imputed = model.impute(batch)
                    if imputed is None or modality not in imputed:
                        msg = f"model {trained.model_name!r} does not impute {modality!r}"
                        raise RaymmiError(msg)
                    values = imputed[modality]
                else:
                    values = cast(Any, model).embed_modality(batch, modality)
                pieces[key].append(values.float().numpy())
    empty = np.zeros((0, 0), np.float32)
    return ids, {k: np.concatenate(v) if v else empty for k, v in pieces.items()}


def _apply(
    plan: _Plan,
    trained: _Trained,
    cells: _Cells,
    rows: np.ndarray,
    outputs: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Pass the ``rows`` cells through the trained model, one Ray task per file.

    Only the modalities the outputs need are read (no obs codes: the test batches are
    categories the model never saw, and no model reads them to embed or impute).
    """
    import torch

    config = plan.config
    inputs = trained.layout.inputs
    needed: tuple[str, ...]
    if plan.method == "mlp":
        assert plan.source is not None
        needed = (plan.source,)
    elif plan.method == "clue":
        needed = plan.modalities
    else:
        needed = tuple(m for m in inputs.modalities if m not in inputs.optional)
    depth_keys = tuple(f"{m}_depth" for m in inputs.depths)
    layout = dataclasses.replace(
        trained.layout,
        inputs=models.Inputs(modalities=needed, depths=inputs.depths, optional=depth_keys),
    )
    state = ray.put(torch.load(trained.state_path, weights_only=True))
    batches = tuple(sorted(set(cells.obs[config.batch_key][rows].astype(str))))
    refs = [
        _apply_task.remote(p, trained, layout, state, config.batch_key, batches, outputs)
        for p in plan.shard.file_uris()
    ]
    results = gather(refs, desc=f"task: apply {trained.model_name}", unit="file")
    ids = pd.Index([i for file_ids, _ in results for i in file_ids])
    wanted = cells.obs[CELL_ID].to_numpy()[rows]
    where = ids.get_indexer(wanted)
    if (where < 0).any() or not ids.is_unique:
        msg = "internal error: the model's output cells differ from the gathered cells"
        raise RuntimeError(msg)
    return {
        key: np.concatenate([r[key] for _, r in results if len(r[key])])[where] for key in outputs
    }


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------


def _json_scores(scores: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in scores.items()}


def _write_rows(
    plan: _Plan, cells: _Cells, result: _Result, staging: str
) -> tuple[list[FileEntry], tuple[str, ...], tuple[Modality, ...]]:
    """One output part per input file that holds output rows."""
    config = plan.config
    obs = cells.obs[result.rows]
    part = cells.part[result.rows]
    columns: dict[str, np.ndarray] = {
        CELL_ID: obs[CELL_ID].to_numpy().astype(str),
        config.batch_key: obs[config.batch_key].to_numpy().astype(str),
        **result.columns,
    }
    entries = []
    for index in np.unique(part):
        take = np.flatnonzero(part == index)
        arrays: dict[str, pa.Array] = {k: pa.array(v[take]) for k, v in columns.items()}
        for name, (values, _) in result.dense.items():  # the cells layout: values + row sums
            block = np.asarray(values[take], dtype=np.float32)
            arrays[name] = dense_to_list(block)
            arrays[depth_column(name)] = pa.array(block.sum(axis=1, dtype=np.float32))
        entries.append(write_part(staging, f"part-{int(index):05d}.parquet", pa.table(arrays)))
    modalities = tuple(Modality(n, "dense", f) for n, (_, f) in result.dense.items())
    return entries, tuple(columns), modalities


def _finish(
    plan: _Plan,
    cells: _Cells,
    result: _Result,
    trained: _Trained | None,
    out: Path,
    tracking: TrackingConfig | None,
    started: float,
) -> dict[str, float]:
    config = plan.config
    cfg = to_dict(config)
    resolved = {
        "method": plan.method,
        "source": plan.source,
        "target": plan.target,
        "modalities": list(plan.modalities),
        **({"model": dict(trained.settings)} if trained is not None else {}),
    }
    cfg["resolved"] = resolved
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    scores = result.scores
    name = OUTPUT_NAMES[config.task]
    with tracked_run(
        f"task {config.task}",
        config=cfg,
        tracking=tracking,
        run_name=f"task-{config.task}-{plan.method}",
    ) as run:
        run.set_tags({"raymmi.task": config.task, "raymmi.method": plan.method})
        run.log_shard_set(config.data, plan.shard.manifest.to_dict(), context="input")
        _link_training(run, trained, tracking)
        for path, figure in result.figures.items():
            run.log_figure(figure, path)
        for path, table in result.tables.items():
            run.log_table(table, path)
        for write in result.files.values():
            write(out)
        for file in sorted(out.glob("*.npz")):
            run.log_artifact(file, "task")
        (out / "scores.json").write_text(json.dumps(_json_scores(scores), indent=2) + "\n")
        run.log_dict(_json_scores(scores), "task/scores.json")
        seconds = time.perf_counter() - started
        run.log_metrics({k: v for k, v in scores.items() if math.isfinite(v)})
        run.log_metrics({"seconds": seconds})
        notes = [*plan.notes, *result.extra.pop("notes", [])]
        if notes:
            result.extra["notes"] = notes
            run.set_tags({"raymmi.notes": " | ".join(notes)})
        run.log_dict(result.extra, "task/details.json")
        with ShardSetWriter(str(out / name)) as writer:
            entries, metadata, modalities = _write_rows(plan, cells, result, writer.staging)
            extra = {
                "task": {
                    "task": config.task,
                    "method": plan.method,
                    "train_batches": list(config.train_batches),
                    "test_batches": list(config.test_batches),
                    "scores": _json_scores(scores),
                    **result.extra,
                }
            }
            manifest = writer.commit(
                Manifest(
                    kind="cells",
                    files=tuple(entries),
                    metadata=metadata,
                    modalities=modalities,
                    producer=producer(f"task {config.task}", cfg, run),
                    parents=(plan.shard.parent_ref(),),
                    extra=extra,
                )
            )
        run.log_shard_set(str(out / name), manifest.to_dict(), context="output")
    return dict(scores)


def _link_training(run: Run, trained: _Trained | None, tracking: TrackingConfig | None) -> None:
    """Log the training's final metrics here and make its MLflow run a child of this one."""
    if trained is None or not run.enabled:
        return
    numbers = {
        f"train_{k}": float(v)
        for k, v in trained.metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    run.log_metrics(numbers)
    if trained.run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri(tracking))
        client.set_tag(trained.run_id, "mlflow.parentRunId", run.run_id)
        run.set_tags({"raymmi.train_run_id": trained.run_id})


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
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
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
