"""The jet's scale move (njet_convert/fitting/dilation.py): α refitted so the kernel at the new σ is the old one
dilated, where the jet is over-complete."""

import pytest
import torch
import torch.nn.functional as F

import njet_convert
from njet_convert.fitting.dilation import dilated_alpha, dilates_by_refit
from njet_layers import NJetConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth_image(size: int = 48) -> torch.Tensor:
    torch.manual_seed(0)
    blur = NJetConv2d(1, 1, order=0, sigma=2.0)
    with torch.no_grad():
        blur.alpha.fill_(1.0)
        return blur(torch.randn(1, 1, size, size))


def _response(layer: NJetConv2d, alpha: torch.Tensor, sigma: float, x: torch.Tensor) -> torch.Tensor:
    probe = NJetConv2d(layer.in_channels, layer.out_channels, order=layer.order, sigma=sigma, k=layer.k)
    with torch.no_grad():
        probe.alpha.copy_(alpha)
        return probe(x.expand(-1, layer.in_channels, -1, -1))


def _dilation_error(layer: NJetConv2d, alpha_2x: torch.Tensor) -> float:
    """How far the filter at 2σ on a 2×-zoomed image is from the filter at σ on the image (a common scale per
    output channel allowed): 0 for an exact dilation."""
    image, sigma = _smooth_image(), float(layer.sigma.detach())
    zoomed = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
    ref = _response(layer, layer.alpha.detach(), sigma, image)[..., 8:-8, 8:-8].flatten(2).squeeze(0)
    got = F.avg_pool2d(_response(layer, alpha_2x, 2 * sigma, zoomed), 2)[..., 8:-8, 8:-8].flatten(2).squeeze(0)
    scale = (ref * got).sum(1) / (got * got).sum(1)
    return float(((ref - scale[:, None] * got).norm(dim=1) / ref.norm(dim=1)).median())


def test_a_converted_jet_layer_dilates_by_the_refit_and_not_with_alpha_kept() -> None:
    from njet_convert.models.real_weights import load_mnist_cnn

    model = njet_convert.convert(load_mnist_cnn(), order=3, input_size=(1, 28, 28), progress=False)[0]
    first = dict(model.named_modules())["conv_layers.0"]  # σ₀ 0.275 on 3×3: ten filters on nine taps
    assert dilates_by_refit(first)
    sigma = float(first.sigma.detach())
    refit = dilated_alpha(first, first.alpha.detach(), sigma, 2 * sigma)
    assert _dilation_error(first, refit) < 0.3
    assert _dilation_error(first, first.alpha.detach()) > 0.8


def test_only_an_over_complete_jet_is_refitted() -> None:
    assert dilates_by_refit(NJetConv2d(2, 2, order=3, sigma=0.45))  # 10 filters, 3×3
    assert dilates_by_refit(NJetConv2d(2, 2, order=6, sigma=0.9))  # 28 filters, 5×5
    assert not dilates_by_refit(NJetConv2d(2, 2, order=3, sigma=1.0))  # 10 filters, 5×5: σ is a scale already
    assert not dilates_by_refit(NJetConv2d(2, 2, order=2, sigma=0.45))  # 6 filters, 3×3
    assert not dilates_by_refit(NJetConv2d(2, 2, order=(2, 2), sigma=0.475))  # a tensor basis dilates with α kept


def test_the_refit_keeps_alpha_dtype_and_shape_and_checks_its_layer() -> None:
    layer = NJetConv2d(4, 6, order=3, sigma=0.3, groups=2)
    refit = dilated_alpha(layer, layer.alpha.detach(), 0.3, 0.6)
    assert refit.shape == layer.alpha.shape and refit.dtype == layer.alpha.dtype
    tensor = NJetConv2d(4, 6, order=(2, 2), sigma=0.475)
    with pytest.raises(ValueError, match="jet"):
        dilated_alpha(tensor, tensor.alpha.detach(), 0.475, 0.95)
