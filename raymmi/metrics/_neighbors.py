"""The k-nearest-neighbour graph the graph-based embedding metrics share.

scanpy's ``pp.neighbors`` builds it (UMAP fuzzy connectivities, as scib and the NeurIPS 2021
challenge do), so Leiden, diffusion pseudotime and graph connectivity see the same graph the
references see. The search is exact (sklearn, brute force) up to
:data:`APPROXIMATE_ABOVE` cells and approximate (pynndescent) above, chosen automatically;
the graph records which one built it. No Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

if TYPE_CHECKING:
    import anndata as ad

#: Above this many cells :func:`neighbor_graph` searches approximately (pynndescent): exact
#: brute force is quadratic in the cells, pynndescent close to linear.
APPROXIMATE_ABOVE = 100_000

NeighborMethod = Literal["auto", "exact", "approximate"]
_METHODS = ("auto", "exact", "approximate")
_BACKENDS = {"exact": "sklearn", "approximate": "pynndescent"}
_REP = "X_emb"


@dataclasses.dataclass(frozen=True)
class NeighborGraph:
    """A k-nearest-neighbour graph of cells and how it was built.

    Parameters
    ----------
    connectivities
        Symmetric UMAP fuzzy-union weights, ``scipy.sparse.csr_matrix`` of shape
        (n_cells, n_cells), as ``adata.obsp["connectivities"]`` of scanpy.
    distances
        Distances to the ``n_neighbors - 1`` nearest other cells per row, csr of shape
        (n_cells, n_cells), as ``adata.obsp["distances"]``.
    n_neighbors
        Neighbours per cell, the cell itself included (scanpy's convention).
    method
        ``"exact"`` (sklearn brute force) or ``"approximate"`` (pynndescent).
    metric
        Distance of the search.
    """

    connectivities: sp.csr_matrix
    distances: sp.csr_matrix
    n_neighbors: int
    method: Literal["exact", "approximate"]
    metric: str = "euclidean"

    @property
    def n_cells(self) -> int:
        """Number of cells (rows) of the graph."""
        return int(self.connectivities.shape[0])

    def describe(self) -> str:
        """One line for reports: e.g. ``exact kNN (sklearn), 15 neighbours, euclidean``."""
        backend = _BACKENDS[self.method]
        return f"{self.method} kNN ({backend}), {self.n_neighbors} neighbours, {self.metric}"

    def to_anndata(self, obs: pd.DataFrame | None = None) -> ad.AnnData:
        """An in-memory AnnData holding the graph where scanpy's tools look for it.

        ``obs`` (n_cells rows) becomes ``.obs``; without it the index is ``0 ... n - 1``.
        """
        import anndata as ad

        if obs is None:
            obs = pd.DataFrame(index=pd.RangeIndex(self.n_cells).astype(str))
        adata = ad.AnnData(obs=obs)
        adata.obsp["connectivities"] = self.connectivities
        adata.obsp["distances"] = self.distances
        adata.uns["neighbors"] = {
            "connectivities_key": "connectivities",
            "distances_key": "distances",
            "params": {
                "n_neighbors": self.n_neighbors,
                "method": "umap",
                "metric": self.metric,
            },
        }
        return adata


def neighbor_graph(
    x: np.ndarray,
    *,
    n_neighbors: int = 15,
    method: NeighborMethod = "auto",
    metric: str = "euclidean",
    approximate_above: int = APPROXIMATE_ABOVE,
    seed: int = 0,
) -> NeighborGraph:
    """The kNN graph of an embedding, exact or approximate by size (scanpy ``pp.neighbors``).

    Parameters
    ----------
    x
        Embedding of shape (n_cells, n_dims).
    n_neighbors
        Neighbours per cell including itself (scanpy's default 15, the challenge's value);
        at least 2 and below n_cells.
    method
        ``"auto"``: exact up to ``approximate_above`` cells, approximate above;
        ``"exact"``: sklearn brute force; ``"approximate"``: pynndescent.
    metric
        Distance of the search.
    approximate_above
        Cell count above which ``"auto"`` goes approximate.
    seed
        Seed of pynndescent (the exact search has none).

    Returns
    -------
    NeighborGraph
        The graph; ``.method`` says which search built it.
    """
    if method not in _METHODS:
        msg = f"method={method!r} is not one of {sorted(_METHODS)}"
        raise ValueError(msg)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        msg = (
            f"neighbor_graph needs a finite embedding of shape (n_cells, n_dims); got shape "
            f"{x.shape}{'' if x.ndim != 2 else ' with NaN or infinite values'}"
        )
        raise ValueError(msg)
    if not 2 <= n_neighbors < x.shape[0]:
        msg = (
            f"n_neighbors={n_neighbors!r} must be at least 2 and below the number of cells "
            f"({x.shape[0]}); pass fewer neighbours or more cells"
        )
        raise ValueError(msg)
    if method == "auto":
        method = "approximate" if x.shape[0] > approximate_above else "exact"
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(x.shape[0]).astype(str)))
    adata.obsm[_REP] = x
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        use_rep=_REP,
        metric=metric,  # type: ignore[arg-type]
        transformer=(
            "sklearn"
            if method == "exact"
            else _approximate_search(x.shape[0], n_neighbors=n_neighbors, metric=metric, seed=seed)
        ),
        random_state=seed,
    )
    return NeighborGraph(
        connectivities=sp.csr_matrix(adata.obsp["connectivities"]),
        distances=sp.csr_matrix(adata.obsp["distances"]),
        n_neighbors=n_neighbors,
        method=method,
        metric=metric,
    )


def _approximate_search(n_cells: int, *, n_neighbors: int, metric: str, seed: int) -> Any:
    """Pynndescent's kNN transformer with UMAP's defaults, giving scipy ``csr_matrix`` output.

    scanpy 1.11 reads the result with ``getnnz``, which the ``csr_array`` of pynndescent 0.7
    lacks (``AttributeError``), so the output is converted. ``n_trees`` and ``n_iters`` follow
    UMAP's ``nearest_neighbors`` (what scanpy uses when it picks pynndescent itself).
    """
    from pynndescent import PyNNDescentTransformer

    class _CsrMatrixOutput(PyNNDescentTransformer):
        def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> sp.csr_matrix:
            return sp.csr_matrix(super().fit_transform(X, y, **fit_params))

    return _CsrMatrixOutput(
        n_neighbors=n_neighbors,
        metric=metric,
        random_state=seed,
        n_trees=min(64, 5 + round(n_cells**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n_cells))),
    )


def largest_component_share(graph: sp.spmatrix | sp.sparray, labels: np.ndarray) -> float:
    """Scib's graph connectivity on a given graph: mean over labels of the largest piece.

    For each label, the subgraph of its cells is split into connected components and the
    share of its cells in the largest one is taken; the result is the mean over labels.

    Parameters
    ----------
    graph
        Adjacency of shape (n_cells, n_cells); edges in either direction connect.
    labels
        Label per cell, shape (n_cells,).

    Returns
    -------
    float
        In (0, 1]; 1 means every label forms one connected piece.
    """
    graph = sp.csr_matrix(graph)
    labels = np.asarray(labels)
    if graph.shape != (labels.shape[0], labels.shape[0]) or labels.ndim != 1:
        msg = (
            f"largest_component_share needs a graph of shape (n, n) and labels of shape (n,); "
            f"got {graph.shape} and {labels.shape}"
        )
        raise ValueError(msg)
    graph = graph.maximum(graph.T)
    shares = []
    for group in np.unique(labels):
        rows = np.flatnonzero(labels == group)
        _, comp = connected_components(graph[rows][:, rows], directed=False)
        shares.append(np.bincount(comp).max() / len(rows))
    return float(np.mean(shares))
