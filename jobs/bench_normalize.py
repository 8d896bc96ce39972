"""Benchmark: `raymmi normalize` against pycytominer looped over plates and a pyarrow floor.

    python jobs/bench_normalize.py [--wells 10000] [--features 1000] [--sizes 3] [--smoke-test]
        [--pycytominer-max-wells N] [--scanpy-max-wells N] [--workdir DIR]
    python jobs/bench_normalize.py --huge 6600000 [--huge-plate-wells 1536] [--workdir DIR]

Three sizes 10x apart (``--wells`` x 1, 10, 100; 384 wells a plate), each a generated
``plates`` shard set (generation timed apart). Per size it times, with peak memory above idle:

* ``floor``: read + write every shard file with pyarrow, in a fresh process, writing with the
  same Parquet settings as raymmi's parts (``raymmi.io._shardset.parquet_options``), so the
  floor is the I/O alone and raymmi is not credited for its codec;
* ``pycytominer``: ``pycytominer.normalize(samples="Metadata_is_negcon == True")`` looped over
  plates (read the plate, normalize, write), in a fresh process; skipped above
  ``--pycytominer-max-wells`` (it is single-threaded and linear: the table says so);
* ``raymmi``: ``raymmi.run.normalize`` (negcon standardize) on the local Ray: one pass;
* ComBat: ``raymmi normalize --method combat`` (a statistics pass and an apply pass) against
  ``scanpy.pp.combat`` on the whole matrix in memory (skipped above ``--scanpy-max-wells``).

Ray starts its workers at niceness 15; on a shared machine that puts raymmi behind every other
process while the baselines run at 0, so the job starts its local Ray with
``RAY_worker_niceness=0`` (unless set): same priority for every contender.

raymmi's memory is the summed RSS of this driver and its own Ray workers (not other sessions'
workers on a shared machine); the baselines', their process's peak RSS growth.

``--huge N`` instead generates one set of about N wells (streaming, plate by plate; with the
default 6.6M wells x 1,000 float32 features its values alone are 24.6 GiB, more than this
machine's RAM) and runs raymmi standardize and ComBat on it, deleting each output after it is
measured and the input at the end (``--keep`` keeps it).

Throughput is wells per second; ratios are baseline time / raymmi time (>1: raymmi faster).
Each row also gives the 1-minute load average before and after it (shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import PeakSampler, fresh_process_pool, timed_peak

from raymmi import testing
from raymmi.config import NormalizeConfig, RayConfig, TrackingConfig
from raymmi.io import open_shard_set
from raymmi.run import generate_plates, init_ray, normalize

OFF = TrackingConfig(enabled=False)


def _floor(paths: list[str], out: str) -> None:
    import pyarrow.parquet as pq

    from raymmi.io import parquet_options

    os.makedirs(out, exist_ok=True)
    for i, path in enumerate(paths):
        table = pq.read_table(path, pre_buffer=False)
        with pq.ParquetWriter(
            os.path.join(out, f"{i}.parquet"), table.schema, **parquet_options(table.schema)
        ) as writer:
            writer.write_table(table)


def _pycytominer(paths: list[str], features: list[str], out: str) -> None:
    import pyarrow.parquet as pq
    import pycytominer

    os.makedirs(out, exist_ok=True)
    for i, path in enumerate(paths):
        frame = pq.read_table(path).to_pandas()
        meta = [c for c in frame.columns if c.startswith("Metadata_")]
        result = pycytominer.normalize(
            frame,
            features=features,
            meta_features=meta,
            samples="Metadata_is_negcon == True",
            method="standardize",
        )
        result.to_parquet(os.path.join(out, f"{i}.parquet"))


def _scanpy_combat(paths: list[str], features: list[str]) -> None:
    import anndata as ad
    import pandas as pd
    import pyarrow.parquet as pq
    import scanpy as sc

    frame = pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)
    adata = ad.AnnData(
        frame[features].to_numpy(), obs=frame[["Metadata_Batch"]].astype("category")
    )
    sc.pp.combat(adata, key="Metadata_Batch")


def _measure(fn, *args) -> tuple[float, float]:
    with fresh_process_pool() as pool:
        return pool.submit(timed_peak, fn, *args).result()


def _raymmi(source: str, out: str, method: str) -> tuple[float, float]:
    config = NormalizeConfig(source=source, out=out, method=method, overwrite=True)
    with PeakSampler(include_self=True) as sampler:
        start = time.perf_counter()
        normalize(config, tracking=OFF)
        seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)  # keep the disk footprint to one output
    return seconds, sampler.growth_mib


def _load() -> float:
    return os.getloadavg()[0]


def _generate(spec: testing.PlateSetSpec, source: str) -> tuple[int, float, float, float]:
    """Generate; return wells, GiB on disk, GiB of float32 feature values, seconds."""
    start = time.perf_counter()
    generate_plates(spec, out=source, tracking=OFF)
    seconds = time.perf_counter() - start
    m = open_shard_set(source).manifest
    disk = sum(f.bytes for f in m.files) / 2**30
    return m.num_rows, disk, m.num_rows * len(m.features) * 4 / 2**30, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=10_000, help="wells at the smallest size")
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--sizes", type=int, default=3, help="how many sizes (10x apart)")
    parser.add_argument("--pycytominer-max-wells", type=int, default=200_000)
    parser.add_argument("--scanpy-max-wells", type=int, default=200_000)
    parser.add_argument("--workdir", help="where the generated sets go (default: a temp dir)")
    parser.add_argument("--huge", type=int, help="instead: one set of about this many wells")
    parser.add_argument("--huge-plate-wells", type=int, default=1536, choices=(384, 1536))
    parser.add_argument("--keep", action="store_true", help="keep the --huge input set")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.wells, args.features, args.sizes = 768, 30, 2
        if args.huge:
            args.huge = 3000
    os.environ.setdefault("RAY_worker_niceness", "0")  # before Ray starts: see the docstring
    init_ray(RayConfig())
    if args.huge:
        return _huge(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="raymmi-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        for k in range(args.sizes):
            n_plates = max(2, round(args.wells * 10**k / 384))
            spec = testing.PlateSetSpec(
                n_plates=n_plates,
                n_features=args.features,
                n_batches=min(4, n_plates),
                seed=k,
            )
            source = str(root / f"plates{k}")
            print(f"generating {n_plates} plates x {args.features} features ...", flush=True)
            wells, gib, _, gen_s = _generate(spec, source)
            print(f"  generated {wells} wells, {gib:.2f} GiB in {gen_s:.1f} s", flush=True)
            shard_set = open_shard_set(source)
            paths = shard_set.file_uris()
            features = list(shard_set.manifest.features)
            if k == 0:  # warm-up: start Ray's workers before any memory is sampled
                _raymmi(source, str(root / "warm"), "standardize")
                _raymmi(source, str(root / "warm"), "combat")
            load_before = _load()
            floor = _measure(_floor, paths, str(root / f"floor{k}"))
            shutil.rmtree(root / f"floor{k}", ignore_errors=True)
            pcm = None
            if wells <= args.pycytominer_max_wells:
                pcm = _measure(_pycytominer, paths, features, str(root / f"pcm{k}"))
                shutil.rmtree(root / f"pcm{k}", ignore_errors=True)
            ours = _raymmi(source, str(root / f"norm{k}"), "standardize")
            combat = _raymmi(source, str(root / f"combat{k}"), "combat")
            scanpy = (
                _measure(_scanpy_combat, paths, features)
                if wells <= args.scanpy_max_wells
                else None
            )
            load = (load_before, _load())
            rows.append((wells, gib, floor, pcm, ours, combat, scanpy, load))
            _print(rows[-1:], args.features)  # each size as soon as it is measured
            shutil.rmtree(source, ignore_errors=True)
    print("\nall sizes:")
    _print(rows, args.features)
    return 0


def _huge(args: argparse.Namespace) -> int:
    per_plate = args.huge_plate_wells
    n_plates = max(2, math.ceil(args.huge / per_plate))
    spec = testing.PlateSetSpec(
        n_plates=n_plates,
        wells_per_plate=per_plate,
        n_features=args.features,
        n_batches=min(4, n_plates),
        seed=11,
    )
    root = Path(tempfile.mkdtemp(prefix="raymmi-huge-", dir=args.workdir))
    source = str(root / "plates")
    try:
        print(f"generating {n_plates} plates x {per_plate} wells x {args.features} features ...")
        load0 = _load()
        wells, disk, values, gen_s = _generate(spec, source)
        print(
            f"  generated {wells} wells: {values:.1f} GiB of float32 values, {disk:.1f} GiB on "
            f"disk, in {gen_s:.0f} s ({wells / gen_s:,.0f} wells/s); load {load0:.1f} -> "
            f"{_load():.1f}",
            flush=True,
        )
        # warm-up, as at the three sizes: start Ray's workers before any memory is sampled
        warm = str(root / "warm")
        generate_plates(dataclasses.replace(spec, n_plates=2, n_batches=2), out=warm, tracking=OFF)
        for method in ("standardize", "combat"):
            _raymmi(warm, str(root / "warm-out"), method)
        shutil.rmtree(warm, ignore_errors=True)
        results = []
        for method in ("standardize", "combat"):
            load_before = _load()
            seconds, mib = _raymmi(source, str(root / method), method)
            results.append((method, seconds, mib, load_before, _load()))
            print(f"  {method}: {seconds:.0f} s, peak {mib:.0f} MiB", flush=True)
        total = open(Path("/proc/meminfo")).readline().split()[1]
        print(
            f"\nlarger than RAM: {wells} wells x {args.features} features, {values:.1f} GiB of "
            f"values ({disk:.1f} GiB on disk), RAM {int(total) / 2**20:.1f} GiB"
        )
        header = f"{'method':>12} {'s':>7} {'wells/s':>9} {'MiB peak':>9} {'load 1m':>11}"
        print(header)
        print("-" * len(header))
        for method, seconds, mib, a, b in results:
            print(
                f"{method:>12} {seconds:>7.0f} {wells / seconds:>9,.0f} {mib:>9.0f} "
                f"{a:>5.1f}->{b:<5.1f}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _fmt(pair: tuple[float, float] | None) -> tuple[str, str]:
    if pair is None:
        return "skipped", "-"
    return f"{pair[0]:.1f}", f"{pair[1]:.0f}"


def _print(rows, features: int) -> None:
    print(f"\nnormalize (negcon standardize) and ComBat, {features} features, float32 shards")
    header = (
        f"{'wells':>9} {'GiB':>5} | {'floor s':>7} {'pcm s':>8} {'raymmi s':>8} | "
        f"{'wells/s':>8} {'vs floor':>8} {'vs pcm':>7} | {'MiB floor':>9} {'pcm':>6} "
        f"{'raymmi':>6} | {'combat s':>8} {'scanpy s':>8} {'ratio':>6} | {'MiB combat':>10} "
        f"{'scanpy':>6} | {'load 1m':>11}"
    )
    print(header)
    print("-" * len(header))
    for wells, gib, floor, pcm, ours, combat, scanpy, load in rows:
        pcm_s, pcm_m = _fmt(pcm)
        sc_s, sc_m = _fmt(scanpy)
        vs_floor = floor[0] / ours[0]
        vs_pcm = f"{pcm[0] / ours[0]:.1f}x" if pcm else "-"
        vs_scanpy = f"{scanpy[0] / combat[0]:.1f}x" if scanpy else "-"
        print(
            f"{wells:>9} {gib:>5.2f} | {floor[0]:>7.1f} {pcm_s:>8} {ours[0]:>8.1f} | "
            f"{wells / ours[0]:>8,.0f} {vs_floor:>7.2f}x {vs_pcm:>7} | {floor[1]:>9.0f} "
            f"{pcm_m:>6} {ours[1]:>6.0f} | {combat[0]:>8.1f} {sc_s:>8} {vs_scanpy:>6} | "
            f"{combat[1]:>10.0f} {sc_m:>6} | {load[0]:>5.1f}->{load[1]:<5.1f}"
        )
    print(
        "vs floor / vs pcm / ratio: baseline time / raymmi time (>1 = raymmi faster); "
        "MiB: peak RSS above idle (raymmi: driver + its Ray workers)"
    )


if __name__ == "__main__":
    sys.exit(main())
