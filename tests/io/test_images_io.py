"""LoadData CSV parsing and TIFF planes (pure, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from raymmi.io import FieldSpec, read_field, read_load_data, read_plane, scale_to_unit
from raymmi.schema import RaymmiError

HEADER = "Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA,PathName_OrigDNA,"
HEADER += "FileName_OrigAGP,PathName_OrigAGP,ObjectsFileName_Nuclei,ObjectsPathName_Nuclei\n"


def _field(tmp_path, *, dna=(32, 32), agp=(32, 32), mask=(32, 32), dtype=np.uint16):
    (tmp_path / "img").mkdir(exist_ok=True)
    tifffile.imwrite(tmp_path / "img" / "d.tif", np.full(dna, 1000, dtype))
    tifffile.imwrite(tmp_path / "img" / "a.tif", np.full(agp, 500, dtype))
    tifffile.imwrite(tmp_path / "img" / "m.tif", np.zeros(mask, np.uint8))
    csv = tmp_path / "load.csv"
    csv.write_text(HEADER + "P1,A01,1,d.tif,img,a.tif,img,m.tif,img\n")
    return csv


def test_load_data_channels_paths_objects(tmp_path):
    csv = _field(tmp_path)
    (spec,) = read_load_data(csv)
    assert spec.key == ("P1", "A01", "1")
    assert list(spec.channels) == ["DNA", "AGP"]  # JUMP's Orig prefix dropped
    assert spec.channels["DNA"] == str(tmp_path / "img" / "d.tif")  # relative to the CSV
    assert spec.objects == {"Nuclei": str(tmp_path / "img" / "m.tif")}
    assert FieldSpec.from_dict(spec.to_dict()) == spec
    images, masks = read_field(spec)
    assert images["DNA"].dtype == np.float32
    assert images["DNA"][0, 0] == pytest.approx(1000 / 65535)
    assert masks["Nuclei"].shape == (32, 32)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        (HEADER, "empty"),
        ("Metadata_Plate,FileName_DNA,PathName_DNA\nP,a,b\n", "Metadata_Well"),
        ("Metadata_Plate,Metadata_Well,Metadata_Site\nP,A,1\n", "FileName_"),
        (HEADER + "P,A,1,d,,a,,,\nP,A,1,d,,a,,,\n", "same field"),
    ],
)
def test_bad_load_data(tmp_path, text, needle):
    csv = tmp_path / "load.csv"
    csv.write_text(text)
    with pytest.raises(RaymmiError, match=needle):
        read_load_data(csv)


def test_scale_by_bit_depth():
    assert scale_to_unit(np.array([[255]], np.uint8))[0, 0] == 1.0
    assert scale_to_unit(np.array([[65535, 0]], np.uint16)).tolist() == [[1.0, 0.0]]
    assert scale_to_unit(np.array([[0.25]], np.float32))[0, 0] == 0.25


def test_plane_errors(tmp_path):
    with pytest.raises(RaymmiError, match="not found"):
        read_plane(str(tmp_path / "no.tif"), what="row 1")
    (tmp_path / "bad.tif").write_bytes(b"nope")
    with pytest.raises(RaymmiError, match="not a readable TIFF"):
        read_plane(str(tmp_path / "bad.tif"), what="row 1")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(RaymmiError, match="RGB"):
        read_plane(str(tmp_path / "rgb.tif"), what="row 1")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 16, 16), np.uint16))
    with pytest.raises(RaymmiError, match="stack"):
        read_plane(str(tmp_path / "stack.tif"), what="row 1")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((1, 16, 16), np.uint16))
    assert read_plane(str(tmp_path / "one.tif"), what="row 1").shape == (16, 16)


def test_field_shape_errors(tmp_path):
    (spec,) = read_load_data(_field(tmp_path, agp=(32, 30)))
    with pytest.raises(RaymmiError, match="differ in shape"):
        read_field(spec)
    (spec,) = read_load_data(_field(tmp_path, mask=(16, 16)))
    with pytest.raises(RaymmiError, match="mask shape"):
        read_field(spec)
