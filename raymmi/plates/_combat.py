"""ComBat batch correction (Johnson, Li and Rabinovic 2007) from per-batch moments.

The same estimator as ``scanpy.pp.combat`` with no covariates, computed from the per-batch
count, mean and sum of squared deviations of each feature (:class:`CombatStats`), which one
streaming pass collects and shards merge. Nothing else about the rows is needed:

- The least-squares fit of the batch design gives the batch means; the grand mean is their
  count-weighted mean, i.e. the mean of all rows; the pooled variance is
  ``sum_b m2_b / N``.
- On the standardized data ``s = (x - grand_mean) / sqrt(var_pooled)``, batch ``b`` has mean
  ``gamma_hat_b = (mean_b - grand_mean) / sqrt(var_pooled)`` and variance (ddof=1)
  ``delta_hat_b = m2_b / (n_b - 1) / var_pooled``.
- Priors as scanpy: per batch, over features, ``gamma_bar`` = mean and ``t2`` = variance
  (ddof=0) of ``gamma_hat``; ``a``, ``b`` from the mean and variance (ddof=1) of
  ``delta_hat``.
- The parametric solution iterates scanpy's ``_it_sol`` until the largest relative change of
  gamma and delta is at most 1e-4; its ``sum((s - gamma)**2)`` over the batch is
  ``m2_b / var_pooled + n_b * (gamma_hat_b - gamma)**2``.
- The nonparametric solution is sva's ``int.eprior``: for feature ``g``, the other features'
  ``(gamma_hat_j, delta_hat_j)`` of the batch weighted by the normal likelihood of the batch's
  values of ``g``, ``prod_i N(s_ig; gamma_hat_j, delta_hat_j)``, whose sum of squares is again
  ``m2s_g + n_g * (gamma_hat_g - gamma_hat_j)**2``. The likelihoods are combined in log space
  (a log-sum-exp), which equals sva wherever sva's product does not underflow to 0/0 (it does
  for more than a few hundred rows per batch). Cost: O(n_features**2) per batch, in blocks of
  features with bounded memory.
- Correction: ``(x - grand_mean - gamma*_b sqrt(var_pooled)) / sqrt(delta*_b) + grand_mean``.

A feature with zero pooled variance (constant within every batch) is set to its grand mean,
as scanpy does. Unlike scanpy, such a feature does not end the iteration of the others (in
scanpy its 0/0 relative change is NaN, which stops the loop after one step for all features).
NaN values are skipped feature by feature (scanpy does not accept NaN).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from raymmi.plates._moments import Moments, as_matrix
from raymmi.schema import RaymmiError

_CONVERGENCE = 1e-4
_MAX_ITERATIONS = 10_000
_BLOCK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True, eq=False)
class CombatStats:
    """Per-batch moments of every feature: the sufficient statistics of ComBat.

    Parameters
    ----------
    batches
        Batch labels, sorted.
    moments
        One :class:`Moments` per batch, in the order of ``batches``.
    """

    batches: tuple[str, ...]
    moments: tuple[Moments, ...]

    @property
    def n_features(self) -> int:
        """Number of features."""
        return self.moments[0].n_features if self.moments else 0

    def merge(self, other: CombatStats) -> CombatStats:
        """Statistics of the union of both sets of rows (batches matched by label)."""
        table = dict(zip(self.batches, self.moments, strict=True))
        for batch, m in zip(other.batches, other.moments, strict=True):
            table[batch] = table[batch].merge(m) if batch in table else m
        order = sorted(table)
        return CombatStats(batches=tuple(order), moments=tuple(table[b] for b in order))

    @classmethod
    def merge_all(cls, parts: Iterable[CombatStats]) -> CombatStats:
        """Merge any number of statistics (e.g. one per plate or per block)."""
        merged = cls(batches=(), moments=())
        for part in parts:
            merged = merged.merge(part)
        return merged


@dataclasses.dataclass(frozen=True, eq=False)
class CombatFit:
    """Fitted ComBat parameters.

    Parameters
    ----------
    batches
        Batch labels, sorted; rows of ``gamma`` and ``delta``.
    grand_mean
        float64 array of shape (n_features,).
    var_pooled
        float64 array of shape (n_features,): pooled within-batch variance (ddof=0).
    gamma, delta
        float64 arrays of shape (n_batches, n_features): empirical-Bayes additive and
        multiplicative batch effects on the standardized scale (``gamma*``, ``delta*``).
    parametric
        Whether the parametric (True) or nonparametric prior was used.
    """

    batches: tuple[str, ...]
    grand_mean: np.ndarray
    var_pooled: np.ndarray
    gamma: np.ndarray
    delta: np.ndarray
    parametric: bool


def _labels(batch_labels: Sequence[object] | np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(batch_labels, dtype=object)
    if labels.shape != (n,):
        msg = f"batch_labels must have one label per row, shape ({n},), got {labels.shape}"
        raise RaymmiError(msg)
    missing = pd.isna(labels)
    if missing.any():
        msg = (
            f"batch_labels has {int(missing.sum())} missing value(s) (first at row "
            f"{int(np.flatnonzero(missing)[0])}); every row needs a batch (--batch-key)"
        )
        raise RaymmiError(msg)
    return labels.astype(str)


def combat_stats(x: np.ndarray, batch_labels: Sequence[object] | np.ndarray) -> CombatStats:
    """Per-batch moments of a block of rows.

    Parameters
    ----------
    x
        Array of shape (n_rows, n_features); NaN skipped per feature.
    batch_labels
        Array of shape (n_rows,): the batch of each row (turned into ``str``).

    Returns
    -------
    CombatStats
        Mergeable with the statistics of other blocks (:meth:`CombatStats.merge`).
    """
    x = as_matrix(x)
    labels = _labels(batch_labels, x.shape[0])
    codes, uniques = pd.factorize(labels, sort=True)
    if len(uniques) == 1:
        return CombatStats(batches=(str(uniques[0]),), moments=(Moments.of(x),))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    moments = []
    for k in range(len(uniques)):
        rows = order[bounds[k] : bounds[k + 1]]
        contiguous = rows[-1] - rows[0] + 1 == rows.size
        moments.append(Moments.of(x[rows[0] : rows[-1] + 1] if contiguous else x[rows]))
    return CombatStats(batches=tuple(str(u) for u in uniques), moments=tuple(moments))


def _priors(delta_hat: np.ndarray) -> tuple[float, float]:
    """Inverse-gamma hyperparameters ``a``, ``b`` by moments (scanpy ``_aprior``, ``_bprior``)."""
    m, s2 = delta_hat.mean(), delta_hat.var(ddof=1)
    if s2 == 0:
        return math.inf, math.inf
    return float((2 * s2 + m**2) / s2), float((m * s2 + m**3) / s2)


def _it_sol(
    n: np.ndarray,
    g_hat: np.ndarray,
    d_hat: np.ndarray,
    m2s: np.ndarray,
    *,
    g_bar: float,
    t2: float,
    a: float,
    b: float,
    live: np.ndarray,
    batch: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Iterate as scanpy's ``_it_sol``, on moments; only ``live`` features test convergence."""
    g_old, d_old = g_hat, d_hat
    # All delta_hat equal (their variance is 0): a and b are infinite and the inverse-gamma
    # prior is a point mass at their mean b / a -> mean(delta_hat), which delta* then equals.
    point_mass = not (np.isfinite(a) and np.isfinite(b))
    for _ in range(_MAX_ITERATIONS):
        g_new = (t2 * n * g_hat + d_old * g_bar) / (t2 * n + d_old)
        sum2 = m2s + n * (g_hat - g_new) ** 2
        if point_mass:
            d_new = np.full_like(d_hat, d_hat.mean())
        else:
            d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            change_g = np.abs(g_new - g_old) / g_old
            change_d = np.abs(d_new - d_old) / d_old
        change = np.concatenate([change_g[live], change_d[live]])
        change = change[~np.isnan(change)]  # 0/0: an unchanged zero
        g_old, d_old = g_new, d_new
        if change.size == 0 or change.max() <= _CONVERGENCE:
            return g_new, d_new
    msg = (
        f"ComBat did not converge for batch {batch!r} in {_MAX_ITERATIONS} iterations; "
        "check that batch for extreme values or try --nonparametric"
    )
    raise RaymmiError(msg)


