"""Final transform: every fitted step applied to one block (the last pass)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from raymmi.cells import _adt, _atac, _rna
from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._pipeline_state import Block, State
from raymmi.cells._pipeline_stats import _atac_at, _cell_mask, _rna_at

# ---------------------------------------------------------------------------------------------
# Final transform
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockOutput:
    """The processed columns of one block, kept cells only.

    Parameters
    ----------
    keep
        Boolean mask of shape (n_cells_in_block,): the rows that stay.
    values
        Output modality name → matrix with one row per kept cell (CSR or dense float32).
    obs
        Extra per-cell columns (QC metrics), one entry per kept cell.
    """

    keep: np.ndarray
    values: Mapping[str, sp.csr_matrix | np.ndarray]
    obs: Mapping[str, np.ndarray]


def rna_output_name(config: PreprocessCellsConfig) -> str | None:
    """Name of the processed RNA matrix column (``rna_hvg`` with HVG selection)."""
    steps = set(config.rna.steps)
    if "highly_variable_genes" in steps:
        return "rna_hvg"
    if steps & {"normalize_total", "log1p", "scale"}:
        return "rna_norm"
    return None


def transform_block(block: Block, *, config: PreprocessCellsConfig, state: State) -> BlockOutput:
    """Apply every fitted step to one block (the last pass).

    Returns
    -------
    BlockOutput
        ``rna_hvg``/``rna_norm`` (dense float32 when scaled with zero centering, else CSR),
        ``rna_pca`` (float32, n_comps), ``atac`` (binarized kept peaks, CSR), ``atac_lsi``
        (float32), ``adt_clr`` (float32), for the modalities and steps present; ``obs``:
        ``rna_n_genes_by_counts``, ``rna_pct_counts_mt``, ``atac_n_peaks_by_counts``.
    """
    keep, _, qc = _cell_mask(block, config, state, metrics=True)
    values: dict[str, sp.csr_matrix | np.ndarray] = {}
    obs: dict[str, np.ndarray] = {}
    if block.rna is not None:
        rna = block.rna[keep]
        obs["rna_n_genes_by_counts"] = (
            qc["rna"]["n_genes_by_counts"].to_numpy()[keep].astype(np.int32)
        )
        obs["rna_pct_counts_mt"] = qc["rna"]["pct_counts_mt"].to_numpy()[keep].astype(np.float32)
        name = rna_output_name(config)
        if name is not None:
            steps = config.rna.steps
            last = "pca" if "pca" in steps else None
            x = _rna_at(last, rna, config=config, state=state, columns=state.rna_columns)
            values[name] = x
            if state.pca is not None:
                values["rna_pca"] = _rna.pca_transform(x, state.pca)
    if block.atac is not None:
        atac = block.atac[keep]
        obs["atac_n_peaks_by_counts"] = (
            qc["atac"]["n_peaks_by_counts"].to_numpy()[keep].astype(np.int32)
        )
        values["atac"] = _atac_at("tfidf", atac, config=config, state=state).astype(np.float32)
        if state.lsi is not None:
            a = _atac_at("lsi", atac, config=config, state=state)
            lsi = _atac.lsi_transform(
                a, state.lsi, scale_embeddings=config.atac.lsi.scale_embeddings
            )
            values["atac_lsi"] = lsi[:, 1:] if config.atac.lsi.drop_first else lsi
    if block.adt is not None and "clr" in config.adt.steps:
        values["adt_clr"] = _adt.clr(block.adt[keep])
    return BlockOutput(keep=keep, values=values, obs=obs)


def lsi_names(config: PreprocessCellsConfig) -> list[str]:
    """Feature names of ``atac_lsi``: ``LSI1`` ... (``LSI2`` ... with ``drop_first``)."""
    first = 2 if config.atac.lsi.drop_first else 1
    return [f"LSI{i}" for i in range(first, config.atac.lsi.n_comps + 1)]
