"""Frozen-σ export (issue 6): freeze → plain PyTorch, export_onnx → checked, verified ONNX; bad input is refused.

Converted architectures come from ``njet_convert.convert`` (safe subsampling); the U-Net is the zoo's N-Jet U-Net
with its upsampling joins.
"""

from __future__ import annotations

import json
import math
import os

import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from njet_convert.converter import convert
from njet_convert.export import OnnxExportError, VerificationError, export_onnx, freeze
from njet_convert.export.adaptive_pool import MatrixAdaptiveAvgPool2d
from njet_convert.export.freeze import max_relative_error, njet_modules
from njet_convert.export.separable import layer_costs, separable_form
from njet_convert.export.stride_fold import SampledConv
from njet_convert.models.unet import UNet
from njet_convert.training.resolution import multiply_adds
from njet_convert.training.resolution_search import rescale_stage, resolution_stages
from njet_layers import MatchSize, NJetConv2d, SafeSubsample


def _convert(model: nn.Module) -> nn.Module:
    return convert(model, order=3)[0]


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    return model


def _resnet() -> nn.Module:
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)


ARCHS = {
    "resnet": lambda: _randomise_bn(_convert(_resnet())),
    "mobilenetv2": lambda: _randomise_bn(_convert(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25))),
    "densenet": lambda: _randomise_bn(_convert(torchvision.models.DenseNet(8, (2, 2), 16, num_classes=10))),
    "unet": lambda: UNet(in_chans=1, num_classes=3, width=4, njet_order=2, sigma=1.3),
}
CHANNELS = {"unet": 1}


def _input(arch: str, n: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.randn(n, CHANNELS.get(arch, 3), h, w)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def converted(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    return request.param, ARCHS[request.param]().eval()


def _ort(path: os.PathLike, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_freeze_is_plain_exact_and_leaves_the_model_alone(converted: tuple[str, nn.Module]) -> None:
    arch, model = converted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    x = _input(arch)
    frozen = freeze(model, x)
    assert njet_modules(frozen) == [] and njet_modules(model) != []
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert max_relative_error(frozen(x), model(x)) <= 1e-5
    report = frozen.freeze_report
    assert len(report.layers) == sum(isinstance(m, NJetConv2d) for m in model.modules())
    if arch in ("resnet", "mobilenetv2"):  # every BN follows a conv (through the subsampling): all folded
        assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
        assert len(report.folded_batchnorms) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_onnx_round_trip_dynamic(converted: tuple[str, nn.Module], tmp_path) -> None:
    arch, model = converted
    x = _input(arch)
    result = export_onnx(model, tmp_path / "m.onnx", x, dynamic_spatial=True)
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert set(result.checks) == {"example input", "batch 3", "spatial 37x35"}
    for shape in ((1, 32, 32), (4, 29, 40)):  # other batch sizes and spatial sizes, checked here independently
        xi = _input(arch, *shape)
        with torch.no_grad():
            ref = model(xi)
        assert max_relative_error(_ort(result, xi), ref) <= 1e-4
    proto = onnx.load(os.fspath(result))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    meta = {p.key: p.value for p in proto.metadata_props}
    layers = json.loads(meta["njet.layers"])
    sigmas = [float(m.sigma.detach()) for m in model.modules() if isinstance(m, NJetConv2d)]
    assert sorted(round(s, 5) for s in sigmas) == sorted(round(lay["sigma"], 5) for lay in layers)
    assert {lay["order"] for lay in layers} == {m.order for m in model.modules() if isinstance(m, NJetConv2d)}
    assert all(lay["k"] == 2.0 and lay["form"] in ("dense", "separable") for lay in layers)
    assert meta["njet.source_architecture"] and meta["njet.dynamic_spatial"] == "true"
    assert len(json.loads(meta["njet.subsampling"])) == sum(
        isinstance(m, (SafeSubsample, MatchSize)) for m in model.modules())


def test_fx_graph_module_from_a_conversion(tmp_path) -> None:
    """``convert`` returns fx GraphModules with the N-Jet modules as leaves: freeze and fold BN there too."""
    from torch import fx

    graph_module = _randomise_bn(_convert(_resnet())).eval()
    assert isinstance(graph_module, fx.GraphModule)
    x = _input("resnet", 2, 24, 24)
    result = export_onnx(graph_module, tmp_path / "g.onnx", x)
    assert max(result.checks.values()) <= 1e-4
    assert result.metadata["njet.source_architecture"] == graph_module.njet_record.source.name != ""
    frozen = freeze(graph_module, x)
    assert isinstance(frozen, fx.GraphModule) and njet_modules(frozen) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())


def test_static_export_bakes_fixed_sizes(tmp_path) -> None:
    model = ARCHS["unet"]().eval()
    x = _input("unet", 1, 30, 26)
    result = export_onnx(model, tmp_path / "u.onnx", x, dynamic_batch=False)
    assert result.checks and max(result.checks.values()) <= 1e-4
    assert {r.form for r in result.freeze_report.resizes} == {"resize_to"}  # one MatchSize, two joins, two sizes
    dims = onnx.load(os.fspath(result)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 30, 26]


@pytest.mark.parametrize("mode,rounding,sigma", [
    ("nearest", "ceil", 1.3), ("nearest", "floor", 2.0), ("bilinear", "round", 1.7), ("area", "ceil", 4.0),
])
def test_subsample_forms_match_njet(mode: str, rounding: str, sigma: float) -> None:
    sub = SafeSubsample(r=2.0, sigma=sigma, mode=mode, rounding=rounding)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), sub).eval()
    x = torch.randn(2, 2, 23, 18)
    fixed, dynamic = freeze(model, x), freeze(model, x, dynamic_spatial=True)
    strided = mode == "nearest" and sigma == 2.0  # factor 2 ** (2 / 2) = 2
    assert fixed.freeze_report.resizes[0].form == ("strided" if strided else "fixed")
    assert dynamic.freeze_report.resizes[0].form == ("strided" if strided else "scale")
    for h, w in ((23, 18), (40, 9), (5, 64)):
        xi = torch.randn(1, 2, h, w)
        with torch.no_grad():
            ref = model(xi)
            assert torch.allclose(dynamic(xi), ref, atol=1e-6)
            if (h, w) == (23, 18) or fixed.freeze_report.resizes[0].form == "strided":  # a slice takes any size
                assert torch.allclose(fixed(xi), ref, atol=1e-6)
            else:
                with pytest.raises(ValueError, match="dynamic_spatial=True"):
                    fixed(xi)


