"""Autoencoder baselines on concatenated modalities: ``ae``, ``dae`` (denoising), ``sae`` (sparse).

The baselines UMINT is compared with (the UMINT repository's ``Proposed/autoencoder.py``,
read, not copied; the paper's comparisons use one hidden layer of 128 and a bottleneck of 64).
All three concatenate the modalities' columns, encode them through ``hidden`` ReLU layers into a
ReLU bottleneck, decode through the mirrored ReLU layers to a linear output, and minimize

``mse + alpha * sum_layers mean_cells sum_units |h| + beta * sum ||W||^2``

with ``mse`` the mean squared error over all concatenated features and cells (Keras'
``loss="mse"`` on one output), ``h`` every hidden activation (bottleneck included; Keras
``activity_regularizer=l1(alpha)``, which Keras divides by the batch size) and ``W`` every
weight matrix but the output layer's (``kernel_regularizer=l2(beta)``; biases are not
penalized). Logged as the weighted terms ``MSE``, ``alpha_L_activity`` and ``beta_L_weights``
(and ``sparsity_L_bottleneck`` for ``sae``), which add up to ``loss``. Initialization as the
reference: He-uniform weights and bias 0.1 on the ReLU layers,
Glorot-uniform weights and bias 0 on the linear output.

- ``dae`` corrupts its input while training (Gaussian noise of sd ``noise_sd``, 0.01 in the
  reference, and optionally masking a ``dropout`` fraction of inputs to 0) and reconstructs the
  clean input. Fresh noise is drawn per mini-batch (the reference adds one fixed noise draw to
  the whole data set).
- ``sae`` adds ``sparsity * mean_cells sum_units |bottleneck|``: an L1 sparsity penalty on the
  bottleneck code. (The reference's ``SAE`` uses a KL sparsity regularizer on every layer whose
  formula has an operator-precedence slip; an L1 code penalty is the standard sparse AE.)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from raymmi.models._base import Batch, Dims, Inputs, Model, Outputs, register
from raymmi.schema import RaymmiError

__all__ = ["AE", "DAE", "SAE", "AEConfig", "AEOutputs", "DAEConfig", "SAEConfig"]

# Reference notebooks (``Proposed/*_AE.ipynb``): Keras Adam defaults, 25 epochs, batch 16.
KERAS_OPTIM_DEFAULTS: Mapping[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 16,
    "epochs": 25,
}


def _fail(msg: str) -> None:
    raise RaymmiError(msg)


def check_modalities(modalities: tuple[str, ...]) -> None:
    """Raise a :class:`RaymmiError` unless ``modalities`` is a non-empty tuple of unique names."""
    if len(modalities) == 0 or any(not isinstance(m, str) or not m for m in modalities):
        _fail(f"model.modalities={modalities!r} must be a non-empty list of modality names")
    if len(set(modalities)) != len(modalities):
        _fail(f"model.modalities={modalities!r} names a modality twice")


def check_widths(name: str, value: tuple[int, ...], *, allow_empty: bool = False) -> None:
    """Raise a :class:`RaymmiError` unless every width is a positive integer."""
    if (not allow_empty and len(value) == 0) or any(
        not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value
    ):
        _fail(f"model.{name}={value!r} must be a non-empty list of positive integers")


def check_non_negative(name: str, value: float) -> None:
    """Raise a :class:`RaymmiError` unless ``value`` is finite and >= 0."""
    if not (math.isfinite(value) and value >= 0):
        _fail(f"model.{name}={value!r} must be a finite number >= 0")


def hidden_linear(n_in: int, n_out: int) -> nn.Linear:
    """A ReLU layer's ``Linear`` initialized as Keras ``he_uniform`` with bias 0.1."""
    layer = nn.Linear(n_in, n_out)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")  # U(±sqrt(6 / fan_in))
    nn.init.constant_(layer.bias, 0.1)
    return layer


def output_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear output layer initialized as Keras ``GlorotUniform`` with bias 0."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def activity_l1(activations: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_layers mean_cells sum_units |h|`` (Keras' batch-averaged activity L1)."""
    return torch.stack([h.abs().sum(dim=1).mean() for h in activations]).sum()


