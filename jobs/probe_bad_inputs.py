"""Probe the CLI with bad, damaged and hostile inputs; print one table row per case.

Each case runs ``raymmi.cli.main(argv)`` in this process (one local Ray for all of them) and
records the exit code, the one-line message on stderr (or "TRACEBACK" when an exception
escaped), and whether anything was written to the case's destination (the destination and its
hidden ``.<name>.*`` siblings are compared before and after). The cases that must fail before Ray
starts (``--address``, ``--num-cpus``) run first, while Ray is still down, and are timed.

    python jobs/probe_bad_inputs.py [--work DIR] [--markdown]

Exits 1 if any case leaks a traceback, exits 0 on a bad input, writes to its destination, or
runs the exploit's payload.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

PWNED = Path("/tmp/pwned")


def snapshot(dest: Path) -> dict[str, str]:
    """Names, sizes and content hashes of ``dest`` and its hidden siblings."""
    out: dict[str, str] = {}
    if not dest.parent.exists():
        return out
    for p in sorted(dest.parent.iterdir()):
        if p.name != dest.name and not p.name.startswith(f".{dest.name}."):
            continue
        items = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for q in items:
            out[str(q)] = hashlib.sha256(q.read_bytes()).hexdigest()[:16]
        if p.is_dir() and not items:
            out[str(p)] = "empty dir"
    return out


def run_cli(argv: list[str]) -> tuple[int, str, float]:
    from raymmi.cli import main

    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
        except BaseException:
            traceback.print_exc(file=err)
            code = 1
    seconds = time.perf_counter() - started
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("raymmi: error:", "raymmi: error"))]
    if "Traceback (most recent call last)" in text:
        message = "TRACEBACK: " + (lines[-1] if lines else "")
    elif errors:
        message = errors[-1]
    else:
        usage = [ln for ln in lines if ": error:" in ln]
        message = usage[-1] if usage else (lines[-1] if lines else "")
    return code, message, seconds


class Probe:
    """The table of cases run so far."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[dict] = []

    def case(
        self,
        name: str,
        argv: list[str],
        dest: Path | None,
        *,
        expect: int = 2,
        check: Callable[[], str | None] | None = None,
    ) -> None:
        before = snapshot(dest) if dest is not None else {}
        code, message, seconds = run_cli(argv)
        after = snapshot(dest) if dest is not None else {}
        written = "-" if dest is None else ("nothing written" if before == after else "WRITTEN")
        extra = check() if check is not None else None
        ok = code == expect and written != "WRITTEN" and not message.startswith("TRACEBACK")
        if extra:
            ok = False
            message = f"{message} [{extra}]"
        self.rows.append(
            {
                "case": name,
                "exit": code,
                "seconds": round(seconds, 1),
                "destination": written,
                "ok": "ok" if ok else "FAIL",
                "message": message.removeprefix("raymmi: error: ")[:220],
            }
        )
        print(f"[{len(self.rows):2d}] {name}: exit {code} {written} {seconds:.1f}s", flush=True)


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


def plates_frame(n_plates: int = 2, wells: int = 16, features: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_plates):
        for w in range(wells):
            rows.append(
                {
                    "Metadata_Plate": f"P{p}",
                    "Metadata_Well": f"A{w:02d}",
                    "Metadata_pert_type": "control" if w < 4 else "trt",
                    "Metadata_is_negcon": w < 4,
                }
            )
    frame = pd.DataFrame(rows)
    for j in range(features):
        frame[f"Cells_F{j}"] = rng.normal(size=len(frame))
    return frame


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def first_part(shard: Path) -> Path:
    manifest = json.loads((shard / "_manifest.json").read_text())
    return shard / manifest["files"][0]["path"]


