"""The layout an N-Jet layer's convolution larger than 3×3 trains in on the CPU (njet_layers/conv_layout.py): which
calls switch to channels-last, and that an N-Jet layer doing so returns the NCHW call's values, gradients and
layout."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from njet_layers import NJetConv2d, SafeSubsample, conv_layout
from njet_layers.conv_layout import MAX_CHANNELS_LAST_TAPS, in_preferred_layout, prefers_channels_last


@pytest.mark.parametrize(
    ("shape", "weight", "groups", "channels_last", "expected"),
    [
        ((2, 8, 9, 9), (8, 1, 5, 5), 8, False, True),  # depthwise 5×5: switches
        ((2, 8, 9, 9), (8, 2, 5, 5), 4, False, True),  # grouped, not depthwise
        ((2, 8, 9, 9), (8, 1, 3, 3), 8, False, False),  # 3×3 has its own fast NCHW kernel
        ((2, 16, 9, 9), (8, 16, 5, 5), 1, False, True),  # ungrouped 5×5 (on an AVX-512 host): switches too
        ((2, 16, 9, 9), (8, 16, 3, 3), 1, False, False),  # ungrouped 3×3: the original conv's own call
        ((2, 15, 9, 9), (8, 15, 5, 5), 1, False, False),  # ungrouped, fewer than MIN_CHANNELS_LAST_INPUTS inputs
        ((2, 16, 9, 9), (8, 16, 9, 9), 1, False, True),  # ungrouped up to MAX_CHANNELS_LAST_SIZE
        ((2, 16, 9, 9), (8, 16, 11, 11), 1, False, False),  # larger: oneDNN's channels-last path collapses
        ((2, 1400, 9, 9), (4, 1400, 5, 5), 1, False, True),  # the grouped bank limit does not apply
        ((2, 8, 9, 9), (8, 1, 5, 5), 8, True, False),  # already channels-last
        ((2, 1400, 9, 9), (1400, 1, 5, 5), 1400, False, False),  # bank over MAX_CHANNELS_LAST_TAPS
    ],
)
def test_which_convolutions_run_channels_last(shape, weight, groups, channels_last, expected, monkeypatch) -> None:
    monkeypatch.setattr(conv_layout, "_has_avx512", lambda: True)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert prefers_channels_last(x, torch.randn(weight, requires_grad=True), groups) is expected


def test_ungrouped_filters_keep_nchw_without_avx512(monkeypatch) -> None:
    """Measured slower channels-last on an AVX2 host (docs/layer.md): there only grouped filters switch."""
    monkeypatch.setattr(conv_layout, "_has_avx512", lambda: False)
    x = torch.randn(2, 16, 9, 9)
    assert not prefers_channels_last(x, torch.randn(8, 16, 5, 5, requires_grad=True), 1)
    assert prefers_channels_last(x, torch.randn(16, 1, 5, 5, requires_grad=True), 16)


def test_the_host_check_reads_torchs_cpu_capability() -> None:
    assert conv_layout._has_avx512() == ("AVX512" in torch.backends.cpu.get_cpu_capability())


def test_only_a_recorded_filter_gradient_switches() -> None:
    """Forward alone, the copies cost more than the layout saves: inference and frozen filters keep NCHW."""
    x, w = torch.randn(2, 8, 9, 9), torch.randn(8, 1, 5, 5)
    assert not prefers_channels_last(x, w, 8)
    w.requires_grad_(True)
    assert prefers_channels_last(x, w, 8)
    with torch.no_grad():
        assert not prefers_channels_last(x, w, 8)


def test_the_tap_limit_is_what_the_rule_reads() -> None:
    x = torch.randn(1, 1310, 6, 6)
    assert 1310 * 25 <= MAX_CHANNELS_LAST_TAPS < 1311 * 25
    assert prefers_channels_last(x, torch.randn(1310, 1, 5, 5, requires_grad=True), 1310)
    assert not prefers_channels_last(torch.randn(1, 1311, 6, 6), torch.randn(1311, 1, 5, 5, requires_grad=True), 1311)


def test_in_preferred_layout_returns_the_callers_layout_and_values() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 6, 11, 13, requires_grad=True), torch.randn(6, 1, 5, 5, requires_grad=True)
    seen = []

    def conv(inp: torch.Tensor) -> torch.Tensor:
        seen.append(inp.is_contiguous(memory_format=torch.channels_last))
        return F.conv2d(inp, w, None, 1, 2, 1, 6)

    out = in_preferred_layout(conv, x, w, 6)
    assert seen == [True] and out.is_contiguous()
    reference = F.conv2d(x, w, None, 1, 2, 1, 6)
    assert torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(
        torch.autograd.grad(out, (x, w), g), torch.autograd.grad(reference, (x, w), g), strict=True))


def _spy(monkeypatch) -> list[bool]:
    """Record, for each conv an N-Jet layer runs through ``in_preferred_layout``, whether it switched."""
    import njet_layers.njet_conv as njet_conv

    calls: list[bool] = []

    def spy(conv, x, weight, groups):
        calls.append(prefers_channels_last(x, weight, groups))
        return in_preferred_layout(conv, x, weight, groups)

    monkeypatch.setattr(njet_conv, "in_preferred_layout", spy)
    return calls


def test_a_depthwise_njet_layer_at_5x5_matches_the_nchw_conv(monkeypatch) -> None:
    """σ = 1 makes a depthwise jet layer 5×5: its dense path runs channels-last, with the NCHW call's output and the
    same gradients in α, σ and the input."""
    torch.manual_seed(0)
    layer = NJetConv2d(12, 12, order=3, sigma=1.0, groups=12, impl="dense").train()
    assert layer.kernel_size == 5
    x = torch.randn(3, 12, 14, 14, requires_grad=True)
    switched = _spy(monkeypatch)
    out = layer(x)
    assert switched == [True]
    reference = F.conv2d(x, layer.kernel(), None, 1, 2, 1, 12)
    assert out.is_contiguous() and torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    params = (x, layer.alpha, layer.log_sigma)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(reference, params, g), strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_an_ungrouped_njet_layer_at_5x5_matches_the_nchw_conv(monkeypatch) -> None:
    """σ = 1 makes a jet layer fitted to 3×3 a 5×5 filter: its dense path trains channels-last, with the NCHW call's
    output and gradients; in eval mode it keeps NCHW."""
    monkeypatch.setattr(conv_layout, "_has_avx512", lambda: True)
    torch.manual_seed(0)
    layer = NJetConv2d(16, 8, order=3, sigma=1.0, impl="dense").train()
    assert layer.kernel_size == 5
    x = torch.randn(2, 16, 13, 11, requires_grad=True)
    switched = _spy(monkeypatch)
    out = layer(x)
    assert switched == [True]
    reference = F.conv2d(x, layer.kernel(), layer.bias, 1, 2)
    assert out.is_contiguous() and torch.allclose(out, reference, atol=1e-5)
    g = torch.randn_like(out)
    params = (x, layer.alpha, layer.log_sigma)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(reference, params, g), strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        layer.eval()(x)
    assert switched == [True, False]


def test_a_fused_depthwise_subsampling_at_5x5_keeps_its_gradients(monkeypatch) -> None:
    """A converted stride-2 depthwise conv whose σ has grown to a 5×5 filter computes its kept pixels channels-last
    (``SafeSubsample.fuse_into``): output and gradients equal the full conv followed by the subsampling."""
    import njet_convert

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1,
                                                                              groups=16))
    fused, _ = njet_convert.convert(model, order="exact")
    depthwise = [m for m in fused.modules() if isinstance(m, NJetConv2d) and m.groups == 16]
    assert len(depthwise) == 1 and getattr(depthwise[0], "_sampler", None) is not None
    with torch.no_grad():
        depthwise[0].log_sigma.fill_(math.log(0.9))
    assert depthwise[0].kernel_size == 5
    plain = copy.deepcopy(fused)
    for m in plain.modules():
        if isinstance(m, SafeSubsample):
            object.__setattr__(m, "_producer", None)
    x = torch.randn(2, 3, 21, 18)
    switched = _spy(monkeypatch)
    results = []
    for net in (fused, plain):
        y = net.train()(x)
        results.append((y, torch.autograd.grad(y.square().sum(), [p for p in net.parameters() if p.requires_grad])))
    (y_fused, g_fused), (y_plain, g_plain) = results
    assert switched.count(True) == 2  # the fused depthwise layer, once per network; the 3×3 stem keeps NCHW
    assert y_fused.shape == y_plain.shape and y_fused.is_contiguous()
    assert torch.allclose(y_fused, y_plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_fused, g_plain, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
