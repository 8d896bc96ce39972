"""Shard sets read as Ray Datasets (the entry of every distributed stage)."""

from __future__ import annotations

import pytest
from conftest import shared_file

from raymmi.config import IngestPlatesConfig
from raymmi.io import open_shard_set
from raymmi.run import ingest_plates, read_dataset


@pytest.mark.usefixtures("ray_session")
def test_read_dataset_reads_exactly_the_manifest(tmp_path):
    out = tmp_path / "jump"
    src = shared_file("cellpainting/jump_8plates_3features.parquet")
    ingest_plates(IngestPlatesConfig(sources=(str(src),), out=str(out)))
    # a stray file that is not in the manifest must not be read
    (out / "plate=stray").mkdir()
    (out / "plate=stray" / "part-0.parquet").write_bytes(
        (out / open_shard_set(str(out)).manifest.files[0].path).read_bytes()
    )
    shard_set = open_shard_set(str(out))
    ds = read_dataset(shard_set, columns=["Metadata_Plate", "Cells_AreaShape_Zernike_5_1"])
    assert ds.count() == 3070
    assert ds.columns() == ["Metadata_Plate", "Cells_AreaShape_Zernike_5_1"]
    plates = ds.groupby("Metadata_Plate").count().to_pandas()
    assert len(plates) == 8


@pytest.mark.usefixtures("ray_session")
def test_map_batches_then_the_parts_sink_keeps_plates_apart(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from raymmi.io import ShardSetWriter
    from raymmi.run import ShardPartsSink
    from raymmi.schema import Manifest

    src = shared_file("cellpainting/jump_8plates_3features.parquet")
    ingest_plates(IngestPlatesConfig(sources=(str(src),), out=str(tmp_path / "in")))
    shard_set = open_shard_set(str(tmp_path / "in"))
    feature = shard_set.manifest.features[0]

    def double(batch: pa.Table) -> pa.Table:
        i = batch.schema.get_field_index(feature)
        return batch.set_column(i, feature, pc.multiply(batch.column(feature), 2.0))

    ds = read_dataset(shard_set).map_batches(double, batch_format="pyarrow")
    schema = shard_set.read_table().schema
    with ShardSetWriter(str(tmp_path / "out")) as writer:
        sink = ShardPartsSink(writer.staging, kind="plates", schema=schema)
        ds.write_datasink(sink)
        files = sink.files
        writer.commit(
            Manifest(
                kind="plates",
                files=tuple(files),
                metadata=shard_set.manifest.metadata,
                features=shard_set.manifest.features,
            )
        )
    out = open_shard_set(str(tmp_path / "out"))
    assert out.verify() == []
    for entry, table in out.iter_tables():
        assert set(table.column("Metadata_Plate").to_pylist()) == {entry.plate}
    before = shard_set.read_table().to_pandas().sort_values(["Metadata_Plate", "Metadata_Well"])
    after = out.read_table().to_pandas().sort_values(["Metadata_Plate", "Metadata_Well"])
    np.testing.assert_array_equal(after[feature].to_numpy(), 2 * before[feature].to_numpy())