@pytest.mark.parametrize("form", ["dense", "separable"])
def test_integer_nearest_subsampling_becomes_a_strided_conv(form: str) -> None:
    conv = NJetConv2d(2, 4, sigma=1.0, learn_sigma=False)
    model = _randomise_bn(nn.Sequential(conv, SafeSubsample(r=1.0, source=conv), nn.BatchNorm2d(4))).eval()
    frozen = freeze(model, torch.randn(1, 2, 16, 16), dynamic_spatial=True, form=form)  # factor 2**1 = 2
    assert [r.form for r in frozen.freeze_report.resizes] == ["strided"]
    assert len(frozen.freeze_report.folded_strides) == 1 and isinstance(frozen[1], nn.Identity)
    assert (frozen[0] if form == "dense" else frozen[0][0]).stride[0] == 2  # the conv computes the kept pixels only
    x = torch.randn(1, 2, 33, 17)
    with torch.no_grad():
        assert max_relative_error(frozen(x), model(x)) <= 1e-5


@pytest.mark.parametrize("form,sigma,size", [("dense", 1.0, 64), ("separable", 2.0, 64), ("dense", 1.0, 47)])
def test_nearest_subsampling_off_an_integer_factor_computes_only_the_kept_pixels(form: str, sigma: float, size: int,
                                                                               tmp_path) -> None:
    torch.manual_seed(0)
    conv = NJetConv2d(4, 16, sigma=sigma, learn_sigma=False)
    sub = SafeSubsample(r=sigma, source=conv)
    sub.shift = math.log2(2.05) - 1.0  # factor 2.05 (σ learned after a search): steps of 2 and now and then a 3
    sub.fuse_into(conv)  # as convert does: training computes the kept pixels, and multiply_adds counts them
    model = _randomise_bn(nn.Sequential(conv, sub, nn.BatchNorm2d(16))).eval()
    x = torch.randn(1, 4, size, size)
    frozen, unfolded = freeze(model, x), freeze(model, x, fold_stride=False)
    assert [lay.form for lay in frozen.freeze_report.layers] == [form]
    assert [r.form for r in frozen.freeze_report.resizes] == ["fixed"]
    assert isinstance(frozen[0], SampledConv) and isinstance(frozen[1], nn.Identity)
    assert frozen.freeze_report.max_rel_error <= 1e-5
    kept, counted = multiply_adds(frozen, x), multiply_adds(model, x)
    assert kept < multiply_adds(unfolded, x) / 2.5  # a quarter of the pixels (the chain's row pass: half)
    assert counted == kept
    result = export_onnx(model, tmp_path / "m.onnx", x, dynamic_batch=False)
    assert max(result.checks.values()) <= 1e-4


