"""`raymmi ingest plates` and `raymmi export` end to end on the session's Ray."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from raymmi.cli import main
from raymmi.io import open_shard_set

JUMP = "cellpainting/jump_8plates_3features.parquet"
LINCS = "cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz"
KEYS = ["Metadata_Plate", "Metadata_Well"]

pytestmark = pytest.mark.usefixtures("ray_session")


def _run(*argv: str) -> int:
    return main([*argv, "--num-cpus", "2"])


def _same_values(source: pd.DataFrame, exported: pd.DataFrame, features: list[str]) -> None:
    left = source.sort_values(KEYS).reset_index(drop=True)
    right = exported.sort_values(KEYS).reset_index(drop=True)
    assert len(left) == len(right)
    assert (left[KEYS].to_numpy() == right[KEYS].to_numpy()).all()
    for f in features:
        # Features are stored as float32 (ARCHITECTURE "Data contract"): export gives back the
        # stored bits exactly, i.e. the input rounded once to float32.
        expected = left[f].to_numpy(dtype=np.float64).astype(np.float32)
        got = right[f].to_numpy(dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=f)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_jump_round_trip(tmp_path, suffix):
    src = shared_file(JUMP)
    out = tmp_path / "jump"
    assert _run("ingest", "plates", str(src), "--out", str(out)) == 0
    shard_set = open_shard_set(str(out))
    m = shard_set.manifest
    assert m.num_rows == 3070 and len(m.plates) == 8
    assert all(f.path.startswith(f"plate={f.plate}/") for f in m.files)
    assert m.producer["mlflow_run_id"]
    assert shard_set.verify() == []
    exported = tmp_path / f"jump{suffix}"
    assert _run("export", str(out), "--out", str(exported)) == 0
    back = pd.read_parquet(exported) if suffix == ".parquet" else pd.read_csv(exported)
    source = pd.read_parquet(src)
    _same_values(source, back, list(m.features))
    assert back["Metadata_is_negcon"].sum() == source["Metadata_is_negcon"].sum()


def test_lincs_round_trip_with_negcon_query(tmp_path):
    src = shared_file(LINCS)
    out = tmp_path / "lincs"
    query = "Metadata_broad_sample == 'DMSO'"
    assert _run("ingest", "plates", str(src), "--out", str(out), "--negcon", query) == 0
    m = open_shard_set(str(out)).manifest
    assert len(m.features) == 454 and m.extra["negcon_query"] == query
    assert _run("export", str(out), "--out", str(tmp_path / "l.csv.gz")) == 0
    back = pd.read_csv(tmp_path / "l.csv.gz")
    source = pd.read_csv(src)
    _same_values(source, back, list(m.features))
    assert back["Metadata_is_negcon"].sum() == 24


def test_several_sources_one_plate_each_file(tmp_path):
    src = pd.read_parquet(shared_file(JUMP))
    plates = sorted(src["Metadata_Plate"].unique())
    # the same plate split over two sources, and a CSV next to a Parquet file
    shared_plate = src["Metadata_Plate"] == plates[4]
    first_half = shared_plate & (src["Metadata_Well"] < "H")
    in_a = src["Metadata_Plate"].isin(plates[:4]) | first_half
    a, b = src[in_a], src[~in_a]
    a.to_parquet(tmp_path / "a.parquet")
    b.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out"
    assert (
        _run(
            "ingest",
            "plates",
            str(tmp_path / "a.parquet"),
            str(tmp_path / "b.csv"),
            "--out",
            str(out),
        )
        == 0
    )
    m = open_shard_set(str(out)).manifest
    assert m.num_rows == len(a) + len(b)
    assert sum(f.plate == plates[4] for f in m.files) == 2


def _table(tmp_path, frame, name="t.csv"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def _good():
    return pd.DataFrame(
        {
            "Metadata_Plate": ["P1", "P1", "P2", "P2"],
            "Metadata_Well": ["A01", "A02", "A01", "A02"],
            "Metadata_Compound": ["DMSO", "C1", "DMSO", "C2"],
            "f1": [1.0, 2.0, 3.0, 4.0],
            "f2": [0.5, 0.25, 0.125, 1.0],
        }
    )


BAD_INPUTS = {
    "no plate": (lambda f: f.drop(columns="Metadata_Plate"), [], "no Metadata_Plate column"),
    "no features": (lambda f: f.drop(columns=["f1", "f2"]), [], "no feature columns"),
    "text feature": (lambda f: f.assign(f2=["a", "b", "c", "d"]), [], r"\['f2'\] are not numeric"),
    "nan": (
        lambda f: f.assign(f1=[np.nan, 1, np.inf, 2]),
        [],
        "2 NaN/inf feature values.*f1: 2.*--on-nan",
    ),
    "duplicates": (lambda f: f.assign(Metadata_Well="A01"), [], "duplicate.*'P1', 'A01'"),
    "bad query": (lambda f: f, ["--negcon", "Metadata_Compound =="], "does not parse.*allowed:"),
    "query misses plate": (
        lambda f: f.assign(Metadata_Compound=["DMSO", "C1", "C3", "C2"]),
        ["--negcon", "Metadata_Compound == 'DMSO'"],
        r"matches no row on 1 plate\(s\): \['P2'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, case):
    change, extra, message = BAD_INPUTS[case]
    src = _table(tmp_path, change(_good()))
    out = tmp_path / "out"
    assert _run("ingest", "plates", src, "--out", str(out), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("raymmi: error:") for line in err)
    import re

    assert re.search(message, "\n".join(err)), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_nan_policy_flags(tmp_path):
    src = _table(tmp_path, _good().assign(f1=[np.nan, 1, 2, 3]))
    assert (
        _run("ingest", "plates", src, "--out", str(tmp_path / "d"), "--on-nan", "drop-rows") == 0
    )
    m = open_shard_set(str(tmp_path / "d")).manifest
    assert m.num_rows == 3 and m.extra["rows_dropped"] == 1
    assert _run("ingest", "plates", src, "--out", str(tmp_path / "k"), "--on-nan", "keep") == 0
    assert open_shard_set(str(tmp_path / "k")).manifest.num_rows == 4


def test_existing_output_refused_then_overwritten(tmp_path, capsys):
    src = _table(tmp_path, _good())
    out = tmp_path / "out"
    assert _run("ingest", "plates", src, "--out", str(out)) == 0
    assert _run("ingest", "plates", src, "--out", str(out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert _run("ingest", "plates", src, "--out", str(out), "--overwrite") == 0


def test_corrupt_and_unknown_inputs(tmp_path, capsys):
    good = _table(tmp_path, _good(), "g.parquet")
    data = open(good, "rb").read()
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    gz = tmp_path / "trunc.csv.gz"
    gz.write_bytes(gzip.compress(_good().to_csv(index=False).encode())[:-20])
    (tmp_path / "x.xlsx").write_text("x")
    for src, message in [
        (truncated, "cannot be read as a table"),
        (gz, "cannot be read as a table"),
        (tmp_path / "x.xlsx", "unknown file type"),
    ]:
        assert _run("ingest", "plates", str(src), "--out", str(tmp_path / "o")) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_export_refuses_non_shard_set(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert _run("export", str(tmp_path / "raw"), "--out", str(tmp_path / "x.csv")) == 2
    assert "has no _manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("aggregate", [None, "median"])
def test_cellprofiler_folder_through_ray(tmp_path, aggregate):
    from raymmi.io import _cellprofiler as cp

    root = shared_file("cellpainting/cellprofiler_BR00121431")
    out = tmp_path / "cp"
    extra = ["--aggregate", aggregate] if aggregate else []
    assert _run("ingest", "plates", str(root), "--out", str(out), *extra) == 0
    shard_set = open_shard_set(str(out))
    got = shard_set.read_table().to_pandas()
    direct = pd.concat([cp.read_cellprofiler_site(s) for s in cp.find_sites(root)])
    if aggregate:
        direct = cp.aggregate_to_wells(direct, how=aggregate)
    assert len(got) == len(direct) == (2 if aggregate else 125)
    features = list(shard_set.manifest.features)
    assert len(features) == 5625
    got = got.sort_values(KEYS, kind="stable").reset_index(drop=True)
    direct = direct.sort_values(KEYS, kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(
        got[features].to_numpy(np.float32), direct[features].to_numpy(np.float32)
    )


def test_duplicates_across_sources_are_found(tmp_path, capsys):
    good = _good()
    first = _table(tmp_path, good, "a.csv")
    second = _table(tmp_path, good[good["Metadata_Plate"] == "P2"], "b.parquet")
    out = tmp_path / "out"
    assert _run("ingest", "plates", first, second, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "plate 'P2': 2 duplicate" in err and "('P2', 'A01')" in err
    assert not out.exists()
