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
class LossOutput:
    """The scalar to minimize and its named terms (detached floats are logged per epoch)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def floats(self) -> dict[str, float]:
        """Every term, and ``loss`` (the total), as Python floats."""
        out = {name: float(value.detach()) for name, value in self.terms.items()}
        out["loss"] = float(self.total.detach())
        return out


class Model(nn.Module):
    """Base class of the trainable models.

    Subclasses set :attr:`name` and :attr:`Config` (a frozen dataclass whose fields are the
    ``model.*`` keys of the training config, each with the default the docs cite), and
    implement :meth:`inputs`, :meth:`loss` and :meth:`embed` (and :meth:`impute` where the
    model can impute).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    optim_defaults: ClassVar[Mapping[str, Any]] = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "batch_size": 128,
        "epochs": 20,
    }

    def __init__(self, config: Any, dims: Dims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims

    @classmethod
    def inputs(cls, config: Any) -> Inputs:
        """The batch keys this model needs under ``config``."""
        raise NotImplementedError

    def loss(self, batch: Batch, *, epoch: int) -> LossOutput:
        """The training objective on one mini-batch (``epoch`` drives annealing schedules)."""
        raise NotImplementedError

    def embed(self, batch: Batch) -> torch.Tensor:
        """The cells' embedding (latent means), float32 ``(n, latent_dim)``."""
        raise NotImplementedError

    def impute(self, batch: Batch) -> Mapping[str, torch.Tensor] | None:
        """Imputed values per modality name, or ``None`` if the model does not impute."""
        return None

    def reference(self, batch: Batch) -> torch.Tensor | None:
        """The embedding this model was given to align to (SAILERX), else ``None``."""
        return None

    def loss_weights(self, *, epoch: int) -> Mapping[str, float] | None:
        """The loss as weighted terms: ``loss(...).total == sum(w[t] * terms[t])``, or None.

        A model that states it (and holds no batch norm) can be trained packed with others of
        its architecture (:mod:`raymmi.models._pack`): each member's weights then come from
        its own config, the terms from the shared stacked forward.
        """
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
