"""Read CellProfiler LoadData CSVs and the TIFF planes they list (no Ray, no MLflow).

A LoadData CSV (the table CellProfiler's ``LoadData`` module reads, and the one JUMP publishes
for every plate) has one row per field of view:

- ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and any other ``Metadata_*``;
- per channel ``FileName_<Channel>`` and ``PathName_<Channel>`` (a folder: absolute, relative to
  the CSV's folder, or a pyarrow filesystem URI such as ``s3://bucket/plate/``);
- optionally per object set ``ObjectsFileName_<Objects>`` / ``ObjectsPathName_<Objects>``: label
  or binary masks made elsewhere (CellProfiler, cellpose), used instead of segmenting.

JUMP names channels ``OrigDNA``, ``OrigAGP`` ...; the ``Orig`` prefix is dropped, so features are
named ``..._DNA`` as in JUMP's own profiles. Planes are read lazily, one field at a time, with
``tifffile`` (``imagecodecs`` decodes LZW/deflate-compressed files) and scaled to 0-1 by their
bit depth, as CellProfiler's image loading does (uint8 / 255, uint16 / 65535).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from raymmi.io._shardset import resolve
from raymmi.schema import PLATE, SITE, WELL, RaymmiError

FILE_PREFIX = "FileName_"
PATH_PREFIX = "PathName_"
OBJECTS_FILE_PREFIX = "ObjectsFileName_"
OBJECTS_PATH_PREFIX = "ObjectsPathName_"
_JUMP_PREFIX = "Orig"
REQUIRED_METADATA = (PLATE, WELL, SITE)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field of view listed in a LoadData CSV.

    Parameters
    ----------
    row
        1-based data row of the CSV (line ``row + 1`` of the file), for error messages.
    metadata
        ``Metadata_*`` values as strings, in CSV column order.
    channels
        Channel name (``DNA``, ``AGP`` ...) to the plane's path or URI.
    objects
        Object set name (``Nuclei``, ``Cells``) to the mask's path or URI; empty: segment.
    """

    row: int
    metadata: Mapping[str, str]
    channels: Mapping[str, str]
    objects: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """``(plate, well, site)``."""
        return (self.metadata[PLATE], self.metadata[WELL], self.metadata[SITE])

    def to_dict(self) -> dict[str, object]:
        """Plain dictionary (a Ray Data row)."""
        return {
            "row": self.row,
            "metadata": dict(self.metadata),
            "channels": dict(self.channels),
            "objects": dict(self.objects),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FieldSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            row=int(data["row"]),  # type: ignore[call-overload]
            metadata=dict(data["metadata"]),  # type: ignore[call-overload]
            channels=dict(data["channels"]),  # type: ignore[call-overload]
            objects=dict(data.get("objects") or {}),  # type: ignore[call-overload]
        )


def channel_name(column_suffix: str) -> str:
    """Channel name of a ``FileName_<suffix>`` column: JUMP's ``OrigDNA`` becomes ``DNA``."""
    if column_suffix.startswith(_JUMP_PREFIX) and len(column_suffix) > len(_JUMP_PREFIX):
        return column_suffix[len(_JUMP_PREFIX) :]
    return column_suffix


def _is_uri(path: str) -> bool:
    return "://" in path


def _join(folder: str, name: str, *, base: str) -> str:
    if _is_uri(name) or posixpath.isabs(name):
        return name
    if not folder:
        folder = base
    elif not _is_uri(folder) and not posixpath.isabs(folder):
        folder = posixpath.join(base, folder)
    return posixpath.join(folder, name)


