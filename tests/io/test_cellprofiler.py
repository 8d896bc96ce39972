from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raymmi.io import (
    REPORT_ATTR,
    aggregate_to_wells,
    find_sites,
    read_cellprofiler_site,
)
from raymmi.schema import PLATE, SITE, WELL, RaymmiError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ROOT = DATA / "cellpainting" / "cellprofiler_BR00121431"
A01 = ROOT / "BR00121431-A01-1"
A02 = ROOT / "BR00121431-A02-1"
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
# Measurements per compartment in the raw files minus ImageNumber, ObjectNumber,
# Number_Object_Number, Parent_*, Children_*, Location_* and Neighbors_*ObjectNumber*.
N_FEATURES = {"Cells": 1880, "Cytoplasm": 1870, "Nuclei": 1875}

# Reference numbers from pycytominer 1.7.1 (not installed in CI). The two sites were loaded
# into a cytominer-database style SQLite (compartment columns prefixed, TableNumber per site),
# merged with SingleCells(strata=["Metadata_Plate", "Metadata_Well"]).merge_single_cells()
# (default linking: Cytoplasm_Parent_Cells, Cytoplasm_Parent_Nuclei) and aggregated with
# aggregate(merged, strata=["Metadata_Plate", "Metadata_Well"], features=<our features>,
# operation="median" | "mean", compute_object_count=True). Over all 5,625 features, our
# float32 results differ from them by at most 3.9e-7 (median) and 3.0e-6 (mean, a feature
# whose well mean is 1e-4 of its cell values) relative; the single-cell tables agree to 1 ulp.
PYCYTOMINER_MEDIAN = {
    ("A01", "Cells_AreaShape_Area"): 6409.0,
    ("A02", "Cells_AreaShape_Area"): 5468.0,
    ("A01", "Cytoplasm_Intensity_MeanIntensity_Mito"): 0.020984873111185732,
    ("A02", "Cytoplasm_Intensity_MeanIntensity_Mito"): 0.02188730778129529,
    ("A01", "Nuclei_Texture_Contrast_DNA_3_00_256"): 7.161895360315893,
    ("A02", "Nuclei_Texture_Contrast_DNA_3_00_256"): 7.695574776280253,
    ("A01", "Cells_Correlation_Correlation_AGP_ER"): 0.8492149760827977,
    ("A02", "Cells_Correlation_Correlation_AGP_ER"): 0.828944407455912,
    ("A01", "Nuclei_Granularity_1_DNA"): 9.14454004025532,
    ("A02", "Nuclei_Granularity_1_DNA"): 9.150178552721592,
    ("A01", "Cytoplasm_RadialDistribution_FracAtD_RNA_1of4"): 0.018762745,
    ("A02", "Cytoplasm_RadialDistribution_FracAtD_RNA_1of4"): 0.0190903485,
}
PYCYTOMINER_MEAN = {
    ("A01", "Cells_AreaShape_Area"): 6436.393258426966,
    ("A02", "Cells_AreaShape_Area"): 5254.527777777777,
    ("A01", "Cytoplasm_Intensity_MeanIntensity_Mito"): 0.02135257227447945,
    ("A02", "Cytoplasm_Intensity_MeanIntensity_Mito"): 0.021888218675668127,
    ("A01", "Nuclei_Texture_Contrast_DNA_3_00_256"): 9.160145755755877,
    ("A02", "Nuclei_Texture_Contrast_DNA_3_00_256"): 8.683837099586679,
    ("A01", "Nuclei_Granularity_1_DNA"): 9.171308766158022,
    ("A02", "Nuclei_Granularity_1_DNA"): 9.446508291965008,
}

