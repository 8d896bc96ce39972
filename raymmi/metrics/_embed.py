"""The joint-embedding score of the NeurIPS 2021 multimodal challenge, metric by metric.

Six metrics, each in [0, 1] with higher better, averaged without weights (Lance et al. 2022;
the challenge's ``neurips2021_multimodal_viash`` metric scripts, which call scib):

- ``nmi``: NMI of cell types vs Leiden clusters of the embedding's kNN graph, at the
  resolution (scanned like scib's ``opt_louvain``) that maximizes it;
- ``asw_label``: silhouette of cell types rescaled to ``(s + 1) / 2``;
- ``cc_cons``: cell-cycle conservation, scib's ``cell_cycle``: per batch, ``1 - |after -
  before| / before`` where *before*/*after* are the variance the S and G2M scores explain in
  the principal components of the unintegrated data / of the embedding (clipped at 0);
- ``ti_cons``: trajectory conservation, scib's ``trajectory_conservation`` with
  ``batch_key``: on the trajectory cells (those with a reference pseudotime), diffusion
  pseudotime on the embedding's graph from a root among the earliest cell type, Spearman
  correlation with the reference per batch, mean, ``(r + 1) / 2``; the challenge averages it
  over its two trajectories (``pseudotime_order_GEX`` and ``_ADT``/``_ATAC``);
- ``asw_batch``: batch ASW, ``1 - |s|`` of the batch silhouette within each cell type;
- ``graph_conn``: graph connectivity, the mean over cell types of the share of its cells in
  the largest connected piece of its kNN subgraph.

iLISI (scaled median, harmonypy style) is reported beside them but not averaged. Every graph
metric uses one :class:`~raymmi.metrics.NeighborGraph`, exact or approximate by size, and the
result says which. Leiden is igraph's (scanpy ``flavor="igraph"``, 2 iterations), the
default scanpy is moving to; the challenge used Louvain, which scanpy only offers through
the unmaintained ``louvain`` package. No Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.decomposition import PCA

from raymmi.metrics._cell_cycle import CELL_CYCLE_G2M_GENES, CELL_CYCLE_S_GENES
from raymmi.metrics._batch import batch_asw, ilisi
from raymmi.metrics._cluster import label_asw, normalized_mutual_info
from raymmi.metrics._neighbors import (
    NeighborGraph,
    NeighborMethod,
    largest_component_share,
    neighbor_graph,
)

if TYPE_CHECKING:
    import anndata as ad

#: The resolutions scib's ``opt_louvain`` scans (the challenge's NMI): 0.1, 0.2, ... 2.0.
CHALLENGE_RESOLUTIONS = tuple(round(0.1 * i, 1) for i in range(1, 21))
#: The six metrics whose unweighted mean is the challenge's embedding score.
EMBED_METRICS = ("nmi", "asw_label", "cc_cons", "ti_cons", "asw_batch", "graph_conn")
# scib's get_root: diffusion components that vote for the root cell.
_ROOT_DIMS = 3
# scib's pc_regression: principal components whose variance is regressed on the covariates.
_PCR_COMPONENTS = 50


class OptimalClustering(NamedTuple):
    """The Leiden clustering that agrees best with the labels.

    ``nmi``: its NMI with the labels; ``resolution``: the resolution that produced it;
    ``clusters``: cluster id per cell, int array of shape (n_cells,).
    """

    nmi: float
    resolution: float
    clusters: np.ndarray


def _as_embedding(x: np.ndarray, *, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        msg = f"{name} needs an embedding of shape (n_cells >= 3, n_dims); got {x.shape}"
        raise ValueError(msg)
    return x


def _per_cell(values: np.ndarray | None, n: int, *, name: str) -> np.ndarray:
    if values is None:
        msg = f"{name} is required: one value per cell, shape ({n},)"
        raise ValueError(msg)
    values = np.asarray(values)
    if values.shape != (n,):
        msg = f"{name} needs one value per cell, shape ({n},); got {values.shape}"
        raise ValueError(msg)
    return values


def _mean_of_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _graph_for(
    x: np.ndarray, graph: NeighborGraph | None, *, n_neighbors: int, seed: int
) -> NeighborGraph:
    if graph is None:
        return neighbor_graph(x, n_neighbors=n_neighbors, seed=seed)
    if graph.n_cells != x.shape[0]:
        msg = f"graph has {graph.n_cells} cells but the embedding {x.shape[0]} rows"
        raise ValueError(msg)
    return graph


def leiden(graph: NeighborGraph, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden clusters of a kNN graph (scanpy ``tl.leiden``, igraph flavour, 2 iterations).

    Parameters
    ----------
    graph
        The graph; its connectivities are the edge weights.
    resolution
        Modularity resolution; higher gives more clusters.
    seed
        Seed of igraph's random state.

    Returns
    -------
    numpy.ndarray
        Cluster id per cell, int64 of shape (n_cells,).
    """
    import scanpy as sc

    adata = graph.to_anndata()
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
        adjacency=graph.connectivities,
    )
    return adata.obs["leiden"].astype(int).to_numpy()


