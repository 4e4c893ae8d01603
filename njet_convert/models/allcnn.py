"""All-CNN-C (Springenberg et al., 2015) for CIFAR, with batch norm after every conv as the paper adds.

Only convolutions: 3×3 at 96 channels twice, a 3×3 stride-2 conv (replacing pooling), 3×3 at 192 twice, another
3×3 stride-2 conv, a 3×3 conv without padding (8×8 -> 6×6), two 1×1 convs (192, classes) and global average
pooling. Dropout 0.5 after each stride-2 conv (the original also drops 20 % of the input; left out here).
"""

from __future__ import annotations

from timm.models import register_model
from torch import Tensor, nn

from ._cfg import no_weights, with_cfg, zoo_cfg

__all__ = ["AllCNN"]

# (out_channels, kernel, stride, padding) of All-CNN-C's nine convs
_LAYERS = ((96, 3, 1, 1), (96, 3, 1, 1), (96, 3, 2, 1), (192, 3, 1, 1), (192, 3, 1, 1), (192, 3, 2, 1),
           (192, 3, 1, 0), (192, 1, 1, 0), (None, 1, 1, 0))


class AllCNN(nn.Module):
    """All-CNN-C for 32×32 images (see the module doc); about 1.37 M parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        in_ch = in_chans
        for i, (width, k, stride, pad) in enumerate(_LAYERS):
            out_ch = num_classes if width is None else width
            layers += [nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad, bias=False), nn.BatchNorm2d(out_ch)]
            if i < len(_LAYERS) - 1:
                layers.append(nn.ReLU(inplace=True))
            if stride == 2:
                layers.append(nn.Dropout(drop_rate))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


@register_model
def allcnn(pretrained: bool = False, **kwargs) -> AllCNN:
    """All-CNN-C for CIFAR (paper §4.1; lr 0.25, α decay 1e-3 in the N-Jet version)."""
    no_weights("allcnn", pretrained)
    num_classes, in_chans = int(kwargs.get("num_classes", 10)), int(kwargs.get("in_chans", 3))
    model = AllCNN(num_classes, in_chans, float(kwargs.get("drop_rate", 0.5)))
    return with_cfg(model, zoo_cfg("allcnn", num_classes, (in_chans, 32, 32), first_conv="features.0",
                                   classifier=""))
