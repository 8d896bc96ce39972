"""The end of a ``raymmi train`` run: the embedding pass, its scores and plots.

One Ray task per input file (:func:`_embed_task`) writes the embedding (and imputations) as
parts of a ``cells`` shard set; a seeded sample of cells is scored (:func:`_scores`) and plotted
(:func:`_log_plots`).
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from raymmi import models
from raymmi.config import TrainConfig
from raymmi.io import PartWriter, ShardSet, resolve
from raymmi.models import arrow_to_batch
from raymmi.run._runtime import gather
from raymmi.run._train._plan import TrainPlan, split_mask
from raymmi.schema import (
    CELL_BATCH,
    CELL_ID,
    FileEntry,
    Modality,
    encode_matrix,
)
from raymmi.track import Run

EMBED_ROWS = 4096  # cells embedded at once in an output task


# ----------------------------------------------------------------------------------------------
# embeddings, imputations, scores
# ----------------------------------------------------------------------------------------------


# DEFAULT: never captured by a caller's placement group (a Tune trial's 0.1-CPU bundle could
# not fit a 1-CPU task: "cannot fit into any bundles"); Ray Data and Train schedule likewise.
@ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")
def _embed_task(
    path: str,
    plan: TrainPlan,
    state_dict: Mapping[str, torch.Tensor],
    metadata: tuple[str, ...],
    staging: str,
    index: int,
    impute: tuple[str, float] | None,
    sample_fraction: float,
    label_key: str | None,
) -> tuple[FileEntry | None, dict[str, np.ndarray]]:
    torch.set_num_threads(1)
    model = models.model_class(plan.model_name)(plan.model_config, plan.layout.dims)
    model.load_state_dict(state_dict)
    model.eval()
    fs, local = resolve(path)
    parquet = pq.ParquetFile(local, filesystem=fs)
    names = set(parquet.schema_arrow.names)
    keep = [c for c in (CELL_ID, *metadata) if c in names]
    columns = list(dict.fromkeys(keep + plan.layout.columns(names)))
    writer: PartWriter | None = None
    samples: dict[str, list[np.ndarray]] = {
        "embedding": [],
        "reference": [],
        "labels": [],
        "batch": [],
    }
    try:
        for record in parquet.iter_batches(batch_size=EMBED_ROWS, columns=columns):
            table = pa.Table.from_batches([record])
            with torch.no_grad():
                batch = arrow_to_batch(table, plan.layout)
                z = model.embed(batch).float().numpy()
                imputed = model.impute(batch) if impute else None
                reference = model.reference(batch)
            arrays = {c: table.column(c) for c in keep}
            arrays.update(encode_matrix(f"X_{plan.model_name}", z))
            for name, tensor in (imputed or {}).items():
                assert impute is not None
                fmt, threshold = impute
                arrays.update(
                    encode_matrix(
                        f"{name}_imputed", tensor.float().numpy(), fmt=fmt, threshold=threshold
                    )
                )
            out = pa.table(arrays)
            if writer is None:
                writer = PartWriter(staging, f"part-{index:05d}.parquet", out.schema)
            writer.write(out)
            pick = split_mask(table.column(CELL_ID), sample_fraction, 7)
            samples["embedding"].append(z[pick])
            if reference is not None:
                samples["reference"].append(reference.float().numpy()[pick])
            if label_key is not None:
                labels = table.column(label_key) if label_key in table.column_names else None
                if labels is not None:
                    samples["labels"].append(np.asarray(labels.to_pylist(), dtype=object)[pick])
                if CELL_BATCH in table.column_names:  # for the plots' by-batch panels
                    batch = table.column(CELL_BATCH).to_pylist()
                    samples["batch"].append(np.asarray(batch, dtype=object)[pick])
    finally:
        entry = writer.close() if writer is not None else None
    return entry, {k: np.concatenate(v) for k, v in samples.items() if v}


@dataclasses.dataclass
class _Embedded:
    entries: list[FileEntry]
    samples: dict[str, np.ndarray]
    scores: dict[str, Any]
    metadata: tuple[str, ...]
    modalities: tuple[Modality, ...]


def _embed(
    config: TrainConfig,
    plan: TrainPlan,
    shard: ShardSet,
    state_dict: Mapping[str, torch.Tensor],
    staging: str,
) -> _Embedded:
    """Embed (and impute) every cell, one task per input file; score a seeded sample."""
    metadata = tuple(shard.manifest.metadata)
    label_key = config.label_key
    if label_key is not None and label_key not in metadata:
        metadata = (*metadata, label_key)
    fraction = min(1.0, config.metrics_max_cells / max(1, shard.manifest.num_rows))
    impute = (config.impute_format, config.impute_threshold) if config.impute else None
    state_ref: Any = ray.put(dict(state_dict))
    refs = [
        _embed_task.remote(
            path, plan, state_ref, metadata, staging, i, impute, fraction, label_key
        )
        for i, path in enumerate(shard.file_uris())
    ]
    results = gather(refs, desc=f"embed ({plan.model_name})", unit="file")
    entries = [e for e, _ in results if e is not None]
    samples = {
        key: np.concatenate([s[key] for _, s in results if key in s])
        for key in ("embedding", "reference", "labels", "batch")
        if any(key in s for _, s in results)
    }
    width = int(samples["embedding"].shape[1])
    modalities = [Modality(f"X_{plan.model_name}", "dense", tuple(f"z{i}" for i in range(width)))]
    columns = set(_part_columns(staging, entries[0])) if entries else set()
    for name in plan.layout.inputs.modalities:
        imputed = Modality(
            f"{name}_imputed",
            "sparse" if config.impute_format == "sparse" else "dense",
            plan.layout.dims.features[name],
        )
        if set(imputed.columns()) <= columns:
            modalities.append(imputed)
    return _Embedded(
        entries=entries,
        samples=samples,
        scores=_scores(samples, label_key),
        metadata=metadata,
        modalities=tuple(modalities),
    )


def _part_columns(staging: str, entry: FileEntry) -> list[str]:
    fs, base = resolve(staging)
    return pq.read_schema(posixpath.join(base, entry.path), filesystem=fs).names


def _scores(samples: Mapping[str, np.ndarray], label_key: str | None) -> dict[str, Any]:
    """ARI/NMI (k-means with k = number of labels) and silhouette, model and reference."""
    if label_key is None or "labels" not in samples or len(samples["labels"]) < 3:
        return {}
    from sklearn.cluster import KMeans
    from sklearn.metrics import (
        adjusted_rand_score,
        normalized_mutual_info_score,
        silhouette_score,
    )

    labels = samples["labels"].astype(str)
    k = len(np.unique(labels))
    out: dict[str, Any] = {"clustering": f"kmeans(k={k}, n_init=10, seed=0)"}
    out["metric_cells"] = len(labels)
    for prefix, key in (("", "embedding"), ("reference_", "reference")):
        if key not in samples or len(samples[key]) != len(labels) or k < 2:
            continue
        x = np.asarray(samples[key], dtype=np.float64)
        clusters = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x)
        out[f"{prefix}ari"] = float(adjusted_rand_score(labels, clusters))
        out[f"{prefix}nmi"] = float(normalized_mutual_info_score(labels, clusters))
        out[f"{prefix}silhouette"] = float(silhouette_score(x, labels, random_state=0))
    return out


def _log_plots(run: Run, history: pd.DataFrame, samples: Mapping[str, np.ndarray]) -> None:
    if not run.enabled:
        return
    from raymmi import plots

    if not history.empty:
        run.log_figure(plots.loss_curves(history), "train/loss_curves.png")
        run.log_table(history, "train/history.csv")
    if "labels" in samples and len(samples.get("embedding", ())) >= 10:
        figure = plots.embedding_scatter(
            {
                name: samples[key]
                for name, key in (("model", "embedding"), ("reference", "reference"))
                if key in samples and len(samples[key]) == len(samples["labels"])
            },
            list(samples["labels"].astype(str)),
            batch=(
                list(samples["batch"].astype(str))
                if len(samples.get("batch", ())) == len(samples["labels"])
                else None
            ),
        )
        run.log_figure(figure, "train/embedding.png")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
