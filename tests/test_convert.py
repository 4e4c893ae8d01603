"""convert(): bad input, fidelity of the structure at conversion, selection rules, report, save/load round trip."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import njet_convert
from njet_convert import ConversionReport, ConvertConfig, convert, load, save
from njet_layers import MatchSize, NJetConv2d, SafeSubsample


class TinyNet(nn.Module):
    """Residual CNN with a strided 3×3 + strided 1×1 shortcut, a max pool, a functional pool and a concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv_a = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.short = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.branch = nn.Conv2d(16, 8, (1, 5), padding=(0, 2))
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(self.bn(self.conv_a(x)) + self.short(x))
        x = torch.cat([x, self.branch(x)], 1)
        x = nn.functional.max_pool2d(x, 2, 2)
        return self.head(x.mean((2, 3)))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"order": -1}, "order"), ({"order": 2.5}, "order"), ({"k": 0}, "k"), ({"subsample": "drop"}, "subsample"),
     ({"include": ["nothing.*"]}, "nothing"), ({"exclude": [nn.ConvTranspose2d]}, "ConvTranspose2d"),
     ({"include": ["re:("]}, "regex"), ({"calibration": torch.zeros(3, 32, 32)}, "calibration"),
     ({"calibration": torch.zeros(2, 3, 8, 8, dtype=torch.int64)}, "calibration"),
     ({"calibration": "x"}, "calibration"),
     ({"interpolation": "cubic"}, "interpolation"), ({"bogus_option": 1}, "bogus_option")],
)
def test_bad_input(kwargs, match) -> None:
    with pytest.raises(ValueError, match=re.escape(match) if match != "regex" else "regex"):
        convert(_tiny(), **kwargs)


def test_not_a_module() -> None:
    with pytest.raises(ValueError, match=r"nn\.Module"):
        convert("resnet18")


def test_structure_sizes_and_links() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 30, 30)
    out, report = convert(model)
    assert isinstance(report, ConversionReport)
    names = {r.name for r in report.layers}
    assert names == {"stem", "conv_a", "branch"}  # 1×1 stays a conv; same qualified names
    assert isinstance(out.get_submodule("conv_a"), NJetConv2d) and type(out.get_submodule("short")) is nn.Conv2d
    assert out.get_submodule("conv_a").stride == (1, 1) and out.get_submodule("short").stride == (1, 1)
    subs = {n: m for n, m in out.named_modules() if isinstance(m, SafeSubsample)}
    assert len(subs) == 4 and all(abs(m.factor - 2.0) < 1e-6 for m in subs.values())
    # the strided 1×1 shortcut follows its main branch's σ (one group)
    assert subs["short_subsample"].source is out.get_submodule("conv_a")
    assert subs["conv_a_subsample"].source is out.get_submodule("conv_a")
    # the max pool follows the stem conv feeding it
    assert subs["pool_subsample"].source is out.get_submodule("stem")
    # original state dict keys of everything not converted are kept
    kept = {k for k in model.state_dict() if k.split(".")[0] not in names}
    assert kept <= set(out.state_dict())
    assert out(x).shape == model(x).shape
    # σ of the group moves together: sizes at the join still agree
    with torch.no_grad():
        out.get_submodule("conv_a").log_sigma.add_(0.7)
    assert out(x).shape == (2, 5)


def test_exact_fit_reproduces_the_network() -> None:
    """Order 4 on 3×3 (and 1×5 inside a 5×5 frame) kernels fits nearly exactly: with strides turned into
    subsampling the converted network must then match the original almost exactly (sizes and sampling grids)."""
    model = _tiny()
    x = torch.randn(2, 3, 29, 29)
    out, report = convert(model, order=6, sigma_grid=[0.5, 0.7, 1.0])
    with torch.no_grad():
        ref, got = model(x), out(x)
    assert max(r.fit_error for r in report.layers) < 0.05
    assert torch.allclose(got, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))


def test_keep_mode_keeps_strides_and_pools() -> None:
    out, report = convert(_tiny(), subsample="keep")
    assert not report.subsampling
    assert out.get_submodule("conv_a").stride == (2, 2) and out.get_submodule("pool").stride == 2
    assert not any(isinstance(m, SafeSubsample) for m in out.modules())


