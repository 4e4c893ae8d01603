"""The basis-first path equals the dense path (outputs and gradients), auto dispatch, and the eval kernel cache."""

import copy

import pytest
import torch

from njet_layers import NJetConv2d
from njet_layers.dispatch import choose_impl


def _pair(impl: str = "basis_first", **kwargs) -> tuple[NJetConv2d, NJetConv2d]:
    dense = NJetConv2d(**kwargs, impl="dense").double()
    fast = copy.deepcopy(dense)
    fast.impl = impl
    if dense.bias is not None:
        with torch.no_grad():
            dense.bias.normal_()
            fast.bias.copy_(dense.bias)
    return dense, fast


def _grads(layer: NJetConv2d, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = layer(x)
    params = [x, layer.alpha, layer.log_sigma] + ([layer.bias] if layer.bias is not None else [])
    return (out, *torch.autograd.grad(out, params, upstream))


@pytest.mark.parametrize("impl", ["basis_first", "fft", "separable"])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=4, out_channels=6, groups=1, sigma=0.49),  # k * sigma = 0.98 -> 3x3
        dict(in_channels=4, out_channels=6, groups=1, sigma=0.51),  # k * sigma = 1.02 -> 5x5 (size boundary)
        dict(in_channels=4, out_channels=6, groups=1, sigma=0.99),  # 5x5
        dict(in_channels=4, out_channels=6, groups=1, sigma=1.01),  # 7x7 (next boundary)
        dict(in_channels=4, out_channels=6, groups=2, sigma=1.0, bias=True),
        dict(in_channels=6, out_channels=6, groups=6, sigma=2.0),  # depthwise
        dict(in_channels=3, out_channels=5, sigma=0.5, stride=2, crop=1, bias=True),
        dict(in_channels=3, out_channels=4, sigma=0.5, crop=3),  # crop beyond the radius: trimmed output
        dict(in_channels=2, out_channels=3, sigma=4.0, stride=(2, 1), order=2),  # tiled Toeplitz blocks
        dict(in_channels=4, out_channels=6, sigma=0.8, order=4),  # the jet's combine over five vertical orders
    ],
)
def test_fast_paths_match_dense(cfg: dict, impl: str) -> None:
    dense, fast = _pair(impl, **cfg)
    size = 75 if cfg["sigma"] >= 4 else 13
    x = torch.randn(2, cfg["in_channels"], size, size + 2, dtype=torch.float64, requires_grad=True)
    ref_out = dense(x)
    upstream = torch.randn_like(ref_out)
    ref, got = _grads(dense, x, upstream), _grads(fast, x, upstream)
    for name, a, b in zip(["out", "x", "alpha", "sigma", "bias"], ref, got, strict=False):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, float(a.detach().abs().max())), rtol=0), name


def test_size_boundary_changes_radius() -> None:
    """The σ pairs above straddle the size boundaries of s = 2 * ceil(k * sigma) + 1 at k = 2 (σ = 0.5 and 1)."""
    sizes = [NJetConv2d(2, 2, sigma=s).kernel_size for s in (0.49, 0.51, 0.99, 1.01)]
    assert sizes == [3, 5, 5, 7]


@pytest.mark.parametrize("impl", ["basis_first", "fft", "separable"])
def test_float32_agreement(impl: str) -> None:
    dense, fast = _pair(impl, in_channels=8, out_channels=8, sigma=2.0)
    dense, fast = dense.float(), fast.float()
    x = torch.randn(2, 8, 20, 20)
    assert torch.allclose(dense(x), fast(x), atol=1e-4)


def test_fft_size_and_auto_choice() -> None:
    """FFT sizes have only the factors 2, 3, 5; auto picks FFT where the cost model says so and never for huge
    filter spectra (256→256 channels at 112 px would need gigabytes)."""
    from njet_layers.dispatch import FFT_MAX_BYTES, fft_cost
    from njet_layers.fft_conv import fft_size

    assert [fft_size(n) for n in (1, 7, 11, 13, 17, 49, 97)] == [1, 8, 12, 15, 18, 50, 100]
    with pytest.raises(ValueError, match="n must be positive"):
        fft_size(0)
    # groups=2 (no separable path): 9x9 at 32 px
    assert choose_impl(64, 64, 2, 3, 4, (32, 32), (32, 32)) == "fft"
    assert choose_impl(64, 64, 2, 3, 4, (32, 32), (32, 32), batch=32) == "fft"
    assert choose_impl(64, 64, 2, 3, 4, (32, 32), (32, 32), batch=8) == "dense"  # filter transforms not amortised
    assert NJetConv2d(64, 64, sigma=2.0, groups=2).resolve_impl((32, 32), batch=8) == "dense"
    assert choose_impl(64, 64, 1, 3, 4, (32, 32), (32, 32)) == "separable"  # groups=1: cheaper still
    assert fft_cost(256, 256, 8, (112, 112), (112, 112))[1] > FFT_MAX_BYTES
    assert choose_impl(256, 256, 1, 3, 8, (112, 112), (112, 112)) != "fft"


def test_auto_avoids_dense_for_large_sigma() -> None:
    assert choose_impl(64, 64, 1, 3, 8, (32, 32), (32, 32)) == "separable"
    assert choose_impl(64, 64, 1, 3, 1, (32, 32), (32, 32)) == "dense"
    layer = NJetConv2d(16, 16, sigma=4.0)
    assert layer.resolve_impl((32, 32)) in ("basis_first", "fft", "separable")
    assert NJetConv2d(16, 16, sigma=0.5).resolve_impl((32, 32)) == "dense"
    with pytest.raises(ValueError, match="impl"):
        NJetConv2d(2, 2, impl="fast")  # type: ignore[arg-type]


def test_checkpointed_basis_first_matches() -> None:
    dense, fast = _pair(in_channels=3, out_channels=4, sigma=1.5)
    fast.checkpoint_bytes = 0  # force recompute-in-backward
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    for a, b in zip(_grads(dense, x, upstream), _grads(fast, x, upstream), strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_eval_cache_reused_and_invalidated() -> None:
    layer = NJetConv2d(3, 4, sigma=1.0, impl="dense").eval()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        first = layer(x)
        cached = layer._kernel_cache._value
        assert cached is not None
        second = layer(x)
        assert layer._kernel_cache._value is cached  # reused, not rebuilt
        assert torch.equal(first, second)
    # an optimizer step changes alpha in place: the cache must not serve the stale kernel
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).square().sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        after_step = layer(x)
        assert not torch.allclose(after_step, first)
        assert torch.allclose(after_step, layer._convolve(x, layer.kernel()))
    # load_state_dict copies other values in place
    other = NJetConv2d(3, 4, sigma=2.0, impl="dense")
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert layer.kernel_size == other.kernel_size
        assert torch.allclose(layer(x), other(x), atol=1e-6)
    # .to(dtype) swaps the parameters' storage
    layer.double()
    with torch.no_grad():
        assert layer(x.double()).dtype == torch.float64
