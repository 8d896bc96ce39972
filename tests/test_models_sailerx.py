"""SAILERX: each loss term against explicit loops, the schedule, the split, the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raymmi import models, testing
from raymmi.models import _sailerx as sx
from raymmi.schema import RaymmiError

# Peaks deliberately interleaved across chromosomes (chr2 first), as a user's file might be.
PEAKS = (
    "chr2-100-600",
    "chr1-100-600",
    "chr2-900-1400",
    "chrX-50-550",
    "chr1-900-1400",
    "chr1:2000-2500",
    "chrX-700-1200",
    "chr2-3000-3500",
)
SMALL = {"z_dim": 4, "chromosome_widths": (6, 3), "hidden": (12, 6)}


def _dims(peaks=PEAKS, n_batches=3, **extra):
    features = {"atac": tuple(peaks), "rna_pca": tuple(f"PC{i}" for i in range(5))}
    return models.Dims(
        features=features,
        categories={"batch": tuple(f"s{i}" for i in range(n_batches))},
        depth_stats={"atac": (1.2, 0.4)},
        **extra,
    )


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, len(PEAKS), generator=g) < 0.4).float()
    x[:, 0] = 1.0  # no empty rows
    return {
        "atac": x,
        "rna_pca": torch.randn(n, 5, generator=g),
        "atac_depth": x.sum(dim=1),
        "rna_depth": torch.randint(500, 5000, (n,), generator=g).float(),
        "batch": torch.arange(n) % 3,
    }


def _model(**changes):
    torch.manual_seed(0)
    config = models.SAILERXConfig(**{**SMALL, **changes})
    return models.SAILERX(config, _dims())


def _f(value):
    """A tensor (or number) as a Python float, detached."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


# ----------------------------------------------------------------------------------------------
# loss terms vs explicit loops
# ----------------------------------------------------------------------------------------------


def test_bernoulli_nll_matches_loops():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.4, 0.0, 1.5]])
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    expected = 0.0
    for i in range(2):
        for p in range(3):
            s = _sigmoid(_f(logits[i, p]))
            expected -= math.log(s) if x[i, p] == 1 else math.log(1.0 - s)
    assert _f(sx.bernoulli_nll(logits, x)) == pytest.approx(expected, rel=1e-6)


def test_gaussian_kl_matches_loops():
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.1], [0.0, 0.0]])
    logvar = torch.tensor([[0.2, -0.3], [1.0, 0.0], [0.0, 0.0]])
    expected = 0.0
    for i in range(3):
        for k in range(2):
            m, lv = _f(mu[i, k]), _f(logvar[i, k])
            # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2
            s = math.exp(0.5 * lv)
            expected += -math.log(s) + (s * s + m * m) / 2 - 0.5
    assert _f(sx.gaussian_kl(mu, logvar)) == pytest.approx(expected, rel=1e-6)


def _pairwise_kl_loops(mu, logvar):
    n, d = mu.shape
    total = 0.0
    for i in range(n):
        for j in range(n):
            for k in range(d):
                si, sj = math.exp(0.5 * logvar[i, k]), math.exp(0.5 * logvar[j, k])
                # KL(N(mi, si^2) || N(mj, sj^2)) = log(sj/si) + (si^2 + (mi-mj)^2)/(2 sj^2) - 1/2
                total += (
                    math.log(sj / si) + (si**2 + (mu[i, k] - mu[j, k]) ** 2) / (2 * sj**2) - 0.5
                )
    return total / (n * n)


def test_mean_pairwise_kl_matches_loops():
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(size=(4, 3)), rng.normal(scale=0.5, size=(4, 3))
    got = sx.mean_pairwise_kl(torch.tensor(mu, dtype=torch.float32), torch.tensor(logvar))
    assert _f(got) == pytest.approx(_pairwise_kl_loops(mu, logvar), rel=1e-5)


def test_mean_pairwise_kl_is_zero_for_identical_posteriors():
    mu = torch.tensor([[0.3, -2.0]]).repeat(5, 1)
    logvar = torch.tensor([[0.7, -1.0]]).repeat(5, 1)
    assert abs(_f(sx.mean_pairwise_kl(mu, logvar))) < 1e-5


def test_alignment_weights_match_formula():
    d_rna = [1000.0, 4000.0, 2500.0, 800.0]
    d_atac = [300.0, 200.0, 900.0, 100.0]
    r = [
        math.log((a / max(d_rna)) / (b / max(d_atac))) for a, b in zip(d_rna, d_atac, strict=True)
    ]
    expected = [(v - min(r)) / (max(r) - min(r)) for v in r]
    got = sx.alignment_weights(torch.tensor(d_rna), torch.tensor(d_atac))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert _f(got.min()) == 0.0 and _f(got.max()) == pytest.approx(1.0)


