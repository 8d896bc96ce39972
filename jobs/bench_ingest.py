"""Benchmark: `raymmi ingest plates` against a plain pyarrow read + write of the same data.

    python jobs/bench_ingest.py [--plates 10] [--features 300] [--smoke-test]

Two sizes, 10x apart (``--plates`` and 10 x ``--plates`` plates of 384 wells), each one generated
Parquet table. For each size it times

* ``pyarrow``: ``pq.read_table`` + ``pq.write_table`` (one file, no validation), the floor;
* ``pyarrow/plate``: ``pq.read_table`` + ``pq.write_to_dataset(partition_cols=[plate])``;
* ``raymmi``: ``raymmi.run.ingest_plates`` on the already-started local Ray (validation, float32
  cast, negcon flags, per-plate parts, SHA-256, duplicate-key check, manifest; no MLflow),

and the peak memory above idle: of the pyarrow process, and of all Ray worker processes summed
(sampled every 0.25 s). The table ends with the time ratio raymmi / pyarrow.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _benchlib import PeakSampler, fresh_process_pool

from raymmi import testing
from raymmi.config import IngestPlatesConfig, RayConfig, TrackingConfig
from raymmi.run import ingest_plates, init_ray


def _make_source(path: Path, n_plates: int, n_features: int) -> int:
    """One float64 Parquet table of generated plates, in row groups of about 64k rows."""
    spec = testing.PlateSetSpec(
        n_plates=n_plates, n_features=n_features, n_batches=min(2, n_plates), seed=0
    )
    writer = None
    pending: list[pa.Table] = []
    rows = 0
    for i in range(n_plates):
        table = pa.Table.from_pandas(testing.generate_plate(spec, i), preserve_index=False)
        # sources in the wild are float64 (CSV, pandas); the cast to float32 is part of ingest
        table = table.cast(
            pa.schema(
                [
                    pa.field(f.name, pa.float64()) if pa.types.is_floating(f.type) else f
                    for f in table.schema
                ]
            )
        )
        pending.append(table)
        rows += table.num_rows
        if sum(t.num_rows for t in pending) >= 65_536 or i == n_plates - 1:
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(pa.concat_tables(pending))
            pending = []
    if writer is not None:
        writer.close()
    return rows


def _pyarrow_copy(src: str, dst: str, partition: bool) -> tuple[float, float]:
    """Run in a fresh process: seconds and peak RSS growth (MiB) of read + write."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    table = pq.read_table(src)
    if partition:
        pq.write_to_dataset(table, dst, partition_cols=["Metadata_Plate"])
    else:
        pq.write_table(table, dst)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, (peak - before) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=100, help="plates at the small size")
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--smoke-test", action="store_true", help="2 and 20 plates, 30 features")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.plates, args.features = 2, 30
    init_ray(RayConfig())
    pool = fresh_process_pool()
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="raymmi-bench-") as tmp:
        root = Path(tmp)
        # warm-up: start the Ray workers once so their start-up is not counted as ingest memory
        _make_source(root / "warm.parquet", 1, 5)
        warm = IngestPlatesConfig(sources=(str(root / "warm.parquet"),), out=str(root / "warm"))
        ingest_plates(warm, tracking=TrackingConfig(enabled=False))
        for n_plates in (args.plates, 10 * args.plates):
            src = root / f"src_{n_plates}.parquet"
            rows = _make_source(src, n_plates, args.features)
            mb = src.stat().st_size / 2**20
            t_pa, m_pa = pool.submit(
                _pyarrow_copy, str(src), str(root / "pa.parquet"), False
            ).result()
            t_pp, m_pp = pool.submit(
                _pyarrow_copy, str(src), str(root / f"pp{n_plates}"), True
            ).result()
            config = IngestPlatesConfig(sources=(str(src),), out=str(root / f"rm{n_plates}"))
            with PeakSampler() as sampler:
                start = time.perf_counter()
                ingest_plates(config, tracking=TrackingConfig(enabled=False))
                t_rm = time.perf_counter() - start
            rows_out.append((n_plates, rows, mb, t_pa, t_pp, t_rm, m_pa, m_pp, sampler.growth_mib))
    pool.shutdown()
    header = (
        f"{'plates':>6} {'rows':>8} {'src MiB':>8} | {'pyarrow s':>9} {'pa/plate s':>10} "
        f"{'raymmi s':>8} | {'rows/s raymmi':>13} {'time ratio':>10} | "
        f"{'peak MiB pa':>11} {'pa/plate':>8} {'raymmi':>7}"
    )
    print(f"\ningest: {args.features} features x 384 wells per plate, float64 Parquet source")
    print(header)
    print("-" * len(header))
    for n, rows, mb, t_pa, t_pp, t_rm, m_pa, m_pp, m_rm in rows_out:
        print(
            f"{n:>6} {rows:>8} {mb:>8.1f} | {t_pa:>9.2f} {t_pp:>10.2f} {t_rm:>8.2f} | "
            f"{rows / t_rm:>13,.0f} {t_rm / t_pa:>9.1f}x | {m_pa:>11.0f} {m_pp:>8.0f} {m_rm:>7.0f}"
        )
    small, large = rows_out
    print(
        f"\nraymmi / pyarrow time: {small[5] / small[3]:.1f}x (small), {large[5] / large[3]:.1f}x "
        f"(large); peak memory growth small -> large (10x data): pyarrow "
        f"{large[6] / max(small[6], 1):.1f}x, raymmi {large[8] / max(small[8], 1):.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
