"""Network in Network (Lin et al., 2014) for CIFAR, with batch norm after every conv as the paper adds.

Three mlpconv blocks: a spatial conv (5×5, 5×5, 3×3; 192 channels) followed by two 1×1 convs; 3×3 stride-2 max
pooling after the first block and 3×3 stride-2 average pooling after the second (each followed by dropout 0.5);
the last 1×1 conv gives the class maps, averaged globally. Channels 192-160-96 / 192-192-192 / 192-192-classes.
"""

from __future__ import annotations

from timm.models import register_model
from torch import Tensor, nn

from ._cfg import no_weights, with_cfg, zoo_cfg

__all__ = ["NIN"]


def _mlpconv(in_ch: int, widths: tuple[int, int, int], kernel_size: int, last_act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (k, out_ch) in enumerate(zip((kernel_size, 1, 1), widths, strict=True)):
        layers += [nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False), nn.BatchNorm2d(out_ch)]
        if i < 2 or last_act:
            layers.append(nn.ReLU(inplace=True))
        in_ch = out_ch
    return layers


class NIN(nn.Module):
    """Network in Network for 32×32 images (see the module doc); about 0.97 M parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            *_mlpconv(in_chans, (192, 160, 96), 5),
            nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(drop_rate),
            *_mlpconv(96, (192, 192, 192), 5),
            nn.AvgPool2d(3, stride=2, padding=1), nn.Dropout(drop_rate),
            *_mlpconv(192, (192, 192, num_classes), 3, last_act=False),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


@register_model
def nin(pretrained: bool = False, **kwargs) -> NIN:
    """Network in Network for CIFAR (paper §4.1; lr 0.5, α decay 0.01 in the N-Jet version)."""
    no_weights("nin", pretrained)
    num_classes, in_chans = int(kwargs.get("num_classes", 10)), int(kwargs.get("in_chans", 3))
    model = NIN(num_classes, in_chans, float(kwargs.get("drop_rate", 0.5)))
    return with_cfg(model, zoo_cfg("nin", num_classes, (in_chans, 32, 32), first_conv="features.0", classifier=""))
