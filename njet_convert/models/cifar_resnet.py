"""CIFAR ResNets of He et al. (2016) as used in the paper: ResNet-20/32/44/56 and the bottleneck ResNet-110.

The "light" ResNet of the paper (§4.1): a 3×3 stem conv of 16 channels, then three stages at 16, 32 and 64
channels (stride 2 at the start of stages 2 and 3), global average pooling and a linear classifier. Basic-block
nets have depth 6n + 2 (n blocks per stage: 20, 32, 44, 56). The paper's ResNet-110 uses bottleneck blocks with a
4× channel expansion (stage widths 16/32/64 inside the blocks, 64/128/256 at their outputs); with three convs per
block its depth is 9n + 2, so n = 12.

Shortcuts that change shape are 1×1 strided convs with batch norm ("option B" of He et al.); the parameter-free
option A (strided slicing plus zero channels) would hide the subsampling from the converter, which turns strided
convs into safe subsampling. Batch norm follows every conv, as in the paper.

Parameter counts (10 classes): ResNet-32 466,906 (paper Table 4: 0.47 M). Our ResNet-110 as the text describes it
has 1,147,738; the paper's Table 4 lists 6.90 M, which is what a *basic-block* ResNet-110 at widths 32-64-128 has
(6,904,106) — registered as ``resnet110_wide`` so both readings are available.
"""

from __future__ import annotations

from timm.models import register_model
from torch import Tensor, nn

from ._cfg import no_weights, with_cfg, zoo_cfg

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet"]


def _conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


class BasicBlock(nn.Module):
    """Two 3×3 convs with batch norm, ReLU in between, a residual shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, out_ch, 3)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand by 4, batch norm after each, residual shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, out_ch, 1)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)) + shortcut)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: ``blocks`` per stage of ``block`` at widths ``widths`` (see the module doc)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks: int, widths: tuple[int, ...] = (16, 32, 64),
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks!r}")
        self.num_classes = num_classes
        self.stem = nn.Sequential(*_conv_bn(in_chans, widths[0], 3), nn.ReLU(inplace=True))
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(block(in_ch, width, stride=2 if i > 0 and j == 0 else 1))
                in_ch = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = in_ch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def _build(name: str, block: type[BasicBlock | Bottleneck], depth: int, pretrained: bool, kwargs: dict,
           widths: tuple[int, int, int] = (16, 32, 64)) -> CifarResNet:
    no_weights(name, pretrained)
    per_block = 2 if block is BasicBlock else 3
    blocks = (depth - 2) // (3 * per_block)
    num_classes, in_chans = int(kwargs.get("num_classes", 10)), int(kwargs.get("in_chans", 3))
    model = CifarResNet(block, blocks, widths, num_classes=num_classes, in_chans=in_chans)
    return with_cfg(model, zoo_cfg(name, num_classes, (in_chans, 32, 32)))


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (3 basic blocks per stage, 16-32-64 channels, ~0.27 M parameters)."""
    return _build("resnet20", BasicBlock, 20, pretrained, kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (5 basic blocks per stage, 16-32-64 channels, ~0.47 M parameters) — the paper's ResNet-32."""
    return _build("resnet32", BasicBlock, 32, pretrained, kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (7 basic blocks per stage)."""
    return _build("resnet44", BasicBlock, 44, pretrained, kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (9 basic blocks per stage)."""
    return _build("resnet56", BasicBlock, 56, pretrained, kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 with bottleneck blocks (12 per stage, 4× expansion: outputs 64/128/256) as in the paper."""
    return _build("resnet110", Bottleneck, 110, pretrained, kwargs)


@register_model
def resnet110_wide(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Basic-block ResNet-110 (18 blocks per stage), widths 32-64-128: 6.90 M parameters as in the paper's Table 4."""
    return _build("resnet110_wide", BasicBlock, 110, pretrained, kwargs, widths=(32, 64, 128))
