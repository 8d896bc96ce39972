"""Replicate retrieval of profiles: mean average precision with copairs.

Each treated well queries its plate's negative-control wells and the other replicate wells of
its compound, ranked by cosine similarity; its average precision says how well its replicates
rank above the controls. copairs (Kalinin et al. 2025) computes it and the per-compound mAP
with a permutation p-value. No Ray, no MLflow, no file I/O.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_REF = "_ref_index"
_NEG = "_is_negcon"


def replicate_map(
    x: np.ndarray,
    meta: pd.DataFrame,
    *,
    label_key: str,
    negcon: np.ndarray,
    plate_key: str = "Metadata_Plate",
    null_size: int = 2000,
    threshold: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-well average precision and per-compound mAP of replicate retrieval vs negcon.

    Positive pairs: two treated wells with the same ``label_key`` (any plate). Negative pairs:
    a treated well and a negcon well **of the same plate**. Negcon wells never pair with each
    other (copairs' reference-index recipe), so they only serve as the background.

    Parameters
    ----------
    x
        Profiles of shape (n_wells, n_features).
    meta
        Metadata of the same rows, shape (n_wells, ...), with ``label_key`` and ``plate_key``.
    label_key
        Compound column (``Metadata_Compound``, JUMP's ``Metadata_JCP2022`` ...).
    negcon
        Boolean negative-control flag per row, shape (n_wells,).
    plate_key
        Plate column; negatives come from the query's plate.
    null_size
        Size of copairs' permutation null per (positives, total) configuration.
    threshold
        Significance level of the Benjamini-Hochberg-corrected p-values.
    seed
        Seed of the null.

    Returns
    -------
    ap : pandas.DataFrame
        One row per treated well with at least one positive and one negative pair:
        ``label_key``, ``plate_key``, ``average_precision``, ``normalized_average_precision``,
        ``n_pos_pairs``, ``n_total_pairs``.
    maps : pandas.DataFrame
        One row per compound: ``label_key``, ``mean_average_precision``, ``p_value``,
        ``corrected_p_value``, ``below_corrected_p`` (retrieved at ``threshold``).

    Raises
    ------
    ValueError
        If shapes disagree, or there are no replicate pairs or no same-plate negcon pairs.
    """
    from copairs.map import average_precision, mean_average_precision

    x = np.asarray(x, dtype=np.float64)
    negcon = np.asarray(negcon, dtype=bool)
    if x.ndim != 2 or len(meta) != x.shape[0] or negcon.shape != (x.shape[0],):
        msg = (
            f"replicate_map needs x (n, d), meta with n rows and negcon (n,); got x {x.shape}, "
            f"{len(meta)} meta rows, negcon {negcon.shape}"
        )
        raise ValueError(msg)
    for key in (label_key, plate_key):
        if key not in meta.columns:
            msg = f"{key!r} is not a column of meta; columns: {list(meta.columns)[:10]}"
            raise ValueError(msg)
    frame = pd.DataFrame(
        {
            label_key: meta[label_key].astype(str).to_numpy(),
            plate_key: meta[plate_key].astype(str).to_numpy(),
            _NEG: negcon,
            # every negcon well its own reference index: they never form positive pairs
            _REF: np.where(negcon, np.arange(len(negcon)), -1),
        }
    )
    if not negcon.any() or negcon.all():
        msg = "replicate_map needs both negcon and treated wells; check the negcon flags"
        raise ValueError(msg)
    try:
        ap = average_precision(
            frame,
            x,
            pos_sameby=[label_key, _REF],
            pos_diffby=[],
            neg_sameby=[plate_key],
            neg_diffby=[_NEG, _REF],
            progress_bar=False,
        )
    except Exception as err:  # copairs raises UnpairedException (not exported at top level)
        msg = f"replicate_map: copairs found no pairs ({type(err).__name__}: {err})"
        raise ValueError(msg) from err
    ap = ap[~ap[_NEG] & ap["average_precision"].notna()]
    ap = ap[
        [
            label_key,
            plate_key,
            "average_precision",
            "normalized_average_precision",
            "n_pos_pairs",
            "n_total_pairs",
        ]
    ]
    ap = ap.reset_index(drop=True)
    maps = mean_average_precision(
        ap, [label_key], null_size=null_size, threshold=threshold, seed=seed, progress_bar=False
    )
    columns = [
        label_key,
        "mean_average_precision",
        "p_value",
        "corrected_p_value",
        "below_corrected_p",
    ]
    return ap, maps[columns].reset_index(drop=True)