def test_selection_rules() -> None:
    model = _tiny()
    out, report = convert(model, include=["stem", "re:conv_.*", lambda n, m: n == "branch"], exclude=["branch"])
    assert {r.name for r in report.layers} == {"stem", "conv_a"}
    assert type(out.get_submodule("branch")) is nn.Conv2d
    assert any(s.name == "branch" and "not selected" in s.reason for s in report.skipped)
    out, report = convert(model, exclude=[nn.Conv2d])
    assert not report.layers and not any(isinstance(m, NJetConv2d) for m in out.modules())


def test_config_object_and_overrides() -> None:
    cfg = ConvertConfig(order=2, k=1.5, subsample="keep")
    out, report = convert(_tiny(), config=cfg, order=4)
    assert report.options["order"] == 4 and report.options["k"] == 1.5 and report.options["subsample"] == "keep"
    assert all(m.order == 4 for m in out.modules() if isinstance(m, NJetConv2d))


def test_input_untouched_and_modes_kept() -> None:
    model = _tiny().train()
    model.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, _ = convert(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.conv_a) is nn.Conv2d and model.conv_a.stride == (2, 2) and model.short.stride == (2, 2)
    assert out.training and not out.get_submodule("bn").training


def test_report_renders() -> None:
    _, report = convert(_tiny())
    text = str(report)
    assert "| conv_a | Conv2d | 16x8x3x3 | NJetConv2d |" in text and "short_subsample" in text
    data = json.loads(report.to_json())
    assert data["params_before"] == sum(p.numel() for p in _tiny().parameters())
    assert {s["name"] for s in data["subsampling"]} >= {"conv_a_subsample", "short_subsample"}
    assert report.to_dict()["layers"][0]["name"] == "stem"


def test_timm_same_padding_and_standardised_weight() -> None:
    from timm.layers import Conv2dSame, StdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), StdConv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 20, 20)
    out, report = convert(model, order=6, sigma_grid=[0.5, 0.7])
    assert [r.original_type for r in report.layers] == ["Conv2dSame", "StdConv2d"]
    with torch.no_grad():
        ref, got = model(x), out(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()))


def test_untraceable_model_is_swapped_by_name() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not traceable
                x = -x
            return self.conv(x)

    out, report = convert(Dynamic())
    assert not report.traced and report.untraced
    assert isinstance(out.conv.conv, NJetConv2d) and isinstance(out.conv.subsample, SafeSubsample)
    assert out(torch.randn(1, 3, 9, 9)).shape == (1, 4, 5, 5)


def test_matchsize_fallback_at_mismatched_join() -> None:
    class UpJoin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 3, 3, stride=2, padding=1)

        def forward(self, x):
            return x + nn.functional.interpolate(self.down(x), scale_factor=2.0)

    out, report = convert(UpJoin())
    assert report.match_sizes and any(isinstance(m, MatchSize) for m in out.modules())
    with torch.no_grad():
        out.down.log_sigma.add_(0.5)
    assert out(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_save_load_round_trip(tmp_path) -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    out, _ = convert(model, sigma_grid=[0.5])
    with torch.no_grad():
        out.get_submodule("layer2.0.conv1").log_sigma.add_(0.2)  # as after fine-tuning
    save(out, tmp_path / "m")
    back = load(tmp_path / "m")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(out(x), back(x))
    assert out.state_dict().keys() == back.state_dict().keys()
    subs = dict(back.named_modules())["layer2.0.downsample.0_subsample"]
    assert subs.source is back.get_submodule("layer2.0.conv1")
    assert back.source_architecture == "timm:resnet18"


def test_load_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load(tmp_path / "bad")
    with pytest.raises(ValueError, match="conversion record"):
        save(nn.Conv2d(1, 1, 3), tmp_path / "x")


def test_calibration_is_passed_on() -> None:
    model = _tiny()
    data = torch.randn(8, 3, 24, 24)
    out, report = convert(model, calibration=data)
    assert report.calibrated
    assert all(abs(m.factor - 2.0) < 1e-6 for m in out.modules() if isinstance(m, SafeSubsample))


def test_public_api_lazy_names() -> None:
    assert njet_convert.convert is convert and njet_convert.ConvertConfig is ConvertConfig