def optimal_leiden_nmi(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    graph: NeighborGraph | None = None,
    resolutions: Sequence[float] = CHALLENGE_RESOLUTIONS,
    n_neighbors: int = 15,
    seed: int = 0,
) -> OptimalClustering:
    """NMI of ``labels`` with Leiden clusters at the resolution that maximizes it.

    Scib's ``opt_louvain`` / ``cluster_optimal_resolution``: cluster at each resolution,
    keep the first one with the highest NMI (arithmetic normalization).

    Parameters
    ----------
    x
        Embedding of shape (n_cells, n_dims); only used to build the graph when ``graph`` is
        not given.
    labels
        Cell type per cell, shape (n_cells,).
    graph
        A precomputed :func:`~raymmi.metrics.neighbor_graph` of ``x``.
    resolutions
        Resolutions to scan; default 0.1 ... 2.0 in steps of 0.1 (``opt_louvain``).
    n_neighbors, seed
        Of the graph (when built here) and of Leiden.

    Returns
    -------
    OptimalClustering
        The best NMI, its resolution and its clusters.
    """
    x = _as_embedding(x, name="optimal_leiden_nmi")
    labels = _per_cell(labels, x.shape[0], name="labels")
    if len(resolutions) == 0 or min(resolutions) <= 0:
        msg = f"resolutions={list(resolutions)!r} must be a non-empty list of positive numbers"
        raise ValueError(msg)
    graph = _graph_for(x, graph, n_neighbors=n_neighbors, seed=seed)
    best = OptimalClustering(-1.0, float(resolutions[0]), np.zeros(x.shape[0], dtype=int))
    for resolution in resolutions:
        clusters = leiden(graph, resolution=resolution, seed=seed)
        score = normalized_mutual_info(labels, clusters)
        if score > best.nmi:
            best = OptimalClustering(score, float(resolution), clusters)
    return best


def cell_cycle_scores(
    x: np.ndarray | sp.spmatrix | sp.sparray,
    gene_names: Sequence[str],
    *,
    batch: np.ndarray,
    s_genes: Sequence[str] | None = None,
    g2m_genes: Sequence[str] | None = None,
) -> np.ndarray:
    """S and G2M scores of each cell, per batch (scib ``score_cell_cycle``, scanpy scoring).

    Within each batch, scanpy's ``tl.score_genes_cell_cycle`` scores every cell against
    expression-matched control genes; only the listed genes present in ``gene_names`` count.

    Parameters
    ----------
    x
        Unintegrated normalized (log) RNA values, shape (n_cells, n_genes), dense or sparse.
    gene_names
        Gene symbols of the columns, length n_genes.
    batch
        Batch per cell, shape (n_cells,).
    s_genes, g2m_genes
        Marker symbols; default the Tirosh et al. (2016) human lists scib uses.

    Returns
    -------
    numpy.ndarray
        float64 of shape (n_cells, 2): S score, G2M score.

    Raises
    ------
    ValueError
        If no gene of a list is among ``gene_names``.
    """
    import anndata as ad
    import scanpy as sc

    if s_genes is None or g2m_genes is None:
        s_genes = CELL_CYCLE_S_GENES if s_genes is None else s_genes
        g2m_genes = CELL_CYCLE_G2M_GENES if g2m_genes is None else g2m_genes
    names = pd.Index([str(g) for g in gene_names])
    if len(names) != x.shape[1]:
        msg = f"gene_names has {len(names)} names but x has {x.shape[1]} columns"
        raise ValueError(msg)
    batch = _per_cell(batch, x.shape[0], name="batch")
    present = set(names)
    s_here = [g for g in s_genes if g in present]
    g2m_here = [g for g in g2m_genes if g in present]
    for phase, here in (("S", s_here), ("G2M", g2m_here)):
        if not here:
            msg = (
                f"none of the {phase}-phase marker genes is among gene_names (e.g. "
                f"{list(names[:3])}); pass gene symbols, or s_genes=/g2m_genes= lists"
            )
            raise ValueError(msg)
    matrix = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, float)
    out = np.empty((x.shape[0], 2))
    for b in pd.unique(batch):
        rows = np.flatnonzero(batch == b)
        adata = ad.AnnData(
            X=matrix[rows], var=pd.DataFrame(index=names), obs=pd.DataFrame(index=rows.astype(str))
        )
        sc.tl.score_genes_cell_cycle(adata, s_genes=s_here, g2m_genes=g2m_here)
        out[rows, 0] = adata.obs["S_score"].to_numpy()
        out[rows, 1] = adata.obs["G2M_score"].to_numpy()
    return out


