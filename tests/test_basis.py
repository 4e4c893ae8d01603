"""The discretisation contract (docs/design.md, "Discretisation contract"): N-Jet basis filters equal scipy's
Gaussian derivative filters."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from njet_layers import NJetConv2d, basis_orders, basis_size, filter_radius, gaussian_basis

SIGMAS = [0.3, 0.5, 0.8, 1.0, 1.3, 2.0, 2.7]  # kσ non-integer for most of them


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:41, 0:37]
    blob = np.exp(-((xx - 20) ** 2 + (yy - 15) ** 2) / 50)
    smooth = np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.1 * xx / 37.0 + 0.3 * blob
    return {"smooth": smooth, "noisy": rng.standard_normal((41, 37))}


def _scipy_reference(image: np.ndarray, sigma: float, i: int, j: int, radius: int) -> np.ndarray:
    return sigma ** (i + j) * ndimage.gaussian_filter(image, sigma, order=(j, i), radius=radius, mode="constant")


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("order", range(5))
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("kind", ["smooth", "noisy"])
def test_njetconv_with_one_hot_alpha_matches_scipy(order: int, sigma: float, kind: str) -> None:
    image = _images()[kind]
    layer = NJetConv2d(1, basis_size(order), order=order, sigma=sigma, k=2.0, dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.copy_(torch.eye(basis_size(order), dtype=torch.float64)[:, None, :])
        out = layer(torch.from_numpy(image)[None, None])[0].numpy()
    radius = math.ceil(2.0 * sigma)
    for m, (i, j) in enumerate(basis_orders(order)):
        assert _rel_err(out[m], _scipy_reference(image, sigma, i, j, radius)) <= 1e-6, (i, j)


@pytest.mark.parametrize("k", [1.0, 1.5, 3.0])
def test_basis_matches_scipy_for_other_extents(k: float) -> None:
    image = _images()["noisy"]
    sigma = 1.7
    basis = gaussian_basis(4, torch.tensor(sigma, dtype=torch.float64), k)
    radius = math.ceil(k * sigma)
    assert basis.shape == (15, 2 * radius + 1, 2 * radius + 1)
    out = F.conv2d(torch.from_numpy(image)[None, None], basis[:, None], padding=radius)[0].numpy()
    for m, (i, j) in enumerate(basis_orders(4)):
        assert _rel_err(out[m], _scipy_reference(image, sigma, i, j, radius)) <= 1e-6


def test_odd_orders_keep_the_sign_of_the_true_derivative() -> None:
    ramp = torch.arange(21, dtype=torch.float64).repeat(21, 1)[None, None]  # increases along x
    basis = gaussian_basis(1, torch.tensor(1.0, dtype=torch.float64))
    dx, dy = (F.conv2d(ramp, basis[m][None, None])[0, 0] for m in (1, 2))
    # σ·d/dx of a unit ramp is σ = 1 for the continuous Gaussian; the truncated sampled one gives 0.92.
    assert torch.allclose(dx, torch.full_like(dx, float(dx[0, 0]))) and 0.9 < float(dx[0, 0]) <= 1.0
    assert torch.allclose(dy, torch.zeros_like(dy), atol=1e-12)


def test_basis_orders_and_sizes() -> None:
    assert basis_orders(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    for order in range(6):
        orders = basis_orders(order)
        assert len(orders) == basis_size(order) == (order + 1) * (order + 2) // 2
        assert len(set(orders)) == len(orders) and all(i + j <= order for i, j in orders)


@pytest.mark.parametrize("k", [1.0, 2.0, 2.5])
def test_filter_radius_is_ceil_k_sigma(k: float) -> None:
    for sigma in np.linspace(0.2, 5.0, 97):
        assert filter_radius(float(sigma), k) == max(1, math.ceil(k * sigma - 1e-9))


def test_basis_is_differentiable_in_sigma() -> None:
    sigma = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda s: gaussian_basis(3, s, 2.0, radius=3), (sigma,))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_order_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="order"):
        basis_orders(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "kwargs"), [("sigma", {"sigma": 0.0}), ("sigma", {"sigma": -1.0}), ("k", {"k": 0.0})])
def test_bad_sigma_or_k_is_rejected(name: str, kwargs: dict) -> None:
    args = {"order": 2, "sigma": 1.0, "k": 2.0} | kwargs
    with pytest.raises(ValueError, match=name):
        gaussian_basis(**args)
