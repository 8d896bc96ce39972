"""``TaskConfig``, the tasks, their methods and the constants the task modules share."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp

from raymmi.schema import RaymmiError
from raymmi.tasks import SvdKrrConfig

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


# why an embed score can be NaN, by metric (printed instead of "nan")
NOT_COMPUTED = {
    "asw_batch": "one batch in the scored cells",
    "ilisi": "one batch in the scored cells",
    "cc_cons": "no cell-cycle genes or no RNA among the modalities",
    "ti_cons": "no pseudotime_order_* column in the data",
}


def score_text(name: str, value: float, *, batches: int | None = None) -> str:
    """A score for the terminal: its value, or ``n/a (why)`` when it could not be computed."""
    if value == value:  # not NaN
        # counts (cells, features, dims) as whole numbers, scores to four decimals
        return (
            f"{value:.0f}" if name.startswith(("cells_", "features", "dims")) else f"{value:.4f}"
        )
    why = NOT_COMPUTED.get(name, "not computable on these cells")
    if name in ("asw_batch", "ilisi") and batches is not None and batches > 1:
        why = "not computable on these cells"
    return f"n/a ({why})"