def _pc_regression(data: np.ndarray | sp.csr_matrix, covariates: np.ndarray) -> float:
    """Scib's ``pc_regression``: variance share of the PCs explained by the covariates.

    ``sum_i var_i * R2(PC_i ~ covariates) / sum_i var_i`` over the first 50 components (all
    of them, by a full SVD, when the data have fewer); R2 of a least-squares fit with
    intercept, clipped at 0.
    """
    n_comps = min(_PCR_COMPONENTS, min(data.shape))
    if n_comps == min(data.shape):
        dense = data.toarray() if isinstance(data, sp.csr_matrix) else data
        pca = PCA(n_components=n_comps, svd_solver="full").fit(dense)
        pcs = pca.transform(dense)
    else:
        pca = PCA(n_components=n_comps, svd_solver="arpack", random_state=0).fit(data)
        pcs = pca.transform(data)
    design = np.hstack([np.ones((covariates.shape[0], 1)), covariates])
    coef, *_ = np.linalg.lstsq(design, pcs, rcond=None)
    residual = np.sum((pcs - design @ coef) ** 2, axis=0)
    total = np.sum((pcs - pcs.mean(axis=0)) ** 2, axis=0)
    r2 = np.zeros_like(total)
    np.divide(residual, total, out=r2, where=total > 0)
    r2 = np.maximum(0.0, 1.0 - r2)
    var = pca.explained_variance_
    return float(np.sum(r2 * var / var.sum()))


def cell_cycle_conservation(
    x: np.ndarray,
    *,
    x_pre: np.ndarray | sp.spmatrix | sp.sparray,
    scores: np.ndarray,
    batch: np.ndarray,
) -> float:
    """Cell-cycle conservation (scib ``cell_cycle``): is the variance of the cycle kept.

    Per batch: *before* is the variance share the S and G2M ``scores`` explain in the first 50
    principal components of ``x_pre``, *after* the same in the embedding ``x``; the batch
    scores ``max(0, 1 - |after - before| / before)``. The result is their mean (batches with
    ``before == 0`` are skipped).

    Parameters
    ----------
    x
        Embedding of shape (n_cells, n_dims).
    x_pre
        Unintegrated values (normalized RNA), shape (n_cells, n_features), dense or sparse.
    scores
        S and G2M score per cell, shape (n_cells, 2) (:func:`cell_cycle_scores`).
    batch
        Batch per cell, shape (n_cells,).

    Returns
    -------
    float
        In [0, 1]; NaN if no batch has cell-cycle variance before integration.
    """
    x = _as_embedding(x, name="cell_cycle_conservation")
    n = x.shape[0]
    batch = _per_cell(batch, n, name="batch")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != n or x_pre.shape[0] != n:
        msg = (
            f"cell_cycle_conservation needs scores (n_cells, 2) and x_pre (n_cells, ...) with "
            f"n_cells = {n}; got scores {scores.shape} and x_pre {x_pre.shape}"
        )
        raise ValueError(msg)
    pre = sp.csr_matrix(x_pre, dtype=np.float64) if sp.issparse(x_pre) else np.asarray(x_pre)
    values = []
    for b in pd.unique(batch):
        rows = np.flatnonzero(batch == b)
        before = _pc_regression(pre[rows], scores[rows])
        after = _pc_regression(x[rows], scores[rows])
        if before > 0:
            values.append(max(0.0, 1.0 - abs(after - before) / before))
    return float(np.mean(values)) if values else float("nan")


