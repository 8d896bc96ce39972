"""CellProfiler's per-object measurements through ``cp-measure``, named as CellProfiler names them.

``cp-measure`` (the CellProfiler authors' lab; CellProfiler's Measure* modules as functions of
a label image and a pixel array) does the arithmetic; this module only chooses the functions,
runs them per compartment and channel, and renames their outputs to CellProfiler's column
names so pycytominer and raymmi's own stages read the result unchanged:

- ``sizeshape``: ``Area``, ``Zernike_2_0``, ``MaxFeretDiameter`` -> ``Nuclei_AreaShape_Area``;
- ``intensity``: ``Intensity_MeanIntensity`` -> ``Cells_Intensity_MeanIntensity_DNA`` and
  ``Location_CenterMassIntensity_X`` -> ``Cells_Location_CenterMassIntensity_X_DNA``;
- ``texture``: ``Contrast_3_00_256`` -> ``Cells_Texture_Contrast_DNA_3_00_256``;
- ``granularity``: ``Granularity_3`` -> ``Cells_Granularity_3_DNA``;
- ``radial``: ``RadialDistribution_FracAtD_1of4`` -> ``Cells_RadialDistribution_FracAtD_DNA_1of4``;
- ``correlation``: ``Correlation_Pearson`` -> ``Cells_Correlation_Correlation_AGP_DNA``;
  ``Correlation_Manders_1`` / ``_2`` -> ``..._Manders_AGP_DNA`` / ``..._Manders_DNA_AGP``.

Pure: arrays in, a dict of float arrays out. Pixels are expected scaled to 0-1 (as CellProfiler
loads them); label images must be 1..n (every label present).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from raymmi.config import MEASURES

# Correlation of two 0-1 images scaled from 16 bits: cp-measure's Costes needs the scale.
_COSTES_SCALE = 65535
_TRAILING_NUMBERS = re.compile(r"^(?P<head>.*?)_(?P<tail>\d.*)$")


def check_measures(measures: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of measure names; return it as a tuple.

    Raises
    ------
    ValueError
        If a name is not one of :data:`MEASURES` or the list is empty.
    """
    bad = [m for m in measures if m not in MEASURES]
    if bad or not measures:
        msg = f"measures={list(measures)!r}: {bad or 'none given'}; choose from {list(MEASURES)}"
        raise ValueError(msg)
    return tuple(dict.fromkeys(measures))


def _with_channel(name: str, channel: str) -> str:
    """Put the channel where CellProfiler does: before the trailing scale/bin numbers."""
    if name.startswith("Granularity_") or name.startswith("Intensity_"):
        return f"{name}_{channel}"
    if name.startswith("Location_"):
        return f"{name}_{channel}"
    match = _TRAILING_NUMBERS.match(name)
    if match:
        return f"{match['head']}_{channel}_{match['tail']}"
    return f"{name}_{channel}"


def _core():
    from cp_measure.bulk import get_core_measurements

    # legacy: CellProfiler's own n*q percentile rule for the quartile/MAD features
    return get_core_measurements(legacy=True)


def _correlation():
    from cp_measure.bulk import get_correlation_measurements

    return get_correlation_measurements()


def _as_float(values: object, n: int) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.size != n:  # cp-measure returns one value per label 1..n
        msg = f"cp-measure returned {out.size} values for {n} objects"
        raise RuntimeError(msg)
    return out


