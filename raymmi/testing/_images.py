"""Seeded synthetic Cell Painting fields fitted to the real ones in ``cellpainting/images``.

Field ``(plate, well, site)`` depends only on ``(spec, plate, well, site)``, so Ray tasks can
make any number of them in parallel. Each field holds nuclei (filled ellipses) in a DNA channel
and cells around them (the nucleus grown into its Voronoi territory up to a radius) in an AGP
and an RNA channel, a plate-wide vignetting (for ``--illum plate``), blur and shot noise, as
uint16 planes.

Fitted figures (CellProfiler's own measurements of the JUMP field, plate BR00117006 well A01
site 1, ``JUMP_plate_BR00117006/BR00117006_shrunken.parquet``, 1080 x 1080 pixels):

- cell density: ``Image_Count_Cells`` 188 in 1080 x 1080 -> 1.61e-4 cells per pixel;
- nucleus area: median ``Nuclei_AreaShape_Area`` 637 px (5 cells: 582-707);
- cell / nucleus area: median ``Cells_AreaShape_Area`` 3,768 px -> 5.9x;
- DNA: ``Nuclei_Intensity_MeanIntensity_DNA`` median 0.082, ``Cytoplasm_..._DNA`` 0.009 (taken
  as the DNA background);
- AGP: ``Cells_Intensity_MeanIntensity_AGP`` median 0.057.

*Assumed*: the spread of nucleus areas (log sd 0.25), the AGP/RNA background (a third of the
cell level), vignetting depth (30% at the corners), the treatment effects (nucleus area x1.35,
AGP x1.3 in treated wells; a quarter of the wells are DMSO controls).

Pure: numpy and scipy; no file I/O (``raymmi generate images`` writes the TIFFs).
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np
from scipy import ndimage as ndi

from raymmi.testing._common import _check

CELL_DENSITY = 188 / (1080 * 1080)  # JUMP field: CellProfiler's Image_Count_Cells / pixels
NUCLEUS_AREA = 637.0  # JUMP field: median Nuclei_AreaShape_Area (px)
NUCLEUS_AREA_LOG_SD = 0.25  # assumed
CELL_OVER_NUCLEUS_AREA = 3768.0 / 637.0  # JUMP field: median Cells_ / Nuclei_AreaShape_Area
DNA_NUCLEUS = 0.082  # JUMP field: median Nuclei_Intensity_MeanIntensity_DNA (0-1)
DNA_BACKGROUND = 0.009  # JUMP field: median Cytoplasm_Intensity_MeanIntensity_DNA
AGP_CELL = 0.057  # JUMP field: median Cells_Intensity_MeanIntensity_AGP
AGP_BACKGROUND = AGP_CELL / 3  # assumed
VIGNETTING = 0.3  # assumed: 30% dimmer at the corners
TREATED_AREA = 1.35  # assumed effect of a treated well on nucleus area
TREATED_AGP = 1.3  # assumed effect on AGP intensity
CHANNELS = ("DNA", "AGP", "RNA")


@dataclasses.dataclass(frozen=True)
class FieldSetSpec:
    """A synthetic set of fields: ``plates`` x ``wells`` x ``sites`` fields of ``size``².

    Every fourth well (``A01``, ``A05`` ...) is a DMSO control; the others are treated with
    one of ``compounds`` compounds.
    """

    plates: int = 1
    wells: int = 4
    sites: int = 2
    size: int = 256
    seed: int = 0
    compounds: int = 3

    def __post_init__(self) -> None:
        for name in ("plates", "wells", "sites", "compounds"):
            _check(getattr(self, name) >= 1, f"{name}={getattr(self, name)!r} must be >= 1")
        _check(self.wells <= 384, f"wells={self.wells!r} must be <= 384 (one 384-well plate)")
        _check(self.size >= 64, f"size={self.size!r} must be >= 64 pixels")

    @property
    def n_fields(self) -> int:
        return self.plates * self.wells * self.sites


def well_name(index: int) -> str:
    """384-well plate names in row order: 0 -> ``A01``, 23 -> ``A24``, 24 -> ``B01``."""
    return f"{string.ascii_uppercase[index // 24]}{index % 24 + 1:02d}"


def plate_name(index: int) -> str:
    return f"SYN{index + 1:04d}"


def field_metadata(spec: FieldSetSpec, plate: int, well: int, site: int) -> dict[str, str]:
    """``Metadata_*`` of one field (plate, batch, well, site, treatment); two batches alternate."""
    treated = well % 4 != 0
    return {
        "Metadata_Plate": plate_name(plate),
        "Metadata_Batch": f"batch{plate % 2 + 1}",
        "Metadata_Well": well_name(well),
        "Metadata_Site": str(site + 1),
        "Metadata_Treatment": f"compound_{well % spec.compounds}" if treated else "DMSO",
    }


def generate_field(
    spec: FieldSetSpec, plate: int, well: int, site: int
) -> tuple[dict[str, np.ndarray], int]:
    """One field's planes.

    Returns
    -------
    planes : dict of str to numpy.ndarray
        ``DNA``, ``AGP``, ``RNA``: uint16 arrays of shape (size, size).
    n_cells : int
        Cells drawn (fully inside or not).
    """
    rng = np.random.default_rng([spec.seed, plate, well, site])
    size = spec.size
    treated = well % 4 != 0
    n = int(rng.poisson(CELL_DENSITY * size * size))
    area = NUCLEUS_AREA * (TREATED_AREA if treated else 1.0)
    radius = np.sqrt(area / np.pi)
    # centres at least ~2 nucleus radii apart (rejection sampling), as cells rarely overlap
    centres: list[tuple[float, float]] = []
    for _ in range(n * 30):
        if len(centres) == n:
            break
        c = rng.uniform(0, size, 2)
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > (2.2 * radius) ** 2 for a, b in centres):
            centres.append((float(c[0]), float(c[1])))
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    nuclei = np.zeros((size, size), np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        a = radius * np.exp(rng.normal(0, NUCLEUS_AREA_LOG_SD / 2))
        e = rng.uniform(0.7, 1.0)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        nuclei[
            ((u / (a / np.sqrt(e))) ** 2 + (v / (a * np.sqrt(e))) ** 2 <= 1) & (nuclei == 0)
        ] = k
    if centres:
        distance, (iy, ix) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
        owner = nuclei[iy, ix]
        grow = radius * (np.sqrt(CELL_OVER_NUCLEUS_AREA) - 1)
        cells = np.where(distance <= grow, owner, 0)
    else:
        cells = np.zeros_like(nuclei)
    dy, dx = (yy - size / 2) / (size / 2), (xx - size / 2) / (size / 2)
    vignette = 1.0 - VIGNETTING * (dy**2 + dx**2) / 2
    texture = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 2)
    agp_level = AGP_CELL * (TREATED_AGP if treated else 1.0)
    boundary = (cells > 0) & (ndi.grey_dilation(cells, size=3) != ndi.grey_erosion(cells, size=3))
    dna = DNA_BACKGROUND + (DNA_NUCLEUS - DNA_BACKGROUND) * (nuclei > 0) * (1 + 0.15 * texture)
    agp = AGP_BACKGROUND + (agp_level - AGP_BACKGROUND) * (cells > 0) * (1 + 0.3 * texture)
    agp = agp + agp_level * 0.8 * boundary
    rna = AGP_BACKGROUND + (agp_level - AGP_BACKGROUND) * ((cells > 0) * 0.8 + 0.6 * (nuclei > 0))
    planes = {}
    for name, image in (("DNA", dna), ("AGP", agp), ("RNA", rna)):
        image = ndi.gaussian_filter(image * vignette, 1.0)
        counts = rng.poisson(np.clip(image, 0, 1) * 20000) / 20000  # shot noise
        planes[name] = np.clip(counts * 65535, 0, 65535).astype(np.uint16)
    return planes, len(centres)
