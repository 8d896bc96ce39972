"""Start or join Ray, and wait on tasks with a progress bar."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import ray
from tqdm.auto import tqdm

from raymmi.config import RayConfig
from raymmi.run._logs import quiet_driver, verbose, worker_log_env
from raymmi.schema import RaymmiError

# Every worker gets single-threaded BLAS: several workers share a node, and oversubscribed
# BLAS threads made a 600 x 1,134 PCA 150x slower on 2 cores (RAY_NOTES "Threads").
#
# Ray Train's controller collects a worker's report only when it polls, every 2 s by default,
# and a worker holds one report at a time: each epoch of a short run then waited up to 2 s, and
# a worker killed within 2 s of a checkpoint took that checkpoint's registration with it. Polling
# every 0.5 s cut `fit` of a 4-epoch, 0.13 s-per-epoch run from 25 s to 17 s here.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
_MAX_OBJECT_STORE = 8 << 30


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def init_ray(config: RayConfig | None = None) -> dict[str, Any]:
    """Connect to the configured Ray cluster, or start a local one sized to this machine.

    ``config.address`` wins, then ``RAY_ADDRESS`` (set by ``ray job submit``); otherwise a new
    local Ray (``address="local"``, never a stale cluster left by ``ray start``) with the
    object store capped at 25% of memory and 8 GiB. Calling it again is a no-op.

    Returns
    -------
    dict
        The cluster's resources (``{"CPU": ..., "memory": ...}``).
    """
    config = config or RayConfig()
    if ray.is_initialized():
        return ray.cluster_resources()
    address = config.address or os.environ.get("RAY_ADDRESS")
    quiet_driver()
    runtime_env = {"env_vars": {**WORKER_ENV, **worker_log_env()}}
    try:
        if address:
            # Inside `ray job submit` the job's runtime env (jobs/runtime_env.yaml) already
            # applies; Ray refuses a driver runtime env that repeats any of its keys.
            in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
            ray.init(
                address=address,
                runtime_env=None if in_job else runtime_env,
                logging_level=logging.WARNING,
                log_to_driver=verbose(),
            )
        else:
            store = config.object_store_mb
            store_bytes = store << 20 if store else min(_total_memory() // 4, _MAX_OBJECT_STORE)
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                object_store_memory=store_bytes,
                include_dashboard=False,
                runtime_env=runtime_env,
                logging_level=logging.WARNING,
                log_to_driver=verbose(),
            )
    except ConnectionError as err:
        msg = (
            f"cannot reach the Ray cluster at {address!r} ({err}); check --address / "
            "RAY_ADDRESS, or unset it to run on a local Ray"
        )
        raise RaymmiError(msg) from err
    return ray.cluster_resources()


def gather(refs: Sequence[ray.ObjectRef], *, desc: str, unit: str = "task") -> list[Any]:
    """Wait for ``refs`` with a progress bar; return their results in order.

    The first failure cancels the remaining tasks and is raised as the task's own exception
    (a :class:`RaymmiError` stays one).
    """
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit, disable=None) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[index[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = err.cause if isinstance(err.cause, BaseException) else err
                raise cause from None
            bar.update(1)
    return results
