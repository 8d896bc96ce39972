"""Classic segmentation against CellProfiler's objects on the JUMP and six-channel fields.

CellProfiler's counts are ``Image_Count_Cells`` of the parquet rows (JUMP: 188 nuclei and 188
cells; six-channel: 37 nuclei in its outlines image, 29 cells after it dropped the cells that
touch the border). Its nucleus areas are those of the 5 cells each parquet holds, matched to
ours by centre. Plus pure tests of the segmentation pieces on drawn objects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from raymmi.images import (
    SegmentConfig,
    cytoplasm,
    labels_from_mask,
    object_centers,
    segment_cells,
    segment_nuclei,
    threshold,
)
from raymmi.io import read_plane, scale_to_unit

FIELDS = {
    # name: (folder, nuclei file, cell file, parquet, discard border cells)
    "jump": (
        "cellpainting/images/JUMP_plate_BR00117006",
        "r01c01f01p01-ch5sk1fk1fl1.tiff",
        "r01c01f01p01-ch2sk1fk1fl1.tiff",
        "BR00117006_shrunken.parquet",
        False,
    ),
    "six_channel": (
        "cellpainting/images/pediatric_cancer_atlas_profiling",
        "r03c03f03p01-ch5sk1fk1fl1.tiff",
        "r03c03f03p01-ch3sk1fk1fl1.tiff",
        "BR00143976_shrunken.parquet",
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_segmentation_matches_cellprofiler(name):
    folder, dna_file, agp_file, parquet, border_cells = FIELDS[name]
    root = shared_file(folder)
    dna = scale_to_unit(read_plane(str(root / "images/orig" / dna_file), what="DNA"))
    agp = scale_to_unit(read_plane(str(root / "images/orig" / agp_file), what="AGP"))
    cp = pd.read_parquet(root / parquet)
    config = SegmentConfig(
        nuclei_threshold="li", cells_threshold="li", discard_border_cells=border_cells
    )
    nuclei = segment_nuclei(dna, config=config)
    cells = segment_cells(nuclei, agp, config=config)
    n_cells = len(np.unique(cells[cells > 0]))
    expected = int(cp["Image_Count_Cells"].iloc[0])
    assert abs(n_cells - expected) <= 0.15 * expected, (n_cells, expected)
    x, y = object_centers(nuclei)
    areas = np.bincount(nuclei.ravel())[1:]
    matched = []
    for _, row in cp.iterrows():
        d = np.hypot(x - row["Nuclei_Location_Center_X"], y - row["Nuclei_Location_Center_Y"])
        k = int(np.argmin(d))
        if d[k] < 10:
            matched.append((areas[k], row["Nuclei_AreaShape_Area"]))
    assert len(matched) >= 4, matched
    ours, theirs = np.median([m[0] for m in matched]), np.median([m[1] for m in matched])
    assert abs(ours - theirs) <= 0.15 * theirs, matched


def _disks(shape=(128, 128), centres=((40, 40), (40, 90), (95, 64)), r=10):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 0.05, np.float32)
    truth = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[inside] = 0.6
        truth[inside] = k
    return image, truth


def test_segment_nuclei_finds_drawn_disks():
    image, truth = _disks()
    # Otsu splits a two-level image at the midpoint: areas come back within 10%; Li's
    # threshold sits lower on a mostly-background image, so its objects are a pixel wider.
    assert segment_nuclei(image, config=SegmentConfig(nuclei_min_diameter=8)).max() == 3
    labels = segment_nuclei(
        image, config=SegmentConfig(nuclei_min_diameter=8, nuclei_threshold="otsu")
    )
    assert labels.max() == 3
    area = np.bincount(labels.ravel())[1:]
    assert np.all(np.abs(area - np.bincount(truth.ravel())[1:]) <= 0.1 * area)


def test_declumping_splits_touching_nuclei():
    image, _ = _disks(centres=((64, 50), (64, 68)), r=10)
    plain = segment_nuclei(image, config=SegmentConfig(declump="none"))
    split = segment_nuclei(image, config=SegmentConfig(declump="shape"))
    assert plain.max() == 1 and split.max() == 2


def test_size_limits_and_border():
    image, _ = _disks(centres=((64, 64), (3, 64)), r=6)
    assert segment_nuclei(image, config=SegmentConfig(nuclei_min_diameter=20)).max() == 0
    labels = segment_nuclei(image, config=SegmentConfig(nuclei_min_diameter=4))
    assert labels.max() == 1  # the one cut by the border is dropped


def test_blank_field_has_no_nuclei():
    blank = np.full((64, 64), 0.1, np.float32)
    assert threshold(blank, method="otsu") == float("inf")
    assert segment_nuclei(blank).max() == 0
    assert segment_cells(np.zeros((64, 64), np.int32), blank).max() == 0


def test_cells_grow_from_nuclei_and_cytoplasm_is_the_rest():
    image, _ = _disks(r=6)
    body, _ = _disks(r=14)
    nuclei = segment_nuclei(image, config=SegmentConfig(nuclei_min_diameter=4))
    cells = segment_cells(nuclei, body)
    for k in range(1, nuclei.max() + 1):
        assert np.all(cells[nuclei == k] == k)
        assert (cells == k).sum() > 3 * (nuclei == k).sum()
    cyto = cytoplasm(cells, nuclei)
    assert set(np.unique(cyto)) == set(np.unique(cells))
    assert not np.any(cyto[(nuclei > 0)] & (cyto[(nuclei > 0)] != cells[nuclei > 0]))


def test_labels_from_binary_and_label_masks():
    binary = np.zeros((20, 20), np.uint8)
    binary[2:6, 2:6] = 255
    binary[10:15, 10:15] = 255
    assert labels_from_mask(binary).max() == 2
    labelled = np.zeros((20, 20), np.uint16)
    labelled[2:6, 2:6] = 7
    labelled[6:9, 2:6] = 3  # touching, distinct labels: kept apart
    labelled[10:15, 10:15] = 12
    out = labels_from_mask(labelled)
    assert out.max() == 3 and len(np.unique(out)) == 4
