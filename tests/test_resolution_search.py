"""The resolution search: stages in network order, the move of lowest loss per stage (a 2×-zoomed input makes the
first stage twice as coarse), the network left unchanged when no move pays, and its place in fine-tuning."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njet_convert
from njet_convert.training import FinetuneConfig, finetune
from njet_convert.training.resolution_search import (
    own_batch_statistics,
    rescale_stage,
    resolution_stages,
    search_resolution,
)
from njet_layers import NJetConv2d, SafeSubsample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from njet_convert.data.opencv_digits import digits_split
    from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD

    x_tr, y_tr, _, _ = digits_split(4000, 1000, seed=0)
    return (x_tr[:256] - MNIST_MEAN) / MNIST_STD, y_tr[:256]


@pytest.fixture()
def exact_cnn():
    from njet_convert.models.real_weights import load_mnist_cnn

    return njet_convert.convert(load_mnist_cnn(), order="exact", input_size=(1, 28, 28), progress=False)[0]


def _zoomed(x: torch.Tensor, scale: float) -> torch.Tensor:
    size = round(x.shape[-1] * scale)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=scale < 1)


def _loss(x: torch.Tensor, y: torch.Tensor):
    return lambda model: float(F.cross_entropy(model(x), y).detach())


def test_stages_follow_the_network_order(exact_cnn, digits) -> None:
    stages = resolution_stages(exact_cnn, digits[0][:2])
    assert [s.point for s in stages] == [f"conv_layers.{i}_subsample" for i in (2, 5, 8)]
    assert [s.layers for s in stages] == [["conv_layers.0"], ["conv_layers.3"], ["conv_layers.6"]]


def test_a_zoomed_input_makes_the_first_stage_coarser_and_the_rest_stays(exact_cnn, digits) -> None:
    x, y = _zoomed(digits[0], 2.0), digits[1]
    stages = resolution_stages(exact_cnn, x[:2])
    before = _loss(x, y)(exact_cnn.eval())
    choices = search_resolution(exact_cnn, _loss(x, y), stages)
    assert [(c.sigma_octave, c.factor_octave) for c in choices] == [(1.0, 1.0), (0.0, 0.0), (0.0, 0.0)]
    first = choices[0]
    assert first.factor_before == 2.0 and first.factor_after == pytest.approx(4.0)
    assert first.sigma_after == pytest.approx(2 * first.sigma_before, rel=1e-5)
    assert _loss(x, y)(exact_cnn) < 0.5 * before  # the layers after the first stage see the sizes they know
    points = [m for m in exact_cnn.modules() if isinstance(m, SafeSubsample)]
    assert all(p.law == "paper" for p in points)  # back on its own law, at the factor found
    assert points[0].factor == pytest.approx(4.0)
    assert first.describe().startswith("conv_layers.2_subsample: σ 0.475 → 0.95, factor 2 → 4")


def test_at_the_trained_scale_nothing_moves(exact_cnn, digits) -> None:
    x, y = digits
    reference = exact_cnn.eval()(x)
    choices = search_resolution(exact_cnn, _loss(x, y), resolution_stages(exact_cnn, x[:2]))
    assert all((c.sigma_octave, c.factor_octave) == (0.0, 0.0) for c in choices)
    torch.testing.assert_close(exact_cnn(x), reference)


def test_a_move_whose_maps_no_longer_fit_counts_as_infinite(exact_cnn, digits) -> None:
    x, y = _zoomed(digits[0], 0.5), digits[1]  # 14 px: three more octaves of subsampling leave no 2×2 pool window
    choices = search_resolution(exact_cnn, _loss(x, y), resolution_stages(exact_cnn, x[:2]))
    assert math.isinf(choices[0].losses["1/1"])
    assert choices[0].factor_after <= choices[0].factor_before


def test_octaves_must_include_staying() -> None:
    with pytest.raises(ValueError, match="include 0"):
        search_resolution(nn.Identity(), lambda m: 0.0, [], octaves=(-1.0, 1.0))
    with pytest.raises(ValueError, match="search_octaves"):
        FinetuneConfig(search_octaves=(1.0,))
    with pytest.raises(ValueError, match="search_batches"):
        FinetuneConfig(search_batches=0)
    with pytest.raises(ValueError, match="search_batchnorm"):
        FinetuneConfig(search_batchnorm="stored")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = NJetConv2d(1, 4, order=2, sigma=1.0)
        self.sub = SafeSubsample(r=4.0, source=self.conv)
        self.sub.start_at(2.0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.sub(self.conv(x))).mean((2, 3)))


def test_finetune_searches_once_when_sigma_is_released_and_resume_keeps_it(tmp_path, monkeypatch) -> None:
    import importlib

    module = importlib.import_module("njet_convert.training.finetune")

    calls: list[int] = []
    real = module.search_resolution

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "search_resolution", counting)
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    cfg = FinetuneConfig(batch_size=16, sigma_delay_epochs=1.5, resolution_search=True, search_batches=2,
                         progress=False, plots=False, tensorboard=False)
    model = _Net()
    first = finetune(model, (x, y), epochs=1, config=cfg, out_dir=tmp_path, device="cpu")
    assert first.resolution_search is None and calls == []  # σ still held after one epoch of four steps
    done = finetune(model, (x, y), epochs=2, config=cfg, out_dir=tmp_path, resume=tmp_path, device="cpu")
    assert calls == [1] and done.resolution_search is not None
    row = done.resolution_search[0]
    assert row["point"] == "sub" and row["layers"] == ["conv"] and "0/0" in row["losses"]
    assert "0/0" not in row["z_scores"] and set(row["z_scores"]) <= set(row["losses"])  # per-example losses tested
    again = finetune(model, (x, y), epochs=3, config=cfg, out_dir=tmp_path, resume=tmp_path, device="cpu")
    assert calls == [1] and again.resolution_search == done.resolution_search  # kept in the checkpoint


def test_command_line_options_reach_the_config() -> None:
    import argparse

    from njet_convert.training.cli import add_training_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--resolution-search", "--sigma-delay-epochs", "0.5"]))
    assert cfg.resolution_search and cfg.sigma_delay_epochs == 0.5 and cfg.search_batchnorm == "batch"
    assert config_from_args(parser.parse_args(["--search-batchnorm", "running"])).search_batchnorm == "running"
    assert config_from_args(parser.parse_args(["--autotune"])).autotune
    assert not config_from_args(parser.parse_args([])).resolution_search


def _stale_batchnorm(bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    return {k: v.clone() for k, v in bn.state_dict().items()}


def test_own_batch_statistics_normalise_each_batch_and_keep_the_running_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5)).eval()
    bn, x = model[1], torch.randn(8, 1, 6, 6)
    saved = _stale_batchnorm(bn)
    with own_batch_statistics(model):
        out = model(x)
        assert not model[2].training  # dropout stays off
    h = model[0](x)
    expected = (h - h.mean((0, 2, 3), keepdim=True)) / (h.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps).sqrt()
    torch.testing.assert_close(out, expected * bn.weight[:, None, None] + bn.bias[:, None, None])
    assert not bn.training and bn.track_running_stats
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(value, saved[key])


class _NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = NJetConv2d(1, 4, order=2, sigma=1.0)
        self.bn = nn.BatchNorm2d(4)
        self.sub = SafeSubsample(r=4.0, source=self.conv)
        self.sub.start_at(2.0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.sub(self.bn(self.conv(x)))).mean((2, 3)))


@pytest.mark.parametrize("batch_statistics", [False, True])
def test_the_search_measures_with_the_batch_norm_statistics_asked_for(batch_statistics: bool) -> None:
    torch.manual_seed(0)
    model, x, y = _NormNet().train(), torch.randn(16, 1, 12, 12), torch.randint(0, 3, (16,))
    saved = _stale_batchnorm(model.bn)
    seen: list[bool] = []

    def loss(m: nn.Module) -> float:
        seen.append(m.bn.training and m.bn.running_mean is None)
        return float(F.cross_entropy(m(x), y).detach())

    search_resolution(model, loss, resolution_stages(model, x[:2]), batch_statistics=batch_statistics)
    assert seen and set(seen) == {batch_statistics}
    assert model.training and model.bn.training  # the model's mode is back
    for key, value in model.bn.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def _macs(images: torch.Tensor):
    from njet_convert.training.resolution import multiply_adds

    return lambda model: float(multiply_adds(model, images[:1]))


def test_a_budget_makes_the_search_take_the_best_move_that_fits(exact_cnn, digits) -> None:
    x, y = digits  # at the trained scale nothing moves without a budget (above)
    start = _macs(x)(exact_cnn)
    choices = search_resolution(exact_cnn, _loss(x, y), resolution_stages(exact_cnn, x[:2]), cost=_macs(x),
                                max_cost=0.6 * start)
    assert _macs(x)(exact_cnn) <= 0.6 * start
    first = choices[0]
    assert first.factor_octave > 0 and first.factor_after > first.factor_before  # coarser: fewer multiply-adds
    assert set(first.costs) == {k for k, v in first.losses.items() if math.isfinite(v)}
    fitting = {k: v for k, v in first.losses.items() if first.costs.get(k, math.inf) <= 0.6 * start}
    if fitting:  # the stage's own pick: the lowest loss of those that fit
        assert first.losses[f"{first.sigma_octave:g}/{first.factor_octave:g}"] == min(fitting.values())


def test_a_budget_the_network_already_fits_changes_nothing(exact_cnn, digits) -> None:
    x, y = digits
    reference = exact_cnn.eval()(x)
    choices = search_resolution(exact_cnn, _loss(x, y), resolution_stages(exact_cnn, x[:2]), cost=_macs(x),
                                max_cost=10 * _macs(x)(exact_cnn))
    assert all((c.sigma_octave, c.factor_octave) == (0.0, 0.0) for c in choices)
    torch.testing.assert_close(exact_cnn(x), reference)


def test_when_no_move_fits_a_stage_steps_towards_the_budget() -> None:
    choose = importlib.import_module("njet_convert.training.resolution_search")._choose
    losses = {(0.0, 0.0): 1.0, (1.0, 1.0): 0.5, (0.0, 1.0): 1.2, (-1.0, -1.0): math.inf}
    costs = {(0.0, 0.0): 10.0, (1.0, 1.0): 20.0, (0.0, 1.0): 5.0}  # no cost where the loss is infinite
    assert choose(losses, costs, None, 0.01) == (1.0, 1.0)  # no budget: the lowest loss
    assert choose(losses, costs, 25.0, 0.01) == (1.0, 1.0)  # everything fits: the same
    assert choose(losses, costs, 12.0, 0.01) == (0.0, 0.0)  # staying fits and no fitting move beats it
    assert choose(losses, costs, 4.0, 0.01) == (0.0, 1.0)  # nothing fits: cheaper than staying, though worse
    cheaper = {**costs, (1.0, 1.0): 8.0}
    assert choose(losses, cheaper, 4.0, 0.01) == (1.0, 1.0)  # of the moves cheaper than staying, the lowest loss
    assert choose(losses, {(0.0, 0.0): 10.0}, 4.0, 0.01) == (0.0, 0.0)  # no cheaper move: stay
    assert choose(losses, costs, 25.0, 0.6) == (0.0, 0.0)  # min_gain still guards staying


def test_a_budget_is_checked() -> None:
    import argparse

    from njet_convert.training.cli import add_training_arguments, config_from_args

    with pytest.raises(ValueError, match="go together"):
        search_resolution(nn.Identity(), lambda m: 0.0, [], cost=lambda m: 1.0)
    with pytest.raises(ValueError, match="max_cost"):
        search_resolution(nn.Identity(), lambda m: 0.0, [], cost=lambda m: 1.0, max_cost=0.0)
    with pytest.raises(ValueError, match="resolution_search=True"):
        FinetuneConfig(search_max_macs=1e6)
    with pytest.raises(ValueError, match="search_max_macs"):
        FinetuneConfig(resolution_search=True, search_max_macs=-1.0)
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    args = parser.parse_args(["--resolution-search", "--search-max-macs", "12.5M"])
    assert config_from_args(args).search_max_macs == 12.5e6
    for bad in ("12.5X", "-3", "inf", "M"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--search-max-macs", bad])


def test_finetune_passes_the_budget_to_the_search(monkeypatch) -> None:
    module = importlib.import_module("njet_convert.training.finetune")
    seen: dict[str, object] = {}
    real = module.search_resolution

    def spying(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "search_resolution", spying)
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    cfg = FinetuneConfig(batch_size=16, resolution_search=True, search_batches=1, search_max_macs=100.0,
                         progress=False, plots=False, tensorboard=False)
    done = finetune(_Net(), (x, y), epochs=1, config=cfg, device="cpu")
    assert seen["max_cost"] == 100.0 and callable(seen["cost"])
    assert done.resolution_search[0]["costs"]  # the cost of every move measured is kept with the choice
    assert module._Trainer._budget_note(1500.0, 1000.0) == " (1,500 multiply-adds/image, over the budget of 1,000)"
    assert "within the budget" in module._Trainer._budget_note(1000.0, 1000.0)


def test_a_move_within_the_noise_of_its_examples_does_not_replace_staying() -> None:
    choose = importlib.import_module("njet_convert.training.resolution_search")._choose
    paired_z = importlib.import_module("njet_convert.training.resolution_search")._paired_z
    torch.manual_seed(0)
    stay = torch.rand(256, dtype=torch.float64) * 2
    noisy = stay - 0.05 + torch.randn(256, dtype=torch.float64)  # 5 % lower on average, noise σ = 1 per example
    steady = stay - 0.05 + 0.01 * torch.randn(256, dtype=torch.float64)  # the same drop, example by example
    readings = {(0.0, 0.0): stay, (1.0, 1.0): noisy, (0.5, 0.5): steady}
    assert paired_z(stay, noisy) < 2.0 < paired_z(stay, steady)
    losses = {m: float(r.mean()) for m, r in readings.items()}
    only_noisy = {m: v for m, v in losses.items() if m != (0.5, 0.5)}
    assert losses[(1.0, 1.0)] < losses[(0.0, 0.0)] * 0.99  # the mean alone would take it
    assert choose(only_noisy, {}, None, 0.01) == (1.0, 1.0)
    assert choose(only_noisy, {}, None, 0.01, lambda m: paired_z(stay, readings[m]) >= 2.0) == (0.0, 0.0)
    assert choose(losses, {}, None, 0.01, lambda m: paired_z(stay, readings[m]) >= 2.0) == (0.5, 0.5)
    assert paired_z(None, noisy) == math.inf and paired_z(stay, None) == -math.inf  # nothing to test / no move
    assert paired_z(torch.tensor([1.0]), torch.tensor([0.5])) == math.inf  # a mean alone: min_gain decides


def test_the_search_tests_per_example_losses_and_confidence_zero_is_the_mean_alone(exact_cnn, digits) -> None:
    x, y = digits
    zoomed = _zoomed(x, 2.0)

    def per_example(model):
        return F.cross_entropy(model(zoomed), y, reduction="none").detach()

    stages = resolution_stages(exact_cnn, zoomed[:2])
    start = {n: float(m.log_sigma.detach()) for n, m in exact_cnn.named_modules() if isinstance(m, NJetConv2d)}
    strict = search_resolution(exact_cnn, per_example, stages, confidence=1e9)
    assert all((c.sigma_octave, c.factor_octave) == (0.0, 0.0) for c in strict)  # no gain is that certain
    assert {n: float(m.log_sigma.detach()) for n, m in exact_cnn.named_modules() if isinstance(m, NJetConv2d)} == start
    tested = search_resolution(exact_cnn, per_example, stages)  # the default test: a real gain passes it
    assert [(c.sigma_octave, c.factor_octave) for c in tested] == [(1.0, 1.0), (0.0, 0.0), (0.0, 0.0)]
    with pytest.raises(ValueError, match="confidence"):
        search_resolution(exact_cnn, per_example, stages, confidence=-1.0)


def test_search_confidence_is_a_config_and_command_line_option() -> None:
    import argparse

    from njet_convert.training.cli import add_training_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    assert config_from_args(parser.parse_args([])).search_confidence == 2.0
    assert config_from_args(parser.parse_args(["--search-confidence", "0"])).search_confidence == 0.0
    for bad in (-1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="search_confidence"):
            FinetuneConfig(search_confidence=bad)


def test_rescale_stage_makes_the_search_move_by_hand_and_the_search_agrees(exact_cnn, digits) -> None:
    x, y = _zoomed(digits[0], 2.0), digits[1]
    stages = resolution_stages(exact_cnn, x[:2])
    modules = dict(exact_cnn.named_modules())
    point, layer = modules[stages[0].point], modules[stages[0].layers[0]]
    law, sigma = point.law, float(layer.sigma.detach())
    exact_cnn.train()
    by_hand = rescale_stage(exact_cnn, stages[0], 1.0)
    assert (by_hand.sigma_octave, by_hand.factor_octave) == (1.0, 1.0) and by_hand.losses == {}
    assert float(layer.sigma.detach()) == pytest.approx(2 * sigma)
    assert point.factor == pytest.approx(4.0) and point.law == law  # back on its own law at the factor reached
    assert exact_cnn.training  # the mode is kept
    choices = search_resolution(exact_cnn, _loss(x, y), stages[:1])
    assert (choices[0].sigma_octave, choices[0].factor_octave) == (0.0, 0.0)  # nothing left to absorb
    factor_only = rescale_stage(exact_cnn, stages[1], 0.0, -1.0)
    assert factor_only.sigma_after == pytest.approx(factor_only.sigma_before)
    assert factor_only.factor_after == pytest.approx(factor_only.factor_before / 2)
    with pytest.raises(ValueError, match="finite"):
        rescale_stage(exact_cnn, stages[0], math.nan)


@pytest.fixture()
def jet_cnn():
    from njet_convert.models.real_weights import load_mnist_cnn

    return njet_convert.convert(load_mnist_cnn(), order=3, input_size=(1, 28, 28), progress=False)[0]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.eval()(x).argmax(1).eq(y).float().mean())


def test_a_jet_stage_moves_as_a_scale_its_alpha_refitted_to_the_dilated_kernel(jet_cnn, digits) -> None:
    """The order-3 jet's σ doubled with α kept is not its filter dilated (21 % on 2× digits); refitted it is."""
    x, y = _zoomed(digits[0], 2.0), digits[1]
    stages = resolution_stages(jet_cnn, x[:2])
    layer = dict(jet_cnn.named_modules())[stages[0].layers[0]]
    alpha_kept = layer.alpha.detach().clone()
    before = _accuracy(jet_cnn, x, y)
    rescale_stage(jet_cnn, stages[0], 1.0)
    assert not torch.equal(layer.alpha.detach(), alpha_kept)
    assert _accuracy(jet_cnn, x, y) > max(0.85, before + 0.2)


