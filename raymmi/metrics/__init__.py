"""Pure metrics on arrays: batch mixing, clustering, the NeurIPS 2021 task scores, replicate mAP.

Batch mixing (ASW, iLISI, graph connectivity, ARI); clustering agreement and quality (NMI,
FMI, silhouette, Davies-Bouldin); the multimodal challenge's scores (predict RMSE, match score
and matching-format check, the six-metric embedding score) on one shared kNN graph, exact or
approximate by size; replicate mAP of plate profiles; the models' side-by-side protocol
(``cluster_scores``: k-means and Ward ARI/NMI/FMI; ``leiden_scores``: Leiden at the best-NMI
resolution). numpy, scipy, sklearn, scanpy and copairs only: no Ray, no MLflow, no file I/O.
"""

from raymmi.metrics._batch import (
    adjusted_rand,
    batch_asw,
    batch_silhouette,
    graph_connectivity,
    ilisi,
    kmeans_ari,
    lisi,
)
from raymmi.metrics._cell_cycle import CELL_CYCLE_G2M_GENES, CELL_CYCLE_S_GENES
from raymmi.metrics._challenge import (
    MAX_MATCH_NONZERO,
    MatchingError,
    check_matching,
    match_probabilities,
    match_score,
    rmse,
)
from raymmi.metrics._cluster import (
    davies_bouldin,
    fowlkes_mallows,
    label_asw,
    normalized_mutual_info,
    silhouette,
)
from raymmi.metrics._embed import (
    CHALLENGE_RESOLUTIONS,
    EMBED_METRICS,
    EmbedScores,
    OptimalClustering,
    cell_cycle_conservation,
    cell_cycle_scores,
    embed_score,
    leiden,
    optimal_leiden_nmi,
    trajectory_conservation,
)
from raymmi.metrics._neighbors import (
    APPROXIMATE_ABOVE,
    NeighborGraph,
    largest_component_share,
    neighbor_graph,
)
from raymmi.metrics._profiles import replicate_map
from raymmi.metrics._scores import (
    Agreement,
    ClusterScores,
    LeidenScores,
    agreement,
    cluster_scores,
    leiden_scores,
)

__all__ = [
    "CELL_CYCLE_G2M_GENES",
    "CELL_CYCLE_S_GENES",
    "APPROXIMATE_ABOVE",
    "CHALLENGE_RESOLUTIONS",
    "EMBED_METRICS",
    "MAX_MATCH_NONZERO",
    "Agreement",
    "ClusterScores",
    "EmbedScores",
    "LeidenScores",
    "MatchingError",
    "NeighborGraph",
    "OptimalClustering",
    "adjusted_rand",
    "agreement",
    "batch_asw",
    "batch_silhouette",
    "cell_cycle_conservation",
    "cell_cycle_scores",
    "check_matching",
    "cluster_scores",
    "davies_bouldin",
    "embed_score",
    "fowlkes_mallows",
    "graph_connectivity",
    "ilisi",
    "kmeans_ari",
    "label_asw",
    "largest_component_share",
    "leiden",
    "leiden_scores",
    "lisi",
    "match_probabilities",
    "match_score",
    "neighbor_graph",
    "normalized_mutual_info",
    "optimal_leiden_nmi",
    "replicate_map",
    "rmse",
    "silhouette",
    "trajectory_conservation",
]
