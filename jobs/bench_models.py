"""Benchmark: raymmi's models beside baselines (and their original code) on the same inputs.

    python jobs/bench_models.py [--seeds 5] [--data CELLS_SET --label-key cell_type]
        [--umint-src /tmp/umint-src --umint-python /tmp/tfvenv/bin/python]
        [--umint-config OUT/best.yaml]
        [--sailerx-src /tmp/sailerx-src --sailerx-python PY] [--smoke-test]

Two tables, every embedding scored by the same code (``raymmi.metrics``):

* **CITE starter** (``../shared/data``, 600 cells, 41 types): the cells go the user's way,
  ``ingest cells`` -> ``preprocess cells`` (defaults); UMINT and the AE baseline train at
  raymmi's defaults with the loop ``raymmi train`` runs (``fit_epochs``, in this process),
  one run per seed (``optim.seed``). k-means (``n_init=10``, ``random_state=seed``) and Ward
  with k = 41: ARI/NMI/FMI, mean ± sd (ddof 1) over the seeds, train seconds. Baselines:
  PCA-50 of the concatenated RNA+ADT and of RNA alone, both on the original's inputs (UMINT's
  ``bmcite30k`` protocol: counts / library size x 1e4, log1p, all 1,000 genes, z-score with
  sd ddof 1 clipped at 10; ADT Seurat CLR per cell, then the same scaling). With
  ``--umint-src`` the ORIGINAL Keras code runs on those inputs in its own interpreter
  (``jobs/_original_umint.py``: ``train_test_split(0.2, random_state=seed)``, its notebook's
  ``CombinedEncoder`` / ``AE`` arguments).
* **SAILERX** on generated multiome data (``raymmi.testing``, fitted to the real sets) and on
  ``--data``: Leiden (15-NN, resolution 0.1-2.0 at best NMI) ARI/NMI of its embedding and of
  the RNA PCA reference it aligns to. With ``--sailerx-src`` the original ``train.py`` runs on
  the same cells (``jobs/_original_sailerx.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raymmi import metrics, run, testing
from raymmi.config import IngestCellsConfig, OptimConfig, TrackingConfig
from raymmi.run import DecodedCells

OFF = TrackingConfig(enabled=False)
CITE = "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_{}.h5ad"
JOBS = Path(__file__).resolve().parent
SCORES = ("kmeans_ari", "kmeans_nmi", "kmeans_fmi", "ward_ari", "ward_nmi", "ward_fmi")


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def cite_set(root: Path) -> str:
    """The CITE starter through ``ingest cells`` -> ``preprocess cells`` at defaults."""
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.run import ingest_cells, preprocess_cells

    if (root / "cite" / "_manifest.json").exists() or (root / "cite").is_dir():
        return str(root / "cite")  # --work reused
    rna, adt = (str(testing.shared_data(CITE.format(m))) for m in ("rna", "mod2"))
    ingest_cells(IngestCellsConfig(rna=rna, adt=adt, out=str(root / "cite-raw")), tracking=OFF)
    preprocess_cells(
        PreprocessCellsConfig(),
        source=str(root / "cite-raw"),
        out=str(root / "cite"),
        tracking=OFF,
    )
    return str(root / "cite")


def _scale(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    return np.clip((x - x.mean(axis=0)) / sd, -10.0, 10.0)


def protocol_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RNA, ADT (cells x features, float32) and cell types as UMINT's notebook prepares them."""
    import anndata as ad

    rna_a, adt_a = (ad.read_h5ad(testing.shared_data(CITE.format(m))) for m in ("rna", "mod2"))
    counts = np.asarray(rna_a.layers["counts"].toarray(), dtype=np.float64)
    rna = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    adt_counts = np.asarray(adt_a.layers["counts"].toarray(), dtype=np.float64)
    # Seurat NormalizeData(method="CLR", margin=2): per cell, log1p(x / exp(mean log1p x)).
    adt = np.log1p(adt_counts / np.exp(np.log1p(adt_counts).mean(axis=1, keepdims=True)))
    labels = rna_a.obs["cell_type"].astype(str).to_numpy()
    return _scale(rna).astype(np.float32), _scale(adt).astype(np.float32), labels


