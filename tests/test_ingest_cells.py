"""`raymmi ingest cells` and `.h5ad` export on the real CITE-seq starter files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file

from raymmi.cli import main
from raymmi.io import open_shard_set
from raymmi.schema import list_to_dense, lists_to_sparse

CITE = "singlecell/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_{}.h5ad"

pytestmark = pytest.mark.usefixtures("ray_session")


def _run(*argv: str) -> int:
    return main([*argv, "--num-cpus", "2"])


@pytest.fixture(scope="module")
def cite():
    rna_path, adt_path = shared_file(CITE.format("rna")), shared_file(CITE.format("mod2"))
    return rna_path, adt_path, ad.read_h5ad(rna_path), ad.read_h5ad(adt_path)


def test_cite_ingest_keeps_counts_obs_and_pairs(tmp_path, cite):
    rna_path, adt_path, rna, adt = cite
    out = tmp_path / "cite"
    args = ["--rna", str(rna_path), "--adt", str(adt_path), "--out", str(out)]
    assert _run("ingest", "cells", *args, "--chunk-size", "128") == 0
    shard_set = open_shard_set(str(out), kind="cells")
    m = shard_set.manifest
    assert m.num_rows == 600 and len(m.files) == 5  # ceil(600 / 128)
    assert [x.name for x in m.modalities] == ["rna", "adt"]
    assert m.modality("rna").features == tuple(rna.var_names)
    assert m.extra["counts_from"]["rna"].endswith("layers/counts")
    table = shard_set.read_table()
    assert table.column("cell_id").to_pylist() == list(rna.obs_names)
    counts = lists_to_sparse(
        table.column("rna_indices"), table.column("rna_values"), n_features=rna.n_vars
    )
    assert (counts != sp.csr_matrix(rna.layers["counts"], dtype=np.float32)).nnz == 0
    np.testing.assert_array_equal(
        list_to_dense(table.column("adt")), np.asarray(adt.layers["counts"].todense())
    )
    np.testing.assert_allclose(
        table.column("rna_depth").to_numpy(), np.asarray(rna.layers["counts"].sum(1)).ravel()
    )
    assert table.column("batch").to_pylist() == list(rna.obs["batch"].astype(str))
    assert table.column("cell_type").to_pylist() == list(rna.obs["cell_type"].astype(str))
    assert table.column("is_train").to_pylist() == list(rna.obs["is_train"])

    exported = tmp_path / "cite.h5ad"
    assert _run("export", str(out), "--out", str(exported)) == 0
    back = ad.read_h5ad(exported)
    assert list(back.obs_names) == list(rna.obs_names)
    assert (sp.csr_matrix(back.X) != sp.csr_matrix(rna.layers["counts"])).nnz == 0
    np.testing.assert_array_equal(back.obsm["adt"], np.asarray(adt.layers["counts"].todense()))
    assert list(back.uns["adt_features"]) == list(adt.var_names)
    assert list(back.obs["cell_type"].astype(str)) == list(rna.obs["cell_type"].astype(str))


def test_shuffled_partner_is_realigned(tmp_path, cite):
    rna_path, _, _, adt = cite
    order = np.random.default_rng(0).permutation(adt.n_obs)
    shuffled = adt[order].copy()
    shuffled.write_h5ad(tmp_path / "adt_shuffled.h5ad")
    out = tmp_path / "c"
    args = ["--rna", str(rna_path), "--adt", str(tmp_path / "adt_shuffled.h5ad")]
    assert _run("ingest", "cells", *args, "--out", str(out), "--chunk-size", "250") == 0
    table = open_shard_set(str(out)).read_table()
    np.testing.assert_array_equal(
        list_to_dense(table.column("adt")), np.asarray(adt.layers["counts"].todense())
    )


def test_h5mu_input(tmp_path, cite):
    mudata = pytest.importorskip("mudata")
    _, _, rna, adt = cite
    mdata = mudata.MuData({"rna": rna, "prot": adt})
    mdata.write(tmp_path / "cite.h5mu")
    out = tmp_path / "mu"
    assert _run("ingest", "cells", "--rna", str(tmp_path / "cite.h5mu"), "--out", str(out)) == 0
    m = open_shard_set(str(out)).manifest
    assert [x.name for x in m.modalities] == ["rna", "adt"] and m.num_rows == 600


def test_different_cells_is_an_error_with_examples(tmp_path, cite, capsys):
    rna_path, _, _, adt = cite
    adt[:-3].copy().write_h5ad(tmp_path / "fewer.h5ad")
    out = tmp_path / "c"
    args = ["--rna", str(rna_path), "--adt", str(tmp_path / "fewer.h5ad"), "--out", str(out)]
    assert _run("ingest", "cells", *args) == 2
    err = capsys.readouterr().err
    assert "hold different cells: 3 only in" in err and adt.obs_names[-1] in err
    assert not out.exists()


def test_bad_cell_inputs(tmp_path, capsys):
    (tmp_path / "x.h5ad").write_bytes(b"not hdf5")
    (tmp_path / "x.loom").write_bytes(b"")
    for src, message in [
        (tmp_path / "x.h5ad", "not a readable HDF5"),
        (tmp_path / "x.loom", "unknown file type"),
        (tmp_path / "missing.h5ad", "does not exist"),
    ]:
        assert _run("ingest", "cells", "--rna", str(src), "--out", str(tmp_path / "o")) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_layer_chooses_the_matrix(tmp_path, cite, capsys):
    """--layer X takes a challenge's normalized .X even where layers['counts'] exists."""
    rna_path, adt_path, rna, _ = cite
    out = tmp_path / "x"
    args = ["--rna", str(rna_path), "--adt", str(adt_path), "--out", str(out), "--layer", "X"]
    assert _run("ingest", "cells", *args) == 0
    m = open_shard_set(str(out)).manifest
    assert m.extra["counts_from"]["rna"].endswith("/X")
    table = open_shard_set(str(out)).read_table()
    values = lists_to_sparse(
        table.column("rna_indices"), table.column("rna_values"), n_features=rna.n_vars
    )
    assert abs(values - sp.csr_matrix(rna.X, dtype=np.float32)).max() < 1e-6
    bad = ["--rna", str(rna_path), "--adt", str(adt_path), "--out", str(tmp_path / "b")]
    assert _run("ingest", "cells", *bad, "--layer", "spliced") == 2
    err = capsys.readouterr().err
    assert "--layer 'spliced'" in err and "layers ['counts']" in err
    assert not (tmp_path / "b").exists()
