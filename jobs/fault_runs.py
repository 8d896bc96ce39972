"""Three fault runs against ``raymmi normalize``: a killed worker, a killed driver, two writers.

1. **Killed Ray worker**: a normalize run whose task worker is killed (SIGKILL) mid-run; Ray
   retries the task and the output's part files are byte-identical to an undisturbed run.
2. **Killed driver**: a ``--overwrite`` run killed (SIGKILL) once its staging folder exists; the
   old output is still whole, and the next run on that destination takes over the dead lock,
   removes the dead staging folder, says so, and commits.
3. **Two writers**: two runs started together on one ``--out``; one commits, the other is
   refused at once naming the holder's pid.

Every run is a ``raymmi`` subprocess with its own local Ray; only processes this script started
are killed (found among the driver's descendants).

    python jobs/fault_runs.py [--work DIR] [--plates 24] [--features 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raymmi.testing import cmdline, descendants

RAYMMI = [sys.executable, "-m", "raymmi.cli"]


def parts(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "_manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["files"]}


def normalize(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        *RAYMMI,
        "normalize",
        str(src),
        "--out",
        str(out),
        "--no-track",
        "--num-cpus",
        "2",
        "--object-store-mb",
        "256",
        *extra,
    ]


def run(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def task_workers(driver: int) -> list[tuple[int, str]]:
    """Ray workers under ``driver`` running a task (not idle, not Ray's agents): (pid, title)."""
    found = []
    for pid in descendants(driver):
        name = cmdline(pid)
        if name.startswith("ray::") and not name.startswith(
            ("ray::IDLE", "ray::DashboardA", "ray::RuntimeEnv")
        ):
            found.append((pid, name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work")
    parser.add_argument("--plates", type=int, default=24)
    parser.add_argument("--features", type=int, default=200)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="raymmi-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "plates"
    if not (src / "_manifest.json").exists():
        code, msg = run(
            [
                *RAYMMI,
                "generate",
                "plates",
                "--out",
                str(src),
                "--plates",
                str(args.plates),
                "--features",
                str(args.features),
                "--no-track",
                "--num-cpus",
                "2",
                "--object-store-mb",
                "256",
            ]
        )
        assert code == 0, msg
    rows = []

    # 1. killed worker ---------------------------------------------------------------------------
    ref = work / "reference"
    if not (ref / "_manifest.json").exists():
        code, msg = run(normalize(src, ref))
        assert code == 0, msg
    killed_out = work / "killed_worker"
    driver = subprocess.Popen(
        normalize(src, killed_out, "--overwrite"), stderr=subprocess.PIPE, text=True
    )
    victim = None
    deadline = time.time() + 600
    while victim is None and driver.poll() is None and time.time() < deadline:
        busy = task_workers(driver.pid)
        if busy:
            victim = busy[0]
            os.kill(victim[0], signal.SIGKILL)
        time.sleep(0.05)
    driver.communicate(timeout=900)
    same = driver.returncode == 0 and parts(killed_out) == parts(ref)
    rows.append(
        (
            "killed Ray worker mid-normalize",
            f"killed pid {victim[0] if victim else None} ({victim[1][:40] if victim else '-'})",
            f"exit {driver.returncode}; part files byte-identical to an undisturbed run: {same}",
        )
    )

    # 2. killed driver ---------------------------------------------------------------------------
    target = work / "killed_driver"
    if not (target / "_manifest.json").exists():
        code, msg = run(normalize(src, target))
        assert code == 0, msg
    before = parts(target)
    driver = subprocess.Popen(
        normalize(src, target, "--overwrite", "--method", "robustize"), stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None:
        staged = list(work.glob(".killed_driver.tmp-*"))
        if staged and any(staged[0].rglob("*.parquet")):
            break
        time.sleep(0.05)
    # kill the driver and everything it started (its own Ray), by pid
    tree = descendants(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    for child in tree:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    driver.wait()
    leftovers = sorted(p.name for p in work.iterdir() if p.name.startswith(".killed_driver."))
    intact = parts(target) == before
    done = subprocess.run(
        normalize(src, target, "--overwrite", "--method", "robustize"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    notes = [
        ln.removeprefix("raymmi: note: ")
        for ln in done.stderr.splitlines()
        if ln.startswith("raymmi: note:")
    ]
    after = sorted(p.name for p in work.iterdir() if p.name.startswith(".killed_driver."))
    rows.append(
        (
            "killed driver during an --overwrite run",
            f"left {leftovers}; old output intact: {intact}",
            f"next run exit {done.returncode}, said: {' / '.join(notes)}; "
            f"leftovers after: {after or 'none'}",
        )
    )

    # 3. two writers -----------------------------------------------------------------------------
    both = work / "two_writers"
    procs = [
        subprocess.Popen(normalize(src, both, "--overwrite"), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900)[1] for p in procs]
    codes = [p.returncode for p in procs]
    refused = [o.strip().splitlines()[-1] for o, c in zip(outs, codes, strict=True) if c == 2]
    rows.append(
        (
            "two writers to one --out",
            f"exit codes {codes}",
            refused[0][:200] if refused else "none refused",
        )
    )

    for name, what, result in rows:
        print(f"| {name} | {what} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
