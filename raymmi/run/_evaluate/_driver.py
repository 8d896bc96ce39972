"""``raymmi evaluate plates``: diagnostics of one or several ``plates`` shard sets, one report.

What runs where, per input shard set:

- **Distributed, every row** (one Ray task per plate, over its files): the negcon median
  profile and row counts of the plate, and a seeded sample of its wells.
- **Distributed, every row** (Ray Data ``map_batches``, fitted models broadcast through the
  object store): the 2-D embedding, GMM log-likelihood and held-out-batch classifier score of
  every well. The scores stream to the driver, which writes ``<set>_scores.parquet``.
- **Driver, plates x plates**: correlation of the negcon medians, suggested batches, outlier
  plates.
- **Driver, seeded sample** (sizes in the summary): the embedding and GMM fit (negcon wells),
  the held-out-batch classifiers (trained on the sample), batch metrics, UMAP and the feature
  heatmap; replicate mAP on *all* wells of a seeded sample of plates (replicates and same-plate
  negatives intact).

The report directory is staged in a hidden sibling and renamed into place when complete.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from raymmi import plots
from raymmi.config import RayConfig, TrackingConfig
from raymmi.io import claiming, open_shard_set
from raymmi.run._evaluate._checks import _check_inputs, _set_names
from raymmi.run._evaluate._one import _evaluate_one
from raymmi.run._evaluate._report import SUMMARY_METRICS, _write_report
from raymmi.run._evaluate._tasks import HELDOUT, SCORE
from raymmi.run._runtime import init_ray
from raymmi.schema import BATCH, RaymmiError
from raymmi.track import tracked_run

__all__ = ["HELDOUT", "SCORE", "SUMMARY_METRICS", "evaluate_plates", "summary_text"]

# the summary's columns worth a terminal line (every metric is in summary.csv and the report)
KEY_COLUMNS = (
    "set",
    "plate_profile",
    "plate_corr_within_batch",
    "plate_corr_between_batch",
    "suggested_batch_ari",
    "batch_asw",
    "ilisi",
    "map_mean",
    "heldout_auroc_mean",
)


def summary_text(summary: pd.DataFrame) -> str:
    """The key columns of an evaluation summary as a small table for the terminal."""
    shown = summary[[c for c in KEY_COLUMNS if c in summary.columns]]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


@claiming(
    lambda sources, *, out, overwrite=False, **_: {
        "uri": out,
        "inputs": list(sources),
        "overwrite": overwrite,
        "marker": "index.html",
    }
)
def evaluate_plates(
    sources: Sequence[str],
    *,
    out: str,
    batch_key: str = BATCH,
    label_key: str = "Metadata_Compound",
    sample: int = 5000,
    map_plates_per_batch: int = 4,
    umap_plates_per_batch: int = 2,
    top_n: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> pd.DataFrame:
    """Evaluate ``plates`` shard sets side by side and write one report.

    Typically raw and normalized versions of the same plates.

    Parameters
    ----------
    sources
        One or more ``plates`` shard sets holding the same plates (and, unless one is
        spherized, the same features).
    out
        Local report directory: ``index.html``, PNG figures, CSV tables, ``summary.csv`` and
        ``<set>_scores.parquet`` (every well's GMM log-likelihood and held-out score).
    batch_key
        Metadata column of the batch (``Metadata_Batch``).
    label_key
        Metadata column of the compound (``Metadata_Compound`` for generated plates, JUMP's
        ``Metadata_JCP2022``).
    sample
        Wells in the seeded sample per shard set, spread evenly over plates (at least 8 per
        plate, up to half of each plate's share negcon): embedding and GMM fit, classifier
        training, batch metrics, UMAP (negcon wells of every plate plus the treated wells of
        ``umap_plates_per_batch`` plates per batch), feature heatmap (300 of them).
    map_plates_per_batch
        Plates per batch (seeded) whose wells all enter the replicate mAP.
    umap_plates_per_batch
        Plates per batch (seeded) whose sampled treated wells are drawn over the negcon cloud.
    top_n
        Most and least outlying treated wells listed.
    seed
        Seed of every sample and fit; well samples are drawn by hashing plate/well ids, so the
        same wells are drawn from every input.
    overwrite
        Replace an existing ``out``.
    ray_config, tracking
        Where Ray runs; MLflow settings (one run, ``"evaluate plates"``).

    Returns
    -------
    pandas.DataFrame
        The summary: one row per input, one column per metric (also ``summary.csv``).

    Raises
    ------
    RaymmiError
        No sources; ``out`` exists without ``overwrite``; a set without negcon wells; a
        missing ``batch_key`` / ``label_key`` column; sets with different plates or features.
    """
    if not sources:
        msg = "evaluate plates needs at least one input shard set; pass IN..."
        raise RaymmiError(msg)
    for arg, value, low in (
        ("sample", sample, 16),
        ("map_plates_per_batch", map_plates_per_batch, 1),
        ("umap_plates_per_batch", umap_plates_per_batch, 1),
        ("top_n", top_n, 1),
    ):
        if value < low:
            msg = f"{arg}={value!r} must be at least {low}"
            raise RaymmiError(msg)
    if not (out.startswith("file://") or "://" not in out):
        msg = f"--out {out!r}: the report is written to a local directory; pass a local path"
        raise RaymmiError(msg)
    target = os.path.abspath(out.removeprefix("file://"))
    if os.path.exists(target) and not overwrite:
        msg = f"output {out!r} already exists; choose another --out or pass --overwrite"
        raise RaymmiError(msg)
    sets = [open_shard_set(src, kind="plates") for src in sources]
    _check_inputs(sets, batch_key=batch_key, label_key=label_key)
    names = _set_names(sources)
    init_ray(ray_config)
    config = {
        "sources": list(sources),
        "out": out,
        "batch_key": batch_key,
        "label_key": label_key,
        "sample": sample,
        "map_plates_per_batch": map_plates_per_batch,
        "umap_plates_per_batch": umap_plates_per_batch,
        "top_n": top_n,
        "seed": seed,
    }
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:12]}")
    os.makedirs(staging)
    try:
        with tracked_run("evaluate plates", config=config, tracking=tracking) as run:
            for s in sets:
                run.log_shard_set(s.uri, s.manifest.to_dict(), context="input")
            per_set: dict[str, dict[str, Any]] = {}
            files: dict[str, list[str]] = defaultdict(list)
            for name, s in zip(names, sets, strict=True):
                result = _evaluate_one(
                    name,
                    s,
                    staging=staging,
                    batch_key=batch_key,
                    label_key=label_key,
                    sample=sample,
                    map_plates_per_batch=map_plates_per_batch,
                    umap_plates_per_batch=umap_plates_per_batch,
                    top_n=top_n,
                    seed=seed,
                )
                per_set[name] = result
                for fig_name, fig in result["figures"].items():
                    png = f"{name}_{fig_name}.png"
                    fig.savefig(posixpath.join(staging, png), dpi=110)
                    files[name].append(png)
                for table_name, table in result["tables"].items():
                    csv = f"{name}_{table_name}.csv"
                    table.to_csv(posixpath.join(staging, csv), index=False)
                run.log_metrics(
                    {
                        f"{name}.{k}": v
                        for k, v in result["summary"].items()
                        if isinstance(v, int | float) and np.isfinite(v)
                    }
                )
            grid = plots.umap_grid(
                {n: r["umap"] for n, r in per_set.items()},
                title=f"UMAP of sampled wells (seed {seed}); colours = {batch_key}",
            )
            grid.savefig(posixpath.join(staging, "umap_grid.png"), dpi=100)
            files["umap"] = ["umap_grid.png"]
            summary = pd.DataFrame([r["summary"] for r in per_set.values()])
            summary.to_csv(posixpath.join(staging, "summary.csv"), index=False)
            _write_report(
                staging, summary, per_set, files, batch_key=batch_key, label_key=label_key
            )
            # the report's own layout, so index.html's links and images work inside MLflow;
            # the per-well score tables (one row per well) stay in the report folder only
            for entry in sorted(os.listdir(staging)):
                if not entry.endswith(".parquet"):
                    run.log_artifact(posixpath.join(staging, entry), "report")
            _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _commit(staging: str, target: str) -> None:
    """Move the staged report into place, replacing an old one only once the new is whole."""
    if os.path.exists(target):
        parent, base = os.path.split(target)
        old = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