def measure_objects(
    labels: np.ndarray,
    images: Mapping[str, np.ndarray],
    *,
    compartment: str,
    measures: Sequence[str] = MEASURES,
) -> dict[str, np.ndarray]:
    """Measure every object of one compartment in every channel.

    Parameters
    ----------
    labels
        int labels of shape (height, width), objects 1..n (every label present).
    images
        Channel name to float array of the same shape, values 0-1.
    compartment
        Prefix of the columns (``Nuclei``, ``Cells``, ``Cytoplasm``).
    measures
        Subset of :data:`MEASURES`.

    Returns
    -------
    dict of str to numpy.ndarray
        Column name to float64 array of shape (n,), object ``k`` at index ``k - 1``; in a
        stable order (by measure, then channel, then cp-measure's order).
    """
    measures = check_measures(measures)
    n = int(labels.max())
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=n + 1)[1:]) + 1
    if 0 < present.size < n:
        # an object with no pixels in this compartment (an empty cytoplasm): measure the
        # others and give it NaN, so object k stays at index k - 1
        from skimage.segmentation import relabel_sequential

        compact = relabel_sequential(labels)[0]
        measured = measure_objects(compact, images, compartment=compartment, measures=measures)
        scattered = {}
        for name, values in measured.items():
            full = np.full(n, np.nan)
            full[present - 1] = values
            scattered[name] = full
        return scattered
    out: dict[str, np.ndarray] = {}
    if present.size == 0:
        return out
    labels = labels.astype(np.int32, copy=False)
    core = _core()
    first = next(iter(images.values()))
    with warnings.catch_warnings():
        # cp-measure warns for undefined Costes thresholds and empty texture matrices: the
        # value is NaN, which is what CellProfiler stores too.
        warnings.simplefilter("ignore", RuntimeWarning)
        if "sizeshape" in measures:
            for fn in ("sizeshape", "zernike", "feret"):
                for name, values in core[fn](labels, first).items():
                    out[f"{compartment}_AreaShape_{name}"] = _as_float(values, n)
        for channel, pixels in images.items():
            if "intensity" in measures:
                for name, values in core["intensity"](labels, pixels).items():
                    out[f"{compartment}_{_with_channel(name, channel)}"] = _as_float(values, n)
            if "texture" in measures:
                for name, values in core["texture"](labels, pixels).items():
                    column = f"{compartment}_Texture_{_with_channel(name, channel)}"
                    out[column] = _as_float(values, n)
            if "granularity" in measures:
                for name, values in core["granularity"](labels, pixels).items():
                    out[f"{compartment}_{_with_channel(name, channel)}"] = _as_float(values, n)
            if "radial" in measures:
                for fn in ("radial_distribution", "radial_zernikes"):
                    for name, values in core[fn](labels, pixels).items():
                        column = f"{compartment}_{_with_channel(name, channel)}"
                        out[column] = _as_float(values, n)
        if "correlation" in measures:
            out.update(_correlations(labels, images, compartment=compartment, n=n))
    return out


def _correlations(
    labels: np.ndarray, images: Mapping[str, np.ndarray], *, compartment: str, n: int
) -> dict[str, np.ndarray]:
    funcs = _correlation()
    out: dict[str, np.ndarray] = {}
    prefix = f"{compartment}_Correlation"
    for a, b in combinations(sorted(images), 2):
        pa_, pb = images[a], images[b]
        pearson = funcs["pearson"](pa_, pb, labels)
        out[f"{prefix}_Correlation_{a}_{b}"] = _as_float(pearson["Correlation_Pearson"], n)
        out[f"{prefix}_Slope_{a}_{b}"] = _as_float(pearson["Correlation_Slope"], n)
        for fn, name in (("manders_fold", "Manders"), ("rwc", "RWC"), ("costes", "Costes")):
            kwargs = {"scale_max": _COSTES_SCALE} if fn == "costes" else {}
            values = funcs[fn](pa_, pb, labels, **kwargs)
            out[f"{prefix}_{name}_{a}_{b}"] = _as_float(values[f"Correlation_{name}_1"], n)
            out[f"{prefix}_{name}_{b}_{a}"] = _as_float(values[f"Correlation_{name}_2"], n)
    return out


def object_centers(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CellProfiler's ``Location_Center_X/Y``: the mean column and row of each object's pixels.

    Parameters
    ----------
    labels
        int labels of shape (height, width), objects 1..n.

    Returns
    -------
    x, y : numpy.ndarray
        float64 arrays of shape (n,).
    """
    n = int(labels.max())
    if n == 0:
        return np.zeros(0), np.zeros(0)
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    x = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / np.maximum(counts, 1)
    y = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / np.maximum(counts, 1)
    return x, y
