"""Benchmark: `raymmi normalize` against pycytominer looped over plates and a pyarrow floor.

    python jobs/bench_normalize.py [--wells 10000] [--features 1000] [--sizes 3] [--smoke-test]

Three sizes 10x apart (``--wells`` x 1, 10, 100; 384 wells a plate), each a generated
``plates`` shard set (generation not timed). Per size it times, with peak memory above idle:

* ``floor``: read + write every shard file with pyarrow (the floor of any pass that reads and
  writes every value), in a fresh process;
* ``pycytominer``: ``pycytominer.normalize(samples="Metadata_is_negcon == True")`` looped over
  plates (read the plate, normalize, write), in a fresh process; skipped above
  ``--pycytominer-max-wells`` (it is single-threaded and linear: the table says so);
* ``raymmi``: ``raymmi.run.normalize`` (negcon standardize) on the local Ray: a statistics
  pass and an apply pass;
* ComBat: ``raymmi normalize --method combat`` against ``scanpy.pp.combat`` on the whole
  matrix in memory (skipped above ``--scanpy-max-wells``).

Throughput is wells per second; ratios are raymmi / floor and raymmi / pycytominer.
"""

from __future__ import annotations

import argparse
import os
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

    os.makedirs(out, exist_ok=True)
    for i, path in enumerate(paths):
        pq.write_table(pq.read_table(path), os.path.join(out, f"{i}.parquet"))


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
    with PeakSampler() as sampler:
        start = time.perf_counter()
        normalize(config, tracking=OFF)
        seconds = time.perf_counter() - start
    return seconds, sampler.growth_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=10_000, help="wells at the smallest size")
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--sizes", type=int, default=3, help="how many sizes (10x apart)")
    parser.add_argument("--pycytominer-max-wells", type=int, default=200_000)
    parser.add_argument("--scanpy-max-wells", type=int, default=200_000)
    parser.add_argument("--workdir", help="where the generated sets go (default: a temp dir)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.wells, args.features, args.sizes = 768, 30, 2
    init_ray(RayConfig())
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
            generate_plates(spec, out=source, tracking=OFF)
            shard_set = open_shard_set(source)
            wells = shard_set.manifest.num_rows
            paths = shard_set.file_uris()
            features = list(shard_set.manifest.features)
            gib = sum(f.bytes for f in shard_set.manifest.files) / 2**30
            if k == 0:  # warm-up: start Ray Data's workers before any memory is sampled
                _raymmi(source, str(root / "warm"), "standardize")
                _raymmi(source, str(root / "warm"), "combat")
            floor = _measure(_floor, paths, str(root / f"floor{k}"))
            pcm = (
                _measure(_pycytominer, paths, features, str(root / f"pcm{k}"))
                if wells <= args.pycytominer_max_wells
                else None
            )
            ours = _raymmi(source, str(root / f"norm{k}"), "standardize")
            combat = _raymmi(source, str(root / f"combat{k}"), "combat")
            scanpy = (
                _measure(_scanpy_combat, paths, features)
                if wells <= args.scanpy_max_wells
                else None
            )
            rows.append((wells, gib, floor, pcm, ours, combat, scanpy))
            _print(rows[-1:], args.features)  # each size as soon as it is measured
            for name in ("floor", "pcm", "norm", "combat"):
                os.system(f"rm -rf {root / f'{name}{k}'}")  # keep the disk footprint to one size
    print("\nall sizes:")
    _print(rows, args.features)
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
        f"{'scanpy':>6}"
    )
    print(header)
    print("-" * len(header))
    for wells, gib, floor, pcm, ours, combat, scanpy in rows:
        pcm_s, pcm_m = _fmt(pcm)
        sc_s, sc_m = _fmt(scanpy)
        vs_floor = floor[0] / ours[0]
        vs_pcm = f"{pcm[0] / ours[0]:.1f}x" if pcm else "-"
        vs_scanpy = f"{scanpy[0] / combat[0]:.1f}x" if scanpy else "-"
        print(
            f"{wells:>9} {gib:>5.2f} | {floor[0]:>7.1f} {pcm_s:>8} {ours[0]:>8.1f} | "
            f"{wells / ours[0]:>8,.0f} {vs_floor:>7.2f}x {vs_pcm:>7} | {floor[1]:>9.0f} "
            f"{pcm_m:>6} {ours[1]:>6.0f} | {combat[0]:>8.1f} {sc_s:>8} {vs_scanpy:>6} | "
            f"{combat[1]:>10.0f} {sc_m:>6}"
        )
    print(
        "vs floor / vs pcm / ratio: speed relative to the baseline (>1 = raymmi faster); "
        "MiB: peak memory above idle"
    )


if __name__ == "__main__":
    sys.exit(main())
