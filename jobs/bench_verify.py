"""Cost of verifying part files on read: checksum + footer + columns, against the plain read.

Baseline: the reader normalize used before (read a part's bytes once, decode from the buffer).
Verified: :func:`raymmi.io._shardset.read_part` (the same read, plus SHA-256 over the very
buffer decoded, the footer's row count and the manifest's columns). One run, same files, best of
``--repeat`` passes each, printed as one table with the ratio.

    python jobs/bench_verify.py [--plates 40] [--wells 384] [--features 1000] [--smoke-test]
"""

from __future__ import annotations

import argparse
import posixpath
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymmi.io import read_part, resolve, write_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=40)
    parser.add_argument("--wells", type=int, default=384)
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    if args.smoke_test:
        args.plates, args.features, args.repeat = 4, 50, 2
    rng = np.random.default_rng(0)
    root = tempfile.mkdtemp(prefix="raymmi-bench-verify-")
    names = [f"F{j}" for j in range(args.features)]
    entries = []
    for p in range(args.plates):
        cols = {"Metadata_Plate": pa.array([f"P{p}"] * args.wells)}
        cols |= {n: pa.array(rng.normal(size=args.wells).astype(np.float32)) for n in names}
        entries.append(
            write_part(root, f"plate=P{p}/part-0.parquet", pa.table(cols), plate=f"P{p}")
        )
    fs, base = resolve(root)
    total = sum(e.bytes for e in entries)

    def plain() -> int:
        rows = 0
        for e in entries:
            with fs.open_input_stream(posixpath.join(base, e.path)) as stream:
                data = stream.read()
            rows += pq.ParquetFile(pa.BufferReader(data)).read().num_rows
        return rows

    def verified() -> int:
        return sum(read_part(root, e, fs=fs, require=names).num_rows for e in entries)

    results = {}
    for name, fn in (("plain read (baseline)", plain), ("verified read", verified)):
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        results[name] = best
    base_s = results["plain read (baseline)"]
    print(
        f"{args.plates} parts of {args.wells} x {args.features} float32, {total / 2**20:.1f} MiB"
    )
    print(f"{'reader':24s} {'seconds':>8s} {'MiB/s':>8s} {'x baseline':>10s}")
    for name, seconds in results.items():
        print(f"{name:24s} {seconds:8.3f} {total / 2**20 / seconds:8.0f} {seconds / base_s:10.2f}")


if __name__ == "__main__":
    main()
