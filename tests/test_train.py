"""raymmi train: the Arrow→tensor batches, planning checks, and real Ray Train runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch

from raymmi import models, testing
from raymmi.config import OptimConfig, TrainConfig, from_dict
from raymmi.models import BatchLayout, arrow_to_batch, densify_rows
from raymmi.run._train._driver import _cpus_per_worker, plan_training, resolve_optim, split_mask
from raymmi.schema import RaymmiError, sparse_to_lists


def test_densify_rows_matches_scipy():
    rng = np.random.default_rng(0)
    dense = sp.random(7, 11, density=0.3, random_state=rng, dtype=np.float32).toarray()
    dense[3] = 0  # an empty row
    matrix = sp.csr_matrix(dense)
    indices, values = sparse_to_lists(matrix)
    np.testing.assert_array_equal(densify_rows(indices, values, 11), matrix.toarray())


def test_arrow_to_batch_decodes_every_input_kind():
    dims = models.Dims(
        features={"atac": ("chr1-1-2", "chr1-3-4", "chr2-1-2"), "rna_pca": ("PC1", "PC2")},
        categories={"batch": ("s1", "s2")},
    )
    inputs = models.Inputs(
        modalities=("atac", "rna_pca"), depths=("atac",), codes=("batch",), optional=("rna_pca",)
    )
    layout = BatchLayout(inputs, dims, {"atac": "sparse", "rna_pca": "dense"})
    indices, values = sparse_to_lists(sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], "f4")))
    table = pa.table(
        {
            "atac_indices": indices,
            "atac_values": values,
            "atac_depth": pa.array([2.0, 1.0], pa.float32()),
            "batch": ["s2", "s1"],
            "rna_pca": pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4], pa.float32()), 2),
        }
    )
    batch = arrow_to_batch(table, layout)
    torch.testing.assert_close(batch["atac"], torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    torch.testing.assert_close(batch["rna_pca"], torch.tensor([[1.0, 2], [3, 4]]))
    assert batch["batch"].tolist() == [1, 0]
    assert batch["atac_depth"].tolist() == [2.0, 1.0]
    # optional input absent (ATAC-only cells): left out, not an error
    assert "rna_pca" not in arrow_to_batch(table.drop_columns(["rna_pca"]), layout)
    with pytest.raises(RaymmiError, match="atac_depth"):
        arrow_to_batch(table.drop_columns(["atac_depth"]), layout)
    bad = table.set_column(3, "batch", pa.array(["s3", "s1"]))
    with pytest.raises(RaymmiError, match="outside its 2 categories"):
        arrow_to_batch(bad, layout)


def test_split_mask_is_seeded_stable_and_sized():
    ids = pa.array([f"c{i:06d}" for i in range(20_000)])
    mask = split_mask(ids, 0.1, 0)
    assert abs(mask.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(mask[:100], split_mask(ids[:100], 0.1, 0))
    assert (mask != split_mask(ids, 0.1, 1)).any()
    assert not split_mask(ids, 0.0, 0).any()


def test_optim_defaults_come_from_the_model_unless_given():
    cls = models.model_class("ae")
    resolved = resolve_optim(cls, OptimConfig(lr=0.5))
    assert resolved["lr"] == 0.5
    assert resolved["batch_size"] == cls.optim_defaults["batch_size"]


def test_fit_epochs_decays_the_rate_per_epoch_and_drops_the_last_partial_batch():
    from types import SimpleNamespace

    from raymmi.run._train._loop import EpochIO, MemoryBatches, fit_epochs

    net = torch.nn.Linear(3, 1)
    sizes: list[int] = []

    class Objective(torch.nn.Module):
        def forward(self, batch, kl_weight):
            sizes.append(len(batch["x"]))
            loss = net(batch["x"]).pow(2).mean()
            return models.LossOutput(total=loss, terms={"mse": loss})

    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    rates: list[float] = []
    batches = MemoryBatches({"x": torch.randn(10, 3)}, 4)
    optim = {"epochs": 3, "lr": 0.1, "lr_decay": 0.5, "batch_size": 4, "amp": False}
    io = EpochIO(
        train=lambda epoch: iter(batches()),
        val=None,
        extra=None,
        reduce=lambda sums: sums,
        end_epoch=lambda epoch, m, h: rates.append(optimizer.param_groups[0]["lr"]),
    )
    for drop_last, per_epoch in ((True, [4, 4]), (False, [4, 4, 2])):
        plan = SimpleNamespace(
            optim={**optim, "drop_last": drop_last},
            model_config=None,
            label_key=None,
            hybrid_every=3,
            score_every=1,
        )
        sizes.clear()
        rates.clear()
        # resumed at epoch 1: the rate follows the epoch, not the steps taken in this process
        history = fit_epochs(
            plan, net, Objective(), optimizer, io, torch.device("cpu"), start=1, history=[]
        )
        assert rates == [0.05, 0.025]
        assert sizes == per_epoch * 2
        assert [h["epoch"] for h in history] == [1.0, 2.0]
    with pytest.raises(RaymmiError, match=r"lr_decay=1.5 must be in \(0, 1\]"):
        OptimConfig(lr_decay=1.5)
    assert resolve_optim(models.model_class("ae"), OptimConfig())["lr_decay"] == 1.0


def test_train_config_errors_name_the_fix():
    base = {"model_name": "ae", "data": "x", "out": "y"}
    with pytest.raises(RaymmiError, match=r"did you mean 'lr' for 'lrr'"):
        from_dict(TrainConfig, {**base, "optim": {"lrr": 1}})
    with pytest.raises(RaymmiError, match="fault_injection"):
        from_dict(TrainConfig, {**base, "fault_injection": "one"})
    config = from_dict(TrainConfig, {**base, "workers": 4})
    with pytest.raises(RaymmiError, match="use --workers 4 or fewer"):
        _cpus_per_worker(dataclasses_replace(config, workers=5), {"CPU": 2.0})
    with pytest.raises(RaymmiError, match="needs 2 GPUs; the cluster has 0"):
        _cpus_per_worker(dataclasses_replace(config, workers=2, gpus_per_worker=1), {"CPU": 8})
    assert _cpus_per_worker(dataclasses_replace(config, workers=2), {"CPU": 2.0}) == 0.5


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


# ----------------------------------------------------------------------------------------------
# with data (and Ray)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multiome(ray_session, tmp_path_factory) -> str:
    """A small preprocessed multiome set: rna_hvg, rna_pca, atac, atac_lsi; 8 cell types."""
    from raymmi.cells import PreprocessCellsConfig
    from raymmi.config import TrackingConfig
    from raymmi.run import generate_cells, preprocess_cells

    root = tmp_path_factory.mktemp("train")
    spec = testing.CellSetSpec(
        n_cells=1200, n_genes=400, n_peaks=800, n_cell_types=4, chunk_size=600, seed=3
    )
    off = TrackingConfig(enabled=False)
    generate_cells(spec, out=str(root / "raw"), tracking=off)
    config = from_dict(PreprocessCellsConfig, {"rna": {"pca": {"n_comps": 10}}})
    preprocess_cells(config, source=str(root / "raw"), out=str(root / "pre"), tracking=off)
    return str(root / "pre")


def test_plan_names_the_missing_modality(multiome, tmp_path):
    config = TrainConfig(model_name="ae", data=multiome, out=str(tmp_path / "o"))
    with pytest.raises(RaymmiError, match=r"needs modality 'adt_clr'.*preprocess cells"):
        plan_training(config)
    config = TrainConfig(
        model_name="ae",
        data=multiome,
        out=str(tmp_path / "o"),
        model={"modalities": ["rna_hvg", "atac_lsi"]},
        label_key="celltype",
    )
    with pytest.raises(RaymmiError, match=r"did you mean cell_type"):
        plan_training(config)


@pytest.mark.slow
def test_two_worker_ddp_run_learns_checkpoints_and_writes_embeddings(multiome, tmp_path):
    from raymmi.io import open_shard_set
    from raymmi.run import train

    out = tmp_path / "ae"
    config = TrainConfig(
        model_name="ae",
        data=multiome,
        out=str(out),
        model={"modalities": ["rna_hvg", "atac_lsi"], "hidden": [64], "bottleneck": 16},
        optim=OptimConfig(epochs=4, batch_size=64, lr=3e-3),
        label_key="cell_type",
        workers=2,
    )
    metrics = train(config)
    state = json.loads((out / "metrics.json").read_text())
    assert state["epoch"] == 3
    checkpoints = sorted(p.name for p in (out / "checkpoints" / "train").glob("epoch-*"))
    assert checkpoints == ["epoch-00002", "epoch-00003"]  # keep_checkpoints=2
    last = json.loads((out / "checkpoints" / "train" / "epoch-00003" / "state.json").read_text())
    losses = [row["train_loss"] for row in last["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the loss falls
    weights = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values())
    # DDP: both ranks hold the same weights after every epoch's steps
    assert metrics["weights_rank_spread"] == 0.0
    assert metrics["val_loss"] < 10
    assert metrics["ari"] > 0.3 and "nmi" in metrics and "silhouette" in metrics
    assert "val_ari" in metrics
    shard = open_shard_set(str(out / "embeddings"), kind="cells")
    assert shard.manifest.num_rows == 1200
    assert shard.manifest.modalities[0].name == "X_ae"
    assert shard.verify() == []
    # MLflow: per-epoch curves at steps 0..3, the final scores once at the last step (none
    # re-logged at step 0, which would draw a false line back to the start of the chart)
    import mlflow

    client = mlflow.MlflowClient()
    run_id = shard.manifest.producer["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1, 2, 3]
    for key in ("ari", "train_seconds"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [3], key


@pytest.mark.slow
@pytest.mark.heavy
def test_killed_worker_resumes_from_last_checkpoint(multiome, tmp_path):
    from raymmi.run import train

    out = tmp_path / "killed"
    config = TrainConfig(
        model_name="ae",
        data=multiome,
        out=str(out),
        model={"modalities": ["rna_hvg"], "hidden": [32], "bottleneck": 8},
        optim=OptimConfig(epochs=3, batch_size=128),
        workers=2,
        fault_injection="1:2",
        val_fraction=0.0,
        impute=False,
    )
    metrics = train(config)
    assert (out / "checkpoints" / ".fault-injected-1-2").exists()  # the kill happened
    assert metrics["epoch"] == 2
    # restarted from a checkpoint, not from scratch (epoch 1's, or epoch 0's when the kill
    # lands before the controller registered epoch 1's upload)
    assert metrics["attempt_start_epoch"] in (1, 2)
    # the same --out again: finished, so it refuses instead of retraining
    with pytest.raises(RaymmiError, match="finished training run"):
        train(config)


def test_resuming_with_another_config_is_refused(multiome, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.yaml").write_text("model_name: ae\nmodel: {bottleneck: 8}\n")
    from raymmi.run import train

    config = TrainConfig(
        model_name="ae",
        data=multiome,
        out=str(out),
        model={"modalities": ["rna_hvg"], "bottleneck": 9},
    )
    with pytest.raises(RaymmiError, match="checkpoints of a different config"):
        train(config)


def test_cli_reports_bad_set_key(tmp_path, capsys):
    from raymmi.cli import main

    code = main(["train", "ae", "--data", "x", "--out", str(tmp_path), "--set", "optim.lrr=1"])
    assert code == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert not any(Path(tmp_path).iterdir())


def _atac_only(source: str, out: str) -> str:
    """A copy of ``source`` without the RNA columns: ATAC-only cells for hybrid training."""
    import pyarrow.parquet as pq

    from raymmi.io import ShardSetWriter, open_shard_set, write_part
    from raymmi.schema import Manifest

    shard = open_shard_set(source, kind="cells")
    with ShardSetWriter(out) as writer:
        entries = []
        for i, uri in enumerate(shard.file_uris()):
            table = pq.read_table(uri)
            keep = [c for c in table.column_names if not c.startswith("rna")]
            table = table.select(keep)
            table = table.set_column(0, "cell_id", pa.array([f"x{v}" for v in table["cell_id"]]))
            entries.append(write_part(writer.staging, f"part-{i:05d}.parquet", table))
        writer.commit(
            Manifest(
                kind="cells",
                files=tuple(entries),
                metadata=tuple(c for c in shard.manifest.metadata if not c.startswith("rna")),
                modalities=tuple(
                    m for m in shard.manifest.modalities if not m.name.startswith("rna")
                ),
            )
        )
    return out


@pytest.mark.slow
def test_sailerx_hybrid_training_and_imputation_through_ray_train(multiome, tmp_path):
    from raymmi.io import open_shard_set
    from raymmi.run import train

    extra = _atac_only(multiome, str(tmp_path / "atac_only"))
    out = tmp_path / "sailerx"
    config = TrainConfig(
        model_name="sailerx",
        data=multiome,
        out=str(out),
        model={"z_dim": 8, "hidden": [64, 16], "chromosome_widths": [8, 4], "gamma": 100.0},
        optim=OptimConfig(epochs=2, batch_size=100, lr=1e-3),
        extra_data=extra,
        label_key="cell_type",
        workers=1,
        impute=True,  # opt-in, stored sparse: ATAC probabilities below 0.5 dropped
        impute_format="sparse",
        impute_threshold=0.5,
    )
    metrics = train(config)
    # ATAC-only batches were trained with L_Inv alone (no alignment term)
    assert metrics["extra_cells"] > 0 and "extra_recon_weight_L_Recon" in metrics
    assert "extra_gamma_L_Local" not in metrics and "train_gamma_L_Local" in metrics
    assert metrics["extra_L_Inv"] == pytest.approx(metrics["extra_loss"], rel=1e-6)
    assert "reference_ari" in metrics and "ari" in metrics
    shard = open_shard_set(str(out / "embeddings"), kind="cells")
    names = [m.name for m in shard.manifest.modalities]
    assert names == ["X_sailerx", "atac_imputed"]
    imputed = shard.manifest.modality("atac_imputed")
    assert len(imputed.features) == 800 and imputed.encoding == "sparse"
    # exported where scanpy looks: .obsm["X_sailerx"] (sc.pp.neighbors(use_rep=...)), no
    # meaningless depth columns of derived matrices
    import anndata as ad
    import scanpy as sc

    from raymmi.io import export_cells

    assert export_cells(shard, str(tmp_path / "emb.h5ad")) == shard.manifest.num_rows
    adata = ad.read_h5ad(tmp_path / "emb.h5ad")
    assert set(adata.obsm) == {"X_sailerx", "atac_imputed"} and adata.n_vars == 0
    assert adata.obsm["X_sailerx"].shape == (shard.manifest.num_rows, 8)
    stored = adata.obsm["atac_imputed"]
    assert stored.shape == (shard.manifest.num_rows, 800) and stored.nnz < 0.9 * 800 * len(adata)
    assert stored.data.min() >= 0.5
    assert not [c for c in adata.obs if c.startswith(("X_", "atac_imputed"))]
    sc.pp.neighbors(adata, use_rep="X_sailerx", n_neighbors=5)
    assert "connectivities" in adata.obsp


def test_latest_written_checkpoint_skips_incomplete_folders(tmp_path):
    from raymmi.run._train._driver import _latest_written_checkpoint

    assert _latest_written_checkpoint(tmp_path / "absent") is None
    for epoch, files in [(0, 3), (1, 2), (2, 3)]:
        folder = tmp_path / f"epoch-{epoch:05d}"
        folder.mkdir()
        state = json.dumps({"epoch": epoch, "history": []}) if epoch != 2 else "{trunc"
        (folder / "state.json").write_text(state)
        for name in ["model.pt", "optim.pt"][: files - 1]:
            (folder / name).write_bytes(b"")
    # epoch 2: state.json cut short; epoch 1: optim.pt missing; epoch 0 is complete
    assert _latest_written_checkpoint(tmp_path) == tmp_path / "epoch-00000"


def test_score_all_is_refused_by_raymmi_train_with_the_fix(tmp_path):
    """--score-all is for raymmi tune's in-process trials: raymmi train says so, writes nothing."""
    from raymmi.run import train

    out = tmp_path / "out"
    config = TrainConfig(
        model_name="umint", data=str(tmp_path / "cells"), out=str(out), score_all=True
    )
    with pytest.raises(RaymmiError, match="raymmi train scores every cell once, after training"):
        train(config)
    assert not out.exists()


def test_val_fraction_defaults_to_the_model_s_own_share():
    """SAILERX trains on every cell as its reference does; the others hold out 10%.

    ``TrainConfig.val_fraction`` unset (``None``) means the model's share; the search test
    (``test_tune.py``) and the SAILERX claim test check what each gives.
    """
    assert TrainConfig(model_name="sailerx", data="d", out="o").val_fraction is None
    assert models.model_class("sailerx").val_fraction == 0.0
    assert models.model_class("umint").val_fraction == 0.1
    assert models.model_class("ae").val_fraction == 0.1
    assert (
        TrainConfig(model_name="sailerx", data="d", out="o", val_fraction=0.2).val_fraction == 0.2
    )
    with pytest.raises(RaymmiError, match="val_fraction"):
        TrainConfig(model_name="sailerx", data="d", out="o", val_fraction=1.0)