def read_load_data(path: str | Path) -> list[FieldSpec]:
    """Parse a LoadData CSV into one :class:`FieldSpec` per row.

    Parameters
    ----------
    path
        The CSV (local). Relative ``PathName_*`` folders are taken relative to its folder; an
        empty ``PathName_*`` means the CSV's folder.

    Returns
    -------
    list of FieldSpec
        In CSV order.

    Raises
    ------
    RaymmiError
        If the file is missing or empty, lacks ``Metadata_Plate/Well/Site`` or any
        ``FileName_*`` column, pairs a ``FileName_X`` with no ``PathName_X``, repeats a
        (plate, well, site), or has an empty file name.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        msg = f"LoadData CSV {str(path)!r} does not exist; pass the CSV listing the fields"
        raise RaymmiError(msg)
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if not header or not rows:
        msg = (
            f"LoadData CSV {str(path)!r} is empty (no header or no data rows); it needs one row "
            "per field with Metadata_Plate, Metadata_Well, Metadata_Site and FileName_/PathName_ "
            "columns per channel"
        )
        raise RaymmiError(msg)
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED_METADATA if c not in header]
    if missing:
        msg = (
            f"LoadData CSV {str(path)!r} lacks {missing}; every field needs "
            f"{list(REQUIRED_METADATA)}"
        )
        raise RaymmiError(msg)
    channels = [h[len(FILE_PREFIX) :] for h in header if h.startswith(FILE_PREFIX)]
    objects = [h[len(OBJECTS_FILE_PREFIX) :] for h in header if h.startswith(OBJECTS_FILE_PREFIX)]
    if not channels:
        msg = (
            f"LoadData CSV {str(path)!r} has no FileName_<Channel> column; columns are "
            f"{header[:10]}"
        )
        raise RaymmiError(msg)
    names = [channel_name(c) for c in channels]
    if len(set(names)) != len(names):
        msg = f"LoadData CSV {str(path)!r} names a channel twice: {channels}"
        raise RaymmiError(msg)
    index = {h: i for i, h in enumerate(header)}
    base = str(csv_path.resolve().parent)
    metadata_cols = [h for h in header if h.startswith("Metadata_")]
    fields: list[FieldSpec] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, values in enumerate(rows, start=1):
        values = values + [""] * (len(header) - len(values))

        def cell(column: str, values: list[str] = values) -> str:
            i = index.get(column)
            return values[i].strip() if i is not None else ""

        metadata = {c: cell(c) for c in metadata_cols}
        for c in REQUIRED_METADATA:
            if not metadata[c]:
                msg = f"LoadData row {number}: {c} is empty; every field needs {c}"
                raise RaymmiError(msg)
        files: dict[str, str] = {}
        for column, name in zip(channels, names, strict=True):
            file_name = cell(FILE_PREFIX + column)
            if not file_name:
                msg = (
                    f"LoadData row {number} ({metadata[PLATE]} {metadata[WELL]} site "
                    f"{metadata[SITE]}): FileName_{column} is empty"
                )
                raise RaymmiError(msg)
            files[name] = _join(cell(PATH_PREFIX + column), file_name, base=base)
        masks = {}
        for name in objects:
            file_name = cell(OBJECTS_FILE_PREFIX + name)
            if file_name:
                masks[name] = _join(cell(OBJECTS_PATH_PREFIX + name), file_name, base=base)
        spec = FieldSpec(row=number, metadata=metadata, channels=files, objects=masks)
        if spec.key in seen:
            msg = (
                f"LoadData rows {seen[spec.key]} and {number} are the same field {spec.key}; "
                "each (plate, well, site) must appear once"
            )
            raise RaymmiError(msg)
        seen[spec.key] = number
        fields.append(spec)
    return fields


def _read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as handle:
        return handle.read()


def read_plane(path: str, *, what: str) -> np.ndarray:
    """Read one 2-D TIFF plane as stored (no scaling).

    Parameters
    ----------
    path
        Local path or pyarrow filesystem URI.
    what
        Who asks, for error messages (``"LoadData row 3, channel DNA"``).

    Returns
    -------
    numpy.ndarray
        Shape (height, width), the file's dtype. Leading singleton axes are dropped.

    Raises
    ------
    RaymmiError
        If the file is missing, not a readable TIFF, or not one 2-D plane (a stack, RGB).
    """
    import tifffile

    try:
        if _is_uri(path):
            data = tifffile.imread(io.BytesIO(_read_bytes(path)))
        else:
            data = tifffile.imread(path)
    except FileNotFoundError as err:
        msg = f"{what}: image file {path!r} not found; fix its FileName_/PathName_ in the CSV"
        raise RaymmiError(msg) from err
    except OSError as err:
        if not _is_uri(path) and not Path(path).exists():
            msg = f"{what}: image file {path!r} not found; fix its FileName_/PathName_ in the CSV"
            raise RaymmiError(msg) from err
        msg = f"{what}: {path!r} is not a readable TIFF ({err}); re-export or re-copy it"
        raise RaymmiError(msg) from err
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error ...
        msg = (
            f"{what}: {path!r} is not a readable TIFF ({type(err).__name__}: {err}); "
            "re-export or re-copy it"
        )
        raise RaymmiError(msg) from err
    array = np.asarray(data)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        kind = "an RGB image" if array.ndim == 3 and array.shape[-1] in (3, 4) else "a stack"
        msg = (
            f"{what}: {path!r} is {kind} of shape {array.shape}, not one 2-D plane; list one "
            "grayscale plane per channel (split stacks/RGB into one file per channel)"
        )
        raise RaymmiError(msg)
    return array


def scale_to_unit(plane: np.ndarray) -> np.ndarray:
    """Scale a plane to 0-1 by its bit depth, as CellProfiler does when it loads images.

    Parameters
    ----------
    plane
        Shape (height, width); unsigned integers are divided by their type's maximum
        (uint8 / 255, uint16 / 65535), booleans become 0/1, floats are kept as they are.

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    if plane.dtype == np.bool_:
        return plane.astype(np.float32)
    if np.issubdtype(plane.dtype, np.unsignedinteger):
        return (plane.astype(np.float32) / np.float32(np.iinfo(plane.dtype).max)).astype(
            np.float32
        )
    if np.issubdtype(plane.dtype, np.signedinteger):
        info = np.iinfo(plane.dtype)
        return ((plane.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    return plane.astype(np.float32, copy=False)


def read_field(
    spec: FieldSpec, *, channels: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read one field's planes (scaled to 0-1) and its masks (as stored).

    Parameters
    ----------
    spec
        The field.
    channels
        Channels to read (default: all, in CSV order).

    Returns
    -------
    images : dict of str to numpy.ndarray
        Channel to float32 array of shape (height, width), values in 0-1.
    masks : dict of str to numpy.ndarray
        Object set to the mask array of shape (height, width), as stored.

    Raises
    ------
    RaymmiError
        On any unreadable plane, or when planes or masks differ in shape.
    """
    where = (
        f"LoadData row {spec.row} ({spec.metadata[PLATE]} {spec.metadata[WELL]} "
        f"site {spec.metadata[SITE]})"
    )
    names = list(spec.channels) if channels is None else list(channels)
    images = {
        c: scale_to_unit(read_plane(spec.channels[c], what=f"{where}, channel {c}")) for c in names
    }
    shapes = {c: a.shape for c, a in images.items()}
    if len(set(shapes.values())) > 1:
        msg = (
            f"{where}: its channels differ in shape {shapes}; every channel of a field must "
            "be one size"
        )
        raise RaymmiError(msg)
    masks = {o: read_plane(p, what=f"{where}, objects {o}") for o, p in spec.objects.items()}
    shape = next(iter(shapes.values()))
    bad = {o: m.shape for o, m in masks.items() if m.shape != shape}
    if bad:
        msg = (
            f"{where}: mask shape {bad} differs from the field's {shape}; masks must match "
            "their field"
        )
        raise RaymmiError(msg)
    return images, masks


def write_plane(path: str, plane: np.ndarray) -> None:
    """Write one 2-D plane as an uncompressed TIFF (local path)."""
    import tifffile

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, plane)


def write_load_data(path: str, rows: Sequence[Mapping[str, str]]) -> None:
    """Write a LoadData CSV (one row per field; columns of the first row, in order)."""
    if not rows:
        msg = "no fields to list in the LoadData CSV"
        raise RaymmiError(msg)
    header = list(rows[0])
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
