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

import html
import math
import os
import posixpath
import re
import shutil
import time
import uuid
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
from raymmi.config import RayConfig, TrackingConfig
from raymmi.io import ShardSet, open_shard_set, resolve
from raymmi.run._datasets import read_dataset
from raymmi.run._runtime import gather, init_ray
from raymmi.schema import BATCH, NEGCON, PLATE, SITE, WELL, FileEntry, RaymmiError
from raymmi.track import tracked_run

SCORE = "outlier_loglik"
HELDOUT = "heldout_treated_prob"
_KEYS = (PLATE, WELL, SITE, "Metadata_ObjectNumber")
# (summary column, better direction) in report order; the direction is printed in the report
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("plate_corr_within_batch", "lower = less batch structure"),
    ("plate_corr_between_batch", "closer to within-batch = less batch structure"),
    ("suggested_batch_ari", "lower = batches no longer recoverable from negcon medians"),
    ("outlier_plates", "lower"),
    ("batch_silhouette_negcon", "lower = batches mixed"),
    ("batch_asw", "higher = batches mixed (scib, 1 - |silhouette|)"),
    ("ilisi", "higher = batches mixed (scib-scaled median iLISI)"),
    ("batch_kmeans_ari", "lower = batches mixed"),
    ("graph_connectivity", "higher"),
    ("map_mean", "higher = replicates retrieved"),
    ("map_retrieved_fraction", "higher"),
    ("heldout_auroc_mean", "higher = treatment signal survives (over-normalization check)"),
    ("treated_outlier_fraction", "higher = more treated wells leave the negcon cloud"),
)


# --- per-plate pass ----------------------------------------------------------------------------


def _well_uniform(frame: pd.DataFrame, keys: Sequence[str], seed: int) -> np.ndarray:
    """A uniform number per row from its keys: the same wells are drawn in every shard set."""
    hashed = pd.util.hash_pandas_object(
        frame[list(keys)].astype(str), index=False, hash_key=f"raymmi{seed:010d}"[:16]
    )
    return hashed.to_numpy(dtype=np.uint64) / float(2**64)


@ray.remote(num_cpus=1)
def _plate_pass(
    shard_set: ShardSet,
    plate: str,
    files: list[FileEntry],
    columns: list[str],
    quota: int,
    seed: int,
    batch_key: str,
) -> dict[str, Any]:
    frame = _read_plate(shard_set, files, columns)
    features = list(shard_set.manifest.features)
    negcon = frame[NEGCON].fillna(False).astype(bool).to_numpy()
    x = frame[features].to_numpy(dtype=np.float64)
    median = np.nanmedian(x[negcon], axis=0) if negcon.any() else None
    keys = [k for k in _KEYS if k in frame.columns]
    u = _well_uniform(frame, keys, seed)
    n_neg = min(int(negcon.sum()), quota // 2)
    pick_neg = np.flatnonzero(negcon)[np.argsort(u[negcon], kind="stable")[:n_neg]]
    pick_trt = np.flatnonzero(~negcon)[np.argsort(u[~negcon], kind="stable")[: quota - n_neg]]
    pick = np.sort(np.concatenate([pick_neg, pick_trt]))
    batches = frame[batch_key].astype(str).value_counts()
    return {
        "plate": plate,
        "rows": len(frame),
        "negcon_rows": int(negcon.sum()),
        "batch": str(batches.index[0]) if len(batches) else "",
        "batches_in_plate": len(batches),
        "median": median,
        "sample": frame.iloc[pick].reset_index(drop=True),
    }


def _read_plate(
    shard_set: ShardSet, files: Sequence[FileEntry], columns: list[str]
) -> pd.DataFrame:
    fs, root = resolve(shard_set.uri)
    tables = [
        pq.read_table(posixpath.join(root, f.path), columns=columns, filesystem=fs) for f in files
    ]
    return pa.concat_tables(tables).to_pandas()


@ray.remote(num_cpus=1)
def _whole_plate(shard_set: ShardSet, files: list[FileEntry], columns: list[str]) -> pd.DataFrame:
    return _read_plate(shard_set, files, columns)


# --- distributed scoring ----------------------------------------------------------------------

_PARAMS: dict[str, Any] = {}


def _params(ref: ray.ObjectRef) -> Any:
    """The broadcast models, fetched once per worker process."""
    key = ref.hex()
    if key not in _PARAMS:
        _PARAMS.clear()
        _PARAMS[key] = ray.get(ref)
    return _PARAMS[key]


def _score_fn(ref: ray.ObjectRef, features: Sequence[str], meta: Sequence[str], batch_key: str):
    features, meta = list(features), list(meta)

    def score(batch: pd.DataFrame) -> pd.DataFrame:
        params = _params(ref)
        x = batch[features].to_numpy(dtype=np.float64)
        points = params["embedding"].transform(x)
        out = batch[meta].copy()
        out[NEGCON] = out[NEGCON].fillna(False).astype(bool)
        out["pc1"], out["pc2"] = points[:, 0], points[:, 1]
        out[SCORE] = D.score_wells(params["gmm"], points)
        prob = np.full(len(batch), np.nan)
        labels = batch[batch_key].astype(str).to_numpy()
        for held, model in params["models"].items():
            rows = labels == held
            if rows.any():
                prob[rows] = model.predict_proba(np.nan_to_num(x[rows]))[:, 1]
        out[HELDOUT] = prob
        return out

    return score


# --- checks ------------------------------------------------------------------------------------


def _set_names(sources: Sequence[str]) -> list[str]:
    names: list[str] = []
    for src in sources:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(src.rstrip("/")) or "set")
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _check_inputs(sets: Sequence[ShardSet], *, batch_key: str, label_key: str) -> None:
    for s in sets:
        meta = s.manifest.metadata
        if NEGCON not in meta:
            msg = (
                f"input {s.uri!r} has no {NEGCON} column, so no negcon wells; re-ingest with "
                "--negcon QUERY (e.g. \"Metadata_Compound == 'DMSO'\")"
            )
            raise RaymmiError(msg)
        for arg, key, hint in (
            ("--batch-key", batch_key, "batch"),
            ("--label-key", label_key, "compound"),
        ):
            if key not in meta:
                like = [c for c in meta if hint in c.lower() or "jcp" in c.lower()]
                msg = (
                    f"{arg} {key!r} is not a column of {s.uri!r}; columns that may fit: "
                    f"{like or list(meta)}; pass {arg} COLUMN"
                )
                raise RaymmiError(msg)
    first = sets[0]
    for s in sets[1:]:
        a, b = set(first.manifest.plates), set(s.manifest.plates)
        if a != b:
            msg = (
                f"inputs {first.uri!r} and {s.uri!r} hold different plates (only in the first: "
                f"{sorted(a - b)[:5]}, only in the second: {sorted(b - a)[:5]}); compare "
                "versions of the same plates, or evaluate them in separate reports"
            )
            raise RaymmiError(msg)
        spherized = "spherize" in (
            first.manifest.extra.get("method"),
            s.manifest.extra.get("method"),
        )
        fa, fb = first.manifest.features, s.manifest.features
        if fa != fb and not spherized:
            only_a = [f for f in fa if f not in set(fb)]
            only_b = [f for f in fb if f not in set(fa)]
            what = (
                f"only in the first: {only_a[:5]}, only in the second: {only_b[:5]}"
                if only_a or only_b
                else "same names in a different order"
            )
            msg = (
                f"inputs {first.uri!r} and {s.uri!r} have different features ({len(fa)} vs "
                f"{len(fb)}; {what}); compare versions of the same feature set"
            )
            raise RaymmiError(msg)


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
    without = sorted(r["plate"] for r in results if r["median"] is None)
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
        np.stack([r["median"] for r in results if r["median"] is not None]),
        index=[r["plate"] for r in results if r["median"] is not None],
        columns=features,
    )
    out: dict[str, Any] = {"set": name, "uri": shard_set.uri, "plates": len(results)}
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
        title=f"{name}: GMM ({gmm.n_components} components) on negcon, every well scored",
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


