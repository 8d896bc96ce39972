"""UMINT: the modality-split architecture, its parameter count, and its loss written out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymmi import models
from raymmi.schema import RaymmiError

SIZES = {"rna_hvg": 12, "adt_clr": 5}


def _dims(sizes=SIZES):
    return models.Dims(features={m: tuple(f"{m}{i}" for i in range(d)) for m, d in sizes.items()})


def _batch(sizes=SIZES, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in sizes.items()}


def _model(**changes):
    torch.manual_seed(0)
    config = models.UMINTConfig(**{"widths": (6, 3), "bottleneck": 4, **changes})
    return models.UMINT(config, _dims())


def _f(value):
    return float(value.detach())


def _numpy(layer):
    return layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy()


def _relu_layer(x, layer):
    w, b = _numpy(layer)
    out = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        for u in range(w.shape[0]):
            out[i, u] = max(0.0, sum(x[i, k] * w[u, k] for k in range(w.shape[1])) + b[u])
    return out


def test_first_layer_parameter_count_follows_the_paper():
    d = [300, 40]
    widths = (32, 8)
    dims = _dims({"rna_hvg": d[0], "adt_clr": d[1]})
    umint = models.UMINT(models.UMINTConfig(widths=widths, bottleneck=16), dims)
    ae = models.AE(models.AEConfig(hidden=(sum(widths),), bottleneck=16), dims)
    first_umint = sum(layer.weight.numel() for layer in umint.encoders)
    assert first_umint == d[0] * widths[0] + d[1] * widths[1]  # sum_i d_i n_i
    assert ae.encoder[0].weight.numel() == sum(d) * sum(widths)  # (sum d_i)(sum n_i)
    assert first_umint < ae.encoder[0].weight.numel()

    b = 16
    expected = (
        sum(di * ni + ni for di, ni in zip(d, widths, strict=True))  # encoding modules
        + sum(widths) * b  # bottleneck weights
        + b
        + sum(b * ni + ni for ni in widths)  # decoding modules
        + sum(ni * di + di for di, ni in zip(d, widths, strict=True))  # outputs
    )
    assert sum(p.numel() for p in umint.parameters()) == expected


def test_loss_matches_hand_computation():
    model = _model(lambdas=(2.0, 0.5), alpha=0.01, beta=0.02)
    batch = _batch()
    xs = [batch[m].numpy().astype(np.float64) for m in SIZES]

    encoded = [_relu_layer(x, layer) for x, layer in zip(xs, model.encoders, strict=True)]
    code = _relu_layer(np.concatenate(encoded, axis=1), model.bottleneck)
    decoded = [_relu_layer(code, layer) for layer in model.decoders]
    outs = []
    for h, layer in zip(decoded, model.outputs, strict=True):
        w, b = _numpy(layer)
        outs.append(h @ w.T + b)

    mse = [((out - x) ** 2).sum() / x.size for out, x in zip(outs, xs, strict=True)]
    activity = sum(np.abs(h).sum() / h.shape[0] for h in [*encoded, code, *decoded])
    penalized = [*model.encoders, model.bottleneck, *model.decoders]
    l2 = sum((_numpy(layer)[0] ** 2).sum() for layer in penalized)

    out = model.objective(batch)
    assert _f(out.terms["lambda_i_MSE_rna_hvg"]) == pytest.approx(2.0 * mse[0], rel=1e-5)
    assert _f(out.terms["lambda_i_MSE_adt_clr"]) == pytest.approx(0.5 * mse[1], rel=1e-5)
    assert _f(out.terms["alpha_L_activity"]) == pytest.approx(0.01 * activity, rel=1e-5)
    assert _f(out.terms["beta_L_weights"]) == pytest.approx(0.02 * l2, rel=1e-5)
    raw = model.unweighted_terms(batch, model(batch))
    assert _f(raw["lambda_i_MSE_rna_hvg"]) == pytest.approx(mse[0], rel=1e-5)
    assert _f(raw["alpha_L_activity"]) == pytest.approx(activity, rel=1e-5)
    assert _f(sum(out.terms.values())) == _f(out.total)  # exactly
    expected = 2.0 * mse[0] + 0.5 * mse[1] + 0.01 * activity + 0.02 * l2
    assert _f(out.total) == pytest.approx(expected, rel=1e-5)


def test_alpha_and_beta_zero_remove_their_terms():
    batch = _batch()
    full = _model().objective(batch)
    no_alpha = _model(alpha=0.0).objective(batch)
    no_beta = _model(beta=0.0).objective(batch)
    t = full.floats()
    gap_alpha = t["loss"] - no_alpha.floats()["loss"]
    gap_beta = t["loss"] - no_beta.floats()["loss"]
    assert gap_alpha == pytest.approx(t["alpha_L_activity"], rel=1e-3)
    assert gap_beta == pytest.approx(t["beta_L_weights"], rel=1e-3)
    raw = {k: _f(v) for k, v in _model().unweighted_terms(batch, _model()(batch)).items()}
    assert t["alpha_L_activity"] == pytest.approx(1e-4 * raw["alpha_L_activity"], rel=1e-6)
    assert t["beta_L_weights"] == pytest.approx(1e-3 * raw["beta_L_weights"], rel=1e-6)


def test_encoding_modules_see_only_their_own_modality():
    model = _model()
    batch = {m: v.requires_grad_(True) for m, v in _batch().items()}
    outputs = model(batch)
    rna_module, code = outputs.activations[0], outputs.code
    (grad_adt,) = torch.autograd.grad(rna_module.sum(), batch["adt_clr"], allow_unused=True)
    assert grad_adt is None or float(grad_adt.abs().sum()) == 0.0
    grads = torch.autograd.grad(code.sum(), [batch["rna_hvg"], batch["adt_clr"]])
    assert all(float(g.abs().sum()) > 0 for g in grads)  # the bottleneck mixes both


def test_any_number_of_modalities():
    sizes = {"a": 6, "b": 4, "c": 3}
    torch.manual_seed(0)
    config = models.UMINTConfig(modalities=tuple(sizes), widths=(4, 3, 2), bottleneck=5)
    model = models.UMINT(config, _dims(sizes))
    batch = _batch(sizes)
    out = model.objective(batch)
    assert {"lambda_i_MSE_a", "lambda_i_MSE_b", "lambda_i_MSE_c"} <= set(out.terms)
    assert model.embed(batch).shape == (7, 5)
    assert {m: v.shape for m, v in model.impute(batch).items()} == {
        "a": (7, 6),
        "b": (7, 4),
        "c": (7, 3),
    }


def test_a_few_steps_lower_the_loss():
    model = _model()
    batch = _batch(n=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.objective(batch).floats()["loss"]
    for _ in range(25):
        optimizer.zero_grad()
        model.objective(batch).total.backward()
        optimizer.step()
    assert model.objective(batch).floats()["loss"] < 0.9 * before


def test_embed_impute_shapes_and_registration():
    model = _model()
    batch = _batch()
    z = model.embed(batch)
    assert z.shape == (7, 4) and z.dtype == torch.float32 and _f(z.min()) >= 0.0
    assert {m: v.shape for m, v in model.impute(batch).items()} == {
        "rna_hvg": (7, 12),
        "adt_clr": (7, 5),
    }
    assert model.reference(batch) is None
    assert models.model_class("umint") is models.UMINT
    assert models.UMINT.inputs(models.UMINTConfig()).modalities == ("rna_hvg", "adt_clr")
    assert dict(models.UMINT.optim_defaults) == {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "batch_size": 16,
        "epochs": 50,
    }
    c = models.UMINTConfig()
    assert (c.widths, c.bottleneck, c.alpha, c.beta) == ((128, 10), 64, 1e-4, 1e-3)
    # CLR proteins weighted 5 unless lambdas are given; any other modality 1
    assert c.lambdas is None and c.modality_weights == (1.0, 5.0)
    other = models.UMINTConfig(modalities=("rna_hvg", "atac_lsi"))
    assert other.modality_weights == (1.0, 1.0)
    assert models.UMINTConfig(lambdas=(2.0, 1.0)).modality_weights == (2.0, 1.0)


def test_keras_like_initialization():
    model = _model()
    for layer in [*model.encoders, model.bottleneck, *model.decoders]:
        assert torch.all(layer.bias == 0.1)
        assert _f(layer.weight.abs().max()) <= (6.0 / layer.in_features) ** 0.5
    for layer in model.outputs:
        assert torch.all(layer.bias == 0.0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"widths": (128,)}, "one encoding width per modality"),
        ({"lambdas": (1.0,)}, "one weight per modality"),
        ({"lambdas": (1.0, -1.0)}, "model.lambdas"),
        ({"alpha": -1.0}, "model.alpha=-1.0"),
        ({"beta": float("inf")}, "model.beta=inf"),
        ({"bottleneck": 0}, "model.bottleneck"),
        ({"modalities": ()}, "model.modalities"),
        ({"modalities": ("a", "a"), "widths": (1, 1)}, "twice"),
        ({"widths": (0, 10)}, "model.widths"),
    ],
)
def test_bad_config(changes, match):
    with pytest.raises(RaymmiError, match=match):
        models.UMINTConfig(**changes)


def test_missing_modality_is_named():
    with pytest.raises(RaymmiError, match="modality 'adt_clr' is not in the data"):
        models.UMINT(models.UMINTConfig(), _dims({"rna_hvg": 4}))
    model = _model()
    with pytest.raises(RaymmiError, match="no 'adt_clr' column"):
        model.objective({"rna_hvg": torch.zeros(2, 12)})