# ----------------------------------------------------------------------------------------------
# raymmi models through train's loop
# ----------------------------------------------------------------------------------------------


def decode(path: str, model_name: str, label_key: str, model: Mapping[str, Any]) -> DecodedCells:
    """The cells decoded once for ``model_name``, with labels (and RNA depth) as ``obs``.

    SAILERX's original needs each cell's RNA depth.
    """
    obs = [label_key, "rna_depth"] if model_name == "sailerx" else [label_key]
    return run.decode_cells(path, model_name=model_name, model=model, obs=obs)


def labels_of(cells: DecodedCells, label_key: str = "cell_type") -> np.ndarray:
    return np.asarray(cells.obs[label_key], dtype=str)


def train_embed(
    cells: DecodedCells,
    *,
    seed: int,
    model: Mapping[str, Any] | None = None,
    optim: Mapping[str, Any] | None = None,
    val_fraction: float | None = None,
    init_seed: int | None = None,
) -> tuple[np.ndarray, float]:
    """Train with ``raymmi train``'s loop (defaults unless given); embed every cell."""
    extra = {} if val_fraction is None else {"val_fraction": val_fraction}
    got = run.train_embed(
        cells,
        model=model,
        optim=OptimConfig(seed=seed, **dict(optim or {})),
        init_seed=init_seed,
        **extra,
    )
    return got.embedding, got.seconds


# ----------------------------------------------------------------------------------------------
# scoring and tables
# ----------------------------------------------------------------------------------------------


def seed_rows(
    embeddings: Sequence[np.ndarray], labels: np.ndarray, seeds: Sequence[int], k: int
) -> dict[str, list[float]]:
    """Cluster scores per seed: embedding ``i`` (or the one fixed embedding) with seed ``i``."""
    out: dict[str, list[float]] = {s: [] for s in SCORES}
    for i, seed in enumerate(seeds):
        x = embeddings[i] if len(embeddings) > 1 else embeddings[0]
        for name, value in (
            metrics.cluster_scores(x, labels, n_clusters=k, seed=seed).flat().items()
        ):
            out[name].append(value)
    return out


