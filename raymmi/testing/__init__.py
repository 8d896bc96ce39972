"""Seeded synthetic plates and single cells fitted to the real files, and :func:`shared_data`.

Two generators build data sets of any size one independent piece at a time, so that Ray tasks
can produce them in parallel with no shared state:

- :func:`generate_plate` returns one plate of Cell Painting profiles for a :class:`PlateSetSpec`;
  plate ``i`` depends only on ``(spec, i)``.
- :func:`generate_cells` returns one chunk of paired single cells (RNA + ATAC, or RNA + ADT) for
  a :class:`CellSetSpec`; chunk ``i`` depends only on ``(spec, i)`` (and so on ``chunk_size``).

Global parameters (feature scales, correlation structure, compound, batch and cell-type effects)
come from ``numpy.random.SeedSequence(seed)``; the draws of one piece from
``numpy.random.default_rng([seed, index])``. Each process recomputes the global parameters from
the spec alone (cached per spec). Feature names (CellProfiler-style features, genes, peaks,
proteins) do not depend on the seed, so data sets with different seeds share one feature space.

This package is pure: numpy, scipy and pandas only; no Ray, no MLflow, no file I/O at run time
(:func:`shared_data` only resolves paths). Plates live in ``_plates`` (figures, spec, names,
global parameters) and ``_plate_generation``; cells in ``_cells`` and ``_cell_generation``;
:func:`shared_data` and :class:`SpecError` in ``_common``. Import everything from here.

How the figures were fitted
---------------------------
Every fitted figure is a module constant whose comment names the file and the statistic. They
were measured once, by hand, on the files in ``../shared/data``:

- ``cellpainting/jump_8plates_3features.parquet`` (raw JUMP wells, 8 plates, 6 batches,
  4 sources; 3 Zernike features): per feature, the pooled within-plate standard deviation of
  the negative-control wells (the generator's noise unit); the spread of plate medians between
  the two plates of a batch (two batches hold two plates) and of batch means across the six
  batches, both divided by that pooled negcon sd; the same for log plate standard deviations
  (scale effects); then the mean over the 3 features.
- ``cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz`` (one plate, 454 features):
  eigenvalues of the feature correlation matrix over all 384 wells, each divided by 454 (the
  generator's low-rank-plus-noise factor model uses the top 20 as factor variances); per treated
  well, the root-mean-square over features of its profile z-scored against the 24 DMSO wells; a
  well counts as active when that exceeds the 95th percentile of the DMSO wells' own values,
  and its effect size is ``sqrt(rms**2 - 1)``.
- ``cellpainting/cellprofiler_BR00121431/*/{Cells,Cytoplasm,Nuclei}.csv`` (raw single cells):
  log10 of the absolute per-feature median, mean and sd per measurement category, giving the
  raw magnitudes of features.
- ``singlecell/openproblems_bmmc_cite_starter/*.h5ad`` (600 cells, ``layers["counts"]``): per
  cell library sizes (median, sd of log); fraction of zero entries; per gene the mean count and
  the method-of-moments negative-binomial dispersion ``sum((x - s*m)**2 - s*m) / sum((s*m)**2)``
  with size factors ``s`` (over all cells, and within each of the six largest cell types);
  batch effects as the sd of per-gene log ratios of normalized means between the two batches,
  corrected for the same sd between two random halves; ADT count levels likewise.
- ATAC has no real file here: figures from the 10x Genomics Multiome PBMC literature
  (5-15k fragments per cell, 2-8% of peaks accessible per cell), as noted at each constant.
- ``difficulty="realistic"`` (``REALISTIC_*``): the depths of a real 10x Multiome BMMC set
  (500 cells, 600 genes, 600 peaks; figures from issue 17, the file is not here: ATAC density
  0.14, RNA median 384 UMIs) and cell-type fold changes shrunk until an RNA PCA-50 clusters
  the generated types as on the real sets: Leiden ARI / NMI 0.324 / 0.512 (that Multiome set)
  and k-means ARI 0.36-0.39 (the CITE starter, measured here with the UMINT notebook's
  scaling and with a plain z-score), with generated sets of the same shapes.

Figures marked *calibrated* are model parameters tuned (by generating and re-measuring) until
the generator reproduces the file statistics named in their comment; figures marked *assumed*
are modelling choices that no file here can measure.
"""