def test_alignment_weights_constant_ratio_gives_ones():
    got = sx.alignment_weights(torch.tensor([10.0, 20.0]), torch.tensor([1.0, 2.0]))
    assert got.tolist() == [1.0, 1.0]


def test_local_alignment_matches_loops():
    rng = np.random.default_rng(2)
    ref, mu, w = rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), rng.random(4)

    def cos(a, b):
        return _f(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    expected = 0.0
    for i in range(4):
        for j in range(4):
            diff = cos(ref[i], ref[j]) - cos(mu[i], mu[j])
            expected += w[i] * w[j] * diff**2
    got = sx.local_alignment(
        torch.tensor(ref, dtype=torch.float32),
        torch.tensor(mu, dtype=torch.float32),
        torch.tensor(w, dtype=torch.float32),
    )
    assert _f(got) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# schedule and composition
# ----------------------------------------------------------------------------------------------


def test_kl_schedule():
    def w(epoch):
        return models.kl_schedule(epoch, warmup_epochs=10, kl_cycle=100)

    assert [w(e) for e in range(10)] == [0.0] * 10  # warm-up
    assert w(10) == 0.0  # a cycle starts at 0
    assert w(11) == pytest.approx(0.02)
    assert w(35) == pytest.approx(0.5)
    assert w(60) == 1.0 and w(109) == 1.0  # second half of the cycle holds 1
    assert w(110) == 0.0 and w(135) == pytest.approx(0.5)  # next cycle
    assert models.kl_schedule(3, warmup_epochs=0, kl_cycle=0) == 1.0
    assert models.kl_schedule(0, warmup_epochs=0, kl_cycle=4) == 0.0
    config = models.SAILERXConfig(warmup_epochs=3, kl_cycle=8)
    assert models.annealing(config) == {"warmup_epochs": 3, "kl_cycle": 8}
    assert models.annealing(models.UMINTConfig()) == {"warmup_epochs": 0, "kl_cycle": 0}


# the unweighted value behind each weighted term, under the short names the formulas use
SHORT = {
    "recon_weight_L_Recon": "recon",
    "kl_weight_L_KL": "kl",
    "kl_weight_lambda_L_Marginal": "marginal_kl",
    "gamma_L_Local": "local",
}


def _loss(model, batch, epoch, seed=7):
    """The loss at ``epoch`` with the training loop's KL schedule."""
    torch.manual_seed(seed)
    kl_weight = models.kl_schedule(epoch, **models.annealing(model.config))
    return model.loss(batch, model(batch), kl_weight=kl_weight)


def _raw(model, batch, seed=7):
    """The unweighted terms of the same forward (same seed, same sample of ``z``)."""
    torch.manual_seed(seed)
    values = model.unweighted_terms(batch, model(batch))
    return {SHORT[k]: _f(v) for k, v in values.items()}


def test_total_combines_the_terms():
    model = _model(warmup_epochs=2, kl_cycle=4, gamma=30.0, lam=0.5)
    out = _loss(model, _batch(), epoch=3)  # t = 1 → kl weight 0.5
    t = _raw(model, _batch())
    expected = 20.0 * t["recon"] + 0.5 * (t["kl"] + 0.5 * t["marginal_kl"]) + 30.0 * t["local"]
    assert _f(out.total) == pytest.approx(expected, rel=1e-5)
    assert set(out.terms) == set(SHORT)
    assert set(out.floats()) == {*SHORT, "L_Inv", "loss"}
    w = out.floats()
    assert w["kl_weight_L_KL"] == pytest.approx(0.5 * t["kl"], rel=1e-6)
    assert w["kl_weight_lambda_L_Marginal"] == pytest.approx(0.25 * t["marginal_kl"], rel=1e-6)
    assert w["gamma_L_Local"] == pytest.approx(30.0 * t["local"], rel=1e-6)
    assert w["L_Inv"] == pytest.approx(w["loss"] - w["gamma_L_Local"], rel=1e-5)
    assert _f(sum(out.terms.values())) == _f(out.total)  # exactly


def test_paper_likelihood_factor():
    model = _model(paper_likelihood_factor=True, lam=0.5, warmup_epochs=0, kl_cycle=0)
    out = _loss(model, _batch(), epoch=0)
    t = _raw(model, _batch())
    expected = 1.5 * 20.0 * t["recon"] + t["kl"] + 0.5 * t["marginal_kl"] + 6000.0 * t["local"]
    assert _f(out.total) == pytest.approx(expected, rel=1e-5)
    assert _f(out.terms["recon_weight_L_Recon"]) == pytest.approx(30.0 * t["recon"], rel=1e-6)


def test_warmup_trains_reconstruction_and_alignment_only():
    model = _model(warmup_epochs=10)
    out = _loss(model, _batch(), epoch=9)
    t = _raw(model, _batch())
    assert t["kl"] > 0 and t["marginal_kl"] > 0  # computed, but weighted 0
    assert _f(out.terms["kl_weight_L_KL"]) == _f(out.terms["kl_weight_lambda_L_Marginal"]) == 0
    assert _f(out.total) == pytest.approx(20.0 * t["recon"] + 6000.0 * t["local"], rel=1e-5)


def test_gamma_zero_removes_exactly_the_local_term():
    batch = _batch()
    full = _loss(_model(warmup_epochs=0, kl_cycle=0), batch, epoch=5)
    none = _loss(_model(warmup_epochs=0, kl_cycle=0, gamma=0.0), batch, epoch=5)
    for key in ("recon_weight_L_Recon", "kl_weight_L_KL", "kl_weight_lambda_L_Marginal"):
        assert _f(none.terms[key]) == pytest.approx(_f(full.terms[key]), rel=1e-6)
    assert _f(none.terms["gamma_L_Local"]) == 0.0
    gap = _f(full.total) - _f(none.total)
    assert gap == pytest.approx(_f(full.terms["gamma_L_Local"]), rel=1e-4)
    assert _raw(_model(warmup_epochs=0, kl_cycle=0), batch)["local"] == pytest.approx(
        _f(full.terms["gamma_L_Local"]) / 6000.0, rel=1e-6
    )


def test_lambda_zero_removes_exactly_the_marginal_kl():
    batch = _batch()
    full = _loss(_model(warmup_epochs=0, kl_cycle=0, lam=2.0), batch, epoch=5)
    none = _loss(_model(warmup_epochs=0, kl_cycle=0, lam=0.0), batch, epoch=5)
    gap = _f(full.total) - _f(none.total)
    marginal = _raw(_model(warmup_epochs=0, kl_cycle=0, lam=2.0), batch)["marginal_kl"]
    assert gap == pytest.approx(2.0 * marginal, rel=1e-4, abs=1e-3)
    assert _f(full.terms["kl_weight_lambda_L_Marginal"]) == pytest.approx(2.0 * marginal, rel=1e-6)


def test_model_terms_use_latent_means_and_batch_depths():
    model = _model()
    batch = _batch()
    t = _raw(model, batch)
    mu, logvar = model.encode(batch["atac"])
    assert t["kl"] == pytest.approx(_f(sx.gaussian_kl(mu, logvar)), rel=1e-5)
    weights = sx.alignment_weights(batch["rna_depth"], batch["atac_depth"])
    local = sx.local_alignment(batch["rna_pca"], mu, weights)
    assert t["local"] == pytest.approx(_f(local), rel=1e-5)


def test_hybrid_batch_without_reference_trains_l_inv_only():
    model = _model(warmup_epochs=0, kl_cycle=0)
    batch = {k: v for k, v in _batch().items() if k not in ("rna_pca", "rna_depth")}
    out = _loss(model, batch, epoch=3)
    assert "gamma_L_Local" not in out.terms
    t = _raw(model, batch)
    expected = 20.0 * t["recon"] + t["kl"] + t["marginal_kl"]
    assert _f(out.total) == pytest.approx(expected, rel=1e-5)
    assert _f(out.subtotals["L_Inv"]) == _f(out.total)
    assert model.reference(batch) is None


def test_reference_without_rna_depth_weights_cells_uniformly():
    model = _model()
    batch = _batch()
    del batch["rna_depth"]
    t = _raw(model, batch)
    mu, _ = model.encode(batch["atac"])
    expected = sx.local_alignment(batch["rna_pca"], mu, torch.ones(len(mu)))
    assert t["local"] == pytest.approx(_f(expected), rel=1e-5)


def test_confounders_one_hot_batch_and_standardized_depth():
    model = _model()
    batch = _batch()
    c = model.confounders(batch)
    assert c.shape == (6, 4)  # 3 batches + depth
    assert c[:, :3].argmax(dim=1).tolist() == batch["batch"].tolist()
    assert c[:, :3].sum(dim=1).tolist() == [1.0] * 6
    depth = (np.log1p(batch["atac_depth"].numpy()) - 1.2) / 0.4
    np.testing.assert_allclose(c[:, 3].numpy(), depth, rtol=1e-5)


def test_no_batch_key_means_depth_only():
    torch.manual_seed(0)
    config = models.SAILERXConfig(**SMALL, batch_key=None)
    model = models.SAILERX(config, _dims())
    assert "batch" not in models.SAILERX.inputs(config).codes
    batch = {k: v for k, v in _batch().items() if k != "batch"}
    assert model.confounders(batch).shape == (6, 1)
    assert torch.isfinite(_loss(model, batch, epoch=20).total)


# ----------------------------------------------------------------------------------------------
# chromosome split
# ----------------------------------------------------------------------------------------------


def test_peak_chromosomes_parses_both_separators():
    assert sx.peak_chromosomes(["chr1-1-2", "chrX:10-20", "chr1_KI270706v1_random-5-9"]) == [
        "chr1",
        "chrX",
        "chr1_KI270706v1_random",
    ]


def test_chromosome_split_block_structure():
    model = _model()
    assert model.chromosomes == ("chr2", "chr1", "chrX")
    blocks = model.encoder.blocks
    assert [b[0].in_features for b in blocks] == [3, 3, 2]
    assert [b[0].out_features for b in blocks] == [6, 6, 6]
    assert model.mean.in_features == 3 * 3  # three blocks of width 3, concatenated
    assert [b[-1].out_features for b in model.decoder.blocks] == [3, 3, 2]

    # Block outputs depend only on their own chromosome's peaks (eval: fixed batch norm).
    model.eval()
    x = _batch()["atac"]
    chr1_columns = [1, 4, 5]
    moved = x.clone()
    moved[:, chr1_columns] = 1.0 - moved[:, chr1_columns]
    h, h_moved = model.encoder(x[:, model.order]), model.encoder(moved[:, model.order])
    changed = (h - h_moved).abs().amax(dim=0) > 0
    assert changed.tolist() == [False] * 3 + [True] * 3 + [False] * 3


def test_decoder_blocks_write_their_own_peaks_in_data_order():
    model = _model()
    model.eval()
    batch = _batch()
    before = model.impute(batch)["atac"]
    with torch.no_grad():
        model.decoder.blocks[2][-1].bias += 5.0  # the chrX block
    after = model.impute(batch)["atac"]
    changed = (after - before).abs().amax(dim=0) > 0
    assert changed.tolist() == [name.startswith("chrX") for name in PEAKS]


def test_unparsable_peak_names_are_a_clear_error():
    peaks = ("chr1-1-500", "peak_17", "chr2-1-500", "GL000194.1")
    with pytest.raises(RaymmiError, match=r"2 of 4 .*peak_17.*chromosome_split=false"):
        models.SAILERX(models.SAILERXConfig(**SMALL), _dims(peaks))
    dense = models.SAILERX(models.SAILERXConfig(**SMALL, chromosome_split=False), _dims(peaks))
    assert dense.chromosomes == ()
    assert dense.encoder[0].in_features == 4


def test_dense_encoder_widths():
    torch.manual_seed(0)
    model = models.SAILERX(models.SAILERXConfig(**SMALL, chromosome_split=False), _dims())
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [12, 6]
    assert model.decoder[-1].out_features == len(PEAKS)
    assert torch.isfinite(_loss(model, _batch(), epoch=20).total)


# ----------------------------------------------------------------------------------------------
# training and the contract
# ----------------------------------------------------------------------------------------------


def _generated_batch(n=64):
    spec = testing.CellSetSpec(
        n_cells=n, n_genes=60, n_peaks=600, n_cell_types=3, n_batches=2, chunk_size=n, seed=5
    )
    cells = testing.generate_cells(spec, 0)
    # Three chromosomes only: fewer blocks keep the test fast on a busy machine.
    peaks = testing.peak_names(spec)
    keep = [i for i, name in enumerate(peaks) if name.split("-")[0] in ("chr1", "chr2", "chr3")]
    atac = torch.tensor(cells.modalities["atac"][:, keep].toarray())
    rna = torch.tensor(cells.modalities["rna"].toarray())
    dims = models.Dims(
        features={"atac": tuple(peaks[i] for i in keep), "rna_pca": tuple("abcdef")},
        categories={"batch": ("s1", "s2")},
        depth_stats={"atac": (_f(torch.log1p(atac.sum(1)).mean()), 0.5)},
    )
    batch = {
        "atac": atac,
        "rna_pca": torch.log1p(rna)[:, :6],
        "atac_depth": atac.sum(dim=1),
        "rna_depth": rna.sum(dim=1),
        "batch": torch.tensor(cells.obs["batch"].cat.codes.to_numpy(), dtype=torch.long),
    }
    return dims, batch


def test_a_few_steps_lower_the_loss():
    dims, batch = _generated_batch()
    torch.manual_seed(0)
    config = models.SAILERXConfig(z_dim=8, chromosome_widths=(8, 4), gamma=100.0)
    model = models.SAILERX(config, dims)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = _f(_loss(model, batch, epoch=60).total)
    for step in range(10):
        optimizer.zero_grad()
        _loss(model, batch, epoch=60, seed=step).total.backward()
        optimizer.step()
    after = _f(_loss(model, batch, epoch=60).total)
    assert after < 0.95 * before


def test_embed_impute_reference_shapes():
    model = _model()
    model.eval()
    batch = _batch()
    with torch.no_grad():
        z = model.embed(batch)
        imputed = model.impute(batch)
    assert z.shape == (6, 4) and z.dtype == torch.float32
    assert set(imputed) == {"atac"} and imputed["atac"].shape == (6, len(PEAKS))
    assert _f(imputed["atac"].min()) >= 0.0 and _f(imputed["atac"].max()) <= 1.0
    assert torch.equal(model.reference(batch), batch["rna_pca"])
    # embed needs the peaks only
    assert model.embed({"atac": batch["atac"]}).shape == (6, 4)


def test_inputs_and_registration():
    inputs = models.SAILERX.inputs(models.SAILERXConfig())
    assert inputs.modalities == ("atac", "rna_pca")
    assert inputs.depths == ("atac", "rna")
    assert inputs.codes == ("batch",)
    assert set(inputs.optional) == {"rna_pca", "rna_depth"}
    assert models.model_class("sailerx") is models.SAILERX
    assert dict(models.SAILERX.optim_defaults) == {
        "lr": 1e-4,
        "weight_decay": 5e-4,
        "batch_size": 200,
        "epochs": 410,
        "lr_decay": 0.995,
    }


def test_reference_defaults():
    c = models.SAILERXConfig()
    assert (c.z_dim, c.gamma, c.lam, c.kl_cycle, c.warmup_epochs) == (50, 6000.0, 1.0, 100, 10)
    assert c.paper_likelihood_factor is False and c.recon_weight == 20.0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"gamma": -1.0}, "model.gamma=-1.0"),
        ({"lam": float("nan")}, "model.lam=nan"),
        ({"recon_weight": 0.0}, "model.recon_weight"),
        ({"z_dim": 0}, "model.z_dim=0"),
        ({"hidden": ()}, "model.hidden"),
        ({"chromosome_widths": (64, 0)}, "model.chromosome_widths"),
        ({"kl_cycle": -1}, "model.kl_cycle=-1"),
        ({"warmup_epochs": -2}, "model.warmup_epochs=-2"),
        ({"reference": "atac"}, "reference must be another modality"),
        ({"batch_key": ""}, "model.batch_key"),
        ({"atac": ""}, "model.atac"),
    ],
)
def test_bad_config(changes, match):
    with pytest.raises(RaymmiError, match=match):
        models.SAILERXConfig(**changes)


