"""CNN embeddings of per-cell crops (``--embed``): crops around each nucleus through a CNN.

Architectures (``--embed``):

* ``cnn-small``, defined here: four conv-BN-ReLU blocks (32-64-128-128 channels, stride 2)
  and global average pooling to a 128-d vector;
* ``torchvision:<name>`` (any of ``torchvision.models.list_models()``, e.g.
  ``torchvision:resnet18``): built with ``weights=None``, its first convolution rebuilt for
  the field's channel count and its last linear layer (the classifier) replaced by the
  identity, so the embedding is the pooled feature vector (512-d for ResNet-18);
* ``timm:<name>`` (any of ``timm.list_models()``): ``timm.create_model(name,
  pretrained=False, in_chans=n_channels, num_classes=0)``, the pooled features.

The library architectures need torchvision (and timm); PyPI's torchvision does not import
beside the CPU build of torch 2.13.0 that ``raymmi`` pins, so they run in an environment with
``torch==2.14.1 torchvision==0.29.1 timm`` (README, "Images").

Weights come from a local ``state_dict`` file read with ``torch.load(..., weights_only=True)``
(never unpickled): either the adapted network's own state (``model.state_dict()`` of what
:func:`build_network` returns), or the library's stock 3-channel classifier weights (e.g. an
ImageNet ResNet-18 file fetched elsewhere), which :func:`adapt_state_dict` fits to the
network: the classifier's weights are dropped and the first convolution's RGB kernels are
summed and shared out equally over the field's channels (an image the same in every channel
gets the response the stock network gives a grey image). ``random`` (seeded initial
weights) is for tests and warns. Crops are the bit-depth-scaled intensities (0-1), not
ImageNet-normalized.

Pure: numpy and torch; no Ray, no MLflow (the weights file is read once, by the caller's
actor).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

ARCHITECTURES = {"cnn-small": 128}
LIBRARIES = ("torchvision", "timm")
_LIBRARY_INSTALL = (
    "they need torch 2.14.1 on this machine kind: "
    "pip install torch==2.14.1 torchvision==0.29.1 timm (README, 'Images')"
)


def parse_architecture(model: str) -> tuple[str | None, str]:
    """``"cnn-small"`` -> ``(None, "cnn-small")``; ``"timm:resnet18"`` -> ``("timm", "resnet18")``.

    Raises
    ------
    ValueError
        If ``model`` is neither a built-in architecture nor ``<library>:<name>``.
    """
    if model in ARCHITECTURES:
        return None, model
    library, _, name = model.partition(":")
    if library in LIBRARIES and name:
        return library, name
    msg = (
        f"--embed {model!r} is not one of {sorted(ARCHITECTURES)}, torchvision:<name> or "
        "timm:<name> (e.g. torchvision:resnet18)"
    )
    raise ValueError(msg)


def _import(library: str, model: str) -> Any:
    import importlib

    try:
        return importlib.import_module(library)
    except Exception as err:  # not installed, or torchvision's C ops not loadable
        msg = (
            f"--embed {model!r} needs {library}, which does not import here "
            f"({type(err).__name__}: {str(err)[:120]}); {_LIBRARY_INSTALL}"
        )
        raise ValueError(msg) from err


def _first_conv(net: Any) -> tuple[str, Any]:
    import torch.nn as nn

    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    msg = f"{type(net).__name__} has no 2-D convolution to take the crops' channels"
    raise ValueError(msg)


def _set_submodule(net: Any, name: str, module: Any) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def adapt_input_conv(net: Any, in_channels: int) -> str:
    """Rebuild ``net``'s first ``Conv2d`` for ``in_channels`` inputs; return its module name."""
    import torch.nn as nn

    name, conv = _first_conv(net)
    if conv.in_channels != in_channels:
        new = nn.Conv2d(
            in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=1 if conv.groups == 1 else in_channels,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        _set_submodule(net, name, new)
    return name


def drop_classifier(net: Any) -> tuple[str, int]:
    """Replace ``net``'s last ``nn.Linear`` by the identity; return its name and input width."""
    import torch.nn as nn

    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        msg = f"{type(net).__name__} has no final linear layer (classifier) to remove"
        raise ValueError(msg)
    name, last = linears[-1]
    _set_submodule(net, name, nn.Identity())
    return name, int(last.in_features)


def build_network(model: str, in_channels: int) -> tuple[Any, dict[str, str]]:
    """The feature network of ``model`` for ``in_channels``-channel crops.

    Returns
    -------
    tuple
        The ``nn.Module`` (output shape (batch, dim)) and ``{"first_conv": name,
        "classifier": name}``, the modules :func:`adapt_state_dict` fits stock weights to
        (``classifier`` empty where there is none).

    Raises
    ------
    ValueError
        If the architecture is unknown, or its library does not import.
    """
    library, name = parse_architecture(model)
    if library is None:
        net = build_cnn(in_channels)
        return net, {"first_conv": _first_conv(net)[0], "classifier": ""}
    lib = _import(library, model)
    if library == "timm":
        if name not in lib.list_models():
            msg = f"--embed {model!r}: timm has no model {name!r} (timm.list_models())"
            raise ValueError(msg)
        net = lib.create_model(name, pretrained=False, in_chans=in_channels, num_classes=0)
        classifier = str(getattr(net, "pretrained_cfg", {}).get("classifier", "") or "")
        return net, {"first_conv": _first_conv(net)[0], "classifier": classifier}
    _import("torchvision.models", model)
    names = lib.models.list_models()
    if name not in names:
        msg = f"--embed {model!r}: torchvision has no model {name!r} (one of {names[:8]}, ...)"
        raise ValueError(msg)
    net = lib.models.get_model(name, weights=None)
    first = adapt_input_conv(net, in_channels)
    classifier, _ = drop_classifier(net)
    return net, {"first_conv": first, "classifier": classifier}


def adapt_state_dict(
    state: Mapping[str, Any], net: Any, names: Mapping[str, str]
) -> dict[str, Any]:
    """Fit a stock (3-channel, with classifier) ``state_dict`` to :func:`build_network`'s net.

    Keys of the removed classifier are dropped; a first-convolution kernel with another
    input-channel count is summed over its input channels and shared out equally over the
    net's (``sum / n`` for each), so an input equal in every channel gives the stock response
    to a grey image.
    Anything else is left for ``load_state_dict(strict=True)`` to check.
    """
    own = net.state_dict()
    classifier = names.get("classifier", "")
    out: dict[str, Any] = {}
    for key, value in state.items():
        if classifier and key.startswith(classifier + ".") and key not in own:
            continue
        out[key] = value
    key = f"{names['first_conv']}.weight"
    if key in out and key in own and tuple(out[key].shape) != tuple(own[key].shape):
        weight = out[key]
        want = own[key].shape[1]
        if weight.ndim == 4 and weight.shape[0] == own[key].shape[0]:
            shared = weight.sum(dim=1, keepdim=True) / want
            out[key] = shared.repeat(1, want, 1, 1).contiguous()
    return out


def embedding_dim(model: str, *, in_channels: int = 1, crop_size: int = 64) -> int:
    """Width of the embedding of ``model`` on ``in_channels`` x ``crop_size`` px crops.

    Builds the network and passes one zero crop through it, so a model that cannot take
    crops of that size fails here.

    Raises
    ------
    ValueError
        If ``model`` is unknown, its library does not import, or it rejects the crops.
    """
    import torch

    library, _ = parse_architecture(model)
    if library is None:
        return ARCHITECTURES[model]
    net, _ = build_network(model, in_channels)
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, in_channels, crop_size, crop_size))
    except Exception as err:
        msg = (
            f"--embed {model!r} does not take {in_channels}-channel crops of {crop_size} px "
            f"({type(err).__name__}: {str(err)[:160]}); try another --crop-size"
        )
        raise ValueError(msg) from err
    return int(out.reshape(1, -1).shape[1])


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
        Architecture: ``cnn-small``, ``torchvision:<name>`` or ``timm:<name>``.
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

        parse_architecture(model)
        torch.manual_seed(0)
        self.net, names = build_network(model, len(channels))
        if weights == "random":
            warnings.warn(
                "--weights random: embeddings from untrained weights, for tests only",
                stacklevel=2,
            )
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.net.load_state_dict(adapt_state_dict(state, self.net, names))
        self.net.eval()
        self.channels = tuple(channels)
        self.crop_size = crop_size

    def __call__(self, images: Mapping[str, np.ndarray], nuclei: np.ndarray) -> np.ndarray:
        """Embeddings of shape (n_cells, dim), float32; cell ``k`` at row ``k - 1``."""
        import torch

        batch = crops({c: images[c] for c in self.channels}, nuclei, size=self.crop_size)
        with torch.no_grad():
            out = self.net(torch.from_numpy(batch))
        return out.reshape(len(batch), -1).numpy().astype(np.float32)
