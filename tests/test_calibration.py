"""Calibration beyond the exact fit: wide convs (blockwise), the held-out fidelity slice, progress, order rules."""

import torch
import torch.nn.functional as F

import njet_convert
from njet_convert.fitting import CalibrationOptions

nn = torch.nn


def _images(n: int, seed: int, channels: int = 3, size: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, channels, 4, 4, generator=g), size=(size, size), mode="bilinear") + 0.2


def _wide_net(channels: int = 208) -> nn.Module:
    """A 3-channel stem to ``channels`` (kept), then a wide 3×3 conv (``channels * 10`` > 2048 basis features)."""
    torch.manual_seed(0)
    stem = nn.Conv2d(3, channels, 3, padding=1)
    wide = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
    return nn.Sequential(stem, nn.ReLU(), wide).eval()


def _output_error(model: nn.Module, original: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y, ref = model(x), original(x)
    return float((y - ref).pow(2).sum() / ref.pow(2).sum())


def test_a_wide_conv_is_calibrated_and_beats_the_plain_fit_on_held_out_images():
    model = _wide_net()
    plain, _ = njet_convert.convert(model, order=3, exclude=["0"])
    opts = CalibrationOptions(holdout=0.0)
    calibrated, report = njet_convert.convert(model, order=3, exclude=["0"], calibration=_images(64, 0, size=16),
                                              calibration_options=opts)
    (record,) = report.layers
    assert record.name == "2" and "calibrated (blockwise, " in record.note and record.fit_error == record.fit_error
    held = _images(32, 1, size=16)
    assert _output_error(calibrated, model, held) < 0.9 * _output_error(plain, model, held)


def test_one_block_is_the_exact_fit():
    from njet_convert.fitting import calibrate

    model = _wide_net(channels=24)
    data = _images(48, 2)
    fits = {}
    for name, opts in (("exact", CalibrationOptions(holdout=0.0)),
                       ("blockwise", CalibrationOptions(holdout=0.0, max_features=8, block_features=240)),
                       ("blocks", CalibrationOptions(holdout=0.0, max_features=8, block_features=60))):
        converted, _ = njet_convert.convert(model, order=3, exclude=["0"])
        fits[name] = calibrate(converted, model, {"2": "2"}, data, progress=False, options=opts)["2"]
    # the exact fit regresses the original's output on all channels at once; one block sees the same patches
    assert fits["exact"].sigma == fits["blockwise"].sigma
    torch.testing.assert_close(fits["blockwise"].alpha, fits["exact"].alpha, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(fits["blocks"].alpha, fits["exact"].alpha, rtol=1e-3, atol=1e-4)


def _mnist_cnn_and_digits(n: int):
    from njet_convert.data import load_opencv_digits
    from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn

    images, _ = load_opencv_digits(pad_to=20)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    images = F.interpolate(images[order, None], size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return load_mnist_cnn(), (images - MNIST_MEAN) / MNIST_STD


def test_held_out_slice_never_enters_a_fit_and_calibration_lowers_its_error(monkeypatch):
    """On a real trained CNN: the report's held-out figures per stage, calibration better than the plain fit there,
    and the images the fit saw are exactly the calibration images less the held-out slice."""
    import njet_convert.fitting.calibration as calibration

    model, images = _mnist_cnn_and_digits(160)
    seen = []
    real = calibration.calibrate_layers

    def spy(converted, original, pairs, data, **kwargs):
        seen.append(torch.cat([b if torch.is_tensor(b) else b[0] for b in data]) if not torch.is_tensor(data)
                    else data)
        return real(converted, original, pairs, data, **kwargs)

    monkeypatch.setattr(calibration, "calibrate_layers", spy)
    _, report = njet_convert.convert(model, order=3, calibration=images)
    (fit_images,) = seen
    assert fit_images.shape[0] == 160 - 16  # 10 % of 160, at least 16
    assert torch.equal(fit_images, images[:144])
    plain, calibrated = report.fidelity["plain"], report.fidelity["calibrated"]
    assert plain["images"] == calibrated["images"] == 16
    assert calibrated["kl"] < plain["kl"]
    assert "calibrated" in report.to_markdown() and report.to_dict()["fidelity"]["calibrated"]["kl"] >= 0
    assert "held-out fidelity (16 images)" in report.fidelity_summary()


def test_holdout_sizes_and_batched_data():
    from njet_convert.fitting.calibration.holdout import holdout_size, split_holdout

    assert holdout_size(256, 0.1, 16) == 26 and holdout_size(100, 0.1, 16) == 16 and holdout_size(20, 0.1, 16) == 10
    assert holdout_size(256, 0.0, 16) == 0 and holdout_size(1, 0.1, 16) == 0
    batches = [torch.full((8, 1, 2, 2), float(i)) for i in range(5)]
    fit, held = split_holdout([(b, 0) for b in batches], 0.1, 12)
    assert held.shape[0] == 12 and [b.shape[0] for b in fit] == [8, 8, 8, 4]
    assert torch.equal(torch.cat([*fit, held]), torch.cat(batches))


def test_order_rules_apply_and_survive_save_and_load(tmp_path):
    import timm

    from njet_convert.config import ConvertConfig
    from njet_convert.surgery.selection import conv_kind

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0_cifar").eval()  # the zoo's: depthwise and dense 3×3 convs
    rules = {"conv_stem": 2, "blocks.1.*": 3, "depthwise": 4, "*": 3}  # the first matching rule wins
    converted, report = njet_convert.convert(model, order=rules)
    kinds = {r.name: conv_kind(model.get_submodule(r.name)) for r in report.layers}
    expected = {n: 2 if n == "conv_stem" else 3 if n.startswith("blocks.1.") else 4 if k == "depthwise" else 3
                for n, k in kinds.items()}
    assert {r.name: r.order for r in report.layers} == expected and set(expected.values()) == {2, 3, 4}
    assert all(converted.get_submodule(n).order == o for n, o in expected.items())
    njet_convert.save(converted, tmp_path / "m")
    loaded = njet_convert.load(tmp_path / "m")
    assert all(loaded.get_submodule(n).order == o for n, o in expected.items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), converted(x))
    assert ConvertConfig(order="depthwise=4,*=3").order == {"depthwise": 4, "*": 3}
    assert ConvertConfig(order='{"re:l.*": 2, "*": 3}').order == {"re:l.*": 2, "*": 3}


def test_bad_order_rules_are_one_line_errors():
    import pytest

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval()
    for bad, match in (({"*": -1}, "integer from 0 to 12"), ({"re:(": 3}, "bad regex"), ({}, "empty"),
                       ("dense=x", "RULE=ORDER"), ("{[", "bad JSON"), (100, "0 to 12")):
        with pytest.raises(ValueError, match=match):
            njet_convert.convert(model, order=bad)
    with pytest.raises(ValueError, match="no order for conv '0'"):
        njet_convert.convert(model, order={"depthwise": 4})


def test_report_recommends_an_order_rule_for_poor_fits():
    model = _wide_net(channels=8)  # random 3×3 kernels: order 3 misses part of each
    _, report = njet_convert.convert(model, order={"0": 4, "*": 3})  # the stem exact, the other conv poor
    (advice,) = report.recommendations
    assert "order='dense=exact,*=3'" in advice and "Recommendation" in report.to_markdown()
    _, everything = njet_convert.convert(model, order=3)
    assert "try order='exact'" in everything.recommendations[0]
    _, exact = njet_convert.convert(model, order=4)
    assert exact.recommendations == []
    _, exact = njet_convert.convert(model, order="exact")
    assert exact.recommendations == []


def test_cli_order_rules_fidelity_summary_and_progress(tmp_path):
    import json
    import subprocess
    import sys

    import timm
    import torch

    weights = tmp_path / "r20.pth"  # weights make it a network to calibrate (an untrained one is built new at σ0)
    torch.save(timm.create_model("resnet20").state_dict(), weights)
    out = tmp_path / "r20"
    cmd = [sys.executable, "-m", "njet_convert.cli", "resnet20", "--checkpoint", str(weights), "--order",
           "layer1.*=4,*=3", "--calibrate", "photos", "--calibration-images", "32", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "(order layer1.*=4,*=3)" in summary and "held-out fidelity (16 images): plain " in summary
    assert "calibrating (16 images)" in proc.stderr  # the progress bar
    report = json.loads((out / "report.json").read_text())
    assert set(report["fidelity"]) == {"plain", "calibrated"} and report["fidelity"]["calibrated"]["images"] == 16
    assert {r["order"] for r in report["layers"] if r["name"].startswith("layer1.")} == {4}
    assert njet_convert.load(out).get_submodule("layer1.0.conv1").order == 4


def test_progress_is_a_bar_that_says_why_a_refit_was_skipped_and_is_silent_when_off(capfd):
    images = _images(40, 0, channels=1, size=8)  # 16 held out, 24 to fit
    tiny = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 64, 1), nn.ReLU(),
                         nn.Conv2d(64, 4, 1)).eval()
    njet_convert.convert(tiny, calibration=images, progress=True)
    err = capfd.readouterr().err
    assert "calibrating (24 images)" in err and ("layer/s" in err or "s/layer" in err)
    assert "pointwise refit skipped: too few samples" in err  # a 1×1 conv with 64 inputs and 24 * 64 samples
    njet_convert.convert(tiny, calibration=images, progress=False)
    assert capfd.readouterr().err == ""


def test_report_recommends_orders_when_held_out_agreement_is_low_though_each_fit_is_fair():
    from njet_convert.order_advice import recommend_orders
    from njet_convert.report import ConversionReport, LayerRecord

    convs = {"a": nn.Conv2d(8, 8, 3, groups=8), "b": nn.Conv2d(8, 8, 3, groups=8), "c": nn.Conv2d(3, 8, 3)}
    report = ConversionReport(layers=[LayerRecord(n, "Conv2d", (8, 1, 3, 3), "NJetConv2d", 0.5, 5, e)
                                      for n, e in (("a", 0.05), ("b", 0.08), ("c", 0.02))])
    assert recommend_orders(report, 3, convs) == []  # no held-out figure
    report.fidelity = {"plain": {"agreement": 0.1}, "calibrated": {"agreement": 0.95}}
    assert recommend_orders(report, 3, convs) == []
    report.fidelity["calibrated"]["agreement"] = 0.75
    (advice,) = recommend_orders(report, 3, convs)
    assert "try order='depthwise=exact,*=3'" in advice and "75.0 %" in advice


def test_cli_refuses_to_calibrate_an_untrained_network(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "njet_convert.cli", "resnet20", "--calibrate", "photos", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--calibrate needs the network's weights" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_conditioning_columns_describe_the_calibrated_fit_not_the_plain_one():
    from torch import nn

    from njet_convert.fitting.kernel_fit import layer_conditioning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(16, 3, 16, 16)
    _, plain = njet_convert.convert(model, order=3)
    converted, calibrated = njet_convert.convert(model, order=3, calibration=x)
    modules = dict(converted.named_modules())
    for record in calibrated.layers:
        assert (record.condition, record.rank, record.fragile) == layer_conditioning(modules[record.name])
    assert [r.fragile for r in calibrated.layers] != [r.fragile for r in plain.layers]
