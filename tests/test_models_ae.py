"""Autoencoder baselines (ae, dae, sae): loss written out, corruption, sparsity, contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymmi import models
from raymmi.schema import RaymmiError

SIZES = {"rna_hvg": 9, "adt_clr": 4}
SMALL = {"hidden": (6,), "bottleneck": 3}


def _dims():
    return models.Dims(features={m: tuple(f"{m}{i}" for i in range(d)) for m, d in SIZES.items()})


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in SIZES.items()}


def _build(cls, config_cls, **changes):
    torch.manual_seed(0)
    return cls(config_cls(**{**SMALL, **changes}), _dims())


def _f(value):
    return float(value.detach())


def _hand_loss(model, batch, *, alpha, beta, sparsity=0.0):
    """The baseline loss from the layer weights by explicit loops (float64)."""
    x = np.concatenate([batch[m].numpy() for m in SIZES], axis=1).astype(np.float64)

    def layer_out(h, layer, relu):
        w = layer.weight.detach().numpy().astype(np.float64)
        b = layer.bias.detach().numpy()
        out = np.zeros((h.shape[0], w.shape[0]))
        for i in range(h.shape[0]):
            for u in range(w.shape[0]):
                v = sum(h[i, k] * w[u, k] for k in range(w.shape[1])) + b[u]
                out[i, u] = max(v, 0.0) if relu else v
        return out

    h, activations = x, []
    for layer in [*model.encoder, *model.decoder]:
        h = layer_out(h, layer, relu=True)
        activations.append(h)
    out = layer_out(h, model.output, relu=False)
    mse = ((out - x) ** 2).sum() / x.size
    l1 = sum(np.abs(a).sum() / a.shape[0] for a in activations)
    l2 = sum(
        (layer.weight.detach().numpy() ** 2).sum() for layer in [*model.encoder, *model.decoder]
    )
    code = activations[len(model.config.hidden)]
    sparse = np.abs(code).sum() / code.shape[0]
    return mse, l1, l2, sparse, mse + alpha * l1 + beta * l2 + sparsity * sparse


def test_ae_loss_matches_hand_computation():
    model = _build(models.AE, models.AEConfig, alpha=0.01, beta=0.02)
    batch = _batch()
    mse, l1, l2, _, total = _hand_loss(model, batch, alpha=0.01, beta=0.02)
    out = model.objective(batch)
    assert _f(out.terms["MSE"]) == pytest.approx(mse, rel=1e-5)
    assert _f(out.terms["alpha_L_activity"]) == pytest.approx(0.01 * l1, rel=1e-5)
    assert _f(out.terms["beta_L_weights"]) == pytest.approx(0.02 * l2, rel=1e-5)
    raw = model.unweighted_terms(batch, model(batch))
    assert _f(raw["alpha_L_activity"]) == pytest.approx(l1, rel=1e-5)
    assert _f(raw["beta_L_weights"]) == pytest.approx(l2, rel=1e-5)
    assert _f(out.total) == pytest.approx(total, rel=1e-5)
    assert _f(sum(out.terms.values())) == _f(out.total)  # exactly


def test_sae_adds_exactly_the_bottleneck_l1():
    model = _build(models.SAE, models.SAEConfig, sparsity=0.05)
    batch = _batch()
    *_, sparse, total = _hand_loss(model, batch, alpha=1e-4, beta=1e-3, sparsity=0.05)
    out = model.objective(batch)
    assert _f(out.terms["sparsity_L_bottleneck"]) == pytest.approx(0.05 * sparse, rel=1e-5)
    raw = model.unweighted_terms(batch, model(batch))
    assert _f(raw["sparsity_L_bottleneck"]) == pytest.approx(sparse, rel=1e-5)
    assert _f(out.total) == pytest.approx(total, rel=1e-5)
    plain = _build(models.AE, models.AEConfig).objective(batch)
    gap = _f(out.total) - _f(plain.total)
    assert gap == pytest.approx(0.05 * sparse, rel=1e-4)


def test_dae_corrupts_only_while_training():
    batch = _batch()
    dae = _build(models.DAE, models.DAEConfig, noise_sd=0.5)
    ae = _build(models.AE, models.AEConfig)
    dae.eval()
    assert _f(dae.objective(batch).total) == pytest.approx(_f(ae.objective(batch).total))
    dae.train()
    torch.manual_seed(3)
    noisy = dae.objective(batch).floats()["MSE"]
    assert noisy != pytest.approx(ae.objective(batch).floats()["MSE"])

    # Without noise the denoising AE is the plain AE.
    quiet = _build(models.DAE, models.DAEConfig, noise_sd=0.0)
    assert _f(quiet.objective(batch).total) == pytest.approx(_f(ae.objective(batch).total))


def test_dae_corruption_statistics():
    dae = _build(models.DAE, models.DAEConfig, noise_sd=0.1, dropout=0.3)
    x = torch.ones(200, 50)
    torch.manual_seed(0)
    y = dae.corrupt(x)
    zero = y == 0
    assert 0.25 < float(zero.float().mean()) < 0.35
    kept = y[~zero] - 1.0
    assert abs(float(kept.mean())) < 0.01 and 0.09 < float(kept.std()) < 0.11


@pytest.mark.parametrize(
    ("cls", "config_cls"),
    [(models.AE, models.AEConfig), (models.DAE, models.DAEConfig), (models.SAE, models.SAEConfig)],
)
def test_a_few_steps_lower_the_loss(cls, config_cls):
    model = _build(cls, config_cls)
    batch = _batch(n=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    before = model.objective(batch).floats()["loss"]
    for _ in range(25):
        optimizer.zero_grad()
        model.objective(batch).total.backward()
        optimizer.step()
    torch.manual_seed(0)
    assert model.objective(batch).floats()["loss"] < 0.9 * before


@pytest.mark.parametrize(
    ("name", "cls"), [("ae", models.AE), ("dae", models.DAE), ("sae", models.SAE)]
)
def test_embed_impute_and_registration(name, cls):
    assert models.model_class(name) is cls
    model = _build(cls, cls.Config)
    model.eval()
    batch = _batch()
    z = model.embed(batch)
    assert z.shape == (8, 3) and z.dtype == torch.float32
    assert {m: v.shape for m, v in model.impute(batch).items()} == {
        "rna_hvg": (8, 9),
        "adt_clr": (8, 4),
    }
    assert cls.inputs(cls.Config()).modalities == ("rna_hvg", "adt_clr")
    assert dict(cls.optim_defaults) == {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "batch_size": 16,
        "epochs": 25,
    }


def test_defaults_and_deeper_hidden():
    c = models.AEConfig()
    assert (c.hidden, c.bottleneck, c.alpha, c.beta) == ((128,), 64, 1e-4, 1e-3)
    assert models.DAEConfig().noise_sd == 0.01
    model = _build(models.AE, models.AEConfig, hidden=(8, 5))
    assert [layer.out_features for layer in model.encoder] == [8, 5, 3]
    assert [layer.out_features for layer in model.decoder] == [5, 8]
    assert model.output.out_features == sum(SIZES.values())
    assert model.embed(_batch()).shape == (8, 3)


@pytest.mark.parametrize(
    ("config_cls", "changes", "match"),
    [
        (models.AEConfig, {"hidden": (0,)}, "model.hidden"),
        (models.AEConfig, {"bottleneck": -1}, "model.bottleneck"),
        (models.AEConfig, {"alpha": -0.1}, "model.alpha"),
        (models.AEConfig, {"modalities": ()}, "model.modalities"),
        (models.DAEConfig, {"dropout": 1.0}, r"model.dropout=1.0 must be in \[0, 1\)"),
        (models.DAEConfig, {"noise_sd": -1.0}, "model.noise_sd"),
        (models.SAEConfig, {"sparsity": float("nan")}, "model.sparsity"),
    ],
)
def test_bad_config(config_cls, changes, match):
    with pytest.raises(RaymmiError, match=match):
        config_cls(**changes)


def test_missing_modality_is_named():
    with pytest.raises(RaymmiError, match="modality 'adt_clr' is not in the data"):
        models.AE(models.AEConfig(), models.Dims(features={"rna_hvg": ("g",)}))
