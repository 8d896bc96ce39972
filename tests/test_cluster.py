"""A real 2-node Ray cluster on loopback (cluster/local.sh) receiving `ray job submit`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raymmi.io import open_shard_set

ROOT = Path(__file__).resolve().parents[1]
PORT = 6470  # away from Ray's defaults and from local.sh's default, so a user's cluster survives
CHECK_NODES = (
    "import ray; ray.init(); "
    "alive = [n for n in ray.nodes() if n['Alive']]; "
    "print('nodes alive:', len(alive)); assert len(alive) == 2, alive"
)


@pytest.fixture
def local_cluster():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    script = str(ROOT / "cluster" / "local.sh")
    subprocess.run([script, "stop", "--port", str(PORT)], env=env, check=True, timeout=120)
    started = subprocess.run(
        [script, "start", "--port", str(PORT), "--workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield env, f"http://127.0.0.1:{PORT + 2000}"
    finally:
        subprocess.run([script, "stop", "--port", str(PORT)], env=env, timeout=120)


@pytest.mark.cluster
def test_job_submitted_to_two_node_cluster(tmp_path, local_cluster):
    env, dashboard = local_cluster
    env = {**env, "RAY_AUTH_MODE": "token"}
    out = tmp_path / "smoke"
    job = f"python jobs/stage.py generate plates --smoke-test --out {out}"
    entrypoint = f'python -c "{CHECK_NODES}" && {job}'
    submitted = subprocess.run(
        [
            "ray",
            "job",
            "submit",
            "--address",
            dashboard,
            "--working-dir",
            str(ROOT),
            "--runtime-env",
            str(ROOT / "jobs" / "runtime_env.yaml"),
            "--",
            "bash",
            "-c",
            entrypoint,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-4000:]
    assert "nodes alive: 2" in log
    assert "succeeded" in log
    shard_set = open_shard_set(str(out / "plates"))
    assert shard_set.manifest.num_rows == 2 * 96
    assert shard_set.manifest.producer["command"] == "generate plates"
    assert shard_set.verify() == []
