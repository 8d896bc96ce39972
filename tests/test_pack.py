"""Packed training (raymmi.models._pack): K configurations as one stacked model, pure torch."""

from __future__ import annotations

import math

import pytest
import torch

from raymmi import models
from raymmi.models import PackedModel, architecture_key, check_packable
from raymmi.schema import RaymmiError

DIMS = models.Dims(
    features={
        "rna_hvg": tuple(f"g{i}" for i in range(40)),
        "adt_clr": tuple(f"p{i}" for i in range(8)),
    }
)


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "rna_hvg": torch.randn(64, 40, generator=generator),
        "adt_clr": torch.randn(64, 8, generator=generator),
    }


def _umint(lam: float, alpha: float, widths: tuple[int, ...] = (16, 4)) -> models.UMINT:
    torch.manual_seed(7)
    config = models.UMINTConfig(widths=widths, bottleneck=8, lambdas=(1.0, lam), alpha=alpha)
    return models.UMINT(config, DIMS)


def _batches(data: dict[str, torch.Tensor]):
    for begin in range(0, 64, 16):
        yield {k: v[begin : begin + 16] for k, v in data.items()}


MEMBERS = [(1.0, 1e-4, 1e-3, 0.0), (5.0, 1e-2, 3e-3, 1e-4), (0.1, 0.0, 1e-2, 0.0)]


def _alone(lam: float, alpha: float, lr: float, wd: float, epochs: int = 3) -> models.UMINT:
    model = _umint(lam, alpha)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    data = _data()
    for _ in range(epochs):
        for batch in _batches(data):
            out = model.objective(batch)
            optimizer.zero_grad()
            out.total.backward()
            optimizer.step()
    return model


def test_a_packed_member_trains_as_it_would_alone():
    pack = PackedModel(
        [_umint(lam, alpha) for lam, alpha, _, _ in MEMBERS],
        [m[2] for m in MEMBERS],
        [m[3] for m in MEMBERS],
    )
    data = _data()
    first = next(_batches(data))
    packed = pack.losses(first)
    for i, (lam, alpha, _, _) in enumerate(MEMBERS):  # each member's own loss weights
        alone = _umint(lam, alpha).objective(first).floats()
        assert set(packed) == set(alone)  # the weighted terms a model alone logs, and loss
        for name, value in alone.items():
            assert float(packed[name][i].detach()) == pytest.approx(value, rel=1e-6, abs=1e-9)
    for _ in range(3):
        for batch in _batches(data):
            pack.step(batch)
    for i, member in enumerate(MEMBERS):
        alone = _alone(*member).state_dict()
        packed = pack.state_dict(i)
        assert set(packed) == set(alone)
        for key, value in alone.items():
            torch.testing.assert_close(packed[key], value, rtol=1e-5, atol=1e-6)
    assert pack.embed(first).shape == (3, 16, 8)


def test_a_member_diverging_to_nan_stops_alone_and_can_be_dropped():
    pack = PackedModel(
        [_umint(lam, alpha) for lam, alpha, _, _ in MEMBERS],
        [m[2] for m in MEMBERS],
        [m[3] for m in MEMBERS],
    )
    with torch.no_grad():
        next(iter(pack.params.values()))[1].fill_(math.nan)
    data = _data()
    for _ in range(3):
        for batch in _batches(data):
            pack.step(batch)
    assert pack.finite.tolist() == [True, False, True]
    for i in (0, 2):  # the others trained as if alone
        for key, value in _alone(*MEMBERS[i]).state_dict().items():
            torch.testing.assert_close(pack.state_dict(i)[key], value, rtol=1e-5, atol=1e-6)
    pack.keep([0, 2])
    assert len(pack) == 2 and pack.finite.all()
    for key, value in _alone(*MEMBERS[2]).state_dict().items():
        torch.testing.assert_close(pack.state_dict(1)[key], value, rtol=1e-5, atol=1e-6)


def test_architectures_and_unpackable_models_are_told_apart():
    assert architecture_key(_umint(1.0, 0.0)) == architecture_key(_umint(9.0, 0.5))
    assert architecture_key(_umint(1.0, 0.0)) != architecture_key(_umint(1.0, 0.0, (8, 4)))
    with pytest.raises(RaymmiError, match="differ in architecture"):
        PackedModel([_umint(1.0, 0.0), _umint(1.0, 0.0, (8, 4))], [1e-3] * 2, [0.0] * 2)
    ae = models.AE(models.AEConfig(modalities=("rna_hvg",), hidden=(8,), bottleneck=4), DIMS)
    with pytest.raises(RaymmiError, match="--pack"):
        check_packable(ae)
