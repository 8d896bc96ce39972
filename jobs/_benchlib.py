"""Shared pieces of the benchmark jobs: peak-memory sampling of Ray workers, fresh processes."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import resource
import threading
import time
from collections.abc import Callable
from typing import Any


def fresh_process_pool() -> cf.ProcessPoolExecutor:
    """One spawned process per task, so each measured baseline's peak memory is its own."""
    return cf.ProcessPoolExecutor(
        max_workers=1, mp_context=mp.get_context("spawn"), max_tasks_per_child=1
    )


def timed_peak(fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """Run ``fn(*args)`` (in the calling process): seconds and peak RSS growth in MiB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def worker_rss() -> int:
    import psutil

    total = 0
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            name = proc.info["name"] or ""
            cmd = " ".join(proc.info["cmdline"] or [])
            if name.startswith("ray::") or "default_worker.py" in cmd:
                total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


class PeakSampler:
    def __init__(self) -> None:
        self.idle = worker_rss()
        self.peak = self.idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, worker_rss())
            time.sleep(0.02)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.idle) / 2**20
