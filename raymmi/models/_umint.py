"""UMINT (Front. Mol. Biosci. 2023): an autoencoder whose first layer is split by modality.

Written from the paper and from reading the reference code (deeplearner87/UMINT, ``umint.py``,
Keras); no code is copied. With ``m`` modalities of ``d_i`` features:

- input module ``i`` (``d_i`` features) is fully connected only to its own encoding module of
  ``n_i`` ReLU units, so the first layer has ``sum_i d_i * n_i`` weights where a plain AE over
  the concatenated input with ``sum_i n_i`` units has ``(sum_i d_i) * (sum_i n_i)``;
- the encoding modules are concatenated into a shared ReLU bottleneck (the embedding);
- the decoder mirrors it: the bottleneck feeds ``m`` ReLU modules of ``n_i`` units, each with a
  linear output of ``d_i`` features.

Loss (the reference's Keras losses and regularizers, written out):

``sum_i lambda_i * MSE_i + alpha * sum_layers mean_cells sum_units |h| + beta * sum ||W||^2``

``MSE_i`` the mean squared error of modality ``i`` over its features and the cells; ``h`` every
hidden activation (encoding modules, bottleneck, decoding modules: Keras
``activity_regularizer=l1(alpha)``, averaged over the batch as Keras does); ``W`` the weight
matrices of those same layers (``kernel_regularizer=l2(beta)``; output layers and biases are not
penalized). Logged as the weighted terms ``lambda_i_MSE_<modality>`` (one per modality),
``alpha_L_activity`` and ``beta_L_weights``, which add up to ``loss``. He-uniform weights and
bias 0.1 on ReLU layers, Glorot-uniform and bias 0 on the outputs, as the reference.

Defaults: the paper's network and regularizers, but 50 epochs (the reference's 25 are too few
for raymmi's inputs) and the CLR protein modality's MSE weighted 5 (``DEFAULT_WEIGHTS``; the
reference z-scores its ADT, raymmi's ``adt_clr`` is unscaled CLR, feature variance 0.58 on the
CITE starter against 0.99 for ``rna_hvg``). Measured on the CITE starter at raymmi's default
preprocessing, 5 seeds, k = 41 (``python jobs/bench_models.py --causes``): k-means / Ward ARI
0.437 / 0.440 with the reference's 25 epochs and weights 1; 0.483 / 0.483 with these, against
the original Keras code's 0.454 / 0.460 on its own inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from raymmi.models._ae import (
    KERAS_OPTIM_DEFAULTS,
    activity_l1,
    check_modalities,
    check_non_negative,
    check_widths,
    hidden_linear,
    modality_values,
    output_linear,
    weight_l2,
)
from raymmi.models._base import Batch, Dims, Inputs, Model, Outputs, register
from raymmi.schema import RaymmiError

__all__ = ["DEFAULT_WEIGHTS", "UMINT", "UMINTConfig", "UMINTOutputs"]

#: MSE weight of a modality when ``lambdas`` is unset: 5 for CLR proteins (measured, see the
#: module's docstring), 1 for any other.
DEFAULT_WEIGHTS: Mapping[str, float] = {"adt_clr": 5.0}


@dataclasses.dataclass(frozen=True)
class UMINTConfig:
    """``model.*`` keys of ``raymmi train umint``.

    Parameters
    ----------
    modalities
        Input modalities, any number, default ``("rna_hvg", "adt_clr")``: the paper's scaled
        log-normalized RNA HVGs and CLR-normalized ADT, as ``raymmi preprocess cells`` names
        them.
    widths
        Units of each modality's encoding module (and decoding module), one per modality,
        default ``(128, 10)`` (the paper's RNA, ADT).
    bottleneck
        Units of the shared bottleneck (the embedding), default 64 (paper).
    alpha
        Weight of the activity L1 on every hidden activation, default 1e-4 (paper,
        reference ``lambda_act``).
    beta
        Weight of the L2 penalty on the hidden layers' weights, default 1e-3 (paper, reference
        ``lambda_weight``).
    lambdas
        Weight of each modality's MSE, one per modality; default ``None``: 5 for ``adt_clr``
        and 1 for any other modality (``DEFAULT_WEIGHTS``; the reference's Keras
        ``loss_weights`` are all 1 on its z-scored inputs).
    """

    modalities: tuple[str, ...] = ("rna_hvg", "adt_clr")
    widths: tuple[int, ...] = (128, 10)
    bottleneck: int = 64
    alpha: float = 1e-4
    beta: float = 1e-3
    lambdas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_modalities(self.modalities)
        check_widths("widths", self.widths)
        check_widths("bottleneck", (self.bottleneck,))
        check_non_negative("alpha", self.alpha)
        check_non_negative("beta", self.beta)
        n = len(self.modalities)
        if len(self.widths) != n:
            msg = (
                f"model.widths={self.widths!r} has {len(self.widths)} entries for {n} "
                f"modalities {self.modalities!r}: give one encoding width per modality"
            )
            raise RaymmiError(msg)
        if self.lambdas is not None:
            if len(self.lambdas) != n:
                msg = (
                    f"model.lambdas={self.lambdas!r} has {len(self.lambdas)} entries for {n} "
                    f"modalities {self.modalities!r}: give one weight per modality (or null)"
                )
                raise RaymmiError(msg)
            for value in self.lambdas:
                if not (math.isfinite(value) and value >= 0):
                    msg = f"model.lambdas={self.lambdas!r} must all be finite numbers >= 0"
                    raise RaymmiError(msg)

    @property
    def modality_weights(self) -> tuple[float, ...]:
        """``lambdas``, or ``DEFAULT_WEIGHTS`` (1 for a modality it does not name)."""
        if self.lambdas is not None:
            return self.lambdas
        return tuple(float(DEFAULT_WEIGHTS.get(m, 1.0)) for m in self.modalities)


@dataclasses.dataclass
class UMINTOutputs(Outputs):
    """:meth:`UMINT.forward` on a mini-batch.

    Parameters
    ----------
    inputs
        One float32 array of shape (n_cells, d_i) per modality (the targets).
    activations
        Every hidden activation: encoding modules, bottleneck, decoding modules.
    code
        The bottleneck, (n_cells, bottleneck).
    reconstructions
        One array of shape (n_cells, d_i) per modality.
    """

    inputs: list[torch.Tensor]
    activations: list[torch.Tensor]
    code: torch.Tensor
    reconstructions: list[torch.Tensor]


@register
class UMINT(Model):
    """UMINT: modality-wise encoding modules into a shared bottleneck, mirrored decoder.

    Parameters
    ----------
    config
        A :class:`UMINTConfig`.
    dims
        Needs ``features`` of every modality in ``config.modalities``.
    """

    name: ClassVar[str] = "umint"
    Config: ClassVar[type] = UMINTConfig
    # Reference notebooks: Keras Adam() defaults (lr 1e-3, no decay: L2 is in the loss),
    # batch 16; 50 epochs, not their 25 (module docstring: measured).
    optim_defaults: ClassVar[Mapping[str, Any]] = {**KERAS_OPTIM_DEFAULTS, "epochs": 50}
    packable: ClassVar[bool] = True

    config: UMINTConfig

    def __init__(self, config: UMINTConfig, dims: Dims) -> None:
        super().__init__(config, dims)
        self.sizes = [dims.n_features(m) for m in config.modalities]
        widths, b = config.widths, config.bottleneck
        self.encoders = nn.ModuleList(
            hidden_linear(d, n) for d, n in zip(self.sizes, widths, strict=True)
        )
        self.bottleneck = hidden_linear(sum(widths), b)
        self.decoders = nn.ModuleList(hidden_linear(b, n) for n in widths)
        self.outputs = nn.ModuleList(
            output_linear(n, d) for n, d in zip(widths, self.sizes, strict=True)
        )

    @classmethod
    def inputs(cls, config: UMINTConfig) -> Inputs:
        return Inputs(modalities=tuple(config.modalities))

    def forward(self, batch: Batch) -> UMINTOutputs:
        """Encode the modalities into the bottleneck and decode each back."""
        xs = modality_values(batch, self.config.modalities, self.name)
        encoded = [torch.relu(layer(x)) for layer, x in zip(self.encoders, xs, strict=True)]
        code = torch.relu(self.bottleneck(torch.cat(encoded, dim=1)))
        decoded = [torch.relu(layer(code)) for layer in self.decoders]
        outs = [layer(h) for layer, h in zip(self.outputs, decoded, strict=True)]
        return UMINTOutputs(
            inputs=xs, activations=[*encoded, code, *decoded], code=code, reconstructions=outs
        )

    def unweighted_terms(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """``MSE_i`` per modality, the activity L1 and the weight L2, before their weights."""
        assert isinstance(outputs, UMINTOutputs)
        pairs = zip(self.config.modalities, outputs.inputs, outputs.reconstructions, strict=True)
        values = {f"lambda_i_MSE_{m}": (out - x).pow(2).mean() for m, x, out in pairs}
        values["alpha_L_activity"] = activity_l1(outputs.activations)
        values["beta_L_weights"] = weight_l2([*self.encoders, self.bottleneck, *self.decoders])
        return values

    def loss_weights(self, *, kl_weight: float = 1.0) -> Mapping[str, float]:
        """``lambda_i`` per modality's MSE, ``alpha`` (activity L1), ``beta`` (weight L2)."""
        cfg = self.config
        weights = {
            f"lambda_i_MSE_{m}": float(w)
            for m, w in zip(cfg.modalities, cfg.modality_weights, strict=True)
        }
        return {**weights, "alpha_L_activity": float(cfg.alpha), "beta_L_weights": float(cfg.beta)}

    def embed(self, batch: Batch) -> torch.Tensor:
        """Bottleneck activations, float32 (n_cells, bottleneck)."""
        return self(batch).code.float()

    def impute(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        """Reconstruction of each modality, ``{name: (n_cells, n_features)}``."""
        outs = self(batch).reconstructions
        return {m: out.float() for m, out in zip(self.config.modalities, outs, strict=True)}
