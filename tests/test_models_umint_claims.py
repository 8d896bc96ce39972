"""UMINT at the defaults a user gets, on the real CITE starter: at the original code's level.

The user's path (``ingest cells`` -> ``preprocess cells`` at defaults) and ``raymmi train``'s
loop (``fit_epochs``, here in-process) at UMINT's defaults; k-means and Ward with k = 41 on the
embedding. The original Keras code on its own inputs scores k-means / Ward ARI 0.454 / 0.460
(5 seeds, ``jobs/bench_models.py --umint-src``); raymmi's old defaults (25 epochs, weights 1)
0.437 / 0.440, its defaults 0.483 / 0.483 (``--causes``). Five seeds here, as the issue asks:
seeds 0-4 measured 0.491 / 0.481 at the defaults (two seeds, 0.448 / 0.477 on CI's machine, were
too few for a 0.45 line); the old defaults on seeds 0 and 1 fall short of the defaults' Ward.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file

from raymmi import metrics
from raymmi.cells import PreprocessCellsConfig
from raymmi.config import IngestCellsConfig, OptimConfig, TrackingConfig

CITE = "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_{}.h5ad"
OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def cite_cells(ray_session, tmp_path_factory):
    from raymmi.run import ingest_cells, preprocess_cells

    rna, adt = (str(shared_file(CITE.format(m))) for m in ("rna", "mod2"))
    root = tmp_path_factory.mktemp("cite")
    ingest_cells(IngestCellsConfig(rna=rna, adt=adt, out=str(root / "raw")), tracking=OFF)
    preprocess_cells(
        PreprocessCellsConfig(), source=str(root / "raw"), out=str(root / "pre"), tracking=OFF
    )
    return str(root / "pre")


def _train_and_score(path: str, *, seed: int, model: dict, optim: dict) -> dict[str, float]:
    from raymmi import run

    cells = run.decode_cells(path, model_name="umint", obs=["cell_type"])
    got = run.train_embed(cells, model=model, optim=OptimConfig(seed=seed, **optim))
    labels = np.asarray(cells.obs["cell_type"], dtype=str)
    k = len(np.unique(labels))
    return metrics.cluster_scores(got.embedding, labels, n_clusters=k, seed=seed).flat()


@pytest.mark.slow
def test_umint_defaults_reach_the_original_on_the_cite_starter(cite_cells):
    runs = [_train_and_score(cite_cells, seed=s, model={}, optim={}) for s in range(5)]
    kmeans = np.mean([r["kmeans_ari"] for r in runs])
    ward = np.mean([r["ward_ari"] for r in runs])
    print(f"UMINT defaults, 5 seeds: k-means ARI {kmeans:.3f}, Ward {ward:.3f}")
    assert kmeans >= 0.45 and ward >= 0.47, (kmeans, ward)
    # the old defaults (the reference's 25 epochs, weights 1) fall short on the same seeds
    old = [
        _train_and_score(cite_cells, seed=s, model={"lambdas": [1.0, 1.0]}, optim={"epochs": 25})
        for s in (0, 1)
    ]
    assert np.mean([r["ward_ari"] for r in old]) < ward


@pytest.mark.slow
def test_decoded_cells_name_what_is_wrong(cite_cells):
    from raymmi import run
    from raymmi.schema import RaymmiError

    with pytest.raises(RaymmiError, match="no obs column"):
        run.decode_cells(cite_cells, model_name="umint", obs=["celltype"])
    cells = run.decode_cells(cite_cells, model_name="umint", obs=["cell_type"])
    assert len(cells.cell_ids) == len(cells.obs["cell_type"]) == 600
    with pytest.raises(RaymmiError, match="expected"):
        run.replace_modalities(
            cells, {"adt_clr": np.zeros((600, 3), np.float32)}, features={"adt_clr": ["a", "b"]}
        )
    swapped = run.replace_modalities(
        cells, {"adt_clr": np.zeros((600, 2), np.float32)}, features={"adt_clr": ["a", "b"]}
    )
    assert swapped.plan.layout.dims.n_features("adt_clr") == 2
    assert cells.plan.layout.dims.n_features("adt_clr") == 134  # the original is unchanged
