"""The paper's architectures, registered in timm's registry on import (``timm.create_model("resnet32")``).

- CIFAR ResNet-20/32/44/56 and the bottleneck ResNet-110 (:mod:`.cifar_resnet`), NIN (:mod:`.nin`), All-CNN-C
  (:mod:`.allcnn`), EfficientNet-B0 for 32 px (:mod:`.efficientnet_cifar`) — paper §4.1 (Exp. A);
- the 2- and 4-layer MNIST toy nets of Table 5 (:mod:`.mnist_toy`), the 3-level U-Net of Exp. 1.1B
  (:mod:`.unet`) and DeepLab-v2 with its ASPP head (:mod:`.aspp`) — Exp. B.

``ZOO`` maps each registered name to its input size ``(C, H, W)``.
"""

from __future__ import annotations

from . import allcnn, aspp, cifar_resnet, efficientnet_cifar, mnist_toy, nin, unet  # noqa: F401  (each registers)
from .allcnn import AllCNN
from .aspp import ASPPHead, DeepLabV2, NJetASPPHead
from .cifar_resnet import CifarResNet
from .efficientnet_cifar import cifar_strides
from .mnist_toy import ToyNet
from .nin import NIN
from .unet import UNet

__all__ = ["NIN", "ZOO", "ASPPHead", "AllCNN", "CifarResNet", "DeepLabV2", "NJetASPPHead", "ToyNet", "UNet",
           "cifar_strides", "zoo_names"]

ZOO: dict[str, tuple[int, int, int]] = {
    "resnet20": (3, 32, 32), "resnet32": (3, 32, 32), "resnet44": (3, 32, 32), "resnet56": (3, 32, 32),
    "resnet110": (3, 32, 32), "resnet110_wide": (3, 32, 32), "nin": (3, 32, 32), "allcnn": (3, 32, 32),
    "efficientnet_b0_cifar": (3, 32, 32), "njet_mnist_toy2": (1, 28, 28), "njet_mnist_toy4": (1, 28, 28),
    "mnist_toy2_conv3": (1, 28, 28), "mnist_toy4_conv3": (1, 28, 28), "unet_fmnist": (1, 64, 64),
    "njet_unet_fmnist": (1, 64, 64), "deeplabv2_aspp": (3, 128, 128), "njet_deeplabv2_aspp": (3, 128, 128),
}


def zoo_names() -> list[str]:
    """The names this package registers in timm (sorted)."""
    return sorted(ZOO)