needs_data = pytest.mark.skipif(
    not ROOT.is_dir(), reason=f"real CellProfiler data not found at {ROOT} (../shared absent)"
)


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def _raw(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        return next(reader), list(reader)


def _rewrite(
    path: Path, edit: Callable[[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]
) -> None:
    """Edit a CSV as text, so that untouched values keep their exact digits."""
    header, rows = edit(*_raw(path))
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


@pytest.fixture(scope="module")
def sites() -> dict[str, pd.DataFrame]:
    if not ROOT.is_dir():
        pytest.skip(f"real CellProfiler data not found at {ROOT} (../shared absent)")
    return {path.name: read_cellprofiler_site(path) for path in find_sites(ROOT)}


@pytest.fixture
def site_copy(tmp_path: Path) -> Path:
    if not ROOT.is_dir():
        pytest.skip(f"real CellProfiler data not found at {ROOT} (../shared absent)")
    return Path(shutil.copytree(A02, tmp_path / A02.name))


# --- find_sites -------------------------------------------------------------------------------


@needs_data
def test_find_sites_lists_site_folders_and_accepts_a_site() -> None:
    assert find_sites(ROOT) == [A01, A02]
    assert find_sites(str(A02)) == [A02]


def test_find_sites_errors_name_the_expected_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaymmiError, match=r"Image\.csv, Cells\.csv, Cytoplasm\.csv, Nuclei\.csv"):
        find_sites(tmp_path / "empty")
    with pytest.raises(RaymmiError, match="is not a folder"):
        find_sites(tmp_path / "absent")


# --- reading real data ------------------------------------------------------------------------


def test_real_sites_shape_and_metadata(sites: dict[str, pd.DataFrame]) -> None:
    a01, a02 = sites[A01.name], sites[A02.name]
    assert (len(a01), len(a02)) == (89, 36)
    assert list(a01.columns[:3]) == [PLATE, WELL, SITE]
    assert list(a01.columns) == list(a02.columns)
    for frame, well, image in ((a01, "A01", 1), (a02, "A02", 10)):
        assert frame[PLATE].unique().tolist() == ["BR00121431"]
        assert frame[WELL].unique().tolist() == [well]
        assert frame[SITE].unique().tolist() == ["1"]
        assert frame["Metadata_ImageNumber"].unique().tolist() == [image]
        assert frame["Metadata_ObjectNumber"].tolist() == list(range(1, len(frame) + 1))
    for column in ("Metadata_Row", "Metadata_Col", "Metadata_FieldID", "Metadata_AbsTime"):
        assert column in a01
    assert a01["Metadata_Col"].dtype == np.int64
    assert a01["Metadata_AbsTime"].iloc[0] == "2021-04-07T17:32:25.107-04:00"


def test_real_sites_features(sites: dict[str, pd.DataFrame]) -> None:
    frame = sites[A01.name]
    features = _features(frame)
    metadata = [c for c in frame.columns if c.startswith("Metadata_")]
    assert frame.columns.tolist() == metadata + features, "metadata first, then features"
    for compartment, n in N_FEATURES.items():
        assert sum(f.startswith(f"{compartment}_") for f in features) == n
    assert len(features) == sum(N_FEATURES.values())
    assert set(frame[features].dtypes) == {np.dtype(np.float32)}
    for marker in ("_Location_", "_Parent_", "_Children_", "Number_Object_Number", "ObjectNumber"):
        assert not [f for f in features if marker in f], marker
    assert "Cells_Neighbors_NumberOfNeighbors_Adjacent" in features
    assert "Metadata_Nuclei_Location_Center_X" in metadata
    report = frame.attrs[REPORT_ATTR]
    assert report["hub"] == "Cytoplasm"
    assert report["objects"] == {"Cells": 89, "Cytoplasm": 89, "Nuclei": 89}
    assert report["unlinked_parents"] == {"Cells": 0, "Nuclei": 0}
    assert report["nan_features"] == {}


def test_real_values_come_from_the_parent_objects(sites: dict[str, pd.DataFrame]) -> None:
    frame = sites[A01.name].set_index("Metadata_ObjectNumber")
    raw = {c: _raw(A01 / f"{c}.csv") for c in COMPARTMENTS}

    def row(compartment: str, number: str) -> dict[str, str]:
        header, rows = raw[compartment]
        (match,) = [r for r in rows if r[header.index("ObjectNumber")] == number]
        return dict(zip(header, match, strict=True))

    for number in (7, 42, 89):
        cytoplasm = row("Cytoplasm", str(number))
        cell = row("Cells", cytoplasm["Parent_Cells"])
        nucleus = row("Nuclei", cytoplasm["Parent_Nuclei"])
        got = frame.loc[number]
        for name, source in (
            ("Cytoplasm_AreaShape_Area", cytoplasm["AreaShape_Area"]),
            ("Cells_Intensity_MeanIntensity_AGP", cell["Intensity_MeanIntensity_AGP"]),
            (
                "Nuclei_Intensity_IntegratedIntensity_DNA",
                nucleus["Intensity_IntegratedIntensity_DNA"],
            ),
            ("Nuclei_Texture_Contrast_DNA_3_00_256", nucleus["Texture_Contrast_DNA_3_00_256"]),
        ):
            # float32 parsed from the text directly may differ from float(text) cast by 1 ulp
            np.testing.assert_allclose(got[name], float(source), rtol=1.2e-7, err_msg=name)
        assert got["Metadata_Nuclei_Location_Center_X"] == float(nucleus["Location_Center_X"])


def test_linking_follows_parent_columns_not_row_order(
    sites: dict[str, pd.DataFrame], site_copy: Path
) -> None:
    """Renumber nuclei and cells with a permutation, shuffle rows: every cell keeps its values."""
    rng = np.random.default_rng(0)
    n = 36
    new_nucleus = {str(i + 1): str(j + 1) for i, j in enumerate(rng.permutation(n))}
    new_cell = {str(i + 1): str(j + 1) for i, j in enumerate(rng.permutation(n))}

    def renumber(column: str, mapping: dict[str, str], *, shuffle: bool) -> Callable:
        def edit(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
            j = header.index(column)
            for r in rows:
                r[j] = mapping[r[j]]
            order = rng.permutation(len(rows)) if shuffle else range(len(rows))
            return header, [rows[i] for i in order]

        return edit

    _rewrite(site_copy / "Nuclei.csv", renumber("ObjectNumber", new_nucleus, shuffle=True))
    _rewrite(site_copy / "Cells.csv", renumber("ObjectNumber", new_cell, shuffle=True))
    _rewrite(site_copy / "Cells.csv", renumber("Parent_Nuclei", new_nucleus, shuffle=False))
    _rewrite(site_copy / "Cytoplasm.csv", renumber("Parent_Nuclei", new_nucleus, shuffle=True))
    _rewrite(site_copy / "Cytoplasm.csv", renumber("Parent_Cells", new_cell, shuffle=False))

    got = read_cellprofiler_site(site_copy)
    want = sites[A02.name]
    features = _features(want)
    np.testing.assert_array_equal(got[features].to_numpy(), want[features].to_numpy())
    expected_parent = want["Metadata_Cytoplasm_Parent_Nuclei"].astype(str).map(new_nucleus)
    assert got["Metadata_Cytoplasm_Parent_Nuclei"].astype(str).tolist() == expected_parent.tolist()


def test_two_compartments_link_through_cells(site_copy: Path) -> None:
    frame = read_cellprofiler_site(
        site_copy, compartments=("Cells", "Nuclei"), image_metadata=["Metadata_Row"]
    )
    assert frame.attrs[REPORT_ATTR]["hub"] == "Cells"
    assert [c for c in frame.columns if c.startswith("Metadata_")][:6] == [
        PLATE,
        WELL,
        SITE,
        "Metadata_Row",
        "Metadata_ImageNumber",
        "Metadata_ObjectNumber",
    ]
    assert "Metadata_Cells_Parent_Nuclei" in frame
    assert "Metadata_Col" not in frame
    assert not [f for f in _features(frame) if f.startswith("Cytoplasm_")]
    assert len(frame) == 36


def test_nan_values_are_kept_and_reported(site_copy: Path) -> None:
    def blank(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        j = header.index("AreaShape_Solidity")
        rows[0][j], rows[3][j] = "nan", ""
        return header, rows

    _rewrite(site_copy / "Nuclei.csv", blank)
    frame = read_cellprofiler_site(site_copy)
    assert frame["Nuclei_AreaShape_Solidity"].isna().sum() == 2
    assert frame.attrs[REPORT_ATTR]["nan_features"] == {"Nuclei_AreaShape_Solidity": 2}


# --- bad input --------------------------------------------------------------------------------


def test_missing_compartment_file(site_copy: Path) -> None:
    (site_copy / "Nuclei.csv").unlink()
    with pytest.raises(RaymmiError, match=r"lacks \['Nuclei\.csv'\].*compartments"):
        read_cellprofiler_site(site_copy)


def test_missing_plate_metadata(site_copy: Path) -> None:
    def drop_plate(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        j = header.index(PLATE)
        return header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows]

    _rewrite(site_copy / "Image.csv", drop_plate)
    with pytest.raises(RaymmiError, match=r"Image\.csv has no \['Metadata_Plate'\].*Metadata"):
        read_cellprofiler_site(site_copy)


def test_unknown_image_metadata(site_copy: Path) -> None:
    with pytest.raises(RaymmiError, match="Metadata_Compound"):
        read_cellprofiler_site(site_copy, image_metadata=["Metadata_Compound"])


def test_missing_linking_column(site_copy: Path) -> None:
    def drop(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        j = header.index("Parent_Nuclei")
        return header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows]

    _rewrite(site_copy / "Cytoplasm.csv", drop)
    with pytest.raises(RaymmiError, match="Parent_<X>"):
        read_cellprofiler_site(site_copy)


def test_truncated_csv(site_copy: Path) -> None:
    path = site_copy / "Cells.csv"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(RaymmiError, match=r"Cells\.csv is not a complete .*Expected 1940 columns"):
        read_cellprofiler_site(site_copy)


def test_csv_truncated_at_a_row_boundary(site_copy: Path) -> None:
    _rewrite(site_copy / "Nuclei.csv", lambda header, rows: (header, rows[:-3]))
    with pytest.raises(RaymmiError, match=r"Nuclei\.csv has 33 objects .* Count_Nuclei says 36"):
        read_cellprofiler_site(site_copy)


def test_empty_csv(site_copy: Path) -> None:
    (site_copy / "Cytoplasm.csv").write_bytes(b"")
    with pytest.raises(RaymmiError, match=r"Cytoplasm\.csv is empty"):
        read_cellprofiler_site(site_copy)


def test_non_numeric_measurement(site_copy: Path) -> None:
    def garble(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        rows[5][header.index("AreaShape_Area")] = "large"
        return header, rows

    _rewrite(site_copy / "Cells.csv", garble)
    with pytest.raises(RaymmiError, match=r"Cells\.csv .*invalid value 'large'"):
        read_cellprofiler_site(site_copy)


def test_orphan_objects(site_copy: Path) -> None:
    def orphan(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        j = header.index("Parent_Nuclei")
        for r in rows[4:7]:
            r[j] = "999"
        return header, rows

    _rewrite(site_copy / "Cytoplasm.csv", orphan)
    with pytest.raises(
        RaymmiError,
        match=r"3 Cytoplasm objects have no parent in Nuclei\.csv, first "
        r"\(ImageNumber=10, ObjectNumber=5, Parent_Nuclei=999\)",
    ):
        read_cellprofiler_site(site_copy)


# --- aggregation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "reference"), [("median", PYCYTOMINER_MEDIAN), ("mean", PYCYTOMINER_MEAN)]
)
def test_aggregate_matches_pycytominer(
    sites: dict[str, pd.DataFrame], how: str, reference: dict[tuple[str, str], float]
) -> None:
    cells = pd.concat(list(sites.values()), ignore_index=True)
    wells = aggregate_to_wells(cells, how=how)
    assert wells[WELL].tolist() == ["A01", "A02"]
    assert wells["Metadata_Object_Count"].tolist() == [89, 36]
    assert _features(wells) == _features(cells)
    assert set(wells[_features(wells)].dtypes) == {np.dtype(np.float32)}
    indexed = wells.set_index(WELL)
    for (well, feature), value in reference.items():
        assert indexed.loc[well, feature] == pytest.approx(value, rel=1e-5), (well, feature)
    # constant within each well: kept; varying per cell: dropped
    assert indexed["Metadata_Col"].tolist() == [1, 2]
    assert indexed[SITE].tolist() == ["1", "1"]
    assert "Metadata_ObjectNumber" not in wells
    assert "Metadata_Nuclei_Location_Center_X" not in wells


def test_aggregate_ignores_nan_like_pycytominer() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(9, 2)).astype(np.float32)
    values[[0, 4], 0] = np.nan
    values[6:, 1] = np.nan
    cells = pd.DataFrame(
        {
            PLATE: ["P2"] * 3 + ["P1"] * 6,
            WELL: ["B01"] * 3 + ["A01"] * 3 + ["A02"] * 3,
            "Metadata_Site": ["1", "2", "3"] * 3,
            "Metadata_Compound": ["x"] * 3 + ["y"] * 3 + ["z"] * 3,
            "f0": values[:, 0],
            "f1": values[:, 1],
        }
    )
    for how, fn in (("median", np.nanmedian), ("mean", np.nanmean)):
        wells = aggregate_to_wells(cells, how=how)
        assert list(zip(wells[PLATE], wells[WELL], strict=True)) == [
            ("P1", "A01"),
            ("P1", "A02"),
            ("P2", "B01"),
        ]
        assert wells.columns.tolist() == [
            PLATE,
            WELL,
            "Metadata_Compound",
            "Metadata_Object_Count",
            "f0",
            "f1",
        ]
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            want = np.stack(
                [fn(values[rows], axis=0) for rows in ([3, 4, 5], [6, 7, 8], [0, 1, 2])]
            )
        np.testing.assert_allclose(wells[["f0", "f1"]].to_numpy(), want, rtol=1e-6)
        assert np.isnan(wells.loc[1, "f1"]), "a feature NaN in every cell of a well stays NaN"


def test_aggregate_rejects_bad_input() -> None:
    cells = pd.DataFrame({PLATE: ["P"], WELL: ["A01"], "f": [1.0], "label": ["x"]})
    with pytest.raises(RaymmiError, match=r"how='max' is not one of"):
        aggregate_to_wells(cells, how="max")  # type: ignore[arg-type]
    with pytest.raises(RaymmiError, match=r"\['label'\] are neither numeric nor Metadata_"):
        aggregate_to_wells(cells, how="median")
    with pytest.raises(RaymmiError, match=r"lack \['Metadata_Well'\]"):
        aggregate_to_wells(cells.drop(columns=WELL), how="median")
