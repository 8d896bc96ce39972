"""One field in, single-cell profiles and a QC record out: the per-field work of ``ingest images``.

Objects come from masks made elsewhere (``ObjectsFileName_Nuclei`` / ``_Cells`` /
``_Cytoplasm``) or from the classic segmentation; every nucleus that has a cell is one row,
numbered 1..n in all three compartments (``Metadata_ObjectNumber``), as CellProfiler numbers a
cell after its nucleus. Binary masks are split by connected components; a cell component that
holds several nuclei is divided among them by a watershed from the nuclei, so each nucleus gets
its own cell.

Pure: arrays in, arrays and dicts out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from raymmi.images._measure import MEASURES, check_measures, measure_objects, object_centers
from raymmi.images._segment import (
    SegmentConfig,
    cytoplasm,
    labels_from_mask,
    segment_cells,
    segment_nuclei,
)

COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
OBJECT_NUMBER = "Metadata_ObjectNumber"
# A field whose nuclei channel spans less than this (0-1 scale) holds no image: blank.
_BLANK_RANGE = 1e-3


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """What to measure in a field.

    Parameters
    ----------
    nuclei_channel
        Channel the nuclei are found in (``DNA``).
    cell_channel
        Channel the cells are grown over (``AGP``); ``None``: nuclei only (unless a cell mask
        is given).
    measures
        Subset of ``raymmi.images.MEASURES``.
    segment
        Settings of the classic segmentation.
    """

    nuclei_channel: str
    cell_channel: str | None = None
    measures: tuple[str, ...] = MEASURES
    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)

    def __post_init__(self) -> None:
        check_measures(self.measures)


@dataclasses.dataclass
class FieldProfile:
    """What :func:`profile_field` returns.

    Attributes
    ----------
    columns
        Column name to array of shape (n_cells,): ``Metadata_ObjectNumber`` (int64), the
        centers (``Metadata_Nuclei_Location_Center_X`` ...) and the features (float64).
    qc
        Per-field quality record (counts, blank flag, per-channel saturation and focus score).
    labels
        Compartment to int32 labels of shape (height, width), renumbered to the rows.
    """

    columns: dict[str, np.ndarray]
    qc: dict[str, object]
    labels: dict[str, np.ndarray]

    @property
    def n_cells(self) -> int:
        return len(self.columns[OBJECT_NUMBER])


def _cells_from_mask(
    nuclei: np.ndarray, mask: np.ndarray, elevation: np.ndarray | None
) -> np.ndarray:
    """Cell labels numbered like ``nuclei``: each mask component divided among its nuclei."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    foreground = labels_from_mask(mask) > 0
    if elevation is None:
        elevation = -ndi.distance_transform_edt(foreground)
    markers = np.where(foreground, nuclei, 0)
    return watershed(elevation, markers=markers, mask=foreground).astype(np.int32)


def find_objects(
    images: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    *,
    config: ProfileConfig,
) -> dict[str, np.ndarray]:
    """Nuclei, cells and cytoplasm of one field, numbered 1..n alike.

    Parameters
    ----------
    images
        Channel to float array of shape (height, width), values 0-1.
    masks
        Object set (``Nuclei``, ``Cells``, ``Cytoplasm``) to a mask of the same shape; empty:
        segment.
    config
        Channels and settings.

    Returns
    -------
    dict of str to numpy.ndarray
        ``Nuclei`` always; ``Cells`` and ``Cytoplasm`` when there is a cell channel or a
        cell mask. int32 labels; object ``k`` is the same cell in every compartment.
    """
    from skimage.filters import sobel
    from skimage.segmentation import relabel_sequential

    seg = config.segment
    if "Nuclei" in masks:
        nuclei = labels_from_mask(masks["Nuclei"])
    else:
        nuclei = segment_nuclei(images[config.nuclei_channel], config=seg)
    cell_image = images.get(config.cell_channel) if config.cell_channel else None
    if "Cells" in masks:
        elevation = None if cell_image is None else sobel(cell_image)
        cells = _cells_from_mask(nuclei, masks["Cells"], elevation)
    elif cell_image is not None:
        cells = segment_cells(nuclei, cell_image, config=seg)
    else:
        return {"Nuclei": nuclei}
    # keep the nuclei that got a cell, renumbered 1..n in both
    has_cell = np.unique(cells[cells > 0])
    keep = np.zeros(int(max(nuclei.max(), cells.max())) + 1, bool)
    keep[has_cell] = True
    nuclei = np.where(keep[nuclei], nuclei, 0)
    cells = np.where(keep[cells], cells, 0)
    nuclei, forward, _ = relabel_sequential(nuclei)
    cells = forward[cells]
    if "Cytoplasm" in masks:
        cyto = np.where(labels_from_mask(masks["Cytoplasm"]) > 0, cells, 0)
    else:
        cyto = cytoplasm(cells, nuclei)
    return {
        "Nuclei": nuclei.astype(np.int32),
        "Cells": cells.astype(np.int32),
        "Cytoplasm": cyto.astype(np.int32),
    }