def test_an_anchored_factor_of_four_folds_where_its_margin_keeps_a_pixel_less() -> None:
    original = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model = convert(original.eval(), order="exact", input_size=(3, 25, 25), progress=False)[0]
    stages = resolution_stages(model, torch.randn(1, 3, 25, 25))
    rescale_stage(model, stages[0], 1.0)  # σ and factor ×2: 25 px -> 6, where x[::4] would keep 7
    x = torch.randn(2, 3, 25, 25)
    frozen = freeze(model, x)
    assert len(frozen.freeze_report.folded_strides) == 1
    assert frozen.freeze_report.max_rel_error <= 1e-5 and frozen(x).shape[-1] == 6
    assert multiply_adds(model, x) == multiply_adds(frozen, x)


def test_separable_form_is_exact_and_auto_picks_it_for_large_sigma(tmp_path) -> None:
    wide = NJetConv2d(16, 32, sigma=3.0, bias=True)  # s = 13: 169 taps dense vs a flat separable cost
    depthwise = NJetConv2d(32, 32, sigma=1.0, groups=32)  # s = 5, depthwise: dense is cheaper
    model = nn.Sequential(wide, nn.BatchNorm2d(32), nn.ReLU(), depthwise).eval()
    _randomise_bn(model)
    x = torch.randn(2, 16, 24, 24)
    frozen = freeze(model, x)
    assert [lay.form for lay in frozen.freeze_report.layers] == ["separable", "dense"]
    assert isinstance(frozen[0], nn.Sequential) and isinstance(frozen[1], nn.Identity)  # BN folded into the 1×1
    forced = freeze(model, x, form="separable")
    with torch.no_grad():
        ref = model(x)
        assert max_relative_error(forced(x), ref) <= 1e-5
    result = export_onnx(model, tmp_path / "s.onnx", x)
    assert max(result.checks.values()) <= 1e-4
    assert json.loads(result.metadata["njet.layers"])[0]["form"] == "separable"


@pytest.mark.parametrize("order", [(2, 2), (1, 3)])
def test_tensor_basis_separable_form_filters_each_y_map_once(order: tuple[int, int]) -> None:
    layer = NJetConv2d(6, 8, order=order, sigma=1.3, bias=True, stride=(1, 2)).eval()
    chain = separable_form(layer)
    n_j, n_m, size = order[1] + 1, (order[0] + 1) * (order[1] + 1), layer.kernel_size
    assert chain[1].groups == 6 * n_j  # one group per y-map: no zero weights
    costs = layer_costs(layer)
    assert costs.separable == 2 * 6 * n_j * size + 6 * n_m * size + 6 * n_m * 8
    x = torch.randn(2, 6, 19, 23)
    with torch.no_grad():
        assert max_relative_error(chain(x), layer(x)) <= 1e-5


def test_dynamo_exporter(tmp_path) -> None:
    conv = NJetConv2d(3, 4, sigma=0.8)
    model = nn.Sequential(conv, SafeSubsample(0.8, source=conv), nn.BatchNorm2d(4), nn.ReLU()).eval()
    result = export_onnx(model, tmp_path / "d.onnx", torch.randn(1, 3, 16, 16), exporter="dynamo")
    assert result.exporter == "dynamo" and set(result.checks) == {"example input", "batch 2"}
    assert sorted(os.listdir(tmp_path)) == ["d.onnx"]  # one self-contained file, no external data left over


