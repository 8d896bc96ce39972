"""Run the ORIGINAL SAILERX code (uci-cbcl/SAILERX, torch) on cells ``bench_models`` decoded.

Two halves:

* :func:`run_original` (called by ``bench_models`` in raymmi's interpreter) writes the cells in
  the layout the original's ``dataset.ChSplitDS`` reads (``data/<name>.h5``: ``pca/data`` the
  RNA PCA reference, ``atac`` CSR with ``chrom_size`` peaks per chromosome, ``cells/labels``,
  ``cells/rna_depth``, ``cells/batch``) and starts this file in ``--sailerx-python``;
* ``python jobs/_original_sailerx.py --src SRC --work DIR --name N --seed S ...`` imports
  ``trainer.PlTrainer`` from the checkout ``SRC``, builds it from ``train.py``'s own argument
  parser (its defaults: pos_w 20, gamma 6000, lambda 1, batch 200, lr 1e-4, weight decay 5e-4,
  z 50, 10 warm-up + 400 epochs, ``drop_last``), runs ``warm_up()`` and ``train()``, reloads
  the checkpoint ``eval.py`` would (``398.pt``, or the last saved) and writes
  ``PlTrainer.encode_latent()`` to ``DIR/embedding.npy``.

Nothing of the original lives in this repository. The aliases removed from numpy 1.24 that its
``__getitem__`` uses (``np.float``; ``np.bool`` where absent) are restored before it is
imported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

JOBS = Path(__file__).resolve().parent


def _chrom_sizes(peaks: list[str]) -> list[int]:
    """Peaks per chromosome, in feature order (names ``chr1:100-200`` or ``chr1-100-200``)."""
    sizes: list[int] = []
    last = None
    for name in peaks:
        chrom = name.replace("-", ":").split(":")[0]
        if chrom == last:
            sizes[-1] += 1
        else:
            sizes.append(1)
            last = chrom
    return sizes


def run_original(
    src: str,
    python: str,
    decoded: Any,
    *,
    seed: int,
    epochs: int | None,
    gamma: float | None,
    label_key: str = "cell_type",
) -> tuple[Any, float]:
    """Train the original on ``decoded``'s cells; its embedding (n_cells, 50) and seconds."""
    import h5py
    import numpy as np
    import scipy.sparse as sp

    arrays = decoded.data.arrays
    atac = sp.csr_matrix((np.asarray(arrays["atac"]) > 0).astype(np.float32))
    work = Path(tempfile.mkdtemp(prefix="bench_sailerx_orig_"))
    (work / "data").mkdir()
    peaks = list(decoded.plan.layout.dims.features["atac"])
    with h5py.File(work / "data" / "bench.h5", "w") as f:
        f.create_dataset("pca/data", data=np.asarray(arrays["rna_pca"], dtype=np.float32))
        g = f.create_group("atac")
        g.create_dataset("data", data=atac.data)
        g.create_dataset("indices", data=atac.indices)
        g.create_dataset("indptr", data=atac.indptr)
        g.attrs["shape"] = atac.shape
        g.create_dataset("chrom_size", data=np.asarray(_chrom_sizes(peaks)))
        f.create_dataset("cells/labels", data=np.asarray(decoded.obs[label_key], dtype="S"))
        f.create_dataset(
            "cells/rna_depth", data=np.asarray(decoded.obs["rna_depth"], dtype=np.float64)
        )
        f.create_dataset("cells/batch", data=np.asarray(arrays["batch"], dtype=np.int64))
    cmd = [
        python,
        str(JOBS / "_original_sailerx.py"),
        "--src",
        src,
        "--work",
        str(work),
        "--name",
        "bench",
        "--seed",
        str(seed),
    ]
    if epochs is not None:
        cmd += ["--max-epoch", str(epochs)]
    if gamma is not None:
        cmd += ["--gamma", str(gamma)]
    start = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (work / "log.txt").read_text()[-3000:]
        msg = f"the original SAILERX failed (exit {done.returncode}); its log ends:\n{tail}"
        raise RuntimeError(msg)
    return np.load(work / "embedding.npy"), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epoch", type=int, default=None)
    parser.add_argument("--gamma", type=float, default=None)
    ours = parser.parse_args(argv)
    import numpy as np
    import torch

    # aliases removed in numpy 1.24 that the original's Dataset uses (numpy 2 has np.bool again)
    for alias, value in (("float", float), ("bool", bool)):
        if alias not in np.__dict__:
            setattr(np, alias, value)
    torch.set_num_threads(1)  # as raymmi's one-worker run
    torch.manual_seed(ours.seed)
    np.random.seed(ours.seed)  # noqa: NPY002 (the original draws from the global state)
    os.chdir(ours.work)
    sys.path.insert(0, ours.src)
    train_argv = ["train.py", "-d", ours.name, "--name", ours.name, "-batch", "True"]
    if ours.max_epoch is not None:
        # its warm-up is 10 epochs inside warm_up(); max_epoch counts train()'s epochs
        train_argv += ["--max_epoch", str(ours.max_epoch), "--start_save", "0"]
    if ours.gamma is not None:
        train_argv += ["--GAMMA", str(ours.gamma)]
    args = _train_args(ours.src, train_argv)
    from trainer import PlTrainer

    solver = PlTrainer(args)
    solver.warm_up()
    solver.train()
    ckpts = sorted(
        (p for p in Path(solver.ckpt_dir).glob("*.pt") if p.stem.isdigit()),
        key=lambda p: int(p.stem),
    )
    chosen = next((p for p in ckpts if p.stem == "398"), ckpts[-1] if ckpts else None)
    if chosen is not None:
        solver.model.module.load_state_dict(
            torch.load(chosen, map_location="cpu", weights_only=True)
        )
    z = solver.encode_latent()
    np.save(Path(ours.work) / "embedding.npy", z.cpu().numpy())
    print(f"original SAILERX: {chosen.name if chosen else 'last weights'} encoded", flush=True)
    return 0


def _train_args(src: str, argv: list[str]) -> argparse.Namespace:
    """``train.py``'s own parser (its defaults), read from the checkout without running it."""
    import ast

    tree = ast.parse(Path(src, "train.py").read_text())
    parser = argparse.ArgumentParser()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            flags = [ast.literal_eval(a) for a in node.args]
            kwargs = {}
            for kw in node.keywords:
                if kw.arg == "type":
                    kwargs["type"] = {"int": int, "float": float, "str": str, "bool": _flag}[
                        kw.value.id
                    ]
                else:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
            parser.add_argument(*flags, **kwargs)
    return parser.parse_args(argv[1:])


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


if __name__ == "__main__":
    sys.exit(main())
