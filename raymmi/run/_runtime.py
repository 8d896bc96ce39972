"""Start or join Ray, and wait on tasks with a progress bar."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import ray
from tqdm.auto import tqdm

from raymmi.config import RayConfig
from raymmi.run._logs import quiet_driver, verbose, worker_log_env
from raymmi.schema import RaymmiError

T = TypeVar("T")

# Every worker gets single-threaded BLAS: several workers share a node, and oversubscribed
# BLAS threads made a 600 x 1,134 PCA 150x slower on 2 cores (raymmi/run/README.md, "Threads").
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
    if address:
        check_reachable(address)
    try:
        if address:
            # Inside `ray job submit` the job's runtime env (jobs/runtime_env.yaml) already
            # applies; Ray refuses a driver runtime env that repeats any of its keys.
            in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
            # A driver joining a cluster on this machine's loopback (a local Ray of another
            # raymmi process, a test's session) must see itself on 127.0.0.1 too: otherwise Ray
            # resolves the address to the node's IP, where nothing listens, and retries forever.
            joins_loopback = _is_loopback(address)
            with _loopback_only() if joins_loopback else contextlib.nullcontext():
                ray.init(
                    address=address,
                    runtime_env=None if in_job else runtime_env,
                    logging_level=logging.WARNING,
                    log_to_driver=verbose(),
                )
        else:
            store = config.object_store_mb
            store_bytes = store << 20 if store else min(_total_memory() // 4, _MAX_OBJECT_STORE)
            with _loopback_only():
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


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start a local Ray whose every port (GCS, raylet, agents, metrics) binds to 127.0.0.1.

    Ray picks the node's address with ``get_node_ip_address``, which returns the loopback
    address when ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is false (Ray's own switch for
    single-machine platforms); ``ray.init(_node_ip_address="127.0.0.1")`` does not do it (Ray
    resolves a loopback address back to the node's IP). The switch is set for the start only and
    passed to Ray's processes through ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; a run joining a
    cluster (``--address``) is never touched. Measured with ``ss -ltnp``: without it the metrics
    exporter and the dashboard agent listened on 0.0.0.0 and GCS/raylet on every interface.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_value, old_env = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(name)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[name] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_value
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env


def _is_loopback(address: str) -> bool:
    """Whether ``address`` names a cluster that listens on this machine's loopback only.

    True for a ``127.x`` / ``localhost`` / ``::1`` address whose port does not answer on the
    node's own IP (a cluster started by :func:`init_ray`, or by ``ray start`` with
    ``--node-ip-address 127.0.0.1``). A cluster on every interface reached through 127.0.0.1
    registers its raylet at the node's IP, so the driver keeps Ray's own choice there.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    if not loopback:
        return False
    from ray._private.services import get_node_ip_address

    try:
        with socket.create_connection((get_node_ip_address(), int(port)), 1.0):
            return False
    except (OSError, ValueError):
        return True


def check_reachable(address: str, *, timeout: float = 3.0) -> None:
    """Refuse, within ``timeout`` seconds, a cluster address nothing listens on.

    ``host:port`` and ``ray://host:port`` are probed with one TCP connection (Ray itself retries
    an unreachable GCS for minutes); ``auto`` and other forms are left to Ray.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout):
            return
    except OSError as err:
        reason = err.strerror or type(err).__name__
        msg = (
            f"cannot reach the Ray cluster at {address!r} ({reason}); check --address / "
            "RAY_ADDRESS (the head's host:port, e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001), or "
            "unset it to run on a local Ray"
        )
        raise RaymmiError(msg) from None


# Ray versions (major.minor) whose private GCS state accessor (``ray._private.state``) the
# placement-group reaper of ``raymmi tune`` was checked against; tests/test_ray_private.py
# fails on any other installed Ray, so an upgrade re-checks it instead of breaking silently.
PRIVATE_STATE_CHECKED = ("2.60",)


def check_private_state_api() -> None:
    """Raise ``RuntimeError`` unless the private state API was checked on the installed Ray."""
    import ray

    version = ".".join(ray.__version__.split(".")[:2])
    if version not in PRIVATE_STATE_CHECKED:
        msg = (
            f"ray {ray.__version__}: the placement-group reaper reads ray._private.state, "
            f"checked on ray {', '.join(PRIVATE_STATE_CHECKED)} only; re-check it "
            "(tests/test_ray_private.py) and add the version to PRIVATE_STATE_CHECKED"
        )
        raise RuntimeError(msg)


def cancel(refs: Sequence[ray.ObjectRef], *, wait_s: float = 10.0) -> None:
    """Force-cancel ``refs`` and wait (up to ``wait_s``) until they have stopped.

    A failing stage removes its staging folder next; a cancelled task still finishing its part
    file would otherwise write into the folder again after the removal.
    """
    refs = list(refs)
    for ref in refs:
        ray.cancel(ref, force=True)
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=wait_s)


def stream(
    submit: Callable[[T], ray.ObjectRef],
    items: Sequence[T],
    *,
    max_in_flight: int | None,
    desc: str,
    unit: str = "task",
) -> Iterator[tuple[T, Any]]:
    """Run ``submit(item)`` for every item, at most ``max_in_flight`` at once; yield results.

    Yields ``(item, result)`` as tasks finish (not in order), so the driver can reduce them
    without holding them all, and submits the next item as one finishes, so task arguments
    in flight do not grow with the data set (``None``: submit everything at once). The first
    failure cancels the tasks in flight, submits no more, and is raised as the task's own
    exception (a :class:`RaymmiError` stays one).
    """
    todo = iter(items)
    limit = len(items) if max_in_flight is None else max(1, max_in_flight)
    pending: dict[ray.ObjectRef, T] = {}
    for item in itertools.islice(todo, limit):
        pending[submit(item)] = item
    with tqdm(total=len(items), desc=desc, unit=unit, disable=None) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                value = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cancel(list(pending))
                cause = err.cause if isinstance(err.cause, BaseException) else err
                raise cause from None
            for following in itertools.islice(todo, 1):
                pending[submit(following)] = following
            bar.update(1)
            yield item, value
            del value  # one result at a time in driver memory


def gather(refs: Sequence[ray.ObjectRef], *, desc: str, unit: str = "task") -> list[Any]:
    """Wait for ``refs`` with a progress bar; return their results in order.

    The first failure cancels the remaining tasks and is raised as the task's own exception
    (a :class:`RaymmiError` stays one).
    """
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    for ref, value in stream(lambda r: r, refs, max_in_flight=None, desc=desc, unit=unit):
        results[index[ref]] = value
    return results
