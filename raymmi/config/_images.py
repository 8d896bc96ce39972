"""Settings of ``raymmi ingest images`` and ``raymmi generate images``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from raymmi.config._base import check_choice, check_positive
from raymmi.schema import RaymmiError

#: The measurement groups of ``raymmi ingest images --measure`` (cp-measure's families), in the
#: order they are computed; ``raymmi.images`` measures them.
MEASURES: tuple[str, ...] = (
    "sizeshape",
    "intensity",
    "texture",
    "granularity",
    "radial",
    "correlation",
)


@dataclasses.dataclass(frozen=True)
class IngestImagesConfig:
    """``raymmi ingest images``: Cell Painting fields (a LoadData CSV) into a ``plates`` set.

    Parameters
    ----------
    load_data
        CellProfiler LoadData CSV: one row per field, ``Metadata_Plate/Well/Site``,
        ``FileName_<Ch>``/``PathName_<Ch>`` per channel, optional ``ObjectsFileName_<Obj>``.
    out
        Output shard-set directory (one row per cell; per well with ``aggregate``).
    nuclei_channel
        Channel the nuclei are found in (``DNA``; JUMP's ``OrigDNA`` is ``DNA``).
    cell_channel
        Channel cells are grown over (``AGP``); ``None``: nuclei only.
    measures
        Any of ``sizeshape``, ``intensity``, ``texture``, ``granularity``, ``radial``,
        ``correlation``.
    illum
        ``none`` or ``plate`` (a per-plate, per-channel illumination function from the mean of
        the plate's fields, smoothed; each field is divided by it).
    aggregate
        ``median`` or ``mean``: one row per well instead of per cell.
    negcon
        pandas query over the LoadData metadata marking negative-control fields.
    nuclei_min_diameter, nuclei_max_diameter
        Nucleus diameter range in pixels (objects outside it are dropped).
    threshold
        ``otsu``, ``otsu3`` (three classes, middle one foreground) or ``li`` (min cross-entropy,
        the default: it matched CellProfiler's counts on the JUMP and six-channel fields).
    discard_border_cells
        Drop cells touching the field's border (with their nuclei).
    embed
        CNN for per-cell crop embeddings (``Embedding_<i>`` columns): ``cnn-small``,
        ``torchvision:<name>`` or ``timm:<name>`` (:mod:`raymmi.images`); ``None``: off.
    weights
        Weights file of ``embed`` (``torch.load(weights_only=True)``), or ``random`` (tests).
    crop_size
        Side of the per-cell crops around each nucleus (pixels).
    embed_only
        With ``embed``: write the embeddings instead of (not beside) the measurements.
    workers
        Fields measured at once (default: the cluster's CPUs).
    """

    load_data: str
    out: str
    nuclei_channel: str
    cell_channel: str | None = None
    measures: tuple[str, ...] = MEASURES
    illum: Literal["none", "plate"] = "none"
    aggregate: Literal["median", "mean"] | None = None
    negcon: str | None = None
    nuclei_min_diameter: float = 8.0
    nuclei_max_diameter: float = 80.0
    threshold: Literal["otsu", "otsu3", "li"] = "li"
    discard_border_cells: bool = False
    embed: str | None = None
    weights: str | None = None
    crop_size: int = 64
    embed_only: bool = False
    workers: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("illum", self.illum, ("none", "plate"))
        check_choice("aggregate", self.aggregate, (None, "median", "mean"))
        check_choice("threshold", self.threshold, ("otsu", "otsu3", "li"))
        allowed = MEASURES
        bad = [m for m in self.measures if m not in allowed]
        if bad or (not self.measures and not self.embed):
            msg = (
                f"--measure {list(self.measures)}: {bad or 'none given'}; "
                f"choose from {list(allowed)}"
            )
            raise RaymmiError(msg)
        if not 0 < self.nuclei_min_diameter < self.nuclei_max_diameter:
            msg = (
                f"nuclei diameters ({self.nuclei_min_diameter}, {self.nuclei_max_diameter}) "
                "must satisfy 0 < min < max"
            )
            raise RaymmiError(msg)
        if self.embed is not None and not self.weights:
            msg = "--embed needs --weights PATH (a state_dict file) or --weights random (tests)"
            raise RaymmiError(msg)
        if self.embed is None and self.embed_only:
            msg = "embed_only needs --embed MODEL"
            raise RaymmiError(msg)
        check_positive("crop_size", self.crop_size)
        if self.workers is not None:
            check_positive("workers", self.workers)


@dataclasses.dataclass(frozen=True)
class GenerateImagesConfig:
    """``raymmi generate images``: synthetic Cell Painting fields (TIFFs + a LoadData CSV).

    Parameters
    ----------
    out
        Folder for the TIFFs and ``load_data.csv``.
    plates, wells, sites
        Plates, wells per plate and fields per well.
    size
        Side of a field in pixels.
    seed
        Seed of every field.
    """

    out: str
    plates: int = 1
    wells: int = 4
    sites: int = 2
    size: int = 256
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("plates", "wells", "sites", "size"):
            check_positive(name, getattr(self, name))