def field_qc(
    images: Mapping[str, np.ndarray], *, nuclei_channel: str, objects: Mapping[str, np.ndarray]
) -> dict[str, object]:
    """Quality figures of one field (CellProfiler's MeasureImageQuality, in part).

    Returns
    -------
    dict
        ``Count_Nuclei``, ``Count_Cells``; ``blank`` (the nuclei channel is flat or no nucleus
        was found) and ``note``; per channel ``Saturation_<ch>`` (fraction of pixels at the top
        of the range), ``PercentMaximal_<ch>`` (percent of pixels at the field's maximum) and
        ``FocusScore_<ch>`` (normalized variance: variance / mean).
    """
    n_nuclei = int(objects["Nuclei"].max()) if "Nuclei" in objects else 0
    n_cells = int(objects["Cells"].max()) if "Cells" in objects else n_nuclei
    dna = images[nuclei_channel]
    flat = float(dna.max() - dna.min()) < _BLANK_RANGE
    qc: dict[str, object] = {
        "Count_Nuclei": n_nuclei,
        "Count_Cells": n_cells,
        "blank": bool(flat or n_nuclei == 0),
        "note": (
            "blank: the nuclei channel is flat"
            if flat
            else ("no cells found" if n_cells == 0 else "")
        ),
    }
    for channel, pixels in images.items():
        top = float(pixels.max())
        mean = float(pixels.mean())
        qc[f"Saturation_{channel}"] = float(np.mean(pixels >= 1.0 - 1e-7))
        qc[f"PercentMaximal_{channel}"] = 100.0 * float(np.mean(pixels >= top)) if top > 0 else 0.0
        qc[f"FocusScore_{channel}"] = float(pixels.var() / mean) if mean > 0 else 0.0
    return qc


def profile_field(
    images: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray] | None = None,
    *,
    config: ProfileConfig,
    illum: Mapping[str, np.ndarray] | None = None,
    channels: Sequence[str] | None = None,
) -> FieldProfile:
    """Single-cell profiles of one field.

    Parameters
    ----------
    images
        Channel to float array of shape (height, width), values 0-1.
    masks
        Optional masks made elsewhere (``Nuclei``, ``Cells``, ``Cytoplasm``).
    config
        Channels and measures.
    illum
        Optional per-channel illumination functions (shape (height, width), >= 1); each
        channel is divided by its function first (CorrectIlluminationApply, "Divide").
    channels
        Channels to measure (default: all).

    Returns
    -------
    FieldProfile
        One row per cell (nucleus with a cell; nucleus alone without a cell channel).
    """
    if illum:
        images = {
            c: (a / illum[c]).astype(np.float32) if c in illum else a for c, a in images.items()
        }
    if channels is not None:
        measured = {c: images[c] for c in channels}
    else:
        measured = dict(images)
    objects = find_objects(images, masks or {}, config=config)
    n = int(objects["Nuclei"].max())
    columns: dict[str, np.ndarray] = {OBJECT_NUMBER: np.arange(1, n + 1, dtype=np.int64)}
    for name, labels in objects.items():
        if name == "Cytoplasm":
            continue
        x, y = object_centers(labels)
        columns[f"Metadata_{name}_Location_Center_X"] = x
        columns[f"Metadata_{name}_Location_Center_Y"] = y
    for name, labels in objects.items():
        features = measure_objects(labels, measured, compartment=name, measures=config.measures)
        columns.update(features)
    qc = field_qc(images, nuclei_channel=config.nuclei_channel, objects=objects)
    return FieldProfile(columns=columns, qc=qc, labels=objects)
