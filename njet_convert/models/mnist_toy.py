"""Toy classification nets of the paper's Exp. 1.2A (Fig. 5a) and Table 5 (Exp. 4A), for 1-channel digits.

``depth`` blocks of ``conv -> BatchNorm -> ReLU``, a subsampling step between blocks, then adaptive average
pooling to a fixed ``grid``×``grid`` map and a linear classifier (so one net takes any input size; the grid keeps
the coarse layout that a digit needs — global pooling alone left 2-layer nets at ~50 % on 28 px digits).
The conv is one of:

- ``standard``: a ``kernel_size``×``kernel_size`` conv (3, 5, 9, 11 in Table 5), subsampled by 2×2 max pooling —
  the hard-coded resolution;
- ``dilated``: a 3×3 conv with ``dilation`` (the paper uses 2 on both MNIST and MNIST×4: 4 would encode the
  known size change), max pooling as above;
- ``njet``: an :class:`~njet_layers.NJetConv2d` (order 3, σ initialised to 1, k = 2) followed by the paper's
  safe subsampling driven by that layer's σ (``s -> s * 2 ** (-sigma / r)``, r = 4), or by the same max
  pooling as the standard nets when ``safe_subsample=False``.

The paper's Fig. 5a is an image we cannot read exactly; this is our reading of it: conv-only toy nets
("only convolutional layers followed by ReLU activations"), with BatchNorm after each conv as the paper adds
to all its models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from timm.models import register_model
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["ToyConfig", "ToyNet", "toy_sigmas"]

ConvKind = Literal["standard", "dilated", "njet"]


@dataclass(frozen=True)
class ToyConfig:
    """Architecture of a :class:`ToyNet`."""

    depth: int = 2
    width: int = 32
    conv: ConvKind = "njet"
    kernel_size: int = 3
    dilation: int = 2
    order: int = 3
    sigma: float = 1.0
    k: float = 2.0
    safe_subsample: bool = True
    r: float = 4.0
    in_chans: int = 1
    num_classes: int = 10
    sigma_bounds: tuple[float, float] | None = None
    grid: int = 4

    def __post_init__(self) -> None:
        if self.conv not in ("standard", "dilated", "njet"):
            raise ValueError(f"conv must be 'standard', 'dilated' or 'njet', got {self.conv!r}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size!r}")


class ToyNet(nn.Module):
    """A ``depth``-layer conv-only classifier (see the module docstring); ``forward`` takes any image size."""

    def __init__(self, config: ToyConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = config or ToyConfig()
        if overrides:
            cfg = ToyConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        blocks: list[nn.Module] = []
        in_ch = cfg.in_chans
        for i in range(cfg.depth):
            conv = self._conv(cfg, in_ch)
            blocks += [conv, nn.BatchNorm2d(cfg.width), nn.ReLU(inplace=True)]
            if i < cfg.depth - 1:
                blocks.append(self._down(cfg, conv))
            in_ch = cfg.width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(cfg.grid)
        self.fc = nn.Linear(cfg.width * cfg.grid**2, cfg.num_classes)

    @staticmethod
    def _conv(cfg: ToyConfig, in_ch: int) -> nn.Module:
        if cfg.conv == "njet":
            return NJetConv2d(
                in_ch, cfg.width, order=cfg.order, sigma=cfg.sigma, k=cfg.k, sigma_bounds=cfg.sigma_bounds
            )
        if cfg.conv == "dilated":
            return nn.Conv2d(in_ch, cfg.width, 3, padding=cfg.dilation, dilation=cfg.dilation, bias=False)
        return nn.Conv2d(in_ch, cfg.width, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False)

    @staticmethod
    def _down(cfg: ToyConfig, conv: nn.Module) -> nn.Module:
        if cfg.conv == "njet" and cfg.safe_subsample:
            return SafeSubsample(r=cfg.r, source=conv)
        return nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def toy_sigmas(model: nn.Module) -> list[float]:
    """σ of every :class:`NJetConv2d` in ``model``, in module order."""
    return [float(m.sigma.detach()) for m in model.modules() if isinstance(m, NJetConv2d)]


def _make(depth: int, conv: ConvKind, pretrained: bool, **kwargs: object) -> ToyNet:
    if pretrained:
        raise ValueError("pretrained=True: the toy nets have no published weights; train them (benchmarks/science.py)")
    fields = {k: v for k, v in kwargs.items() if k in ToyConfig.__dataclass_fields__}  # drop timm's extras
    return ToyNet(ToyConfig(depth=depth, conv=conv, **fields))  # type: ignore[arg-type]


@register_model
def njet_mnist_toy2(pretrained: bool = False, **kwargs: object) -> ToyNet:
    """2-layer N-Jet toy net (order 3, σ0 = 1, safe subsampling r = 4)."""
    return _make(2, "njet", pretrained, **kwargs)


@register_model
def njet_mnist_toy4(pretrained: bool = False, **kwargs: object) -> ToyNet:
    """4-layer N-Jet toy net (order 3, σ0 = 1, safe subsampling r = 4)."""
    return _make(4, "njet", pretrained, **kwargs)


@register_model
def mnist_toy2_dilated(pretrained: bool = False, **kwargs: object) -> ToyNet:
    """2-layer toy net of 3×3 convs with dilation 2."""
    return _make(2, "dilated", pretrained, **kwargs)


@register_model
def mnist_toy4_dilated(pretrained: bool = False, **kwargs: object) -> ToyNet:
    """4-layer toy net of 3×3 convs with dilation 2."""
    return _make(4, "dilated", pretrained, **kwargs)


def _register_standard(depth: int, size: int) -> None:
    def build(pretrained: bool = False, **kwargs: object) -> ToyNet:
        return _make(depth, "standard", pretrained, kernel_size=size, **kwargs)

    build.__name__ = build.__qualname__ = f"mnist_toy{depth}_conv{size}"
    build.__doc__ = f"{depth}-layer toy net of standard {size}×{size} convs with 2×2 max pooling."
    build.__module__ = __name__
    globals()[build.__name__] = register_model(build)


for _depth in (2, 4):
    for _size in (3, 5, 9, 11):
        _register_standard(_depth, _size)

