"""Read and write shard sets: Parquet files plus ``_manifest.json``, committed last.

Writers stage everything in a temporary sibling directory (``.<name>.tmp-<id>``) and rename it
into place after the manifest is written, so a crash never leaves a half-written output that
looks whole and a rerun is idempotent. On object stores (``s3://``, ``gs://``), where a directory
rename is a copy, files are written in place and the manifest, written last, is the only commit
marker: readers refuse a directory without one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import posixpath
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymmi.io._dest import claim_output, swap_into_place
from raymmi.schema import MANIFEST_NAME, FileEntry, Manifest, RaymmiError

# Parquet settings of every part. Floating-point columns (the features: wide, high-entropy)
# get no dictionary and no min/max statistics: a dictionary never pays off on measured floats
# and only costs (a 384 x 1,000 float32 plate wrote in 97 ms with them, 55 ms without, under
# zstd); the other columns (ids, metadata, sparse indices) keep both. Codec: see COMPRESSION.
#: LZ4 (raw): 1,000-feature float32 plates wrote in 25 ms and read in 27 ms against 57 ms
#: and 56 ms under zstd, which saved only 14% of the bytes on such data.
COMPRESSION = "lz4"


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """``pyarrow.parquet.ParquetWriter`` keyword arguments for a part of ``schema``."""
    coded = list(_coded_columns(schema))
    return {"compression": COMPRESSION, "use_dictionary": coded, "write_statistics": coded}


@functools.lru_cache(maxsize=64)
def _coded_columns(schema: pa.Schema) -> tuple[str, ...]:
    return tuple(f.name for f in schema if not pa.types.is_floating(f.type))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Split a local path or filesystem URI (``s3://``, ``gs://``, ``file://``) into fs + path."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        fs, path = pafs.LocalFileSystem(), posixpath.abspath(uri)
    except OSError as err:
        msg = f"cannot open filesystem for {uri!r}: {err}"
        raise RaymmiError(msg) from err
    return fs, path.rstrip("/") or "/"


def exists(uri: str) -> bool:
    """Whether anything (file or directory) exists at ``uri``."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def manifest_sha256(uri: str) -> str:
    """SHA-256 of a shard set's manifest bytes: the identity of that committed version."""
    fs, path = resolve(uri)
    with fs.open_input_stream(posixpath.join(path, MANIFEST_NAME)) as f:
        return hashlib.sha256(f.read()).hexdigest()


