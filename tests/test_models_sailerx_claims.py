"""SAILERX's claims on realistic generated multiome data, the pure module in a plain torch loop.

The data: ``difficulty="realistic"`` cells (RNA PCA clusters the types about as on a real
10x Multiome BMMC set: k-means ARI 0.32-0.46 here), 600 genes and 600 peaks as in that set,
eight types of unbalanced sizes. The model and the optimizer run at their defaults (z 50,
chromosome split, gamma 6000, lambda 1, Adam lr 1e-4, weight decay 5e-4, batch 200, last
partial batch dropped as the reference's ``drop_last``; the learning rate kept constant, without
the per-epoch decay ``raymmi train`` applies); only the number of epochs varies.
The distributed path (Ray Train, DDP) is tested in ``test_train.py``; these test the model.

Measured (this loop, k-means ARI, learned / RNA PCA-50 reference):

- ATAC with signal the RNA lacks (type t uses RNA program t % 4, so the RNA merges pairs of
  types; the peaks tell all eight apart), 1,500 cells, 20 epochs, seeds 0-3: 0.516 / 0.372,
  0.419 / 0.383, 0.425 / 0.351, 0.479 / 0.400 (1.09-1.39x).
- ATAC with no type signal at all (``atac_type_signal=0``): the encoder sees only the peaks,
  so the reference's structure can be kept only through the alignment term, cell by cell.
  The reference protocol (500 cells, 410 epochs) keeps 0.413 / 0.486, 0.329 / 0.324,
  0.341 / 0.336 (seeds 0-2: 85%, 102%, 101%); 1,500 cells for 40 epochs keep nothing
  (0.02 / 0.37): it needs the reference's many passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from raymmi import models, testing

N_PCS = 50


def _data(*, atac_type_signal: float, rna_type_programs: int | None, n_cells: int, seed: int):
    spec = testing.CellSetSpec(
        n_cells=n_cells,
        n_genes=600,
        n_peaks=600,
        n_cell_types=8,
        n_batches=2,
        rna_type_programs=rna_type_programs,
        atac_type_signal=atac_type_signal,
        difficulty="realistic",
        chunk_size=n_cells,
        seed=seed,
    )
    cells = testing.generate_cells(spec, 0)
    rna, atac = cells.modalities["rna"], cells.modalities["atac"]
    x = np.log1p(rna.multiply(1e4 / rna.sum(axis=1)).toarray())
    x = np.clip((x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6), None, 10.0)
    reference = PCA(N_PCS, random_state=0).fit_transform(x).astype(np.float32)
    batches = tuple(sorted(cells.obs["batch"].astype(str).unique()))
    codes = np.searchsorted(np.asarray(batches), cells.obs["batch"].astype(str).to_numpy())
    atac_depth = np.asarray(atac.sum(axis=1), dtype=np.float32).ravel()
    log_depth = np.log1p(atac_depth)
    dims = models.Dims(
        features={
            "atac": tuple(testing.peak_names(spec)),
            "rna_pca": tuple(f"PC{i + 1}" for i in range(N_PCS)),
        },
        categories={"batch": batches},
        depth_stats={"atac": (float(log_depth.mean()), float(log_depth.std()))},
    )
    batch = {
        "atac": torch.from_numpy(atac.toarray().astype(np.float32)),
        "rna_pca": torch.from_numpy(reference),
        "atac_depth": torch.from_numpy(atac_depth),
        "rna_depth": torch.from_numpy(np.asarray(rna.sum(axis=1), dtype=np.float32).ravel()),
        "batch": torch.from_numpy(codes),
    }
    return batch, dims, cells.obs["cell_type"].astype(str).to_numpy()


def _ari(x: np.ndarray, labels: np.ndarray) -> float:
    k = len(np.unique(labels))
    return adjusted_rand_score(labels, KMeans(k, n_init=10, random_state=0).fit_predict(x))


def _train(batch, dims, *, epochs: int) -> np.ndarray:
    """Defaults throughout: model config, optimizer, batch size (full batches only)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cls = models.model_class("sailerx")
    model = cls(cls.Config(), dims)
    optim = cls.optim_defaults
    optimizer = torch.optim.Adam(
        model.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"]
    )
    size = optim["batch_size"]
    rng = np.random.default_rng(0)
    n = len(batch["atac"])
    for epoch in range(epochs):
        model.train()
        kl_weight = models.kl_schedule(epoch, **models.annealing(model.config))
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n - size + 1, size):
            rows = order[start : start + size]
            out = model.objective({k: v[rows] for k, v in batch.items()}, kl_weight=kl_weight)
            optimizer.zero_grad()
            out.total.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return model.embed(batch).numpy()


