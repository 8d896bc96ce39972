"""The joint-embedding metrics: hand-made cases, and scib (the challenge's code) as reference."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from raymmi import metrics as M


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices on a shared 2-core box: spinning BLAS threads cost ~5x (measured)."""
    with threadpool_limits(limits=1):
        yield


def _cells(seed: int = 0, n: int = 240, shift: float = 1.5):
    """Three cell types in two batches, the second batch shifted."""
    rng = np.random.default_rng(seed)
    cell_type = np.repeat(["t0", "t1", "t2"], n // 3)
    batch = np.tile(["b0", "b1"], n // 2)
    x = rng.normal(size=(n, 8))
    x[cell_type == "t1", 0] += 6.0
    x[cell_type == "t2", 1] += 6.0
    x[batch == "b1", 2] += shift
    return x, cell_type, batch


def _trajectory(seed: int = 0, n: int = 150):
    """Cells along a noisy curve; pseudotime = position; types = thirds of the path."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n))
    x = np.column_stack([10 * t, np.sin(3 * t), rng.normal(scale=0.05, size=(n, 3))])
    cell_type = np.array(["early", "mid", "late"])[np.minimum((t * 3).astype(int), 2)]
    batch = rng.choice(["b0", "b1"], size=n)
    return x, t, cell_type, batch


def _scib():
    return pytest.importorskip("scib")


def _scanpy_graph(x: np.ndarray, obs: pd.DataFrame) -> ad.AnnData:
    adata = ad.AnnData(obs=obs.copy())
    adata.obsm["X_emb"] = x
    sc.pp.neighbors(adata, use_rep="X_emb")
    return adata


# ----------------------------------------------------------------------------------------------
# neighbour graph
# ----------------------------------------------------------------------------------------------


def test_neighbor_graph_is_scanpys_exact_graph_below_the_threshold():
    x, cell_type, _ = _cells()
    graph = M.neighbor_graph(x)
    assert graph.method == "exact"
    assert graph.describe() == "exact kNN (sklearn), 15 neighbours, euclidean"
    reference = _scanpy_graph(x, pd.DataFrame(index=[str(i) for i in range(len(x))]))
    diff = graph.connectivities - reference.obsp["connectivities"]
    assert abs(diff).max() < 1e-6
    assert graph.connectivities.shape == (len(x), len(x))
    # graph connectivity of the shared graph equals the kNN-graph implementation in _batch
    assert M.graph_connectivity(x, cell_type) == pytest.approx(_graph_conn(graph, cell_type))


def _graph_conn(graph: M.NeighborGraph, labels: np.ndarray) -> float:
    from raymmi.metrics import largest_component_share

    return largest_component_share(graph.connectivities, labels)


@pytest.mark.slow
@pytest.mark.heavy
def test_neighbor_graph_goes_approximate_above_the_threshold():
    # A fresh interpreter: after a Ray Train/Tune run in this process, Ray has replaced
    # builtins.print with a Python function and numba cannot compile pynndescent
    # ("Untyped global name 'print'"); known, left for the next session to fix in _neighbors.
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_metrics_embed as t; "
        "t._approximate_check()"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _approximate_check():
    x, _, _ = _cells(n=300)
    graph = M.neighbor_graph(x, approximate_above=100)
    assert graph.method == "approximate"
    assert "pynndescent" in graph.describe()
    exact = M.neighbor_graph(x, method="exact")
    # pynndescent is exact or nearly so on 300 points: almost every edge is shared
    shared = graph.connectivities.multiply(exact.connectivities).nnz
    assert shared / exact.connectivities.nnz > 0.95


def test_neighbor_graph_bad_input():
    with pytest.raises(ValueError, match="method='fast' is not one of"):
        M.neighbor_graph(np.zeros((10, 2)), method="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_neighbors=15 must be"):
        M.neighbor_graph(np.random.default_rng(0).normal(size=(10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        M.neighbor_graph(np.full((20, 2), np.nan))


# ----------------------------------------------------------------------------------------------
# NMI at the best Leiden resolution
# ----------------------------------------------------------------------------------------------


def test_optimal_leiden_nmi_recovers_separated_types():
    x, cell_type, _ = _cells(shift=0.0)
    best = M.optimal_leiden_nmi(x, cell_type)
    assert best.nmi > 0.9
    assert best.resolution in M.CHALLENGE_RESOLUTIONS
    assert best.nmi == pytest.approx(M.normalized_mutual_info(cell_type, best.clusters))
    rng = np.random.default_rng(0)
    noise = M.optimal_leiden_nmi(rng.normal(size=x.shape), cell_type)
    assert noise.nmi < 0.2


def test_optimal_leiden_nmi_is_scibs_cluster_optimal_resolution():
    scib = _scib()
    x, cell_type, batch = _cells(1, shift=3.0)
    obs = pd.DataFrame({"cell_type": cell_type, "batch": batch})
    obs.index = obs.index.astype(str)
    adata = _scanpy_graph(x, obs)
    resolutions = [0.2, 0.5, 1.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, reference = scib.me.cluster_optimal_resolution(
            adata,
            label_key="cell_type",
            cluster_key="cluster",
            cluster_function=sc.tl.leiden,
            resolutions=resolutions,
            verbose=False,
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
    got = M.optimal_leiden_nmi(x, cell_type, resolutions=resolutions)
    assert got.nmi == pytest.approx(reference, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# ASW, batch ASW, graph connectivity vs scib
# ----------------------------------------------------------------------------------------------


def test_silhouettes_and_connectivity_are_scibs():
    scib = _scib()
    x, cell_type, batch = _cells(2)
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_type), "batch": batch})
    obs.index = obs.index.astype(str)
    adata = _scanpy_graph(x, obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asw = scib.me.silhouette(adata, label_key="cell_type", embed="X_emb")
        asw_batch = scib.me.silhouette_batch(
            adata, batch_key="batch", label_key="cell_type", embed="X_emb", verbose=False
        )
        conn = scib.me.graph_connectivity(adata, label_key="cell_type")
    assert M.label_asw(x, cell_type) == pytest.approx(asw)
    assert M.label_asw(x, cell_type) == pytest.approx((silhouette_score(x, cell_type) + 1) / 2)
    assert M.batch_asw(x, batch, cell_type) == pytest.approx(asw_batch)
    assert _graph_conn(M.neighbor_graph(x), cell_type) == pytest.approx(conn)


# ----------------------------------------------------------------------------------------------
# trajectory conservation
# ----------------------------------------------------------------------------------------------


def test_trajectory_conservation_hand_cases():
    x, t, cell_type, batch = _trajectory()
    kept = M.trajectory_conservation(x, t, cell_type=cell_type, batch=batch)
    assert kept > 0.95
    rng = np.random.default_rng(3)
    lost = M.trajectory_conservation(rng.normal(size=x.shape), t, cell_type=cell_type, batch=batch)
    assert lost < 0.75
    # cells off the trajectory (NaN pseudotime) are left out, not scored
    extra = np.vstack([x, rng.normal(size=(40, x.shape[1])) + 50])
    pt = np.concatenate([t, np.full(40, np.nan)])
    types = np.concatenate([cell_type, np.full(40, "other")])
    batches = np.concatenate([batch, np.full(40, "b0")])
    assert M.trajectory_conservation(extra, pt, cell_type=types, batch=batches) == pytest.approx(
        kept, abs=0.02
    )
    assert np.isnan(
        M.trajectory_conservation(x, np.full(len(x), np.nan), cell_type=cell_type, batch=batch)
    )


def test_trajectory_conservation_is_scibs():
    scib = _scib()
    x, t, cell_type, batch = _trajectory(1)
    rng = np.random.default_rng(1)
    x = x + rng.normal(scale=0.8, size=x.shape)  # blur the path so the score is not ~1
    t = np.where(rng.random(len(t)) < 0.1, np.nan, t)
    obs = pd.DataFrame({"cell_type": cell_type, "batch": batch, "pt": t})
    obs.index = obs.index.astype(str)
    adata = _scanpy_graph(x, obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch_key in ("batch", None):
            reference = scib.me.trajectory_conservation(
                adata, adata, label_key="cell_type", pseudotime_key="pt", batch_key=batch_key
            )
            got = M.trajectory_conservation(
                x, t, cell_type=cell_type, batch=None if batch_key is None else batch
            )
            assert got == pytest.approx(reference, abs=1e-9)
            assert 0.55 < got < 0.98


# ----------------------------------------------------------------------------------------------
# cell-cycle conservation
# ----------------------------------------------------------------------------------------------


def _cycling(seed: int = 0, n: int = 200, p: int = 80):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, 2))
    loadings = rng.normal(size=(2, p))
    x_pre = rng.normal(size=(n, p)) + scores @ loadings
    batch = np.repeat(["b0", "b1"], n // 2)
    return x_pre, scores, batch


def test_cell_cycle_conservation_hand_cases():
    x_pre, scores, batch = _cycling()
    # the unintegrated data themselves keep the cycle exactly
    same = M.cell_cycle_conservation(x_pre, x_pre=x_pre, scores=scores, batch=batch)
    assert same == pytest.approx(1.0)
    # regressing the scores out of the embedding removes the cycle: after ~ 0, score ~ 0
    design = np.hstack([np.ones((len(scores), 1)), scores])
    coef, *_ = np.linalg.lstsq(design, x_pre, rcond=None)
    removed = x_pre - design @ coef
    assert M.cell_cycle_conservation(removed, x_pre=x_pre, scores=scores, batch=batch) < 0.05


def test_cell_cycle_conservation_is_scibs():
    scib = _scib()
    x_pre, scores, batch = _cycling(1, p=120)
    rng = np.random.default_rng(1)
    emb = x_pre[:, :30] + rng.normal(scale=2.0, size=(len(x_pre), 30))
    obs = pd.DataFrame({"batch": batch, "S_score": scores[:, 0], "G2M_score": scores[:, 1]})
    obs.index = obs.index.astype(str)
    pre = ad.AnnData(X=x_pre, obs=obs)
    post = pre.copy()
    post.obsm["X_emb"] = emb
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = scib.me.cell_cycle(
            pre, post, batch_key="batch", embed="X_emb", recompute_cc=False
        )
    got = M.cell_cycle_conservation(emb, x_pre=x_pre, scores=scores, batch=batch)
    assert got == pytest.approx(reference, rel=1e-5)
    assert 0.05 < got < 0.95


S_GENES = ("MCM5", "PCNA", "TYMS")
G2M_GENES = ("HMGB2", "CDK1", "NUSAP1", "UBE2C")


def test_cell_cycle_scores_are_scanpys_per_batch():
    rng = np.random.default_rng(0)
    genes = [*S_GENES, *G2M_GENES, *(f"G{i}" for i in range(200))]
    x = rng.poisson(1.0, size=(120, len(genes))).astype(float)
    x[:60, :3] += 5  # S genes up in the first batch's cells
    batch = np.repeat(["b0", "b1"], 60)
    got = M.cell_cycle_scores(x, genes, batch=batch)
    assert got.shape == (120, 2)
    for b in ("b0", "b1"):
        rows = batch == b
        adata = ad.AnnData(X=x[rows], var=pd.DataFrame(index=genes))
        sc.tl.score_genes_cell_cycle(adata, s_genes=list(S_GENES), g2m_genes=list(G2M_GENES))
        np.testing.assert_allclose(got[rows, 0], adata.obs["S_score"])
        np.testing.assert_allclose(got[rows, 1], adata.obs["G2M_score"])
    with pytest.raises(ValueError, match="none of the S-phase marker genes"):
        M.cell_cycle_scores(x[:, 10:], genes[10:], batch=batch)


# ----------------------------------------------------------------------------------------------
# the whole score
# ----------------------------------------------------------------------------------------------


def test_embed_score_collects_the_six_metrics():
    x, cell_type, batch = _cells(4)
    pre, scores, _ = _cycling(4, n=len(x))
    pt = np.where(cell_type == "t2", np.nan, x[:, 0])
    s = M.embed_score(
        x,
        cell_type=cell_type,
        batch=batch,
        x_pre=pre,
        cycle_scores=scores,
        pseudotimes={"a": pt},
    )
    values = s.as_dict()
    assert list(values) == [*M.EMBED_METRICS, "mean", "ilisi"]
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert s.mean == pytest.approx(np.mean([values[k] for k in M.EMBED_METRICS]))
    assert s.missing == ()
    assert s.neighbors.startswith("exact kNN")
    assert s.nmi == pytest.approx(M.optimal_leiden_nmi(x, cell_type).nmi)
    assert s.asw_batch == pytest.approx(M.batch_asw(x, batch, cell_type))
    assert s.ilisi == pytest.approx(M.ilisi(x, batch))


def test_embed_score_names_what_it_could_not_compute():
    x, cell_type, batch = _cells(5)
    s = M.embed_score(x, cell_type=cell_type, batch=batch, with_ilisi=False)
    assert s.missing == ("cc_cons", "ti_cons")
    assert np.isnan(s.cc_cons) and np.isnan(s.ti_cons) and np.isnan(s.ilisi)
    assert s.mean == pytest.approx(np.mean([s.nmi, s.asw_label, s.asw_batch, s.graph_conn]))
    mixed = M.embed_score(_cells(5, shift=0.0)[0], cell_type=cell_type, batch=batch)
    assert mixed.asw_batch > s.asw_batch
    with pytest.raises(ValueError, match=r"batch needs one value per cell, shape \(240,\)"):
        M.embed_score(x, cell_type=cell_type, batch=batch[:10])
