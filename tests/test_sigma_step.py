"""The σ step bound: no σ moves more than ``sigma_max_step`` octaves in one optimiser step, steps below it are the
optimiser's own, SGD's momentum follows the step taken, and fine-tuning, its checkpoints and the CLI carry it."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn
from training_helpers import quiet_config, toy_data

from njet_convert.training import FinetuneConfig, finetune
from njet_convert.training.checkpoint import RunProgress
from njet_convert.training.cli import add_training_arguments, config_from_args
from njet_convert.training.sigma_step import SigmaStepBound
from njet_layers import NJetConv2d

pytestmark = pytest.mark.usefixtures("one_thread")

OCTAVE = math.log(2.0)


def _sgd(grads: list[float], lr: float = 1.0, momentum: float = 0.9) -> tuple[torch.optim.SGD, nn.Parameter,
                                                                             nn.Parameter]:
    """An SGD over a σ group of len(grads) entries and an other group, gradients set."""
    sigma, other = nn.Parameter(torch.zeros(len(grads))), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [sigma], "name": "sigma"}, {"params": [other], "name": "alpha"}], lr=lr,
                          momentum=momentum)
    sigma.grad, other.grad = torch.tensor(grads), torch.tensor([5.0])
    return opt, sigma, other


def _step(opt: torch.optim.Optimizer, bound: SigmaStepBound) -> int:
    bound.before()
    opt.step()
    return bound.after()


def test_a_step_beyond_the_bound_is_cut_to_it_and_smaller_steps_are_left_as_they_are() -> None:
    opt, sigma, other = _sgd([3.0, -2.0, 0.01])
    assert _step(opt, SigmaStepBound(opt, 0.5)) == 2
    assert torch.allclose(sigma.detach(), torch.tensor([-0.5 * OCTAVE, 0.5 * OCTAVE, -0.01]))
    assert float(other.detach()) == -5.0  # not σ: the optimiser's step, unbounded


def test_sgd_momentum_becomes_the_step_taken_where_the_bound_cut() -> None:
    opt, sigma, _ = _sgd([3.0, 0.01], lr=0.1)
    bound = SigmaStepBound(opt, 0.1)
    _step(opt, bound)
    buffer = opt.state[sigma]["momentum_buffer"].clone()
    assert torch.allclose(buffer, torch.tensor([0.1 * OCTAVE / 0.1, 0.01]))  # cut: the step taken; else SGD's
    start = sigma.detach().clone()
    sigma.grad = torch.zeros(2)
    assert _step(opt, bound) == 0  # the remembered momentum alone now stays within the bound
    assert torch.allclose(sigma.detach() - start, -0.1 * 0.9 * buffer)


def test_a_skipped_step_changes_nothing_and_bad_bounds_are_refused() -> None:
    opt, sigma, _ = _sgd([3.0])
    bound = SigmaStepBound(opt, 0.5)
    bound.before()
    assert bound.after() == 0 and float(sigma.detach()) == 0.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="octaves"):
            SigmaStepBound(opt, bad)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, True, "0.02"])
def test_config_refuses_a_bad_sigma_max_step(bad) -> None:
    with pytest.raises(ValueError, match="sigma_max_step"):
        FinetuneConfig(sigma_max_step=bad)


def test_config_and_cli_default_and_off() -> None:
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    assert FinetuneConfig().sigma_max_step == 0.02
    assert config_from_args(parser.parse_args([])).sigma_max_step == 0.02
    assert config_from_args(parser.parse_args(["--sigma-max-step", "0"])).sigma_max_step == 0.0
    assert FinetuneConfig(sigma_max_step=None).sigma_max_step is None


def _run(sigma_max_step: float | None) -> tuple[float, list[dict]]:
    """Octaves σ travelled in 4 steps at a σ lr far too high, and the run's epoch rows."""
    torch.manual_seed(0)
    model = nn.Sequential(NJetConv2d(1, 4, order=2, sigma=1.0), nn.Flatten(), nn.LazyLinear(2))
    x, y = toy_data(16)
    model(x)
    layer = model[0]
    start = float(layer.sigma.detach())
    result = finetune(model, (x, y), epochs=2, device="cpu",
                      config=quiet_config(max_steps_per_epoch=2, sigma_lr=1000.0, sigma_max_step=sigma_max_step))
    return abs(math.log2(float(layer.sigma.detach()) / start)), result.history


def test_finetune_holds_every_sigma_step_to_the_bound_and_counts_the_cuts() -> None:
    travelled, history = _run(0.05)
    assert travelled <= 4 * 0.05 + 1e-6
    assert 1 <= history[-1]["sigma_steps_bounded"] <= 4
    assert history[0]["sigma_steps_bounded"] <= history[-1]["sigma_steps_bounded"]
    unbounded, rows = _run(None)
    assert unbounded > 4 * 0.05 and "sigma_steps_bounded" not in rows[-1]


def test_checkpoint_keeps_the_count_and_older_checkpoints_read_zero() -> None:
    progress = RunProgress(sigma_steps_bounded=7)
    payload = progress.payload()
    assert RunProgress.from_checkpoint(payload, 0, 1).sigma_steps_bounded == 7
    del payload["sigma_steps_bounded"]
    assert RunProgress.from_checkpoint(payload, 0, 1).sigma_steps_bounded == 0
