"""convert() over many timm and torchvision architectures (random init, small inputs): structure, sizes, gradients.

Per model: converts; same output shape; backward reaches every α and log σ; the original is untouched; no strided
conv or pool is left (safe mode); every unchanged module's feature map has the original's size at conversion; after
every σ grows by 50 % the network still runs (joins stay consistent). The full conversion runs (plain
least-squares fits, no calibration); inputs are small (64–96 px, like timm's own tests) and torch uses one thread.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import njet_convert
from njet_convert.models.sweep import SWEEP, SweepModel, build_sweep_model
from njet_layers import NJetConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _params(source: str) -> list:
    entries = [e for e in SWEEP if e.source == source]
    return [pytest.param(e, id=e.name, marks=[pytest.mark.slow] if e.slow else []) for e in entries]


def _tensor_out(y):
    return y["out"] if isinstance(y, dict) else y


def feature_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Spatial size of every module's (tensor) output, by qualified name, from forward hooks."""
    sizes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(mod, args, out):
            if torch.is_tensor(out) and out.dim() == 4:
                sizes.setdefault(name, tuple(out.shape[-2:]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sizes


def check_conversion(model: nn.Module, size: int, size_up: int) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    converted, report = njet_convert.convert(model)
    # the original is untouched
    assert {n: type(m) for n, m in model.named_modules()} == types
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # same output shape
    with torch.no_grad():
        y0, y1 = _tensor_out(model(x)), _tensor_out(converted(x))
    assert y0.shape == y1.shape and torch.isfinite(y1).all()
    layers = [m for m in converted.modules() if isinstance(m, NJetConv2d)]
    assert layers and len(layers) == len(report.layers)
    # no strided conv or pool left
    strided = [n for n, m in converted.named_modules()
               if isinstance(m, nn.Conv2d | NJetConv2d | nn.MaxPool2d | nn.AvgPool2d) and max(_pair(m.stride)) > 1]
    assert not strided, strided
    # feature maps of every unchanged module have the original's size at conversion
    origins = {p.origin for p in report.subsampling}
    s0, s1 = feature_sizes(model, x), feature_sizes(converted, x)
    mods0, mods1 = dict(model.named_modules()), dict(converted.named_modules())
    common = [n for n in s0 if n in s1 and n not in origins and type(mods0[n]) is type(mods1[n])]
    assert len(common) >= 5
    assert {n: s1[n] for n in common} == {n: s0[n] for n in common}
    # backward reaches every α and σ
    converted.zero_grad()
    _tensor_out(converted(x)).float().pow(2).mean().backward()
    assert all(m.alpha.grad is not None and torch.isfinite(m.alpha.grad).all() for m in layers)
    assert any(m.alpha.grad.abs().sum() > 0 for m in layers)  # timm zero-inits some BN gammas: not every one
    assert all(m.log_sigma.grad is not None and torch.isfinite(m.log_sigma.grad) for m in layers)
    # σ up by 50 %: joins stay consistent. In float64: random kernels fitted at σ ≈ 0.28 carry |α| up to ~3000 (an
    # ill-conditioned fit), and moving every σ by 50 % amplifies that through DenseNet's 120 layers past float32's
    # range (1e37); what this checks is that every join still matches and nothing divides by an empty map
    with torch.no_grad():
        for m in layers:
            m.log_sigma.add_(math.log(1.5))
        y2 = _tensor_out(converted.double()(torch.randn(1, 3, size_up, size_up, dtype=torch.float64)))
    assert torch.isfinite(y2).all()


def _pair(v) -> tuple:
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("entry", _params("timm"))
def test_timm_sweep(entry: SweepModel) -> None:
    check_conversion(build_sweep_model(entry), entry.size, entry.size_up)


@pytest.mark.parametrize("entry", _params("torchvision"))
def test_torchvision_sweep(entry: SweepModel) -> None:
    check_conversion(build_sweep_model(entry), entry.size, entry.size_up)
