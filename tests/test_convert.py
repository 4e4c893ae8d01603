"""convert(): bad input, fidelity of the structure at conversion, selection rules, report, save/load round trip."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

import njet_convert
from njet_convert import ConversionReport, ConvertConfig, convert, load, save
from njet_layers import MatchSize, NJetConv2d, SafeSubsample

pytestmark = pytest.mark.usefixtures("one_thread")


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
     ({"calibration": "x"}, "calibration"), ({"calibration": torch.zeros(2, 1, 24, 24)}, "does not fit the model"),
     ({"calibration": torch.zeros(2, 3, 24, 24, dtype=torch.float64)}, "dtype torch.float64"),
     ({"calibration": torch.full((2, 3, 24, 24), float("nan"))}, "NaN"),
     ({"calibration": [torch.zeros(2, 3, 24, 24), torch.zeros(2, 4, 24, 24)]}, "batch 1 has 4 channels"),
     ({"calibration": [(torch.zeros(3, 24, 24), 0)]}, "batch 0 must be"),
     ({"calibration": iter([torch.zeros(2, 3, 24, 24, dtype=torch.int64)])}, "dtype torch.int64"),
     ({"calibration": []}, "empty"),
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
    assert back.njet_record.source.name == "timm:resnet18"


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


@pytest.mark.parametrize("rule", [nn.ConvTranspose2d, "nothing.*", "re:nothing[0-9]", re.compile("nothing"),
                                  lambda n, m: n == "nothing"])
@pytest.mark.parametrize("where", ["include", "exclude"])
def test_rule_matching_nothing_is_named(rule, where) -> None:
    from njet_convert.config import describe_rule

    kwargs = {where: [nn.Conv2d, rule]} if where == "include" else {where: [rule]}
    with pytest.raises(ValueError, match=re.escape(describe_rule(rule))) as err:
        convert(_tiny(), **kwargs)
    assert where in str(err.value) and "\n" not in str(err.value)


def test_selection_by_type_glob_regex_pattern_predicate() -> None:
    model = _tiny()
    cases = [(nn.Conv2d, {"stem", "conv_a", "branch"}), ("conv_*", {"conv_a"}),
             ("re:(stem|branch)", {"stem", "branch"}), (re.compile("st.m"), {"stem"}),
             (lambda n, m: n.startswith("b"), {"branch"})]
    for rule, want in cases:
        _, report = convert(model, include=[rule], subsample="keep")
        assert {r.name for r in report.layers} == want, rule


@pytest.mark.parametrize(("shape", "dilation"), [
    ((16, 8, 3, 3), (1, 1)), ((12, 1, 3, 3), (1, 1)), ((6, 4, 1, 7), (1, 1)), ((6, 4, 7, 1), (1, 1)),
    ((6, 4, 3, 3), (2, 2)), ((6, 4, 2, 2), (1, 1)), ((6, 3, 7, 7), (1, 1)), ((6, 4, 5, 5), (1, 1))])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_gram_sigma_search_equals_fitting_every_sigma(shape, dilation, order) -> None:
    """fit_kernels' Gram-matrix σ search picks the σ that direct fits at every σ pick, with the same α and error."""
    from njet_convert.fitting import fit_kernels
    from njet_convert.fitting.least_squares import fit_at_sigma
    from njet_convert.fitting.sigma_search import default_sigma_grid
    from njet_layers import filter_radius

    w = torch.randn(shape)
    grid = default_sigma_grid(njet_convert.fitting.kernel_radius(shape[-2:], dilation), 2.0)
    direct = [fit_at_sigma(w, order, 2.0, s, dilation) for s in grid]
    best = min(f.error for f in direct)
    ref = min((f for f in direct if f.error <= best + 1e-5), key=lambda f: (filter_radius(f.sigma, 2.0), -f.sigma))
    got = fit_kernels(w, order, 2.0, dilation=dilation)
    assert got.sigma == ref.sigma
    assert abs(got.error - ref.error) < 1e-7
    assert torch.allclose(got.alpha, ref.alpha, rtol=1e-5, atol=1e-6)


def _fit_check(model: nn.Module, x: torch.Tensor, order: int = 6) -> tuple[nn.Module, ConversionReport]:
    out, report = convert(model, order=order, sigma_grid=[0.5, 0.7, 1.0])
    with torch.no_grad():
        ref, got = model(x), out(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=0.05 * float(ref.abs().max())), float((got - ref).abs().max())
    return out, report


def test_timm_conv_subclasses_by_exact_type() -> None:
    """Every Conv2d subclass of timm with its own forward is converted with its SAME padding / standardised
    weight (outputs match at a high order), and an unknown subclass is skipped with the reason."""
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2dSame
    from timm.layers.conv2d_same import Conv2dSameExport

    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSameExport(3, 8, 3, stride=2), nn.ReLU(), ScaledStdConv2d(8, 8, 3, padding=1),
                          nn.ReLU(), StdConv2dSame(8, 8, 3, stride=2), ScaledStdConv2dSame(8, 8, 3),
                          MyConv(8, 4, 3, padding=1)).eval()
    _, report = _fit_check(model, torch.randn(1, 3, 21, 21))
    assert [r.original_type for r in report.layers] == ["Conv2dSameExport", "ScaledStdConv2d", "StdConv2dSame",
                                                        "ScaledStdConv2dSame"]
    assert "standardisation" in report.layers[1].note and "TF-SAME" in report.layers[0].note
    assert [(s.name, s.type) for s in report.skipped] == [("6", "MyConv")]
    assert "unsupported conv type" in report.skipped[0].reason


