"""Measurements on CellProfiler's own masks against CellProfiler's values (five NF1 fields).

The NF1 masks are binary exports (255 = object), so objects are found again by connected
components and matched to CellProfiler's row by ``Nuclei_Location_Center_X/Y``.

Two facts of these files shape the comparison (both measured here, see the assertions):

- CellProfiler measured background-corrected images (its pipeline was given corrected files);
  the TIFFs here are the uncorrected ones, 8-bit data stored as 16 bits. The difference is one
  additive constant per field and channel: every offset-free statistic (StdIntensity,
  MADIntensity) already agrees, and the constant is read off one feature (the nucleus's
  ``MaxIntensity``, which is then not scored) and subtracted from the planes.
- The cells of these fields are confluent: the binary cell mask is one component holding 5-19
  nuclei, so CellProfiler's cell boundaries cannot be recovered from it and Cells/Cytoplasm are
  not scored (only reported).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from raymmi.images import labels_from_mask, measure_objects, object_centers
from raymmi.io import read_plane, scale_to_unit

NF1 = "cellpainting/images/NF1_cellpainting_data_shrunken"
CHANNELS = ("DAPI", "GFP", "RFP")


def _fields():
    root = shared_file(NF1)
    cp = pd.read_parquet(root / "Plate_2_with_image_data_shrunken.parquet")
    for _, row in cp.iterrows():
        names = {c: row[f"Image_FileName_{c}"] for c in CHANNELS}
        images = {
            c: scale_to_unit(read_plane(str(root / "Plate_2_images" / n), what=c))
            for c, n in names.items()
        }
        stem = names["DAPI"].rsplit(".", 1)[0]
        mask = read_plane(str(root / "Plate_2_masks" / f"{stem}_MaskNuclei.tiff"), what="mask")
        yield row, images, labels_from_mask(mask)


def _matched(row: pd.Series, labels: np.ndarray) -> int:
    x, y = object_centers(labels)
    d = np.hypot(x - row["Nuclei_Location_Center_X"], y - row["Nuclei_Location_Center_Y"])
    assert d.min() < 0.5, f"no re-found nucleus at CellProfiler's centre (closest {d.min():.2f})"
    return int(np.argmin(d))


def _compare(
    measures: tuple[str, ...], *, corrected: bool, channels: tuple[str, ...] = CHANNELS
) -> pd.DataFrame:
    rows = []
    for row, images, labels in _fields():
        images = {c: images[c] for c in channels}
        k = _matched(row, labels)
        if corrected:
            raw = measure_objects(labels, images, compartment="Nuclei", measures=("intensity",))
            offsets = {
                c: raw[f"Nuclei_Intensity_MaxIntensity_{c}"][k]
                - row[f"Nuclei_Intensity_MaxIntensity_{c}"]
                for c in channels
            }
            images = {c: np.clip(a - offsets[c], 0, None) for c, a in images.items()}
        ours = measure_objects(labels, images, compartment="Nuclei", measures=measures)
        for name, values in ours.items():
            if name in row.index and "MaxIntensity" not in name:
                rows.append((row["Image_FileName_DAPI"], name, values[k], float(row[name])))
    frame = pd.DataFrame(rows, columns=["field", "feature", "ours", "cellprofiler"])
    frame["rel"] = (frame.ours - frame.cellprofiler).abs() / frame.cellprofiler.abs().clip(
        lower=1e-12
    )
    return frame


@pytest.fixture(scope="module")
def core() -> pd.DataFrame:
    return _compare(("sizeshape", "intensity"), corrected=True)


def test_nucleus_area_within_0_8_percent(core):
    area = core[core.feature == "Nuclei_AreaShape_Area"]
    assert len(area) == 5
    assert area.rel.max() <= 0.008, area


def test_size_shape_within_2_percent(core):
    shape = core[core.feature.str.startswith("Nuclei_AreaShape_")]
    # Zernike shape moments are reported, not scored: small magnitudes (0.002-0.08) that move
    # with single boundary pixels of the re-found objects (median 2.7%, max 80% here).
    classic = shape[~shape.feature.str.contains("Zernike")]
    assert len(classic.feature.unique()) >= 20
    assert classic.rel.max() <= 0.02, classic.sort_values("rel").tail()
    assert classic.rel.median() <= 0.01


def test_intensity_within_2_percent(core):
    inten = core[core.feature.str.startswith("Nuclei_Intensity_")]
    assert len(inten.feature.unique()) >= 30
    assert inten.rel.median() <= 0.01, inten.rel.describe()
    # Statistics of the boundary pixels (the *Edge features, MinIntensity) and of a few
    # quantized values (MAD of 1/255 steps) or centres (MassDisplacement) move with the few
    # boundary pixels where a re-found object differs from CellProfiler's: up to 8% here.
    fragile = inten.feature.str.contains("Edge|MinIntensity|MADIntensity|MassDisplacement")
    whole = inten[~fragile]
    assert len(whole.feature.unique()) >= 15
    # 72 of 75 within 2%; the three others (D6 GFP Integrated/Std, H12 GFP LowerQuartile,
    # 2.1-3.2%) are in nuclei where GFP spans a few 1/255 steps and the re-found object has
    # 22 pixels more than CellProfiler's.
    assert (whole.rel <= 0.02).mean() >= 0.95, whole.sort_values("rel").tail()
    assert whole.rel.max() <= 0.035, whole.sort_values("rel").tail()
    assert inten[fragile].rel.max() <= 0.1, inten[fragile].sort_values("rel").tail()


def test_offset_free_intensity_matches_without_correction():
    """The correction is one constant: Std/MAD agree on the raw planes already."""
    raw = _compare(("intensity",), corrected=False)
    spread = raw[raw.feature.str.contains("StdIntensity_")]
    assert spread.rel.median() <= 0.01
    mean = raw[raw.feature.str.contains("_MeanIntensity_")]
    assert mean.rel.median() > 0.05  # uncorrected means are off: the constant is real


@pytest.mark.slow
def test_texture_granularity_radial_agreement():
    """Reported figures; the bounds only catch a broken glue (wrong channel, wrong names).

    Measured on all three channels (205 s): share within 2% and median relative difference,
    texture 94% / 0.15%, radial distribution 68% / 0.8%, granularity 57% / 1.1%. Granularity
    works on a 4x-subsampled image and radial bins on distances from the object's edge, so both
    move with the few boundary pixels and the 8-bit quantization of these planes; the test
    runs on DAPI only to stay short (~70 s).
    """
    frame = _compare(("texture", "granularity", "radial"), corrected=True, channels=("DAPI",))
    frame["category"] = frame.feature.str.split("_").str[1]
    summary = frame.groupby("category").rel.agg(["median", lambda r: (r <= 0.02).mean()])
    print(summary)
    assert set(summary.index) == {"Texture", "Granularity", "RadialDistribution"}
    assert summary.loc["Texture", "median"] <= 0.01
    assert summary.loc["Granularity", "median"] <= 0.05
    assert summary.loc["RadialDistribution", "median"] <= 0.05
