"""The size law of safe subsampling: the paper's ``2 ** (sigma / r)`` for nets built as N-Jet, and for converted
points the shifted law ``stride * 2 ** ((sigma - sigma0) / r)`` (factor = stride at σ₀, sensitivity 1/r whatever
σ₀ is), kept through save/load, freeze and ONNX, with join groups still in step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from njet_convert import ConvertConfig, convert, export_onnx, freeze, load, save
from njet_layers import NJetConv2d, SafeSubsample

pytestmark = pytest.mark.usefixtures("one_thread")


class _Strided(nn.Module):
    """A strided 3×3 conv beside a strided 1×1 shortcut (one join group), then a max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.short = nn.Conv2d(8, 8, 1, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.pool(torch.relu(self.down(x) + self.short(x)))
        return self.head(x.mean((2, 3)))


def _converted(**options) -> nn.Module:
    torch.manual_seed(0)
    return convert(_Strided().eval(), **options)[0]


def _subsamples(model: nn.Module) -> dict[str, SafeSubsample]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SafeSubsample)}


def _move_sigma(model: nn.Module, name: str, delta: float) -> None:
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.log_sigma.copy_(torch.log(layer.sigma.detach() + delta))


@pytest.mark.parametrize("sigma0", [0.28, 0.5, 1.7])
@pytest.mark.parametrize("r", [4.0, 1.5])
def test_shifted_law_starts_at_the_stride_with_sensitivity_one_over_r(sigma0: float, r: float) -> None:
    ss = SafeSubsample(r=r, sigma=sigma0)
    ss.start_at(2.0)
    assert ss.factor == 2.0 and ss.output_size((7, 8)) == (4, 4)
    assert ss.shift == pytest.approx(1.0 - sigma0 / r)
    with torch.no_grad():
        ss.log_sigma.fill_(math.log(sigma0 + 0.3))
    assert math.log2(ss.factor / 2.0) == pytest.approx(0.3 / r)  # d log2(factor)/dσ = 1/r, not 1/σ₀


def test_unshifted_law_is_the_papers() -> None:
    ss = SafeSubsample(r=4.0, sigma=2.0)
    assert ss.shift == 0.0 and ss.factor == pytest.approx(2 ** 0.5)
    with pytest.raises(ValueError, match="shift"):
        SafeSubsample(r=4.0, sigma=1.0, shift=float("nan"))


def test_zoo_njet_nets_keep_the_papers_law() -> None:
    import timm

    net = timm.create_model("njet_mnist_toy2")
    (ss,) = _subsamples(net).values()
    assert ss.shift == 0.0 and ss.factor == pytest.approx(2 ** (float(ss.sigma.detach()) / 4.0))


def test_converted_points_start_at_their_stride_and_move_by_one_over_r() -> None:
    for r in (4.0, 2.0):
        model = _converted(r=r)
        subs = _subsamples(model)
        assert set(subs) == {"down_subsample", "short_subsample", "pool_subsample"}
        assert all(m.factor == 2.0 and m.r == r for m in subs.values())
        sigma0 = float(model.down.sigma.detach())
        assert subs["down_subsample"].shift == pytest.approx(1.0 - sigma0 / r)
        _move_sigma(model, "down", 0.4)
        assert math.log2(subs["down_subsample"].factor / 2.0) == pytest.approx(0.4 / r, rel=1e-4)
    report = convert(_Strided().eval(), r=3.0)[1]
    assert {s.r for s in report.subsampling} == {3.0} and all(s.factor == 2.0 for s in report.subsampling)


def test_join_groups_share_sigma_and_law() -> None:
    model = _converted()
    subs = _subsamples(model)
    down, short = subs["down_subsample"], subs["short_subsample"]
    assert down.source is short.source is model.down
    _move_sigma(model, "down", 0.9)
    assert down.factor == short.factor > 2.0 and down.shift == short.shift
    x = torch.randn(2, 3, 33, 33)
    assert model(x).shape == (2, 4)  # the join's two inputs still have equal sizes


