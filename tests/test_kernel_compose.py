"""compose_kernel (one autograd node, closed-form σ-derivative) against the kernel composed through autograd."""

from __future__ import annotations

import math

import pytest
import torch

from njet_layers import NJetConv2d, gaussian_derivatives_1d
from njet_layers.kernel_compose import compose_kernel, compose_kernel_autograd, gaussian_derivatives_1d_with_slope


def _reference(layer: NJetConv2d, alpha: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    return compose_kernel_autograd(alpha, log_sigma, layer.sigma_bounds, layer.order, layer.radius, layer.mixes)


def _layer(order: object, sigma: float, mixed: bool) -> NJetConv2d:
    layer = NJetConv2d(3, 4, order=order, sigma=sigma, dtype=torch.float64)  # type: ignore[arg-type]
    if mixed:
        layer.orthonormalize_basis_()
    return layer


@pytest.mark.parametrize("order", [0, 2, 3, 4, (1, 3), (2, 2), (4, 4)])
@pytest.mark.parametrize("sigma", [0.3, 0.9, 2.6])
def test_slope_matches_autograd(order: object, sigma: float) -> None:
    n = order if isinstance(order, int) else max(order)  # type: ignore[arg-type]
    log_sigma = torch.tensor(math.log(sigma), dtype=torch.float64, requires_grad=True)
    radius = math.ceil(2 * sigma)
    g = gaussian_derivatives_1d(n, log_sigma.exp(), radius)
    expected = torch.stack([torch.autograd.grad(v, log_sigma, retain_graph=True)[0] for v in g.flatten()])
    values, slope = gaussian_derivatives_1d_with_slope(n, sigma, radius)
    torch.testing.assert_close(torch.from_numpy(values), g.detach())
    torch.testing.assert_close(torch.from_numpy(slope).flatten(), expected)


@pytest.mark.parametrize("order,mixed,sigma", [
    (3, False, 0.45), (3, False, 1.3), (4, False, 0.7), ((2, 2), False, 0.45), ((2, 2), True, 0.45),
    ((2, 1), True, 1.3), ((4, 2), True, 1.3), ((4, 4), True, 0.9),
])
def test_value_and_gradients_match_the_autograd_composition(order: object, mixed: bool, sigma: float) -> None:
    layer = _layer(order, sigma, mixed)
    alpha = layer.alpha.detach().clone().requires_grad_()
    log_sigma = layer.log_sigma.detach().clone().requires_grad_()
    probe = torch.randn_like(layer.kernel())
    got = compose_kernel(alpha, log_sigma, layer.sigma_bounds, layer.order, layer.radius, layer.mixes)
    grads = torch.autograd.grad((got * probe).sum(), (alpha, log_sigma))
    want = _reference(layer, alpha, log_sigma)
    expected = torch.autograd.grad((want * probe).sum(), (alpha, log_sigma))
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("order", [3, (2, 2)])
def test_gradcheck_float64(order: object) -> None:
    layer = _layer(order, 0.8, mixed=not isinstance(order, int))

    def run(alpha: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        return compose_kernel(alpha, log_sigma, layer.sigma_bounds, layer.order, layer.radius, layer.mixes)

    inputs = (layer.alpha.detach().clone().requires_grad_(), layer.log_sigma.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("outside", [-1, 1])
@pytest.mark.parametrize("back_inside", [True, False])
def test_outside_the_bounds_only_a_step_back_inside_passes(outside: int, back_inside: bool) -> None:
    layer = _layer(3, 1.0, mixed=False)
    bound = math.log(layer.sigma_bounds[0 if outside < 0 else 1])
    at_bound = torch.tensor(bound, dtype=torch.float64, requires_grad=True)
    kernel = compose_kernel(layer.alpha.detach(), at_bound, layer.sigma_bounds, 3, 2)
    slope = float(torch.autograd.grad(kernel.sum(), at_bound)[0])  # σ is clamped to the bound: the same slope
    assert slope != 0.0
    log_sigma = torch.tensor(bound + 0.3 * outside, dtype=torch.float64, requires_grad=True)
    kernel = compose_kernel(layer.alpha.detach(), log_sigma, layer.sigma_bounds, 3, 2)
    # descent moves log σ by -grad: back inside means grad · outside > 0
    scale = (outside if back_inside else -outside) / slope
    (grad,) = torch.autograd.grad(kernel.sum() * scale, log_sigma)
    reference = _reference(layer, layer.alpha.detach(), log_sigma)
    (expected,) = torch.autograd.grad(reference.sum() * scale, log_sigma)
    torch.testing.assert_close(grad, expected)
    assert (float(grad) * outside > 0) if back_inside else float(grad) == 0.0


def test_create_graph_probe_gives_the_kernel_derivative() -> None:
    """The probe trick of benchmarks/sigma_gradients.py: d/dprobe ⟨probe, ∂K/∂log σ⟩ = ∂K/∂log σ."""
    layer = _layer(3, 0.7, mixed=False)
    kernel = layer.kernel()
    probe = torch.zeros_like(kernel, requires_grad=True)
    (g,) = torch.autograd.grad(kernel, layer.log_sigma, probe, create_graph=True)
    (dk,) = torch.autograd.grad(g, probe)
    eps = 1e-6
    with torch.no_grad():
        layer.log_sigma += eps
        plus = layer.kernel()
        layer.log_sigma -= 2 * eps
        minus = layer.kernel()
    torch.testing.assert_close(dk, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
