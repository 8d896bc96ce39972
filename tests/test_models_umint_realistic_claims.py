"""UMINT's claim on realistic generated CITE data, the pure module in a plain torch loop.

The data: ``difficulty="realistic"`` CITE cells shaped like the CITE starter (600 cells, 41
unbalanced types, 2 batches, 1,000 genes, 134 proteins), on which an RNA PCA-50 clusters the
types about as on the real file (k-means ARI 0.38-0.42 generated, 0.36-0.39 real). Inputs as
the UMINT notebook prepares them: log-normalized RNA and per-cell CLR ADT, each z-scored
(ddof 1) and clipped at 10. Optimizer at its defaults (``UMINT.optim_defaults``), the
model at its defaults, every cell trained on and embedded.

The claim is made for UMINT at its defaults, ADT weight 5 included (fitted on the real
starter, 0.437 -> 0.483 there). The generated proteins are shaped like the real ones: the 41
types' profiles are shared by lineages (``REALISTIC_ADT_LINEAGES``), so each type is close to a
few and far from most, as on the starter. With independent per-type profiles (before) UMINT at
weight 5 only tied the RNA PCA (seeds 0-3 mean 0.391 against 0.394).

Measured (k-means ARI, k = 41; UMINT defaults / RNA PCA-50 / RNA + ADT PCA-50), seeds 0-3:
0.401 / 0.383 / 0.435, 0.435 / 0.382 / 0.479, 0.535 / 0.398 / 0.520, 0.348 / 0.414 / 0.393:
ahead of the RNA PCA by 0.036 on average, behind it on seed 3 by 0.066. The test holds a
mean lead of 0.015 and a 0.1 floor per seed (runs differ slightly by machine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from raymmi import models, testing


def _scaled(x: np.ndarray) -> np.ndarray:
    z = (x - x.mean(axis=0)) / (x.std(axis=0, ddof=1) + 1e-8)
    return np.clip(z, -10.0, 10.0).astype(np.float32)


def _data(seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    spec = testing.CellSetSpec(
        kind="cite",
        n_cells=600,
        n_genes=1000,
        n_cell_types=41,
        n_batches=2,
        difficulty="realistic",
        chunk_size=600,
        seed=seed,
    )
    cells = testing.generate_cells(spec, 0)
    rna, adt = cells.modalities["rna"], cells.modalities["adt"].astype(np.float64)
    rna_hvg = _scaled(np.log1p(rna.multiply(1e4 / rna.sum(axis=1)).toarray()))
    log_adt = np.log1p(adt)
    adt_clr = _scaled(log_adt - log_adt.mean(axis=1, keepdims=True))
    batch = {"rna_hvg": torch.from_numpy(rna_hvg), "adt_clr": torch.from_numpy(adt_clr)}
    return batch, cells.obs["cell_type"].astype(str).to_numpy()


def _ari(x: np.ndarray, labels: np.ndarray) -> float:
    k = len(np.unique(labels))
    return adjusted_rand_score(labels, KMeans(k, n_init=10, random_state=0).fit_predict(x))


def _train(batch: dict[str, torch.Tensor]) -> np.ndarray:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dims = models.Dims(
        features={m: tuple(f"{m}{i}" for i in range(v.shape[1])) for m, v in batch.items()}
    )
    model = models.UMINT(models.UMINTConfig(), dims)
    optim = models.UMINT.optim_defaults
    optimizer = torch.optim.Adam(
        model.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"]
    )
    rng = np.random.default_rng(0)
    n, size = len(batch["rna_hvg"]), optim["batch_size"]
    for _epoch in range(optim["epochs"]):
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, size):
            rows = order[start : start + size]
            out = model.objective({k: v[rows] for k, v in batch.items()})
            optimizer.zero_grad()
            out.total.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return model.embed(batch).numpy()


@pytest.mark.slow
def test_umint_beats_the_rna_pca_on_realistic_cite_cells():
    learned, rna_pca = [], []
    for seed in range(4):
        batch, labels = _data(seed)
        rna_pca.append(_ari(PCA(50, random_state=0).fit_transform(batch["rna_hvg"]), labels))
        learned.append(_ari(_train(batch), labels))
    assert max(rna_pca) < 0.5  # realistic: far from the easy data's 1.000
    assert all(u > p - 0.1 for u, p in zip(learned, rna_pca, strict=True)), (learned, rna_pca)
    assert np.mean(learned) > np.mean(rna_pca) + 0.015, (learned, rna_pca)
