"""The Model contract, for every registered model: forward -> Outputs, weighted terms = total."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raymmi import models

N_CELLS = 12
FEATURES = {
    "rna_hvg": tuple(f"g{i}" for i in range(10)),
    "adt_clr": tuple(f"p{i}" for i in range(4)),
    "rna": tuple(f"r{i}" for i in range(9)),
    "adt": tuple(f"a{i}" for i in range(5)),
    "atac": tuple(f"chr{1 + i % 2}-{100 * i}-{100 * i + 50}" for i in range(8)),
    "rna_pca": tuple(f"PC{i}" for i in range(3)),
}
CATEGORIES = {
    "batch": ("s1", "s2"),
    "cell_type": ("B", "T", "NK"),
    "phase": ("G1", "S", "G2M"),
}
DIMS = models.Dims(features=FEATURES, categories=CATEGORIES, depth_stats={"atac": (1.0, 0.5)})


def _batch(model: models.Model, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch carrying every key the model's default config asks for."""
    g = torch.Generator().manual_seed(seed)
    inputs = model.inputs(model.config)
    batch: dict[str, torch.Tensor] = {}
    for m in inputs.modalities:
        values = torch.randn(N_CELLS, len(FEATURES[m]), generator=g)
        batch[m] = (values > 0).float() if m == "atac" else values
    for m in inputs.depths:
        batch[f"{m}_depth"] = torch.randint(5, 500, (N_CELLS,), generator=g).float()
    for column in inputs.codes:
        n = len(CATEGORIES[column])
        batch[column] = torch.randint(0, n, (N_CELLS,), generator=g)
    return batch


def _build(name: str) -> models.Model:
    torch.manual_seed(0)
    cls = models.model_class(name)
    return cls(cls.Config(), DIMS)


@pytest.mark.parametrize("name", models.model_names())
@pytest.mark.parametrize("kl_weight", [0.0, 0.3, 1.0])
def test_the_weighted_terms_add_up_to_the_loss(name, kl_weight):
    model = _build(name)
    model.train()
    batch = _batch(model)
    outputs = model(batch)
    assert isinstance(outputs, models.Outputs) and dataclasses.is_dataclass(outputs)
    torch.manual_seed(1)  # loss may draw (dropout in a decoder the loss runs): same draws twice
    out = model.loss(batch, outputs, kl_weight=kl_weight)
    assert out.terms, name
    total = sum(out.terms.values())
    assert float(total.detach()) == float(out.total.detach())  # exactly, not approximately
    assert torch.isfinite(out.total)
    # each term is its unweighted value times its weight, under one name
    torch.manual_seed(1)
    values = model.unweighted_terms(batch, outputs)
    weights = model.loss_weights(kl_weight=kl_weight)
    assert set(out.terms) <= set(weights) and set(values) == set(out.terms)
    for term, value in out.terms.items():
        expected = weights[term] * float(values[term].detach())
        assert float(value.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    floats = out.floats()
    assert set(floats) == {*out.terms, *out.subtotals, "loss"}
    assert "loss" not in out.terms and not set(out.subtotals) & set(out.terms)


@pytest.mark.parametrize("name", models.model_names())
def test_only_kl_terms_follow_the_kl_weight(name):
    model = _build(name)
    full, off = model.loss_weights(kl_weight=1.0), model.loss_weights(kl_weight=0.0)
    assert set(full) == set(off)
    moved = {t for t in full if full[t] != off[t]}
    assert all(t.startswith("kl_weight_") for t in moved), moved
    assert all(off[t] == 0.0 for t in moved)
    assert bool(moved) == (name == "sailerx")


def test_sailerx_names_the_papers_terms_and_l_inv():
    model = _build("sailerx")
    out = model.objective(_batch(model), kl_weight=0.5)
    assert list(out.terms) == [
        "recon_weight_L_Recon",
        "kl_weight_L_KL",
        "kl_weight_lambda_L_Marginal",
        "gamma_L_Local",
    ]
    inv = sum(v for k, v in out.terms.items() if k != "gamma_L_Local")
    assert float(out.subtotals["L_Inv"].detach()) == pytest.approx(float(inv.detach()), rel=1e-6)


def test_umint_names_the_papers_terms():
    model = _build("umint")
    out = model.objective(_batch(model))
    assert list(out.terms) == [
        "lambda_i_MSE_rna_hvg",
        "lambda_i_MSE_adt_clr",
        "alpha_L_activity",
        "beta_L_weights",
    ]
