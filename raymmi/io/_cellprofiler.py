"""Read raw CellProfiler CSV output into single-cell tables and aggregate them to wells.

CellProfiler's ``ExportToSpreadsheet`` writes one folder per site (or per batch of images):
``Image.csv`` with one row per image (``ImageNumber``, ``Metadata_*``, ``Count_*``, file names,
image-quality measurements ...) and one CSV per object compartment (``Cells.csv``,
``Cytoplasm.csv``, ``Nuclei.csv``) with one row per object, keyed by ``ImageNumber`` +
``ObjectNumber`` and linked to other compartments by ``Parent_<Compartment>`` columns. Column
names carry no compartment prefix; this module adds it (``Cells_AreaShape_Area``), as
pycytominer does (names that already carry it, as database exports do, are accepted).

Linking follows pycytominer's ``SingleCells.merge_single_cells`` defaults: the *hub* is the
requested compartment that has a ``Parent_<X>`` column for every other requested compartment
(``Cytoplasm`` for the default three: ``Cytoplasm_Parent_Cells``, ``Cytoplasm_Parent_Nuclei``;
``Cells`` for ``("Cells", "Nuclei")`` via ``Cells_Parent_Nuclei``). One output row per hub
object; parent objects are looked up within the same ``ImageNumber``.

The functions are pure: they read CSV files and return pandas frames; nothing is written.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from raymmi.schema import FEATURE_TYPE, METADATA_PREFIX, PLATE, SITE, WELL, RaymmiError

IMAGE_FILE = "Image.csv"
DEFAULT_COMPARTMENTS: tuple[str, ...] = ("Cells", "Cytoplasm", "Nuclei")
OBJECT_COUNT = "Metadata_Object_Count"
IMAGE_NUMBER = "ImageNumber"
OBJECT_NUMBER = "ObjectNumber"
META_IMAGE_NUMBER = "Metadata_ImageNumber"
META_OBJECT_NUMBER = "Metadata_ObjectNumber"
REPORT_ATTR = "cellprofiler"

_KEYS = (IMAGE_NUMBER, OBJECT_NUMBER)
_STRING_METADATA = (PLATE, WELL, SITE)
# Object columns that identify, link or place an object: never features. ``Location_*`` is
# the object's position in the image and ``Neighbors_*ObjectNumber*`` names another object.
_NOT_FEATURE_NAMES = frozenset(
    {IMAGE_NUMBER, OBJECT_NUMBER, "TableNumber", "Number_Object_Number"}
)
_NOT_FEATURE_PREFIXES = (
    "Parent_",
    "Children_",
    "Location_",
    METADATA_PREFIX,
    "FileName_",
    "PathName_",
    "URL_",
)
_LOCATION_COLUMNS = ("Location_Center_X", "Location_Center_Y")
_MAX_NAMED = 5
# A CellProfiler row is ~35 kB (1,900 columns): Arrow's default 1 MiB block holds ~30 rows and
# per-block overhead dominates; 16 MiB blocks read a 300 MB file 3-5x faster.
_BLOCK_SIZE = 16 << 20


def find_sites(root: str | Path) -> list[Path]:
    """Find the CellProfiler site folders under ``root``.

    A site folder holds ``Image.csv`` (and, next to it, one CSV per compartment); ``root`` may
    itself be one.

    Parameters
    ----------
    root
        A site folder or a folder with site folders at any depth.

    Returns
    -------
    list of Path
        The site folders, sorted by path.

    Raises
    ------
    RaymmiError
        If ``root`` does not exist or no ``Image.csv`` is found under it.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"root={str(root)!r} is not a folder; pass the folder holding the CellProfiler sites"
        raise RaymmiError(msg)
    if (root / IMAGE_FILE).is_file():
        return [root]
    sites = sorted(p.parent for p in root.rglob(IMAGE_FILE) if p.is_file())
    if not sites:
        expected = ", ".join([IMAGE_FILE, *(f"{c}.csv" for c in DEFAULT_COMPARTMENTS)])
        msg = (
            f"no CellProfiler site under {str(root)!r}: a site is a folder holding {expected} "
            "(CellProfiler ExportToSpreadsheet output); check the path"
        )
        raise RaymmiError(msg)
    return sites


