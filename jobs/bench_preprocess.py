"""Benchmark: `raymmi preprocess cells` (out of core, Ray) against scanpy in memory.

    python jobs/bench_preprocess.py [--cells 20000] [--genes 20000] [--smoke-test]

Generated RNA counts (``raymmi.testing``, median 5,000 UMIs per cell: about 1,600 of 20,000
genes detected, 8% dense, as in 10x v3 PBMC data) at ``--cells``, 10 x ``--cells`` and (unless
``--no-largest``) 100 x ``--cells`` cells, files of 10,000 cells. The same steps on both sides:
``normalize_total`` (median target), ``log1p``, ``highly_variable_genes`` (seurat, 2,000
genes), ``scale`` (``max_value=10``), ``pca`` (50 components).

* ``scanpy``: in a fresh process, the counts are read from the shard set into one CSR matrix
  (``load s``), then the scanpy calls run (``scanpy s``); peak RSS is that process's maximum
  resident set above its level after imports (data + pipeline). Skipped at the largest size.
* ``raymmi``: ``raymmi.run.preprocess_cells`` on the already-started local Ray, reading the
  shard set and writing the output shard set (raw counts, scaled HVGs, PCs); peak RSS is that
  of this driver plus its own Ray processes (raylet, workers), sampled every 50 ms, above their
  level after a tiny warm-up run (imports done); CPU seconds are theirs, summed.

Ratios are raymmi / scanpy: wall time (scanpy: load + pipeline), CPU seconds (user + system,
less sensitive than wall time to other load on the machine) and peak RSS growth.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from raymmi import testing
from raymmi.cells import PreprocessCellsConfig
from raymmi.config import RayConfig, TrackingConfig, from_dict
from raymmi.run import generate_cells, init_ray, preprocess_cells

OFF = TrackingConfig(enabled=False)


def _spec(n_cells: int, n_genes: int, chunk: int) -> testing.CellSetSpec:
    return testing.CellSetSpec(
        n_cells=n_cells,
        kind="cite",
        n_genes=n_genes,
        n_proteins=5,
        rna_depth=5000.0,
        chunk_size=chunk,
        seed=0,
    )


def _config(n_top: int, n_comps: int) -> PreprocessCellsConfig:
    return from_dict(
        PreprocessCellsConfig,
        {
            "rna": {
                "steps": ["normalize_total", "log1p", "highly_variable_genes", "scale", "pca"],
                "highly_variable_genes": {"n_top_genes": n_top},
                "pca": {"n_comps": n_comps},
            },
            "adt": {"steps": []},
        },
    )


def _scanpy(uri: str, n_top: int, n_comps: int) -> tuple[float, float, float, float]:
    """Run in a fresh process: load s, scanpy s, peak RSS growth MiB, CPU s (load + scanpy)."""
    import warnings

    import anndata as ad
    import scanpy as sc

    from raymmi.io import open_shard_set
    from raymmi.schema import lists_to_sparse

    warnings.simplefilter("ignore")
    idle = _rss_mib()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage0.ru_utime + usage0.ru_stime
    start = time.perf_counter()
    shard = open_shard_set(uri)
    n_genes = len(shard.manifest.modality("rna").features)
    blocks = [
        lists_to_sparse(t.column("rna_indices"), t.column("rna_values"), n_features=n_genes)
        for _, t in shard.iter_tables(columns=["rna_indices", "rna_values"])
    ]
    import scipy.sparse as sp

    adata = ad.AnnData(sp.vstack(blocks, format="csr"))
    del blocks
    loaded = time.perf_counter()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top)
    adata = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=n_comps)
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return loaded - start, done - loaded, usage.ru_maxrss / 1024 - idle, cpu


def _rss_mib() -> float:
    import psutil  # shipped inside ray (ray/thirdparty_files): importable once ray is

    return psutil.Process().memory_info().rss / 2**20


class _PeakSampler:
    """Peak RSS and CPU seconds of this driver and its local Ray, sampled every 50 ms.

    Only this process and its descendants (the raylet, its workers and agents) count: other
    Ray instances on the same machine are not ours. The peak is reported above ``baseline``
    (the tree after a tiny warm-up run: imports done, as scanpy's level after imports): workers
    keep memory they once touched, so the level before each run would hide a later peak.
    """

    def __init__(self, *, baseline: int | None = None) -> None:
        import psutil  # shipped inside ray (ray/thirdparty_files): importable once ray is

        self._error = psutil.Error
        self._me = psutil.Process()
        self._cpu_start = self._cpu()
        self._cpu_last = dict(self._cpu_start)
        self.idle = self._rss() if baseline is None else baseline
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list:
        tree = [self._me]
        for proc in self._me.children(recursive=True):
            try:
                # the scanpy process pool is ours too, but not raymmi's
                if not any("multiprocessing" in part for part in proc.cmdline()):
                    tree.append(proc)
            except self._error:
                continue
        return tree

    def _rss(self) -> int:
        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except self._error:  # a worker may exit between listing and reading
                continue
        return total

    def _cpu(self) -> dict[int, float]:
        out = {}
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
            except self._error:
                continue
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._cpu_last.update(self._cpu())
            time.sleep(0.05)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._cpu_last.update(self._cpu())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.idle) / 2**20

    @property
    def cpu_seconds(self) -> float:
        return sum(t - self._cpu_start.get(pid, 0.0) for pid, t in self._cpu_last.items())


HEADER = (
    f"{'cells':>9} {'in GiB':>6} | {'load s':>7} {'scanpy s':>8} {'raymmi s':>8} "
    f"{'ratio':>6} | {'CPU s scanpy':>12} {'raymmi':>7} {'ratio':>6} | "
    f"{'peak MiB scanpy':>15} {'raymmi':>7} {'ratio':>6} | {'passes':>6}"
)


def _row(
    n: int,
    gib: float,
    scanpy: tuple[float, float, float, float] | None,
    rm_s: float,
    rm_cpu: float,
    rm_mib: float,
    passes: int,
) -> str:
    if scanpy is None:
        sc_cols, ratio, mem, mem_ratio = f"{'-':>7} {'-':>8}", "-", f"{'-':>15}", "-"
        cpu, cpu_ratio = f"{'-':>12}", "-"
    else:
        load_s, sc_s, sc_mib, sc_cpu = scanpy
        sc_cols = f"{load_s:>7.1f} {sc_s:>8.1f}"
        ratio = f"{rm_s / (load_s + sc_s):.2f}"
        cpu, cpu_ratio = f"{sc_cpu:>12.0f}", f"{rm_cpu / sc_cpu:.2f}"
        mem = f"{sc_mib:>15.0f}"
        mem_ratio = f"{rm_mib / sc_mib:.2f}"
    return (
        f"{n:>9} {gib:>6.2f} | {sc_cols} {rm_s:>8.1f} {ratio:>6} | {cpu} {rm_cpu:>7.0f} "
        f"{cpu_ratio:>6} | {mem} {rm_mib:>7.0f} {mem_ratio:>6} | {passes:>6}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000, help="cells at the smallest size")
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="cells per file")
    parser.add_argument("--no-largest", action="store_true", help="skip the 100x size")
    parser.add_argument("--workdir", default=None, help="where to generate (default: a tmpdir)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, 500 genes")
    args = parser.parse_args(argv)
    n_top, n_comps = 2000, 50
    if args.smoke_test:
        args.cells, args.genes, args.chunk, n_top, n_comps = 300, 500, 300, 100, 10
    sizes = [args.cells, 10 * args.cells] + ([] if args.no_largest else [100 * args.cells])
    init_ray(RayConfig())
    # a fresh process per scanpy run: its peak RSS is its own, and its memory is returned
    pool = cf.ProcessPoolExecutor(
        max_workers=1, mp_context=mp.get_context("spawn"), max_tasks_per_child=1
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="raymmi-bench-pp-", dir=args.workdir) as tmp:
        root = Path(tmp)
        config = _config(n_top, n_comps)
        # warm-up: start the workers and import the stack once, outside the measurements
        warm = str(root / "warm")
        generate_cells(_spec(200, 200, 200), out=warm, tracking=OFF)
        preprocess_cells(_config(20, 5), source=warm, out=str(root / "warm-out"), tracking=OFF)
        baseline = _PeakSampler().peak
        for i, n_cells in enumerate(sizes):
            src = str(root / f"in{n_cells}")
            generate_cells(_spec(n_cells, args.genes, args.chunk), out=src, tracking=OFF)
            gib = sum(p.stat().st_size for p in Path(src).glob("*.parquet")) / 2**30
            scanpy = None
            if i < 2:
                scanpy = pool.submit(_scanpy, src, n_top, n_comps).result()
            out = str(root / f"out{n_cells}")
            with _PeakSampler(baseline=baseline) as sampler:
                tick = time.perf_counter()
                manifest = preprocess_cells(config, source=src, out=out, tracking=OFF)
                rm_s = time.perf_counter() - tick
            passes = manifest.extra["preprocess"]["passes"]
            rows.append(
                (n_cells, gib, scanpy, rm_s, sampler.cpu_seconds, sampler.growth_mib, passes)
            )
            if i == 0:
                print(
                    f"\npreprocess: {args.genes} genes, 5,000 UMIs/cell median, "
                    f"{args.chunk} cells/file"
                )
                print(HEADER)
                print("-" * len(HEADER))
            print(_row(*rows[-1]), flush=True)
            shutil.rmtree(out)
            shutil.rmtree(src)
    pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
