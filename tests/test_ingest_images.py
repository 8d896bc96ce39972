"""`raymmi ingest images` / `generate images` end to end on the session's Ray, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import imports

from raymmi.cli import main
from raymmi.io import open_shard_set

pytestmark = pytest.mark.usefixtures("ray_session")
FAST = ("--measure", "sizeshape,intensity", "--no-track", "--num-cpus", "2")


def _generate(out: Path, **kw: int) -> Path:
    argv = ["generate", "images", "--out", str(out), "--no-track", "--num-cpus", "2"]
    for k, v in {"plates": 1, "wells": 2, "sites": 1, "size": 256, **kw}.items():
        argv += [f"--{k}", str(v)]
    assert main(argv) == 0
    return out / "load_data.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> Path:
    """2 wells x 1 site of 256 x 256 plus one blank field (a flat plane in every channel)."""
    root = tmp_path_factory.mktemp("fields")
    load = _generate(root / "gen")
    rows = _rows(load)
    blank = dict(rows[0], Metadata_Well="B01", Metadata_Treatment="DMSO")
    for ch in ("DNA", "AGP", "RNA"):
        name = f"blank_{ch}.tiff"
        tifffile.imwrite(load.parent / "images" / name, np.full((256, 256), 900, np.uint16))
        blank[f"FileName_Orig{ch}"] = name
        blank[f"PathName_Orig{ch}"] = "images"
    _write(load, [*rows, blank])
    return load


def test_fields_to_cells_with_qc(fields, tmp_path):
    out = tmp_path / "cells"
    argv = ["ingest", "images", str(fields), "--out", str(out), "--nuclei-channel", "DNA"]
    assert main([*argv, "--cell-channel", "AGP", *FAST]) == 0
    shard_set = open_shard_set(str(out))
    table = shard_set.read_table().to_pandas()
    m = shard_set.manifest
    assert m.kind == "plates" and m.num_rows == len(table) > 5
    for column in (
        "Nuclei_AreaShape_Area",
        "Cells_Intensity_MeanIntensity_DNA",
        "Cytoplasm_Intensity_MeanIntensity_AGP",
        "Cells_AreaShape_Area",
    ):
        assert column in m.features
    assert {
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Site",
        "Metadata_ObjectNumber",
        "Metadata_Nuclei_Location_Center_X",
    } <= set(m.metadata)
    assert set(table.Metadata_Well) == {"A01", "A02"}  # the blank field gave no rows
    # cells are bigger than their nuclei, which hold the DNA
    assert (table.Cells_AreaShape_Area > table.Nuclei_AreaShape_Area).all()
    assert (
        table.Nuclei_Intensity_MeanIntensity_DNA > table.Cytoplasm_Intensity_MeanIntensity_DNA
    ).all()
    qc = pd.read_csv(out / "_field_qc.csv")
    assert len(qc) == 3
    blank = qc[qc.Metadata_Well == "B01"].iloc[0]
    assert blank.Count_Cells == 0 and bool(blank.blank) and "blank" in blank.note
    counts = table.groupby("Metadata_Well").size()
    for _, row in qc[qc.Count_Cells > 0].iterrows():
        assert counts[row.Metadata_Well] == row.Count_Cells
    assert m.extra["field_qc"]["blank_fields"] == 1
    assert (out / "_qc_field.png").stat().st_size > 1000


def test_blocks_across_plates_write_one_plate_per_part(tmp_path):
    """12 fields of 2 plates in guided blocks: every field's cells, never two plates a part."""
    import pyarrow.parquet as pq

    from raymmi.run import work_blocks

    load = _generate(tmp_path / "gen", plates=2, wells=3, sites=2, size=192)
    assert len(work_blocks(12, 2)) < 12  # blocks of several fields, some spanning the plates
    out = tmp_path / "cells"
    argv = ["ingest", "images", str(load), "--out", str(out), "--nuclei-channel", "DNA"]
    assert main([*argv, "--cell-channel", "AGP", *FAST]) == 0
    m = open_shard_set(str(out)).manifest
    paths = [f.path for f in m.files]
    assert len(paths) == len(set(paths))
    for entry in m.files:
        plates = set(
            pq.read_table(out / entry.path, columns=["Metadata_Plate"]).column(0).to_pylist()
        )
        assert plates == {entry.plate}
    table = open_shard_set(str(out)).read_table().to_pandas()
    qc = pd.read_csv(out / "_field_qc.csv")
    assert len(qc) == 12 and m.num_rows == len(table) == qc.Count_Cells.sum() > 0
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    counts = table.astype({"Metadata_Site": str}).groupby(keys).size()
    for row in qc[qc.Count_Cells > 0].astype({"Metadata_Site": str}).itertuples():
        assert (
            counts[(row.Metadata_Plate, row.Metadata_Well, row.Metadata_Site)] == row.Count_Cells
        )
    # object numbers restart in every field, as CellProfiler numbers them
    assert (table.groupby(keys).Metadata_ObjectNumber.min() == 1).all()


