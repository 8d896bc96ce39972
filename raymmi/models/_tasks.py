"""Models of the NeurIPS 2021 multimodal tasks: ``mlp_predict``, ``jae``, ``clue_match``.

- ``mlp_predict`` predicts one modality from another with an MLP (3 to 5 linear layers);
  loss: mean squared error. ``impute()`` returns the prediction of the target modality.
- ``jae``, after JAE (team Amateur, the challenge's joint-embedding winner without
  pre-training; its README describes the model): an autoencoder whose latent code is cut into
  four blocks, ``[type | cycle | batch | free]``, each with a job (the loss below).
- ``clue_match``, after CLUE (Cross-Linked Unified Embedding, the matching winner): every
  modality has an encoder into every modality's latent *subspace*; the joint embedding is
  the concatenation of the subspaces, and training makes a cell's codes from either modality
  coincide, so either modality alone lands in the joint space (``embed_modality``), which is
  what matching needs.

Pure ``torch.nn.Module``s following :class:`~raymmi.models.Model`: no Ray, no MLflow, no
file I/O; hyperparameters from frozen config dataclasses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from raymmi.models._base import Batch, Dims, Inputs, Model, Outputs, register
from raymmi.schema import RaymmiError
from raymmi.tasks import MAX_EMBED_DIMS

__all__ = [
    "JAE",
    "ClueMatch",
    "ClueMatchConfig",
    "ClueMatchOutputs",
    "JAEConfig",
    "JAEOutputs",
    "MlpPredict",
    "MlpPredictConfig",
    "PredictOutputs",
]


def _fail(msg: str) -> None:
    raise RaymmiError(msg)


def _check_widths(name: str, value: tuple[int, ...]) -> None:
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value):
        _fail(f"model.{name}={value!r} must be a list of positive integers")


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        _fail(f"model.{name}={value!r} must be a finite number {'>=' if allow_zero else '>'} 0")


def _check_dropout(value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        _fail(f"model.dropout={value!r} must be in [0, 1)")


def _check_modalities(modalities: tuple[str, ...], *, at_least: int) -> None:
    if len(modalities) < at_least or any(not isinstance(m, str) or not m for m in modalities):
        _fail(f"model.modalities={modalities!r} must name at least {at_least} modalities")
    if len(set(modalities)) != len(modalities):
        _fail(f"model.modalities={modalities!r} names a modality twice")


def _mlp(widths: Sequence[int], *, dropout: float) -> nn.Sequential:
    """Linear layers ``widths[0] → ... → widths[-1]``; GELU and dropout between, none after."""
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(widths))
    for i, (a, b) in enumerate(pairs):
        layers.append(nn.Linear(a, b))
        if i < len(pairs) - 1:
            layers += [nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def _values(batch: Batch, modality: str, model: str) -> torch.Tensor:
    if modality not in batch:
        _fail(f"{model}: the batch has no {modality!r} values (model config names it)")
    return batch[modality].float()


# ----------------------------------------------------------------------------------------------
# mlp_predict
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MlpPredictConfig:
    """``model.*`` keys of ``raymmi train mlp_predict``.

    Parameters
    ----------
    source
        Modality read as the input, default ``"rna"`` (the challenge's normalized GEX).
    target
        Modality predicted, default ``"adt"``.
    hidden
        Widths of the hidden layers, 2 to 4 of them (so 3 to 5 linear layers), default
        ``(512, 512, 256)``; the last one is :meth:`MlpPredict.embed`'s dimension.
    dropout
        Dropout after every hidden layer while training, default 0.1.
    """

    source: str = "rna"
    target: str = "adt"
    hidden: tuple[int, ...] = (512, 512, 256)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _check_modalities((self.source, self.target), at_least=2)
        if not 2 <= len(self.hidden) <= 4:
            _fail(f"model.hidden={self.hidden!r} must list 2 to 4 widths (3 to 5 linear layers)")
        _check_widths("hidden", self.hidden)
        _check_dropout(self.dropout)


@dataclasses.dataclass
class PredictOutputs(Outputs):
    """:meth:`MlpPredict.forward`: ``embedding`` (n, hidden[-1]), ``prediction`` (n, n_target)."""

    embedding: torch.Tensor
    prediction: torch.Tensor


@register
class MlpPredict(Model):
    """Predict ``target`` from ``source`` with an MLP; loss: mean squared error (``MSE``).

    Batch keys: ``<source>`` (float32, always) and ``<target>`` (float32, needed by
    :meth:`loss` only; optional so that prediction batches may leave it out).
    """

    name: ClassVar[str] = "mlp_predict"
    Config: ClassVar[type] = MlpPredictConfig
    optim_defaults: ClassVar[Mapping[str, Any]] = {
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "batch_size": 256,
        "epochs": 30,
    }
    config: MlpPredictConfig

    def __init__(self, config: MlpPredictConfig, dims: Dims) -> None:
        super().__init__(config, dims)
        widths = [dims.n_features(config.source), *config.hidden]
        self.body = _mlp(widths, dropout=config.dropout)
        self.act = nn.Sequential(nn.GELU(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.hidden[-1], dims.n_features(config.target))

    @classmethod
    def inputs(cls, config: MlpPredictConfig) -> Inputs:
        return Inputs(modalities=(config.source, config.target), optional=(config.target,))

    def forward(self, batch: Batch) -> PredictOutputs:
        """The last hidden layer and the prediction of the target."""
        h = self.act(self.body(_values(batch, self.config.source, self.name)))
        return PredictOutputs(embedding=h, prediction=self.head(h))

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """``MSE`` of the prediction against the target."""
        assert isinstance(outputs, PredictOutputs)
        target = _values(batch, self.config.target, self.name)
        return {"MSE": F.mse_loss(outputs.prediction, target)}

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """The MSE alone, weight 1."""
        return {"MSE": 1.0}

    def embed(self, batch: Batch) -> torch.Tensor:
        return self(batch).embedding

    def impute(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        return {self.config.target: self(batch).prediction}


# ----------------------------------------------------------------------------------------------
# jae
# ----------------------------------------------------------------------------------------------


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; gradient times ``-1`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


@dataclasses.dataclass(frozen=True)
class JAEConfig:
    """``model.*`` keys of ``raymmi train jae``.

    Parameters
    ----------
    modalities
        Modalities encoded jointly, default ``("rna", "adt")``.
    input_dim
        Width of each modality's first, linear layer, default 100: JAE reduced each modality
        by TruncatedSVD before concatenating; here a learned linear projection does that.
    hidden
        Widths of the encoder's hidden layers (mirrored by the decoder), default ``(256,)``.
    type_dim, cycle_dim, batch_dim, free_dim
        Sizes of the latent blocks (defaults 20, 5, 5, 20; 50 in all, at most 100).
    dropout
        Dropout after hidden layers, default 0.1.
    weight_type, weight_cycle, weight_batch
        Weights of the cell-type, cell-cycle and batch terms, default 1 each.
    batch_term
        ``"uniform"`` (JAE's): the batch head's softmax is pushed towards uniform;
        ``"adversarial"``: the head learns to predict the batch while a reversed gradient
        makes the encoder defeat it.
    type_key, cycle_key, batch_key
        ``obs`` columns read as codes, defaults ``cell_type``, ``phase``, ``batch``.
    """

    modalities: tuple[str, ...] = ("rna", "adt")
    input_dim: int = 100
    hidden: tuple[int, ...] = (256,)
    type_dim: int = 20
    cycle_dim: int = 5
    batch_dim: int = 5
    free_dim: int = 20
    dropout: float = 0.1
    weight_type: float = 1.0
    weight_cycle: float = 1.0
    weight_batch: float = 1.0
    batch_term: Literal["uniform", "adversarial"] = "uniform"
    type_key: str = "cell_type"
    cycle_key: str = "phase"
    batch_key: str = "batch"

    def __post_init__(self) -> None:
        _check_modalities(self.modalities, at_least=1)
        _check_widths("hidden", self.hidden)
        blocks = (self.input_dim, self.type_dim, self.cycle_dim, self.batch_dim, self.free_dim)
        _check_widths("input_dim/type_dim/cycle_dim/batch_dim/free_dim", blocks)
        if self.latent_dim > MAX_EMBED_DIMS:
            _fail(
                f"model latent blocks sum to {self.latent_dim}, above the challenge's "
                f"{MAX_EMBED_DIMS} embedding dimensions; shrink type_dim/cycle_dim/batch_dim/"
                "free_dim"
            )
        _check_dropout(self.dropout)
        for name in ("weight_type", "weight_cycle", "weight_batch"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        if self.batch_term not in ("uniform", "adversarial"):
            _fail(f"model.batch_term={self.batch_term!r} is not one of ['adversarial', 'uniform']")

    @property
    def latent_dim(self) -> int:
        """Width of the whole latent code (the embedding)."""
        return self.type_dim + self.cycle_dim + self.batch_dim + self.free_dim


@dataclasses.dataclass
class JAEOutputs(Outputs):
    """:meth:`JAE.forward`: the code ``z`` (n, latent_dim), ``recon`` (n, sum of features)."""

    z: torch.Tensor
    recon: torch.Tensor


@register
class JAE(Model):
    """JAE-like joint autoencoder with a latent code split by purpose.

    The modalities' values each pass a linear layer (``input_dim``), are concatenated and
    encoded to ``z = [type | cycle | batch | free]``; the decoder reconstructs every modality
    from ``z``. The loss, averaged over the cells of the mini-batch, is

    ``sum_m mse_m + weight_type * CE(type head(z_type), cell_type)
    + weight_cycle * CE(cycle head(z_cycle), phase) + weight_batch * batch term``

    with ``mse_m`` the mean squared error of modality m over its features, each head a linear
    classifier on its block, and the batch term either JAE's cross-entropy of the batch head's
    softmax against the uniform distribution (``batch_term="uniform"``: the batch block should
    predict the batch "as randomly as possible") or, with ``"adversarial"``, the head's
    cross-entropy against the true batch through a gradient-reversal layer. The free block has
    no term. The logged, weighted terms are ``MSE_<m>``, ``weight_type_CE_type``,
    ``weight_cycle_CE_cycle`` and ``weight_batch_L_batch``. A code below 0 (unknown label)
    drops that cell from its term, and a code column
    missing from the batch drops the term: JAE's test-time fine-tuning used reconstruction only.
    Departure from JAE: it regressed the S and G2M scores; the batch contract carries category
    codes, so the cycle block classifies the phase (``G1``/``S``/``G2M``).

    Batch keys: every ``<modality>`` (float32), and int64 codes of ``type_key``,
    ``cycle_key`` and ``batch_key`` (each optional). :meth:`embed` returns the whole ``z``.
    """

    name: ClassVar[str] = "jae"
    Config: ClassVar[type] = JAEConfig
    optim_defaults: ClassVar[Mapping[str, Any]] = {
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "batch_size": 256,
        "epochs": 50,
    }
    config: JAEConfig

    def __init__(self, config: JAEConfig, dims: Dims) -> None:
        super().__init__(config, dims)
        self.sizes = [dims.n_features(m) for m in config.modalities]
        self.project = nn.ModuleList(nn.Linear(n, config.input_dim) for n in self.sizes)
        joint = config.input_dim * len(self.sizes)
        self.encoder = _mlp([joint, *config.hidden, config.latent_dim], dropout=config.dropout)
        self.encoder_act = nn.Sequential(nn.GELU(), nn.Dropout(config.dropout))
        widths = [config.latent_dim, *reversed(config.hidden), sum(self.sizes)]
        self.decoder = _mlp(widths, dropout=config.dropout)
        self.type_head = nn.Linear(config.type_dim, dims.n_categories(config.type_key))
        self.cycle_head = nn.Linear(config.cycle_dim, dims.n_categories(config.cycle_key))
        self.batch_head = nn.Linear(config.batch_dim, dims.n_categories(config.batch_key))

    @classmethod
    def inputs(cls, config: JAEConfig) -> Inputs:
        codes = (config.type_key, config.cycle_key, config.batch_key)
        return Inputs(modalities=config.modalities, codes=codes, optional=codes)

    def forward(self, batch: Batch) -> JAEOutputs:
        """Project and encode the modalities to ``z``, decode ``z`` to every modality."""
        xs = [_values(batch, m, self.name) for m in self.config.modalities]
        h = torch.cat([p(x) for p, x in zip(self.project, xs, strict=True)], dim=1)
        z = self.encoder(self.encoder_act(h))
        return JAEOutputs(z=z, recon=self.decoder(z))

    def _blocks(self, z: torch.Tensor) -> list[torch.Tensor]:
        c = self.config
        return list(torch.split(z, [c.type_dim, c.cycle_dim, c.batch_dim, c.free_dim], dim=1))

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """``MSE_<m>`` per modality, the type and cycle cross-entropies, the batch term."""
        assert isinstance(outputs, JAEOutputs)
        c = self.config
        targets = [_values(batch, m, self.name) for m in c.modalities]
        pieces = torch.split(outputs.recon, self.sizes, dim=1)
        pairs = zip(c.modalities, pieces, targets, strict=True)
        values = {f"MSE_{m}": F.mse_loss(p, t) for m, p, t in pairs}
        z_type, z_cycle, z_batch, _ = self._blocks(outputs.z)
        zero = outputs.z.new_zeros(())
        values["weight_type_CE_type"] = _coded_ce(
            self.type_head(z_type), batch.get(c.type_key), zero
        )
        values["weight_cycle_CE_cycle"] = _coded_ce(
            self.cycle_head(z_cycle), batch.get(c.cycle_key), zero
        )
        codes = batch.get(c.batch_key)
        if codes is None:
            values["weight_batch_L_batch"] = zero
        elif c.batch_term == "uniform":
            values["weight_batch_L_batch"] = -F.log_softmax(self.batch_head(z_batch), dim=1).mean()
        else:
            reversed_z = _ReverseGradient.apply(z_batch)
            values["weight_batch_L_batch"] = _coded_ce(self.batch_head(reversed_z), codes, zero)
        return values

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """1 per modality's MSE, ``weight_type``, ``weight_cycle``, ``weight_batch``."""
        c = self.config
        return {
            **{f"MSE_{m}": 1.0 for m in c.modalities},
            "weight_type_CE_type": c.weight_type,
            "weight_cycle_CE_cycle": c.weight_cycle,
            "weight_batch_L_batch": c.weight_batch,
        }

    def embed(self, batch: Batch) -> torch.Tensor:
        return self(batch).z


def _coded_ce(
    logits: torch.Tensor, codes: torch.Tensor | None, zero: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy over the cells with a known code (>= 0); 0 when there is none."""
    if codes is None:
        return zero
    known = codes >= 0
    if not bool(known.any()):
        return zero
    return F.cross_entropy(logits[known], codes[known].long())


# ----------------------------------------------------------------------------------------------
# clue_match
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClueMatchConfig:
    """``model.*`` keys of ``raymmi train clue_match``.

    Parameters
    ----------
    modalities
        The paired modalities, at least two, default ``("rna", "adt")``; each owns one latent
        subspace.
    subspace_dim
        Width of each subspace, default 32 (the joint embedding has
        ``subspace_dim * len(modalities)`` dimensions, at most 100).
    hidden
        Hidden widths of every encoder and decoder, default ``(256,)``.
    dropout
        Dropout after hidden layers, default 0.1.
    temperature
        Temperature of the contrastive term on cosine similarities, default 0.1.
    weight_cross, weight_align, weight_contrast
        Weights of cross-reconstruction, subspace alignment and contrastive terms, default 1.
    """

    modalities: tuple[str, ...] = ("rna", "adt")
    subspace_dim: int = 32
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.1
    temperature: float = 0.1
    weight_cross: float = 1.0
    weight_align: float = 1.0
    weight_contrast: float = 1.0

    def __post_init__(self) -> None:
        _check_modalities(self.modalities, at_least=2)
        _check_widths("subspace_dim", (self.subspace_dim,))
        _check_widths("hidden", self.hidden)
        if self.subspace_dim * len(self.modalities) > MAX_EMBED_DIMS:
            _fail(
                f"model.subspace_dim={self.subspace_dim} x {len(self.modalities)} modalities "
                f"exceeds the challenge's {MAX_EMBED_DIMS} embedding dimensions"
            )
        _check_dropout(self.dropout)
        _check_positive("temperature", self.temperature)
        for name in ("weight_cross", "weight_align", "weight_contrast"):
            _check_positive(name, getattr(self, name), allow_zero=True)


@dataclasses.dataclass
class ClueMatchOutputs(Outputs):
    """:meth:`ClueMatch.forward`: each present modality's code in every subspace."""

    codes: dict[str, list[torch.Tensor]]

    def views(self) -> dict[str, torch.Tensor]:
        """Each modality's view of the joint embedding, (n, subspace_dim * n_modalities)."""
        return {m: torch.cat(c, dim=1) for m, c in self.codes.items()}


@register
class ClueMatch(Model):
    """CLUE-like cross-linked encoders: modality-specific subspaces, one joint embedding.

    For modalities ``m`` and subspaces ``k`` (one per modality), encoder ``E[m][k]`` maps
    modality m's values to subspace k (``subspace_dim``), and decoder ``D[k]`` maps subspace
    k back to modality k's values. The loss, over the paired cells of a mini-batch, is

    ``sum_k mse(D[k](E[k][k](x_k)), x_k)``                   (self-reconstruction)
    ``+ weight_cross * sum_{m != k} mse(D[k](E[m][k](x_m)), x_k)``   (cross-reconstruction)
    ``+ weight_align * sum_k mean_{m < m'} mse(E[m][k](x_m), E[m'][k](x_m'))``  (alignment)
    ``+ weight_contrast * mean_{m < m'} InfoNCE(j_m, j_m')``             (contrastive)

    where ``j_m = concat_k E[m][k](x_m)`` is modality m's view of the joint embedding and
    InfoNCE is the symmetric cross-entropy of cosine similarities / ``temperature`` with the
    true partner as the target among the mini-batch's cells: alignment pulls a cell's two
    views together, the contrastive term keeps different cells apart (so the codes cannot
    collapse). The four lines are logged, weighted, as ``L_self``, ``weight_cross_L_cross``,
    ``weight_align_L_align`` and ``weight_contrast_L_contrast``. Departures from CLUE: no
    variational codes and no adversarial batch mixing.

    Batch keys: every ``<modality>`` (float32); all of them for :meth:`loss`, any one for
    :meth:`embed_modality` (so they are optional). :meth:`embed` averages the views of the
    modalities present.
    """

    name: ClassVar[str] = "clue_match"
    Config: ClassVar[type] = ClueMatchConfig
    optim_defaults: ClassVar[Mapping[str, Any]] = {
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "batch_size": 512,
        "epochs": 50,
    }
    config: ClueMatchConfig

    def __init__(self, config: ClueMatchConfig, dims: Dims) -> None:
        super().__init__(config, dims)
        d, hidden = config.subspace_dim, config.hidden
        self.sizes = {m: dims.n_features(m) for m in config.modalities}
        self.encoders = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    _mlp([self.sizes[m], *hidden, d], dropout=config.dropout)
                    for _ in config.modalities
                )
                for m in config.modalities
            }
        )
        self.decoders = nn.ModuleList(
            _mlp([d, *reversed(hidden), self.sizes[k]], dropout=config.dropout)
            for k in config.modalities
        )

    @classmethod
    def inputs(cls, config: ClueMatchConfig) -> Inputs:
        return Inputs(modalities=config.modalities, optional=config.modalities)

    def codes(self, batch: Batch, modality: str) -> list[torch.Tensor]:
        """Modality ``modality``'s code in every subspace, each (n, subspace_dim)."""
        if modality not in self.sizes:
            _fail(f"clue_match: {modality!r} is not one of model.modalities {list(self.sizes)}")
        x = _values(batch, modality, self.name)
        encoders = cast(nn.ModuleList, self.encoders[modality])
        return [encoder(x) for encoder in encoders]

    def embed_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """One modality's view of the joint embedding, (n, subspace_dim * n_modalities).

        Both modalities' views live in the same space, so matching compares them directly.
        """
        return torch.cat(self.codes(batch, modality), dim=1)

    def forward(self, batch: Batch) -> ClueMatchOutputs:
        """Every present modality's codes in every subspace."""
        return ClueMatchOutputs(
            codes={m: self.codes(batch, m) for m in self.config.modalities if m in batch}
        )

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """Self- and cross-reconstruction, alignment and contrastive terms, unweighted."""
        assert isinstance(outputs, ClueMatchOutputs)
        c = self.config
        missing = [m for m in c.modalities if m not in batch]
        if missing:
            _fail(f"clue_match: training needs every modality; the batch lacks {missing}")
        codes = outputs.codes
        x = {m: batch[m].float() for m in c.modalities}
        self_mse = codes[c.modalities[0]][0].new_zeros(())
        cross_mse = self_mse
        for k, (target, decoder) in enumerate(zip(c.modalities, self.decoders, strict=True)):
            for source in c.modalities:
                error = F.mse_loss(decoder(codes[source][k]), x[target])
                if source == target:
                    self_mse = self_mse + error
                else:
                    cross_mse = cross_mse + error
        pairs = list(itertools.combinations(c.modalities, 2))
        align = sum(
            (
                torch.stack([F.mse_loss(codes[a][k], codes[b][k]) for a, b in pairs]).mean()
                for k in range(len(c.modalities))
            ),
            start=self_mse.new_zeros(()),
        )
        views = {m: F.normalize(torch.cat(codes[m], dim=1), dim=1) for m in c.modalities}
        target_index = torch.arange(views[c.modalities[0]].shape[0], device=self_mse.device)
        contrast = torch.stack(
            [
                0.5
                * (
                    F.cross_entropy(views[a] @ views[b].T / c.temperature, target_index)
                    + F.cross_entropy(views[b] @ views[a].T / c.temperature, target_index)
                )
                for a, b in pairs
            ]
        ).mean()
        return {
            "L_self": self_mse,
            "weight_cross_L_cross": cross_mse,
            "weight_align_L_align": align,
            "weight_contrast_L_contrast": contrast,
        }

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """1 on self-reconstruction, ``weight_cross``, ``weight_align``, ``weight_contrast``."""
        c = self.config
        return {
            "L_self": 1.0,
            "weight_cross_L_cross": c.weight_cross,
            "weight_align_L_align": c.weight_align,
            "weight_contrast_L_contrast": c.weight_contrast,
        }

    def embed(self, batch: Batch) -> torch.Tensor:
        views = list(self(batch).views().values())
        if not views:
            _fail(f"clue_match: the batch has none of the modalities {list(self.sizes)}")
        return torch.stack(views).mean(dim=0)
