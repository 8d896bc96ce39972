"""``raymmi evaluate plates`` on one shard set: plate matrix, sample fits, scores, mAP."""

from __future__ import annotations

import math
import posixpath
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raymmi import metrics as M
from raymmi import plates as D
from raymmi import plots
from raymmi.io import ShardSet
from raymmi.run._datasets import read_dataset
from raymmi.run._evaluate._tasks import (
    _KEYS,
    HELDOUT,
    SCORE,
    _plate_pass,
    _score_fn,
    _whole_plate,
)
from raymmi.run._runtime import gather
from raymmi.schema import NEGCON, PLATE, SITE, WELL, FileEntry, RaymmiError

# --- one shard set -----------------------------------------------------------------------------


def _choose_plates(plate_batch: Mapping[str, str], per_batch: int, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    by_batch: dict[str, list[str]] = defaultdict(list)
    for plate, b in sorted(plate_batch.items()):
        by_batch[b].append(plate)
    chosen: set[str] = set()
    for b in sorted(by_batch):
        plates = by_batch[b]
        chosen.update(rng.permutation(plates)[:per_batch].tolist())
    return chosen


def _plate_profile(manifest: Any, negcon_medians: Sequence[np.ndarray]) -> str:
    """Which wells' per-plate medians the plate correlation uses: ``negcon`` or ``treated``.

    After per-plate normalization against the plate's own negative controls (``raymmi
    normalize --reference negcon``, or any set whose negcon medians are all zero) those
    medians are zero by construction: their correlation is noise (standardize) or undefined
    (mad_robustize). The treated wells' medians still carry what differs between plates.
    """
    producer = manifest.producer or {}
    config = producer.get("config") or {}
    if producer.get("command") == "normalize" and config.get("reference", "negcon") == "negcon":
        return "treated"
    values = [np.nan_to_num(np.abs(v), nan=0.0) for v in negcon_medians]
    if values and max(float(v.max(initial=0.0)) for v in values) < 1e-6:
        return "treated"
    return "negcon"


def _evaluate_one(
    name: str,
    shard_set: ShardSet,
    *,
    staging: str,
    batch_key: str,
    label_key: str,
    sample: int,
    map_plates_per_batch: int,
    umap_plates_per_batch: int,
    top_n: int,
    seed: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    m = shard_set.manifest
    features = list(m.features)
    meta = [c for c in dict.fromkeys([*(_KEYS), batch_key, label_key, NEGCON]) if c in m.metadata]
    by_plate: dict[str, list[FileEntry]] = defaultdict(list)
    for entry in m.files:
        by_plate[entry.plate or ""].append(entry)
    quota = max(8, math.ceil(sample / max(1, len(by_plate))))
    refs = [
        _plate_pass.remote(shard_set, p, fs, meta + features, quota, seed, batch_key)
        for p, fs in by_plate.items()
    ]
    results = gather(refs, desc=f"{name}: plate medians", unit="plate")
    notes: list[str] = []
    negcon_rows = sum(r["negcon_rows"] for r in results)
    if negcon_rows == 0:
        msg = (
            f"input {shard_set.uri!r} has no negcon rows ({NEGCON} is False everywhere); "
            "re-ingest with --negcon QUERY marking the negative-control wells"
        )
        raise RaymmiError(msg)
    profile = _plate_profile(m, [r["median"] for r in results if r["median"] is not None])
    key = "median" if profile == "negcon" else "treated_median"
    if profile == "treated":
        notes.append(
            "plate correlation on the per-plate medians of treated wells: this set was "
            "normalized against each plate's negative controls, so their medians are zero "
            "by construction and say nothing about plates"
        )
    without = sorted(r["plate"] for r in results if r[key] is None)
    if without:
        notes.append(
            f"{len(without)} plate(s) without negcon wells left out of the plate matrix: "
            f"{without[:10]}"
        )
    split = sorted(r["plate"] for r in results if r["batches_in_plate"] > 1)
    if split:
        notes.append(f"plates spanning several {batch_key} values (majority used): {split[:10]}")
    plate_batch = pd.Series({r["plate"]: r["batch"] for r in results}, name=batch_key)
    n_batches = plate_batch.nunique()

    # plates x plates on the driver
    medians = pd.DataFrame(
        np.stack([r[key] for r in results if r[key] is not None]),
        index=[r["plate"] for r in results if r[key] is not None],
        columns=features,
    )
    out: dict[str, Any] = {"set": name, "uri": shard_set.uri, "plates": len(results)}
    out["plate_profile"] = f"{profile} median"
    out.update(
        wells=sum(r["rows"] for r in results),
        negcon_wells=negcon_rows,
        features=len(features),
        batches=int(n_batches),
    )
    figures: dict[str, Any] = {}
    tables: dict[str, pd.DataFrame] = {}
    if len(medians) >= 2:
        corr = D.plate_correlation(medians)
        same = plate_batch.reindex(corr.index).to_numpy()
        pair = same[:, None] == same[None, :]
        off = ~np.eye(len(corr), dtype=bool)
        c = corr.to_numpy()
        out["plate_corr_within_batch"] = (
            float(np.nanmean(c[pair & off])) if (pair & off).any() else float("nan")
        )
        out["plate_corr_between_batch"] = (
            float(np.nanmean(c[~pair])) if (~pair).any() else float("nan")
        )
        suggested = D.suggest_batches(corr, n_batches=n_batches if n_batches >= 2 else None)
        out["suggested_batches"] = int(suggested.nunique())
        out["suggested_batch_ari"] = (
            D.batch_recovery(suggested, plate_batch) if n_batches >= 2 else float("nan")
        )
        outliers = D.outlier_plates(corr)
        out["outlier_plates"] = int(outliers["outlier"].sum())
        tables["plate_correlation"] = corr.reset_index(names="plate")
        tables["plate_batches"] = pd.DataFrame(
            {
                "plate": corr.index,
                batch_key: plate_batch.reindex(corr.index).to_numpy(),
                "suggested_batch": suggested.to_numpy(),
            }
        )
        tables["outlier_plates"] = outliers
        figures["plate_corr_by_plate"] = plots.plate_heatmap(
            corr, batch=plate_batch, order="plate", title=f"{name}: plate correlation by plate"
        )
        figures["plate_corr_by_batch"] = plots.plate_heatmap(
            corr, batch=plate_batch, order="batch", title=f"{name}: plate correlation by batch"
        )
    else:
        notes.append("fewer than 2 plates with negcon wells: no plate correlation matrix")

    # fits on the seeded sample
    smp = pd.concat([r["sample"] for r in results], ignore_index=True)
    xs = smp[features].to_numpy(dtype=np.float64)
    neg = smp[NEGCON].fillna(False).astype(bool).to_numpy()
    sb = smp[batch_key].astype(str).to_numpy()
    out["sample_wells"] = len(smp)
    out["sample_negcon_wells"] = int(neg.sum())
    embedding = D.fit_embedding(xs[neg])
    gmm = D.fit_gmm(embedding.transform(xs[neg]), seed=seed)
    out["gmm_components"] = int(gmm.n_components)
    models: dict[str, Any] = {}
    if len(np.unique(sb)) >= 2:
        try:
            models = D.heldout_batch_models(xs, neg, sb, seed=seed)
        except ValueError as err:
            notes.append(f"held-out-batch check skipped: {err}")
    else:
        notes.append(
            f"held-out-batch check skipped: {batch_key} has {len(np.unique(sb))} value(s); it "
            "needs at least 2 batches"
        )
    out["heldout_auroc_mean"] = float("nan")

    # distributed scoring of every well, streamed to the driver and written there
    ref = ray.put({"embedding": embedding, "gmm": gmm, "models": models})
    score = _score_fn(ref, features, meta, batch_key)
    ds = read_dataset(shard_set, columns=meta + features).map_batches(score, batch_format="pandas")
    path = posixpath.join(staging, f"{name}_scores.parquet")
    parts = []
    writer: pq.ParquetWriter | None = None
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=65536):
            table = batch if isinstance(batch, pa.Table) else pa.table(batch)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            parts.append(table)
    finally:
        if writer is not None:
            writer.close()
    scores = pa.concat_tables(parts).to_pandas()
    is_neg = scores[NEGCON].to_numpy(dtype=bool)
    threshold = float(np.nanpercentile(scores.loc[is_neg, SCORE], 1))
    treated = scores[~is_neg]
    out["treated_outlier_fraction"] = float((treated[SCORE] < threshold).mean())
    shown = [c for c in (PLATE, WELL, SITE, batch_key, label_key, SCORE) if c in scores.columns]
    ranked = treated.sort_values(SCORE, kind="stable")
    tables["top_outlier_wells"] = ranked.head(top_n)[shown].reset_index(drop=True)
    tables["least_outlying_wells"] = ranked.tail(top_n)[shown].iloc[::-1].reset_index(drop=True)
    if models:
        auroc = D.heldout_auroc(
            scores[HELDOUT].to_numpy(),
            is_neg,
            scores[batch_key].astype(str).to_numpy(),
            batches=sorted(models),
        )
        tables["heldout_auroc"] = auroc
        out["heldout_auroc_mean"] = float(auroc["auroc"].mean())
    shown_neg = scores[is_neg].sample(n=min(5000, int(is_neg.sum())), random_state=seed)
    shown_trt = treated.sample(n=min(5000, len(treated)), random_state=seed)
    figures["outliers"] = plots.outlier_plot(
        shown_neg[["pc1", "pc2"]].to_numpy(),
        shown_trt[["pc1", "pc2"]].to_numpy(),
        shown_trt[SCORE].to_numpy(),
        scores.loc[is_neg, SCORE].to_numpy(),
        threshold=threshold,
        title=(
            f"{name}: Gaussian mixture of {gmm.n_components} "
            f"component{'s' if gmm.n_components != 1 else ''} fitted on negcon wells, "
            "every well scored"
        ),
    )

    # batch metrics on the sample (PCA of z-scored features)
    pcs = D.pca_embedding(xs, n_components=50)
    labels = smp[label_key].astype(str).to_numpy()
    multi = len(np.unique(sb)) >= 2
    out["batch_silhouette_negcon"] = M.batch_silhouette(pcs[neg], sb[neg]) if multi else np.nan
    out["batch_asw"] = M.batch_asw(pcs, sb, labels) if multi else float("nan")
    out["ilisi"] = M.ilisi(pcs, sb, perplexity=min(30.0, (len(smp) - 1) / 3)) if multi else np.nan
    out["batch_kmeans_ari"] = M.kmeans_ari(pcs, sb, seed=seed) if multi else float("nan")
    out["graph_connectivity"] = M.graph_connectivity(pcs, labels)

    # replicate mAP on every well of a seeded choice of plates per batch
    map_plates = sorted(_choose_plates(dict(plate_batch), map_plates_per_batch, seed))
    refs = [_whole_plate.remote(shard_set, by_plate[p], meta + features) for p in map_plates]
    full = pd.concat(gather(refs, desc=f"{name}: mAP plates", unit="plate"), ignore_index=True)
    out["map_wells"] = len(full)
    out["map_plates"] = len(map_plates)
    try:
        _, maps = M.replicate_map(
            full[features].to_numpy(dtype=np.float64),
            full,
            label_key=label_key,
            negcon=full[NEGCON].fillna(False).astype(bool).to_numpy(),
            plate_key=PLATE,
            seed=seed,
        )
        out["map_mean"] = float(maps["mean_average_precision"].mean())
        out["map_retrieved_fraction"] = float(maps["below_corrected_p"].mean())
        tables["map_per_compound"] = maps.sort_values("mean_average_precision", ascending=False)
    except ValueError as err:
        notes.append(f"mAP skipped: {err}")
        out["map_mean"] = out["map_retrieved_fraction"] = float("nan")

    # UMAP: negcon sample of every plate; treated wells of a few plates per batch
    umap_plates = _choose_plates(dict(plate_batch), umap_plates_per_batch, seed + 1)
    keep = neg | smp[PLATE].astype(str).isin(umap_plates).to_numpy()
    coords = D.umap_embedding(xs[keep], seed=seed)
    umap_panel = (coords, sb[keep], neg[keep])
    heat = np.random.default_rng(seed).permutation(len(smp))[:300]
    figures["feature_heatmap"] = plots.feature_heatmap(
        xs[heat],
        features,
        row_groups=sb[heat],
        title=f"{name}: {len(heat)} sampled wells x features (rows by {batch_key})",
    )
    out["umap_wells"] = int(keep.sum())
    out["seconds"] = time.perf_counter() - started
    return {
        "summary": out,
        "figures": figures,
        "tables": tables,
        "notes": notes,
        "umap": umap_panel,
    }
