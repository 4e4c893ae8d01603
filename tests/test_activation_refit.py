"""The activation-aware depthwise refit (njet_convert.fitting.calibration.activation)."""

import torch
from torch import nn

from njet_convert.fitting import CalibrationOptions
from njet_convert.fitting.calibration.activation import ActivationAwareRefit, activation_weights
from njet_convert.fitting.calibration.exact import candidate_stats
from njet_convert.fitting.calibration.strategy import RefitJob
from njet_layers import NJetConv2d, gaussian_basis


def _job(floor: float) -> tuple[RefitJob, dict]:
    torch.manual_seed(0)
    orig = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    layer = NJetConv2d(4, 4, order=3, sigma=0.6, groups=4)
    norm = nn.BatchNorm2d(4).eval()
    norm.running_mean.normal_()
    inputs = [torch.randn(3, 4, 10, 10) for _ in range(2)]
    opts = CalibrationOptions(activation_floor=floor, max_positions=64)
    basis = gaussian_basis(3, torch.tensor(0.6, dtype=torch.float64), 2.0).float()
    return RefitJob("dw", layer, orig, norm, inputs, opts), {0.6: basis}


def test_weights_are_one_where_the_activation_is_on_and_the_floor_far_below():
    norm = nn.BatchNorm2d(2).eval()
    y = torch.tensor([[[-5.0, -0.5, 0.0, 3.0]], [[-5.0, -0.5, 0.0, 3.0]]])
    w = activation_weights(y, norm, margin=1.0, floor=0.1)
    scale = 1 / (1 + norm.eps) ** 0.5
    assert torch.allclose(w[0], torch.tensor([0.1, 1 - 0.5 * scale, 1.0, 1.0]))


@torch.no_grad()
def test_with_unit_weights_the_statistics_equal_the_exact_fits():
    job, bases = _job(floor=1.0)
    pad = (bases[0.6].shape[-1] - 1) // 2
    exact = candidate_stats(job.layer, job.original, job.inputs, bases, pad, job.options,
                            torch.Generator().manual_seed(0))
    aware = ActivationAwareRefit().statistics(job, bases, pad, torch.Generator().manual_seed(0))
    for name in ("zz", "zy", "yy", "z", "y"):
        assert torch.allclose(getattr(exact[0.6], name), getattr(aware[0.6], name), rtol=1e-5, atol=1e-4), name
    assert exact[0.6].count == aware[0.6].count


@torch.no_grad()
def test_applies_only_to_depthwise_layers_before_a_batch_norm_when_enabled():
    job, _ = _job(floor=0.05)
    strategy = ActivationAwareRefit()
    assert strategy.applies(job)
    assert not strategy.applies(RefitJob("dw", job.layer, job.original, None, job.inputs, job.options))
    job_off, _ = _job(floor=1.0)
    assert not strategy.applies(job_off)
    result = strategy.refit(job)
    assert result.strategy == "activation-aware" and result.error == result.error
