"""`make demo`: build a small N-Jet network, run it, and print its layers (the main job grows from here)."""

from __future__ import annotations

import torch
from torch import nn

from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["main"]


def small_njet_net(num_classes: int = 10) -> nn.Sequential:
    """Two N-Jet blocks with σ-driven subsampling, then a linear classifier (the paper's toy net, Fig. 5a)."""
    conv1 = NJetConv2d(1, 16, order=3, sigma=1.0)
    conv2 = NJetConv2d(16, 32, order=3, sigma=1.0)
    return nn.Sequential(
        conv1, nn.BatchNorm2d(16), nn.ReLU(), SafeSubsample(r=1.0, source=conv1),
        conv2, nn.BatchNorm2d(32), nn.ReLU(), SafeSubsample(r=1.0, source=conv2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def main() -> None:
    torch.manual_seed(0)
    net = small_njet_net().eval()
    print(net)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        for layer in net:
            x = layer(x)
            print(f"{type(layer).__name__:>18}  -> {tuple(x.shape)}")


if __name__ == "__main__":
    main()
