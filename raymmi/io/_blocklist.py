"""Read feature blocklists: a user's file, or pycytominer's packaged default.

raymmi does not ship a copy of pycytominer's blocklist; without ``--blocklist`` it reads the
one inside an installed pycytominer.
"""

from __future__ import annotations

import importlib.util
import posixpath
from pathlib import Path

import yaml

from raymmi.io._shardset import resolve
from raymmi.schema import RaymmiError

DEFAULT_LIST = "default"  # the key of pycytominer's default list in default_blocklists.yaml


def read_blocklist(path: str | None = None) -> tuple[tuple[str, ...], str]:
    """Feature names of a blocklist, and where they came from.

    Parameters
    ----------
    path
        A text file with one feature name per line (blank lines, ``#`` comments and a first
        line ``blocklist`` -- the header of pycytominer's CSV form -- are skipped), or a YAML
        file holding a list of names or a mapping with a ``default`` list (pycytominer's
        registry format); local path or filesystem URI. ``None``: pycytominer's packaged
        default blocklist.

    Returns
    -------
    tuple
        ``(names, source)``: the names in file order, each once, and a description of the
        source for reports.

    Raises
    ------
    RaymmiError
        If the file cannot be read or parsed, or ``path`` is ``None`` and pycytominer is not
        installed.
    """
    if path is None:
        path = _pycytominer_default()
        source = f"pycytominer's default blocklist ({path})"
    else:
        source = f"blocklist {path}"
    fs, resolved = resolve(path)
    try:
        with fs.open_input_stream(resolved) as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError) as err:
        msg = (
            f"--blocklist {path!r} cannot be read ({type(err).__name__}: {err}); pass a text "
            "file with one feature name per line"
        )
        raise RaymmiError(msg) from err
    if posixpath.splitext(resolved)[1].lower() in (".yaml", ".yml"):
        names = _yaml_names(text, path)
    else:
        lines = [line.strip() for line in text.splitlines()]
        names = [line for line in lines if line and not line.startswith("#")]
        if names[:1] == ["blocklist"]:
            names = names[1:]
    return tuple(dict.fromkeys(names)), source


def _yaml_names(text: str, path: str) -> list[str]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        msg = f"--blocklist {path!r} is not valid YAML: {err}"
        raise RaymmiError(msg) from err
    if isinstance(data, dict):
        if DEFAULT_LIST not in data:
            msg = (
                f"--blocklist {path!r} has lists {sorted(data)} but no {DEFAULT_LIST!r} list; "
                "give a file with one feature name per line instead"
            )
            raise RaymmiError(msg)
        data = data[DEFAULT_LIST]
    if not isinstance(data, list):
        msg = f"--blocklist {path!r} must hold a list of feature names"
        raise RaymmiError(msg)
    return [str(name) for name in data]


def _pycytominer_default() -> str:
    # find_spec locates the package without importing it (pycytominer imports sklearn etc.).
    spec = importlib.util.find_spec("pycytominer")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        for name in ("default_blocklists.yaml", "blocklist_features.txt"):
            candidate = Path(location) / "data" / name
            if candidate.is_file():
                return str(candidate)
    msg = (
        "the blocklist op needs a list of features: pycytominer, whose default blocklist "
        "raymmi uses, is not installed; pass --blocklist FILE (one feature name per line) or "
        "pip install pycytominer"
    )
    raise RaymmiError(msg)
