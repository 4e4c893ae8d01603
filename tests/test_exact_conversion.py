"""order="exact": every conv becomes the tensor-product N-Jet layer of its own frame, fitted exactly.

Checks the conversion reproduces the network (kernels, dilation, groups, non-square and even kernels, TF-SAME
padding, weight standardisation), costs one σ per conv in parameters when kernels are odd and square, survives
save/load, freeze and ONNX, says when it skips calibration, is refused with the layer's name when a frame is too
wide, and that the surgery builds the structure without importing the fitting code.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

import njet_convert
from njet_convert.config import ConvertConfig, parse_order
from njet_convert.export import export_onnx, freeze
from njet_convert.export.freeze import FREEZE_RTOL, _check_match, max_relative_error
from njet_convert.fitting import exact_sigma
from njet_layers import NJetConv2d, filter_radius

pytestmark = pytest.mark.usefixtures("one_thread")


def _relative(model: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return max_relative_error(other.eval()(x), model.eval()(x))


def _plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 5, padding=2, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(8, 8, 7, padding=3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


@pytest.mark.parametrize("text, expected", [
    ("exact", "exact"), ("EXACT", "exact"), ("depthwise=exact,*=3", {"depthwise": "exact", "*": 3}),
    ('{"*": "exact"}', {"*": "exact"}), (3, 3),
])
def test_parse_order_accepts_exact_and_rules(text, expected):
    assert parse_order(text) == expected
    assert ConvertConfig(order=text).order == expected


@pytest.mark.parametrize("bad", ["exakt", "dense=exactly", {"*": "4x4"}])
def test_parse_order_refuses_near_misses(bad):
    with pytest.raises(ValueError, match="exact"):
        parse_order(bad)


def test_exact_reproduces_the_network_at_one_sigma_per_conv():
    model = _plain_net()
    out, report = njet_convert.convert(model, order="exact")
    x = torch.randn(3, 3, 32, 32)
    assert _relative(model, out, x) < 1e-5
    assert report.params_after == report.params_before + len(report.layers) == report.params_before + 5
    assert {r.basis for r in report.layers} == {"tensor 3x3", "tensor 5x5", "tensor 7x7"}
    assert all(r.fit_error < 1e-12 and r.alphas_per_kernel == math.prod(r.original_shape[2:]) for r in report.layers)
    assert all(r.condition < 1.01 and r.rank == r.alphas_per_kernel and r.fragile == 0 for r in report.layers)
    assert report.fragile_layers() == [] and report.recommendations == []
    assert "| tensor 5x5 | 25 |" in report.to_markdown()


def test_exact_sigma_is_inside_the_kernel_size_and_well_conditioned():
    for radius in (1, 2, 3, 4):
        sigma = exact_sigma(radius, 2 * radius, 2.0)
        assert filter_radius(sigma, 2.0) == radius
        assert filter_radius(torch.tensor(sigma, dtype=torch.float32), 2.0) == radius


def test_dilated_even_and_non_square_kernels_are_exact_in_their_frame():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(8, 8, (1, 3), padding=(0, 1)), nn.ReLU(),
        nn.Conv2d(8, 8, (5, 3), padding=(2, 1)), nn.ReLU(),
        nn.Conv2d(8, 8, 2, stride=2), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding="same"),
    ).eval()
    out, report = njet_convert.convert(model, order="exact")
    assert _relative(model, out, torch.randn(2, 3, 24, 24)) < 1e-5
    bases = [r.basis for r in report.layers]
    assert bases == ["tensor 3x3", "tensor 3x3", "tensor 5x5", "tensor 3x3", "tensor 3x3"]
    assert out.get_submodule("0").dilation == (2, 2)  # the dilation is kept as the layer's tap spacing


def test_timm_same_padding_and_standardised_weights_are_exact():
    from timm.layers import Conv2dSame, StdConv2d

    torch.manual_seed(2)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), StdConv2d(8, 8, 3, padding=1)).eval()
    out, _ = njet_convert.convert(model, order="exact")
    for size in (17, 24):
        assert _relative(model, out, torch.randn(2, 3, size, size)) < 1e-5


def test_rules_mix_exact_and_the_jet():
    model = _plain_net()
    _, report = njet_convert.convert(model, order="depthwise=exact,*=3")
    assert [r.basis for r in report.layers] == ["jet 3", "jet 3", "tensor 3x3", "jet 3", "jet 3"]
    assert report.fragile_layers()  # the jet of order 3 on 3×3 is over-complete there
    assert "below the numerical rank" in report.to_markdown()


def test_dilated_layers_keep_their_spacing_through_freeze_and_onnx(tmp_path: Path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=12, dilation=12), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=(6, 2), dilation=(6, 2), groups=8)).eval()
    out, report = njet_convert.convert(model, order="exact")
    x = torch.randn(2, 3, 40, 40)
    assert _relative(model, out, x) < 1e-5
    assert report.params_after == report.params_before + 2
    frozen = freeze(out, x, form="auto")
    assert frozen.freeze_report.max_rel_error < 1e-5 and {lay.form for lay in frozen.freeze_report.layers} == {"dense"}
    result = export_onnx(out, tmp_path / "d.onnx", x)
    assert max(result.checks.values()) < 1e-5


def test_a_frame_wider_than_the_largest_basis_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 15, padding=7))
    with pytest.raises(ValueError, match=r"cannot hold conv '1'.*15x15 frame.*'1=3,\*=exact'"):
        njet_convert.convert(model, order="exact")
    _, report = njet_convert.convert(model, order="1=3,*=exact")
    assert [r.basis for r in report.layers] == ["tensor 3x3", "jet 3"]


def test_calibration_is_skipped_for_exact_layers_and_said():
    model = _plain_net()
    data = torch.randn(16, 3, 32, 32)
    out, report = njet_convert.convert(model, order="exact", calibration=data)
    assert any("exact" in note for note in report.notes) and "Note:" in report.to_markdown()
    assert _relative(model, out, data[:4]) < 1e-5


def test_exact_survives_save_load_freeze_and_onnx(tmp_path: Path):
    import timm

    torch.manual_seed(4)
    model = timm.create_model("resnet20").eval()  # the project's zoo: CIFAR ResNet-20, 3×3 convs
    out, _ = njet_convert.convert(model, order="exact")
    njet_convert.save(out, tmp_path / "m")
    back = njet_convert.load(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert _relative(out, back, x) == 0.0
    layers = [m for m in back.modules() if isinstance(m, NJetConv2d)]
    assert all(int(m.basis_anchor[1]) > 0 for m in layers)  # the anchored mix came back with the weights
    for form in ("dense", "separable"):
        frozen = freeze(back, x, form=form)
        assert frozen.freeze_report.max_rel_error < 1e-5
    result = export_onnx(back, tmp_path / "m.onnx", x)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert max_relative_error(torch.from_numpy(onnx_out), model(x)) < 1e-5


def test_surgery_imports_nothing_from_fitting():
    root = Path(njet_convert.__file__).parent / "surgery"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert "fitting" not in target, f"{path.name} imports {target}"
            elif isinstance(node, ast.Import):
                assert all("fitting" not in a.name for a in node.names), path.name


def test_freeze_judges_against_what_float32_can_hold():
    """α with large components along the jet's null space on 3 taps (what a minimum-norm fit of an over-complete
    basis can leave after training) cancel in the composed kernel but not in the basis-first path: the N-Jet model's
    own float32 result is then ~3e-5 off, freeze accepts a faithful frozen model and still refuses a real mismatch."""
    torch.manual_seed(3)
    layer = NJetConv2d(4, 4, order=4, sigma=0.5, impl="basis_first")
    basis = layer.basis().double().reshape(layer.alpha.shape[-1], -1)
    null = torch.linalg.svd(basis.T, full_matrices=True)[2][9:]  # α directions the 3×3 frame cannot see
    with torch.no_grad():
        layer.alpha.add_((torch.randn(4, 4, null.shape[0]).double() @ null * 100).float())
    model = nn.Sequential(layer, nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(2, 4, 16, 16)
    frozen = freeze(model, x)
    report = frozen.freeze_report
    assert FREEZE_RTOL < report.max_rel_error <= report.tolerance  # past 1e-5, within the model's own noise
    with torch.no_grad():
        frozen[0].weight.mul_(1.01)  # a real mismatch: 1 % on every tap
        with pytest.raises(ValueError, match="frozen model differs"):
            _check_match(model(x), frozen, x, model)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from njet_convert import cli

    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_defaults_to_exact_for_pretrained_weights_and_to_the_jet_otherwise(tmp_path, capsys):
    import json

    import timm
    from safetensors.torch import save_file

    ckpt = tmp_path / "r20.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet20").state_dict().items()}, str(ckpt))
    code, out, err = _cli(capsys, "resnet20", "--checkpoint", str(ckpt), "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["report"]["options"]["order"] == "exact"
    code, out, err = _cli(capsys, "resnet20", "--dry-run", "--json")  # built new: the paper's jet
    assert code == 0, err
    assert json.loads(out)["report"]["options"]["order"] == 3
    code, out, err = _cli(capsys, "resnet20", "--checkpoint", str(ckpt), "--order", "3", "--dry-run", "--json")
    assert json.loads(out)["report"]["options"]["order"] == 3


def test_cli_refuses_a_kernel_exact_cannot_hold_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "wide_models.py").write_text("from torch import nn\n\ndef wide():\n"
                                             "    return nn.Sequential(nn.Conv2d(3, 4, 15, padding=7))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = _cli(capsys, "wide_models:wide", "--order", "exact", "--input-size", "3,32,32", "--dry-run")
    lines = [line for line in err.strip().splitlines() if line.startswith("njet-convert: ")]
    assert code == 2 and len(lines) == 1 and "cannot hold conv '0'" in lines[0], err
    assert "Traceback" not in err


def test_calibrate_refuses_tensor_layers_by_name():
    from njet_convert.fitting import calibrate

    model = _plain_net()
    out, _ = njet_convert.convert(model, order="exact")
    with pytest.raises(ValueError, match="'0' has a tensor-product basis"):
        calibrate(out, model, {"0": "0"}, torch.randn(4, 3, 32, 32), progress=False)
