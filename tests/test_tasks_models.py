"""The task models (mlp_predict, jae, clue_match): contract, configs, and that they learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raymmi import metrics as M
from raymmi import tasks as T
from raymmi.models import Dims, Model, model_class
from raymmi.models._tasks import (
    JAE,
    ClueMatch,
    ClueMatchConfig,
    JAEConfig,
    MlpPredict,
    MlpPredictConfig,
    _ReverseGradient,
)
from raymmi.schema import RaymmiError

N_RNA, N_ADT, N_TYPES = 40, 12, 4


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core box: OpenMP spin-waits of 2 threads cost 50x (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _paired(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """Paired cells from a shared latent: types are clusters of it; batches shift the RNA."""
    g = torch.Generator().manual_seed(seed)
    cell_type = torch.randint(0, N_TYPES, (n,), generator=g)
    centers = torch.randn(N_TYPES, 4, generator=g) * 3
    z = centers[cell_type] + torch.randn(n, 4, generator=g)
    batch = torch.randint(0, 2, (n,), generator=g)
    a, b = torch.randn(4, N_RNA, generator=g), torch.randn(4, N_ADT, generator=g)
    rna = z @ a + 0.3 * torch.randn(n, N_RNA, generator=g) + batch[:, None] * 0.5
    adt = torch.relu(z @ b) + 0.1 * torch.randn(n, N_ADT, generator=g)
    phase = torch.randint(0, 3, (n,), generator=g)
    return {"rna": rna, "adt": adt, "cell_type": cell_type, "phase": phase, "batch": batch}


def _dims() -> Dims:
    return Dims(
        features={
            "rna": tuple(f"g{i}" for i in range(N_RNA)),
            "adt": tuple(f"p{i}" for i in range(N_ADT)),
        },
        categories={
            "cell_type": tuple(f"T{i}" for i in range(N_TYPES)),
            "phase": ("G1", "S", "G2M"),
            "batch": ("b0", "b1"),
        },
    )


def _rows(data: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {k: v[rows] for k, v in data.items()}


def _train(model: Model, data: dict[str, torch.Tensor], *, steps: int) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=model.optim_defaults["lr"] * 3)
    n = next(iter(data.values())).shape[0]
    losses = []
    for _ in range(steps):
        rows = torch.randperm(n)[:128]
        out = model.objective({k: v[rows] for k, v in data.items()})
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(float(out.total.detach()))
    model.eval()
    return losses


def test_models_are_registered_with_optim_defaults():
    for name, cls in (("mlp_predict", MlpPredict), ("jae", JAE), ("clue_match", ClueMatch)):
        assert model_class(name) is cls
        assert set(cls.optim_defaults) == {"lr", "weight_decay", "batch_size", "epochs"}
        assert dataclasses.is_dataclass(cls.Config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls.Config().dropout = 0.5  # type: ignore[misc]


def test_inputs_name_the_batch_keys():
    assert MlpPredict.inputs(MlpPredictConfig()).keys() == ("rna", "adt")
    assert MlpPredict.inputs(MlpPredictConfig()).optional == ("adt",)
    jae = JAE.inputs(JAEConfig())
    assert jae.keys() == ("rna", "adt", "cell_type", "phase", "batch")
    assert set(jae.optional) == {"cell_type", "phase", "batch"}
    assert ClueMatch.inputs(ClueMatchConfig(modalities=("rna", "atac"))).keys() == (
        "rna",
        "atac",
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MlpPredictConfig(source="rna", target="rna"), "names a modality twice"),
        (lambda: MlpPredictConfig(hidden=(64,)), "2 to 4 widths"),
        (lambda: MlpPredictConfig(hidden=(64, 0)), "positive integers"),
        (lambda: MlpPredictConfig(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
        (lambda: JAEConfig(free_dim=80), "above the challenge's 100"),
        (lambda: JAEConfig(batch_term="gan"), "batch_term='gan' is not one of"),
        (lambda: JAEConfig(weight_type=-1.0), "weight_type=-1.0"),
        (lambda: ClueMatchConfig(modalities=("rna",)), "at least 2 modalities"),
        (lambda: ClueMatchConfig(subspace_dim=60), "exceeds the challenge's 100"),
        (lambda: ClueMatchConfig(temperature=0.0), "temperature=0.0"),
    ],
)
def test_configs_refuse_bad_values(make, match):
    with pytest.raises(RaymmiError, match=match):
        make()


def test_mlp_predict_learns_the_target_modality():
    data = _paired()
    train, test = _rows(data, slice(0, 300)), _rows(data, slice(300, None))
    model = MlpPredict(MlpPredictConfig(hidden=(64, 64, 32), dropout=0.0), _dims())
    losses = _train(model, train, steps=150)
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5])
    with torch.no_grad():
        imputed = model.impute({"rna": test["rna"]})  # no target needed to predict
        emb = model.embed({"rna": test["rna"]})
    assert set(imputed) == {"adt"} and imputed["adt"].shape == (100, N_ADT)
    assert emb.shape == (100, 32)
    y = test["adt"].numpy()
    baseline = T.predict_mean(train["adt"].numpy(), n_cells=100)
    assert M.rmse(y, imputed["adt"].numpy()) < 0.6 * M.rmse(y, baseline)
    with pytest.raises(RaymmiError, match="no 'adt' values"):
        model.objective({"rna": test["rna"]})


def test_jae_terms_and_embedding():
    data = _paired(seed=1)
    config = JAEConfig(
        input_dim=16, hidden=(32,), type_dim=4, cycle_dim=2, batch_dim=2, free_dim=4
    )
    model = JAE(config, _dims())
    first = model.objective(data).floats()
    labels = ("weight_type_CE_type", "weight_cycle_CE_cycle", "weight_batch_L_batch")
    assert set(first) == {"MSE_rna", "MSE_adt", *labels, "loss"}
    # without label columns (JAE's fine-tuning) only reconstruction is left
    bare = model.objective({"rna": data["rna"], "adt": data["adt"]}).floats()
    assert [bare[k] for k in labels] == [0.0, 0.0, 0.0]
    assert bare["loss"] == pytest.approx(bare["MSE_rna"] + bare["MSE_adt"], rel=1e-5)
    # unknown codes (-1) leave their cells out of the term
    unknown = dict(data, cell_type=torch.full_like(data["cell_type"], -1))
    assert model.objective(unknown).floats()["weight_type_CE_type"] == 0.0
    losses = _train(model, data, steps=150)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    with torch.no_grad():
        z = model.embed({"rna": data["rna"], "adt": data["adt"]}).numpy()
    assert z.shape == (400, config.latent_dim)
    assert M.label_asw(z, data["cell_type"].numpy()) > 0.55


def test_jae_adversarial_batch_term_reverses_the_encoder_gradient():
    x = torch.ones(3, requires_grad=True)
    _ReverseGradient.apply(x).sum().backward()
    assert torch.equal(x.grad, -torch.ones(3))
    data = _paired(n=64, seed=2)
    model = JAE(JAEConfig(batch_term="adversarial", hidden=(16,)), _dims())
    terms = model.objective(data).floats()
    # cross-entropy of a 2-class head, not JAE's uniform target
    assert terms["weight_batch_L_batch"] > 0.3


def test_clue_match_puts_both_modalities_in_one_space():
    data = _paired(n=600, seed=3)
    train, test = _rows(data, slice(0, 450)), _rows(data, slice(450, None))
    config = ClueMatchConfig(subspace_dim=8, hidden=(64,), dropout=0.0)
    model = ClueMatch(config, _dims())
    losses = _train(model, {"rna": train["rna"], "adt": train["adt"]}, steps=200)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    with torch.no_grad():
        e_rna = model.embed_modality({"rna": test["rna"]}, "rna").numpy()
        e_adt = model.embed_modality({"adt": test["adt"]}, "adt").numpy()
        joint = model.embed({"rna": test["rna"], "adt": test["adt"]}).numpy()
    assert e_rna.shape == e_adt.shape == joint.shape == (150, 16)
    np.testing.assert_allclose(joint, (e_rna + e_adt) / 2, rtol=1e-5, atol=1e-6)
    matching = T.knn_softmax_matching(e_rna, e_adt, k=50)
    M.check_matching(matching)
    assert M.match_score(matching) > 5.0 / 150
    with pytest.raises(RaymmiError, match=r"lacks \['adt'\]"):
        model.objective({"rna": test["rna"]})