def _ms(values: Sequence[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {sd:.{digits}f}"


def print_cluster_table(
    title: str, rows: Sequence[tuple[str, dict[str, list[float]], Any]]
) -> None:
    print(title)
    head = f"{'embedding':38}" + "".join(f"{s:>16}" for s in SCORES) + f"{'train s':>16}"
    print(head)
    print("-" * len(head))
    for name, scores, seconds in rows:
        secs = _ms(seconds, 1) if seconds else "-"
        print(f"{name:38}" + "".join(f"{_ms(scores[s]):>16}" for s in SCORES) + f"{secs:>16}")
    print()


def pca(x: np.ndarray, n: int = 50) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=min(n, *x.shape), svd_solver="full").fit_transform(x)


# ----------------------------------------------------------------------------------------------
# the original code, in its own interpreter
# ----------------------------------------------------------------------------------------------


def original_umint(
    src: str, python: str, rna: np.ndarray, adt: np.ndarray, seeds: Sequence[int], model: str
) -> tuple[list[np.ndarray], list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench_models_orig_") as tmp:
        inputs, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inputs, rna=rna, adt=adt)
        cmd = [
            python,
            str(JOBS / "_original_umint.py"),
            "--src",
            src,
            "--inputs",
            str(inputs),
            "--out",
            str(out),
            "--seeds",
            ",".join(map(str, seeds)),
            "--model",
            model,
        ]
        subprocess.run(cmd, check=True)
        got = np.load(out)
        return (
            [got[f"embedding_{s}"] for s in seeds],
            [float(got[f"seconds_{s}"]) for s in seeds],
        )


# ----------------------------------------------------------------------------------------------
# the two benchmarks
# ----------------------------------------------------------------------------------------------


def bench_cite(args: argparse.Namespace, root: Path) -> None:
    seeds = list(range(args.seeds))
    rna, adt, protocol_labels = protocol_inputs()
    k = len(np.unique(protocol_labels))
    path = cite_set(root)
    rows = []
    for name in ("umint", "ae"):
        decoded = decode(path, name, "cell_type", {})
        optim = {"epochs": args.epochs} if args.epochs else None
        runs = [train_embed(decoded, seed=s, optim=optim) for s in seeds]
        embeddings = [e for e, _ in runs]
        rows.append(
            (
                f"raymmi {name} (defaults)",
                seed_rows(embeddings, labels_of(decoded), seeds, k),
                [t for _, t in runs],
            )
        )
        if args.umint_src:
            embs, secs = original_umint(args.umint_src, args.umint_python, rna, adt, seeds, name)
            rows.append(
                (
                    f"original {name.upper()} (its protocol)",
                    seed_rows(embs, protocol_labels, seeds, k),
                    secs,
                )
            )
    if args.umint_config:
        rows.append(tuned_umint(args.umint_config, path, seeds, k))
    both = pca(np.concatenate([rna, adt], axis=1))
    rows.append(
        ("PCA-50 RNA+ADT (protocol inputs)", seed_rows([both], protocol_labels, seeds, k), None)
    )
    rows.append(
        ("PCA-50 RNA (protocol inputs)", seed_rows([pca(rna)], protocol_labels, seeds, k), None)
    )
    print_cluster_table(
        f"CITE starter: {len(protocol_labels)} cells, {k} types; k-means (n_init 10) and Ward, "
        f"k = {k}; mean ± sd over seeds {seeds}",
        rows,
    )


def tuned_umint(
    config: str, path: str, seeds: Sequence[int], k: int
) -> tuple[str, dict[str, list[float]], list[float]]:
    """UMINT trained at a config file's ``model`` / ``optim`` (``raymmi tune``'s best.yaml)."""
    from raymmi.config import load_yaml

    tree = load_yaml(config)
    model = dict(tree.get("model") or {})
    optim = {k: v for k, v in (tree.get("optim") or {}).items() if k != "seed"}
    extra = {"val_fraction": tree["val_fraction"]} if "val_fraction" in tree else {}
    decoded = decode(path, "umint", "cell_type", model)
    runs = [train_embed(decoded, seed=s, model=model, optim=optim, **extra) for s in seeds]
    scores = seed_rows([e for e, _ in runs], labels_of(decoded), seeds, k)
    return f"raymmi umint ({Path(config).name})", scores, [t for _, t in runs]


def multiome_set(root: Path, n_cells: int, n_peaks: int) -> str:
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.run import generate_cells, preprocess_cells

    if (root / "mo").is_dir():
        return str(root / "mo")  # --work reused
    # shaped and fitted like the real 10x Multiome set of the issue (21 unbalanced types, 2
    # batches, 600 genes; RNA PCA Leiden ARI ~0.32, ATAC density 0.14): not the easy default
    spec = testing.CellSetSpec(
        n_cells=n_cells,
        n_genes=600,
        n_peaks=n_peaks,
        n_cell_types=21,
        n_batches=2,
        difficulty="realistic",
        seed=0,
    )
    generate_cells(spec, out=str(root / "mo-raw"), tracking=OFF)
    preprocess_cells(
        PreprocessCellsConfig(), source=str(root / "mo-raw"), out=str(root / "mo"), tracking=OFF
    )
    return str(root / "mo")


def bench_sailerx(args: argparse.Namespace, root: Path) -> None:
    sets = [("generated multiome", multiome_set(root, args.cells, args.peaks))]
    sets += [(f"--data {d}", d) for d in args.data]
    seeds = list(range(args.sailerx_seeds))
    head = f"{'data':34} {'embedding':34} {'leiden ARI':>16} {'leiden NMI':>16} {'train s':>14}"
    lines = []
    for title, path in sets:
        model = {} if args.gamma is None else {"gamma": args.gamma}
        decoded = decode(path, "sailerx", args.label_key, model)
        labels = labels_of(decoded, args.label_key)
        optim = {"epochs": args.sailerx_epochs} if args.sailerx_epochs else None
        runs = {"raymmi sailerx": [train_embed(decoded, seed=s, optim=optim) for s in seeds]}
        if args.sailerx_src:
            from _original_sailerx import run_original

            runs["original SAILERX train.py"] = [
                run_original(
                    args.sailerx_src,
                    args.sailerx_python,
                    decoded,
                    seed=s,
                    epochs=args.sailerx_epochs,
                    gamma=args.gamma,
                    label_key=args.label_key,
                )
                for s in seeds
            ]
        shown = title[:34]
        for name, got in runs.items():
            scores = [
                metrics.leiden_scores(e, labels, seed=s)
                for (e, _), s in zip(got, seeds, strict=True)
            ]
            ari, nmi = _ms([g.ari for g in scores]), _ms([g.nmi for g in scores])
            secs = _ms([t for _, t in got], 1)
            lines.append(f"{shown:34} {name:34} {ari:>16} {nmi:>16} {secs:>14}")
            shown = ""
        ref = metrics.leiden_scores(decoded.arrays["rna_pca"], labels)
        lines.append(f"{'':34} {'RNA PCA reference':34} {ref.ari:16.3f} {ref.nmi:16.3f} {'-':>14}")
        lines.append(f"{'':34} ({len(labels)} cells, {len(np.unique(labels))} types)")
    print(
        f"SAILERX (gamma {args.gamma or 'default 6000'}): Leiden on the 15-NN graph, "
        f"resolution 0.1-2.0 at best NMI; seeds {seeds}"
    )
    print(head)
    print("-" * len(head))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the CITE table")
    parser.add_argument("--epochs", type=int, default=None, help="override UMINT/AE epochs")
    parser.add_argument("--umint-src", default=None, help="checkout of deeplearner87/UMINT")
    parser.add_argument("--umint-python", default="python3", help="its interpreter (TensorFlow)")
    parser.add_argument(
        "--umint-config",
        default=None,
        help="also UMINT at this config's model/optim (e.g. a raymmi tune OUT/best.yaml)",
    )
    parser.add_argument("--sailerx-src", default=None, help="checkout of uci-cbcl/SAILERX")
    parser.add_argument("--sailerx-python", default=sys.executable)
    parser.add_argument("--sailerx-seeds", type=int, default=1)
    parser.add_argument("--sailerx-epochs", type=int, default=None, help="default: its 410")
    parser.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="SAILERX gamma for both codes (default: each its own, 6000)",
    )
    parser.add_argument("--cells", type=int, default=2000, help="generated multiome cells")
    parser.add_argument("--peaks", type=int, default=2000)
    parser.add_argument("--data", action="append", default=[], help="a preprocessed cells set")
    parser.add_argument("--label-key", default="cell_type")
    parser.add_argument("--only", choices=["cite", "sailerx"], default=None)
    parser.add_argument(
        "--causes",
        action="store_true",
        help="only the table of UMINT changes (preprocessing, split, init ...)",
    )
    parser.add_argument("--work", default=None, help="folder of the prepared sets (reused)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, 1 seed")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.epochs, args.sailerx_epochs = 2, 2, 12
        args.cells, args.peaks = 300, 300
    import torch

    from raymmi.config import RayConfig
    from raymmi.run import init_ray

    torch.set_num_threads(1)
    init_ray(RayConfig())
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_models_"))
    root.mkdir(parents=True, exist_ok=True)
    if args.causes:
        from _umint_causes import bench_causes  # jobs/ helper

        bench_causes(args, root)
        return 0
    if args.only in (None, "cite"):
        bench_cite(args, root)
    if args.only in (None, "sailerx"):
        bench_sailerx(args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
