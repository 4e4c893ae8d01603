"""Measured path choice (``njet_layers.autotune``): off by default, times the candidates once per shape, takes the
fastest, leaves no gradients behind and computes what the cost-model choice computes."""

from __future__ import annotations

import pytest
import torch

import njet_layers.autotune as tuning
from njet_layers import NJetConv2d, autotuning, set_autotune
from njet_layers.autotune import autotune_choices, clear_autotune, is_autotuning

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(autouse=True)
def _fresh():
    clear_autotune()
    set_autotune(False)
    yield
    clear_autotune()
    set_autotune(False)


def _layer(sigma: float = 1.0) -> NJetConv2d:
    torch.manual_seed(0)
    return NJetConv2d(8, 8, order=3, sigma=sigma)


def test_off_by_default_and_the_cost_model_decides() -> None:
    assert not is_autotuning()
    _layer()(torch.randn(2, 8, 16, 16))
    assert autotune_choices() == {}


def test_the_fastest_candidate_is_taken_and_timed_once(monkeypatch) -> None:
    calls: list[str] = []
    fake = {"dense": 3.0, "separable": 1.0, "basis_first": 2.0, "fft": 4.0}

    def seconds(path, x, params):
        name = next(n for n, p in current.items() if p is path)
        calls.append(name)
        return fake[name]

    layer, x = _layer(), torch.randn(2, 8, 16, 16)
    current: dict = {}
    real_choice = tuning.measured_choice

    def spy(key, paths, x, params):
        current.clear()
        current.update(paths)
        return real_choice(key, paths, x, params)

    monkeypatch.setattr(tuning, "_seconds", seconds)
    monkeypatch.setattr("njet_layers.njet_conv.measured_choice", spy)
    with autotuning():
        layer(x)
        timed = list(calls)
        layer(x)
    assert len(timed) >= 2 and calls == timed  # every candidate once, nothing on the second call
    (choice, seconds_by_path), = autotune_choices().values()
    assert choice == min(seconds_by_path, key=seconds_by_path.__getitem__) and choice in fake
    assert not is_autotuning()  # the context restores the setting


@pytest.mark.parametrize("sigma", [0.8, 3.0])
def test_a_measured_choice_computes_the_same_and_touches_no_gradient(sigma: float) -> None:
    layer, x = _layer(sigma), torch.randn(2, 8, 20, 20)
    expected = layer(x)
    with autotuning():
        out = layer(x)
    assert layer.alpha.grad is None and layer.log_sigma.grad is None  # the timing used autograd.grad
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert len(autotune_choices()) == 1


def test_finetune_autotune_times_the_layers_during_training_only(tmp_path) -> None:
    from torch import nn

    from njet_convert.training import FinetuneConfig, finetune

    torch.manual_seed(0)
    model = nn.Sequential(NJetConv2d(3, 8, order=3, sigma=1.5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    data = (torch.randn(16, 3, 12, 12), torch.randint(0, 2, (16,)))
    cfg = FinetuneConfig(batch_size=8, autotune=True, progress=False, plots=False, tensorboard=False)
    finetune(model, data, epochs=1, config=cfg, out_dir=tmp_path, device="cpu")
    assert autotune_choices() and not is_autotuning()
