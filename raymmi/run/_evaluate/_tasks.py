"""The Ray tasks of ``raymmi evaluate plates``: the per-plate pass and distributed scoring."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raymmi import plates as D
from raymmi.io import ShardSet, resolve
from raymmi.schema import NEGCON, PLATE, SITE, WELL, FileEntry

SCORE = "outlier_loglik"
HELDOUT = "heldout_treated_prob"
_KEYS = (PLATE, WELL, SITE, "Metadata_ObjectNumber")


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
    treated_median = np.nanmedian(x[~negcon], axis=0) if (~negcon).any() else None
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
        "treated_median": treated_median,
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
