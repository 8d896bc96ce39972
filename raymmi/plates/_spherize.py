"""Sphering (whitening) fitted on reference rows: ZCA, ZCA-cor, PCA, PCA-cor.

The math is that of pycytominer 1.7 ``operations.Spherize`` (Kessy, Lewin and Strimmer 2018,
arXiv:1512.00809), written here in float64 for any number of rows:

1. ``Z`` = the reference rows centered by their mean (``center=True``), and for the ``-cor``
   methods also divided by their standard deviation (ddof=0), so that the whitening acts on
   the correlation rather than the covariance matrix.
2. The singular values ``s`` and right singular vectors ``V`` of ``Z`` (n_ref x n_features):
   the eigenvalues of ``cov(Z)`` are ``s**2 / (n_ref - 1)``.
3. With fewer rows than features (``n_ref <= n_features``), the ``n_features - r`` singular
   values beyond the numerical rank ``r`` are replaced by ``s[r-1]``, the smallest retained
   one. Then ``epsilon`` is added to every singular value (pycytominer regularizes the
   singular values, not the eigenvalues).
4. ``W_PCA = V diag(sqrt(n_ref - 1) / s)``; ``W_ZCA = W_PCA V^T``. Output ``Z(x) @ W``.

For ZCA with ``n_ref <= n_features`` (a plate's negcon rows), the fill directions share one
gain, so ``W`` is kept low-rank (``n_features x rank``): fit and apply then cost
O(n_features * rank) per row instead of O(n_features**2), and no n_features**2 matrix is
built or broadcast.

PCA components are defined up to sign; here each row of ``V^T`` is flipped so that its
largest-magnitude entry is positive (pycytominer keeps LAPACK's arbitrary signs). ZCA does not
depend on signs, nor on the basis chosen for a null space, so it is unique.

When it is an error
-------------------
- NaN or infinite values in the reference rows (remove them: ``raymmi select --ops na``).
- Fewer than 2 reference rows.
- ``ZCA-cor`` / ``PCA-cor`` with a reference feature of zero variance (remove it:
  ``raymmi select --ops variance``), or with ``center=False``.
- ``epsilon == 0`` and the reference rows have rank below ``n_features``, in particular when
  there are no more reference rows than features (centered rows have rank at most
  ``n_ref - 1``): some directions would be divided by zero or by an arbitrary fill value.
  With ``epsilon > 0`` every direction has a positive scale, so it is allowed, as in
  pycytominer; the message suggests that, ``ZCA-cor`` with ``epsilon``, more reference rows
  or fewer features.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Final

import numpy as np

from raymmi.plates._moments import Moments, as_matrix
from raymmi.schema import RaymmiError

SPHERIZE_METHODS: Final = ("PCA", "PCA-cor", "ZCA", "ZCA-cor")

_BLOCK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True, eq=False)
class SpherizeFit:
    """A fitted sphering transform.

    Parameters
    ----------
    method
        ``"ZCA"``, ``"ZCA-cor"``, ``"PCA"`` or ``"PCA-cor"``.
    center
        float64 array of shape (n_features,) subtracted first (zeros when ``center=False``).
    scale
        float64 array of shape (n_features,) divided next (the reference standard deviations
        for the ``-cor`` methods, else ones).
    weights
        float64 array of shape (n_features, n_features): the whitening matrix ``W``; None
        when ``W`` is stored low-rank (ZCA fitted on no more rows than features).
    basis, gains, rest
        The low-rank ``W = rest * I + basis @ diag(gains - rest) @ basis.T``: ``basis`` of
        shape (n_features, rank), ``gains`` of shape (rank,); apply then costs
        O(n_rows * n_features * rank) instead of O(n_rows * n_features**2).
    reference_rows
        Rows the transform was fitted on.
    rank
        Numerical rank of the centered (scaled) reference rows.
    """

    method: str
    center: np.ndarray
    scale: np.ndarray
    weights: np.ndarray | None
    reference_rows: int
    rank: int
    basis: np.ndarray | None = None
    gains: np.ndarray | None = None
    rest: float = 0.0

    def low_rank(self) -> tuple[np.ndarray, np.ndarray]:
        """``basis`` and ``gains`` of a low-rank fit (``weights`` is None)."""
        if self.basis is None or self.gains is None:
            msg = "this SpherizeFit stores a dense W (weights), not a low-rank one"
            raise RaymmiError(msg)
        return self.basis, self.gains

    def matrix(self) -> np.ndarray:
        """The whitening matrix ``W``, float64 of shape (n_features, n_features)."""
        if self.weights is not None:
            return self.weights
        basis, gains = self.low_rank()
        w = (basis * (gains - self.rest)) @ basis.T
        w[np.diag_indices_from(w)] += self.rest
        return w

    @property
    def n_features(self) -> int:
        """Number of input (and output) features."""
        return int(self.center.shape[0])


def fit_spherize(
    x_ref: np.ndarray,
    *,
    method: str = "ZCA-cor",
    epsilon: float = 1e-6,
    center: bool = True,
) -> SpherizeFit:
    """Fit a sphering transform on reference rows (pycytominer ``Spherize``).

    Parameters
    ----------
    x_ref
        Reference rows, array of shape (n_ref, n_features); finite values only.
    method
        ``"ZCA"``, ``"ZCA-cor"`` (pycytominer ``normalize``'s default), ``"PCA"`` or
        ``"PCA-cor"``.
    epsilon
        Added to every singular value of the centered reference (regularization); >= 0.
    center
        Center on the reference mean; the ``-cor`` methods require it.

    Returns
    -------
    SpherizeFit
        Apply it with :func:`apply_spherize`.

    Raises
    ------
    RaymmiError
        See the module notes on when sphering is an error.
    """
    if method not in SPHERIZE_METHODS:
        msg = f"spherize method={method!r} is not one of {list(SPHERIZE_METHODS)}"
        raise RaymmiError(msg)
    if not (isinstance(epsilon, numbers.Real) and math.isfinite(epsilon) and epsilon >= 0):
        msg = f"epsilon={epsilon!r} must be a finite number >= 0 (pycytominer's default: 1e-6)"
        raise RaymmiError(msg)
    cor = method.endswith("-cor")
    if cor and not center:
        msg = f"method={method!r} needs center=True (it whitens the correlation matrix)"
        raise RaymmiError(msg)
    z = as_matrix(x_ref, name="x_ref").astype(np.float64)
    n, d = z.shape
    if n < 2:
        msg = f"spherize needs at least 2 reference rows, got {n}; use a larger reference"
        raise RaymmiError(msg)
    finite = np.isfinite(z).all(axis=0)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        msg = (
            f"spherize: {bad.size} feature(s) have NaN or infinite reference values (feature "
            f"indices {bad[:10].tolist()}); remove them first (raymmi select --ops na)"
        )
        raise RaymmiError(msg)

    mean = z.mean(axis=0) if center else np.zeros(d)
    scale = np.ones(d)
    if cor:
        m = Moments.of(z)
        zero = m.constant()
        if zero.any():
            bad = np.flatnonzero(zero)
            msg = (
                f"spherize method={method!r}: {bad.size} feature(s) have zero variance in the "
                f"reference rows (feature indices {bad[:10].tolist()}); remove them first "
                "(raymmi select --ops variance) or use method='ZCA' with epsilon > 0"
            )
            raise RaymmiError(msg)
        mean, scale = m.mean, m.std(ddof=0)
    z -= mean
    z /= scale

    pca = method.startswith("PCA")
    # PCA with n < d needs a basis of the null space for its last components (full V); ZCA
    # never does: there the n_features - rank fill directions share one gain, so
    # W = rest * I + V_r diag(gains - rest) V_r^T, stored low-rank (d x rank, not d x d).
    _, s, vt = np.linalg.svd(z, full_matrices=pca and n < d)
    tol = s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    rank = int((s > tol).sum())
    if rank == 0:
        msg = "spherize: the reference rows are all equal (rank 0); nothing to whiten"
        raise RaymmiError(msg)
    if epsilon == 0 and rank < d:
        few = (
            f"there are {n} reference rows for {d} features, so the centered rows have rank "
            f"{rank} < {d}"
            if n <= d
            else f"the reference rows have rank {rank} < {d} (linearly dependent features)"
        )
        msg = (
            f"spherize with epsilon=0 needs a full-rank reference: {few}. Regularize with "
            "epsilon > 0 (e.g. --epsilon 1e-6), or use ZCA-cor with epsilon, or use more "
            "reference rows (--reference all or negcon-global) or fewer features (raymmi "
            "select)"
        )
        raise RaymmiError(msg)
    root = math.sqrt(n - 1)
    if n <= d and not pca:
        basis = vt[:rank].T
        return SpherizeFit(
            method=method,
            center=np.asarray(mean, dtype=np.float64),
            scale=scale,
            weights=None,
            basis=basis,
            gains=root / (s[:rank] + epsilon),
            rest=root / (s[rank - 1] + epsilon),
            reference_rows=n,
            rank=rank,
        )
    if n <= d:
        s = np.concatenate([s[:rank], np.repeat(s[rank - 1], d - rank)])
    s = s + epsilon
    flip = np.sign(vt[np.arange(d), np.abs(vt).argmax(axis=1)])
    flip[flip == 0] = 1.0
    vt *= flip[:, None]
    weights = vt.T * (root / s)
    if not pca:
        weights = weights @ vt
    return SpherizeFit(
        method=method,
        center=np.asarray(mean, dtype=np.float64),
        scale=scale,
        weights=weights,
        reference_rows=n,
        rank=rank,
    )


def apply_spherize(x: np.ndarray, fit: SpherizeFit) -> np.ndarray:
    """Whiten rows with a fitted transform.

    Parameters
    ----------
    x
        Array of shape (n_rows, n_features); never modified. A NaN makes its whole output row
        NaN (each output mixes all features).

    Returns
    -------
    numpy.ndarray
        New float32 array of shape (n_rows, n_features): ``((x - center) / scale) @ weights``
        computed in float64. Columns are the input features for ZCA and the components
        ``PC1`` ... for PCA (:func:`spherize_feature_names`).
    """
    x = as_matrix(x)
    n, p = x.shape
    if p != fit.n_features:
        msg = f"x has {p} features but the spherize fit has {fit.n_features}"
        raise RaymmiError(msg)
    out = np.empty((n, p), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(1, p))
    for i in range(0, n, step):
        block = np.subtract(x[i : i + step], fit.center, dtype=np.float64)
        block /= fit.scale
        if fit.weights is not None:
            out[i : i + step] = block @ fit.weights
        else:
            basis, gains = fit.low_rank()
            low = (block @ basis) * (gains - fit.rest)
            block *= fit.rest
            block += low @ basis.T
            out[i : i + step] = block
    return out


def spherize_feature_names(fit: SpherizeFit, features: Sequence[str]) -> list[str]:
    """Output column names: ``features`` for ZCA, ``PC1`` ... ``PC<n_features>`` for PCA."""
    if len(features) != fit.n_features:
        msg = f"got {len(features)} feature names for a fit of {fit.n_features} features"
        raise RaymmiError(msg)
    if fit.method.startswith("PCA"):
        return [f"PC{i}" for i in range(1, fit.n_features + 1)]
    return list(features)
