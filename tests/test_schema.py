from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from raymmi.schema import (
    encode_matrix,
    CellBatch,
    FileEntry,
    Manifest,
    Modality,
    RaymmiError,
    cell_batch_to_arrow,
    dense_to_list,
    list_to_dense,
    lists_to_sparse,
    plate_dir,
    sparse_to_lists,
)


def _manifest() -> Manifest:
    return Manifest(
        kind="cells",
        files=(FileEntry("part-0.parquet", 3, 10, "ab"), FileEntry("part-1.parquet", 2, 9, "cd")),
        metadata=("cell_id", "batch"),
        modalities=(Modality("rna", "sparse", ("g1", "g2")), Modality("adt", "dense", ("p1",))),
        producer={"command": "x", "mlflow_run_id": "r"},
    )


def test_manifest_round_trip():
    m = _manifest()
    back = Manifest.from_dict(m.to_dict())
    assert back == m
    assert back.num_rows == 5
    assert back.modality("adt").columns() == ("adt",)
    assert back.modality("rna").columns() == ("rna_indices", "rna_values")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "wells"}, "kind='wells' is not one of"),
        ({"schema_version": 99}, "newer than this raymmi"),
        ({"num_rows": 7}, "num_rows=7 but the files sum to 5"),
        ({"files": [{"path": "x"}]}, "not a valid raymmi manifest"),
    ],
)
def test_manifest_rejects_bad_dicts(change, message):
    data = {**_manifest().to_dict(), **change}
    with pytest.raises(RaymmiError, match=message):
        Manifest.from_dict(data)


def test_unknown_modality_lists_present_ones():
    with pytest.raises(RaymmiError, match=r"has \['rna', 'adt'\]"):
        _manifest().modality("atac")


def test_plate_dir_is_safe_and_distinct():
    assert plate_dir("BR00117037") == "plate=BR00117037"
    assert plate_dir("a/b") != plate_dir("a_b")
    assert "/" not in plate_dir("a/b") and " " not in plate_dir("x y")


def test_sparse_lists_round_trip():
    rng = np.random.default_rng(0)
    m = sp.random(50, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
    m.data = rng.integers(1, 9, m.nnz).astype(np.float32)
    idx, val = sparse_to_lists(m)
    back = lists_to_sparse(idx, val, n_features=30)
    assert (back != m).nnz == 0
    # a slice of the arrays (non-zero first offset) decodes too
    part = lists_to_sparse(idx.slice(10, 5), val.slice(10, 5), n_features=30)
    assert (part != m[10:15]).nnz == 0


def test_dense_list_round_trip():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(list_to_dense(dense_to_list(x)), x)


def test_encode_matrix_formats_round_trip():
    rng = np.random.default_rng(0)
    x = rng.random((40, 25)).astype(np.float32)
    dense = encode_matrix("m", x)
    np.testing.assert_array_equal(list_to_dense(dense["m"]), x)
    np.testing.assert_allclose(dense["m_depth"].to_numpy(), x.sum(axis=1), rtol=1e-6)

    half = encode_matrix("m", x, fmt="float16")
    assert half["m"].type.value_type == pa.float16()
    back = list_to_dense(half["m"])  # readers get float32
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-3, atol=1e-4)
    assert half["m"].nbytes < 0.6 * dense["m"].nbytes

    sparse = encode_matrix("m", x, fmt="sparse", threshold=0.7)
    kept = lists_to_sparse(sparse["m_indices"], sparse["m_values"], n_features=25)
    expected = np.where(x >= 0.7, x, 0)
    np.testing.assert_array_equal(kept.toarray(), expected)
    assert kept.nnz == int((x >= 0.7).sum())
    np.testing.assert_allclose(sparse["m_depth"].to_numpy(), expected.sum(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="float16"):
        encode_matrix("m", x, fmt="int8")


def test_sparse_imputations_need_a_threshold():
    from raymmi.config import TrainConfig

    with pytest.raises(RaymmiError, match="impute_threshold > 0"):
        TrainConfig("sailerx", data="d", out="o", impute=True, impute_format="sparse")
    with pytest.raises(RaymmiError, match="impute_format"):
        TrainConfig("sailerx", data="d", out="o", impute_format="bf16")


def test_cell_batch_to_arrow_layout():
    obs = pd.DataFrame({"batch": ["a", "b"], "cell_type": ["T", None]}, index=["c1", "c2"])
    rna = sp.csr_matrix(np.array([[0, 2, 1], [3, 0, 0]], dtype=np.float32))
    adt = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    table = cell_batch_to_arrow(CellBatch(obs, {"rna": rna, "adt": adt}))
    assert table.column_names == [
        "cell_id",
        "batch",
        "cell_type",
        "rna_indices",
        "rna_values",
        "rna_depth",
        "adt",
        "adt_depth",
    ]
    assert table.column("rna_depth").to_pylist() == [3.0, 3.0]
    assert table.column("adt_depth").to_pylist() == [3.0, 7.0]
    assert table.column("cell_type").to_pylist() == ["T", None]


def test_cell_batch_checks_rows():
    obs = pd.DataFrame({"batch": ["a"]}, index=["c1"])
    with pytest.raises(ValueError, match="has 2 rows but obs has 1"):
        CellBatch(obs, {"adt": np.zeros((2, 3))})
