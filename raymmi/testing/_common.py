"""What both generators share: :func:`shared_data`, :class:`SpecError` and the name seed."""

from __future__ import annotations

import os
from pathlib import Path

from raymmi import schema

# ==============================================================================================
# Shared data
# ==============================================================================================

SHARED_DATA_ENV = "RAYMMI_SHARED_DATA"


def _shared_root() -> Path:
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_data_root() -> Path:
    """The shared data folder in force: ``$RAYMMI_SHARED_DATA``, else ``<repo>/../shared/data``."""
    return _shared_root()


def shared_data(relpath: str) -> Path:
    """Path of a real data file under ``shared/data`` beside the project's root.

    Parameters
    ----------
    relpath
        Path relative to the shared data folder, e.g.
        ``"cellpainting/jump_8plates_3features.parquet"``.

    Returns
    -------
    Path
        The existing file or folder. The folder is ``$RAYMMI_SHARED_DATA`` when that variable is
        set, else ``<repo>/../shared/data``.

    Raises
    ------
    FileNotFoundError
        If the path does not exist (for instance in a fresh clone without ``../shared``).
    """
    root = _shared_root()
    path = root / relpath
    if not path.exists():
        msg = (
            f"shared data {relpath!r} not found: {path} does not exist. The real data sets live "
            f"in <repo>/../shared/data; set {SHARED_DATA_ENV} to the folder that holds them"
        )
        raise FileNotFoundError(msg)
    return path


def has_shared_data(relpath: str) -> bool:
    """Whether :func:`shared_data` finds ``relpath`` (for ``pytest.skip`` with a reason)."""
    return (_shared_root() / relpath).exists()


class SpecError(schema.RaymmiError, ValueError):
    """An invalid generator spec; a ``ValueError`` that the command line prints as one line."""


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise SpecError(msg)


_NAME_SEED = 20_240_601  # fixed: feature, gene and peak names never depend on the spec's seed
