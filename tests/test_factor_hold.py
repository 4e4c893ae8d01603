"""Holding a converted point's factor on its stride's power-of-two ladder while σ drifts a little: the law
elsewhere, the original network unchanged, kept through save/load and export, set from FinetuneConfig and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from training_helpers import quiet_config

from njet_convert import convert, export_onnx, load, save
from njet_convert.training import FinetuneConfig, finetune
from njet_convert.training.cli import add_training_arguments, config_from_args
from njet_convert.training.resolution_search import hold_factors
from njet_layers import SafeSubsample

pytestmark = pytest.mark.usefixtures("one_thread")


class _Strided(nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.stem(x)))).mean((2, 3)))


def _converted(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return convert(_Strided(channels).eval())[0]


def _point(model: nn.Module) -> SafeSubsample:
    (point,) = (m for m in model.modules() if isinstance(m, SafeSubsample))
    return point


def _set_raw_factor(point: SafeSubsample, factor: float) -> None:
    """Move the point's own σ so that its (covariant) law gives ``factor``: log2 σ = log2 factor − shift."""
    with torch.no_grad():
        point.log_sigma.fill_((math.log2(factor) - point.shift) * math.log(2.0))


def _anchored(sigma0: float = 0.5) -> SafeSubsample:
    point = SafeSubsample(r=4.0, sigma=sigma0, sigma_bounds=(0.05, 16.0), law="covariant")
    point.start_at(2.0)  # covariant: factor = 2σ/σ₀, so every factor the tests ask for is in σ's bounds
    return point


@pytest.mark.parametrize(("raw", "held"), [(1.93, 2.0), (2.3, 2.0), (1.7, 2.0), (3.9, 4.0), (4.6, 4.0),
                                           (1.05, 1.0), (2.5, 2.5), (2.83, 2.83), (1.6, 1.6)])
def test_factor_is_held_within_the_zone_and_follows_the_law_outside(raw: float, held: float) -> None:
    point = _anchored().hold_factor_(0.25)
    _set_raw_factor(point, raw)
    assert point.factor == pytest.approx(held, rel=1e-6)
    assert point.hold_factor_(0.0).factor == pytest.approx(raw, rel=1e-6)  # without a hold: the law alone


def test_held_point_keeps_the_strided_grid_where_the_law_jitters_it() -> None:
    point = _anchored()
    _set_raw_factor(point, 1.93)
    x = torch.arange(112.0).repeat(112, 1)[None, None]
    jittered = point(x)[0, 0, 0]
    assert jittered.numel() == 58 and not torch.equal(jittered[:56], torch.arange(0.0, 112.0, 2.0))
    point.hold_factor_(0.25)
    assert torch.equal(point(x)[0, 0, 0], torch.arange(0.0, 112.0, 2.0))


def test_only_anchored_points_hold_and_bad_holds_are_refused() -> None:
    built_new = SafeSubsample(r=4.0, sigma=3.8).hold_factor_(0.25)  # the paper's law, no anchor
    assert built_new.factor == pytest.approx(2 ** 0.95)
    for bad in (-0.1, 0.5, float("nan"), True, "0.2"):
        with pytest.raises(ValueError, match="hold"):
            _anchored().hold_factor_(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no converted subsampling point"):
        hold_factors(nn.Sequential(built_new), 0.25)
    with pytest.raises(ValueError, match="factor_hold"):
        FinetuneConfig(factor_hold=0.5)


def test_hold_leaves_the_converted_network_unchanged_and_survives_save_load_and_onnx(tmp_path) -> None:
    model = _converted()
    x = torch.randn(2, 3, 31, 31)
    with torch.no_grad():
        before = model(x)
        assert hold_factors(model, 0.25) == 1
        assert torch.equal(model(x), before)
        model.down.log_sigma -= 0.4  # the law would now subsample by less than 2
    point = _point(model)
    assert point.factor == 2.0 and "hold=0.25" in repr(point)
    save(model, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "config.json").read_text())
    assert record["subsampling"]["down_subsample"]["hold"] == 0.25
    back = load(tmp_path / "m", trust_code=True)  # the test module's own architecture
    assert (_point(back).hold, _point(back).factor) == (0.25, 2.0)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    result = export_onnx(model, tmp_path / "m.onnx", x[:1], verify=True)
    assert json.loads(result.metadata["njet.subsampling"])[0]["factor"] == 2.0
    record["subsampling"]["down_subsample"]["hold"] = 0.7
    (tmp_path / "m" / "config.json").write_text(json.dumps(record))
    (tmp_path / "m" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="hold"):
        load(tmp_path / "m", trust_code=True)


def _toy_finetune(model: nn.Module, **config) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 12, 12, generator=g)
    finetune(model, (x, (x.mean((1, 2, 3)) > 0).long()), epochs=1, device="cpu",
             config=quiet_config(max_steps_per_epoch=1, **config))


def test_finetune_holds_converted_points_by_default_and_as_configured() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    assert config_from_args(parser.parse_args([])).factor_hold == 0.25
    assert config_from_args(parser.parse_args(["--factor-hold", "0"])).factor_hold == 0.0
    model = _converted(channels=1)
    _toy_finetune(model)
    assert _point(model).hold == 0.25
    _toy_finetune(model, factor_hold=0.1)
    assert _point(model).hold == 0.1
    _toy_finetune(model, factor_hold=None)  # leaves the point's own setting
    assert _point(model).hold == 0.1
    built_new = nn.Sequential(nn.Conv2d(1, 2, 3), SafeSubsample(r=4.0, sigma=1.0), nn.Flatten(), nn.LazyLinear(2))
    _toy_finetune(built_new)  # no converted point: nothing to hold, and no error
    assert built_new[1].hold == 0.0