def read_cellprofiler_site(
    site_dir: str | Path,
    *,
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    image_metadata: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read one CellProfiler site folder into a single-cell table, one row per object.

    Parameters
    ----------
    site_dir
        Folder holding ``Image.csv`` and ``<Compartment>.csv`` for each compartment.
    compartments
        Compartment names; each is read from ``<name>.csv`` and its measurements are prefixed
        ``<name>_``. One of them (the hub) must have a ``Parent_<X>`` column for every other one.
    image_metadata
        ``Metadata_*`` columns of ``Image.csv`` to keep besides ``Metadata_Plate``,
        ``Metadata_Well`` and ``Metadata_Site`` (always kept); ``None`` keeps them all.

    Returns
    -------
    pandas.DataFrame
        Shape (n_objects, n_metadata + n_features), rows sorted by image then object number.
        Metadata first: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (strings), the
        other kept image metadata (int64, float64 or string), ``Metadata_ImageNumber``,
        ``Metadata_ObjectNumber`` (the hub object's number), ``Metadata_<Hub>_Parent_<X>`` (the
        linked object numbers) and ``Metadata_<Compartment>_Location_Center_{X,Y}`` (pixels).
        Then float32 features ``<Compartment>_<Measurement>``: every measurement column of every
        compartment, NaNs included, in ``compartments`` order. Identifiers, links, children
        counts and locations are not features. ``frame.attrs["cellprofiler"]`` reports the
        site, the hub, objects per compartment, parent objects no hub object links to (dropped,
        as pycytominer's inner merge does) and the NaN count of every feature that has NaNs.

    Raises
    ------
    RaymmiError
        If a file is missing, empty or not a complete CSV; a key, link or required metadata
        column is missing; an object number repeats; object counts disagree with
        ``Image.csv``'s ``Count_<Compartment>``; or a hub object's parent does not exist.
    """
    site = Path(site_dir)
    comps = _check_compartments(compartments)
    paths = {"Image": site / IMAGE_FILE, **{name: site / f"{name}.csv" for name in comps}}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        msg = (
            f"site {str(site)!r} lacks {missing}; a CellProfiler site folder needs {IMAGE_FILE} "
            f"and one CSV per compartment in compartments={list(comps)} (pass the compartments "
            "this pipeline exported)"
        )
        raise RaymmiError(msg)

    headers = {name: _object_header(paths[name], name) for name in comps}
    hub = _find_hub(headers, site)
    image = _read_image(paths["Image"], comps, image_metadata)

    tables = {
        name: _read_objects(paths[name], name, headers[name], hub=name == hub, comps=comps)
        for name in comps
    }
    for name, (keys, _, _) in tables.items():
        _check_counts(keys, image, name, paths[name])

    hub_keys, hub_links, _ = tables[hub]
    order = np.lexsort((hub_keys[OBJECT_NUMBER], hub_keys[IMAGE_NUMBER]))
    hub_keys = hub_keys.iloc[order].reset_index(drop=True)
    image_numbers = hub_keys[IMAGE_NUMBER].to_numpy()
    rows = {hub: order}
    unlinked: dict[str, int] = {}
    for name in comps:
        if name == hub:
            continue
        parent = hub_links[f"Parent_{name}"].to_numpy()[order]
        rows[name] = _link(
            tables[name][0], image_numbers, parent, hub_keys, hub=hub, parent_name=name, site=site
        )
        unlinked[name] = len(tables[name][0]) - len(np.unique(rows[name]))

    image_rows = pd.Index(image[IMAGE_NUMBER]).get_indexer(image_numbers)
    if (image_rows < 0).any():
        bad = sorted(set(image_numbers[image_rows < 0].tolist()))
        msg = (
            f"{paths[hub]}: ImageNumber {bad[:_MAX_NAMED]} not in {paths['Image']}; the files "
            "come from different CellProfiler runs; re-export the site"
        )
        raise RaymmiError(msg)
    kept = [c for c in image.columns if c.startswith(METADATA_PREFIX)]
    meta = image[kept].iloc[image_rows].reset_index(drop=True)
    meta[META_IMAGE_NUMBER] = image_numbers
    meta[META_OBJECT_NUMBER] = hub_keys[OBJECT_NUMBER].to_numpy()
    for name in comps:
        if name != hub:
            meta[f"Metadata_{hub}_Parent_{name}"] = hub_links[f"Parent_{name}"].to_numpy()[order]
    for name in comps:
        location = tables[name][1]
        for column in _LOCATION_COLUMNS:
            if column in location:
                meta[f"Metadata_{name}_{column}"] = location[column].to_numpy()[rows[name]]

    objects = {name: len(tables[name][0]) for name in comps}
    features = _assemble_features({name: tables.pop(name)[2] for name in comps}, rows)
    out = pd.concat([meta, features], axis=1)
    nan_counts = features.isna().sum()
    out.attrs[REPORT_ATTR] = {
        "site": str(site),
        "hub": hub,
        "objects": objects,
        "unlinked_parents": unlinked,
        "nan_features": {str(k): int(v) for k, v in nan_counts[nan_counts > 0].items()},
    }
    return out


def aggregate_to_wells(cells: pd.DataFrame, *, how: Literal["median", "mean"]) -> pd.DataFrame:
    """Aggregate single-cell profiles to one profile per (plate, well).

    Matches ``pycytominer.aggregate(..., strata=["Metadata_Plate", "Metadata_Well"],
    compute_object_count=True)``: NaNs are ignored, a feature that is NaN in every cell of a
    well stays NaN.

    Parameters
    ----------
    cells
        Shape (n_cells, n_columns): ``Metadata_*`` columns, including ``Metadata_Plate`` and
        ``Metadata_Well``, and numeric feature columns (every other column).
    how
        ``"median"`` or ``"mean"``.

    Returns
    -------
    pandas.DataFrame
        Shape (n_wells, n_kept_metadata + 1 + n_features), sorted by plate then well:
        ``Metadata_Plate``, ``Metadata_Well``, the other metadata that are constant within every
        well (their value), ``Metadata_Object_Count`` (int64, cells per well), then the float32
        features in input order.

    Raises
    ------
    RaymmiError
        If ``how`` is unknown, plate or well is missing, or a feature column is not numeric.
    """
    if how not in ("median", "mean"):
        msg = f"how={how!r} is not one of ['mean', 'median']"
        raise RaymmiError(msg)
    strata = [PLATE, WELL]
    absent = [c for c in strata if c not in cells.columns]
    if absent:
        msg = f"cells lack {absent}; aggregation to wells needs {strata}"
        raise RaymmiError(msg)
    metadata = [c for c in cells.columns if str(c).startswith(METADATA_PREFIX) and c not in strata]
    features = [c for c in cells.columns if not str(c).startswith(METADATA_PREFIX)]
    not_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(cells[c])]
    if not_numeric:
        msg = (
            f"columns {not_numeric[:_MAX_NAMED]} are neither numeric nor Metadata_*; rename "
            "metadata with the Metadata_ prefix or drop them before aggregating"
        )
        raise RaymmiError(msg)

    groups = cells.groupby(strata, sort=True, dropna=False, observed=True)
    profiles = getattr(groups[features], how)().astype(FEATURE_TYPE.to_pandas_dtype())
    varying = groups[metadata].nunique(dropna=False).max() if metadata else pd.Series()
    constant = [c for c in metadata if len(cells) == 0 or varying[c] <= 1]
    out = groups[constant].first() if constant else pd.DataFrame(index=profiles.index)
    out[OBJECT_COUNT] = groups.size().astype(np.int64)
    return pd.concat([out, profiles], axis=1).reset_index()


def _check_compartments(compartments: Sequence[str]) -> tuple[str, ...]:
    if isinstance(compartments, str) or not compartments:
        msg = (
            f"compartments={compartments!r} must be a non-empty sequence of names such as "
            f"{list(DEFAULT_COMPARTMENTS)}"
        )
        raise RaymmiError(msg)
    comps = tuple(compartments)
    if len(set(comps)) != len(comps) or "Image" in comps:
        msg = f"compartments={list(comps)} must be distinct object compartments (not 'Image')"
        raise RaymmiError(msg)
    return comps


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        row = next(csv.reader(handle), None)
    if not row:
        msg = f"{path} is empty; re-export it from CellProfiler or re-copy it"
        raise RaymmiError(msg)
    return row


def _strip(column: str, compartment: str) -> str:
    """Measurement name without the compartment prefix that database exports add."""
    prefix = f"{compartment}_"
    return column[len(prefix) :] if column.startswith(prefix) else column


def _object_header(path: Path, compartment: str) -> dict[str, str]:
    """Map measurement names (unprefixed) to the file's column names."""
    header = {_strip(c, compartment): c for c in _header(path)}
    absent = [k for k in _KEYS if k not in header]
    if absent:
        msg = (
            f"{path} has no {absent} column; CellProfiler object tables are keyed by "
            f"{list(_KEYS)}: export the object table with ExportToSpreadsheet"
        )
        raise RaymmiError(msg)
    return header


def _find_hub(headers: dict[str, dict[str, str]], site: Path) -> str:
    names = list(headers)
    for name in names:
        if all(f"Parent_{other}" in headers[name] for other in names if other != name):
            return name
    msg = (
        f"site {str(site)!r}: no compartment among {names} has Parent_<X> columns linking it to "
        "all the others (the default Cytoplasm.csv has Parent_Cells and Parent_Nuclei); pass "
        "compartments that CellProfiler related to each other"
    )
    raise RaymmiError(msg)


def _is_feature(measurement: str) -> bool:
    if measurement in _NOT_FEATURE_NAMES or measurement.startswith(_NOT_FEATURE_PREFIXES):
        return False
    return not (measurement.startswith("Neighbors_") and "ObjectNumber" in measurement)


def _read_csv(path: Path, columns: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    options = pacsv.ConvertOptions(
        include_columns=columns, column_types=types, strings_can_be_null=True
    )
    try:
        return pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(block_size=_BLOCK_SIZE), convert_options=options
        )
    except pa.ArrowInvalid as err:
        msg = (
            f"{path} is not a complete CellProfiler CSV ({err}); it may be truncated or "
            "hand-edited: re-export it from CellProfiler or re-copy it"
        )
        raise RaymmiError(msg) from err


def _read_image(
    path: Path, compartments: tuple[str, ...], image_metadata: Sequence[str] | None
) -> pd.DataFrame:
    """Read ``ImageNumber``, the kept ``Metadata_*`` and ``Count_<compartment>`` of Image.csv."""
    header = _header(path)
    absent = [c for c in (IMAGE_NUMBER, *_STRING_METADATA) if c not in header]
    if absent:
        msg = (
            f"{path} has no {absent} column; add them in the CellProfiler pipeline (Metadata "
            "module, extracting plate, well and site from the file names or a LoadData CSV) "
            "and re-export"
        )
        raise RaymmiError(msg)
    available = [c for c in header if c.startswith(METADATA_PREFIX)]
    if image_metadata is None:
        extra = [c for c in available if c not in _STRING_METADATA]
    else:
        unknown = [c for c in image_metadata if c not in available]
        if unknown:
            msg = f"image_metadata names {unknown} absent from {path}; it has {available}"
            raise RaymmiError(msg)
        extra = [c for c in dict.fromkeys(image_metadata) if c not in _STRING_METADATA]
    counts = [f"Count_{c}" for c in compartments if f"Count_{c}" in header]
    columns = [IMAGE_NUMBER, *_STRING_METADATA, *extra, *counts]
    types: dict[str, pa.DataType] = {c: pa.string() for c in (*_STRING_METADATA, *extra)}
    types[IMAGE_NUMBER] = pa.int64()
    types.update({c: pa.float64() for c in counts})
    table = _read_csv(path, columns, types)
    for column in extra:
        table = table.set_column(
            table.schema.get_field_index(column), column, _narrow(table.column(column))
        )
    image = table.to_pandas()
    for column in _STRING_METADATA:
        image[column] = image[column].astype(object)
    if image[IMAGE_NUMBER].duplicated().any():
        msg = f"{path}: ImageNumber repeats; it must hold one row per image: re-export it"
        raise RaymmiError(msg)
    return image


def _narrow(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integer, else float, else the string itself: one type rule for every file."""
    for target in (pa.int64(), pa.float64()):
        try:
            return pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return column


def _read_objects(
    path: Path,
    compartment: str,
    header: dict[str, str],
    *,
    hub: bool,
    comps: tuple[str, ...],
) -> tuple[pd.DataFrame, pd.DataFrame, pa.Table]:
    """Read keys, links (hub) or locations, and float32 features of one compartment file.

    Returns (keys, links-and-locations, features) where features is an Arrow table whose
    columns are already named ``<compartment>_<measurement>``.
    """
    links = [f"Parent_{c}" for c in comps if c != compartment] if hub else []
    locations = [c for c in _LOCATION_COLUMNS if c in header]
    features = [m for m in header if _is_feature(m)]
    types: dict[str, pa.DataType] = {header[m]: pa.int64() for m in (*_KEYS, *links)}
    types.update({header[m]: pa.float64() for m in locations})
    types.update({header[m]: FEATURE_TYPE for m in features})
    wanted = [*_KEYS, *links, *locations, *features]
    table = _read_csv(path, [header[m] for m in wanted], types)
    table = table.rename_columns([_strip(c, compartment) for c in table.column_names])
    small = table.select([*_KEYS, *links, *locations]).to_pandas()
    keys = small[list(_KEYS)]
    if keys.isna().any().any():
        msg = f"{path}: empty ImageNumber or ObjectNumber; re-export the object table"
        raise RaymmiError(msg)
    duplicated = keys.duplicated()
    if duplicated.any():
        first = keys[duplicated].iloc[0].tolist()
        msg = (
            f"{path}: {int(duplicated.sum())} repeated (ImageNumber, ObjectNumber) pairs, first "
            f"{first}; the file concatenates several runs: export each run to its own folder"
        )
        raise RaymmiError(msg)
    feats = table.select(features).rename_columns([f"{compartment}_{m}" for m in features])
    return keys, small[[*links, *locations]], feats


def _check_counts(keys: pd.DataFrame, image: pd.DataFrame, compartment: str, path: Path) -> None:
    """Compare objects per image with Image.csv's ``Count_<compartment>``: catches lost rows."""
    column = f"Count_{compartment}"
    if column not in image:
        return
    found = keys[IMAGE_NUMBER].value_counts()
    expected = image.set_index(IMAGE_NUMBER)[column]
    seen = found.reindex(expected.index, fill_value=0)
    bad = expected.index[(seen.to_numpy() != expected.to_numpy())]
    if len(bad):
        number = bad[0]
        msg = (
            f"{path} has {int(seen[number])} objects in ImageNumber {number} but Image.csv "
            f"{column} says {expected[number]:g} ({len(bad)} image(s) disagree); the file is "
            "truncated or from another run: re-export or re-copy the site"
        )
        raise RaymmiError(msg)


def _link(
    parent_keys: pd.DataFrame,
    image_numbers: np.ndarray,
    parent: np.ndarray,
    hub_keys: pd.DataFrame,
    *,
    hub: str,
    parent_name: str,
    site: Path,
) -> np.ndarray:
    """Row in the parent table of each hub object's parent; orphans raise."""
    index = pd.MultiIndex.from_frame(parent_keys)
    rows = index.get_indexer(pd.MultiIndex.from_arrays([image_numbers, parent]))
    orphan = rows < 0
    if orphan.any():
        named = [
            f"(ImageNumber={i}, ObjectNumber={o}, Parent_{parent_name}={p})"
            for i, o, p in zip(
                image_numbers[orphan][:_MAX_NAMED],
                hub_keys[OBJECT_NUMBER].to_numpy()[orphan][:_MAX_NAMED],
                parent[orphan][:_MAX_NAMED],
                strict=True,
            )
        ]
        msg = (
            f"site {str(site)!r}: {int(orphan.sum())} {hub} objects have no parent in "
            f"{parent_name}.csv, first {', '.join(named)}; the files come from different "
            "runs or one is incomplete: re-export the site"
        )
        raise RaymmiError(msg)
    return rows


def _assemble_features(tables: dict[str, pa.Table], rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """One Fortran-ordered float32 block, filled a column at a time (one column of scratch)."""
    names = [name for table in tables.values() for name in table.column_names]
    n = len(next(iter(rows.values())))
    block = np.empty((n, len(names)), dtype=np.float32, order="F")
    j = 0
    for name, table in tables.items():
        take = rows[name]
        for column in table.columns:
            block[:, j] = column.to_numpy()[take]
            j += 1
    return pd.DataFrame(block, columns=names, copy=False)