def _root_cell(
    graph: NeighborGraph, pseudotime: np.ndarray, cell_type: np.ndarray
) -> tuple[np.ndarray, int, ad.AnnData] | None:
    """Scib's ``get_root`` on the trajectory cells' graph.

    Returns the cells of the largest connected component (a boolean mask), the root's
    position among them and the component's AnnData (graph and diffusion map), or ``None``
    when that component holds no cell of the earliest type.
    """
    import scanpy as sc

    _, comp = connected_components(graph.connectivities, directed=False)
    biggest = comp == np.bincount(comp).argmax()
    start_type = pd.Series(pseudotime).groupby(cell_type).mean().idxmin()
    candidates = np.flatnonzero(cell_type[biggest] == start_type)
    if candidates.size == 0:
        return None
    adata = _subgraph(graph, biggest).to_anndata()
    sc.tl.diffmap(adata)
    diffmap = adata.obsm["X_diffmap"]
    votes = np.zeros(candidates.size)
    for dim in range(_ROOT_DIMS):
        values = diffmap[candidates, dim]
        pick = np.argmin if values.mean() < diffmap[:, dim].mean() else np.argmax
        votes[pick(values)] += 1
    return biggest, int(candidates[np.argmax(votes)]), adata


def _subgraph(graph: NeighborGraph, rows: np.ndarray) -> NeighborGraph:
    return dataclasses.replace(
        graph,
        connectivities=sp.csr_matrix(graph.connectivities[rows][:, rows]),
        distances=sp.csr_matrix(graph.distances[rows][:, rows]),
    )


