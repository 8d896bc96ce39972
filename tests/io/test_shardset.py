from __future__ import annotations

import json

import pyarrow as pa
import pytest

from raymmi.io import ShardSetWriter, open_shard_set, write_part
from raymmi.schema import MANIFEST_NAME, Manifest, RaymmiError


def _write(out, *, rows=3, overwrite=False, plate="P1"):
    table = pa.table({"Metadata_Plate": [plate] * rows, "f": pa.array(range(rows), pa.float32())})
    with ShardSetWriter(str(out), overwrite=overwrite) as writer:
        entry = write_part(writer.staging, f"plate={plate}/part-0.parquet", table, plate=plate)
        return writer.commit(
            Manifest(kind="plates", files=(entry,), metadata=("Metadata_Plate",), features=("f",))
        )


def test_commit_then_read(tmp_path):
    out = tmp_path / "set"
    manifest = _write(out)
    opened = open_shard_set(str(out), kind="plates")
    assert opened.manifest == manifest
    assert opened.read_table().column("f").to_pylist() == [0.0, 1.0, 2.0]
    assert opened.verify() == []
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no staging left behind


def test_file_uri_works(tmp_path):
    out = tmp_path / "set"
    _write(out)
    assert open_shard_set(f"file://{out}").manifest.num_rows == 3


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "set"
    _write(out)
    with pytest.raises(RaymmiError, match=r"already exists.*--overwrite"):
        _write(out)
    _write(out, rows=5, overwrite=True)
    assert open_shard_set(str(out)).manifest.num_rows == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_failure_before_commit_leaves_nothing(tmp_path):
    out = tmp_path / "set"
    with pytest.raises(RuntimeError, match="boom"), ShardSetWriter(str(out)) as writer:
        write_part(writer.staging, "part-0.parquet", pa.table({"x": [1]}))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_set(tmp_path):
    out = tmp_path / "set"
    _write(out)
    with pytest.raises(RuntimeError), ShardSetWriter(str(out), overwrite=True) as writer:
        write_part(writer.staging, "part-0.parquet", pa.table({"x": [1]}))
        raise RuntimeError("crash")
    assert open_shard_set(str(out)).manifest.num_rows == 3


def test_reader_refuses_directory_without_manifest(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "part-0.parquet").write_bytes(b"x")
    with pytest.raises(RaymmiError, match=r"is not a shard set: it has no _manifest\.json"):
        open_shard_set(str(tmp_path / "raw"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: (out / MANIFEST_NAME).write_text("{not json"), "cannot be read"),
        (
            lambda out: (out / MANIFEST_NAME).write_text(json.dumps({"kind": "plates"})),
            "not a valid",
        ),
        (lambda out: (out / "plate=P1" / "part-0.parquet").unlink(), "are missing"),
    ],
)
def test_reader_refuses_damaged_sets(tmp_path, damage, message):
    out = tmp_path / "set"
    _write(out)
    damage(out)
    with pytest.raises(RaymmiError, match=message):
        open_shard_set(str(out))


def test_reader_checks_kind_and_existence(tmp_path):
    out = tmp_path / "set"
    _write(out)
    with pytest.raises(RaymmiError, match="this stage needs 'cells'"):
        open_shard_set(str(out), kind="cells")
    with pytest.raises(RaymmiError, match="does not exist"):
        open_shard_set(str(tmp_path / "nope"))


def test_verify_detects_changed_bytes(tmp_path):
    out = tmp_path / "set"
    _write(out)
    part = out / "plate=P1" / "part-0.parquet"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    assert open_shard_set(str(out)).verify() == [
        "plate=P1/part-0.parquet: checksum differs from the manifest"
    ]


def test_checksum_is_the_file_sha256(tmp_path):
    import hashlib

    out = tmp_path / "set"
    manifest = _write(out)
    entry = manifest.files[0]
    data = (out / entry.path).read_bytes()
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.bytes == len(data)


def test_abort_never_hides_the_original_error(tmp_path, monkeypatch):
    # a task cancelled by the failure still writing into the staging folder: delete_dir fails
    # with "Directory not empty"; the original error must surface, with a warning for the folder
    import raymmi.io._shardset as shardset

    class Busy:
        def __init__(self, fs):
            self._fs = fs

        def __getattr__(self, name):
            return getattr(self._fs, name)

        def delete_dir(self, path):
            raise OSError(39, "Directory not empty")

    monkeypatch.setattr(shardset.time, "sleep", lambda s: None)
    with pytest.warns(UserWarning, match="could not remove the staging folder"):
        with pytest.raises(ValueError, match="the original error"):
            with ShardSetWriter(str(tmp_path / "out")) as writer:
                writer.fs = Busy(writer.fs)
                raise ValueError("the original error")
    assert not (tmp_path / "out").exists()
