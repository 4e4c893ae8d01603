"""SafeSubsample: the paper's size law, rounding, σ sources, modes, and the join form MatchSize."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from njet_layers import MatchSize, NJetConv2d, SafeSubsample, safe_output_size

# (size, sigma, r, rounding) -> expected size = rounding(size * 0.5 ** (sigma / r)), at least 1.
SIZE_TABLE = [
    (32, 1.0, 4.0, "ceil", 27),  # 32 * 2**-0.25 = 26.91
    (32, 1.0, 4.0, "floor", 26),
    (32, 1.0, 4.0, "round", 27),
    (32, 4.0, 4.0, "ceil", 16),  # exactly one halving
    (7, 1.0, 1.0, "ceil", 4),  # a stride-2 'same' conv: ceil(7 / 2)
    (7, 1.0, 1.0, "floor", 3),  # a 2x2 stride-2 pool: floor(7 / 2)
    (224, 2.0, 1.0, "ceil", 56),  # factor 4
    (28, 2.0, 4.0, "round", 20),  # 28 / sqrt(2) = 19.80
    (112, 3.0, 2.0, "floor", 39),  # 112 / 2.828 = 39.6
    (5, 40.0, 4.0, "floor", 1),  # never below 1 px
    (1, 8.0, 1.0, "ceil", 1),
]


@pytest.mark.parametrize(("size", "sigma", "r", "rounding", "expected"), SIZE_TABLE)
def test_output_size_follows_the_paper_law(size: int, sigma: float, r: float, rounding: str, expected: int) -> None:
    layer = SafeSubsample(r=r, sigma=sigma, rounding=rounding, sigma_bounds=(0.1, 100.0))
    assert layer.factor == pytest.approx(2 ** (sigma / r))
    assert layer.output_size((size, size)) == (expected, expected)
    assert layer(torch.randn(1, 2, size, size)).shape[-2:] == (expected, expected)


def test_rounding_is_robust_to_float_noise_in_the_factor() -> None:
    assert safe_output_size(7, 2.0 * (1 + 1e-12), "ceil") == 4
    assert safe_output_size(8, 2.0 * (1 - 1e-12), "floor") == 4


def test_nearest_mode_reproduces_a_strided_convolution() -> None:
    conv = NJetConv2d(3, 4, sigma=1.0)
    strided = torch.nn.Conv2d(3, 4, conv.kernel_size, stride=2, padding=conv.radius, bias=False)
    with torch.no_grad():
        strided.weight.copy_(conv.kernel())
    subsample = SafeSubsample(r=1.0, source=conv)  # factor 2 at σ = 1
    for size in (15, 16):
        x = torch.randn(2, 3, size, size)
        torch.testing.assert_close(subsample(conv(x)), strided(x))


def test_linked_source_drives_the_factor_and_is_not_registered() -> None:
    conv = NJetConv2d(2, 2, sigma=1.0)
    subsample = SafeSubsample(r=2.0, source=conv)
    assert subsample.source is conv and list(subsample.children()) == [] and subsample.state_dict() == {}
    with torch.no_grad():
        conv.log_sigma.fill_(math.log(4.0))
    assert subsample.factor == pytest.approx(4.0)
    other = NJetConv2d(2, 2, sigma=2.0)
    subsample.link(other)
    assert subsample.factor == pytest.approx(2.0)


def test_own_learned_sigma_is_a_parameter_and_fixed_sigma_a_buffer() -> None:
    learned = SafeSubsample(r=4.0, sigma=1.0, learn_sigma=True)
    fixed = SafeSubsample(r=4.0, sigma=1.0)
    assert [n for n, _ in learned.named_parameters()] == ["log_sigma"]
    assert list(fixed.parameters()) == [] and "log_sigma" in fixed.state_dict()


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
@pytest.mark.parametrize("antialias", [False, True])
def test_modes_give_the_requested_size(mode: str, antialias: bool) -> None:
    layer = SafeSubsample(r=1.0, sigma=1.5, mode=mode, antialias=antialias)
    out = layer(torch.randn(2, 3, 33, 20))
    assert out.shape == (2, 3, *layer.output_size((33, 20)))


def test_bilinear_antialias_matches_torch_interpolate() -> None:
    x = torch.randn(1, 2, 40, 40)
    layer = SafeSubsample(r=1.0, sigma=1.0, mode="bilinear", antialias=True)
    expected = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(layer(x), expected)


def test_match_size_resizes_to_the_reference() -> None:
    join = MatchSize()
    x, ref = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(join(x, ref), x[..., ::2, ::2])
    assert join(ref, ref) is ref  # no-op when sizes agree
    assert MatchSize("bilinear")(ref, x).shape[-2:] == (16, 16)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"r": 0.0, "sigma": 1.0}, "r"),
        ({"sigma": 1.0, "mode": "lanczos"}, "mode"),
        ({"sigma": 1.0, "rounding": "up"}, "rounding"),
        ({}, "exactly one"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": 1.0, "sigma_bounds": (2.0, 1.0)}, "sigma_bounds"),
        ({"sigma": 20.0}, "sigma_bounds"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SafeSubsample(**kwargs)


@pytest.mark.parametrize("sigma_scale", [1.0, 1.3, 0.8])
def test_fused_subsampling_computes_only_the_kept_pixels_with_the_same_gradients(sigma_scale):
    """In training a converted strided conv evaluates only the pixels its ``nearest`` SafeSubsample keeps
    (``SafeSubsample.fuse_into``): the output and every gradient equal the full stride-1 conv then subsampling, also
    once σ has moved the factor off the integer stride."""
    import copy

    import njet_convert

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, groups=4))
    fused, _ = njet_convert.convert(model, order="exact")
    samplers = [m for m in fused.modules() if isinstance(m, SafeSubsample)]
    assert len(samplers) == 3 and all(m._producer is not None for m in samplers)
    with torch.no_grad():
        for m in fused.modules():
            if isinstance(m, NJetConv2d):
                m.log_sigma.add_(math.log(sigma_scale))
    plain = copy.deepcopy(fused)
    for m in plain.modules():
        if isinstance(m, SafeSubsample):
            object.__setattr__(m, "_producer", None)
    x = torch.randn(2, 3, 29, 31)
    outs = []
    for net in (fused, plain):
        net.train()
        y = net(x)
        grads = torch.autograd.grad(y.square().sum(), [p for p in net.parameters() if p.requires_grad])
        outs.append((y, grads))
    assert outs[0][0].shape == outs[1][0].shape
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_a_fused_subsampling_whose_producer_was_replaced_subsamples_itself() -> None:
    """Replacing a converted layer after conversion (a new NJetConv2d in its place) must not leave its fused
    SafeSubsample passing the new layer's full-resolution output on; the model still pickles after a step."""
    import io

    import njet_convert

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    fused, _ = njet_convert.convert(model, order="exact")
    x = torch.randn(2, 3, 16, 16)
    expected = fused.train()(x).shape
    torch.save(fused, io.BytesIO())  # holds a weak reference to that output now
    for name, layer in list(fused.named_modules()):
        sampler = getattr(layer, "_sampler", None)
        if isinstance(layer, NJetConv2d) and sampler is not None:
            parent, _, attr = name.rpartition(".")
            setattr(fused.get_submodule(parent) if parent else fused, attr,
                    NJetConv2d(layer.in_channels, layer.out_channels, order=2, sigma=float(layer.sigma.detach())))
            break
    else:
        raise AssertionError("no fused subsampling in the converted model")
    assert fused.train()(x).shape == expected
