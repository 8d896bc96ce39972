"""The contract every trainable model meets, and the registry ``raymmi train MODEL`` looks in.

A model is a pure ``torch.nn.Module``: it never reads files, never imports Ray or MLflow. The
training layer (``raymmi.run``) reads a ``cells`` shard set, builds a *batch* (a mapping of
name → tensor, described below) for every mini-batch, and calls :meth:`Model.loss`. What a
model needs from the data it declares in :meth:`Model.inputs`; the sizes it learns from
:class:`Dims` when it is built.

Batch keys (all tensors on the model's device, rows = cells of the mini-batch):

- ``<modality>``: float32 ``(n, n_features)`` dense values of a modality the model asked for
  (sparse rows are densified per batch by the loader, never per row).
- ``<modality>_depth``: float32 ``(n,)`` row sums of that modality as stored (raw depth).
- ``<obs column>``: int64 ``(n,)`` category codes of an ``obs`` column the model asked for
  (e.g. ``batch``), in the order of :attr:`Dims.categories`.

A key listed in :attr:`Inputs.optional` may be absent: SAILERX's ATAC-only cells in hybrid
training arrive without the reference embedding, and the model then uses only the terms that
do not need it.

The contract, in three calls (the training loop's order):

1. ``outputs = model(batch)``: :meth:`Model.forward` runs the network once and returns the
   model's own small :class:`Outputs` dataclass (latent means, reconstructions ...): what
   :meth:`Model.loss` needs. Sampling and input corruption happen here, in training mode.
2. ``model.loss(batch, outputs, kl_weight=w)`` returns a :class:`LossOutput` whose ``terms``
   are the paper's named terms, *already weighted* (``gamma_L_Local``, ``lambda_i_MSE_rna``
   ...), and ``total == sum(terms.values())`` exactly. The base class builds it from two
   methods each model implements: :meth:`Model.unweighted_terms` (each term's value before
   its weight, under the same name) and :meth:`Model.loss_weights` (each term's weight), so
   a packed model (:mod:`raymmi.models._pack`) can apply K members' weights to one stacked
   forward. ``subtotals`` (e.g. SAILERX's ``L_Inv``) are logged beside the terms, never
   added again.
3. ``kl_weight`` is the annealing weight at the current epoch: the training loop computes it
   with :func:`kl_schedule` from :func:`annealing` of the model config (SAILERX's
   ``warmup_epochs``, ``kl_cycle``); the model holds no schedule, and models without a KL
   term ignore it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from raymmi.schema import RaymmiError

Batch = Mapping[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a model reads from a ``cells`` shard set.

    Parameters
    ----------
    modalities
        Modality names whose values the batch must carry (densified).
    depths
        Modality names whose ``<modality>_depth`` column the batch must carry.
    codes
        ``obs`` columns turned into int64 category codes (``batch``, ``cell_type`` ...).
    optional
        Batch keys (from the three lists above) that may be missing in some batches.
    """

    modalities: tuple[str, ...] = ()
    depths: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def keys(self) -> tuple[str, ...]:
        """Every batch key these inputs produce."""
        return (
            *self.modalities,
            *(f"{m}_depth" for m in self.depths),
            *self.codes,
        )


@dataclasses.dataclass(frozen=True)
class Dims:
    """Sizes a model is built with, read from the shard set's manifest (and the data).

    Parameters
    ----------
    features
        Modality name → its feature names (peaks as ``chr-start-end`` for ATAC).
    categories
        ``obs`` column → its categories, in code order.
    depth_stats
        Modality name → (mean, sd) of ``log1p(depth)`` over the training cells, for models
        that standardize depth as a covariate.
    """

    features: Mapping[str, tuple[str, ...]]
    categories: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    depth_stats: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def n_features(self, modality: str) -> int:
        """Number of features of ``modality``; a :class:`RaymmiError` if it is not there."""
        if modality not in self.features:
            msg = f"modality {modality!r} is not in the data; present: {sorted(self.features)}"
            raise RaymmiError(msg)
        return len(self.features[modality])

    def n_categories(self, column: str) -> int:
        """Number of categories of an ``obs`` column."""
        if column not in self.categories:
            msg = f"obs column {column!r} is not in the data; present: {sorted(self.categories)}"
            raise RaymmiError(msg)
        return len(self.categories[column])


@dataclasses.dataclass
class Outputs:
    """Base of the models' forward outputs (each model subclasses it with its tensors)."""


@dataclasses.dataclass
class LossOutput:
    """The scalar to minimize and its named, weighted terms (detached floats are logged).

    ``total`` is ``sum(terms.values())``; ``subtotals`` are named sums of some terms (logged,
    not added to ``total``).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    subtotals: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def floats(self) -> dict[str, float]:
        """Every term, every subtotal, and ``loss`` (the total), as Python floats."""
        out = {name: float(value.detach()) for name, value in self.terms.items()}
        out.update({name: float(value.detach()) for name, value in self.subtotals.items()})
        out["loss"] = float(self.total.detach())
        return out


def weighted_sum(
    values: Mapping[str, torch.Tensor], weights: Mapping[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, terms)``: ``terms[t] = weights[t] * values[t]`` and their sum, in order.

    A term of ``weights`` missing from ``values`` (an optional input absent from the batch)
    is left out. Weights may be floats or tensors (a pack's per-member weights).
    """
    terms = {name: weights[name] * values[name] for name in weights if name in values}
    unknown = sorted(set(values) - set(weights))
    if unknown:
        msg = f"loss terms {unknown} have no weight in loss_weights"
        raise RaymmiError(msg)
    total = None
    for value in terms.values():
        total = value if total is None else total + value
    if total is None:
        msg = "the loss has no term on this batch"
        raise RaymmiError(msg)
    return total, terms