def test_nonsquare_dilated_asymmetric_padding() -> None:
    """1×7 / 7×1 kernels, a dilated (ASPP-like) conv whose σ covers the dilated support, per-axis padding narrower
    than the kernel (crop); padding wider than the kernel and reflect padding are reported as skipped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, (1, 7), padding=(0, 3)), nn.Conv2d(4, 4, (7, 1), padding=(3, 0)),
                          nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 3, padding=(0, 1)),
                          nn.Conv2d(4, 4, 3, padding=3), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")).eval()
    x = torch.randn(1, 3, 17, 17)
    out, report = convert(model, order=4)
    with torch.no_grad():
        assert out(x).shape == model(x).shape
    dilated = report.layers[2]
    assert dilated.dilation == (2, 2) and dilated.kernel_size >= 5 and "dilation" in dilated.note
    assert report.layers[3].crop == (1, 0)
    assert {s.name: s.reason.split()[0] for s in report.skipped} == {"4": "padding", "5": "padding_mode='reflect'"}
    # order 8 (45 functions on the 5×5 frame) reproduces the dilated and the cropped layer: the taps sit right
    _fit_check(model[2:4], torch.randn(1, 4, 17, 17), order=8)


def test_save_load_torchvision_and_zoo(tmp_path) -> None:
    """torchvision (builder found from the state_dict shapes) and zoo models rebuild without calibration data."""
    import timm
    import torchvision

    x = torch.randn(2, 3, 32, 32)
    for i, model in enumerate([torchvision.models.get_model("mobilenet_v2", weights=None, num_classes=7),
                               timm.create_model("resnet32")]):
        out, _ = convert(model.eval())
        save(out, tmp_path / str(i))
        back = load(tmp_path / str(i))
        with torch.no_grad():
            assert torch.equal(out(x), back(x))
        assert sorted(p.name for p in (tmp_path / str(i)).iterdir()) == ["config.json", "manifest.json",
                                                                          "model.safetensors"]
    assert json.loads((tmp_path / "0" / "config.json").read_text())["source"] == {
        "name": "torchvision:mobilenet_v2", "kwargs": {"num_classes": 7}}
    assert back.njet_record.source.name == "timm:resnet32"
    frozen = njet_convert.freeze(back)
    with torch.no_grad():
        assert torch.allclose(frozen(x), back(x), rtol=1e-4, atol=1e-4)
    result = njet_convert.export_onnx(back, tmp_path / "m.onnx", x, verify=True)
    assert (tmp_path / "m.onnx").is_file() and result is not None


def test_save_is_atomic_and_load_rejects_broken_dirs(tmp_path, monkeypatch) -> None:
    out, _ = convert(_tiny(), source="tests.test_convert:TinyNet")
    save(out, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    import safetensors.torch

    def boom(tensors, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save(out, tmp_path / "m")
    monkeypatch.undo()
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before  # old file intact, no temporary left
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert load(tmp_path / "m", trust_code=True) is not None
    broken = {"no model.safetensors": lambda d: (d / "model.safetensors").unlink(),
              "unreadable": lambda d: (d / "model.safetensors").write_bytes(b"garbage"),
              "missing 'layers'": lambda d: (d / "config.json").write_text('{"format": "njet-converted/1", '
                                                                          '"source": {}, "options": {}}'),
              "not an njet": lambda d: (d / "config.json").write_text("[]"),
              "cannot rebuild": lambda d: (d / "config.json").write_text(
                  (d / "config.json").read_text().replace("tests.test_convert:TinyNet", "nowhere.mod:Net")),
              "no config.json": lambda d: (d / "config.json").unlink()}
    for i, (match, damage) in enumerate(broken.items()):
        d = tmp_path / f"b{i}"
        save(out, d)
        damage(d)
        (d / "manifest.json").unlink()  # a folder from before manifests: the checks on each file still hold
        with pytest.raises(ValueError, match=re.escape(match)):
            load(d, trust_code=True)


class _FlattenHead(nn.Module):
    """LeNet-style: the last feature map is flattened into a Linear layer (its size must not follow σ)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.p1 = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2)
        self.c2, self.p2 = nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = self.p2(torch.relu(self.c2(self.p1(torch.relu(self.c1(x))))))
        return self.fc(x.view(x.size(0), -1))


def test_flatten_head_is_pinned_and_survives_sigma_changes(tmp_path):
    model, x = _FlattenHead().eval(), torch.randn(2, 1, 28, 28)
    pinned, report = njet_convert.convert(model, input_size=(1, 28, 28))
    plain, plain_report = njet_convert.convert(model)
    assert report.pinned == {"view": [7, 7]} and not plain_report.pinned
    assert any("input_size" in s.reason for s in plain_report.skipped)  # said, not silently left fragile
    torch.testing.assert_close(pinned(x), plain(x))  # the pin is the identity at conversion
    for layer in pinned.modules():
        if isinstance(layer, NJetConv2d):
            with torch.no_grad():
                layer.log_sigma.add_(math.log(1.5))
    assert pinned(x).shape == (2, 10)
    njet_convert.save(pinned, tmp_path / "m")
    torch.testing.assert_close(njet_convert.load(tmp_path / "m", trust_code=True)(x), pinned(x))
    with pytest.raises(ValueError, match="input_size"):
        njet_convert.convert(model, input_size=(1, 28))
