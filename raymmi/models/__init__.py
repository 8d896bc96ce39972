"""Pure torch models: SAILERX, UMINT, autoencoder baselines; the contract and the registry.

No Ray, no MLflow, no file I/O. ``raymmi.run`` trains them with Ray Train. Importing this
package registers every model (``sailerx``, ``umint``, ``ae``, ``dae``, ``sae``, and the
NeurIPS 2021 task models ``mlp_predict``, ``jae``, ``clue_match``).
"""

from raymmi.models._ae import AE, DAE, SAE, AEConfig, AEOutputs, DAEConfig, SAEConfig
from raymmi.models._batches import BatchLayout, arrow_to_batch, densify_rows
from raymmi.models._base import (
    Batch,
    Dims,
    Inputs,
    LossOutput,
    Model,
    Outputs,
    annealing,
    kl_schedule,
    model_class,
    model_names,
    register,
)
from raymmi.models._pack import PackedModel, architecture_key, check_packable
from raymmi.models._sailerx import SAILERX, SAILERXConfig, SAILERXOutputs
from raymmi.models._tasks import (
    JAE,
    ClueMatch,
    ClueMatchConfig,
    ClueMatchOutputs,
    JAEConfig,
    JAEOutputs,
    MlpPredict,
    MlpPredictConfig,
    PredictOutputs,
)
from raymmi.models._umint import UMINT, UMINTConfig, UMINTOutputs

__all__ = [
    "densify_rows",
    "check_packable",
    "architecture_key",
    "arrow_to_batch",
    "PackedModel",
    "BatchLayout",
    "AE",
    "DAE",
    "JAE",
    "SAE",
    "SAILERX",
    "UMINT",
    "AEConfig",
    "AEOutputs",
    "Batch",
    "ClueMatch",
    "ClueMatchConfig",
    "ClueMatchOutputs",
    "DAEConfig",
    "Dims",
    "Inputs",
    "JAEConfig",
    "JAEOutputs",
    "LossOutput",
    "MlpPredict",
    "MlpPredictConfig",
    "Model",
    "Outputs",
    "PredictOutputs",
    "SAEConfig",
    "SAILERXConfig",
    "SAILERXOutputs",
    "UMINTConfig",
    "UMINTOutputs",
    "annealing",
    "kl_schedule",
    "model_class",
    "model_names",
    "register",
]
