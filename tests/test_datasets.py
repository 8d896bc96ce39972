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
