"""Settings of ``raymmi export``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``raymmi export``: a shard set to ``.parquet``/``.csv`` (plates) or ``.h5ad`` (cells).

    Parameters
    ----------
    source
        Shard set directory.
    out
        Output file: ``.parquet``, ``.csv`` or ``.csv.gz`` (plates), ``.h5ad`` or ``.h5mu``.
    """

    source: str
    out: str
    overwrite: bool = False
