"""Synthetic calibration inputs (njet_convert.data.synthetic): they match the network's batch-norm statistics."""

import pytest
import torch
from torch import nn

from njet_convert.data.synthetic import SynthesisConfig, mix_synthetic, synthesize


def _net_with_stats() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    net.train()
    with torch.no_grad():  # running statistics of a "training set" that is not noise: smooth, shifted images
        for _ in range(20):
            x = nn.functional.avg_pool2d(torch.randn(16, 3, 16, 16), 5, 1, 2) * 2 + torch.tensor([1.0, -0.5, 0.3]
                                                                                                ).view(1, 3, 1, 1)
            net(x)
    return net.eval()


def _mismatch(net: nn.Module, x: torch.Tensor) -> float:
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    got = []
    hooks = [m.register_forward_pre_hook(lambda m, a: got.append(
        float((a[0].mean((0, 2, 3)) - m.running_mean).pow(2).sum()
              + (a[0].var((0, 2, 3), unbiased=False).sqrt() - m.running_var.sqrt()).pow(2).sum()))) for m in norms]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return sum(got)


def test_synthesised_inputs_match_batchnorm_statistics_better_than_noise(one_thread):
    net = _net_with_stats()
    x = synthesize(net, 16, (3, 16, 16), SynthesisConfig(steps=60, batch_size=16, jitter=1))
    assert x.shape == (16, 3, 16, 16) and torch.isfinite(x).all()
    noise = nn.functional.avg_pool2d(torch.randn(16, 3, 16, 16), 5, 1, 2) * 2
    assert _mismatch(net, x) < 0.5 * _mismatch(net, noise)
    assert not net.training and all(p.requires_grad for p in net.parameters())


def test_mix_synthetic_tops_up_only_when_short(one_thread):
    net = _net_with_stats()
    real = torch.randn(4, 3, 16, 16)
    assert mix_synthetic(real, net, 4) is real
    mixed = mix_synthetic(real, net, 6, SynthesisConfig(steps=2))
    assert mixed.shape[0] == 6 and torch.equal(mixed[2:], real)  # real last: the held-out slice


def test_synthesis_needs_batch_norm():
    with pytest.raises(ValueError, match="batch-norm"):
        synthesize(nn.Sequential(nn.Conv2d(3, 3, 3)), 2, (3, 8, 8))


def test_convert_calibrates_on_synthetic_inputs(one_thread):
    from njet_convert import convert

    net = _net_with_stats()
    _, report = convert(net, order=2, calibration="synthetic", input_size=(3, 16, 16))
    assert report.calibrated
    with pytest.raises(ValueError, match="input size"):
        convert(net, order=2, calibration="synthetic")
