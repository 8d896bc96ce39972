"""Pure metrics on arrays: batch mixing (ASW, iLISI, graph connectivity, ARI) and replicate mAP.

numpy, scipy, sklearn and copairs only: no Ray, no MLflow, no file I/O.
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
from raymmi.metrics._profiles import replicate_map

__all__ = [
    "adjusted_rand",
    "batch_asw",
    "batch_silhouette",
    "graph_connectivity",
    "ilisi",
    "kmeans_ari",
    "lisi",
    "replicate_map",
]
