"""NJetConv2d: gradients, kernel sizes, σ bounds, groups, conversion to nn.Conv2d, state, initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from njet_layers import NJetConv2d, basis_size


def _layer(**kwargs) -> NJetConv2d:
    args = {"in_channels": 4, "out_channels": 6, "order": 3, "sigma": 1.0} | kwargs
    return NJetConv2d(**args)


def test_shapes_and_same_padding() -> None:
    layer = _layer(groups=2, bias=True)
    assert layer.alpha.shape == (6, 2, basis_size(3))
    assert layer.kernel().shape == (6, 2, 5, 5)
    assert layer(torch.randn(3, 4, 17, 13)).shape == (3, 6, 17, 13)


@pytest.mark.parametrize("sigma", [0.6, 1.3])
def test_gradcheck_alpha_and_sigma_float64(sigma: float) -> None:
    layer = _layer(in_channels=2, out_channels=3, sigma=sigma, bias=True, dtype=torch.float64)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)

    def run(alpha: torch.Tensor, log_sigma: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        params = {"alpha": alpha, "log_sigma": log_sigma, "bias": bias}
        return torch.func.functional_call(layer, params, (x,))

    inputs = tuple(p.detach().clone().requires_grad_() for p in (layer.alpha, layer.log_sigma, layer.bias))
    assert torch.autograd.gradcheck(run, inputs)


def test_kernel_size_changes_exactly_when_ceil_k_sigma_changes() -> None:
    layer = _layer(k=2.0)
    for sigma in torch.linspace(0.3, 4.0, 75, dtype=torch.float64):
        with torch.no_grad():
            layer.log_sigma.fill_(math.log(float(sigma)))
        expected = 2 * math.ceil(2.0 * float(layer.sigma.detach()) - 1e-9) + 1
        assert layer.kernel_size == expected == layer.kernel().shape[-1]
    for below, above in [(0.499, 0.501), (0.999, 1.001), (1.499, 1.501)]:
        sizes = []
        for s in (below, above):
            with torch.no_grad():
                layer.log_sigma.fill_(math.log(s))
            sizes.append(layer.kernel_size)
        assert sizes[1] == sizes[0] + 2


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_sigma_bounds_hold_under_large_gradient_steps(direction: float) -> None:
    layer = _layer(sigma_bounds=(0.5, 3.0))
    opt = torch.optim.SGD([layer.log_sigma], lr=1e4)  # steps of many units of log σ
    x = torch.randn(2, 4, 12, 12)
    for _ in range(5):
        opt.zero_grad()
        (direction * (layer(x).pow(2).mean() + layer.sigma)).backward()
        opt.step()
        assert 0.5 <= float(layer.sigma.detach()) <= 3.0
        assert layer.kernel_size <= 2 * math.ceil(2 * 3.0) + 1
        assert layer(x).isfinite().all()


def test_sigma_can_leave_a_bound_it_was_pushed_onto() -> None:
    layer = _layer(sigma_bounds=(0.5, 3.0))
    with torch.no_grad():
        layer.log_sigma.fill_(math.log(50.0))  # far beyond the upper bound
    assert float(layer.sigma.detach()) == pytest.approx(3.0)
    (layer.sigma * 1.0).backward()  # descending this loss lowers σ: the gradient must pass
    assert layer.log_sigma.grad is not None and float(layer.log_sigma.grad) > 0
    layer.log_sigma.grad = None
    (-layer.sigma).backward()  # this one would push σ further out: blocked
    assert float(layer.log_sigma.grad) == 0.0


def test_depthwise_equals_per_channel_application() -> None:
    channels = 5
    layer = _layer(in_channels=channels, out_channels=channels, groups=channels, sigma=1.2, bias=True)
    x = torch.randn(2, channels, 15, 15)
    out = layer(x)
    for c in range(channels):
        single = NJetConv2d(1, 1, order=3, sigma=1.2, bias=True)
        with torch.no_grad():
            single.alpha.copy_(layer.alpha[c : c + 1])
            single.bias.copy_(layer.bias[c : c + 1])
        torch.testing.assert_close(single(x[:, c : c + 1]), out[:, c : c + 1])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"groups": 2, "bias": True}, {"stride": 2}, {"crop": 1}, {"crop": (0, 1), "sigma": 0.7}, {"order": 0}],
)
def test_to_conv2d_equals_the_layer(kwargs: dict) -> None:
    layer = _layer(**kwargs).eval()
    conv = layer.to_conv2d()
    assert type(conv) is nn.Conv2d and not conv.training
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(conv(x), layer(x), rtol=1e-5, atol=1e-6)


def test_crop_reproduces_a_valid_convolution_size() -> None:
    layer = _layer(crop=1)
    x = torch.randn(1, 4, 12, 12)
    assert layer(x).shape[-2:] == (10, 10)  # like a 3x3 conv without padding, whatever σ is
    with torch.no_grad():
        layer.log_sigma.fill_(math.log(2.5))
    assert layer(x).shape[-2:] == (10, 10)


def test_state_dict_round_trip() -> None:
    src = _layer(bias=True, sigma=1.7)
    dst = _layer(bias=True, sigma=0.5)
    dst.load_state_dict(src.state_dict())
    assert set(src.state_dict()) == {"alpha", "log_sigma", "bias"}
    x = torch.randn(1, 4, 11, 11)
    torch.testing.assert_close(dst(x), src(x))
    assert dst.kernel_size == src.kernel_size


def test_float64_and_dtype_follow_parameters() -> None:
    layer = _layer(dtype=torch.float64)
    assert layer(torch.randn(1, 4, 8, 8, dtype=torch.float64)).dtype == torch.float64
    assert layer.float()(torch.randn(1, 4, 8, 8)).dtype == torch.float32


def test_initialisation_keeps_activation_variance_through_relu() -> None:
    # He initialisation: for white unit-variance input, E[relu(y)^2] ≈ E[x^2] = 1.
    torch.manual_seed(0)
    for sigma, channels in [(0.5, 64), (1.0, 64), (2.0, 32)]:
        layer = NJetConv2d(channels, channels, order=3, sigma=sigma)
        x = torch.randn(8, channels, 32, 32)
        with torch.no_grad():
            second_moment = F.relu(layer(x))[..., 8:-8, 8:-8].pow(2).mean().item()
        assert 0.8 < second_moment < 1.25, (sigma, second_moment)


def test_dilation_init_sets_sigma_from_the_dilation_footprint() -> None:
    layer = NJetConv2d(2, 2, dilation_init=6, k=2.0)
    assert float(layer.sigma.detach()) == pytest.approx(3.0)
    assert layer.kernel_size == 13  # a 3x3 conv with dilation 6 spans 13 px


def test_max_kernel_size_caps_the_filter() -> None:
    layer = _layer(sigma=4.0, max_kernel_size=9)
    assert layer.kernel_size == 9 and layer(torch.randn(1, 4, 20, 20)).shape[-1] == 20


def test_extra_repr_is_informative() -> None:
    text = repr(_layer(groups=2, sigma=0.8))
    for piece in ("4, 6", "order=3", "sigma=0.8", "kernel_size=5", "groups=2"):
        assert piece in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"order": -1}, "order"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -2.0}, "sigma"),
        ({"k": 0.0}, "k"),
        ({"k": -1.0}, "k"),
        ({"in_channels": 5, "groups": 2}, "groups"),
        ({"out_channels": 7, "groups": 2}, "groups"),
        ({"sigma_bounds": (2.0, 1.0)}, "sigma_bounds"),
        ({"sigma_bounds": (1.0, 1.0)}, "sigma_bounds"),
        ({"sigma": 9.0, "sigma_bounds": (0.5, 3.0)}, "sigma"),
        ({"max_kernel_size": 4}, "max_kernel_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _layer(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI machines have none)")
def test_cuda_matches_cpu() -> None:
    layer = _layer(groups=2, bias=True)
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x), rtol=1e-4, atol=1e-5)
