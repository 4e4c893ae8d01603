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
    assert record.name == "2" and "calibrated" in record.note and record.fit_error == record.fit_error
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
