"""The pure plate-ingest functions, without Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymmi.io import _plates as P
from raymmi.schema import NEGCON, RaymmiError


def _frame(n=6, plates=("P1", "P2")):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "Metadata_Plate": [plates[i % len(plates)] for i in range(n)],
            "Metadata_Well": [f"A{i:02d}" for i in range(n)],
            "Metadata_Compound": ["DMSO" if i < 2 else f"C{i}" for i in range(n)],
            "f1": rng.normal(size=n),
            "f2": rng.normal(size=n),
        }
    )


def test_source_type(tmp_path):
    for name, kind in [("a.csv", "csv"), ("a.CSV.gz", "csv"), ("a.parquet", "parquet")]:
        (tmp_path / name).write_text("x")
        assert P.source_type(str(tmp_path / name)) == kind
    assert P.source_type(str(tmp_path)) == "cellprofiler"
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(RaymmiError, match="unknown file type"):
        P.source_type(str(tmp_path / "a.xlsx"))
    with pytest.raises(RaymmiError, match="does not exist"):
        P.source_type(str(tmp_path / "none.csv"))


def test_plan_schema_types_and_errors():
    schema = pa.Schema.from_pandas(_frame(), preserve_index=False)
    metadata, features = P.plan_schema({"a": schema})
    assert features == ("f1", "f2")
    assert metadata.field("Metadata_Plate").type == pa.string()
    assert metadata.field(NEGCON).type == pa.bool_()

    with pytest.raises(RaymmiError, match="has no Metadata_Plate column"):
        P.plan_schema({"a": schema.remove(0)})
    meta_only = pa.schema([("Metadata_Plate", pa.string())])
    with pytest.raises(RaymmiError, match="has no feature columns"):
        P.plan_schema({"a": meta_only})
    text = schema.append(pa.field("Image_FileName", pa.string()))
    with pytest.raises(RaymmiError, match=r"\['Image_FileName'\] are not numeric"):
        P.plan_schema({"a": text})
    other = schema.remove(schema.get_field_index("f2"))
    with pytest.raises(RaymmiError, match="have different features"):
        P.plan_schema({"a": schema, "b": other})


def _prepare(frame, *, query=None, on_nan="fail"):
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata, features = P.plan_schema({"src": table.schema})
    summary = P.SourceSummary("src")
    out = P.prepare_table(
        table,
        metadata=metadata,
        features=features,
        negcon_query=query,
        on_nan=on_nan,
        summary=summary,
    )
    return out, summary


def test_prepare_casts_and_flags_negcon():
    frame = _frame()
    out, _ = _prepare(frame, query="Metadata_Compound == 'DMSO'")
    assert out.column(NEGCON).to_pylist() == [True, True, False, False, False, False]
    assert out.schema.field("f1").type == pa.float32()
    np.testing.assert_array_equal(
        out.column("f1").to_numpy(), frame["f1"].to_numpy().astype(np.float32)
    )
    assert frame["f1"].dtype == np.float64  # input untouched


def test_prepare_uses_existing_negcon_column():
    frame = _frame().assign(Metadata_is_negcon=[1, 0, 0, 0, 0, 1])
    out, _ = _prepare(frame)
    assert out.column(NEGCON).to_pylist() == [True, False, False, False, False, True]


def test_bad_query_is_a_clear_error():
    with pytest.raises(RaymmiError, match=r"names column\(s\) \['Metadata_Nope'\] not in the"):
        _prepare(_frame(), query="Metadata_Nope == 'DMSO'")
    with pytest.raises(RaymmiError, match=r"does not parse.*allowed:"):
        _prepare(_frame(), query="Metadata_Compound ==")


def test_nan_policies():
    frame = _frame()
    frame.loc[1, "f1"] = np.nan
    frame.loc[2, "f2"] = np.inf
    out, summary = _prepare(frame, on_nan="drop-rows")
    assert out.num_rows == 4 and summary.rows_dropped == 2
    assert dict(summary.nonfinite_per_column) == {"f1": 1, "f2": 1}
    out, _ = _prepare(frame, on_nan="keep")
    assert out.num_rows == 6 and np.isnan(out.column("f2").to_numpy()[2])


def test_splitter_never_mixes_plates_and_finds_duplicates(tmp_path):
    frame = pd.concat([_frame(), _frame().iloc[:2]], ignore_index=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata, features = P.plan_schema({"src": table.schema})
    plan = P.IngestPlan(metadata=metadata, features=features)
    summary = P.ingest_tables(
        [table], str(tmp_path), source="src", part_name="part-0.parquet", plan=plan
    )
    assert sorted(f.plate for f in summary.files) == ["P1", "P2"]
    for entry in summary.files:
        plates = pq.read_table(tmp_path / entry.path).column("Metadata_Plate").to_pylist()
        assert set(plates) == {entry.plate}
    p1 = [f for f in summary.files if f.plate == "P1"]
    count, examples = P.find_duplicate_keys(str(tmp_path), p1, keys=P.key_columns(metadata.names))
    assert count == 1 and examples == [("P1", "A00")]


def test_corrupt_files_are_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(RaymmiError, match="cannot be read as a table"):
        P.read_source_schema(str(bad))
    csv = tmp_path / "t.csv"
    csv.write_text("Metadata_Plate,f1\nP1,1.0\nP1,abc\n")
    schema = P.read_source_schema(str(csv))
    with pytest.raises(RaymmiError, match="cannot be read as a table"):
        list(P.iter_source_tables(str(csv), features=["f1"]))
    assert "f1" in schema.names


def test_splitter_bounds_open_parts(tmp_path):
    frame = _frame(n=40, plates=tuple(f"P{i}" for i in range(5)))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata, features = P.plan_schema({"src": table.schema})
    schema = P.IngestPlan(metadata=metadata, features=features).stored_schema()
    splitter = P.PlateSplitter(
        str(tmp_path),
        schema,
        part_name="part-0.parquet",
        keys=P.key_columns(schema.names),
        max_open=2,
    )
    prepared, _ = _prepare(frame)
    for start in range(0, 40, 7):  # plates interleave across batches
        splitter.write(prepared.slice(start, 7))
    entries = splitter.close()
    assert sum(e.rows for e in entries) == 40
    assert len(entries) > 5  # plates were continued in new parts
    for entry in entries:
        plates = pq.read_table(tmp_path / entry.path).column("Metadata_Plate").to_pylist()
        assert set(plates) == {entry.plate}
    assert splitter.duplicates() == {}
