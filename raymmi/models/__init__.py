"""Pure torch models: SAILERX, UMINT, autoencoder baselines; the contract and the registry.

No Ray, no MLflow, no file I/O. ``raymmi.run`` trains them with Ray Train. Importing this
package registers every model (``sailerx``, ``umint``, ``ae``, ``dae``, ``sae``, and the
NeurIPS 2021 task models ``mlp_predict``, ``jae``, ``clue_match``).
"""

from raymmi.models._ae import AE, DAE, SAE, AEConfig, DAEConfig, SAEConfig
from raymmi.models._base import (
    Batch,
    Dims,
    Inputs,
    LossOutput,
    Model,
    model_class,
    model_names,
    register,
)
from raymmi.models._sailerx import SAILERX, SAILERXConfig
from raymmi.models._tasks import (
    JAE,
    ClueMatch,
    ClueMatchConfig,
    JAEConfig,
    MlpPredict,
    MlpPredictConfig,
)
from raymmi.models._umint import UMINT, UMINTConfig

__all__ = [
    "AE",
    "DAE",
    "JAE",
    "SAE",
    "SAILERX",
    "UMINT",
    "AEConfig",
    "Batch",
    "ClueMatch",
    "ClueMatchConfig",
    "DAEConfig",
    "Dims",
    "Inputs",
    "JAEConfig",
    "LossOutput",
    "MlpPredict",
    "MlpPredictConfig",
    "Model",
    "SAEConfig",
    "SAILERXConfig",
    "UMINTConfig",
    "model_class",
    "model_names",
    "register",
]
