"""The pipeline's data types: a block of cells, the fitted state, and the state before pass one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raymmi.cells import _atac, _rna
from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._partials import ColumnStats


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of cells as the pipeline reads it.

    Parameters
    ----------
    rna
        Raw RNA counts, CSR float32 of shape (n_cells, n_genes), or ``None``.
    atac
        Raw ATAC counts, CSR float32 of shape (n_cells, n_peaks), or ``None``.
    adt
        ADT counts, float32 array of shape (n_cells, n_proteins), or ``None``.
    batch
        Batch label of each cell (the HVG ``batch_key`` column) as str, shape (n_cells,),
        or ``None``.
    where
        Name of the block in error messages (e.g. the file).
    """

    rna: sp.csr_matrix | None = None
    atac: sp.csr_matrix | None = None
    adt: np.ndarray | None = None
    batch: np.ndarray | None = None
    where: str = "block"

    @property
    def n_cells(self) -> int:
        """Rows of the block."""
        for x in (self.rna, self.atac, self.adt):
            if x is not None:
                return int(x.shape[0])
        return 0 if self.batch is None else len(self.batch)


@dataclasses.dataclass(frozen=True)
class State:
    """Everything fitted so far; ``None`` means not fitted yet.

    Gene and peak masks and HVG indices refer to the input's feature order.
    """

    genes: tuple[str, ...] = ()
    peaks: tuple[str, ...] = ()
    proteins: tuple[str, ...] = ()
    counts_source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    passes: int = 0
    n_cells_in: int | None = None
    n_cells: int | None = None
    cells_removed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    batches: tuple[str, ...] | None = None
    mt: np.ndarray | None = None
    gene_keep: np.ndarray | None = None
    genes_removed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    heg: np.ndarray | None = None
    target_sum: float | None = None
    v3_raw: ColumnStats | None = None
    v3_reg_std: np.ndarray | None = None
    v3_clip: np.ndarray | None = None
    hvg: np.ndarray | None = None
    hvg_table: pd.DataFrame | None = None
    scale_mean: np.ndarray | None = None
    scale_std: np.ndarray | None = None
    scale_columns: np.ndarray | None = None
    pca: _rna.PcaFit | None = None
    peak_keep: np.ndarray | None = None
    idf: np.ndarray | None = None
    lsi_q: np.ndarray | None = None
    lsi_bases: tuple[np.ndarray, ...] = ()
    lsi_products: tuple[np.ndarray, ...] = ()
    lsi: _atac.LsiFit | None = None

    @property
    def kept_genes(self) -> np.ndarray:
        """Indices of the genes that pass the gene filter."""
        if self.gene_keep is None:
            msg = "internal error: the gene filter is not fitted yet"
            raise RuntimeError(msg)
        return np.flatnonzero(self.gene_keep)

    @property
    def rna_columns(self) -> np.ndarray:
        """Indices of the genes in the processed RNA matrix (HVGs, else the kept genes)."""
        return self.hvg if self.hvg is not None else self.kept_genes


def initial_state(
    config: PreprocessCellsConfig,
    *,
    genes: Sequence[str] = (),
    peaks: Sequence[str] = (),
    proteins: Sequence[str] = (),
    counts_source: Mapping[str, str] | None = None,
) -> State:
    """The state before the first pass: feature names and what needs no data.

    Parameters
    ----------
    config
        The preprocessing configuration.
    genes, peaks, proteins
        Feature names of the modalities present (empty: modality absent).
    counts_source
        Per modality, where its values were read from (e.g. ``layers/counts of x.h5ad``),
        quoted when they turn out not to be counts.
    """
    rna = config.rna
    mt = np.array([g.startswith(rna.filter_cells.mt_prefix) for g in genes], dtype=bool)
    state = State(
        genes=tuple(genes),
        peaks=tuple(peaks),
        proteins=tuple(proteins),
        counts_source=dict(counts_source or {}),
        mt=mt,
    )
    if genes:
        changes: dict[str, Any] = {}
        if "normalize_total" not in rna.steps or not rna.normalize_total.exclude_highly_expressed:
            changes["heg"] = np.zeros(len(genes), dtype=bool)
        if "normalize_total" in rna.steps and rna.normalize_total.target_sum is not None:
            changes["target_sum"] = float(rna.normalize_total.target_sum)
        state = dataclasses.replace(state, **changes)
    return state
