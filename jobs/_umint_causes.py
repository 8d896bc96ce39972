"""``bench_models --causes``: what separates UMINT at raymmi's old defaults from the original.

One change at a time against the old defaults (the reference's 25 epochs, batch 16, MSE weights
1, raymmi's validation split 0.1), UMINT on the CITE starter, the bench's seeds and scoring:
the original's inputs (all 1,000 genes, z-scored ADT) instead of raymmi's default preprocessing
(228 HVGs, unscaled CLR), its split (train on 80%), no split, one weight init for every seed
(Keras' initializer seed 98), batch 32, 50 epochs, the ADT MSE weighted 5; then raymmi's
defaults as they are now.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from bench_models import (
    CITE,
    cite_set,
    decode,
    labels_of,
    print_cluster_table,
    protocol_inputs,
    seed_rows,
    train_embed,
)

from raymmi import run, testing

NEW = {"lambdas": [1.0, 5.0]}
CAUSES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("old defaults: 25 epochs, batch 16, val 0.1, lambda 1", {"old": True}),
    ("  + the original's inputs (1,000 genes, scaled ADT)", {"old": True, "protocol": True}),
    ("  + validation split 0.2 (trains on 80%)", {"old": True, "val": 0.2}),
    ("  + no validation split (trains on 100%)", {"old": True, "val": 0.0}),
    ("  + one init for every seed (Keras seed 98)", {"old": True, "init": 98}),
    ("  + batch 32", {"old": True, "optim": {"batch_size": 32}}),
    ("  + 50 epochs", {"old": True, "optim": {"epochs": 50}}),
    ("  + lambda_adt 5", {"old": True, "model": {"lambdas": [1.0, 5.0]}}),
    ("  + 50 epochs + lambda_adt 5", {"old": True, "optim": {"epochs": 50}, "model": NEW}),
    (
        "  + 50 epochs + the original's inputs",
        {"old": True, "protocol": True, "optim": {"epochs": 50}},
    ),
    ("raymmi's defaults now", {}),
)
OLD = {"model": {"lambdas": [1.0, 1.0]}, "optim": {"epochs": 25}}


def bench_causes(args: argparse.Namespace, root: Path) -> None:
    seeds = list(range(args.seeds))
    rna, adt, _ = protocol_inputs()
    base = decode(cite_set(root), "umint", "cell_type", {})
    labels = labels_of(base)
    k = len(np.unique(labels))
    import anndata as ad

    rna_a = ad.read_h5ad(testing.shared_data(CITE.format("rna")))
    adt_a = ad.read_h5ad(testing.shared_data(CITE.format("mod2")))
    order = rna_a.obs_names.get_indexer(base.cell_ids)
    protocol = run.replace_modalities(
        base,
        {"rna_hvg": rna[order], "adt_clr": adt[order]},
        features={"rna_hvg": list(rna_a.var_names), "adt_clr": list(adt_a.var_names)},
    )
    rows = []
    for name, cause in CAUSES:
        model = {**(OLD["model"] if cause.get("old") else {}), **cause.get("model", {})}
        optim = {**(OLD["optim"] if cause.get("old") else {}), **cause.get("optim", {})}
        decoded = protocol if cause.get("protocol") else base
        runs = [
            train_embed(
                decoded,
                seed=s,
                model=model,
                optim=optim,
                val_fraction=cause.get("val"),
                init_seed=cause.get("init"),  # Keras: initializer seed 98 in every run
            )
            for s in seeds
        ]
        scores = seed_rows([e for e, _ in runs], labels, seeds, k)
        rows.append((name, scores, [t for _, t in runs]))
    print_cluster_table(
        f"UMINT on the CITE starter, one change at a time; k = {k}; seeds {seeds}", rows
    )
