"""One Ray instance and one MLflow store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raymmi import testing


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    if not testing.has_shared_data(rel):
        pytest.skip(f"real data ../shared/data/{rel} is not here (fresh clone without shared/)")
    return testing.shared_data(rel)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """Every run of the session goes to one SQLite store, created once (raymmi/run/README.md, "MLflow")."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def ray_session():
    """The session's single local Ray (2 CPUs, small object store); started on first use."""
    import ray

    from raymmi.config import RayConfig
    from raymmi.run import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(RayConfig(num_cpus=2, object_store_mb=512))
    yield ray
    ray.shutdown()


def imports(module: str) -> bool:
    """Whether ``module`` imports here (PyPI's torchvision fails beside torch 2.13.0+cpu)."""
    try:
        __import__(module)
    except Exception:
        return False
    return True
