"""Shard sets read as Ray Datasets (the entry of every distributed stage)."""

from __future__ import annotations

import pytest
from conftest import shared_file

from raymmi.config import IngestPlatesConfig
from raymmi.io import open_shard_set
from raymmi.run import (
    ingest_plates,
    read_dataset,
    tasks_in_flight,
    without_budget_backpressure,
    work_blocks,
    work_dataset,
)


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


@pytest.mark.parametrize(
    ("n", "workers", "most"), [(80, 2, 16), (3456, 32, 16), (7, 1, 4), (5, 8, 16)]
)
def test_work_blocks_cover_the_rows_big_first_single_last(n, workers, most):
    sizes = work_blocks(n, workers, most=most)
    assert sum(sizes) == n
    assert all(1 <= s <= most for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == 1
    # far fewer tasks than rows where there are many rows per worker
    if n >= 16 * workers:
        assert len(sizes) < n / 4


def test_work_blocks_edges():
    assert work_blocks(0, 2) == []
    assert work_blocks(1, 2) == [1]
    assert work_blocks(6, 2, most=1) == [1] * 6
    assert work_blocks(4, 0) == work_blocks(4, 1)


def test_tasks_in_flight_queues_one_only_where_the_cpus_bound_the_workers():
    assert tasks_in_flight(2, 2, 14) == 3  # the CPUs hold the third back until one frees
    assert tasks_in_flight(16, 16, 40) == 17
    assert tasks_in_flight(1, 2, 14) == 1  # --workers below the CPUs: a third would run
    assert tasks_in_flight(2, 2, 2) == 2  # never more than the blocks
    assert tasks_in_flight(2, 2, 1) == 1
    assert tasks_in_flight(0, 2, 0) == 1


@pytest.mark.usefixtures("ray_session")
def test_work_dataset_is_one_block_per_work_block_and_maps_every_row():
    import ray.data

    units = [{"i": i, "name": f"field-{i}"} for i in range(40)]
    ds = work_dataset(units, 2)
    assert ds.num_blocks() == len(work_blocks(40, 2))
    without_budget_backpressure(ds)
    out = ds.map_batches(
        lambda b: {"i": b["i"] * 2},
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=2),
        num_cpus=1,
    )
    assert sorted(r["i"] for r in out.take_all()) == [2 * i for i in range(40)]


@pytest.mark.usefixtures("ray_session")
def test_without_budget_backpressure_is_scoped_to_its_dataset():
    import ray.data
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES,
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    )

    ds = ray.data.range(4)
    without_budget_backpressure(ds)
    kept = ds.context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)
    assert [p.__name__ for p in kept] == [
        p.__name__
        for p in ENABLED_BACKPRESSURE_POLICIES
        if p.__name__ != "ResourceBudgetBackpressurePolicy"
    ]
    # a dataset made after it, and the session's context, keep Ray's defaults
    other = ray.data.range(4)
    assert other.context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, None) is None
    assert (
        ray.data.DataContext.get_current().get_config(
            ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, None
        )
        is None
    )
    # and the policy choice travels to the datasets built from it (the write, here a map)
    assert ds.map(lambda r: r).context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY) == kept