# --- report ------------------------------------------------------------------------------------


def _html_table(frame: pd.DataFrame, *, max_rows: int = 50) -> str:
    return frame.head(max_rows).to_html(
        index=False, float_format=lambda v: f"{v:.3g}", na_rep="–", border=0
    )


def _write_report(
    staging: str,
    summary: pd.DataFrame,
    per_set: Mapping[str, dict[str, Any]],
    files: Mapping[str, list[str]],
    *,
    batch_key: str,
    label_key: str,
) -> None:
    legend = pd.DataFrame(SUMMARY_METRICS, columns=["metric", "reading"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>raymmi evaluate plates"
        "</title><style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>raymmi evaluate plates</h1>",
        f"<p>batch key <code>{html.escape(batch_key)}</code>, label key "
        f"<code>{html.escape(label_key)}</code>. Summary also in <a href='summary.csv'>"
        "summary.csv</a>.</p>",
        "<h2>Summary</h2>",
        _html_table(summary.set_index("set").T.reset_index(names="metric"), max_rows=100),
        "<h3>How to read it</h3>",
        _html_table(legend),
    ]
    if "umap" in files:
        parts += ["<h2>UMAP of sampled wells</h2>", f"<img src='{files['umap'][0]}'>"]
    for name, result in per_set.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for note in result["notes"]:
            parts.append(f"<p><b>Note:</b> {html.escape(note)}</p>")
        for png in files.get(name, []):
            parts.append(f"<img src='{png}'>")
        for table_name, table in result["tables"].items():
            if table_name == "plate_correlation":
                parts.append(
                    f"<p>Plate correlation matrix: <a href='{name}_{table_name}.csv'>"
                    f"{name}_{table_name}.csv</a></p>"
                )
                continue
            parts.append(f"<h3>{html.escape(table_name.replace('_', ' '))}</h3>")
            parts.append(_html_table(table))
            parts.append(f"<p><a href='{name}_{table_name}.csv'>{name}_{table_name}.csv</a></p>")
        parts.append(
            f"<p>Every well's scores: <a href='{name}_scores.parquet'>{name}_scores.parquet</a> "
            f"(columns <code>{SCORE}</code>, <code>{HELDOUT}</code>, pc1, pc2).</p>"
        )
    parts.append("</body></html>")
    with open(posixpath.join(staging, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


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
                    run.log_figure(fig, f"figures/{png}")
                    files[name].append(png)
                for table_name, table in result["tables"].items():
                    csv = f"{name}_{table_name}.csv"
                    table.to_csv(posixpath.join(staging, csv), index=False)
                    run.log_table(table, f"tables/{csv}")
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
            run.log_figure(grid, "figures/umap_grid.png")
            files["umap"] = ["umap_grid.png"]
            summary = pd.DataFrame([r["summary"] for r in per_set.values()])
            summary.to_csv(posixpath.join(staging, "summary.csv"), index=False)
            _write_report(
                staging, summary, per_set, files, batch_key=batch_key, label_key=label_key
            )
            run.log_artifact(posixpath.join(staging, "summary.csv"))
            run.log_artifact(posixpath.join(staging, "index.html"))
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
