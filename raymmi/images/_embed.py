"""CNN embeddings of per-cell crops (``--embed``): crops around each nucleus, a small CNN.

torchvision from the package index does not import beside the pinned CPU torch 2.13.0, so the
architecture is defined here: ``cnn-small``, four conv-BN-ReLU blocks (32-64-128-128
channels, stride 2) and global average pooling to a 128-d vector, taking as many input
channels as the field has. Weights come from a local ``state_dict`` file read with
``torch.load(..., weights_only=True)``; ``random`` (seeded initial weights) is for tests and
warns.

Pure: numpy and torch; no Ray, no MLflow (the weights file is read once, by the caller's
actor).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np

ARCHITECTURES = {"cnn-small": 128}


def embedding_dim(model: str) -> int:
    """Width of the embedding of ``model``.

    Raises
    ------
    ValueError
        If ``model`` is not one of :data:`ARCHITECTURES`.
    """
    if model not in ARCHITECTURES:
        msg = f"--embed {model!r} is not one of {sorted(ARCHITECTURES)}"
        raise ValueError(msg)
    return ARCHITECTURES[model]


def crops(images: Mapping[str, np.ndarray], nuclei: np.ndarray, *, size: int) -> np.ndarray:
    """Square crops centred on each nucleus, channels stacked, zero outside the field.

    Parameters
    ----------
    images
        Channel to float array of shape (height, width).
    nuclei
        int labels of the same shape, 1..n.
    size
        Crop side in pixels.

    Returns
    -------
    numpy.ndarray
        float32 of shape (n, n_channels, size, size); crop ``k - 1`` is nucleus ``k``.
    """
    from raymmi.images._measure import object_centers

    stack = np.stack([images[c] for c in images]).astype(np.float32)
    n = int(nuclei.max())
    half = size // 2
    padded = np.pad(stack, ((0, 0), (half, size), (half, size)))
    x, y = object_centers(nuclei)
    out = np.empty((n, stack.shape[0], size, size), np.float32)
    for k in range(n):
        r, c = round(y[k]), round(x[k])
        out[k] = padded[:, r : r + size, c : c + size]
    return out


def build_cnn(in_channels: int):
    """The ``cnn-small`` network (an ``nn.Module``; output shape (batch, 128))."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    widths = [in_channels, 32, 64, 128, 128]
    for a, b in pairwise(widths):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class CropEmbedder:
    """Embed every cell of a field: crops around nuclei through a CNN, in eval mode on CPU.

    Parameters
    ----------
    model
        Architecture name (``cnn-small``).
    weights
        Path of a ``state_dict`` file, or ``"random"`` (seeded weights; warns).
    channels
        Channels stacked into the crop, in order.
    crop_size
        Crop side in pixels.
    """

    def __init__(
        self, *, model: str, weights: str, channels: Sequence[str], crop_size: int
    ) -> None:
        import torch

        embedding_dim(model)
        torch.manual_seed(0)
        self.net = build_cnn(len(channels))
        if weights == "random":
            warnings.warn(
                "--weights random: embeddings from untrained weights, for tests only",
                stacklevel=2,
            )
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state)
        self.net.eval()
        self.channels = tuple(channels)
        self.crop_size = crop_size

    def __call__(self, images: Mapping[str, np.ndarray], nuclei: np.ndarray) -> np.ndarray:
        """Embeddings of shape (n_cells, dim), float32; cell ``k`` at row ``k - 1``."""
        import torch

        batch = crops({c: images[c] for c in self.channels}, nuclei, size=self.crop_size)
        with torch.no_grad():
            out = self.net(torch.from_numpy(batch))
        return out.numpy().astype(np.float32)