@pytest.mark.slow
def test_atac_signal_the_rna_lacks_lifts_ari_above_the_reference():
    learned, reference = [], []
    for seed in (0, 1):
        batch, dims, labels = _data(
            atac_type_signal=1.0, rna_type_programs=4, n_cells=1500, seed=seed
        )
        reference.append(_ari(batch["rna_pca"].numpy(), labels))
        learned.append(_ari(_train(batch, dims, epochs=20), labels))
    assert max(reference) < 0.5  # realistic: the RNA alone clusters the types poorly
    assert all(a > r for a, r in zip(learned, reference, strict=True)), (learned, reference)
    assert np.mean(learned) > np.mean(reference) + 0.04, (learned, reference)


@pytest.mark.slow
def test_without_atac_signal_the_reference_protocol_keeps_its_structure():
    ratios = []
    for seed in (0, 1):
        batch, dims, labels = _data(
            atac_type_signal=0.0, rna_type_programs=None, n_cells=500, seed=seed
        )
        reference = _ari(batch["rna_pca"].numpy(), labels)
        learned = _ari(_train(batch, dims, epochs=410), labels)
        ratios.append(learned / reference)
    assert min(ratios) >= 0.8, ratios
    assert np.mean(ratios) >= 0.9, ratios


@pytest.fixture(scope="module")
def issue_cells(ray_session, tmp_path_factory):
    """``bench_models --only sailerx --cells 500 --peaks 600``'s set, the user's path to it."""
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.config import TrackingConfig
    from raymmi.run import generate_cells, preprocess_cells

    off = TrackingConfig(enabled=False)
    root = tmp_path_factory.mktemp("issue17")
    spec = testing.CellSetSpec(
        n_cells=500,
        n_genes=600,
        n_peaks=600,
        n_cell_types=21,
        n_batches=2,
        difficulty="realistic",
        seed=0,
    )
    generate_cells(spec, out=str(root / "raw"), tracking=off)
    preprocess_cells(
        PreprocessCellsConfig(), source=str(root / "raw"), out=str(root / "pre"), tracking=off
    )
    return str(root / "pre")


# The original code (uci-cbcl/SAILERX ``train.py`` at its defaults, evaluated at ``398.pt``) on
# this set, by ``python jobs/bench_models.py --only sailerx --cells 500 --peaks 600
# --sailerx-src SAILERX --sailerx-seeds 3``: Leiden ARI 0.903 +/- 0.005 (seeds 0-2).
ORIGINAL_LEIDEN_ARI = 0.903


@pytest.mark.slow
@pytest.mark.heavy
def test_defaults_lead_the_original_and_the_reference_they_align_to(issue_cells):
    """``raymmi train sailerx`` at its defaults beats the original code and its RNA PCA reference.

    Leiden ARI (15-NN, best NMI over resolutions) on the issue-shaped realistic set, seed 0.
    Measured at the defaults, seeds 0-2: 0.929, 0.910, 0.935, against the original's 0.903 and
    the reference's 0.849. Holding out a 10% validation split (``val_fraction=0.1``, the old
    default) gave 0.887, 0.813, 0.883 and fails here; so did no learning-rate decay (0.830 at
    seed 0, ``optim.lr_decay=1``). About 3 minutes on a quiet core.
    """
    from raymmi import metrics, run
    from raymmi.config import OptimConfig

    cells = run.decode_cells(issue_cells, model_name="sailerx", obs=["cell_type"])
    labels = np.asarray(cells.obs["cell_type"], dtype=str)
    reference = metrics.leiden_scores(cells.arrays["rna_pca"], labels)
    got = run.train_embed(cells, optim=OptimConfig(seed=0))
    learned = metrics.leiden_scores(got.embedding, labels, seed=0)
    assert learned.ari > reference.ari, (learned, reference)
    assert learned.ari > ORIGINAL_LEIDEN_ARI, learned
