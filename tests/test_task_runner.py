"""raymmi task predict|match|embed through the Ray layer, on the real CITE starter.

The challenge scores the files' normalized ``.X`` (GEX log-normalized with scran size
factors, ADT CLR-normalized); ``raymmi ingest cells`` stores ``layers['counts']`` when a file
has it, so the figures are reproduced on copies of the files without that layer, whose
ingest stores ``.X`` and records it (``extra.counts_from``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file
from threadpoolctl import threadpool_limits

from raymmi import metrics as M
from raymmi import testing
from raymmi.config import IngestCellsConfig, TrackingConfig
from raymmi.io import open_shard_set
from raymmi.run import TaskConfig, run_task
from raymmi.run import _task as _tasks
from raymmi.schema import RaymmiError

CITE = "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_{}.h5ad"
OFF = TrackingConfig(enabled=False)
SPLIT = {"train_batches": ("s1d1",), "test_batches": ("s1d2",)}


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices on a shared 2-core box: spinning BLAS threads cost ~5x (measured)."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def cite(ray_session, tmp_path_factory) -> dict[str, str]:
    """The CITE starter ingested twice: as is (raw counts) and from ``.X`` (normalized)."""
    from raymmi.run import ingest_cells

    rna, adt = shared_file(CITE.format("rna")), shared_file(CITE.format("mod2"))
    root = tmp_path_factory.mktemp("task_runner")
    copies = {}
    for name, path in (("rna", rna), ("adt", adt)):
        data = ad.read_h5ad(path)
        del data.layers["counts"]
        copies[name] = root / f"{name}_x.h5ad"
        data.write_h5ad(copies[name])
    with pytest.warns(UserWarning, match="storing X"):
        ingest_cells(
            IngestCellsConfig(rna=str(copies["rna"]), adt=str(copies["adt"]), out=str(root / "x")),
            tracking=OFF,
        )
    ingest_cells(
        IngestCellsConfig(rna=str(rna), adt=str(adt), out=str(root / "counts")), tracking=OFF
    )
    return {"x": str(root / "x"), "counts": str(root / "counts"), "root": str(root)}


def _config(data: str, out: Path, task: str, **kwargs) -> TaskConfig:
    return TaskConfig(task=task, data=data, out=str(out), **{**SPLIT, **kwargs})


def _scores(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text())


# ----------------------------------------------------------------------------------------------
# the challenge's figures through the Ray layer
# ----------------------------------------------------------------------------------------------


def _pure_figures() -> dict[str, float]:
    """RMSE of each method computed by the pure functions on the files themselves (those are
    checked against numpy and scikit-learn in ``test_tasks_cite_starter.py``)."""
    from raymmi import tasks as T

    x = sp.csr_matrix(ad.read_h5ad(shared_file(CITE.format("rna"))).X)
    adt = ad.read_h5ad(shared_file(CITE.format("mod2")))
    y, batch = sp.csr_matrix(adt.X), adt.obs["batch"].astype(str).to_numpy()
    train, test = T.batch_split(batch, train_batches=["s1d1"], test_batches=["s1d2"])
    svd_krr = T.predict_svd_krr(
        x[train], y[train], x[test], batch=batch[train], config=T.svd_krr_config("rna", "adt")
    )
    return {
        "mean": M.rmse(y[test], T.predict_mean(y[train], n_cells=int(test.sum()))),
        "svd_krr": M.rmse(y[test], svd_krr),
    }


def test_predict_reproduces_the_challenge_figures(cite, tmp_path):
    from mlflow.tracking import MlflowClient

    expected = _pure_figures()
    for method, figure in expected.items():
        out = tmp_path / method
        scores = run_task(_config(cite["x"], out, "predict", method=method))
        assert scores["rmse"] == pytest.approx(figure, rel=1e-6), method
        assert _scores(out) == pytest.approx(scores)
        assert scores["cells_test"] == 289
        predictions = open_shard_set(str(out / "predictions"), kind="cells")
        assert predictions.manifest.num_rows == 289
        (modality,) = predictions.manifest.modalities
        assert modality.name == "adt_predicted" and len(modality.features) == 134
        run_id = predictions.manifest.producer["mlflow_run_id"]
        run = MlflowClient().get_run(run_id)
        assert run.data.metrics["rmse"] == pytest.approx(scores["rmse"])
        assert run.data.tags["raymmi.method"] == method
    config = yaml_config(tmp_path / "svd_krr")
    assert config["resolved"]["source"] == "rna" and config["resolved"]["target"] == "adt"


def yaml_config(out: Path) -> dict:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())


def test_match_cca_beats_random_five_times(cite, tmp_path):
    out = tmp_path / "match"
    scores = run_task(_config(cite["x"], out, "match"), tracking=OFF)
    n = 289
    assert scores["random_score"] == pytest.approx(1 / n)
    assert scores["ratio_to_random"] >= 5.0
    matching = sp.load_npz(out / "matching.npz")
    M.check_matching(matching, n_cells=n)
    pairing = np.load(out / "pairing.npz")
    np.testing.assert_array_equal(
        pairing["column_cell_id"][pairing["partner"]], pairing["row_cell_id"]
    )
    assert M.match_score(matching, partner=pairing["partner"]) == pytest.approx(
        scores["match_score"]
    )
    matches = open_shard_set(str(out / "matches")).read_table().to_pandas()
    assert matches["partner_weight"].mean() == pytest.approx(scores["match_score"], rel=1e-5)


def test_embed_pca_scores_the_six_metrics(cite, tmp_path):
    out = tmp_path / "embed"
    scores = run_task(_config(cite["x"], out, "embed", embed_cells="all"), tracking=OFF)
    six = ["nmi", "asw_label", "cc_cons", "ti_cons", "asw_batch", "graph_conn"]
    assert all(0.0 <= scores[k] <= 1.0 for k in [*six, "mean", "ilisi"]), scores
    assert scores["mean"] == pytest.approx(np.mean([scores[k] for k in six]))
    assert scores["nmi"] > 0.6 and scores["graph_conn"] > 0.8
    embedding = open_shard_set(str(out / "embedding"))
    assert embedding.manifest.num_rows == 600
    assert embedding.manifest.extra["task"]["missing"] == []
    # the challenge's protocol: only the test cells, one batch here, so no batch metrics
    out = tmp_path / "embed_test"
    scores = run_task(_config(cite["x"], out, "embed"), tracking=OFF)
    assert _scores(out)["asw_batch"] is None and np.isnan(scores["asw_batch"])
    assert scores["cells_scored"] == 289 and np.isfinite(scores["mean"])


# ----------------------------------------------------------------------------------------------
# bad input: a RaymmiError with the fix, nothing written
# ----------------------------------------------------------------------------------------------


def test_config_refuses_overlapping_or_empty_batches():
    with pytest.raises(RaymmiError, match=r"overlap in \['s1d2'\].*remove it from one side"):
        TaskConfig("predict", "d", "o", train_batches=("s1d1", "s1d2"), test_batches=("s1d2",))
    with pytest.raises(RaymmiError, match="--test-batches is empty"):
        TaskConfig("match", "d", "o", train_batches=("s1d1",), test_batches=())
    with pytest.raises(RaymmiError, match="not a method of task 'embed'"):
        TaskConfig("embed", "d", "o", train_batches="a", test_batches="b", method="cca")
    config = TaskConfig("embed", "d", "o", train_batches="a,b", test_batches="c")
    assert config.train_batches == ("a", "b") and config.resolved_method == "pca"


def test_default_modalities_are_normalized_ones():
    from raymmi.schema import Manifest, Modality

    def manifest(names, **kwargs):
        mods = tuple(Modality(n, "dense", ("f",)) for n in names)
        return Manifest(kind="cells", files=(), metadata=("cell_id",), modalities=mods, **kwargs)

    rna, other = _tasks._RNA_CANDIDATES, _tasks._OTHER_CANDIDATES
    steps = {"command": "preprocess cells", "config": {"rna": {"steps": ["log1p", "scale"]}}}
    cite = manifest(["rna", "rna_hvg", "adt", "adt_clr"], producer=steps)
    assert _tasks._default(cite, rna, flag="--source", what="RNA") == "rna_hvg"
    assert _tasks._default(cite, other, flag="--target", what="ADT") == "adt_clr"
    assert _tasks._scaled(cite, "rna_hvg") and not _tasks._scaled(cite, "adt_clr")
    multiome = manifest(["rna", "rna_norm", "atac", "atac_lsi"], producer=steps)
    assert _tasks._default(multiome, other, flag="--target", what="ATAC") == "atac"
    raw = manifest(["rna", "atac"], producer={"command": "ingest cells"})
    with pytest.raises(RaymmiError, match=r"\['rna \(raw counts\)', 'atac \(raw counts\)'\]"):
        _tasks._default(raw, other, flag="--target", what="ATAC")


def test_raw_counts_are_not_taken_for_normalized_values(cite, tmp_path):
    counts = open_shard_set(cite["counts"]).manifest.extra["counts_from"]
    x = open_shard_set(cite["x"]).manifest.extra["counts_from"]
    assert counts == {"rna": "/layers/counts", "adt": "/layers/counts"}
    assert x == {"rna": "/X", "adt": "/X"}
    out = tmp_path / "o"
    with pytest.raises(RaymmiError, match=r"no normalized RNA.*rna \(raw counts\).*preprocess"):
        run_task(_config(cite["counts"], out, "predict"), tracking=OFF)
    assert not out.exists()


def test_missing_modality_unknown_batch_and_existing_out(cite, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RaymmiError, match=r"'rna_norm'.*present: \['rna', 'adt'\]"):
        run_task(_config(cite["x"], out, "predict", source="rna_norm"), tracking=OFF)
    with pytest.raises(RaymmiError, match=r"'atac'.*present"):
        run_task(_config(cite["x"], out, "embed", modalities=("rna", "atac")), tracking=OFF)
    with pytest.raises(RaymmiError, match=r"batches \['s9'\] have no cells.*s1d1 \(311 cells\)"):
        run_task(_config(cite["x"], out, "match", test_batches=("s9",)), tracking=OFF)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(RaymmiError, match=r"already exists.*--overwrite"):
        run_task(_config(cite["x"], out, "predict", method="mean"), tracking=OFF)


def test_invalid_matching_is_refused_by_the_validator(cite, tmp_path, monkeypatch):
    def not_stochastic(*args, **kwargs):
        n = args[2].shape[0]
        return sp.csr_matrix(2.0 * np.eye(n))

    monkeypatch.setattr(_tasks, "match_cca", not_stochastic)
    out = tmp_path / "o"
    with pytest.raises(RaymmiError, match=r"invalid matching.*289 rows do not sum to 1"):
        run_task(_config(cite["x"], out, "match"), tracking=OFF)
    assert not out.exists()


def test_one_batch_set_is_refused(cite, tmp_path):
    from raymmi.run import generate_cells

    spec = testing.CellSetSpec(
        n_cells=40,
        kind="cite",
        n_genes=30,
        n_proteins=6,
        n_cell_types=2,
        n_batches=1,
        chunk_size=40,
    )
    generate_cells(spec, out=str(tmp_path / "one"), tracking=OFF)
    batch = open_shard_set(str(tmp_path / "one")).read_table(columns=["batch"]).column(0)
    (only,) = set(batch.to_pylist())
    out = tmp_path / "o"
    config = TaskConfig(
        task="predict",
        data=str(tmp_path / "one"),
        out=str(out),
        train_batches=(only,),
        test_batches=("other",),
        source="rna",
        target="adt",
    )
    with pytest.raises(RaymmiError, match="fewer than two batches"):
        run_task(config, tracking=OFF)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# a trained method (Ray Train on the train batches only)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.heavy
def test_embed_with_a_trained_autoencoder(cite, tmp_path):
    out = tmp_path / "ae"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = run_task(
            _config(cite["x"], out, "embed", method="ae", epochs=2, embed_cells="all"),
            tracking=OFF,
        )
    assert all(np.isfinite(scores[k]) for k in ("nmi", "asw_label", "asw_batch", "mean"))
    trained_on = open_shard_set(str(out / "_train_cells")).read_table(columns=["batch"])
    assert set(trained_on.column(0).to_pylist()) == {"s1d1"}
    embedding = open_shard_set(str(out / "embedding"))
    assert embedding.manifest.num_rows == 600
    assert [m.name for m in embedding.manifest.modalities] == ["X_ae"]