def edit_manifest(shard: Path, fn: Callable[[dict], None]) -> None:
    path = shard / "_manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def h5ad(
    path: Path, x: np.ndarray, ids: list[str], *, dense: bool = False, counts: bool = False
) -> Path:
    import anndata as ad
    import scipy.sparse as sp

    obs = pd.DataFrame({"batch": ["b0"] * len(ids)}, index=pd.Index(ids))
    var = pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])])
    adata = ad.AnnData(
        X=x.astype(np.float32) if dense else sp.csr_matrix(x, dtype=np.float32), obs=obs, var=var
    )
    if counts:
        adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(path)
    return path


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="scratch folder (default: a new temporary one)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--skip-hangs",
        action="store_true",
        help="skip the two cases that hang on code from before issue 13 (to probe such code)",
    )
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="raymmi-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.pop("RAY_ADDRESS", None)
    PWNED.unlink(missing_ok=True)
    probe = Probe(work)
    w = work
    frame = plates_frame()
    good = w / "good.parquet"
    frame.to_parquet(good)
    nt = ["--no-track"]

    # -- before Ray starts: must fail in seconds ------------------------------------------------
    if args.skip_hangs:  # code from before issue 13 waits forever on these two
        probe.rows += [
            {
                "case": c,
                "exit": "-",
                "seconds": 0,
                "destination": "-",
                "ok": "FAIL",
                "message": "not run (--skip-hangs)",
            }
            for c in ("--address 127.0.0.1:1 (nothing listens)", "--num-cpus 0")
        ]
    else:
        probe.case(
            "--address 127.0.0.1:1 (nothing listens)",
            [
                "ingest",
                "plates",
                str(good),
                "--out",
                str(w / "o_addr"),
                "--address",
                "127.0.0.1:1",
                *nt,
            ],
            w / "o_addr",
        )
        probe.case(
            "--num-cpus 0",
            ["ingest", "plates", str(good), "--out", str(w / "o_cpu"), "--num-cpus", "0", *nt],
            w / "o_cpu",
        )
    probe.case(
        "--object-store-mb 1",
        ["ingest", "plates", str(good), "--out", str(w / "o_os"), "--object-store-mb", "1", *nt],
        w / "o_os",
    )
    probe.case(
        "exploit: --negcon '@pd...os.system' (touch /tmp/pwned)",
        [
            "ingest",
            "plates",
            str(good),
            "--out",
            str(w / "o_x1"),
            "--negcon",
            '(@pd.io.common.os.system("touch /tmp/pwned") == 0) & Metadata_is_negcon',
            *nt,
        ],
        w / "o_x1",
        check=lambda: "PAYLOAD RAN" if PWNED.exists() else None,
    )
    leak = w / "leak.csv"
    probe.case(
        "exploit: --negcon 'Metadata_Plate.to_csv(...)'",
        [
            "ingest",
            "plates",
            str(good),
            "--out",
            str(w / "o_x2"),
            "--negcon",
            f'Metadata_Plate.to_csv("{leak}") != Metadata_is_negcon',
            *nt,
        ],
        w / "o_x2",
        check=lambda: "FILE WRITTEN" if leak.exists() else None,
    )
    probe.case(
        "--negcon that does not parse",
        [
            "ingest",
            "plates",
            str(good),
            "--out",
            str(w / "o_q"),
            "--negcon",
            "Metadata_pert_type ==",
            *nt,
        ],
        w / "o_q",
    )
    probe.case(
        "ingest: missing source file",
        ["ingest", "plates", str(w / "nope.parquet"), "--out", str(w / "o_m"), *nt],
        w / "o_m",
    )
    probe.case(
        "ingest: --out is the input file",
        ["ingest", "plates", str(good), "--out", str(good), "--overwrite", *nt],
        good,
    )
    probe.case(
        "ingest: --batch-rows 0",
        ["ingest", "plates", str(good), "--out", str(w / "o_b"), "--batch-rows", "0", *nt],
        w / "o_b",
    )
    probe.case(
        "normalize: input does not exist",
        ["normalize", str(w / "none"), "--out", str(w / "o_n"), *nt],
        w / "o_n",
    )
    probe.case(
        "ingest cells: --atac and --adt",
        [
            "ingest",
            "cells",
            "--rna",
            "a.h5ad",
            "--atac",
            "b.h5ad",
            "--adt",
            "c.h5ad",
            "--out",
            str(w / "o_c"),
            *nt,
        ],
        w / "o_c",
    )

    # -- ingest plates (Ray starts here, retried: on a loaded machine Ray's 30 s wait for its
    # raylet can run out) -------------------------------------------------------------------------
    import ray

    from raymmi.config import RayConfig
    from raymmi.run import init_ray

    for attempt in range(3):
        try:
            init_ray(RayConfig(num_cpus=2, object_store_mb=512))
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    set_a = w / "set_a"
    code, msg, _ = run_cli(["ingest", "plates", str(good), "--out", str(set_a), *nt])
    assert code == 0, msg
    f = frame.drop(columns=["Metadata_Plate"])
    f.to_parquet(w / "noplate.parquet")
    probe.case(
        "ingest: no Metadata_Plate column",
        ["ingest", "plates", str(w / "noplate.parquet"), "--out", str(w / "o1"), *nt],
        w / "o1",
    )
    frame[[c for c in frame.columns if c.startswith("Metadata_")]].to_parquet(w / "nofeat.parquet")
    probe.case(
        "ingest: no feature columns",
        ["ingest", "plates", str(w / "nofeat.parquet"), "--out", str(w / "o2"), *nt],
        w / "o2",
    )
    f = frame.copy()
    f["Cells_F1"] = f["Cells_F1"].astype(str) + "x"
    f.to_parquet(w / "text.parquet")
    probe.case(
        "ingest: non-numeric feature",
        ["ingest", "plates", str(w / "text.parquet"), "--out", str(w / "o3"), *nt],
        w / "o3",
    )
    f = frame.copy()
    f.loc[3, "Cells_F0"] = np.nan
    f.to_parquet(w / "nan.parquet")
    probe.case(
        "ingest: NaN under --on-nan fail",
        ["ingest", "plates", str(w / "nan.parquet"), "--out", str(w / "o4"), *nt],
        w / "o4",
    )
    f = frame.copy()
    f["Cells_F2"] = np.nan
    f.to_parquet(w / "allnan.parquet")
    probe.case(
        "ingest: --on-nan drop-rows, a feature all NaN",
        [
            "ingest",
            "plates",
            str(w / "allnan.parquet"),
            "--out",
            str(w / "o5"),
            "--on-nan",
            "drop-rows",
            *nt,
        ],
        w / "o5",
    )
    f = pd.concat([frame, frame.iloc[:2]])
    f.to_parquet(w / "dup.parquet")
    probe.case(
        "ingest: duplicate (plate, well) keys",
        ["ingest", "plates", str(w / "dup.parquet"), "--out", str(w / "o6"), *nt],
        w / "o6",
    )
    probe.case(
        "ingest: --negcon matching no row of a plate",
        [
            "ingest",
            "plates",
            str(good),
            "--out",
            str(w / "o7"),
            "--negcon",
            "Metadata_Plate == 'P0'",
            *nt,
        ],
        w / "o7",
    )
    probe.case(
        "ingest: --negcon naming an unknown column",
        [
            "ingest",
            "plates",
            str(good),
            "--out",
            str(w / "o8"),
            "--negcon",
            "Metadata_Nope == 1",
            *nt,
        ],
        w / "o8",
    )
    probe.case(
        "ingest: --out exists, no --overwrite",
        ["ingest", "plates", str(good), "--out", str(set_a), *nt],
        set_a,
    )
    trunc = w / "trunc.parquet"
    shutil.copy(good, trunc)
    truncate(trunc)
    probe.case(
        "ingest: truncated Parquet source",
        ["ingest", "plates", str(trunc), "--out", str(w / "o9"), *nt],
        w / "o9",
    )
    frame.to_csv(w / "t.csv", index=False)
    text = (w / "t.csv").read_text()
    (w / "trunc.csv").write_text(text[: len(text) // 2 + 7])
    probe.case(
        "ingest: truncated CSV source",
        ["ingest", "plates", str(w / "trunc.csv"), "--out", str(w / "o10"), *nt],
        w / "o10",
    )
    (w / "table.txt").write_text("a b c\n")
    probe.case(
        "ingest: unknown file type",
        ["ingest", "plates", str(w / "table.txt"), "--out", str(w / "o11"), *nt],
        w / "o11",
    )
    probe.case(
        "ingest: --out inside the input folder",
        ["ingest", "plates", str(set_a), "--out", str(set_a / "sub"), *nt],
        set_a,
    )

    # -- normalize / select / export / inspect on damaged sets ----------------------------------
    (w / "nomanifest").mkdir()
    probe.case(
        "normalize: folder without manifest",
        ["normalize", str(w / "nomanifest"), "--out", str(w / "n1"), *nt],
        w / "n1",
    )
    bad_json = copy(set_a, w / "badjson")
    (bad_json / "_manifest.json").write_text("{not json")
    probe.case(
        "normalize: manifest not JSON",
        ["normalize", str(bad_json), "--out", str(w / "n2"), *nt],
        w / "n2",
    )
    probe.case(
        "normalize: --out is the input, --overwrite",
        ["normalize", str(set_a), "--out", str(set_a), "--overwrite", *nt],
        set_a,
    )
    probe.case(
        "normalize: --out inside the input",
        ["normalize", str(set_a), "--out", str(set_a / "norm"), *nt],
        set_a,
    )
    probe.case(
        "normalize: unknown --method",
        ["normalize", str(set_a), "--out", str(w / "n3"), "--method", "zscore", *nt],
        w / "n3",
    )
    probe.case(
        "normalize: exploit in --negcon",
        [
            "normalize",
            str(set_a),
            "--out",
            str(w / "n4"),
            "--negcon",
            "Metadata_Plate.to_csv('/tmp/f2') != 1",
            *nt,
        ],
        w / "n4",
    )
    probe.case(
        "normalize: --reference batch, --batch-key missing",
        [
            "normalize",
            str(set_a),
            "--out",
            str(w / "n5"),
            "--reference",
            "batch",
            "--batch-key",
            "Metadata_Nope",
            *nt,
        ],
        w / "n5",
    )
    probe.case(
        "normalize: a plate with no negcon rows",
        [
            "normalize",
            str(set_a),
            "--out",
            str(w / "n6"),
            "--negcon",
            "(Metadata_Plate == 'P0') & Metadata_is_negcon",
            *nt,
        ],
        w / "n6",
    )
    cells_set = w / "cells"
    code, msg, _ = run_cli(
        [
            "generate",
            "cells",
            "--out",
            str(cells_set),
            "--kind",
            "cite",
            "--cells",
            "120",
            "--genes",
            "30",
            *nt,
        ]
    )
    assert code == 0, msg
    probe.case(
        "normalize: a cells set as input",
        ["normalize", str(cells_set), "--out", str(w / "n7"), *nt],
        w / "n7",
    )
    damaged = copy(set_a, w / "truncated_set")
    truncate(first_part(damaged))
    probe.case(
        "normalize: truncated part file",
        ["normalize", str(damaged), "--out", str(w / "n8"), *nt],
        w / "n8",
    )
    probe.case(
        "select: truncated part file",
        ["select", str(damaged), "--out", str(w / "s1"), "--ops", "variance", *nt],
        w / "s1",
    )
    probe.case(
        "export: truncated part file",
        ["export", str(damaged), "--out", str(w / "e1.parquet"), *nt],
        w / "e1.parquet",
    )
    flipped = copy(set_a, w / "flipped_set")
    part = first_part(flipped)
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0xFF
    part.write_bytes(bytes(data))
    probe.case(
        "normalize: part bytes differ from checksum",
        ["normalize", str(flipped), "--out", str(w / "n9"), *nt],
        w / "n9",
    )
    rows = copy(set_a, w / "rows_set")
    edit_manifest(
        rows,
        lambda d: (
            d["files"][0].__setitem__("rows", d["files"][0]["rows"] + 1),
            d.pop("num_rows", None),
        ),
    )
    probe.case(
        "normalize: manifest row count differs from the file",
        ["normalize", str(rows), "--out", str(w / "n10"), *nt],
        w / "n10",
    )
    outside = copy(set_a, w / "outside_set")
    shutil.copy(first_part(outside), w / "outside.parquet")
    edit_manifest(outside, lambda d: d["files"][0].__setitem__("path", "../outside.parquet"))
    probe.case(
        "normalize: manifest entry ../outside.parquet",
        ["normalize", str(outside), "--out", str(w / "n11"), *nt],
        w / "n11",
    )
    probe.case(
        "inspect --verify: manifest entry ../outside.parquet",
        ["inspect", str(outside), "--verify"],
        None,
    )
    absolute = copy(set_a, w / "absolute_set")
    edit_manifest(absolute, lambda d: d["files"][0].__setitem__("path", "/etc/passwd"))
    probe.case(
        "inspect --verify: manifest entry /etc/passwd",
        ["inspect", str(absolute), "--verify"],
        None,
    )
    dotdot = copy(set_a, w / "dotdot_set")
    edit_manifest(dotdot, lambda d: d["files"][0].__setitem__("path", "../../../../etc/passwd"))
    probe.case(
        "normalize: manifest entry ../../../../etc/passwd",
        ["normalize", str(dotdot), "--out", str(w / "n12"), *nt],
        w / "n12",
    )
    uri = copy(set_a, w / "uri_set")
    edit_manifest(uri, lambda d: d["files"][0].__setitem__("path", "s3://bucket/x.parquet"))
    probe.case(
        "normalize: manifest entry is a URI",
        ["normalize", str(uri), "--out", str(w / "n13"), *nt],
        w / "n13",
    )
    extra_feature = copy(set_a, w / "feature_set")
    edit_manifest(extra_feature, lambda d: d["features"].append("Cells_Missing"))
    probe.case(
        "normalize: manifest lists a feature the files lack",
        ["normalize", str(extra_feature), "--out", str(w / "n14"), *nt],
        w / "n14",
    )
    probe.case(
        "select: manifest lists a feature the files lack",
        ["select", str(extra_feature), "--out", str(w / "s2"), "--ops", "variance", *nt],
        w / "s2",
    )
    probe.case(
        "select: exploit in --samples",
        [
            "select",
            str(set_a),
            "--out",
            str(w / "s3"),
            "--samples",
            "__import__('os').system('touch /tmp/pwned')",
            *nt,
        ],
        w / "s3",
        check=lambda: "PAYLOAD RAN" if PWNED.exists() else None,
    )
    probe.case(
        "select: --samples naming an unknown column",
        ["select", str(set_a), "--out", str(w / "s4"), "--samples", "Metadata_Nope == 1", *nt],
        w / "s4",
    )
    probe.case(
        "select: unknown op",
        ["select", str(set_a), "--out", str(w / "s5"), "--ops", "magic", *nt],
        w / "s5",
    )
    probe.case(
        "select: --out is the input, --overwrite",
        ["select", str(set_a), "--out", str(set_a), "--overwrite", *nt],
        set_a,
    )
    probe.case(
        "export: unknown suffix",
        ["export", str(set_a), "--out", str(w / "e2.xlsx"), *nt],
        w / "e2.xlsx",
    )
    (w / "e3.parquet").write_bytes(b"old")
    probe.case(
        "export: --out exists, no --overwrite",
        ["export", str(set_a), "--out", str(w / "e3.parquet"), *nt],
        w / "e3.parquet",
    )

    # -- ingest cells ------------------------------------------------------------------------
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(20, 6)).astype(np.float32)
    ids = [f"c{i % 10}" for i in range(20)]  # ids repeat
    h5ad(w / "rna_dup.h5ad", counts, ids)
    h5ad(w / "adt_dup.h5ad", counts[::-1], ids[::-1], dense=True)
    probe.case(
        "ingest cells: repeated ids, ADT reversed",
        [
            "ingest",
            "cells",
            "--rna",
            str(w / "rna_dup.h5ad"),
            "--adt",
            str(w / "adt_dup.h5ad"),
            "--out",
            str(w / "c1"),
            *nt,
        ],
        w / "c1",
    )
    uniq = [f"c{i}" for i in range(20)]
    neg = counts.copy()
    neg[0, 0] = -3
    h5ad(w / "rna_neg.h5ad", neg, uniq, counts=True)
    probe.case(
        "ingest cells: negative counts",
        ["ingest", "cells", "--rna", str(w / "rna_neg.h5ad"), "--out", str(w / "c2"), *nt],
        w / "c2",
    )
    frac = counts.copy()
    frac[1, 1] = 0.5
    h5ad(w / "rna_frac.h5ad", frac, uniq, counts=True)
    probe.case(
        "ingest cells: fractional counts",
        ["ingest", "cells", "--rna", str(w / "rna_frac.h5ad"), "--out", str(w / "c3"), *nt],
        w / "c3",
    )
    h5ad(w / "adt_other.h5ad", counts, [f"d{i}" for i in range(20)], dense=True)
    h5ad(w / "rna_ok.h5ad", counts, uniq)
    probe.case(
        "ingest cells: RNA and ADT of different cells",
        [
            "ingest",
            "cells",
            "--rna",
            str(w / "rna_ok.h5ad"),
            "--adt",
            str(w / "adt_other.h5ad"),
            "--out",
            str(w / "c4"),
            *nt,
        ],
        w / "c4",
    )

    # -- train / task / tune: nothing lost under --overwrite ----------------------------------
    for name in ("old_train", "old_task", "old_tune"):
        (w / name).mkdir()
        (w / name / "keep.txt").write_text("previous output")
    probe.case(
        "train: --data X --out X --overwrite",
        [
            "train",
            "umint",
            "--data",
            str(cells_set),
            "--out",
            str(cells_set),
            "--overwrite",
            "--workers",
            "64",
            *nt,
        ],
        cells_set,
    )
    probe.case(
        "train: --workers 64 --overwrite onto an old output",
        [
            "train",
            "umint",
            "--data",
            str(cells_set),
            "--out",
            str(w / "old_train"),
            "--overwrite",
            "--workers",
            "64",
            *nt,
        ],
        w / "old_train",
    )
    probe.case(
        "task predict: --data Y --out Y --overwrite",
        [
            "task",
            "predict",
            "--data",
            str(cells_set),
            "--out",
            str(cells_set),
            "--overwrite",
            "--train-batches",
            "batch0",
            "--test-batches",
            "batch1",
            *nt,
        ],
        cells_set,
    )
    probe.case(
        "task predict: overlapping batches, --overwrite onto an old output",
        [
            "task",
            "predict",
            "--data",
            str(cells_set),
            "--out",
            str(w / "old_task"),
            "--overwrite",
            "--train-batches",
            "batch0",
            "--test-batches",
            "batch0",
            *nt,
        ],
        w / "old_task",
    )
    space = w / "space.yaml"
    space.write_text("model.not_a_key: [1, 2]\n")
    probe.case(
        "tune: --overwrite with an impossible space",
        [
            "tune",
            "umint",
            "--data",
            str(cells_set),
            "--out",
            str(w / "old_tune"),
            "--overwrite",
            "--space",
            str(space),
            "--metric",
            "val_loss",
            "--mode",
            "min",
            "--trials",
            "2",
            *nt,
        ],
        w / "old_tune",
    )

    # -- concurrent writers and crash leftovers ----------------------------------------------
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        import socket

        target = w / "locked"
        stat = Path(f"/proc/{holder.pid}/stat").read_text()
        (w / ".locked.lock").write_text(
            json.dumps(
                {  # the lock format of raymmi.io._dest
                    "pid": holder.pid,
                    "host": socket.gethostname(),
                    "proc_start": stat.rsplit(")", 1)[1].split()[19],
                    "started": "2026-01-01 00:00:00 UTC",
                }
            )
        )
        probe.case(
            "a second writer while a live run holds the lock",
            ["ingest", "plates", str(good), "--out", str(target), *nt],
            target,
        )
    finally:
        holder.kill()
        holder.wait()
    probe.case(
        "the lock's holder is gone: taken over (exit 0)",
        ["ingest", "plates", str(good), "--out", str(target), *nt],
        None,
        expect=0,
        check=lambda: None if (target / "_manifest.json").exists() else "not written",
    )
    crash = w / "crashed"
    shutil.copytree(set_a, w / ".crashed.old-aaaaaaaaaaaa")
    shutil.copytree(set_a, w / ".crashed.tmp-bbbbbbbbbbbb")
    probe.case(
        "leftovers of a crash between the two renames: finished (exit 0)",
        ["ingest", "plates", str(good), "--out", str(crash), "--overwrite", *nt],
        None,
        expect=0,
        check=lambda: (
            None
            if (crash / "_manifest.json").exists() and not list(w.glob(".crashed.*"))
            else "not recovered"
        ),
    )

    if PWNED.exists():
        probe.rows.append(
            {
                "case": "payload",
                "exit": "-",
                "seconds": 0,
                "destination": "-",
                "ok": "FAIL",
                "message": "/tmp/pwned exists",
            }
        )
    table = pd.DataFrame(probe.rows)
    table.index = range(1, len(table) + 1)
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        if args.markdown:
            cols = ["case", "exit", "destination", "ok", "message"]
            print("| # | " + " | ".join(cols) + " |")
            print("|---" * (len(cols) + 1) + "|")
            for i, row in table.iterrows():
                cells = [str(row[c]).replace("|", "\\|") for c in cols]
                print(f"| {i} | " + " | ".join(cells) + " |")
        else:
            print(table.to_string())
    failed = table[table["ok"] != "ok"]
    print(f"\n{len(table)} cases, {len(failed)} failed; /tmp/pwned exists: {PWNED.exists()}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
