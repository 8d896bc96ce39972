"""Replicate mAP: against copairs directly and a hand-computed average precision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from copairs.map import average_precision

from raymmi import metrics as M


def _plates(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for plate in ("P1", "P2"):
        rows += [(plate, "DMSO", True)] * 6
        rows += [(plate, c, False) for c in ("A", "B", "C") for _ in range(3)]
    meta = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Compound", "neg"])
    x = rng.normal(size=(len(meta), 8))
    x[(meta.Metadata_Compound == "A").to_numpy()] += np.linspace(2, 4, 8)
    return x, meta


def test_replicate_map_matches_copairs_recipe():
    x, meta = _plates()
    neg = meta.neg.to_numpy()
    ap, maps = M.replicate_map(x, meta, label_key="Metadata_Compound", negcon=neg, null_size=200)
    frame = meta[["Metadata_Plate", "Metadata_Compound"]].copy()
    frame["neg"] = neg
    frame["ref"] = np.where(neg, np.arange(len(neg)), -1)
    ref = average_precision(
        frame,
        x,
        pos_sameby=["Metadata_Compound", "ref"],
        pos_diffby=[],
        neg_sameby=["Metadata_Plate"],
        neg_diffby=["neg", "ref"],
        progress_bar=False,
    )
    ref = ref[~ref.neg].reset_index(drop=True)
    np.testing.assert_allclose(ap["average_precision"], ref["average_precision"])
    # each treated well: 5 replicates (3 per plate x 2 plates - itself), 6 same-plate negcon
    assert (ap["n_pos_pairs"] == 5).all() and (ap["n_total_pairs"] == 11).all()
    by = maps.set_index("Metadata_Compound")["mean_average_precision"]
    assert by["A"] > 0.9 and by["A"] > by["B"] and by["A"] > by["C"]
    assert bool(maps.set_index("Metadata_Compound").loc["A", "below_corrected_p"])


def test_average_precision_hand_case():
    # one query well q with one replicate r and two same-plate negcon wells n1, n2; cosine
    # ranking from q: n1 (0.9), r (0.5), n2 (0.0) -> AP = precision at r's rank = 1/2.
    def unit(angle: float) -> list[float]:
        return [np.cos(angle), np.sin(angle)]

    x = np.array([unit(0.0), unit(np.arccos(0.5)), unit(np.arccos(0.9)), unit(-np.pi / 2)])
    meta = pd.DataFrame(
        {"Metadata_Plate": ["P"] * 4, "Metadata_Compound": ["X", "X", "DMSO", "DMSO"]}
    )
    neg = np.array([False, False, True, True])
    ap, _ = M.replicate_map(x, meta, label_key="Metadata_Compound", negcon=neg, null_size=50)
    assert ap["average_precision"].iloc[0] == pytest.approx(0.5)


def test_replicate_map_needs_negcon_and_matching_rows():
    x, meta = _plates()
    with pytest.raises(ValueError, match="both negcon and treated"):
        M.replicate_map(x, meta, label_key="Metadata_Compound", negcon=np.zeros(len(x), bool))
    with pytest.raises(ValueError, match="meta with n rows"):
        M.replicate_map(x[:3], meta, label_key="Metadata_Compound", negcon=meta.neg.to_numpy())
    with pytest.raises(ValueError, match="not a column"):
        M.replicate_map(x, meta, label_key="Metadata_JCP2022", negcon=meta.neg.to_numpy())