def weight_l2(layers: Sequence[nn.Linear]) -> torch.Tensor:
    """``sum ||W||^2`` over the weight matrices of ``layers`` (biases excluded)."""
    return torch.stack([layer.weight.pow(2).sum() for layer in layers]).sum()


def modality_values(batch: Batch, modalities: Sequence[str], model: str) -> list[torch.Tensor]:
    """The batch's float32 matrices of ``modalities``; a clear error names a missing one."""
    out = []
    for m in modalities:
        if m not in batch:
            _fail(f"{model}: the batch has no {m!r} column (model.modalities)")
        out.append(batch[m].float())
    return out


@dataclasses.dataclass(frozen=True)
class AEConfig:
    """``model.*`` keys of ``raymmi train ae`` (and the shared keys of ``dae``, ``sae``).

    Parameters
    ----------
    modalities
        Modalities concatenated as the input, default ``("rna_hvg", "adt_clr")``: scaled
        log-normalized RNA HVGs and CLR ADT, UMINT's inputs (``raymmi preprocess cells``).
    hidden
        Widths of the ReLU layers between input and bottleneck (mirrored in the decoder),
        default ``(128,)`` (the reference notebooks' ``encoding_dim1``).
    bottleneck
        Width of the ReLU bottleneck (the embedding), default 64 (UMINT's).
    alpha
        Weight of the activity L1 on every hidden activation, default 1e-4 (as UMINT, the
        reference's ``lambda_act``).
    beta
        Weight of the L2 penalty on the weight matrices, default 1e-3 (as UMINT, the
        reference's ``lambda_weight``).
    """

    modalities: tuple[str, ...] = ("rna_hvg", "adt_clr")
    hidden: tuple[int, ...] = (128,)
    bottleneck: int = 64
    alpha: float = 1e-4
    beta: float = 1e-3

    def __post_init__(self) -> None:
        check_modalities(self.modalities)
        check_widths("hidden", self.hidden, allow_empty=True)
        check_widths("bottleneck", (self.bottleneck,))
        check_non_negative("alpha", self.alpha)
        check_non_negative("beta", self.beta)


