"""Benchmark: training throughput of `raymmi train` and the per-row loader it replaces.

    python jobs/bench_train.py [--cells 20000] [--peaks 5000] [--epochs 2] [--smoke-test]

Generated multiome cells (``raymmi.testing``), preprocessed (RNA PCA as SAILERX's reference,
binarized ATAC, scaled HVGs, ATAC LSI). Three measurements, all on this machine, one process:

* ``ray train``: ``raymmi.run.train`` with one Ray Train worker, SAILERX and UMINT
  (``rna_hvg`` + ``atac_lsi``) at batch 200 and 1,024. Cells/s per worker and the share of the
  epoch spent waiting for the next batch (``data_wait_share``), from the last epoch.
* ``per-row``: the reference SAILERX design: a ``torch.utils.data.Dataset`` whose
  ``__getitem__`` densifies one cell's peaks (``csr[i].toarray()``), a ``DataLoader`` with
  ``num_workers=0`` and the default collate, the same SAILERX model and optimizer steps.
* ``per-batch``: the same plain loop, but batches decoded by raymmi's collate
  (``arrow_to_batch``: one scatter per mini-batch from the Parquet rows).

The ratio column is cells/s against ``per-row`` at the same batch size (goal >= 3x for
SAILERX).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raymmi import models, testing
from raymmi.cells import PreprocessCellsConfig
from raymmi.config import OptimConfig, RayConfig, TrackingConfig, TrainConfig, from_dict
from raymmi.io import open_shard_set
from raymmi.models._batches import arrow_to_batch
from raymmi.run import generate_cells, init_ray, preprocess_cells, train
from raymmi.run._train._driver import plan_training
from raymmi.schema import depth_column, lists_to_sparse

OFF = TrackingConfig(enabled=False)
SAILERX = {"z_dim": 20, "hidden": [256, 64], "chromosome_split": True}
UMINT = {"modalities": ["rna_hvg", "atac_lsi"], "widths": [64, 16], "bottleneck": 32}


def _data(root: Path, cells: int, peaks: int) -> str:
    spec = testing.CellSetSpec(
        n_cells=cells, n_genes=2000, n_peaks=peaks, chunk_size=min(cells, 10_000), seed=0
    )
    generate_cells(spec, out=str(root / "raw"), tracking=OFF)
    config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 30}}})
    preprocess_cells(config, source=str(root / "raw"), out=str(root / "pre"), tracking=OFF)
    return str(root / "pre")


def _train_config(data: str, out: Path, model: str, batch: int, epochs: int) -> TrainConfig:
    return TrainConfig(
        model_name=model,
        data=data,
        out=str(out),
        model=SAILERX if model == "sailerx" else UMINT,
        optim=OptimConfig(epochs=epochs, batch_size=batch, lr=1e-4),
        workers=1,
        val_fraction=0.0,
        impute=False,
        overwrite=True,
    )


def _ray_train(data: str, root: Path, model: str, batch: int, epochs: int) -> tuple[float, float]:
    metrics = train(
        _train_config(data, root / f"{model}-{batch}", model, batch, epochs), tracking=OFF
    )
    return float(metrics["cells_per_second"]), float(metrics["data_wait_share"])


def _loop(model: models.Model, batches, n_cells: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    model.train()
    kl_weight = models.kl_schedule(20, **models.annealing(model.config))  # epoch 20's weight
    tick = time.perf_counter()
    seen = 0
    for batch in batches:
        out = model.objective(batch, kl_weight=kl_weight)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        seen += len(next(iter(batch.values())))
    assert seen == n_cells
    return seen / (time.perf_counter() - tick)


class _PerRow(torch.utils.data.Dataset):
    """The reference design: one cell densified per ``__getitem__``."""

    def __init__(self, atac, reference, depths, batch_codes) -> None:
        self.atac, self.reference, self.depths, self.codes = atac, reference, depths, batch_codes

    def __len__(self) -> int:
        return self.atac.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "atac": torch.from_numpy(self.atac[i].toarray().ravel()),
            "rna_pca": torch.from_numpy(self.reference[i]),
            "atac_depth": torch.tensor(self.depths["atac"][i]),
            "rna_depth": torch.tensor(self.depths["rna"][i]),
            "batch": torch.tensor(self.codes[i]),
        }


def _plain_loops(data: str, batch: int) -> tuple[float, float]:
    config = _train_config(data, Path(tempfile.mkdtemp()), "sailerx", batch, 1)
    plan, shard, _ = plan_training(config)
    table = pa.concat_tables(pq.read_table(p) for p in shard.file_uris())
    n = table.num_rows
    # per-batch: raymmi's collate over Arrow slices
    torch.manual_seed(0)
    model = models.model_class("sailerx")(plan.model_config, plan.layout.dims)
    per_batch = _loop(
        model,
        (arrow_to_batch(table.slice(s, batch), plan.layout) for s in range(0, n, batch)),
        n,
    )
    # per-row: CSR in memory, one row densified per item
    full = arrow_to_batch(table.slice(0, 1), plan.layout)  # checks the columns
    del full
    atac = lists_to_sparse(
        table.column("atac_indices"),
        table.column("atac_values"),
        n_features=plan.layout.dims.n_features("atac"),
    )
    reference = arrow_to_batch(table.select(["rna_pca"]), _only(plan, "rna_pca"))["rna_pca"]
    depths = {m: table.column(depth_column(m)).to_numpy() for m in ("atac", "rna")}
    cats = plan.layout.dims.categories["batch"]
    codes = np.searchsorted(np.asarray(cats), np.asarray(table.column("batch").to_pylist()))
    loader = torch.utils.data.DataLoader(
        _PerRow(atac, reference.numpy(), depths, codes), batch_size=batch, num_workers=0
    )
    torch.manual_seed(0)
    model = models.model_class("sailerx")(plan.model_config, plan.layout.dims)
    per_row = _loop(model, loader, n)
    return per_row, per_batch


def _only(plan, modality: str):
    import dataclasses

    inputs = models.Inputs(modalities=(modality,))
    return dataclasses.replace(plan.layout, inputs=inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--peaks", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batches", default="200,1024")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.cells, args.peaks, args.epochs, args.batches = 1000, 600, 1, "200"
    torch.set_num_threads(1)
    init_ray(RayConfig())
    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = _data(root, args.cells, args.peaks)
    n = open_shard_set(data, kind="cells").manifest.num_rows
    print(f"{n} cells, {args.peaks} peaks; torch threads 1; one Ray Train worker\n")
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        per_row, per_batch = _plain_loops(data, batch)
        rows.append(("sailerx", batch, "per-row loader", per_row, None, 1.0))
        rows.append(("sailerx", batch, "per-batch collate", per_batch, None, per_batch / per_row))
        for model in ("sailerx", "umint"):
            speed, wait = _ray_train(data, root, model, batch, args.epochs)
            ratio = speed / per_row if model == "sailerx" else float("nan")
            rows.append((model, batch, "ray train (1 worker)", speed, wait, ratio))
    header = (
        f"{'model':8} {'batch':>5}  {'pipeline':22} {'cells/s':>9} {'data wait':>9} "
        f"{'x per-row':>9}"
    )
    print(header)
    print("-" * len(header))
    for model, batch, name, speed, wait, ratio in rows:
        shown = "" if wait is None else f"{wait:.0%}"
        print(f"{model:8} {batch:5d}  {name:22} {speed:9.0f} {shown:>9} {ratio:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
