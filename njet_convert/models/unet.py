"""The small 3-level U-Net of the paper's Exp. 1.1B (multi-scale Fashion-MNIST segmentation), and its N-Jet twin.

Encoder: three levels of two ``conv -> ReLU`` each, ``width`` channels at the first level, doubling after each
2×2 max pooling. Decoder: bilinear upsampling to the skip's size (:class:`~njet_layers.MatchSize`, so odd sizes
join cleanly), concatenation with the skip, two ``conv -> ReLU``. 'same' padding, no batch norm (batch size 1 in
the paper), ten 3×3 convs and a 1×1 classifier. The N-Jet variant replaces every 3×3 conv by an
:class:`~njet_layers.NJetConv2d` of ``order`` (the paper: 2 or 4) with one learned σ per layer (initialised to 1);
the max pooling stays, as in the paper.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import Tensor, nn

from njet_layers import MatchSize, NJetConv2d

__all__ = ["UNet"]


class UNet(nn.Module):
    """3-level U-Net; ``njet_order=None`` gives the 3×3 baseline, an int the N-Jet version of that order."""

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 11,
        width: int = 64,
        njet_order: int | None = None,
        sigma: float = 1.0,
        k: float = 2.0,
        sigma_bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width!r}")
        self.njet_order = njet_order
        self._conv_args = (njet_order, sigma, k, sigma_bounds)
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1, self.enc2, self.enc3 = self._level(in_chans, w1), self._level(w1, w2), self._level(w2, w3)
        self.pool = nn.MaxPool2d(2)
        self.up = MatchSize("bilinear")
        self.dec2, self.dec1 = self._level(w3 + w2, w2), self._level(w2 + w1, w1)
        self.head = nn.Conv2d(w1, num_classes, 1)

    def _conv(self, in_ch: int, out_ch: int) -> nn.Module:
        order, sigma, k, bounds = self._conv_args
        if order is None:
            return nn.Conv2d(in_ch, out_ch, 3, padding=1)
        return NJetConv2d(in_ch, out_ch, order=order, sigma=sigma, k=k, bias=True, sigma_bounds=bounds)

    def _level(self, in_ch: int, out_ch: int) -> nn.Sequential:
        return nn.Sequential(
            self._conv(in_ch, out_ch), nn.ReLU(inplace=True), self._conv(out_ch, out_ch), nn.ReLU(inplace=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(e3, e2), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2, e1), e1], dim=1))
        return self.head(d1)


def _kwargs(kwargs: dict[str, object]) -> dict[str, object]:
    allowed = ("in_chans", "num_classes", "width", "sigma", "k", "sigma_bounds")
    return {k: v for k, v in kwargs.items() if k in allowed}  # drop timm's extras (cache_dir, pretrained_cfg, ...)


@register_model
def unet_fmnist(pretrained: bool = False, **kwargs: object) -> UNet:
    """Baseline 3-level U-Net of Exp. 1.1B (3×3 convs, width 64)."""
    if pretrained:
        raise ValueError("pretrained=True: unet_fmnist has no published weights")
    return UNet(**_kwargs(kwargs))  # type: ignore[arg-type]


@register_model
def njet_unet_fmnist(pretrained: bool = False, **kwargs: object) -> UNet:
    """N-Jet 3-level U-Net of Exp. 1.1B, order 2 (pass ``njet_order=4`` for the paper's other variant)."""
    if pretrained:
        raise ValueError("pretrained=True: njet_unet_fmnist has no published weights")
    order = int(kwargs.pop("njet_order", 2))  # type: ignore[call-overload]
    return UNet(njet_order=order, **_kwargs(kwargs))  # type: ignore[arg-type]