def test_missing_directory_is_refused(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope"):
        export_onnx(nn.Conv2d(1, 1, 3), missing / "m.onnx", torch.randn(1, 1, 8, 8))
    assert not missing.exists()


class _BatchDependent(nn.Module):
    """Traces one branch of Python control flow: onnxruntime then disagrees with PyTorch on another batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] == 2 else x


def test_verification_mismatch_reports_figures_and_writes_nothing(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _BatchDependent()).eval()
    target = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match=r"batch 3.*max abs error .* relative .* > rtol"):
        export_onnx(model, target, torch.randn(2, 1, 8, 8))
    assert os.listdir(tmp_path) == []


class _CumMax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cummax(-1).values


def test_inexpressible_module_is_named_and_nothing_written(tmp_path, capfd) -> None:
    conv = NJetConv2d(1, 2, sigma=0.7)
    model = nn.Sequential(conv, nn.Sequential(nn.ReLU(), _CumMax())).eval()
    with pytest.raises(OnnxExportError, match=r"module '1\.1' \(_CumMax\).*cummax") as err:
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert os.listdir(tmp_path) == []
    assert "\n" not in str(err.value) and "graph" not in capfd.readouterr().out  # one line, no IR dump


@pytest.mark.parametrize("kwargs,match", [
    ({"exporter": "tflite"}, "exporter"), ({"opset": 3}, "opset"), ({"example_input": [1.0]}, "example_input"),
])
def test_bad_arguments(tmp_path, kwargs: dict, match: str) -> None:
    args = {"example_input": torch.randn(1, 1, 8, 8)} | kwargs
    with pytest.raises(ValueError, match=match):
        export_onnx(nn.Conv2d(1, 1, 3), tmp_path / "m.onnx", **args)
    assert os.listdir(tmp_path) == []


def test_cli_refuses_a_missing_model_dir(tmp_path, capsys) -> None:
    from njet_convert.export.__main__ import main

    assert main([str(tmp_path / "absent"), "--out", str(tmp_path / "m.onnx"), "--input-shape", "1,3,8,8"]) == 2
    assert "error:" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_cli_exports_a_loaded_model(tmp_path, monkeypatch, capsys) -> None:
    """The ``python -m njet_convert.export`` path end to end, with ``njet_convert.load`` stubbed to a small model."""
    import sys
    import types

    from njet_convert.export.__main__ import main

    conv = NJetConv2d(3, 4, sigma=0.9)
    model = nn.Sequential(conv, SafeSubsample(0.9, source=conv), nn.BatchNorm2d(4), nn.ReLU()).eval()
    loaded = []
    fake = types.ModuleType("njet_convert.serialization")
    fake.load = lambda path, trust_code=False: loaded.append(path) or model
    monkeypatch.setitem(sys.modules, "njet_convert.serialization", fake)
    out = tmp_path / "cli.onnx"
    assert main(["saved_dir", "--out", str(out), "--input-shape", "1,3,20,20", "--dynamic-spatial"]) == 0
    assert loaded == ["saved_dir"] and os.listdir(tmp_path) == ["cli.onnx"]
    assert "spatial 25x23" in capsys.readouterr().out
    x = torch.randn(2, 3, 17, 31)
    with torch.no_grad():
        assert max_relative_error(_ort(out, x), model(x)) <= 1e-4
    assert main(["saved_dir", "--out", str(out), "--input-shape", "1,3"]) == 2  # bad shape: one line, exit 2


@pytest.mark.parametrize(("size_in", "size_out"), [((7, 9), (4, 4)), ((5, 6), (3, 4)), ((8, 8), (4, 4))])
def test_matrix_adaptive_pool_equals_torch(size_in: tuple, size_out: tuple) -> None:
    x = torch.randn(2, 3, *size_in)
    pool = MatrixAdaptiveAvgPool2d(size_in, size_out)
    torch.testing.assert_close(pool(x), nn.functional.adaptive_avg_pool2d(x, size_out), rtol=1e-6, atol=1e-6)


def test_adaptive_pool_after_learned_subsampling_exports(tmp_path) -> None:
    """σ moved after fine-tuning: 28 px -> 15 px -> adaptive pool to 4×4 (not a multiple) still exports exactly."""
    conv = NJetConv2d(1, 4, order=2, sigma=1.3)
    model = nn.Sequential(conv, SafeSubsample(r=1.4, source=conv), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    x = torch.randn(2, 1, 28, 28)
    assert model[1](conv(x)).shape[-1] % 4 != 0
    frozen = freeze(model, x)
    assert any(isinstance(m, MatrixAdaptiveAvgPool2d) for m in frozen.modules())
    result = export_onnx(model, tmp_path / "pool.onnx", x)
    assert max(result.checks.values()) < 1e-4