def trajectory_conservation(
    x: np.ndarray,
    pseudotime: np.ndarray,
    *,
    cell_type: np.ndarray,
    batch: np.ndarray | None = None,
    graph: NeighborGraph | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
) -> float:
    """Trajectory conservation (scib ``trajectory_conservation``): is the ordering kept.

    On the trajectory cells (finite ``pseudotime``), the embedding's kNN graph (built on all
    cells, then restricted) gives a diffusion pseudotime (scanpy ``tl.dpt``) in its largest
    connected component, rooted in the cell type with the lowest mean reference pseudotime
    (the candidate at the extreme of the first three diffusion components, by vote). Cells
    outside that component, or unreachable, get 0. The Spearman correlation with the reference
    is taken per batch and averaged (or over all cells when ``batch`` is ``None``) and mapped
    to ``(r + 1) / 2``.

    Parameters
    ----------
    x
        Embedding of shape (n_cells, n_dims).
    pseudotime
        Reference pseudotime from the unintegrated data, shape (n_cells,); NaN for cells off
        the trajectory (e.g. the challenge's ``pseudotime_order_GEX``).
    cell_type
        Cell type per cell, shape (n_cells,).
    batch
        Batch per cell, shape (n_cells,), for the per-batch correlation the challenge used.
    graph
        A precomputed :func:`~raymmi.metrics.neighbor_graph` of ``x``.
    n_neighbors, seed
        Of the graph when it is built here.

    Returns
    -------
    float
        In [0, 1]; 0 when no root cell is found (as scib); NaN with no trajectory cells.
    """
    x = _as_embedding(x, name="trajectory_conservation")
    n = x.shape[0]
    pseudotime = _per_cell(pseudotime, n, name="pseudotime").astype(np.float64)
    cell_type = _per_cell(cell_type, n, name="cell_type").astype(str)
    groups = np.zeros(n, dtype=int) if batch is None else _per_cell(batch, n, name="batch")
    on_path = np.isfinite(pseudotime)
    if on_path.sum() < 3:
        return float("nan")
    graph = _graph_for(x, graph, n_neighbors=n_neighbors, seed=seed)
    import scanpy as sc

    path_graph = _subgraph(graph, on_path)
    reference = pseudotime[on_path]
    root = _root_cell(path_graph, reference, cell_type[on_path])
    if root is None:
        return 0.0
    biggest, iroot, adata = root
    adata.uns["iroot"] = iroot
    sc.tl.dpt(adata)
    dpt = adata.obs["dpt_pseudotime"].to_numpy(dtype=np.float64)
    after = np.zeros(on_path.sum())
    after[biggest] = np.where(dpt > 1, 0.0, dpt)
    frame = pd.DataFrame({"before": reference, "after": after, "batch": groups[on_path]})
    per_batch = [
        part["before"].corr(part["after"], method="spearman")
        for _, part in frame.groupby("batch", sort=False)
    ]
    return (_mean_of_finite(per_batch) + 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class EmbedScores:
    """The challenge's embedding score, its six metrics, iLISI, and how they were computed.

    ``mean`` is the unweighted mean of the six :data:`EMBED_METRICS` that could be computed;
    ``missing`` names those that could not (no cell-cycle inputs, no pseudotime), so a mean
    over fewer than six is never mistaken for the challenge's. ``resolution`` is the Leiden
    resolution of the best NMI; ``neighbors`` describes the kNN graph (exact or approximate).
    """

    nmi: float
    asw_label: float
    cc_cons: float
    ti_cons: float
    asw_batch: float
    graph_conn: float
    ilisi: float
    mean: float
    missing: tuple[str, ...]
    resolution: float
    neighbors: str
    n_cells: int

    def as_dict(self) -> dict[str, float]:
        """Metric name → value: the six metrics, ``mean`` and ``ilisi`` (for scores.json)."""
        out = {name: float(getattr(self, name)) for name in EMBED_METRICS}
        out["mean"] = self.mean
        out["ilisi"] = self.ilisi
        return out


def embed_score(
    x: np.ndarray,
    *,
    cell_type: np.ndarray,
    batch: np.ndarray,
    x_pre: np.ndarray | sp.spmatrix | sp.sparray | None = None,
    cycle_scores: np.ndarray | None = None,
    pseudotimes: Mapping[str, np.ndarray] | None = None,
    n_neighbors: int = 15,
    neighbors: NeighborMethod = "auto",
    resolutions: Sequence[float] = CHALLENGE_RESOLUTIONS,
    with_ilisi: bool = True,
    seed: int = 0,
) -> EmbedScores:
    """All six challenge metrics of a joint embedding, their mean, and iLISI.

    Parameters
    ----------
    x
        Joint embedding of shape (n_cells, n_dims).
    cell_type
        Cell type per cell, shape (n_cells,).
    batch
        Batch per cell, shape (n_cells,).
    x_pre
        Unintegrated normalized RNA of shape (n_cells, n_genes), for ``cc_cons``.
    cycle_scores
        S and G2M scores of shape (n_cells, 2) (:func:`cell_cycle_scores` of ``x_pre``), for
        ``cc_cons``; without both, ``cc_cons`` is NaN and listed in ``missing``.
    pseudotimes
        Trajectory name → reference pseudotime of shape (n_cells,) (NaN off the trajectory);
        ``ti_cons`` is the mean over them (the challenge: ``pseudotime_order_GEX`` and
        ``pseudotime_order_ADT``/``_ATAC``); none given: NaN, listed in ``missing``.
    n_neighbors
        Neighbours of the shared kNN graph (scanpy's and the challenge's 15).
    neighbors
        ``"auto"`` (exact up to 100,000 cells, approximate above), ``"exact"`` or
        ``"approximate"``.
    resolutions
        Leiden resolutions scanned for ``nmi``.
    with_ilisi
        Compute iLISI (one exact neighbour search and a per-cell loop: minutes at 10^6 cells);
        ``False`` reports NaN.
    seed
        Seed of the approximate search and of Leiden.

    Returns
    -------
    EmbedScores
        The metrics, their mean, and the graph used.
    """
    x = _as_embedding(x, name="embed_score")
    n = x.shape[0]
    cell_type = _per_cell(cell_type, n, name="cell_type").astype(str)
    batch = _per_cell(batch, n, name="batch").astype(str)
    graph = neighbor_graph(x, n_neighbors=n_neighbors, method=neighbors, seed=seed)
    best = optimal_leiden_nmi(x, cell_type, graph=graph, resolutions=resolutions, seed=seed)
    if x_pre is not None and cycle_scores is not None:
        cc = cell_cycle_conservation(x, x_pre=x_pre, scores=cycle_scores, batch=batch)
    else:
        cc = float("nan")
    ti_values = [
        trajectory_conservation(x, p, cell_type=cell_type, batch=batch, graph=graph)
        for p in (pseudotimes or {}).values()
    ]
    values = {
        "nmi": best.nmi,
        "asw_label": label_asw(x, cell_type),
        "cc_cons": cc,
        "ti_cons": _mean_of_finite(ti_values),
        "asw_batch": batch_asw(x, batch, cell_type),
        "graph_conn": largest_component_share(graph.connectivities, cell_type),
    }
    missing = tuple(name for name in EMBED_METRICS if math.isnan(values[name]))
    present = [values[name] for name in EMBED_METRICS if name not in missing]
    return EmbedScores(
        **values,
        ilisi=ilisi(x, batch) if with_ilisi else float("nan"),
        mean=float(np.mean(present)) if present else float("nan"),
        missing=missing,
        resolution=best.resolution,
        neighbors=graph.describe(),
        n_cells=n,
    )
