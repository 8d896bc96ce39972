"""Classic segmentation, as CellProfiler's Identify{Primary,Secondary,Tertiary}Objects do it.

Nuclei (IdentifyPrimaryObjects): Gaussian smoothing (sigma 1, CellProfiler's default
threshold smoothing scale 1.3488 = 2 x 0.6744 sigma), a global Otsu threshold (two or three
classes, the middle class counted as foreground) or minimum cross-entropy (Li), holes filled,
clumps split by a watershed on the distance transform (``shape``) or on the smoothed intensity
(``intensity``) from local maxima at least ``min_diameter / 1.5`` apart, objects outside the
diameter range and objects touching the border dropped, then renumbered 1..n.

Cells (IdentifySecondaryObjects, propagation): the cell channel is thresholded the same way and
each nucleus grows over the foreground by a watershed on the image's gradient; CellProfiler's
propagation (Jones et al., 2005) weighs intensity differences against distance with a
regularization factor, which ``compactness`` approximates. A nucleus always keeps its own
pixels, so every nucleus has a cell with the same number.

Cytoplasm (IdentifyTertiaryObjects): cell minus its nucleus, the nucleus first shrunk by one
pixel (CellProfiler's "shrink smaller object prior to subtraction"), so a ring of nuclear
boundary stays in the cytoplasm and no cytoplasm is empty.

Pure: numpy, scipy and scikit-image; no model weights.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

ThresholdMethod = Literal["otsu", "otsu3", "li"]
Declump = Literal["shape", "intensity", "none"]


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Settings of the classic segmentation (CellProfiler's names in brackets).

    Parameters
    ----------
    nuclei_min_diameter, nuclei_max_diameter
        Typical nucleus diameter range in pixels (``Typical diameter of objects``); objects
        whose equivalent diameter falls outside are dropped.
    nuclei_threshold
        ``otsu`` (two classes), ``otsu3`` (three classes, middle one foreground) or ``li``
        (minimum cross-entropy).
    cells_threshold
        The same for the cell channel.
    threshold_correction
        Multiplies the threshold (``Threshold correction factor``).
    smoothing_sigma
        Gaussian sigma before thresholding (CellProfiler's scale 1.3488 is sigma 1).
    declump
        ``shape`` (distance transform), ``intensity`` or ``none``.
    discard_border
        Drop nuclei touching the image border (and so their cells).
    discard_border_cells
        Also drop cells (with their nuclei) that touch the border (IdentifySecondaryObjects'
        "Discard secondary objects touching the border of the image").
    compactness
        Watershed compactness of the propagation (0: pure gradient watershed).
    """

    nuclei_min_diameter: float = 8.0
    nuclei_max_diameter: float = 80.0
    nuclei_threshold: ThresholdMethod = "li"
    cells_threshold: ThresholdMethod = "li"
    threshold_correction: float = 1.0
    smoothing_sigma: float = 1.0
    declump: Declump = "shape"
    discard_border: bool = True
    discard_border_cells: bool = False
    compactness: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.nuclei_min_diameter < self.nuclei_max_diameter:
            msg = (
                f"nuclei diameters ({self.nuclei_min_diameter}, {self.nuclei_max_diameter}) must "
                "satisfy 0 < min < max"
            )
            raise ValueError(msg)
        for name in ("nuclei_threshold", "cells_threshold"):
            value = getattr(self, name)
            if value not in ("otsu", "otsu3", "li"):
                msg = f"{name}={value!r} is not one of ['li', 'otsu', 'otsu3']"
                raise ValueError(msg)
        if self.declump not in ("shape", "intensity", "none"):
            msg = f"declump={self.declump!r} is not one of ['intensity', 'none', 'shape']"
            raise ValueError(msg)


