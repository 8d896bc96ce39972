"""Packed training: K configurations of one architecture trained together as one stacked model.

Pure torch (no Ray, no MLflow, no I/O). The members' weights are stacked along a leading
dimension (``torch.func.stack_module_state``) and one ``vmap`` of ``functional_call`` runs
every member's forward on the same mini-batch as batched matmuls. A member differs from the
others in what does not change the weights' shapes: its loss weights (the model's
:meth:`~raymmi.models.Model.loss_weights`), learning rate and weight decay; its Adam state is
its own slice of the stacked state.

The model computes its *unweighted* terms inside the ``vmap``
(:meth:`~raymmi.models.Model.unweighted_terms`: they do not depend on the loss weights);
outside, each member's weighted terms are ``weight_t * value_t`` with its own weights, under
the names a model alone logs, and its total is their sum.
Gradients of the summed totals reach each member's slice alone (members share no weight), so
a member trains exactly as it would alone on the same batches, up to float rounding; a member
whose loss is not finite is masked out of the sum (:attr:`PackedModel.finite`) and can be
dropped (:meth:`PackedModel.keep`), as can members an early-stopping rule stopped.

Packable models set :attr:`~raymmi.models.Model.packable` and hold no buffers that their
forward updates (batch norm's running statistics cannot be written inside ``vmap``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from raymmi.models._base import Batch, Model, weighted_sum
from raymmi.schema import RaymmiError

__all__ = ["PackedModel", "architecture_key", "check_packable"]


def check_packable(model: Model) -> None:
    """Raise unless ``model`` can be packed (``Model.packable`` and no batch norm)."""
    if not type(model).packable:
        msg = (
            f"--pack: model {model.name!r} is not packable (Model.packable: its forward is not "
            "known to run inside vmap), so its members cannot share one stacked model; use "
            "--pack 1"
        )
        raise RaymmiError(msg)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        msg = (
            f"--pack: model {model.name!r} has batch norm layers ({norms[0]} ...), whose running "
            "statistics cannot be updated per member inside vmap; use --pack 1"
        )
        raise RaymmiError(msg)


def architecture_key(model: Model) -> tuple[Any, ...]:
    """What members of one pack share: the model class, inputs and every weight's shape."""
    shapes = tuple((name, tuple(t.shape)) for name, t in model.state_dict().items())
    return (model.name, model.inputs(model.config), shapes)


class _Method(nn.Module):
    """``forward`` calls one method of the wrapped model (``functional_call`` calls forward)."""

    def __init__(self, model: Model, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, self.method)(*args, **kwargs)


