"""Ray and MLflow settings every stage takes: ``RayConfig``, ``TrackingConfig``."""

from __future__ import annotations

import dataclasses

from raymmi.schema import RaymmiError


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Where and how Ray runs.

    Parameters
    ----------
    address
        ``None``: ``RAY_ADDRESS`` if set, else a local Ray started on demand. Otherwise a
        cluster address (``ray://host:10001``, ``host:6379`` or ``auto``).
    num_cpus
        CPUs of the local Ray (default: all cores). Ignored when joining a cluster.
    object_store_mb
        Object store of the local Ray in MiB (default: 25% of memory, at most 8 GiB).
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_mb: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus is not None and (
            isinstance(self.num_cpus, bool)
            or not isinstance(self.num_cpus, int)
            or self.num_cpus < 1
        ):
            msg = (
                f"--num-cpus {self.num_cpus!r}: a local Ray needs at least 1 CPU to run any "
                "task; give --num-cpus 1 or more, or leave it out to use every core"
            )
            raise RaymmiError(msg)
        if self.object_store_mb is not None and (
            not isinstance(self.object_store_mb, int) or self.object_store_mb < 80
        ):
            msg = (
                f"--object-store-mb {self.object_store_mb!r}: Ray's object store needs at least "
                "80 MiB (75 MiB is Ray's floor); give more, or leave it out (25% of memory)"
            )
            raise RaymmiError(msg)
        if self.address is not None and not str(self.address).strip():
            msg = "--address is empty; give the head's host:port, or leave it out"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings: ``uri`` ``None`` means ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``."""

    uri: str | None = None
    experiment: str = "raymmi"
    enabled: bool = True