class _HashingWriter:
    """A binary file-like object that hashes and counts what passes through it."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.bytes += view.nbytes
        self._sink.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        if not self.closed:
            self._sink.close()
            self.closed = True

    def tell(self) -> int:
        return self.bytes

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class PartWriter:
    """Stream Arrow tables of one schema into one Parquet file, hashing as it writes.

    Use as a context manager; :attr:`entry` holds the :class:`FileEntry` after closing.
    """

    def __init__(
        self, root: str, relpath: str, schema: pa.Schema, *, plate: str | None = None
    ) -> None:
        fs, base = resolve(root)
        path = posixpath.join(base, relpath)
        fs.create_dir(posixpath.dirname(path), recursive=True)
        self._hasher = _HashingWriter(fs.open_output_stream(path))
        # Buffered in Arrow: unbuffered, the writer called the Python hasher once per page
        # (~2,000 calls for a 1,000-column part).
        self._sink = pa.BufferedOutputStream(pa.PythonFile(self._hasher, mode="w"), 1 << 20)
        self._writer = pq.ParquetWriter(self._sink, schema, **parquet_options(schema))
        self._relpath = relpath
        self._plate = plate
        self.rows = 0
        self.entry: FileEntry | None = None

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (cast to the file's schema) as one or more row groups."""
        if not table.schema.equals(self._writer.schema):
            table = table.cast(self._writer.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> FileEntry:
        """Finish the file and return its manifest entry."""
        if self.entry is None:
            self._writer.close()
            self._sink.close()  # flushes into the hasher and closes it
            self._hasher.close()
            self.entry = FileEntry(
                path=self._relpath,
                rows=self.rows,
                bytes=self._hasher.bytes,
                sha256=self._hasher.sha256.hexdigest(),
                plate=self._plate,
            )
        return self.entry

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_part(root: str, relpath: str, table: pa.Table, *, plate: str | None = None) -> FileEntry:
    """Write one table as one Parquet file under ``root`` and return its manifest entry."""
    with PartWriter(root, relpath, table.schema, plate=plate) as part:
        part.write(table)
    return part.close()


class ShardSetWriter:
    """Stage a shard set next to its destination and commit it by manifest.

    Parameters
    ----------
    uri
        Destination directory (local path or filesystem URI).
    overwrite
        Replace an existing destination. Without it an existing destination is an error.

    Examples
    --------
    >>> with ShardSetWriter("out/plates") as writer:          # doctest: +SKIP
    ...     entry = write_part(writer.staging, "plate=P1/part-0.parquet", table, plate="P1")
    ...     writer.commit(Manifest(kind="plates", files=(entry,), metadata=..., features=...))
    """

    def __init__(
        self, uri: str, *, overwrite: bool = False, inputs: Sequence[str | None] = ()
    ) -> None:
        self.uri = uri
        self.fs, self.path = resolve(uri)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        # The destination's claim (checks, lock, recovery): the stage's own when it claimed
        # ``uri`` before starting Ray, else taken here and released on commit / abort.
        self._claim = contextlib.ExitStack()
        if self._local:
            self._claim.enter_context(claim_output(uri, inputs=inputs, overwrite=overwrite))
        info = self.fs.get_file_info(self.path)
        if info.type != pafs.FileType.NotFound and not overwrite:
            msg = (
                f"output {uri!r} already exists; choose another --out or pass --overwrite "
                "to replace it"
            )
            raise RaymmiError(msg)
        if info.type == pafs.FileType.File:
            msg = f"output {uri!r} is a file, not a directory; choose another --out"
            raise RaymmiError(msg)
        self._overwrite = info.type != pafs.FileType.NotFound
        parent, name = posixpath.split(self.path)
        if self._local:
            self._staging_path = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
        else:
            if self._overwrite:
                self.fs.delete_dir(self.path)
            self._staging_path = self.path
        self.fs.create_dir(self._staging_path, recursive=True)
        self.staging = self._uri_for(self._staging_path)
        self.committed: Manifest | None = None

    def _uri_for(self, path: str) -> str:
        if self._local:
            return path
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{path}"

    def commit(self, manifest: Manifest) -> Manifest:
        """Check every file exists, write the manifest last and move the set into place."""
        infos = self.fs.get_file_info(
            [posixpath.join(self._staging_path, f.path) for f in manifest.files]
        )
        missing = [f.path for f, i in zip(manifest.files, infos, strict=True) if not i.is_file]
        if missing:
            msg = f"internal error: files listed in the manifest were not written: {missing[:5]}"
            raise RuntimeError(msg)
        with self.fs.open_output_stream(posixpath.join(self._staging_path, MANIFEST_NAME)) as f:
            f.write(manifest.to_json().encode())
        if self._local:
            swap_into_place(Path(self._staging_path), Path(self.path))
        self.committed = manifest
        self._claim.close()
        return manifest

    def abort(self) -> None:
        """Remove everything staged; the destination is left as it was.

        Tasks cancelled by the failure may still be finishing a part file in the staging
        folder; the removal is retried for a few seconds and, failing that, the (hidden,
        uncommitted) folder is left with a warning rather than hiding the original error.
        """
        if self.committed is not None or not self._local:
            return
        self._remove_staging()
        self._claim.close()

    def _remove_staging(self) -> None:
        for attempt in range(5):
            try:
                if self.fs.get_file_info(self._staging_path).type == pafs.FileType.NotFound:
                    return
                self.fs.delete_dir(self._staging_path)
                return
            except OSError as err:
                if attempt == 4:
                    warnings.warn(
                        f"could not remove the staging folder {self._staging_path} ({err}); "
                        "it holds no committed output and can be deleted",
                        stacklevel=2,
                    )
                    return
                time.sleep(0.5 * (attempt + 1))

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or self.committed is None:
            self.abort()


def damaged(uri: str, relpath: str, problem: str) -> RaymmiError:
    """The error for a damaged part file: which file, what is wrong, how to check the rest."""
    msg = (
        f"{uri!r}: part file {relpath} is damaged ({problem}); rerun the stage that produced "
        f"the set, and check its other files with `raymmi inspect --verify {uri}`"
    )
    return RaymmiError(msg)


def read_part_bytes(uri: str, entry: FileEntry, *, fs: pafs.FileSystem | None = None) -> pa.Buffer:
    """One part file's bytes, read once and checked against the manifest's size and SHA-256.

    The checksum is computed over the very buffer the caller then decodes (no second pass).
    """
    if fs is None:
        fs, root = resolve(uri)
    else:
        root = resolve(uri)[1]
    try:
        with fs.open_input_stream(posixpath.join(root, entry.path)) as stream:
            data = stream.read_buffer()
    except OSError as err:
        raise damaged(uri, entry.path, f"cannot be read: {err}") from err
    if data.size != entry.bytes:
        raise damaged(uri, entry.path, f"{data.size} bytes, the manifest says {entry.bytes}")
    if hashlib.sha256(memoryview(data)).hexdigest() != entry.sha256:
        raise damaged(uri, entry.path, "its checksum differs from the manifest")
    return data


def open_part(
    uri: str,
    entry: FileEntry,
    *,
    columns: Sequence[str] | None = None,
    fs: pafs.FileSystem | None = None,
    require: Sequence[str] = (),
) -> pq.ParquetFile:
    """Open one part file of a shard set, verified: checksum, Parquet footer, rows, columns.

    Raises
    ------
    RaymmiError
        Naming the file and the problem: unreadable, a size or checksum that differs from the
        manifest, a footer that does not parse (truncated), a row count that differs, or a
        column of ``columns`` or ``require`` missing.
    """
    data = read_part_bytes(uri, entry, fs=fs)
    try:
        reader = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise damaged(uri, entry.path, f"not a readable Parquet file: {err}") from err
    rows = reader.metadata.num_rows
    if rows != entry.rows:
        problem = f"{rows} rows in its footer, the manifest says {entry.rows}"
        raise damaged(uri, entry.path, problem)
    wanted = [*(columns or ()), *require]
    if wanted:
        present = set(reader.schema_arrow.names)
        missing = [c for c in dict.fromkeys(wanted) if c not in present]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise damaged(uri, entry.path, f"lacks column(s) the manifest lists: {shown}")
    return reader


def read_part(
    uri: str,
    entry: FileEntry,
    *,
    columns: Sequence[str] | None = None,
    fs: pafs.FileSystem | None = None,
    require: Sequence[str] = (),
) -> pa.Table:
    """:func:`open_part` then decode ``columns`` (all when None) into one table."""
    reader = open_part(uri, entry, columns=columns, fs=fs, require=require)
    try:
        return reader.read(columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise damaged(uri, entry.path, f"cannot be decoded: {err}") from err


def check_entry_path(relpath: str, *, where: str) -> None:
    """Refuse a manifest file entry that would leave the shard set (``..``, absolute, URI)."""
    parts = relpath.replace("\\", "/").split("/")
    if (
        not relpath
        or "://" in relpath
        or relpath.startswith(("/", "\\", "~"))
        or (len(relpath) > 1 and relpath[1] == ":")
        or any(p in ("", ".", "..") for p in parts)
        or relpath == MANIFEST_NAME
    ):
        msg = (
            f"{where}: file entry {relpath!r} is not a path inside the shard set (no '..', "
            "absolute paths or URIs); the manifest is damaged or forged, rerun the stage that "
            "produced it"
        )
        raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """A committed shard set: its location and manifest.

    Open one with :func:`open_shard_set`.
    """

    uri: str
    manifest: Manifest

    @property
    def kind(self) -> str:
        """``"plates"`` or ``"cells"``."""
        return self.manifest.kind

    def file_uris(self) -> list[str]:
        """Full URIs (or absolute paths) of every data file, in manifest order."""
        fs, root = resolve(self.uri)
        paths = [posixpath.join(root, f.path) for f in self.manifest.files]
        if isinstance(fs, pafs.LocalFileSystem):
            return paths
        scheme = self.uri.split("://", 1)[0]
        return [f"{scheme}://{p}" for p in paths]

    def iter_tables(
        self, *, columns: Sequence[str] | None = None, batch_size: int | None = None
    ) -> Iterator[tuple[FileEntry, pa.Table]]:
        """Yield ``(file entry, table)`` per file, or per record batch if ``batch_size``.

        Each file is verified as it is read (:func:`open_part`).
        """
        fs = resolve(self.uri)[0]
        for entry in self.manifest.files:
            if batch_size is None:
                yield entry, read_part(self.uri, entry, columns=columns, fs=fs)
                continue
            reader = open_part(self.uri, entry, columns=columns, fs=fs)
            try:
                for batch in reader.iter_batches(batch_size=batch_size, columns=columns):
                    yield entry, pa.Table.from_batches([batch])
            except (pa.ArrowException, OSError) as err:
                raise damaged(self.uri, entry.path, f"cannot be decoded: {err}") from err

    def read_table(self, *, columns: Sequence[str] | None = None) -> pa.Table:
        """Read the whole shard set into memory (small sets and tests only)."""
        tables = [t for _, t in self.iter_tables(columns=columns)]
        return pa.concat_tables(tables) if tables else pa.table({})

    def parent_ref(self) -> dict[str, Any]:
        """Lineage record of this set for a child's manifest."""
        return {
            "uri": self.uri,
            "kind": self.kind,
            "manifest_sha256": manifest_sha256(self.uri),
            "mlflow_run_id": self.manifest.producer.get("mlflow_run_id"),
        }

    def verify(self) -> list[str]:
        """Re-hash every file; return the problems found (empty when intact)."""
        fs, root = resolve(self.uri)
        problems = []
        for entry in self.manifest.files:
            path = posixpath.join(root, entry.path)
            digest = hashlib.sha256()
            try:
                with fs.open_input_stream(path) as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
            except OSError as err:
                problems.append(f"{entry.path}: cannot read ({err})")
                continue
            if digest.hexdigest() != entry.sha256:
                problems.append(f"{entry.path}: checksum differs from the manifest")
        return problems


def open_shard_set(uri: str, *, kind: str | None = None) -> ShardSet:
    """Open a committed shard set, refusing anything without a valid manifest.

    Parameters
    ----------
    uri
        Shard-set directory (local path or filesystem URI).
    kind
        If given, the kind the caller needs (``"plates"`` or ``"cells"``).

    Raises
    ------
    RaymmiError
        If ``uri`` does not exist, has no manifest, the manifest is invalid, a listed file is
        missing, or the kind differs from ``kind``.
    """
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        msg = f"input {uri!r} does not exist"
        raise RaymmiError(msg)
    if info.type != pafs.FileType.Directory:
        msg = (
            f"input {uri!r} is a file, not a shard set; ingest it first "
            "(raymmi ingest plates|cells ... --out DIR)"
        )
        raise RaymmiError(msg)
    manifest_path = posixpath.join(path, MANIFEST_NAME)
    try:
        with fs.open_input_stream(manifest_path) as f:
            data = json.loads(f.read())
    except FileNotFoundError as err:
        msg = (
            f"{uri!r} is not a shard set: it has no {MANIFEST_NAME} (not written by raymmi, or "
            "its writer stopped before committing); rerun the stage that produces it"
        )
        raise RaymmiError(msg) from err
    except (OSError, json.JSONDecodeError) as err:
        msg = f"{uri!r}: {MANIFEST_NAME} cannot be read ({err}); rerun the stage that produced it"
        raise RaymmiError(msg) from err
    manifest = Manifest.from_dict(data, where=f"{uri}/{MANIFEST_NAME}")
    for entry in manifest.files:
        check_entry_path(entry.path, where=f"{uri}/{MANIFEST_NAME}")
    if kind is not None and manifest.kind != kind:
        msg = f"{uri!r} is a {manifest.kind!r} shard set; this stage needs {kind!r}"
        raise RaymmiError(msg)
    infos = fs.get_file_info([posixpath.join(path, f.path) for f in manifest.files])
    missing = [f.path for f, i in zip(manifest.files, infos, strict=True) if not i.is_file]
    if missing:
        msg = (
            f"{uri!r}: {len(missing)} file(s) listed in the manifest are missing "
            f"(e.g. {missing[:3]}); the shard set is damaged, rerun the stage that produced it"
        )
        raise RaymmiError(msg)
    return ShardSet(uri=uri, manifest=manifest)
