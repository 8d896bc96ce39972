"""``STAGES``: every stage of raymmi, in the order ``raymmi --help`` lists them."""

from __future__ import annotations

from raymmi.stages import _runs
from raymmi.stages._stage import Extra, Stage

# The first word of a two-word stage ("ingest plates"): its one line in ``raymmi --help``.
GROUPS = {
    "ingest": "bring tables, h5ad/h5mu files or Cell Painting fields into shard sets",
    "evaluate": "batch-effect diagnostics of plates, one report",
    "preprocess": "out-of-core single-cell preprocessing",
    "generate": "seeded synthetic shard sets of any size",
}

_OUT_REQUIRED = Extra(("--out",), {"required": True, "help": "output shard set"})
_EPOCHS = Extra(("--epochs",), {"type": int, "help": "shortcut for --set optim.epochs=N"})
_MODEL_HELP = {"model_name": "registered model: {MODELS}"}

_STAGES = (
    Stage(
        "ingest plates",
        "raymmi.config:IngestPlatesConfig",
        _runs.ingest_plates,
        "profile tables or CellProfiler folders",
        positional=(("sources", "sources"),),
        example="raymmi ingest plates profiles.csv.gz --out plates --negcon "
        "\"Metadata_broad_sample == 'DMSO'\"\n  raymmi ingest plates site_folders/ --out wells "
        "--aggregate median",
    ),
    Stage(
        "ingest cells",
        "raymmi.config:IngestCellsConfig",
        _runs.ingest_cells,
        "paired RNA + ATAC or RNA + ADT",
        example="raymmi ingest cells --rna rna.h5ad --adt adt.h5ad --out cite",
    ),
    Stage(
        "ingest images",
        "raymmi.config:IngestImagesConfig",
        _runs.ingest_images,
        "Cell Painting fields (LoadData CSV) to profiles",
        positional=(("load_data", "load_data"),),
        flags={"measures": "measure"},
        extras=(
            Extra(
                ("--nuclei-diameter",),
                {"help": "MIN,MAX nucleus diameter in pixels (8,80)"},
            ),
        ),
        prepare=_runs.nuclei_diameter,
        example="raymmi ingest images load_data.csv --out cells --nuclei-channel DNA "
        "--cell-channel AGP",
    ),
    Stage(
        "normalize",
        "raymmi.config:NormalizeConfig",
        _runs.normalize,
        "per-plate / global normalization of plates",
        positional=(("source", "source"),),
        example="raymmi normalize plates --out plates_norm --method mad_robustize "
        "--reference negcon\n  raymmi normalize plates --out plates_combat --method combat",
    ),
    Stage(
        "select",
        "raymmi.plates:SelectConfig",
        _runs.select,
        "drop features as pycytominer feature_select would",
        positional=(("source", "source"),),
        example="raymmi select plates_norm --out plates_sel --ops variance,correlation,na",
    ),
    Stage(
        "evaluate plates",
        "raymmi.config:EvaluatePlatesConfig",
        _runs.evaluate_plates,
        "raw vs normalized plates: plate correlation, UMAP, outliers, held-out batch, mAP",
        positional=(("sources", "sources"),),
        description="Diagnose one or more plates shard sets side by side (e.g. raw and "
        "normalized) and write one HTML report. Example: raymmi evaluate plates RAW NORM "
        "--out REPORT",
        example="raymmi evaluate plates plates plates_norm --out report",
    ),
    Stage(
        "preprocess cells",
        "raymmi.cells:PreprocessCellsConfig",
        _runs.preprocess_cells,
        "RNA (QC, normalize, HVG, scale, PCA), ATAC, ADT",
        extras=(Extra(("source",), {"help": "cells shard set"}), _OUT_REQUIRED),
        example="raymmi preprocess cells cite --out cite_pre --config "
        "jobs/configs/preprocess_cells.yaml",
    ),
    Stage(
        "train",
        "raymmi.config:TrainConfig",
        _runs.train,
        "train a model (SAILERX, UMINT, AE ...) with Ray Train",
        positional=(("model_name", "model"),),
        required_positional=("model_name",),
        hidden=("fault_injection",),
        extras=(_EPOCHS,),
        prepare=_runs.epochs_shortcut,
        help_text=_MODEL_HELP,
        example="raymmi train umint --data cite_pre --out umint --label-key cell_type\n  "
        "raymmi train sailerx --data multiome_pre --out sailerx --workers 2 --set "
        "model.gamma=600",
    ),
    Stage(
        "tune",
        "raymmi.config:TrainConfig",
        _runs.tune,
        "hyperparameter search of Ray Train runs with Ray Tune",
        positional=(("model_name", "model"),),
        required_positional=("model_name",),
        hidden=("fault_injection",),
        sections={"tune": "raymmi.tune_space:TuneConfig"},
        flags={"seed": "search_seed"},
        extras=(
            _EPOCHS,
            Extra(("--resume",), {"action": "store_true", "help": "continue a killed search"}),
        ),
        prepare=_runs.epochs_shortcut,
        build=_runs.tune_settings,
        help_text=_MODEL_HELP,
        description="Search settings are flags, or the tune: section of --config / --set "
        "(--set tune.trials=8); every other key is the training config the search varies.",
        example="raymmi tune umint --data cite_pre --out search --space "
        "jobs/configs/tune_umint.yaml --trials 16 --metric val_ari --mode max --label-key "
        "cell_type",
    ),
    Stage(
        "task",
        "raymmi.run._task._config:TaskConfig",
        _runs.task,
        "NeurIPS 2021 tasks: predict, match, embed, scored",
        positional=(("task", "task"),),
        required_positional=("task",),
        example="raymmi task predict --data cite_pre --out pred --train-batches s1d1 "
        "--test-batches s1d2 --method svd_krr",
    ),
    Stage(
        "export",
        "raymmi.config:ExportConfig",
        _runs.export,
        "shard set to .parquet/.csv (plates) or .h5ad",
        positional=(("source", "source"),),
        example="raymmi export plates_norm --out plates_norm.parquet\n  raymmi export "
        "umint/embeddings --out umint.h5ad",
    ),
    Stage(
        "generate plates",
        "raymmi.testing:PlateSetSpec",
        _runs.generate_plates,
        "plates with batch effects, controls, compounds",
        flags={
            "n_plates": "plates",
            "wells_per_plate": "wells",
            "n_features": "features",
            "n_batches": "batches",
        },
        extras=(_OUT_REQUIRED,),
        example="raymmi generate plates --out plates --plates 16 --features 300",
    ),
    Stage(
        "generate cells",
        "raymmi.testing:CellSetSpec",
        _runs.generate_cells,
        "multiome (RNA+ATAC) or CITE (RNA+ADT) cells",
        flags={
            "n_cells": "cells",
            "n_genes": "genes",
            "n_peaks": "peaks",
            "n_proteins": "proteins",
            "n_batches": "batches",
        },
        extras=(_OUT_REQUIRED,),
        example="raymmi generate cells --out cells --kind cite --cells 20000",
    ),
    Stage(
        "generate images",
        "raymmi.config:GenerateImagesConfig",
        _runs.generate_images,
        "synthetic Cell Painting fields (TIFFs + LoadData)",
        example="raymmi generate images --out fields --plates 1 --wells 4 --sites 2",
    ),
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in _STAGES}
