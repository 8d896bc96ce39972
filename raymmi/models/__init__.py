"""Pure torch models: SAILERX, UMINT, autoencoder baselines; the contract and the registry.

No Ray, no MLflow, no file I/O. ``raymmi.run`` trains them with Ray Train.
"""

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

__all__ = [
    "Batch",
    "Dims",
    "Inputs",
    "LossOutput",
    "Model",
    "model_class",
    "model_names",
    "register",
]