from raymmi.testing._cell_generation import (
    _nb_sparse as _nb_sparse,
)
from raymmi.testing._cell_generation import (
    generate_cells,
)
from raymmi.testing._cells import (
    ADT_BATCH_LOG_SD,
    ADT_COUNTS_PER_PROTEIN,
    ADT_DEPTH_LOG_SD,
    ADT_NB_DISPERSION,
    ADT_PROTEIN_LOG10_MEAN,
    ADT_TYPE_LFC_SD,
    ADT_ZERO_FRACTION,
    ATAC_ACCESSIBLE_FRACTION,
    ATAC_BATCH_LOG_SD,
    ATAC_DEPTH_LOG_SD,
    ATAC_MARKER_FRACTION,
    ATAC_MARKER_LFC_SD,
    ATAC_PEAK_LOG_SD,
    BATCH_COMPOSITION_CONCENTRATION,
    CELL_CYCLE_G2M_GENES,
    CELL_CYCLE_S_GENES,
    CELL_TYPE_ZIPF,
    DEPTH_CORRELATION,
    N_STATE,
    PHASE_FRACTIONS,
    PHASE_LFC,
    REALISTIC_ADT_TYPE_SCALE,
    REALISTIC_ATAC_ACCESSIBLE_FRACTION,
    REALISTIC_ATAC_TYPE_SCALE,
    REALISTIC_MULTIOME_RNA_UMIS_PER_GENE,
    REALISTIC_RNA_TYPE_SCALE,
    RNA_BATCH_LOG_SD,
    RNA_DEPTH_LOG_SD,
    RNA_GENE_LOG10_MEAN,
    RNA_MARKER_FRACTION,
    RNA_MARKER_LFC_SD,
    RNA_NB_DISPERSION,
    RNA_SPARSITY,
    RNA_UMIS_PER_GENE,
    RNA_WITHIN_TYPE_DISPERSION,
    STATE_LOADING_SD,
    CellSetSpec,
    cell_cycle_genes,
    gene_names,
    n_chunks,
    peak_names,
    protein_names,
)
from raymmi.testing._cells import (
    _cell_globals as _cell_globals,
)
from raymmi.testing._common import (
    SHARED_DATA_ENV,
    SpecError,
    has_shared_data,
    shared_data,
    shared_data_root,
)
from raymmi.testing._images import (
    FieldSetSpec,
    field_metadata,
    generate_field,
)
from raymmi.testing._plate_generation import (
    generate_plate,
    generate_plates,
)
from raymmi.testing._plates import (
    ACTIVE_FRACTION,
    BATCH_LOCATION_SD,
    BATCH_LOG_SCALE_SD,
    COMPOUND,
    EFFECT_LOG_MEAN,
    EFFECT_LOG_SD,
    EIGENVALUE_FRACTIONS,
    FEATURE_LOG10_MAGNITUDE,
    FEATURE_RESPONSE_LOG_SD,
    NEGCON_CV,
    NEGCON_CV_LOG_SD,
    NEGCON_OVER_ALL_SD_JUMP,
    NEGCON_OVER_ALL_SD_LINCS,
    PLATE_LOCATION_SD,
    PLATE_LOG_SCALE_SD,
    SITE_NOISE_SD,
    PlateSetSpec,
    active_compounds,
    feature_names,
    planted_zero_spread,
    plate_ids,
)
from raymmi.testing._plates import (
    _plate_globals as _plate_globals,
)

# Every public name: functions, classes and the fitted figures. The ``X as X`` imports above also
# re-export the private names that tests reach into (cache_clear, the NB sampler).
from raymmi.testing._procs import cmdline, descendants, listening_sockets

__all__ = [
    "ACTIVE_FRACTION",
    "ADT_BATCH_LOG_SD",
    "ADT_COUNTS_PER_PROTEIN",
    "ADT_DEPTH_LOG_SD",
    "ADT_NB_DISPERSION",
    "ADT_PROTEIN_LOG10_MEAN",
    "ADT_TYPE_LFC_SD",
    "ADT_ZERO_FRACTION",
    "ATAC_ACCESSIBLE_FRACTION",
    "ATAC_BATCH_LOG_SD",
    "ATAC_DEPTH_LOG_SD",
    "ATAC_MARKER_FRACTION",
    "ATAC_MARKER_LFC_SD",
    "ATAC_PEAK_LOG_SD",
    "BATCH_COMPOSITION_CONCENTRATION",
    "BATCH_LOCATION_SD",
    "BATCH_LOG_SCALE_SD",
    "CELL_CYCLE_G2M_GENES",
    "CELL_CYCLE_S_GENES",
    "CELL_TYPE_ZIPF",
    "COMPOUND",
    "DEPTH_CORRELATION",
    "EFFECT_LOG_MEAN",
    "EFFECT_LOG_SD",
    "EIGENVALUE_FRACTIONS",
    "FEATURE_LOG10_MAGNITUDE",
    "FEATURE_RESPONSE_LOG_SD",
    "NEGCON_CV",
    "NEGCON_CV_LOG_SD",
    "NEGCON_OVER_ALL_SD_JUMP",
    "NEGCON_OVER_ALL_SD_LINCS",
    "N_STATE",
    "PHASE_FRACTIONS",
    "PHASE_LFC",
    "PLATE_LOCATION_SD",
    "PLATE_LOG_SCALE_SD",
    "REALISTIC_ADT_TYPE_SCALE",
    "REALISTIC_ATAC_ACCESSIBLE_FRACTION",
    "REALISTIC_ATAC_TYPE_SCALE",
    "REALISTIC_MULTIOME_RNA_UMIS_PER_GENE",
    "REALISTIC_RNA_TYPE_SCALE",
    "RNA_BATCH_LOG_SD",
    "RNA_DEPTH_LOG_SD",
    "RNA_GENE_LOG10_MEAN",
    "RNA_MARKER_FRACTION",
    "RNA_MARKER_LFC_SD",
    "RNA_NB_DISPERSION",
    "RNA_SPARSITY",
    "RNA_UMIS_PER_GENE",
    "RNA_WITHIN_TYPE_DISPERSION",
    "SHARED_DATA_ENV",
    "SITE_NOISE_SD",
    "STATE_LOADING_SD",
    "CellSetSpec",
    "FieldSetSpec",
    "PlateSetSpec",
    "SpecError",
    "active_compounds",
    "cell_cycle_genes",
    "cmdline",
    "descendants",
    "feature_names",
    "field_metadata",
    "gene_names",
    "generate_cells",
    "generate_field",
    "generate_plate",
    "generate_plates",
    "has_shared_data",
    "listening_sockets",
    "n_chunks",
    "peak_names",
    "planted_zero_spread",
    "plate_ids",
    "protein_names",
    "shared_data",
    "shared_data_root",
]