def kl_schedule(epoch: int, *, warmup_epochs: int, kl_cycle: int) -> float:
    """Weight of the KL terms at ``epoch`` (0-based): warm-up, then cyclic annealing.

    0 for ``epoch < warmup_epochs``; then ``min(1, 2 * t / kl_cycle)`` with
    ``t = (epoch - warmup_epochs) % kl_cycle``: each cycle ramps linearly from 0 to 1 over its
    first half and holds 1 over the second; 1 when ``kl_cycle == 0``.
    """
    if epoch < warmup_epochs:
        return 0.0
    if kl_cycle == 0:
        return 1.0
    t = (epoch - warmup_epochs) % kl_cycle
    return min(1.0, 2.0 * t / kl_cycle)


def annealing(config: Any) -> dict[str, int]:
    """The :func:`kl_schedule` settings of a model config (``warmup_epochs``, ``kl_cycle``).

    A config without them gets ``{warmup_epochs: 0, kl_cycle: 0}``: weight 1 at every epoch.
    """
    return {
        "warmup_epochs": int(getattr(config, "warmup_epochs", 0)),
        "kl_cycle": int(getattr(config, "kl_cycle", 0)),
    }


class Model(nn.Module):
    """Base class of the trainable models.

    Subclasses set :attr:`name` and :attr:`Config` (a frozen dataclass whose fields are the
    ``model.*`` keys of the training config, each with the default the docs cite), and
    implement :meth:`inputs`, :meth:`forward`, :meth:`unweighted_terms`, :meth:`loss_weights`
    and :meth:`embed` (and :meth:`impute` where the model can impute). A model whose forward
    runs inside ``vmap`` (no batch norm, no custom autograd function) sets :attr:`packable`
    and can be trained packed with others of its architecture (:mod:`raymmi.models._pack`).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    optim_defaults: ClassVar[Mapping[str, Any]] = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "batch_size": 128,
        "epochs": 20,
    }
    # Share of cells ``raymmi train`` holds out for the validation loss when ``val_fraction``
    # is not given (a model whose reference trains on every cell sets 0).
    val_fraction: ClassVar[float] = 0.1
    packable: ClassVar[bool] = False

    def __init__(self, config: Any, dims: Dims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims

    @classmethod
    def inputs(cls, config: Any) -> Inputs:
        """The batch keys this model needs under ``config``."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Outputs:
        """One pass of the network over ``batch``: the model's :class:`Outputs`."""
        raise NotImplementedError

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """Each loss term's value before its weight, keyed by the weighted term's name."""
        raise NotImplementedError

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """Each term's weight (from the config, times ``kl_weight`` on KL terms)."""
        raise NotImplementedError

    def loss(self, batch: Batch, outputs: Outputs, *, kl_weight: float = 1.0) -> LossOutput:
        """The training objective on one mini-batch: weighted terms adding up to ``total``.

        ``kl_weight`` is the annealing weight of the KL terms (:func:`kl_schedule`); models
        without KL terms ignore it.
        """
        values = self.unweighted_terms(batch, outputs)
        total, terms = weighted_sum(values, self.loss_weights(kl_weight=kl_weight))
        return LossOutput(total=total, terms=terms)

    def objective(self, batch: Batch, *, kl_weight: float = 1.0) -> LossOutput:
        """``loss(batch, self(batch), kl_weight=kl_weight)``: forward and loss in one call."""
        return self.loss(batch, self(batch), kl_weight=kl_weight)

    def embed(self, batch: Batch) -> torch.Tensor:
        """The cells' embedding (latent means), float32 ``(n, latent_dim)``."""
        raise NotImplementedError

    def impute(self, batch: Batch) -> Mapping[str, torch.Tensor] | None:
        """Imputed values per modality name, or ``None`` if the model does not impute."""
        return None

    def reference(self, batch: Batch) -> torch.Tensor | None:
        """The embedding this model was given to align to (SAILERX), else ``None``."""
        return None


_REGISTRY: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: make ``cls`` trainable as ``raymmi train <cls.name>``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        msg = f"two models are registered as {cls.name!r}"
        raise RaymmiError(msg)
    _REGISTRY[cls.name] = cls
    return cls


def model_class(name: str) -> type[Model]:
    """The model registered as ``name``; a :class:`RaymmiError` lists the known ones."""
    if name not in _REGISTRY:
        msg = f"unknown model {name!r}; choose one of {sorted(_REGISTRY)}"
        raise RaymmiError(msg)
    return _REGISTRY[name]


def model_names() -> tuple[str, ...]:
    """Names of every registered model, sorted."""
    return tuple(sorted(_REGISTRY))