def test_config_validates_r_and_sigma_and_builds_new_layers_at_sigma() -> None:
    for bad in ({"r": 0}, {"r": float("inf")}, {"r": True}, {"sigma": -1.0}, {"sigma": 100.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ConvertConfig(**bad)
    model = _converted(fit=False, sigma=1.0)
    assert {float(m.sigma.detach()) for m in model.modules() if isinstance(m, NJetConv2d)} == {1.0}
    assert all(m.factor == 2.0 for m in _subsamples(model).values())


def test_save_load_keep_r_and_shift(tmp_path) -> None:
    model = _converted(r=3.0)
    _move_sigma(model, "down", 0.35)
    _move_sigma(model, "stem", -0.1)
    save(model, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "config.json").read_text())
    saved = record["subsampling"]["down_subsample"]
    assert saved["r"] == 3.0 and saved["shift"] == pytest.approx(_subsamples(model)["down_subsample"].shift)
    back = load(tmp_path / "m", trust_code=True)  # the test module's own architecture
    for name, ss in _subsamples(model).items():
        other = _subsamples(back)[name]
        assert (other.r, other.shift, other.factor) == (ss.r, ss.shift, ss.factor)
    x = torch.randn(2, 3, 31, 31)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


def test_records_without_shift_load_with_the_unshifted_law(tmp_path) -> None:
    model = _converted()
    save(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    record = json.loads(path.read_text())
    for sub in record["subsampling"].values():
        sigma = record["layers"][sub["source"]]["sigma"]
        sub.pop("shift")
        sub["r"] = sigma / math.log2(sub["stride"])  # how the earlier law started at the stride
    path.write_text(json.dumps(record))
    (tmp_path / "m" / "manifest.json").unlink()  # folders of that time had no manifest either
    back = load(tmp_path / "m", trust_code=True)  # the test module's own architecture
    assert all(m.shift == 0.0 and m.anchor is None and m.factor == 2.0 for m in _subsamples(back).values())


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
def test_anchored_point_keeps_sizes_and_grid_near_sigma0_either_way(rounding: str) -> None:
    ss = SafeSubsample(r=4.0, sigma=0.5, rounding=rounding)
    ss.start_at(2.0)
    plain = SafeSubsample(r=4.0, sigma=0.5, shift=ss.shift, rounding=rounding)  # same law, unanchored
    exact = {m: (m + 1) // 2 if rounding == "ceil" else m // 2 for m in range(2, 97)}
    for delta in (-0.03, 0.03):  # log σ moves that leave the factor within 0.3 % of the stride
        for layer in (ss, plain):
            with torch.no_grad():
                layer.log_sigma.fill_(math.log(0.5) + delta)
        assert ss.factor != 2.0
        assert {m: ss.output_size((m, m))[0] for m in exact} == exact
        x = torch.arange(96.0).repeat(96, 1)[None, None]
        assert torch.equal(ss(x)[0, 0, 0], torch.arange(0.0, 96.0, 2.0)[: exact[96]])  # the strided grid
        if delta < 0:  # the plain rounding and floor grid leave the original at once when σ drops
            assert {m: plain.output_size((m, m))[0] for m in exact} != exact or not torch.equal(plain(x), ss(x))
    with torch.no_grad():
        ss.log_sigma.fill_(math.log(0.5 + 1.2))  # factor 2 * 2 ** 0.3: sizes follow σ again
    assert ss.output_size((96, 96))[0] < exact[96]


def test_freeze_and_onnx_keep_the_shifted_law(tmp_path) -> None:
    model = _converted()
    _move_sigma(model, "down", 0.3)  # factor 2 * 2 ** 0.075: a non-integer, fixed-size resize when frozen
    x = torch.randn(1, 3, 29, 29)
    frozen = freeze(model, x)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-5)
    frozen_down = {r.name: r for r in frozen.freeze_report.resizes}["down_subsample"]
    result = export_onnx(model, tmp_path / "m.onnx", x, verify=True)
    subs = {s["name"]: s for s in json.loads(result.metadata["njet.subsampling"])}
    ss = _subsamples(model)["down_subsample"]
    assert subs["down_subsample"]["shift"] == pytest.approx(ss.shift) and subs["down_subsample"]["r"] == ss.r
    assert subs["down_subsample"]["factor"] == pytest.approx(2.0 * 2 ** (0.3 / 4.0), rel=1e-4)
    assert (frozen_down.r, frozen_down.shift, frozen_down.form, frozen_down.anchor) == (ss.r, ss.shift, "fixed", 2.0)
    dynamic = freeze(model, x, dynamic_spatial=True)
    for size in (29, 40, 57):
        other = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(dynamic(other), model(other), rtol=1e-4, atol=1e-5)


def test_calibration_keeps_factors_at_the_stride() -> None:
    torch.manual_seed(0)
    model = _Strided().eval()
    out, report = convert(model, calibration=torch.randn(16, 3, 20, 20))
    assert report.calibrated and all(m.factor == 2.0 for m in _subsamples(out).values())


def test_cli_takes_r_and_builds_untrained_layers_at_the_recipes_sigma(tmp_path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "njet_convert.cli", "mnist-toy-2layer", "--dry-run", "--json"]
    proc = subprocess.run([*cmd, "--r", "2.5"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["report"]
    assert report["options"]["r"] == 2.5 and {s["r"] for s in report["subsampling"]} == {2.5}
    assert {s["factor"] for s in report["subsampling"]} == {2.0}
    assert {layer["sigma"] for layer in report["layers"]} == {1.0}  # the recipe's convert.sigma, not a fit
    bad = subprocess.run([*cmd, "--r", "0"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "--r" in bad.stderr and "Traceback" not in bad.stderr


def _covariant(model: nn.Module) -> nn.Module:
    for ss in _subsamples(model).values():
        ss.use_law_("covariant")
    return model


@pytest.mark.parametrize("sigma0", [0.28, 0.5, 1.7])
def test_covariant_law_doubles_the_factor_when_sigma_doubles(sigma0: float) -> None:
    ss = SafeSubsample(r=4.0, sigma=sigma0, law="covariant", sigma_bounds=(0.1, 8.0))
    ss.start_at(2.0)
    assert ss.factor == 2.0 and ss.shift == pytest.approx(1.0 - math.log2(sigma0))
    for scale in (2.0, 0.5, 1.3):
        with torch.no_grad():
            ss.log_sigma.fill_(math.log(sigma0 * scale))
        assert ss.factor == pytest.approx(2.0 * scale, rel=1e-6)  # d log2(factor) / d log2(σ) = 1 at any σ₀
    with pytest.raises(ValueError, match="law"):
        SafeSubsample(sigma=1.0, law="linear")
    with pytest.raises(ValueError, match="law"):
        ss.start_at(2.0, law="linear")


def test_switching_law_keeps_the_converted_network_and_follows_sigma_covariantly() -> None:
    model = _converted()
    x = torch.randn(2, 3, 31, 31)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(_covariant(model)(x), before)  # the converted network still starts as the original
    subs = _subsamples(model)
    assert all(m.law == "covariant" and m.factor == 2.0 and m.anchor == 2.0 for m in subs.values())
    layer = model.down
    with torch.no_grad():
        layer.log_sigma += math.log(2.0)
    assert subs["down_subsample"].factor == pytest.approx(4.0, rel=1e-5) == subs["short_subsample"].factor
    assert all(m.factor == pytest.approx(4.0, rel=1e-5) for m in subs.values() if m.source is layer)
    with torch.no_grad():
        model.stem.log_sigma += math.log(3.0)  # no point follows the stem: nothing else moves
    assert subs["down_subsample"].factor == pytest.approx(4.0, rel=1e-5)
    with torch.no_grad():
        layer.log_sigma -= math.log(2.0) - 0.01  # near σ₀ the anchored sizes and grid hold
    assert subs["down_subsample"].output_size((31, 31)) == (16, 16)


def test_covariant_law_survives_save_load_freeze_and_onnx(tmp_path) -> None:
    model = _covariant(_converted())
    _move_sigma(model, "down", 0.2)
    save(model, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "config.json").read_text())
    assert record["subsampling"]["down_subsample"]["law"] == "covariant"
    back = load(tmp_path / "m", trust_code=True)  # the test module's own architecture
    for name, ss in _subsamples(model).items():
        other = _subsamples(back)[name]
        assert (other.law, other.shift, other.factor) == (ss.law, ss.shift, ss.factor)
    x = torch.randn(1, 3, 29, 29)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
        torch.testing.assert_close(freeze(model, x)(x), model(x), rtol=1e-4, atol=1e-5)
    result = export_onnx(model, tmp_path / "m.onnx", x, verify=True)
    subs = {s["name"]: s for s in json.loads(result.metadata["njet.subsampling"])}
    sigma0 = float(model.down.sigma.detach()) - 0.2
    expected = 2.0 * float(model.down.sigma.detach()) / sigma0
    assert subs["down_subsample"]["factor"] == pytest.approx(expected, rel=1e-4)
    record["subsampling"]["down_subsample"].pop("law")  # folders written before the law was recorded
    (tmp_path / "m" / "config.json").write_text(json.dumps(record))
    (tmp_path / "m" / "manifest.json").unlink()
    assert _subsamples(load(tmp_path / "m", trust_code=True))["down_subsample"].law == "paper"