def threshold(image: np.ndarray, *, method: ThresholdMethod, correction: float = 1.0) -> float:
    """Global threshold of ``image`` (shape (h, w), values 0-1), times ``correction``.

    A constant image (a blank field) has no threshold: +inf is returned, so nothing is
    foreground.
    """
    from skimage import filters

    values = image[np.isfinite(image)]
    if values.size == 0 or float(values.max()) - float(values.min()) <= 1e-7:
        return float("inf")
    if method == "otsu":
        t = float(filters.threshold_otsu(values))
    elif method == "otsu3":
        t = float(filters.threshold_multiotsu(values, classes=3)[0])
    else:
        t = float(filters.threshold_li(values))
    return t * correction


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    filled = labels.copy()
    for index, slc in enumerate(ndi.find_objects(labels), start=1):
        if slc is None:
            continue
        holes = ndi.binary_fill_holes(labels[slc] == index) & (labels[slc] == 0)
        filled[slc][holes] = index
    return filled


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def segment_nuclei(image: np.ndarray, *, config: SegmentConfig | None = None) -> np.ndarray:
    """Nuclei of one field.

    Parameters
    ----------
    image
        The nuclei channel, shape (height, width), values 0-1.
    config
        Settings (default :class:`SegmentConfig`).

    Returns
    -------
    numpy.ndarray
        int32 labels of shape (height, width): 0 background, nuclei 1..n.
    """
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import clear_border, watershed

    config = config or SegmentConfig()
    smoothed = ndi.gaussian_filter(image.astype(np.float32), config.smoothing_sigma)
    t = threshold(smoothed, method=config.nuclei_threshold, correction=config.threshold_correction)
    mask = ndi.binary_fill_holes(smoothed > t)
    if not mask.any():
        return np.zeros(image.shape, np.int32)
    labels = label(mask, connectivity=2)
    if config.declump != "none":
        # CellProfiler's automatic settings: maxima at least min_diameter / 1.5 apart, a
        # declumping smoothing filter of 2.35 * min_diameter / 3.5 (as a sigma: / 2.35).
        distance_min = max(1, round(config.nuclei_min_diameter / 1.5))
        sigma = config.nuclei_min_diameter / 3.5
        if config.declump == "shape":
            surface = ndi.gaussian_filter(ndi.distance_transform_edt(mask), sigma / 2)
        else:
            surface = ndi.gaussian_filter(image.astype(np.float32), sigma)
        peaks = peak_local_max(
            surface, min_distance=distance_min, labels=labels, exclude_border=False
        )
        markers = np.zeros(image.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # every connected object keeps at least one marker
        unmarked = np.setdiff1d(np.unique(labels[labels > 0]), np.unique(labels[markers > 0]))
        for index in unmarked:
            ys, xs = np.nonzero(labels == index)
            markers[ys[len(ys) // 2], xs[len(xs) // 2]] = markers.max() + 1
        labels = watershed(-surface, markers, mask=mask)
    labels = _fill_holes(labels.astype(np.int32))
    if config.discard_border:
        labels = clear_border(labels)
    areas = np.bincount(labels.ravel())
    diameters = 2.0 * np.sqrt(areas / np.pi)
    bad = (diameters < config.nuclei_min_diameter) | (diameters > config.nuclei_max_diameter)
    bad[0] = False
    labels[bad[labels]] = 0
    return _relabel(labels)


def segment_cells(
    nuclei: np.ndarray, image: np.ndarray, *, config: SegmentConfig | None = None
) -> np.ndarray:
    """Cells grown from ``nuclei`` over the cell channel (propagation by watershed).

    Parameters
    ----------
    nuclei
        int32 nucleus labels of shape (height, width), 1..n.
    image
        The cell channel (AGP/actin, RFP ...), same shape, values 0-1.
    config
        Settings (default :class:`SegmentConfig`).

    Returns
    -------
    numpy.ndarray
        int32 labels of the same shape; cell ``k`` holds nucleus ``k``.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    config = config or SegmentConfig()
    if nuclei.max() == 0:
        return np.zeros(nuclei.shape, np.int32)
    smoothed = ndi.gaussian_filter(image.astype(np.float32), config.smoothing_sigma)
    t = threshold(smoothed, method=config.cells_threshold, correction=config.threshold_correction)
    foreground = (smoothed > t) | (nuclei > 0)
    cells = watershed(
        sobel(smoothed), markers=nuclei, mask=foreground, compactness=config.compactness
    )
    cells[nuclei > 0] = nuclei[nuclei > 0]
    cells = _fill_holes(cells.astype(np.int32))
    if config.discard_border_cells:
        edge = np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
        cells[np.isin(cells, edge[edge > 0])] = 0
    return cells


def cytoplasm(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Cell minus its nucleus shrunk by one pixel (shape (h, w) int32 labels, as ``cells``)."""
    from skimage.segmentation import find_boundaries

    inner = (nuclei > 0) & ~find_boundaries(nuclei, mode="inner")
    out = cells.copy()
    out[inner] = 0
    return out.astype(np.int32)


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """Label image from a mask made elsewhere.

    A binary export (two values: 0 and one other, as CellProfiler's ConvertObjectsToImage in
    "Binary" mode writes) is split into objects by 8-connected components; an integer label
    image is kept (renumbered 1..n).

    Parameters
    ----------
    mask
        Shape (height, width), any integer or boolean dtype.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 background.
    """
    from skimage.measure import label

    values = np.unique(mask)
    if values.size <= 2:
        return label(mask > 0, connectivity=2).astype(np.int32)
    return _relabel(mask.astype(np.int64))