def _int_eprior(
    n: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, m2s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The nonparametric prior of sva's ``int.eprior`` from moments, in log space, by blocks."""
    p = g_hat.shape[0]
    g_star = np.empty(p)
    d_star = np.empty(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_2pi_d = np.log(2.0 * np.pi * d_hat)
    step = max(1, _BLOCK_ELEMENTS // (4 * max(1, p)))
    for i in range(0, p, step):
        rows = slice(i, min(p, i + step))
        nb = n[rows, None]
        sum2 = m2s[rows, None] + nb * (g_hat[rows, None] - g_hat[None, :]) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            log_lh = -0.5 * nb * log_2pi_d[None, :] - sum2 / (2.0 * d_hat[None, :])
        # sva: LH[LH == "NaN"] = 0 (a zero delta_hat), and a feature does not weigh itself.
        log_lh[~np.isfinite(log_lh) & ~np.isneginf(log_lh)] = -np.inf
        log_lh[np.arange(log_lh.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf
        top = log_lh.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        w = np.exp(log_lh - top)
        total = w.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            g_star[rows] = (w @ g_hat) / total
            d_star[rows] = (w @ np.where(np.isfinite(d_hat), d_hat, 0.0)) / total
    return g_star, d_star


def fit_combat(stats: CombatStats, *, parametric: bool = True) -> CombatFit:
    """Fit ComBat's empirical-Bayes batch effects from per-batch moments alone.

    Parameters
    ----------
    stats
        Merged statistics of all rows (:func:`combat_stats`, :meth:`CombatStats.merge`).
    parametric
        Parametric priors (scanpy, sva default) or sva's nonparametric prior
        (``--nonparametric``; O(n_features**2) per batch).

    Returns
    -------
    CombatFit
        Apply it with :func:`apply_combat`.

    Raises
    ------
    RaymmiError
        Fewer than 2 batches or 2 features; a batch with fewer than 2 (non-NaN) rows (named).
    """
    k = len(stats.batches)
    if k < 2:
        msg = (
            f"ComBat needs at least 2 batches, got {k} ({list(stats.batches)}); check --batch-key"
        )
        raise RaymmiError(msg)
    p = stats.n_features
    if p < 2:
        msg = f"ComBat needs at least 2 features to estimate its priors, got {p}"
        raise RaymmiError(msg)
    count = np.stack([m.count for m in stats.moments]).astype(np.float64)  # (k, p)
    mean = np.stack([m.mean for m in stats.moments])
    m2 = np.stack([m.m2 for m in stats.moments])
    for b, c in zip(stats.batches, count, strict=True):
        if c.min() < 2:
            rows = int(c.max())
            what = f"{rows} row" + ("" if rows == 1 else "s")
            if rows >= 2:
                what += f" but a feature with {int(c.min())} non-NaN value(s)"
            msg = (
                f"batch {b!r} has {what}; ComBat needs at least 2 per batch to estimate its "
                "variance. Drop or merge that batch, or choose another --batch-key"
            )
            raise RaymmiError(msg)

    total = count.sum(axis=0)
    grand_mean = (count * mean).sum(axis=0) / total
    var_pooled = m2.sum(axis=0) / total
    live = var_pooled > 0
    sd = np.sqrt(var_pooled)
    safe_sd = np.where(live, sd, 1.0)
    gamma_hat = np.where(live, (mean - grand_mean) / safe_sd, 0.0)
    m2s = np.where(live, m2 / np.where(live, var_pooled, 1.0), 0.0)
    delta_hat = m2s / (count - 1.0)

    gamma_star = np.empty((k, p))
    delta_star = np.empty((k, p))
    for i, batch in enumerate(stats.batches):
        if parametric:
            a_prior, b_prior = _priors(delta_hat[i])
            gamma_star[i], delta_star[i] = _it_sol(
                count[i],
                gamma_hat[i],
                delta_hat[i],
                m2s[i],
                g_bar=float(gamma_hat[i].mean()),
                t2=float(gamma_hat[i].var()),
                a=a_prior,
                b=b_prior,
                live=live,
                batch=batch,
            )
        else:
            gamma_star[i], delta_star[i] = _int_eprior(
                count[i], gamma_hat[i], delta_hat[i], m2s[i]
            )
    return CombatFit(
        batches=stats.batches,
        grand_mean=grand_mean,
        var_pooled=var_pooled,
        gamma=gamma_star,
        delta=delta_star,
        parametric=parametric,
    )


def apply_combat(
    x: np.ndarray, batch_labels: Sequence[object] | np.ndarray, fit: CombatFit
) -> np.ndarray:
    """Remove the fitted batch effects from rows.

    Parameters
    ----------
    x
        Array of shape (n_rows, n_features); never modified.
    batch_labels
        Array of shape (n_rows,): the batch of each row; every batch must be in ``fit``.

    Returns
    -------
    numpy.ndarray
        New float32 array of shape (n_rows, n_features), computed in float64:
        ``(x - grand_mean - gamma_b * sqrt(var_pooled)) / sqrt(delta_b) + grand_mean``, and
        ``grand_mean`` for features of zero pooled variance.

    Raises
    ------
    RaymmiError
        A batch that the fit has not seen (named, with the known ones).
    """
    x = as_matrix(x)
    n, p = x.shape
    if p != fit.grand_mean.shape[0]:
        msg = f"x has {p} features but the ComBat fit has {fit.grand_mean.shape[0]}"
        raise RaymmiError(msg)
    labels = _labels(batch_labels, n)
    index = {b: i for i, b in enumerate(fit.batches)}
    codes, uniques = pd.factorize(labels)
    unknown = [str(u) for u in uniques if u not in index]
    if unknown:
        msg = (
            f"batch(es) {unknown[:10]} were not in the data ComBat was fitted on "
            f"({list(fit.batches)[:20]}); fit on all batches, or check --batch-key"
        )
        raise RaymmiError(msg)
    live = fit.var_pooled > 0
    sd = np.sqrt(fit.var_pooled)
    out = np.empty((n, p), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(1, p))
    for code, label in enumerate(uniques):
        b = index[label]
        location = fit.grand_mean + fit.gamma[b] * sd
        inverse = np.where(live, 1.0 / np.sqrt(np.where(live, fit.delta[b], 1.0)), 0.0)
        rows = np.flatnonzero(codes == code)
        for i in range(0, rows.size, step):
            part = rows[i : i + step]
            whole = part[-1] - part[0] + 1 == part.size
            chunk = x[part[0] : part[-1] + 1] if whole else x[part]
            block = np.subtract(chunk, location, dtype=np.float64)
            block *= inverse
            block += fit.grand_mean
            if whole:
                out[part[0] : part[-1] + 1] = block
            else:
                out[part] = block
    return out
