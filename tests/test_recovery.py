"""Recovery by distillation (njet_convert.recovery): it keeps the best held-out state and can improve a conversion."""

import pytest
import torch
from torch import nn

from njet_convert import convert
from njet_convert.fitting.calibration.holdout import split_holdout
from njet_convert.recovery import RecoverConfig, recover


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    return nn.functional.avg_pool2d(x, 3, 1, 1) * 3  # smooth, like photos


def _heldout_kl(model, original, images) -> float:
    with torch.no_grad():
        p = torch.log_softmax(original(images).double(), -1)
        q = torch.log_softmax(model(images).double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_recovery_keeps_the_best_state_even_when_training_diverges(one_thread):
    original = _tiny_net()
    converted, _ = convert(original, order=2)
    train, held = split_holdout(_images(48, 1), 0.1, 16)
    before = _heldout_kl(converted, original, held)
    # a huge learning rate makes every step worse: the kept state must be the starting one
    result = recover(converted, original, train, held, RecoverConfig(seconds=None, steps=6, lr=10.0, eval_every=2))
    after = _heldout_kl(converted, original, held)
    assert result.steps == 6
    assert after <= before + 1e-9
    assert after == pytest.approx(result.end[1], rel=1e-6)
    assert min(kl for _, _, kl in result.history) == pytest.approx(result.end[1])


def test_recovery_lowers_heldout_kl_of_a_plain_conversion(one_thread):
    original = _tiny_net()
    converted, _ = convert(original, order=2)
    train, held = split_holdout(_images(64, 2), 0.1, 16)
    flags = [p.requires_grad for p in converted.parameters()]
    result = recover(converted, original, train, held,
                     RecoverConfig(seconds=None, steps=40, lr=1e-2, batch_size=16, eval_every=10))
    assert result.end[1] < 0.9 * result.start[1]
    assert result.best_step > 0
    assert [p.requires_grad for p in converted.parameters()] == flags


def test_recover_config_rejects_bad_values():
    with pytest.raises(ValueError):
        RecoverConfig(seconds=None, steps=None)
    with pytest.raises(ValueError):
        RecoverConfig(params="everything")
    with pytest.raises(ValueError):
        RecoverConfig(crop_scale=0.0)


def test_convert_with_recover_keeps_the_best_state_and_reports_it(one_thread):
    original = _tiny_net()
    images = _images(48, 3)
    _, report = convert(original, order=2, calibration=images,
                        recover=RecoverConfig(seconds=None, steps=4, lr=1e-3, eval_every=2))
    assert report.recovery["steps"] == 4
    start, end = report.recovery["start"], report.recovery["end"]
    assert end[1] <= start[1] + 1e-12
    assert report.options["recover"]["steps"] == 4
    assert set(report.fidelity) == {"plain", "calibrated", "recovered"}
    assert report.fidelity["recovered"]["kl"] <= report.fidelity["calibrated"]["kl"] + 1e-9
    with pytest.raises(ValueError, match="recover"):
        convert(original, order=2, calibration=images, recover="long")
