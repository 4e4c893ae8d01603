"""The tensor-product index set (docs/design.md, "Basis index sets"): exact on its own kernel size, scipy's
discretisation, a well-conditioned per-axis mix that leaves the kernel unchanged, every path and state round trip."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from njet_layers import NJetConv2d, basis_orders, basis_size, describe_basis, gaussian_basis

EXACT = [(3, 0.5), (5, 1.0), (7, 1.5), (9, 2.0)]  # kernel size and the largest σ whose support it is at k = 2


def _exact_layer(size: int, sigma: float, dtype=torch.float64, **kwargs) -> tuple[NJetConv2d, torch.Tensor]:
    """A tensor-basis layer fitted (by solving the square system) to random ``size×size`` kernels."""
    torch.manual_seed(size)
    weight = torch.randn(5, 3, size, size, dtype=torch.float64)
    layer = NJetConv2d(3, 5, order=(size - 1, size - 1), sigma=sigma, dtype=torch.float64, **kwargs)
    assert layer.kernel_size == size
    basis = layer.basis().reshape(size * size, -1)
    alpha = torch.linalg.solve(basis.T, weight.reshape(-1, size * size).T).T
    with torch.no_grad():
        layer.alpha.copy_(alpha.reshape(5, 3, -1))
    return layer.to(dtype), weight


def test_index_set_sizes_and_names() -> None:
    assert basis_size((2, 2)) == 9 and basis_size((4, 2)) == 15 and basis_size(3) == 10
    assert basis_orders((1, 2)) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert describe_basis((2, 2)) == "tensor 3x3" and describe_basis(3) == "jet 3"
    with pytest.raises(ValueError, match="pair"):
        basis_size((1, 2, 3))
    with pytest.raises(ValueError, match="at most"):
        basis_size((13, 2))


@pytest.mark.parametrize("order", [(2, 2), (4, 1), (0, 3)])
@pytest.mark.parametrize("sigma", [0.5, 1.3])
def test_one_hot_alpha_matches_scipy(order: tuple[int, int], sigma: float) -> None:
    image = np.random.default_rng(1).standard_normal((23, 19))
    layer = NJetConv2d(1, basis_size(order), order=order, sigma=sigma, dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.copy_(torch.eye(basis_size(order), dtype=torch.float64)[:, None, :])
        out = layer(torch.from_numpy(image)[None, None])[0].numpy()
    radius = math.ceil(2 * sigma)
    for m, (i, j) in enumerate(basis_orders(order)):
        ref = sigma ** (i + j) * ndimage.gaussian_filter(image, sigma, order=(j, i), radius=radius, mode="constant")
        assert np.abs(out[m] - ref).max() <= 1e-6 * np.abs(ref).max(), (i, j)


def test_unmixed_layer_basis_is_gaussian_basis() -> None:
    layer = NJetConv2d(1, 1, order=(2, 3), sigma=0.9, dtype=torch.float64)
    assert torch.equal(layer.basis(), gaussian_basis((2, 3), layer.sigma, 2.0, radius=layer.radius))


@pytest.mark.parametrize(("size", "sigma"), EXACT)
def test_tensor_basis_holds_every_kernel_of_its_size(size: int, sigma: float) -> None:
    layer, weight = _exact_layer(size, sigma)
    assert (layer.kernel() - weight).abs().max() <= 1e-9 * weight.abs().max()


@pytest.mark.parametrize(("size", "sigma"), EXACT)
def test_orthonormal_mix_keeps_the_kernel_and_float32_precision(size: int, sigma: float) -> None:
    layer, weight = _exact_layer(size, sigma)
    layer.orthonormalize_basis_()
    assert (layer.kernel() - weight).abs().max() <= 1e-9 * weight.abs().max()
    basis = layer.basis().reshape(size * size, -1)
    assert torch.allclose(basis @ basis.T, torch.eye(size * size, dtype=torch.float64), atol=1e-9)
    single = layer.float()
    assert int(single.basis_anchor[1]) == (size - 1) // 2  # integer anchor: not touched by the dtype cast
    error = (single.kernel().double() - weight).abs().max() / weight.abs().max()
    assert error <= 2e-6, f"float32 composition error {error:.2e}"


@pytest.mark.parametrize("impl", ["dense", "basis_first", "fft", "separable"])
def test_every_path_gives_the_original_convolution(impl: str) -> None:
    layer, weight = _exact_layer(5, 1.0, bias=True)
    layer.orthonormalize_basis_()
    layer.impl = impl
    x = torch.randn(2, 3, 14, 11, dtype=torch.float64)
    ref = F.conv2d(x, weight, layer.bias, padding=2)
    assert torch.allclose(layer(x), ref, atol=1e-10)


def test_gradcheck_through_the_mixed_basis() -> None:
    layer, _ = _exact_layer(3, 0.45, bias=True)
    layer.orthonormalize_basis_()
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    for impl in ("dense", "basis_first", "separable"):
        layer.impl = impl

        def run(alpha, log_sigma, bias):
            return torch.func.functional_call(layer, {"alpha": alpha, "log_sigma": log_sigma, "bias": bias}, (x,))

        inputs = tuple(p.detach().clone().requires_grad_() for p in (layer.alpha, layer.log_sigma, layer.bias))
        assert torch.autograd.gradcheck(run, inputs)


def test_state_dict_round_trip_keeps_the_mix() -> None:
    layer, weight = _exact_layer(7, 1.5)
    layer.orthonormalize_basis_()
    fresh = NJetConv2d(3, 5, order=(6, 6), sigma=0.3, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict())
    assert torch.allclose(fresh.kernel(), weight, atol=1e-9)
    assert "tensor 7x7" == fresh.basis_name


def test_jet_refuses_the_mix() -> None:
    with pytest.raises(ValueError, match="tensor-product"):
        NJetConv2d(2, 2, order=3).orthonormalize_basis_()
