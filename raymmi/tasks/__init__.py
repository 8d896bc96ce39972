"""The NeurIPS 2021 multimodal tasks as pure functions: predict, match, embed.

Reference methods on numpy/scipy matrices (Lance et al. 2022): the per-feature mean and the
winning TruncatedSVD + RBF kernel ridge recipe for predicting one modality from the other; a
CCA + nearest-neighbour softmax baseline for matching cells across modalities; PCA of the
standardized, concatenated modalities for the joint embedding; and the checked train/test
split by batch. Their scores live in :mod:`raymmi.metrics`. No Ray, no MLflow, no file I/O.
"""

from raymmi.tasks._embed import MAX_EMBED_DIMS, embed_pca
from raymmi.tasks._match import cca_embeddings, knn_softmax_matching, match_cca
from raymmi.tasks._predict import (
    SVD_KRR_PRESETS,
    SvdKrrConfig,
    batch_halves,
    predict_mean,
    predict_svd_krr,
    svd_krr_config,
)
from raymmi.tasks._split import batch_split

__all__ = [
    "MAX_EMBED_DIMS",
    "SVD_KRR_PRESETS",
    "SvdKrrConfig",
    "batch_halves",
    "batch_split",
    "cca_embeddings",
    "embed_pca",
    "knn_softmax_matching",
    "match_cca",
    "predict_mean",
    "predict_svd_krr",
    "svd_krr_config",
]
