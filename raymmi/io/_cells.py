"""Read paired single-cell modalities from ``.h5ad`` / ``.h5mu`` files in row chunks.

Everything reads through h5py and anndata's on-disk sparse datasets, so memory follows the
chunk size, not the number of cells. Only cell ids are read whole (to align modalities).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from raymmi.schema import CELL_BATCH, CELL_TYPE, CellBatch, Modality, RaymmiError

# Modality names as raymmi stores them, and the names mudata/muon files commonly use.
MUDATA_ALIASES = {"rna": ("rna", "gex"), "atac": ("atac", "peaks"), "adt": ("adt", "prot", "cite")}
DENSE_MODALITIES = frozenset({"adt"})


@dataclasses.dataclass(frozen=True)
class H5Modality:
    """Where one modality lives on disk.

    Parameters
    ----------
    name
        raymmi modality name (``rna``, ``atac``, ``adt``).
    path
        The ``.h5ad`` / ``.h5mu`` file.
    group
        HDF5 group of the AnnData (``"/"`` for ``.h5ad``, ``"/mod/<name>"`` for ``.h5mu``).
    matrix
        Path of the count matrix inside ``group`` (``layers/counts`` if present, else ``X``).
    n_obs
        Number of cells.
    features
        Feature names (``var`` index).
    """

    name: str
    path: str
    group: str
    matrix: str
    n_obs: int
    features: tuple[str, ...]

    @property
    def encoding(self) -> str:
        """``"dense"`` for ADT, ``"sparse"`` otherwise."""
        return "dense" if self.name in DENSE_MODALITIES else "sparse"

    def modality(self) -> Modality:
        """The manifest record of this modality."""
        return Modality(self.name, self.encoding, self.features)  # type: ignore[arg-type]


def _group_of(f: h5py.File, path: str, name: str) -> str:
    if path.lower().endswith(".h5ad"):
        return "/"
    mods = list(f.get("mod", {}).keys())
    for alias in MUDATA_ALIASES.get(name, (name,)):
        if alias in mods:
            return f"/mod/{alias}"
    msg = f"{path!r} has no {name} modality (it has {mods}); name it one of {MUDATA_ALIASES[name]}"
    raise RaymmiError(msg)


def open_modality(path: str | Path, *, name: str, layer: str | None = None) -> H5Modality:
    """Locate modality ``name`` in an ``.h5ad`` (the whole file) or ``.h5mu`` (``mod/<name>``).

    Parameters
    ----------
    path
        The ``.h5ad`` / ``.h5mu`` file.
    name
        raymmi modality name (``rna``, ``atac``, ``adt``).
    layer
        The matrix to read: ``"X"``, a name in ``layers``, or ``None`` for ``layers["counts"]``
        when present, else ``X`` (with a warning for RNA/ATAC: it may be normalized).

    Raises
    ------
    RaymmiError
        Unknown file type, unreadable file, no such modality or no such layer.
    """
    path = str(path)
    if not path.lower().endswith((".h5ad", ".h5mu")):
        msg = f"{path!r} has an unknown file type; use .h5ad or .h5mu"
        raise RaymmiError(msg)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError as err:
        msg = f"input {path!r} does not exist"
        raise RaymmiError(msg) from err
    except OSError as err:
        msg = f"input {path!r} is not a readable HDF5 .h5ad/.h5mu file ({err}); is it truncated?"
        raise RaymmiError(msg) from err
    with f:
        group = _group_of(f, path, name)
        g = f[group]
        layers = sorted(g["layers"].keys()) if "layers" in g else []
        if layer is None:
            matrix = "layers/counts" if "counts" in layers else "X"
        else:
            matrix = "X" if layer == "X" else f"layers/{layer}"
        if matrix not in g:
            if layer is None:
                msg = f"{path!r} ({name}) has neither layers['counts'] nor X"
            else:
                msg = f"--layer {layer!r}: {path!r} ({name}) has no such matrix; it has X" + (
                    f" and layers {layers}" if layers else " and no layers"
                )
            raise RaymmiError(msg)
        features = tuple(str(v) for v in _index(g["var"]))
        n_obs = len(_index(g["obs"]))
    if matrix == "X" and layer is None and name in ("rna", "atac"):
        warnings.warn(
            f"{path!r} ({name}) has no layers['counts']; storing X, which may be normalized",
            stacklevel=2,
        )
    return H5Modality(name, path, group, matrix, n_obs, features)


def _index(group: h5py.Group) -> np.ndarray:
    key = group.attrs.get("_index", "_index")
    return np.asarray(group[key].asstr()[...] if group[key].dtype.kind in "OS" else group[key])


def read_cell_ids(mod: H5Modality) -> np.ndarray:
    """Cell ids (``obs`` index) of a modality, as an array of str of shape (n_obs,)."""
    with h5py.File(mod.path, "r") as f:
        return _index(f[mod.group]["obs"]).astype(str)


def read_obs_rows(mod: H5Modality, start: int, stop: int) -> pd.DataFrame:
    """Rows ``start:stop`` of ``obs``, categoricals as strings, index = cell ids."""
    with h5py.File(mod.path, "r") as f:
        obs = f[mod.group]["obs"]
        index = _index(obs)[start:stop].astype(str)
        columns = [str(c) for c in obs.attrs.get("column-order", [])]
        data = {c: _obs_column(obs, c, start, stop) for c in columns}
    return pd.DataFrame(data, index=pd.Index(index, name=None))


def _obs_column(obs: h5py.Group, column: str, start: int, stop: int) -> np.ndarray:
    node = obs[column]
    if isinstance(node, h5py.Group):  # anndata >= 0.8 categorical / nullable encodings
        if "codes" in node:
            return _decode(node["codes"][start:stop], node["categories"])
        return np.asarray(ad.io.read_elem(node))[start:stop]
    legacy = obs.get("__categories")
    if legacy is not None and column in legacy:  # anndata < 0.8 categorical
        return _decode(node[start:stop], legacy[column])
    values = node[start:stop]
    return values.astype(str) if node.dtype.kind in "OS" else values


def _decode(codes: np.ndarray, categories: h5py.Dataset) -> np.ndarray:
    cats = categories.asstr()[...] if categories.dtype.kind in "OS" else categories[...]
    out = np.asarray(cats, dtype=object)[np.maximum(codes, 0)]
    out[codes < 0] = None
    return out


def read_matrix_rows(mod: H5Modality, rows: slice | np.ndarray) -> sp.csr_matrix | np.ndarray:
    """Count rows of one modality: float32 CSR (sparse modalities) or float32 array (ADT)."""
    with h5py.File(mod.path, "r") as f:
        node = f[mod.group][mod.matrix]
        if isinstance(node, h5py.Group):
            if isinstance(rows, np.ndarray):
                order = np.argsort(rows)
                block = ad.io.sparse_dataset(node)[rows[order]]
                block = block[np.argsort(order)]
            else:
                block = ad.io.sparse_dataset(node)[rows]
            block = sp.csr_matrix(block, dtype=np.float32)
        else:
            if isinstance(rows, np.ndarray):
                order = np.argsort(rows)
                block = node[rows[order]][np.argsort(order)]
            else:
                block = node[rows]
            block = np.asarray(block, dtype=np.float32)
    if mod.encoding == "dense":
        return block.toarray() if sp.issparse(block) else block
    return block if sp.issparse(block) else sp.csr_matrix(block)


def check_unique_ids(ids: np.ndarray, *, name: str) -> None:
    """Refuse repeated cell ids: modalities are paired by id, so each must name one cell.

    Raises
    ------
    RaymmiError
        Naming the file, how many ids repeat, examples, and the fix.
    """
    index = pd.Index(ids)
    if index.is_unique:
        return
    repeated = index[index.duplicated()].unique()
    msg = (
        f"{name} has repeated cell ids ({len(repeated)} repeated, e.g. "
        f"{repeated[:5].tolist()}); modalities are paired by cell id, so ids must be unique: "
        "run adata.obs_names_make_unique() (or set obs_names from a unique id column) and save "
        "the file again"
    )
    raise RaymmiError(msg)


def align(primary: np.ndarray, other: np.ndarray, *, names: tuple[str, str]) -> np.ndarray | None:
    """Row positions in ``other`` of each id in ``primary`` (``None`` if already aligned).

    Raises
    ------
    RaymmiError
        If the two modalities hold different cells (listing examples of each side) or ids
        repeat.
    """
    for ids, name in ((primary, names[0]), (other, names[1])):
        check_unique_ids(ids, name=name)
    if len(primary) == len(other) and np.array_equal(primary, other):
        return None
    only_a = np.setdiff1d(primary, other)
    only_b = np.setdiff1d(other, primary)
    if len(only_a) or len(only_b):
        msg = (
            f"{names[0]} and {names[1]} hold different cells: {len(only_a)} only in {names[0]} "
            f"(e.g. {only_a[:3].tolist()}), {len(only_b)} only in {names[1]} (e.g. "
            f"{only_b[:3].tolist()}); subset both to the same cells before ingest"
        )
        raise RaymmiError(msg)
    position = pd.Index(other).get_indexer(primary)
    return position


def read_cell_chunk(
    mods: Sequence[H5Modality],
    start: int,
    stop: int,
    *,
    positions: Sequence[np.ndarray | None],
    batch_key: str,
) -> CellBatch:
    """Cells ``start:stop`` of the first modality, with the paired rows of the others.

    ``positions[i]`` maps rows of ``mods[0]`` to rows of ``mods[i]`` (``None``: same order).
    ``obs`` comes from the first modality; ``batch_key`` becomes the ``batch`` column (one
    batch ``batch0`` when absent) and categoricals become strings.
    """
    obs = read_obs_rows(mods[0], start, stop)
    if batch_key in obs.columns:
        batch = obs.pop(batch_key).astype(str)
    else:
        batch = pd.Series("batch0", index=obs.index)
    obs = obs.drop(columns=[c for c in (CELL_BATCH,) if c in obs.columns])
    obs.insert(0, CELL_BATCH, batch.to_numpy(dtype=object))
    if CELL_TYPE in obs.columns:
        obs[CELL_TYPE] = obs[CELL_TYPE].astype(object).where(obs[CELL_TYPE].notna(), None)
    matrices = {}
    for mod, pos in zip(mods, positions, strict=True):
        rows: slice | np.ndarray = slice(start, stop) if pos is None else pos[start:stop]
        matrices[mod.name] = read_matrix_rows(mod, rows)
    return CellBatch(obs=obs, modalities=matrices)
