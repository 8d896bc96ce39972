"""Predict one modality from the other: the mean baseline and the winning SVD + KRR recipe.

The recipe is the one of team Guanlab-dengkw, first on GEX→ADT in the NeurIPS 2021 challenge
(Lance et al. 2022; its method description in openproblems' ``guanlab_dengkw_pm``):

1. TruncatedSVD of the inputs, fitted on train *and* test inputs together (the test inputs
   are given in the task; only the test outputs are hidden);
2. each cell's SVD coordinates z-scored across its components;
3. TruncatedSVD of the train outputs;
4. kernel ridge regression with an RBF kernel ``exp(-|a - b|^2 / (2 length_scale^2))`` from
   (2) to (3), fitted once per half of the training batches, the halves' predictions mapped
   back through the output SVD and averaged;
5. negative predictions set to 0 (the normalized values are non-negative).

Its per-direction hyperparameters are :data:`SVD_KRR_PRESETS`. Kernel ridge regression holds
an (n_cells_half x n_cells_half) float64 kernel: about 8 GB at 32,000 cells per half. No Ray,
no MLflow, no file I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.kernel_ridge import KernelRidge

Matrix: TypeAlias = np.ndarray | sp.spmatrix | sp.sparray


@dataclasses.dataclass(frozen=True, kw_only=True)
class SvdKrrConfig:
    """Hyperparameters of :func:`predict_svd_krr`.

    Parameters
    ----------
    n_input_components
        TruncatedSVD components of the inputs; ``None``: use the inputs as they are.
    n_output_components
        TruncatedSVD components of the outputs; ``None``: regress the outputs directly.
    length_scale
        Length scale of the RBF kernel (``gamma = 1 / (2 length_scale^2)``).
    alpha
        Ridge penalty of the kernel ridge regression.
    transductive
        Fit the input SVD on train and test inputs together, as the winner did.
    clip_min
        Predictions below are set to it; ``None`` keeps them.
    seed
        Seed of the randomized SVDs.
    """

    n_input_components: int | None = 300
    n_output_components: int | None = 70
    length_scale: float = 10.0
    alpha: float = 0.2
    transductive: bool = True
    clip_min: float | None = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_input_components", "n_output_components"):
            value = getattr(self, name)
            if value is not None and value < 1:
                msg = f"{name}={value!r} must be a positive number of components (or None)"
                raise ValueError(msg)
        for name in ("length_scale", "alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"{name}={value!r} must be a positive finite number"
                raise ValueError(msg)


#: The winner's hyperparameters per (source, target) modality: input and output SVD
#: components, RBF length scale, ridge penalty.
SVD_KRR_PRESETS: Mapping[tuple[str, str], SvdKrrConfig] = {
    ("rna", "adt"): SvdKrrConfig(n_input_components=300, n_output_components=70, alpha=0.2),
    ("adt", "rna"): SvdKrrConfig(n_input_components=None, n_output_components=50, alpha=0.2),
    ("rna", "atac"): SvdKrrConfig(n_input_components=1000, n_output_components=50, alpha=0.1),
    ("atac", "rna"): SvdKrrConfig(n_input_components=100, n_output_components=70, alpha=0.1),
}


def svd_krr_config(source: str, target: str) -> SvdKrrConfig:
    """The winner's :class:`SvdKrrConfig` for predicting ``target`` from ``source``.

    Modalities are named ``rna``, ``adt``, ``atac``; every direction of the challenge
    (``rna``→``adt``, ``adt``→``rna``, ``rna``→``atac``, ``atac``→``rna``) has a preset.
    """
    key = (source, target)
    if key not in SVD_KRR_PRESETS:
        msg = f"no SVD + KRR preset for {source!r} → {target!r}; known: {sorted(SVD_KRR_PRESETS)}"
        raise ValueError(msg)
    return SVD_KRR_PRESETS[key]


def _check_pair(x: Matrix, y: Matrix, *, x_name: str, y_name: str) -> None:
    if len(x.shape) != 2 or len(y.shape) != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        msg = (
            f"{x_name} and {y_name} must be 2-d with the same (non-zero) number of cells; got "
            f"{x.shape} and {y.shape}"
        )
        raise ValueError(msg)


def _dense(m: Matrix) -> np.ndarray:
    if sp.issparse(m):
        return np.asarray(m.toarray(), dtype=np.float64)  # type: ignore[union-attr]
    return np.asarray(m, dtype=np.float64)


def _vstack(a: Matrix, b: Matrix) -> Matrix:
    if sp.issparse(a) or sp.issparse(b):
        return sp.vstack([sp.csr_matrix(a), sp.csr_matrix(b)], format="csr")
    return np.vstack([np.asarray(a), np.asarray(b)])


def predict_mean(y_train: Matrix, *, n_cells: int) -> np.ndarray:
    """The baseline: every test cell gets the per-feature mean of the training outputs.

    Parameters
    ----------
    y_train
        Training outputs of shape (n_train, n_features), dense or sparse.
    n_cells
        Number of test cells to predict.

    Returns
    -------
    numpy.ndarray
        float64 of shape (n_cells, n_features), every row the same.
    """
    if len(y_train.shape) != 2 or y_train.shape[0] == 0 or n_cells < 0:
        msg = (
            f"predict_mean needs non-empty y_train (n_train, n_features) and n_cells >= 0; got "
            f"{y_train.shape} and {n_cells}"
        )
        raise ValueError(msg)
    mean = np.asarray(y_train.mean(axis=0), dtype=np.float64).ravel()
    return np.tile(mean, (n_cells, 1))


def batch_halves(batch: np.ndarray) -> list[np.ndarray]:
    """The training subsets of the ensemble: the two halves of the sorted batch names.

    Parameters
    ----------
    batch
        Batch per training cell, shape (n_train,).

    Returns
    -------
    list of numpy.ndarray
        Boolean masks of shape (n_train,): one (all cells) with a single batch, else two,
        the first ``n_batches // 2`` batch names and the rest.
    """
    batch = np.asarray(batch).astype(str)
    names = sorted(set(batch))
    if len(names) < 2:
        return [np.ones(batch.shape[0], dtype=bool)]
    half = len(names) // 2
    return [np.isin(batch, names[:half]), np.isin(batch, names[half:])]


def _row_zscore(z: np.ndarray) -> np.ndarray:
    sd = z.std(axis=1, keepdims=True)
    sd[sd == 0] = 1.0
    return (z - z.mean(axis=1, keepdims=True)) / sd


def predict_svd_krr(
    x_train: Matrix,
    y_train: Matrix,
    x_test: Matrix,
    *,
    batch: np.ndarray,
    config: SvdKrrConfig | None = None,
) -> np.ndarray:
    """Predict the test outputs with TruncatedSVD + RBF kernel ridge regression.

    Parameters
    ----------
    x_train
        Training inputs (normalized values), shape (n_train, n_inputs), dense or sparse.
    y_train
        Training outputs (normalized values), shape (n_train, n_outputs), dense or sparse.
    x_test
        Test inputs, shape (n_test, n_inputs).
    batch
        Batch of each training cell, shape (n_train,); the ensemble fits one model per half
        of the batches (:func:`batch_halves`).
    config
        Hyperparameters; default ``SvdKrrConfig()``, the GEX→ADT preset.

    Returns
    -------
    numpy.ndarray
        float64 predictions of shape (n_test, n_outputs).
    """
    config = SvdKrrConfig() if config is None else config
    _check_pair(x_train, y_train, x_name="x_train", y_name="y_train")
    if len(x_test.shape) != 2 or x_test.shape[1] != x_train.shape[1]:
        msg = f"x_test must have x_train's {x_train.shape[1]} columns; got shape {x_test.shape}"
        raise ValueError(msg)
    batch = np.asarray(batch)
    if batch.shape != (x_train.shape[0],):
        msg = (
            f"batch needs one label per training cell, shape ({x_train.shape[0]},); got "
            f"{batch.shape}"
        )
        raise ValueError(msg)
    n_train = x_train.shape[0]

    n_in = config.n_input_components
    if n_in is not None and n_in < x_train.shape[1]:
        svd_in = TruncatedSVD(n_components=n_in, random_state=config.seed)
        if config.transductive:
            z = svd_in.fit_transform(_vstack(x_train, x_test))
            z_train, z_test = z[:n_train], z[n_train:]
        else:
            z_train = svd_in.fit_transform(x_train)
            z_test = svd_in.transform(x_test)
    else:
        z_train, z_test = _dense(x_train), _dense(x_test)
    z_train, z_test = _row_zscore(z_train), _row_zscore(z_test)

    n_out = config.n_output_components
    if n_out is not None and n_out < y_train.shape[1]:
        svd_out = TruncatedSVD(n_components=n_out, random_state=config.seed)
        codes = svd_out.fit_transform(y_train)
        basis = svd_out.components_
    else:
        codes = _dense(y_train)
        basis = np.eye(y_train.shape[1])

    gamma = 1.0 / (2.0 * config.length_scale**2)
    halves = batch_halves(batch)
    prediction = np.zeros((x_test.shape[0], y_train.shape[1]))
    for rows in halves:
        krr = KernelRidge(alpha=config.alpha, kernel="rbf", gamma=gamma)
        krr.fit(z_train[rows], codes[rows])
        prediction += krr.predict(z_test) @ basis
    prediction /= len(halves)
    if config.clip_min is not None:
        np.maximum(prediction, config.clip_min, out=prediction)
    return prediction