@dataclasses.dataclass(frozen=True)
class DAEConfig(AEConfig):
    """``model.*`` keys of ``raymmi train dae``: :class:`AEConfig`'s and the input corruption.

    Parameters
    ----------
    noise_sd
        Sd of the Gaussian noise added to the input while training, default 0.01 (reference).
    dropout
        Fraction of input entries set to 0 while training (masking noise), default 0 (the
        reference uses Gaussian noise only); in [0, 1).
    """

    noise_sd: float = 0.01
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("noise_sd", self.noise_sd)
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            _fail(f"model.dropout={self.dropout!r} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class SAEConfig(AEConfig):
    """``model.*`` keys of ``raymmi train sae``: :class:`AEConfig`'s and the code sparsity.

    Parameters
    ----------
    sparsity
        Weight of the L1 penalty on the bottleneck activations (on top of ``alpha``), default
        1e-3 (assumed: ten times ``alpha``, so the code penalty dominates the activity one).
    """

    sparsity: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("sparsity", self.sparsity)


@dataclasses.dataclass
class AEOutputs(Outputs):
    """The autoencoders' forward on a mini-batch.

    Parameters
    ----------
    target
        The clean concatenated input, (n_cells, sum of the modalities' features).
    activations
        Every hidden activation (the bottleneck is ``[len(hidden)]``).
    code
        The bottleneck, (n_cells, bottleneck).
    reconstruction
        The linear output, shaped as ``target``.
    """

    target: torch.Tensor
    activations: list[torch.Tensor]
    code: torch.Tensor
    reconstruction: torch.Tensor


class _Autoencoder(Model):
    """Shared network and loss of the three baselines."""

    optim_defaults: ClassVar[Mapping[str, Any]] = KERAS_OPTIM_DEFAULTS
    config: AEConfig

    def __init__(self, config: AEConfig, dims: Dims) -> None:
        super().__init__(config, dims)
        self.sizes = [dims.n_features(m) for m in config.modalities]
        widths = [sum(self.sizes), *config.hidden, config.bottleneck]
        self.encoder = nn.ModuleList(hidden_linear(a, b) for a, b in itertools.pairwise(widths))
        back = widths[::-1]
        self.decoder = nn.ModuleList(hidden_linear(a, b) for a, b in itertools.pairwise(back[:-1]))
        self.output = output_linear(back[-2], back[-1])

    @classmethod
    def inputs(cls, config: AEConfig) -> Inputs:
        return Inputs(modalities=tuple(config.modalities))

    def _input(self, batch: Batch) -> torch.Tensor:
        return torch.cat(modality_values(batch, self.config.modalities, self.name), dim=1)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input while training (identity here; :class:`DAE` adds noise)."""
        return x

    def network(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden activations (bottleneck is ``[len(hidden)]``) and the reconstruction.

        Parameters
        ----------
        x
            Array of shape (n_cells, sum of the modalities' features).
        """
        activations = []
        h = x
        for layer in self.encoder:
            h = torch.relu(layer(h))
            activations.append(h)
        for layer in self.decoder:
            h = torch.relu(layer(h))
            activations.append(h)
        return activations, self.output(h)

    def forward(self, batch: Batch) -> AEOutputs:
        """The network on the concatenated input (corrupted while training, :meth:`corrupt`)."""
        x = self._input(batch)
        activations, out = self.network(self.corrupt(x) if self.training else x)
        code = activations[len(self.config.hidden)]
        return AEOutputs(target=x, activations=activations, code=code, reconstruction=out)

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """MSE, activity L1 and weight L2, before their weights."""
        assert isinstance(outputs, AEOutputs)
        values = {
            "MSE": (outputs.reconstruction - outputs.target).pow(2).mean(),
            "alpha_L_activity": activity_l1(outputs.activations),
            "beta_L_weights": weight_l2([*self.encoder, *self.decoder]),
        }
        return values

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """1 for the MSE, ``alpha`` (activity L1), ``beta`` (weight L2)."""
        return {
            "MSE": 1.0,
            "alpha_L_activity": float(self.config.alpha),
            "beta_L_weights": float(self.config.beta),
        }

    def embed(self, batch: Batch) -> torch.Tensor:
        """Bottleneck activations, float32 (n_cells, bottleneck)."""
        activations, _ = self.network(self._input(batch))
        return activations[len(self.config.hidden)].float()

    def impute(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        """Reconstruction of each input modality, ``{name: (n_cells, n_features)}``."""
        _, out = self.network(self._input(batch))
        parts = torch.split(out.float(), self.sizes, dim=1)
        return dict(zip(self.config.modalities, parts, strict=True))


@register
class AE(_Autoencoder):
    """Autoencoder on concatenated modalities (UMINT's baseline ``AE``)."""

    name: ClassVar[str] = "ae"
    Config: ClassVar[type] = AEConfig


@register
class DAE(_Autoencoder):
    """Denoising autoencoder: reconstructs the clean input from a corrupted one."""

    name: ClassVar[str] = "dae"
    Config: ClassVar[type] = DAEConfig
    config: DAEConfig

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus N(0, noise_sd²) noise, with a ``dropout`` fraction of entries zeroed."""
        noisy = x + self.config.noise_sd * torch.randn_like(x)
        if self.config.dropout > 0:
            keep = torch.rand_like(x) >= self.config.dropout
            noisy = noisy * keep.to(noisy.dtype)
        return noisy


@register
class SAE(_Autoencoder):
    """Sparse autoencoder: an extra L1 penalty on the bottleneck code."""

    name: ClassVar[str] = "sae"
    Config: ClassVar[type] = SAEConfig
    config: SAEConfig

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """The autoencoder's terms and ``mean_cells sum_units |code|``, before their weights."""
        assert isinstance(outputs, AEOutputs)
        values = super().unweighted_terms(batch, outputs)
        values["sparsity_L_bottleneck"] = outputs.code.abs().sum(dim=1).mean()
        return values

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """The autoencoder's weights and ``sparsity`` on the code's L1."""
        return {**super().loss_weights(), "sparsity_L_bottleneck": float(self.config.sparsity)}
