"""Pass planning: which statistics the next pass computes."""

from __future__ import annotations

from raymmi.cells._config import PreprocessCellsConfig
from raymmi.cells._pipeline_state import State

# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def _hvg_flavor(config: PreprocessCellsConfig) -> str | None:
    rna = config.rna
    return rna.highly_variable_genes.flavor if "highly_variable_genes" in rna.steps else None


def _normalized_ready(config: PreprocessCellsConfig, state: State) -> bool:
    if "normalize_total" not in config.rna.steps:
        return True
    return state.heg is not None and state.target_sum is not None


def plan_pass(config: PreprocessCellsConfig, state: State) -> tuple[str, ...]:
    """Names of the statistics the next pass computes; empty when only the write is left.

    Every statistic whose inputs are fitted and whose result is still needed runs in the same
    pass, so the number of passes is the depth of the dependency chain, not the step count.
    """
    if state.n_cells is None:
        wants = ["qc"]
        if state.genes:
            wants.append("rna.raw")
        if state.peaks:
            wants.append("atac.raw")
        return tuple(wants)
    wants = []
    rna = config.rna
    if state.genes:
        flavor = _hvg_flavor(config)
        if state.heg is None:
            wants.append("rna.heg")
        elif state.target_sum is None:
            wants.append("rna.depth")
        if flavor == "seurat_v3" and state.hvg is None:
            wants.append("rna.v3clip")
        ready = _normalized_ready(config, state)
        if ready and flavor == "seurat" and state.hvg is None:
            wants.append("rna.hvg")
        if ready and "scale" in rna.steps and state.scale_mean is None:
            wants.append("rna.scale")
        scaled = "scale" not in rna.steps or state.scale_mean is not None
        selected = flavor is None or state.hvg is not None
        if ready and scaled and selected and "pca" in rna.steps and state.pca is None:
            wants.append("rna.gram")
    if (
        state.peaks
        and "lsi" in config.atac.steps
        and state.lsi is None
        and state.lsi_q is not None
    ):
        wants.append("atac.lsi")
    return tuple(wants)
