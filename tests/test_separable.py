"""The separable path (njet_layers/separable.py): gradients in float64, buffer reuse across training steps, its
place in the auto choice, and the cached per-axis mixes of a tensor basis."""

import copy

import pytest
import torch

from njet_layers import NJetConv2d
from njet_layers.basis import basis_size
from njet_layers.dispatch import choose_impl
from njet_layers.separable import Workspace, combine_prefixes, separable_conv2d


@pytest.mark.parametrize(
    "cfg",
    [
        dict(order=3, sigma=0.7),
        dict(order=(2, 1), sigma=0.9, stride=(2, 1), crop=1),
        dict(order=2, sigma=1.6),  # 9 px filters on a 9 px image: the band covers every column
        dict(order=(2, 2), sigma=0.7),  # a tensor basis: the combine as 1x1 convolutions
    ],
)
def test_gradcheck(cfg: dict) -> None:
    layer = NJetConv2d(2, 3, bias=True, impl="separable", **cfg).double()
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)

    def run(inp, alpha, log_sigma, bias):
        params = {"alpha": alpha, "log_sigma": log_sigma, "bias": bias}
        return torch.func.functional_call(layer, params, (inp,))

    inputs = (x, *(p.detach().clone().requires_grad_() for p in (layer.alpha, layer.log_sigma, layer.bias)))
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 6])
def test_jet_combine_multiplies_only_its_pairs(order: int) -> None:
    """Vertical order j of the jet pairs with the horizontal orders 0..order-j: a prefix, one pair per filter."""
    prefixes = combine_prefixes(order)
    if order == 0:
        assert prefixes is None  # one filter: nothing to leave out
    else:
        assert prefixes == tuple(range(order + 1, 0, -1))
        assert sum(prefixes) == basis_size(order)


@pytest.mark.parametrize("order", [(2, 2), (2, 1), (0, 3)])
def test_tensor_combine_takes_every_pair(order: tuple[int, int]) -> None:
    assert combine_prefixes(order) is None


def test_buffers_reused_across_steps_with_the_dense_gradients() -> None:
    fast = NJetConv2d(4, 5, order=3, sigma=1.2, impl="separable").double().train()
    dense = copy.deepcopy(fast)
    dense.impl = "dense"
    pointers = []
    for _ in range(3):
        x = torch.randn(2, 4, 20, 20, dtype=torch.float64)
        for layer in (fast, dense):
            layer.zero_grad()
            layer(x).square().sum().backward()
        pointers.append(sorted(t.data_ptr() for held in fast._workspace._free.values() for t in held))
        for name in ("alpha", "log_sigma"):
            a, b = getattr(dense, name).grad, getattr(fast, name).grad
            assert torch.allclose(a, b, atol=1e-9 * max(1.0, float(a.abs().max()))), name
    assert pointers[0] and pointers[0] == pointers[1] == pointers[2]  # the same buffers every step
    fast.eval()
    assert not fast._workspace._free


def test_retained_graph_keeps_its_buffers() -> None:
    """A later step never reuses buffers a retained graph still holds: its second backward stays exact."""
    layer = NJetConv2d(3, 3, sigma=1.0, impl="separable").double().train()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    loss = layer(x).square().sum()
    first = torch.autograd.grad(loss, layer.alpha, retain_graph=True)[0]
    layer(torch.randn_like(x)).square().sum().backward()  # a step in between
    assert torch.equal(torch.autograd.grad(loss, layer.alpha)[0], first)


def test_functional_form_without_workspace() -> None:
    layer = NJetConv2d(3, 4, order=(2, 2), sigma=0.5, impl="dense").double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    out = separable_conv2d(x, layer.alpha, layer.sigma, layer.order, layer.radius, workspace=Workspace())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, layer(x), atol=1e-12)
    with pytest.raises(ValueError, match="groups=1"):
        separable_conv2d(x, torch.zeros(3, 1, 9), layer.sigma, (2, 2), 1, groups=3)


def test_auto_choice_per_device() -> None:
    """Measured on CPU: separable beats dense from 9x9 filters on, and is never picked where it cannot run
    (groups > 1) or where it has not been measured (CUDA)."""
    assert choose_impl(64, 64, 1, 3, 4, (32, 32), (32, 32), batch=32) == "separable"
    assert choose_impl(64, 64, 1, (2, 2), 1, (32, 32), (32, 32), batch=32) == "dense"  # 3x3: one plain conv
    assert choose_impl(64, 64, 2, 3, 8, (32, 32), (32, 32), batch=32) != "separable"
    assert choose_impl(64, 64, 1, 3, 8, (32, 32), (32, 32), batch=32, device="cuda") != "separable"
    grouped = NJetConv2d(4, 4, groups=2, sigma=2.0, impl="separable")
    assert grouped.resolve_impl((16, 16)) == "basis_first"


def test_mixes_cached_until_the_anchor_changes() -> None:
    layer = NJetConv2d(2, 2, order=(2, 2), sigma=0.5)
    assert layer.mixes is None
    layer.orthonormalize_basis_()
    first = layer.mixes
    assert first is not None and layer.mixes is first  # served from the cache
    other = NJetConv2d(2, 2, order=(2, 2), sigma=0.7)
    other.orthonormalize_basis_()
    layer.load_state_dict(other.state_dict())
    assert layer.mixes is not first
    assert all(torch.equal(a, b) for a, b in zip(layer.mixes, other.mixes, strict=True))
