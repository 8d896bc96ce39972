"""The out-of-core preprocessing plan: statistics per pass, driver fits, final transform.

Pure: the Ray layer only maps these functions over files.

A run is a loop: :func:`plan_pass` names the statistics whose inputs are known, every block
computes them with :func:`block_statistics`, the partials are merged
(:func:`raymmi.cells.merge_partials`) and :func:`fit_pass` turns them into fitted state; when
nothing is left to fit, :func:`transform_block` writes each block. With the default steps:

1. QC of every cell (local), raw gene statistics (gene filter; ``seurat_v3`` moments), peak
   accessibility (peak filter, IDF); LSI start basis.
2. Library sizes (exact median target), ``seurat_v3`` clipped sums, first ``A^T A Q``.
3. Log-normalized gene moments (``seurat`` HVG and scale parameters), ``A^T A Q``.
4. ``X^T X`` of the scaled HVG matrix (PCA), ``A^T A Q``.
5. (ATAC only, ``n_iter=4``) last ``A^T A Q``, then block-Krylov Rayleigh-Ritz (LSI).
6. Transform and write.

A fixed ``target_sum`` removes pass 2 for ``seurat``; ``exclude_highly_expressed`` adds one.
"""

from __future__ import annotations

from collections.abc import Sequence

from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._partials import merge_partials
from raymmi.cells._pipeline_fit import MAX_PCA_FEATURES, fit_pass, var_statistics
from raymmi.cells._pipeline_plan import plan_pass
from raymmi.cells._pipeline_state import Block, State, initial_state
from raymmi.cells._pipeline_stats import block_statistics, check_counts
from raymmi.cells._pipeline_transform import (
    BlockOutput,
    lsi_names,
    rna_output_name,
    transform_block,
)

__all__ = [
    "MAX_PCA_FEATURES",
    "Block",
    "BlockOutput",
    "State",
    "block_statistics",
    "check_counts",
    "fit_blocks",
    "fit_pass",
    "initial_state",
    "lsi_names",
    "plan_pass",
    "rna_output_name",
    "var_statistics",
    "transform_block",
]


def fit_blocks(blocks: Sequence[Block], *, config: PreprocessCellsConfig, state: State) -> State:
    """Run every statistics pass over in-memory blocks (the Ray layer's loop, serially).

    For tests and small data; the Ray layer runs the same loop with one task per file.
    """
    while wants := plan_pass(config, state):
        parts = [block_statistics(b, config=config, state=state, wants=wants) for b in blocks]
        state = fit_pass(config, state, merge_partials(parts))
    return state