def test_workers_bounds_the_fields_measured_at_once(tmp_path):
    """--workers 1 on 2 CPUs: its map tasks never overlap (none queued ahead runs beside)."""
    import itertools
    import time

    import ray

    load = _generate(tmp_path / "gen", wells=3, sites=2, size=160)
    out = tmp_path / "cells"
    argv = ["ingest", "images", str(load), "--out", str(out), "--nuclei-channel", "DNA"]
    start = time.time()
    assert main([*argv, "--workers", "1", *FAST]) == 0
    name = "map_operator._map_task"
    for _ in range(40):  # task events reach the GCS about once a second
        spans = sorted(
            (e["ts"], e["ts"] + e["dur"])
            for e in ray.timeline()
            if e.get("ph") == "X" and name in e["name"] and e["ts"] / 1e6 >= start
        )
        if len(spans) >= 3:  # work_blocks(6, 1): 3, 2, 1
            break
        time.sleep(0.25)
    assert len(spans) == 3
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans))


@pytest.mark.slow
def test_chain_generate_aggregate_normalize_evaluate(tmp_path):
    """Generated fields -> ingest images --aggregate median -> normalize -> evaluate."""
    from raymmi.run import evaluate_plates

    load = _generate(tmp_path / "gen", plates=2, wells=8, sites=1, size=224)
    wells = tmp_path / "wells"
    argv = [
        "ingest",
        "images",
        str(load),
        "--out",
        str(wells),
        "--nuclei-channel",
        "DNA",
        "--cell-channel",
        "AGP",
        "--aggregate",
        "median",
        "--illum",
        "plate",
        "--negcon",
        "Metadata_Treatment == 'DMSO'",
    ]
    assert main([*argv, *FAST]) == 0
    table = open_shard_set(str(wells)).read_table().to_pandas()
    assert len(table) == 16 and table.Metadata_Object_Count.min() > 0
    assert table.Metadata_is_negcon.sum() == 4
    assert "Metadata_Site" not in table.columns
    # the well rows are written together: one part per plate, not one per well
    assert sorted(f.plate for f in open_shard_set(str(wells)).manifest.files) == sorted(
        set(table.Metadata_Plate)
    )
    # treated wells were drawn with 1.35x nuclei: the profiles carry it
    treated = table[~table.Metadata_is_negcon].Nuclei_AreaShape_Area.median()
    control = table[table.Metadata_is_negcon].Nuclei_AreaShape_Area.median()
    assert 1.15 < treated / control < 1.6
    norm = tmp_path / "norm"
    assert (
        main(
            [
                "normalize",
                str(wells),
                "--out",
                str(norm),
                "--method",
                "standardize",
                "--reference",
                "negcon",
                "--no-track",
                "--num-cpus",
                "2",
            ]
        )
        == 0
    )
    normalized = open_shard_set(str(norm)).read_table().to_pandas()
    dmso = normalized[normalized.Metadata_is_negcon]
    assert abs(float(dmso.Nuclei_AreaShape_Area.mean())) < 1e-4
    report = evaluate_plates(
        [str(wells), str(norm)],
        out=str(tmp_path / "eval"),
        label_key="Metadata_Treatment",
        sample=100,
    )
    assert len(report) == 2


