"""Matplotlib figures that practitioners draw by hand: plate heatmaps, UMAPs, outlier scores.

Every function returns a :class:`matplotlib.figure.Figure` built with the Agg backend (no
display needed) and saves nothing: the caller logs it (``Run.log_figure``) or writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle as _Rectangle
from scipy.cluster.hierarchy import leaves_list, linkage

_CMAP_DIVERGING = "RdBu_r"


def _figure(width: float, height: float) -> Figure:
    # Figure() without pyplot: no global state, no GUI backend, safe in threads and workers.
    return Figure(figsize=(width, height), layout="constrained")


def _colors(labels: Sequence[str]) -> dict[str, tuple[float, ...]]:
    from matplotlib import colormaps

    unique = list(dict.fromkeys(str(v) for v in labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {u: cmap(i % cmap.N) for i, u in enumerate(unique)}


def plate_heatmap(
    corr: pd.DataFrame,
    *,
    batch: pd.Series | None = None,
    order: str = "plate",
    title: str = "",
) -> Figure:
    """Heatmap of a plate x plate correlation matrix.

    Parameters
    ----------
    corr
        Correlation matrix of shape (n_plates, n_plates), index/columns = plate ids.
    batch
        Batch per plate (index = plate ids); drawn as a colour strip and used by
        ``order="batch"``.
    order
        ``"plate"``: sorted by plate id. ``"batch"``: by batch, then plate id.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if order not in ("plate", "batch"):
        msg = f"order={order!r} is not one of ['batch', 'plate']"
        raise ValueError(msg)
    plates = sorted(corr.index.astype(str))
    if order == "batch":
        if batch is None:
            msg = "order='batch' needs batch (one batch per plate); pass batch= or order='plate'"
            raise ValueError(msg)
        plates = sorted(plates, key=lambda p: (str(batch.get(p, "")), p))
    m = corr.loc[plates, plates].to_numpy(dtype=np.float64)
    n = len(plates)
    size = min(12.0, 3.0 + 0.18 * n)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap=_CMAP_DIVERGING, vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson r of negcon medians")
    ticks = np.arange(n) if n <= 60 else np.arange(0, n, max(1, n // 30))
    ax.set_xticks(ticks, [plates[i] for i in ticks], rotation=90, fontsize=6)
    ax.set_yticks(ticks, [plates[i] for i in ticks], fontsize=6)
    if batch is not None:
        colors = _colors([str(batch.get(p, "")) for p in sorted(plates)])
        strip = np.array([[colors[str(batch.get(p, ""))] for p in plates]])
        height = max(0.6, n / 30)
        ax.imshow(strip, extent=(-0.5, n - 0.5, n - 0.5 + height, n - 0.5), aspect="auto")
        ax.set_ylim(n - 0.5 + height, -0.5)
        ax.set_xlim(-0.5, n - 0.5)
    ax.set_title(title or f"plate correlation, ordered by {order}")
    return fig


def umap_grid(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    title: str = "",
) -> Figure:
    """UMAP grid: one row per shard set; negcon wells by batch, treated wells over negcon.

    Parameters
    ----------
    panels
        Shard-set name → ``(coords, batch, negcon)``: UMAP coordinates of shape (n, 2), batch
        per row (n,), negcon flag per row (n,).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure(10.0, 4.2 * max(1, len(panels)))
    axes = fig.subplots(max(1, len(panels)), 2, squeeze=False)
    for row, (name, (coords, batch, negcon)) in enumerate(panels.items()):
        coords = np.asarray(coords)
        batch = np.asarray(batch).astype(str)
        negcon = np.asarray(negcon, dtype=bool)
        colors = _colors(sorted(np.unique(batch)))
        left, right = axes[row]
        for b, color in colors.items():
            sel = negcon & (batch == b)
            left.scatter(*coords[sel].T, s=6, color=color, label=b, alpha=0.8, linewidths=0)
        left.set_title(f"{name}: negcon wells by batch ({int(negcon.sum())})", fontsize=9)
        if len(colors) <= 12:
            left.legend(fontsize=7, markerscale=2, loc="best")
        right.scatter(*coords[negcon].T, s=5, color="0.8", label="negcon", linewidths=0)
        for b, color in colors.items():
            sel = ~negcon & (batch == b)
            right.scatter(*coords[sel].T, s=6, color=color, label=b, alpha=0.8, linewidths=0)
        right.set_title(f"{name}: treated ({int((~negcon).sum())}) over negcon", fontsize=9)
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


def outlier_plot(
    negcon_points: np.ndarray,
    treated_points: np.ndarray,
    treated_scores: np.ndarray,
    negcon_scores: np.ndarray,
    *,
    threshold: float | None = None,
    title: str = "",
) -> Figure:
    """GMM outlier scores: the 2-D embedding, and score histograms of negcon vs treated.

    Parameters
    ----------
    negcon_points, treated_points
        Embedded wells, shapes (n_negcon, 2) and (n_treated, 2) (a sample is enough).
    treated_scores, negcon_scores
        Log-likelihood per well under the negcon mixture, shapes (n_treated,), (n_negcon,).
    threshold
        Score cut-off to draw (e.g. the negcon 1st percentile).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure(12.0, 5.0)
    left, right = fig.subplots(1, 2)
    left.scatter(
        *np.asarray(negcon_points).T, s=6, color="0.75", label="negcon wells", linewidths=0
    )
    sc = left.scatter(
        *np.asarray(treated_points).T,
        s=6,
        c=np.asarray(treated_scores),
        cmap="viridis",
        linewidths=0,
    )
    fig.colorbar(sc, ax=left, label="treated wells: log-likelihood (low = outlier)")
    left.set_xlabel("PC1 of negcon wells")
    left.set_ylabel("PC2 of negcon wells")
    left.legend(fontsize=7, loc="upper right", markerscale=2)
    left.set_title("treated wells coloured by score, negcon wells grey", fontsize=9)
    finite_t = np.asarray(treated_scores)[np.isfinite(treated_scores)]
    finite_n = np.asarray(negcon_scores)[np.isfinite(negcon_scores)]
    both = np.concatenate([finite_t, finite_n])
    low = np.percentile(both, 0.5) if both.size else 0.0
    bins = np.linspace(low, both.max() if both.size else 1.0, 60)
    right.hist(np.clip(finite_n, low, None), bins=bins, alpha=0.6, density=True, label="negcon")
    right.hist(np.clip(finite_t, low, None), bins=bins, alpha=0.6, density=True, label="treated")
    if threshold is not None:
        right.axvline(threshold, color="k", linestyle="--", label="negcon 1st percentile")
    right.set_xlabel("log-likelihood under the negcon GMM\n(clipped at the 0.5th percentile)")
    right.set_ylabel("density")
    right.legend(fontsize=7)
    fig.suptitle(title or "GMM outlier scores")
    return fig


def feature_heatmap(
    x: np.ndarray,
    features: Sequence[str],
    *,
    row_groups: Sequence[str] | None = None,
    max_features: int = 200,
    clip: float = 3.0,
    title: str = "",
) -> Figure:
    """Heatmap of sampled wells x features, features hierarchically clustered.

    Each feature is z-scored over the rows shown and clipped at ``±clip``; features are ordered
    by average-linkage clustering on correlation distance; the ``max_features`` most variable
    (before z-scoring, by coefficient of variation) are kept.

    Parameters
    ----------
    x
        Sampled profiles, shape (n_wells, n_features).
    features
        Feature names, length n_features.
    row_groups
        Label per row (e.g. batch); rows are sorted by it and its boundaries drawn.
    max_features, clip, title
        See above.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    features = list(features)
    order_rows = np.arange(len(x))
    groups = None
    if row_groups is not None:
        groups = np.asarray(row_groups).astype(str)
        order_rows = np.argsort(groups, kind="stable")
        groups = groups[order_rows]
    x = x[order_rows]
    sd = x.std(axis=0)
    spread = sd / (np.abs(x.mean(axis=0)) + sd + 1e-12)
    keep = np.flatnonzero(sd > 0)
    keep = keep[np.argsort(-spread[keep], kind="stable")[:max_features]]
    z = (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
    if len(keep) > 2:
        cols = leaves_list(linkage(z.T, method="average", metric="correlation"))
        keep, z = keep[cols], z[:, cols]
    fig = _figure(12.0, 7.0)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(
        np.clip(z, -clip, clip),
        aspect="auto",
        cmap=_CMAP_DIVERGING,
        vmin=-clip,
        vmax=clip,
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label="z-score over shown wells")
    if groups is not None:
        edges = np.flatnonzero(groups[1:] != groups[:-1]) + 0.5
        for e in edges:
            ax.axhline(e, color="k", linewidth=0.8)
        starts = np.concatenate([[0], np.ceil(edges).astype(int)])
        ax.set_yticks(starts, groups[starts], fontsize=7)
    ax.set_xlabel(f"{len(keep)} features (hierarchically clustered)")
    if len(keep) <= 60:
        ax.set_xticks(np.arange(len(keep)), [features[i] for i in keep], rotation=90, fontsize=5)
    ax.set_title(title or f"feature heatmap, {len(x)} sampled wells")
    return fig


def loss_curves(history: pd.DataFrame, *, title: str = "") -> Figure:
    """Per-epoch training curves: every ``train_*``/``val_*``/``extra_*`` loss term.

    Parameters
    ----------
    history
        One row per epoch with an ``epoch`` column and metric columns, as written by
        ``raymmi train`` (``train_loss``, ``val_loss``, ``train_gamma_L_Local`` ...).
    title
        Figure title.
    """
    terms = sorted(
        {c.split("_", 1)[1] for c in history.columns if c.startswith(("train_", "val_"))}
    )
    fig = _figure(4.0 * min(4, max(1, len(terms))), 3.2 * (-(-max(1, len(terms)) // 4)))
    axes = fig.subplots(-(-max(1, len(terms)) // 4), min(4, max(1, len(terms))), squeeze=False)
    epoch = history["epoch"] if "epoch" in history else pd.Series(range(len(history)))
    for ax, term in zip(axes.ravel(), terms, strict=False):
        for prefix, style in (("train_", "-"), ("val_", "--"), ("extra_", ":")):
            column = f"{prefix}{term}"
            if column in history:
                ax.plot(epoch, history[column], style, label=prefix.rstrip("_"))
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(terms) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def embedding_scatter(
    embeddings: Mapping[str, np.ndarray],
    labels: Sequence[str],
    *,
    batch: Sequence[str] | None = None,
    title: str = "",
    max_cells: int = 5000,
    seed: int = 0,
) -> Figure:
    """UMAPs of embeddings, coloured by label (top row) and by batch (bottom row).

    Parameters
    ----------
    embeddings
        Name → array of shape (n, d) over the same n cells (the model's, the reference ...).
    labels
        Label per cell (cell type), length n. Up to 20 labels get a legend; more are written
        on the plot at each label's median position.
    batch
        Batch per cell, length n: a second row of the same UMAPs coloured by batch.
    title
        Figure title.
    max_cells
        Cells drawn (a seeded subset): UMAP costs seconds per thousand cells.
    seed
        Seed of the subset and of UMAP (deterministic).
    """
    import umap

    names = np.asarray(labels).astype(str)
    keep = np.arange(len(names))
    if len(keep) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_cells, replace=False))
    rows = [("label", names[keep])]
    if batch is not None:
        rows.append(("batch", np.asarray(batch).astype(str)[keep]))
    cols = max(1, len(embeddings))
    fig = _figure(5.2 * cols, 4.6 * len(rows))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for k, (name, x) in enumerate(embeddings.items()):
        x = np.nan_to_num(np.asarray(x, dtype=np.float64)[keep])
        if len(x) >= 10:
            reducer = umap.UMAP(
                n_neighbors=min(15, len(x) - 1), min_dist=0.3, random_state=seed, n_jobs=1
            )
            coords = np.asarray(reducer.fit_transform(x))
            axis_name = "UMAP"
        else:  # too few cells for a neighbour graph: the first two coordinates
            coords = np.c_[x[:, 0], x[:, 1] if x.shape[1] > 1 else 0 * x[:, 0]]
            axis_name = "dim"
        for r, (kind, values) in enumerate(rows):
            ax = axes[r][k]
            colors = _colors(sorted(np.unique(values)))
            for value, color in colors.items():
                sel = values == value
                ax.scatter(*coords[sel].T, s=4, color=color, label=value, alpha=0.8, linewidths=0)
            ax.set_title(f"{name} ({x.shape[1]} dims), by {kind}", fontsize=9)
            ax.set_xlabel(f"{axis_name} 1", fontsize=8)
            ax.set_ylabel(f"{axis_name} 2", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if len(colors) <= 20:
                if k == cols - 1:
                    ax.legend(
                        fontsize=7,
                        markerscale=2.5,
                        loc="center left",
                        bbox_to_anchor=(1.0, 0.5),
                        frameon=False,
                    )
            else:
                for value in colors:
                    at = np.median(coords[values == value], axis=0)
                    ax.text(
                        *at,
                        value,
                        fontsize=6,
                        ha="center",
                        va="center",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.6, "lw": 0},
                    )
    if title:
        fig.suptitle(title)
    return fig


def metric_heatmap(
    frame: pd.DataFrame,
    x: str,
    y: str,
    metric: str,
    *,
    log_x: bool = False,
    log_y: bool = False,
    bins: int = 6,
    mode: str = "max",
    title: str = "",
) -> Figure:
    """Mean of ``metric`` over two searched parameters, one cell per bin pair.

    Parameters
    ----------
    frame
        One row per configuration (``raymmi tune``'s ``results.csv``) with columns ``x``,
        ``y`` and ``metric``.
    x, y
        Parameter columns. Numeric ones with more than ``bins`` distinct values are binned
        (log-spaced when ``log_x``/``log_y``); others keep one row/column per value.
    metric
        Column averaged per cell; cells without a configuration stay blank.
    mode
        ``"max"`` or ``"min"``: which end of the colour scale is better (drawn bright).
    title
        Figure title.
    """

    def _axis_bins(values: pd.Series, bins: int, log: bool) -> tuple[np.ndarray, list[str]]:
        # cell index of every value, and the cells' labels (one per value, or numeric bins)
        import itertools

        numeric = pd.to_numeric(values, errors="coerce")
        distinct = sorted(values.astype(str).unique())
        if numeric.isna().any() or values.nunique() <= bins:
            if not numeric.isna().any():
                order = sorted(values.unique())
                lookup = {v: i for i, v in enumerate(order)}
                return values.map(lookup).to_numpy(), [f"{v:.3g}" for v in order]
            lookup = {v: i for i, v in enumerate(distinct)}
            return values.astype(str).map(lookup).to_numpy(), distinct
        arr = numeric.to_numpy(dtype=float)
        low, high = float(arr.min()), float(arr.max())
        if log and low > 0:
            edges = np.geomspace(low, high, bins + 1)
        else:
            edges = np.linspace(low, high, bins + 1)
        index = np.clip(np.searchsorted(edges, arr, side="right") - 1, 0, bins - 1)
        labels = [f"{a:.3g}-{b:.3g}" for a, b in itertools.pairwise(edges)]
        return index, labels

    counts = [c for c in ("completed", "stopped_early") if c in frame.columns]
    data = frame[[x, y, metric, *counts]].dropna(subset=[metric])
    xs, x_labels = _axis_bins(data[x], bins, log_x)
    ys, y_labels = _axis_bins(data[y], bins, log_y)
    grid = np.full((len(y_labels), len(x_labels)), np.nan)
    stopped = np.zeros_like(grid, dtype=bool)
    cells = pd.DataFrame({"x": xs, "y": ys, "m": data[metric].to_numpy(dtype=float)})
    for (i, j), value in cells.groupby(["y", "x"])["m"].mean().items():
        grid[int(i), int(j)] = value
    if len(counts) == 2:
        # a cell whose every configuration ASHA stopped early: its value is a partial run's
        cells["stopped"] = (data["stopped_early"] > 0).to_numpy() & (
            data["completed"] == 0
        ).to_numpy()
        for (i, j), value in cells.groupby(["y", "x"])["stopped"].all().items():
            stopped[int(i), int(j)] = bool(value)
    fig = _figure(max(6.0, 2.4 + 1.0 * len(x_labels)), max(4.5, 2.0 + 0.55 * len(y_labels)))
    ax = fig.subplots()
    cmap = "viridis" if mode == "max" else "viridis_r"
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    ax.set_facecolor("0.92")
    finite = grid[np.isfinite(grid)]
    middle = float(np.mean([finite.min(), finite.max()])) if len(finite) else 0.0
    for (i, j), value in np.ndenumerate(grid):
        if not np.isfinite(value):
            ax.text(j, i, "no trial", ha="center", va="center", fontsize=7, color="0.4")
            continue
        bright = (value > middle) == (mode == "max")
        label = f"{value:.3g}" + ("\nstopped" if stopped[i, j] else "")
        ax.text(
            j, i, label, ha="center", va="center", fontsize=8, color="black" if bright else "white"
        )
        if stopped[i, j]:
            ax.add_patch(
                _Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", linewidth=0, edgecolor="0.5"
                )
            )
    ax.set_xticks(np.arange(len(x_labels)), x_labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(y_labels)), y_labels, fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    shown = metric.removesuffix("_mean")
    fig.colorbar(image, ax=ax, label=f"mean {shown}", shrink=0.9)
    note = "; hatched: every trial stopped early" if stopped.any() else ""
    ax.set_title(
        title or f"{shown} ({'higher' if mode == 'max' else 'lower'} is better){note}",
        fontsize=9,
        wrap=True,
    )
    return fig


def parallel_coordinates(
    frame: pd.DataFrame,
    params: Sequence[str],
    metric: str,
    *,
    log: Sequence[str] = (),
    mode: str = "max",
    highlight: int | None = None,
    title: str = "",
) -> Figure:
    """One line per configuration across parameter axes and the metric, coloured by the metric.

    Parameters
    ----------
    frame
        One row per configuration with the ``params`` columns and ``metric``.
    params
        Parameter columns, one vertical axis each (numeric axes span their min to max, on a
        log scale for those in ``log``; others space their values evenly).
    metric
        The last axis and the line colour.
    mode
        ``"max"`` or ``"min"``: which end of the colour scale is better (drawn bright).
    highlight
        Row position (in ``frame``) drawn thick in red, e.g. the best configuration.
    title
        Figure title.
    """
    from matplotlib import colormaps

    data = frame.reset_index(drop=True)
    axes_names = [*params, metric]
    scaled = np.zeros((len(data), len(axes_names)))
    ticks: list[list[tuple[float, str]]] = []
    for k, name in enumerate(axes_names):
        column = data[name]
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().all() and len(column):
            x = numeric.to_numpy(dtype=float)
            use_log = name in log and (x > 0).all()
            t = np.log10(x) if use_log else x
            low, high = float(np.nanmin(t)), float(np.nanmax(t))
            span = high - low or 1.0
            scaled[:, k] = (t - low) / span
            marks = np.linspace(low, high, 5 if high > low else 1)
            ticks.append([((m - low) / span, f"{(10**m if use_log else m):.3g}") for m in marks])
        else:
            values = list(dict.fromkeys(column.astype(str)))
            step = 1.0 / max(1, len(values) - 1)
            lookup = {v: i * step for i, v in enumerate(values)}
            scaled[:, k] = column.astype(str).map(lookup).to_numpy()
            ticks.append([(lookup[v], v) for v in values])
    fig = _figure(max(6.0, 2.0 + 1.7 * len(axes_names)), 4.8)
    ax = fig.subplots()
    score = pd.to_numeric(data[metric], errors="coerce").to_numpy(dtype=float)
    finite = score[np.isfinite(score)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    cmap = colormaps["viridis" if mode == "max" else "viridis_r"]
    positions = np.arange(len(axes_names))
    for i in range(len(data)):
        if i == highlight:
            continue
        value = score[i]
        color = cmap((value - low) / ((high - low) or 1.0)) if np.isfinite(value) else "0.7"
        ax.plot(positions, scaled[i], color=color, alpha=0.8, linewidth=1.2)
    if highlight is not None and 0 <= highlight < len(data):
        ax.plot(positions, scaled[highlight], color="red", linewidth=3, label="best")
    for k, axis_ticks in enumerate(ticks):
        ax.axvline(k, color="black", linewidth=0.8)
        for position, label in axis_ticks:
            ax.text(k + 0.03, position, label, fontsize=7, va="center")
    ax.set_xticks(positions, axes_names, rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes_names) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(low, high), cmap), ax=ax, label=metric)
    best = " (red: the best)" if highlight is not None and 0 <= highlight < len(data) else ""
    ax.set_title(title or f"{len(data)} configurations{best}", fontsize=9)
    return fig


def field_qc_figure(
    images: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    channels: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """One field as colours with its objects outlined, as one checks a segmentation by eye.

    Parameters
    ----------
    images
        Channel to float array of shape (height, width), values 0-1.
    labels
        ``Nuclei`` (outlined white) and optionally ``Cells`` (outlined yellow): int labels.
    channels
        Up to three channels shown as blue, green, red (default: the first three, DNA first).
    title
        Figure title.
    """
    from skimage.segmentation import find_boundaries

    names = list(channels or images)[:3]
    h, w = next(iter(images.values())).shape
    rgb = np.zeros((h, w, 3), np.float32)
    for channel, slot in zip(names, (2, 1, 0), strict=False):
        plane = images[channel].astype(np.float32)
        lo, hi = np.percentile(plane, [1, 99.5])
        rgb[..., slot] = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1)
    if "Cells" in labels:
        rgb[find_boundaries(labels["Cells"], mode="inner")] = (1.0, 1.0, 0.0)
    if "Nuclei" in labels:
        rgb[find_boundaries(labels["Nuclei"], mode="inner")] = (1.0, 1.0, 1.0)
    fig = _figure(6, 6 * h / max(w, 1) + 0.4)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    colours = ", ".join(f"{c} {k}" for c, k in zip(names, ("blue", "green", "red"), strict=False))
    n = int(labels["Nuclei"].max()) if "Nuclei" in labels else 0
    ax.set_title(title or f"{colours}; {n} nuclei (white), cells (yellow)", fontsize=9)
    return fig


def variance_ratio_plot(ratio: np.ndarray, *, title: str) -> Figure:
    """Variance ratio per principal component (log scale), ``ratio`` of shape (n_comps,)."""
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    ranks = np.arange(1, len(ratio) + 1)
    ax.plot(ranks, ratio, "o-", ms=3)
    ax.set_xlabel("principal component")
    ax.set_ylabel("variance ratio")
    ax.set_yscale("log")
    ax.set_title(title)
    return fig


def partner_weights_plot(weights: np.ndarray, *, chance: float, title: str) -> Figure:
    """Histogram of each test cell's matching weight on its true partner, chance marked."""
    fig = _figure(4.5, 3.2)
    ax = fig.add_subplot()
    ax.hist(weights, bins=40, color="tab:blue")
    ax.axvline(chance, color="tab:red", lw=1, label=f"random 1/N = {chance:.2g}")
    ax.set_xlabel("weight on the true partner")
    ax.set_ylabel("test cells")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def score_bars(scores: Mapping[str, float], *, highlight: str, title: str) -> Figure:
    """One bar per score in [0, 1] (non-finite ones drawn at 0, labelled n/a)."""
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    labels = list(scores)
    finite = [math.isfinite(scores[k]) for k in labels]
    heights = [scores[k] if ok else 0.0 for k, ok in zip(labels, finite, strict=True)]
    colors = ["tab:orange" if k == highlight else "tab:blue" for k in labels]
    ax.bar(labels, heights, color=colors)
    for i, k in enumerate(labels):
        text = f"{scores[k]:.3f}" if finite[i] else "n/a"
        ax.text(i, heights[i] + 0.01, text, ha="center", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def predicted_vs_observed(observed: np.ndarray, predicted: np.ndarray, *, title: str) -> Figure:
    """Hexbin of predicted against observed values (same shape, 1-D), the diagonal dashed."""
    fig = _figure(4.5, 4.2)
    ax = fig.add_subplot()
    ax.hexbin(observed, predicted, gridsize=60, bins="log", mincnt=1, cmap="viridis")
    low = float(min(observed.min(), predicted.min()))
    high = float(max(observed.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--")
    ax.set_xlabel("observed (normalized)")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    return fig