class PackedModel:
    """K models of one architecture as stacked weights, each with its own loss weights and Adam.

    Parameters
    ----------
    models
        The members, built (and initialized) as each would be alone.
    lrs, weight_decays
        Each member's Adam learning rate and (coupled, as ``torch.optim.Adam``) weight decay.
    """

    def __init__(
        self,
        models: Sequence[Model],
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not models:
            msg = "a pack needs at least one member"
            raise RaymmiError(msg)
        keys = {architecture_key(m) for m in models}
        if len(keys) != 1:
            msg = "the members of a pack differ in architecture (inputs or weight shapes)"
            raise RaymmiError(msg)
        for model in models:
            check_packable(model)
        self.members = [copy.deepcopy(m).to("meta") for m in models]  # configs: loss weights
        params, buffers = stack_module_state(list(models))
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        device = next(iter(self.params.values())).device
        self.lr = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.weight_decay = torch.tensor(list(weight_decays), dtype=torch.float32, device=device)
        self.betas, self.eps = betas, eps
        self.step_count = 0
        self.exp_avg = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.finite = torch.ones(len(models), dtype=torch.bool, device=device)
        self.training = True

    def __len__(self) -> int:
        return len(self.members)

    # -- forward ------------------------------------------------------------------------------

    def _call(self, method: str, batch: Batch, **kwargs: Any) -> Any:
        wrapper = _Method(self.base, method)
        wrapper.train(self.training)

        def one(params: dict, buffers: dict, data: Batch) -> Any:
            state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
            return functional_call(wrapper, state, (data,), kwargs)

        return vmap(one, in_dims=(0, 0, None), randomness="different")(
            self.params, self.buffers, batch
        )

    def terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every member's unweighted loss terms on ``batch``: name -> tensor of shape (K,)."""
        base = self.base

        class _Terms(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = base

            def forward(self, data: Batch) -> dict[str, torch.Tensor]:
                return dict(self.model.unweighted_terms(data, self.model(data)))

        wrapper = _Terms()
        wrapper.train(self.training)

        def one(params: dict, buffers: dict, data: Batch) -> dict[str, torch.Tensor]:
            state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
            return functional_call(wrapper, state, (data,))

        return vmap(one, in_dims=(0, 0, None), randomness="different")(
            self.params, self.buffers, batch
        )

    def weights(self, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Each member's loss weights: term -> tensor of shape (K,)."""
        rows = [m.loss_weights(kl_weight=kl_weight) for m in self.members]
        device = self.lr.device
        return {t: torch.tensor([r[t] for r in rows], device=device) for t in rows[0]}

    def losses(self, batch: Batch, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Weighted terms and ``loss`` (their sum) of every member on ``batch``, each (K,).

        The terms carry the names, and the values, of each member's ``loss`` alone.
        """
        total, terms = weighted_sum(self.terms(batch), self.weights(kl_weight=kl_weight))
        return {**terms, "loss": total}

    def embed(self, batch: Batch) -> torch.Tensor:
        """Every member's embedding of ``batch``: (K, n_cells, latent_dim)."""
        return self._call("embed", batch)

    # -- training -----------------------------------------------------------------------------

    def step(self, batch: Batch, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """One Adam step of every member on ``batch``; its terms (detached), each (K,).

        ``kl_weight`` is the annealing weight of this epoch (:func:`~raymmi.models.kl_schedule`).
        A member whose loss is not finite is marked in :attr:`finite` and gets no update.
        """
        out = self.losses(batch, kl_weight=kl_weight)
        total = out["loss"]
        self.finite &= torch.isfinite(total.detach())
        masked = torch.where(self.finite, total, torch.zeros_like(total))
        grads = torch.autograd.grad(masked.sum(), list(self.params.values()), allow_unused=True)
        self._adam(dict(zip(self.params, grads, strict=True)))
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def _adam(self, grads: Mapping[str, torch.Tensor | None]) -> None:
        """``torch.optim.Adam``'s update (coupled weight decay), per member's lr and decay."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1**self.step_count
        correction2 = 1 - beta2**self.step_count
        for name, param in self.params.items():
            grad = grads[name]
            if grad is None:
                continue
            shape = (-1,) + (1,) * (param.dim() - 1)
            keep = self.finite.view(shape)
            decay = self.weight_decay.view(shape)
            grad = torch.where(keep, grad + decay * param, torch.zeros_like(grad))
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(correction2)).add_(self.eps)
            step = (self.lr / correction1).view(shape)
            param.sub_(torch.where(keep, step * m / denom, torch.zeros_like(param)))

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members`` (indices into the current pack), dropping the others."""
        index = torch.tensor(list(members), dtype=torch.long, device=self.lr.device)
        self.members = [self.members[i] for i in members]

        def take(tensors: dict[str, torch.Tensor], grad: bool) -> dict[str, torch.Tensor]:
            out = {k: v.detach().index_select(0, index).clone() for k, v in tensors.items()}
            return {k: v.requires_grad_(True) for k, v in out.items()} if grad else out

        self.params = take(self.params, True)
        self.buffers = take(self.buffers, False)
        self.exp_avg = take(self.exp_avg, False)
        self.exp_avg_sq = take(self.exp_avg_sq, False)
        self.lr = self.lr.index_select(0, index)
        self.weight_decay = self.weight_decay.index_select(0, index)
        self.finite = self.finite.index_select(0, index)

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s weights, loadable by its model alone."""
        out = {k: v[member].detach().clone() for k, v in self.params.items()}
        out.update({k: v[member].detach().clone() for k, v in self.buffers.items()})
        return out

    def train(self, mode: bool = True) -> PackedModel:
        self.training = mode
        return self

    def eval(self) -> PackedModel:
        return self.train(False)