def _bad(tmp_path, capsys, load: Path, *extra: str) -> str:
    out = tmp_path / "out"
    argv = ["ingest", "images", str(load), "--out", str(out), "--nuclei-channel", "DNA", *extra]
    assert main([*argv, *FAST]) == 2
    assert not out.exists()
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("raymmi: error: ")
    return err[-1]


def test_missing_file_names_row_and_path(fields, tmp_path, capsys):
    rows = _rows(fields)
    rows[1]["FileName_OrigAGP"] = "nope.tiff"
    load = fields.parent / "missing.csv"
    _write(load, rows)
    msg = _bad(tmp_path, capsys, load)
    assert "row 2" in msg and "nope.tiff" in msg


def test_unknown_nuclei_channel_lists_channels(fields, tmp_path, capsys):
    msg = _bad(tmp_path, capsys, fields, "--cell-channel", "Actin")
    assert "'Actin'" in msg and "['DNA', 'AGP', 'RNA']" in msg


def test_empty_csv(tmp_path, capsys):
    load = tmp_path / "empty.csv"
    load.write_text("")
    assert "empty" in _bad(tmp_path, capsys, load)


def test_corrupt_tiff_found_in_a_worker(fields, tmp_path, capsys):
    rows = _rows(fields)
    bad = fields.parent / "images" / "corrupt.tiff"
    bad.write_bytes(b"not a tiff at all")
    rows[0]["FileName_OrigRNA"] = "corrupt.tiff"
    rows[0]["PathName_OrigRNA"] = "images"
    load = fields.parent / "corrupt.csv"
    _write(load, rows)
    msg = _bad(tmp_path, capsys, load)
    assert "row 1" in msg and "not a readable TIFF" in msg


def test_generate_refuses_existing(tmp_path, capsys):
    (tmp_path / "gen").mkdir()
    argv = ["generate", "images", "--out", str(tmp_path / "gen"), "--no-track"]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_embed_random_weights_through_actor_pool(fields, tmp_path):
    out = tmp_path / "emb"
    argv = [
        "ingest",
        "images",
        str(fields),
        "--out",
        str(out),
        "--nuclei-channel",
        "DNA",
        "--cell-channel",
        "AGP",
        "--embed",
        "cnn-small",
        "--weights",
        "random",
        "--embed-only",
        "--crop-size",
        "32",
    ]
    assert main([*argv, *FAST]) == 0
    table = open_shard_set(str(out)).read_table().to_pandas()
    dims = [c for c in table.columns if c.startswith("Embedding_")]
    assert len(dims) == 128 and not any(c.startswith("Nuclei_") for c in table.columns)
    assert len(table) > 5 and np.isfinite(table[dims].to_numpy()).all()


@pytest.mark.skipif(not imports("torchvision"), reason="torchvision does not import here")
def test_embed_torchvision_architecture_through_the_stage(fields, tmp_path):
    out = tmp_path / "emb"
    argv = ["ingest", "images", str(fields), "--out", str(out), "--nuclei-channel", "DNA"]
    argv += ["--embed", "torchvision:resnet18", "--weights", "random", "--crop-size", "32"]
    assert main([*argv, *FAST]) == 0
    table = open_shard_set(str(out)).read_table().to_pandas()
    dims = [c for c in table.columns if c.startswith("Embedding_")]
    assert len(dims) == 512 and "Nuclei_AreaShape_Area" in table.columns
    assert np.isfinite(table[dims].to_numpy()).all()


def test_embed_unknown_or_unavailable_architecture(fields, tmp_path, capsys):
    msg = _bad(tmp_path, capsys, fields, "--embed", "resnet18", "--weights", "random")
    assert "torchvision:<name> or timm:<name>" in msg
    if not imports("timm"):
        msg = _bad(tmp_path, capsys, fields, "--embed", "timm:resnet18", "--weights", "random")
        assert "needs timm" in msg and "pip install torch==2.14.1" in msg


def test_embed_bad_weights(fields, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"junk")
    msg = _bad(tmp_path, capsys, fields, "--embed", "cnn-small", "--weights", str(weights))
    assert "is not a cnn-small state_dict" in msg
