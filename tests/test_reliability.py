"""Issue 13: nothing lost under --overwrite, no code from a query string, manifests verified on
read, one writer per destination, crash leftovers recovered, clean errors, early checks.

Pure tests (no Ray): ``ray.init`` is replaced by a function that fails the test, so every CLI
case here also proves its check runs before Ray starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raymmi.cli import main
from raymmi.io import (
    ShardSetWriter,
    open_part,
    open_shard_set,
    read_part,
    write_part,
)
from raymmi.io._dest import _proc_start, check_out_overlap, claim_output, lock_path, work_dir
from raymmi.query import evaluate_query, parse_query
from raymmi.schema import FileEntry, Manifest, RaymmiError

EXPLOITS = [
    '(@pd.io.common.os.system("touch /tmp/pwned") == 0) & Metadata_is_negcon',
    'Metadata_Plate.to_csv("/tmp/f") != Metadata_is_negcon',
]


@pytest.fixture
def no_ray(monkeypatch):
    """Make starting Ray fail the test: the checks under test must come before it."""
    import ray

    import raymmi.run._runtime as runtime

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called before the check")

    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.ray, "init", refuse)
    monkeypatch.setattr(ray, "init", refuse)


def _cli(capsys, argv):
    code = main([*argv, "--no-track"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _frame(n_plates=2, wells=8):
    rows = [
        {
            "Metadata_Plate": f"P{p}",
            "Metadata_Well": f"A{w:02d}",
            "Metadata_pert_type": "control" if w < 2 else "trt",
            "Metadata_is_negcon": w < 2,
            "Metadata_dose": float(w),
            "Cells_F0": float(w * (p + 1)),
        }
        for p in range(n_plates)
        for w in range(wells)
    ]
    return pd.DataFrame(rows)


def _shard_set(root: Path, name="set") -> Path:
    """A small committed plates-like set with two parts (no Ray)."""
    out = root / name
    table = pa.Table.from_pandas(_frame(), preserve_index=False)
    with ShardSetWriter(str(out)) as writer:
        entries = (
            write_part(writer.staging, "plate=P0/part-0.parquet", table.slice(0, 8), plate="P0"),
            write_part(writer.staging, "plate=P1/part-0.parquet", table.slice(8, 8), plate="P1"),
        )
        writer.commit(
            Manifest(
                kind="plates",
                files=entries,
                metadata=tuple(c for c in table.column_names if c.startswith("Metadata_")),
                features=("Cells_F0",),
            )
        )
    return out


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# defect 2: queries are parsed into a grammar, never run
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", EXPLOITS)
def test_exploit_queries_are_refused_and_run_nothing(query, tmp_path):
    Path("/tmp/pwned").unlink(missing_ok=True)
    frame = _frame()
    with pytest.raises(RaymmiError, match="allowed: column names"):
        evaluate_query(query, frame, what="--negcon query")
    assert not Path("/tmp/pwned").exists() and not Path("/tmp/f").exists()


@pytest.mark.parametrize(
    "query",
    [
        "__import__('os').system('true')",
        "Metadata_Plate[0] == 'P'",
        "Metadata_Plate.str.len() > 1",
        "Metadata_Plate.__class__ == 1",
        "(lambda: 1)() == 1",
        "Metadata_dose ** 2 > 1",
        "Metadata_Plate in Metadata_Well",
        "_private == 1",
        "Metadata_Plate.isin(Metadata_Well)",
        "x if y else z",
    ],
)
def test_forms_outside_the_grammar_are_refused(query):
    with pytest.raises(RaymmiError, match=r"not allowed|does not parse"):
        parse_query(query)


@pytest.mark.parametrize(
    "query",
    [
        "Metadata_is_negcon == True",
        'Metadata_pert_type == "control"',
        'Metadata_Plate in ["P0", "B"]',
        "Metadata_Plate not in ['P0']",
        "Metadata_Plate.isin(['P1'])",
        "Metadata_is_negcon & (Metadata_dose > 0)",
        "~Metadata_is_negcon | (Metadata_Plate == 'P1')",
        "not Metadata_is_negcon and Metadata_dose >= 3",
        "1 < Metadata_dose <= 5",
        "Metadata_dose * 2 - 1 > 4",
        "Metadata_dose % 2 == 0",
        "-Metadata_dose < -2",
        "Cells_F0 / 2 != 1",
    ],
)
def test_evaluator_matches_pandas_query_on_benign_queries(query):
    frame = _frame()
    expected = frame.eval(query).to_numpy(dtype=bool)  # the reference, on trusted strings only
    np.testing.assert_array_equal(evaluate_query(query, frame), expected)


def test_bare_boolean_column_and_unknown_column():
    frame = _frame()
    np.testing.assert_array_equal(
        evaluate_query("Metadata_is_negcon", frame), frame["Metadata_is_negcon"].to_numpy()
    )
    with pytest.raises(RaymmiError, match=r"names column\(s\) \['Metadata_Nope'\]"):
        evaluate_query("Metadata_Nope == 1", frame)
    with pytest.raises(RaymmiError, match="one True/False per row"):
        evaluate_query("Metadata_dose + 1", frame)


def test_cli_refuses_exploit_before_ray(tmp_path, capsys, no_ray):
    good = tmp_path / "good.parquet"
    _frame().to_parquet(good)
    for query in EXPLOITS:
        code, line = _cli(
            capsys,
            ["ingest", "plates", str(good), "--out", str(tmp_path / "z"), "--negcon", query],
        )
        assert code == 2 and "allowed:" in line, line
    code, line = _cli(
        capsys,
        ["select", str(tmp_path / "x"), "--out", str(tmp_path / "y"), "--samples", EXPLOITS[1]],
    )
    assert code == 2 and "allowed:" in line
    assert not (tmp_path / "z").exists() and not Path("/tmp/pwned").exists()


# ----------------------------------------------------------------------------------------------
# defects 1, 6, 7: destinations are claimed, locked, recovered, replaced by swap
# ----------------------------------------------------------------------------------------------


def test_out_that_is_contains_or_is_inside_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for out, what in ((data, "is the input"), (data / "sub", "is inside"), (tmp_path, "contains")):
        with pytest.raises(RaymmiError, match=what):
            check_out_overlap(str(out), [str(data)])
    check_out_overlap(str(tmp_path / "other"), [str(data)])
    # relative spellings resolve to the same folder
    with pytest.raises(RaymmiError, match="is the input"):
        check_out_overlap(str(data) + "/./", [str(tmp_path / "x" / ".." / "data")])


def test_train_and_task_refuse_out_equal_to_data_and_keep_it(tmp_path, capsys, no_ray):
    data = _shard_set(tmp_path, "cells")
    before = _tree(data)
    code, line = _cli(
        capsys,
        [
            "train",
            "umint",
            "--data",
            str(data),
            "--out",
            str(data),
            "--overwrite",
            "--workers",
            "64",
        ],
    )
    assert code == 2 and "is the input" in line
    code, line = _cli(
        capsys,
        [
            "task",
            "predict",
            "--data",
            str(data),
            "--out",
            str(data),
            "--overwrite",
            "--train-batches",
            "b0",
            "--test-batches",
            "b1",
        ],
    )
    assert code == 2 and "is the input" in line
    assert _tree(data) == before


def test_failure_after_validation_keeps_the_old_output(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("previous")
    with pytest.raises(RaymmiError, match="late"):
        with claim_output(str(old), overwrite=True, marker="done.txt"):
            staged = work_dir(str(old))
            assert staged != old and staged.name.startswith(".old.tmp-")
            (staged / "partial").write_text("x")
            raise RaymmiError("late failure (e.g. more workers than the cluster has)")
    assert (old / "keep.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no staging, no lock
    with claim_output(str(old), overwrite=True, marker="done.txt") as claim:
        (work_dir(str(old)) / "done.txt").write_text("new")
        claim.commit()
    assert sorted(p.name for p in old.iterdir()) == ["done.txt"]


def test_refused_claim_writes_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RaymmiError, match="is the input"):
        with claim_output(str(target), inputs=[str(tmp_path / "a" / "b" / "out")]):
            pass
    with claim_output(str(target)):
        pass  # nothing staged, nothing committed
    assert not (tmp_path / "a").exists()


def _live_lock(target: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock_path(target).write_text(
        json.dumps(
            {
                "pid": holder.pid,
                "host": socket.gethostname(),
                "proc_start": _proc_start(holder.pid),
                "started": "2026-12-01 10:00:00 UTC",
            }
        )
    )
    return holder


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    target = tmp_path / "out"
    holder = _live_lock(target)
    try:
        started = time.perf_counter()
        with pytest.raises(RaymmiError, match=rf"pid {holder.pid} .*started 2026-12-01 10:00:00"):
            ShardSetWriter(str(target))
        assert time.perf_counter() - started < 2
    finally:
        holder.kill()
        holder.wait()
    assert not target.exists()


def test_two_writers_in_one_process_tree_one_refused(tmp_path):
    target = tmp_path / "out"
    code = (
        "import sys, time; from raymmi.io._shardset import ShardSetWriter\n"
        f"w = ShardSetWriter({str(target)!r}); print('held', flush=True); time.sleep(30)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(RaymmiError, match=rf"being written by another run \(pid {first.pid}"):
            ShardSetWriter(str(target), overwrite=True)
    finally:
        first.kill()
        first.wait()
    # the holder died without releasing: its lock and staging folder are taken over / removed
    with ShardSetWriter(str(target)) as writer:
        assert not [
            p
            for p in tmp_path.iterdir()
            if ".tmp-" in p.name and p.name != Path(writer.staging).name
        ]
        writer.commit(Manifest(kind="plates", files=(), metadata=("Metadata_Plate",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, capsys):
    target = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(target).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
    )
    with claim_output(str(target)):
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
    assert "took over the lock" in capsys.readouterr().err
    assert not lock_path(target).exists()


def test_interrupted_swap_with_a_complete_new_output_is_finished(tmp_path, capsys):
    src = _shard_set(tmp_path, "src")
    out = tmp_path / "out"
    (tmp_path / ".out.old-111111111111").mkdir()
    (tmp_path / ".out.old-111111111111" / "_manifest.json").write_text("old")
    os.rename(src, tmp_path / ".out.tmp-222222222222")  # complete: has its manifest
    (tmp_path / ".out.tmp-333333333333").mkdir()  # a dead, incomplete staging folder
    with claim_output(str(out), exists_ok=True) as claim:
        assert len(claim.recovered) == 3
    err = capsys.readouterr().err
    assert "finished an interrupted --overwrite commit" in err and "staging folder" in err
    assert open_shard_set(str(out)).manifest.kind == "plates"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_swap_without_a_complete_new_output_restores_the_old(tmp_path, capsys):
    _shard_set(tmp_path, "src")
    out = tmp_path / "out"
    os.rename(tmp_path / "src", tmp_path / ".out.old-111111111111")
    (tmp_path / ".out.tmp-222222222222").mkdir()  # staging of the new one, no manifest
    with claim_output(str(out), exists_ok=True):
        pass
    assert "restored" in capsys.readouterr().err
    assert open_shard_set(str(out)).manifest.kind == "plates"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------------------------
# defects 4, 5: manifests verified on read
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["../outside.parquet", "/etc/passwd", "../../../../etc/passwd", "s3://b/x.parquet"]
)
def test_manifest_entries_that_leave_the_set_are_refused(tmp_path, path, capsys):
    shard = _shard_set(tmp_path)
    (tmp_path / "outside.parquet").write_bytes((shard / "plate=P0/part-0.parquet").read_bytes())
    manifest = json.loads((shard / "_manifest.json").read_text())
    manifest["files"][0]["path"] = path
    (shard / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RaymmiError, match="not a path inside the shard set"):
        open_shard_set(str(shard))
    assert main(["inspect", str(shard), "--verify"]) == 2


def _entry(shard: Path) -> FileEntry:
    return open_shard_set(str(shard)).manifest.files[0]


def test_damaged_parts_are_named_with_the_verify_hint(tmp_path):
    shard = _shard_set(tmp_path)
    entry = _entry(shard)
    part = shard / entry.path
    good = part.read_bytes()
    assert read_part(str(shard), entry).num_rows == 8
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    part.write_bytes(bytes(flipped))
    with pytest.raises(
        RaymmiError, match=r"part-0.parquet is damaged \(its checksum.*inspect --verify"
    ):
        open_part(str(shard), entry)
    part.write_bytes(good[: len(good) // 2])
    with pytest.raises(RaymmiError, match=r"is damaged .*bytes, the manifest says"):
        open_part(str(shard), entry)


def test_row_count_and_missing_columns_are_checked_from_the_footer(tmp_path):
    import dataclasses
    import hashlib

    shard = _shard_set(tmp_path)
    entry = _entry(shard)
    data = (shard / entry.path).read_bytes()
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    wrong = dataclasses.replace(entry, rows=entry.rows + 1)
    with pytest.raises(RaymmiError, match="8 rows in its footer, the manifest says 9"):
        open_part(str(shard), wrong)
    with pytest.raises(RaymmiError, match=r"lacks column.*Cells_Missing"):
        read_part(str(shard), entry, require=("Cells_F0", "Cells_Missing"))


def test_truncated_part_with_matching_checksum_is_one_line(tmp_path):
    """A part whose manifest entry was rewritten for truncated bytes: the footer check."""
    import dataclasses
    import hashlib

    shard = _shard_set(tmp_path)
    entry = _entry(shard)
    cut = (shard / entry.path).read_bytes()[:100]
    (shard / entry.path).write_bytes(cut)
    forged = dataclasses.replace(entry, bytes=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    with pytest.raises(RaymmiError, match="not a readable Parquet file"):
        open_part(str(shard), forged)


def test_drop_rows_of_every_row_is_one_line(tmp_path):
    from raymmi.config import IngestPlatesConfig
    from raymmi.io import PlateSplitter, SourceSummary
    from raymmi.run._plates._driver import _check

    table = pa.Table.from_pandas(_frame(), preserve_index=False)
    splitter = PlateSplitter(str(tmp_path), table.schema, part_name="p", keys=["Metadata_Plate"])
    splitter.write(table.slice(0, 0))  # a batch whose every row was dropped
    assert splitter.close() == []
    summary = SourceSummary(source="s.parquet")
    summary.nonfinite_per_column["Cells_F2"] = 16
    summary.rows_dropped = 16
    config = IngestPlatesConfig(sources=("s.parquet",), out="o", on_nan="drop-rows")
    (problem,) = _check([summary], config)
    assert "dropped every row" in problem and "Cells_F2" in problem


# ----------------------------------------------------------------------------------------------
# defects 3, 10: cell ids and counts
# ----------------------------------------------------------------------------------------------


def _h5ad(path, x, ids, dense=False, counts=False):
    import anndata as ad
    import scipy.sparse as sp

    obs = pd.DataFrame({"batch": ["b0"] * len(ids)}, index=pd.Index(ids))
    var = pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])])
    matrix = x if dense else sp.csr_matrix(x)
    adata = ad.AnnData(X=matrix, obs=obs, var=var)
    if counts:
        adata.layers["counts"] = matrix.copy()
    adata.write_h5ad(path)
    return str(path)


def test_repeated_cell_ids_are_refused_before_ray(tmp_path, capsys, no_ray):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    ids = ["a", "b", "c", "a", "b", "c"]
    rna = _h5ad(tmp_path / "rna.h5ad", x, ids)
    # the same order in both files: before, equal id lists skipped the uniqueness check
    for name, rows, order in (("same", x, ids), ("reversed", x[::-1], ids[::-1])):
        adt = _h5ad(tmp_path / f"adt_{name}.h5ad", rows, order, dense=True)
        code, line = _cli(
            capsys, ["ingest", "cells", "--rna", rna, "--adt", adt, "--out", str(tmp_path / "o")]
        )
        assert code == 2 and "repeated cell ids" in line and "obs_names_make_unique" in line
    code, line = _cli(capsys, ["ingest", "cells", "--rna", rna, "--out", str(tmp_path / "o")])
    assert code == 2 and "repeated cell ids" in line  # one modality alone too
    assert not (tmp_path / "o").exists()


def test_modalities_are_paired_by_id(tmp_path):
    from raymmi.io import _cells as h5

    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    ids = [f"c{i}" for i in range(6)]
    rna = h5.open_modality(_h5ad(tmp_path / "rna.h5ad", x, ids), name="rna")
    adt = h5.open_modality(
        _h5ad(tmp_path / "adt.h5ad", x[::-1], ids[::-1], dense=True), name="adt"
    )
    positions = [None, h5.align(h5.read_cell_ids(rna), h5.read_cell_ids(adt), names=("r", "a"))]
    batch = h5.read_cell_chunk([rna, adt], 0, 6, positions=positions, batch_key="batch")
    np.testing.assert_array_equal(batch.modalities["adt"], x)  # row i of ADT is cell c{i}


@pytest.mark.parametrize(
    ("value", "what"), [(-3.0, "1 negative"), (0.5, "0 negative, 1 non-integer")]
)
def test_impossible_counts_are_refused_at_ingest_naming_the_layer(tmp_path, value, what):
    from raymmi.io import _cells as h5
    from raymmi.run._cells._driver import _ingest_chunk

    x = np.ones((5, 3), dtype=np.float32)
    x[2, 1] = value
    path = _h5ad(tmp_path / "rna.h5ad", x, list("abcde"), counts=True)
    rna = h5.open_modality(path, name="rna")
    pattern = rf"read from layers/counts of .*rna.h5ad\) are not raw counts: .*{what}"
    with pytest.raises(RaymmiError, match=pattern):
        _ingest_chunk._function([rna], [None], 0, 5, str(tmp_path / "st"), 0, "batch", True)
    with pytest.warns(UserWarning, match="storing X"):  # a bare X may be normalized: kept
        bare = h5.open_modality(_h5ad(tmp_path / "x.h5ad", x, list("abcde")), name="rna")
    entry, _ = _ingest_chunk._function([bare], [None], 0, 5, str(tmp_path), 0, "batch", True)
    assert entry.rows == 5


# ----------------------------------------------------------------------------------------------
# defects 8, 9: hangs and early checks
# ----------------------------------------------------------------------------------------------


def test_unreachable_address_fails_in_seconds(tmp_path, capsys, no_ray):
    good = tmp_path / "good.parquet"
    _frame().to_parquet(good)
    started = time.perf_counter()
    code, line = _cli(
        capsys,
        ["ingest", "plates", str(good), "--out", str(tmp_path / "o"), "--address", "127.0.0.1:1"],
    )
    assert code == 2 and "'127.0.0.1:1'" in line and "Connection refused" in line
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flag", "value", "text"),
    [("--num-cpus", "0", "--num-cpus 0"), ("--object-store-mb", "1", "80 MiB")],
)
def test_impossible_ray_settings_fail_at_once(tmp_path, capsys, no_ray, flag, value, text):
    good = tmp_path / "good.parquet"
    _frame().to_parquet(good)
    code, line = _cli(
        capsys, ["ingest", "plates", str(good), "--out", str(tmp_path / "o"), flag, value]
    )
    assert code == 2 and text in line


def test_pure_checks_come_before_ray(tmp_path, capsys, no_ray):
    src = _shard_set(tmp_path, "src")
    exists = _shard_set(tmp_path, "exists")
    cases = [
        (["normalize", str(src), "--out", str(exists)], "already exists"),
        (["normalize", str(src), "--out", str(src), "--overwrite"], "is the input"),
        (["normalize", str(src), "--out", str(src / "n")], "is inside the input"),
        (
            ["normalize", str(src), "--out", str(tmp_path / "n"), "--negcon", "a =="],
            "does not parse",
        ),
        (["select", str(src), "--out", str(tmp_path / "s"), "--samples", "x.y"], "not allowed"),
        (["export", str(src), "--out", str(src), "--overwrite"], "is the input"),
        (["preprocess", "cells", str(src), "--out", str(src / "p")], "is inside the input"),
    ]
    for argv, text in cases:
        code, line = _cli(capsys, argv)
        assert code == 2 and text in line, (argv, line)


# ----------------------------------------------------------------------------------------------
# defect 11: a local Ray listens on loopback only
# ----------------------------------------------------------------------------------------------


def test_local_ray_listens_on_loopback_only(ray_session):
    from raymmi.testing import descendants, listening_sockets

    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc")
    ray_session.get(ray_session.remote(lambda: 1).remote())  # a worker is up
    listening = listening_sockets([os.getpid(), *descendants(os.getpid())])
    names = {name for _, name, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    exposed = [x for x in listening if not x[2].startswith(("127.0.0.1:", "::1:"))]
    assert not exposed, exposed


def test_a_second_driver_joins_the_loopback_ray(ray_session):
    """Another process given this Ray's address (as `RAY_ADDRESS`) connects and runs a task.

    Before: the joining driver resolved 127.0.0.1 to the node's IP, where a loopback-only Ray
    does not listen, and retried for minutes (a killed search's driver never started).
    """
    address = ray_session.get_runtime_context().gcs_address
    code = (
        "from raymmi.config import RayConfig; from raymmi.run import init_ray; import ray\n"
        "init_ray(RayConfig(address=%r))\n"
        "print(ray.get(ray.remote(lambda: 41 + 1).remote()))" % address
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("42"), done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.heavy
def test_train_overwrite_stages_then_swaps(ray_session, tmp_path):
    """A real Ray Train run with --overwrite onto an old folder: staged, then swapped in."""
    import dataclasses

    from raymmi import testing
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.config import OptimConfig, TrackingConfig, TrainConfig, from_dict
    from raymmi.run import generate_cells, preprocess_cells, train

    off = TrackingConfig(enabled=False)
    spec = testing.CellSetSpec(n_cells=300, n_genes=200, n_peaks=300, chunk_size=300, seed=1)
    generate_cells(spec, out=str(tmp_path / "raw"), tracking=off)
    pre = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 5}}})
    preprocess_cells(pre, source=str(tmp_path / "raw"), out=str(tmp_path / "pre"), tracking=off)
    data = tmp_path / "pre"
    before = _tree(data)
    out = tmp_path / "runs" / "ae"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("previous run")
    model = {"modalities": ["rna_hvg"], "hidden": [16], "bottleneck": 4}
    with pytest.raises(RaymmiError, match="is the input"):  # before: the input was deleted
        train(TrainConfig("ae", data=str(data), out=str(data), model=model, overwrite=True))
    with pytest.raises(RaymmiError, match="64"):  # before: the old output was deleted first
        wide = TrainConfig("ae", data=str(data), out=str(out), model=model, workers=64)
        train(dataclasses.replace(wide, overwrite=True), tracking=off)
    assert _tree(data) == before and (out / "keep.txt").exists()
    config = TrainConfig(
        model_name="ae",
        data=str(tmp_path / "pre"),
        out=str(out),
        model=model,
        optim=OptimConfig(epochs=1, batch_size=64),
        workers=1,
        overwrite=True,
    )
    train(config, tracking=off)
    assert not (out / "keep.txt").exists()
    assert (out / "metrics.json").exists()
    assert open_shard_set(str(out / "embeddings")).manifest.num_rows == 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["ae"]  # no staging, no lock
