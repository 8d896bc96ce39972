"""Settings of ``raymmi ingest cells``."""

from __future__ import annotations

import dataclasses

from raymmi.config._base import check_positive
from raymmi.schema import RaymmiError


@dataclasses.dataclass(frozen=True)
class IngestCellsConfig:
    """``raymmi ingest cells``: paired h5ad/h5mu modalities into a ``cells`` set.

    Parameters
    ----------
    out
        Output ``cells`` shard set.
    rna
        RNA ``.h5ad`` (or ``.h5mu``; then ``atac``/``adt`` default to its other modalities).
    atac, adt
        The paired second modality (at most one of them).
    chunk_size
        Cells per read chunk and per output file.
    batch_key
        ``obs`` column holding the batch; missing → one batch named ``batch0``.
    layer
        Matrix read from every modality: ``X``, a name in ``layers``, or unset for
        ``layers["counts"]`` when present, else ``X``. A challenge's normalized ``X`` is
        ``layer: X`` (``raymmi task`` scores it; ``preprocess`` expects raw counts).
    check_counts
        Refuse negative, non-integer or NaN/inf values read from a ``layers["counts"]``
        (they are not raw counts), naming the layer and file; ``false`` to store them anyway.
    """

    rna: str
    out: str
    atac: str | None = None
    adt: str | None = None
    chunk_size: int = 10_000
    batch_key: str = "batch"
    layer: str | None = None
    overwrite: bool = False
    check_counts: bool = True

    def __post_init__(self) -> None:
        if self.atac is not None and self.adt is not None:
            msg = "give at most one of --atac and --adt (raymmi pairs RNA with one modality)"
            raise RaymmiError(msg)
        check_positive("chunk_size", self.chunk_size)
