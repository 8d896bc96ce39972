"""Settings of ``raymmi train``: ``OptimConfig``, ``TrainConfig``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from raymmi.config._base import check_choice, check_positive
from raymmi.schema import RaymmiError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and loop settings of ``raymmi train``; ``None`` takes the model's default.

    Parameters
    ----------
    lr, weight_decay
        Adam learning rate and (L2-style) weight decay.
    batch_size
        Cells per mini-batch *per worker*.
    epochs
        Passes over the training cells.
    seed
        Seed of the weights, the train/validation split and the shuffling.
    amp
        Mixed precision (bfloat16 autocast) when training on GPU; ignored on CPU.
    shuffle_buffer
        Rows of the local shuffle buffer of each worker's data iterator (0: no shuffle).
    lr_decay
        Factor on the learning rate per epoch: epoch ``e`` (0-based) trains at
        ``lr * lr_decay ** e`` (1: constant).
    drop_last
        Skip each worker's last mini-batch of an epoch when it holds fewer than ``batch_size``
        cells (PyTorch ``DataLoader(drop_last=True)``; the shuffle changes which cells).
    """

    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    seed: int = 0
    amp: bool = True
    shuffle_buffer: int = 4096
    lr_decay: float | None = None
    drop_last: bool | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "epochs"):
            value = getattr(self, name)
            if value is not None:
                check_positive(f"optim.{name}", value)
        if self.weight_decay is not None and self.weight_decay < 0:
            msg = f"optim.weight_decay={self.weight_decay!r} must be >= 0"
            raise RaymmiError(msg)
        if self.shuffle_buffer < 0:
            msg = f"optim.shuffle_buffer={self.shuffle_buffer!r} must be >= 0"
            raise RaymmiError(msg)
        if self.lr_decay is not None and not 0.0 < self.lr_decay <= 1.0:
            msg = f"optim.lr_decay={self.lr_decay!r} must be in (0, 1] (1: constant rate)"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``raymmi train MODEL``: one model trained with Ray Train from a ``cells`` shard set.

    Parameters
    ----------
    model_name
        A registered model (``raymmi.models.model_names()``).
    data
        ``cells`` shard set (usually the output of ``raymmi preprocess cells``).
    out
        Output folder: ``config.yaml``, ``model.pt``, ``metrics.json``, ``checkpoints/`` and
        the ``embeddings`` shard set (committed last).
    model
        The model's own settings (``model.*`` keys; see the model's ``Config``).
    optim
        Optimizer and loop settings (``optim.*``).
    extra_data
        SAILERX hybrid training: a ``cells`` set of ATAC-only cells trained with ``L_Inv``
        alone, one batch of them after every ``hybrid_every - 1`` paired batches.
    hybrid_every
        Interleaving period of the extra cells (the reference code: every third step).
    label_key
        ``obs`` column with known labels (``cell_type``): ARI/NMI/silhouette of the embedding
        (and of the reference embedding, if the model has one) go to ``metrics.json``.
    val_fraction
        Share of cells held out (by a hash of the cell id) for the validation loss; ``None``
        (default): the model's own, 0.1, or 0 for SAILERX (its reference trains on every cell).
    workers
        Ray Train workers (DDP processes).
    gpus_per_worker
        GPUs per worker (0: CPU and gloo; > 0: CUDA, NCCL and AMP).
    cpus_per_worker
        CPUs per worker; ``None``: 1, or less on a cluster too small to leave a CPU for the
        Ray Data readers (raymmi/run/README.md, "Ray Tune": workers must not starve the readers).
    checkpoint_every
        Epochs between checkpoints (the last epoch always checkpoints).
    keep_checkpoints
        Checkpoints kept on disk.
    max_failures
        Worker failures survived by restarting from the last checkpoint.
    embed
        At the end, embed every cell into the ``OUT/embeddings`` shard set and score it
        (``ari``, ``nmi``, ``silhouette``, ``reference_*``). Off, the run ends after its last
        checkpoint with ``model.pt`` and ``metrics.json`` (the last epoch's metrics): what a
        Ray Tune trial needs, since the search ranks trials on the per-epoch metrics and the
        winner is retrained with ``raymmi train --config best.yaml``.
    impute
        Also write the model's imputations (decoder output) next to the embedding. Off by
        default: they are dense cells x features matrices (20,000 cells x 5,000 peaks is
        400 MB), wanted only to look at denoised values.
    impute_format
        How imputations are stored: ``"float32"`` (dense), ``"float16"`` (dense, half the
        size, 3 significant digits) or ``"sparse"`` (only values with
        ``|value| >= impute_threshold``, e.g. ATAC probabilities above 0.1).
    impute_threshold
        With ``impute_format="sparse"``: the smallest absolute value kept (> 0).
    metrics_max_cells
        Cells (a seeded sample) the clustering metrics are computed on.
    score_every
        With ``label_key``: epochs between validation scores (``val_ari``, ``val_nmi``,
        ``val_silhouette`` and ``val_reference_*``, each the mean over the workers' shards of
        the validation cells), reported with the losses so a tuner can use them.
    score_all
        With ``label_key``, in ``raymmi tune``'s in-process and packed trials: at each scored
        epoch also score the embedding of every cell, training and validation (``all_ari``,
        ``all_nmi``, ``all_silhouette``; k-means with k = number of labels on up to
        ``metrics_max_cells`` cells, a seeded sample). Steadier than the validation scores
        on small sets (60 validation cells of 41 types rank configurations with more noise
        than their differences) and the score ``raymmi train`` gives the finished embedding;
        its cost is one k-means over those cells per scored epoch. Ray Train runs (``raymmi
        train``, ``--workers N``) score every cell once, after training (``ari``, ``nmi``).
    fault_injection
        Testing hook ``"rank:epoch"``: that worker kills its own process once, at the start
        of that epoch, to exercise recovery.
    """

    model_name: str
    data: str
    out: str
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optim: OptimConfig = OptimConfig()
    extra_data: str | None = None
    hybrid_every: int = 3
    label_key: str | None = None
    val_fraction: float | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    max_failures: int = 2
    embed: bool = True
    impute: bool = False
    impute_format: Literal["float32", "float16", "sparse"] = "float32"
    impute_threshold: float = 0.0
    metrics_max_cells: int = 20_000
    score_every: int = 1
    score_all: bool = False
    overwrite: bool = False
    fault_injection: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "workers",
            "checkpoint_every",
            "keep_checkpoints",
            "metrics_max_cells",
            "score_every",
        ):
            check_positive(name, getattr(self, name))
        if self.hybrid_every < 2:
            msg = f"hybrid_every={self.hybrid_every!r} must be >= 2 (one extra batch per period)"
            raise RaymmiError(msg)
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            msg = f"val_fraction={self.val_fraction!r} must be in [0, 1)"
            raise RaymmiError(msg)
        if self.gpus_per_worker < 0 or (self.cpus_per_worker or 1) <= 0:
            msg = "gpus_per_worker must be >= 0 and cpus_per_worker > 0"
            raise RaymmiError(msg)
        if self.max_failures < 0:
            msg = f"max_failures={self.max_failures!r} must be >= 0"
            raise RaymmiError(msg)
        check_choice("impute_format", self.impute_format, ["float32", "float16", "sparse"])
        if self.impute_format == "sparse" and not self.impute_threshold > 0:
            msg = (
                f"impute_format='sparse' needs impute_threshold > 0 (got "
                f"{self.impute_threshold!r}): the values below it are dropped, e.g. 0.1"
            )
            raise RaymmiError(msg)
        if self.fault_injection is not None:
            rank, sep, epoch = self.fault_injection.partition(":")
            if not (sep and rank.isdigit() and epoch.isdigit()):
                msg = f"fault_injection={self.fault_injection!r} must look like 'rank:epoch'"
                raise RaymmiError(msg)
