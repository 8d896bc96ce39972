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
    """Run ``fn(*args)`` (in the calling process): seconds and peak RSS growth in MiB.

    Growth of the peak (``ru_maxrss``) above the RSS *now*, not above the earlier peak: a
    process whose imports peaked higher than ``fn`` would otherwise report 0.
    """
    before = _self_rss() / 1024  # KiB, as ru_maxrss on Linux
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    return seconds, max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def worker_rss() -> int:
    """Summed RSS of this process's Ray workers (through ``/proc``; no psutil needed).

    Only descendants of this process (the local Ray it started): other sessions' Ray workers
    on a shared machine are not ours to count.
    """
    import os

    from raymmi.testing import descendants

    return sum(_proc_rss(pid)[0] for pid in descendants(os.getpid()) if _is_ray_worker(pid))


def _is_ray_worker(pid: int) -> bool:
    """A Ray worker process: titled ``ray::<task>``, or still starting ``default_worker.py``."""
    from raymmi.testing import cmdline

    cmd = cmdline(pid)
    return cmd.startswith("ray::") or "default_worker.py" in cmd


def _self_rss() -> int:
    import os

    return _proc_rss(os.getpid())[0]


class PeakSampler:
    """Peak RSS of the Ray workers (and, with ``include_self``, this driver) while active.

    Sampled every ``interval`` seconds (0.25: a faster poll in the driver takes CPU from the
    work it measures on a small machine); :attr:`growth_mib` is the peak above the level at
    construction.
    """

    def __init__(self, *, include_self: bool = False, interval: float = 0.25) -> None:
        self._include_self = include_self
        self._interval = interval
        self.idle = self._sample()
        self.peak = self.idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self._interval)

    def _sample(self) -> int:
        return worker_rss() + (_self_rss() if self._include_self else 0)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.idle) / 2**20


class TreePeaks:
    """Peak RSS of this driver and of each of its descendant processes while active.

    Polled every ``interval`` seconds through ``/proc`` (no psutil needed). :meth:`mib`
    gives, in MiB: ``driver``, this process's peak; ``worker``, the largest peak of any one Ray
    worker (``ray::*`` or ``default_worker.py``); ``workers_total``, the peak of the workers'
    summed RSS; ``tree_total``, the peak of everything summed (driver, workers, raylet, GCS);
    ``driver_anon`` and ``worker_anon``, the same peaks of ``RssAnon`` (private memory only).
    RSS counts the pages of Ray's shared-memory object store a process has touched (``RssShmem``),
    which grows with the data streamed through it up to the store's size; ``RssAnon`` does not.
    """

    def __init__(self, *, interval: float = 0.25) -> None:
        self._interval = interval
        self.driver = self.worker = self.workers_total = self.tree_total = 0
        self.driver_anon = self.worker_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        import os

        from raymmi.testing import descendants

        driver, driver_anon = _proc_rss(os.getpid())
        workers, anon, total = [], [], driver
        for pid in descendants(os.getpid()):
            rss, private = _proc_rss(pid)
            total += rss
            if _is_ray_worker(pid):
                workers.append(rss)
                anon.append(private)
        self.driver = max(self.driver, driver)
        self.driver_anon = max(self.driver_anon, driver_anon)
        self.worker = max(self.worker, max(workers, default=0))
        self.worker_anon = max(self.worker_anon, max(anon, default=0))
        self.workers_total = max(self.workers_total, sum(workers))
        self.tree_total = max(self.tree_total, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(self._interval)

    def __enter__(self) -> TreePeaks:
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def mib(self) -> dict[str, float]:
        """The peaks in MiB."""
        return {
            "driver": self.driver / 2**20,
            "driver_anon": self.driver_anon / 2**20,
            "worker": self.worker / 2**20,
            "worker_anon": self.worker_anon / 2**20,
            "workers_total": self.workers_total / 2**20,
            "tree_total": self.tree_total / 2**20,
        }


def _proc_rss(pid: int) -> tuple[int, int]:
    """``VmRSS`` and ``RssAnon`` of ``pid`` in bytes, (0, 0) where it is gone."""
    found = {"VmRSS:": 0, "RssAnon:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(maxsplit=1)[0] if line.strip() else ""
                if key in found:
                    found[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found["VmRSS:"], found["RssAnon:"]