def test_missing_data_names_the_column():
    config = models.SAILERXConfig(**SMALL)
    no_ref = models.Dims(
        features={"atac": PEAKS}, categories={"batch": ("a",)}, depth_stats={"atac": (1.0, 1.0)}
    )
    with pytest.raises(RaymmiError, match=r"model\.reference='rna_pca'"):
        models.SAILERX(config, no_ref)
    with pytest.raises(RaymmiError, match="modality 'atac' is not in the data"):
        models.SAILERX(config, models.Dims(features={"rna_pca": ("a",)}))
    with pytest.raises(RaymmiError, match=r"depth_stats\['atac'\]"):
        models.SAILERX(config, models.Dims(features={"atac": PEAKS, "rna_pca": ("a",)}))
    no_batch = models.Dims(
        features={"atac": PEAKS, "rna_pca": ("a",)}, depth_stats={"atac": (1.0, 1.0)}
    )
    with pytest.raises(RaymmiError, match="obs column 'batch'"):
        models.SAILERX(config, no_batch)
    model = _model()
    with pytest.raises(RaymmiError, match="'atac_depth'"):
        model.objective({k: v for k, v in _batch().items() if k != "atac_depth"})
    with pytest.raises(RaymmiError, match="at least 2 cells"):
        model.objective(_batch(n=1))