def test_the_choice_names_the_layers_whose_alpha_was_refitted(jet_cnn, digits) -> None:
    """Fine-tuning drops the optimiser state of exactly these: the record is made from the start, since the move can
    grow a refitted layer's filter past the over-complete rule (σ 0.28 → 0.55: 3×3 → 5×5)."""
    from njet_convert.fitting.dilation import dilates_by_refit

    stages = resolution_stages(jet_cnn, _zoomed(digits[0], 2.0)[:2])
    first = stages[0].layers[0]
    layer = dict(jet_cnn.named_modules())[first]
    assert dilates_by_refit(layer)
    choice = rescale_stage(jet_cnn, stages[0], 1.0)
    assert first in choice.refitted and choice.as_dict()["refitted"] == list(choice.refitted)
    assert layer.kernel_size == 5 and not dilates_by_refit(layer)
    assert rescale_stage(jet_cnn, stages[1], 0.0).refitted == ()


def test_staying_leaves_a_jet_layers_alpha_exactly_as_it_was(jet_cnn, digits) -> None:
    x = _zoomed(digits[0], 2.0)
    stages = resolution_stages(jet_cnn, x[:2])
    alphas = [m.alpha.detach().clone() for m in jet_cnn.modules() if isinstance(m, NJetConv2d)]
    choices = search_resolution(jet_cnn, lambda model: 1.0, stages)  # every move ties: staying wins
    assert all((c.sigma_octave, c.factor_octave) == (0.0, 0.0) for c in choices)
    after = [m.alpha.detach() for m in jet_cnn.modules() if isinstance(m, NJetConv2d)]
    assert all(torch.equal(a, b) for a, b in zip(alphas, after, strict=True))
