"""Conversions of real pretrained networks keep what they knew: MobileNetV2 (ImageNet) and an MNIST CNN."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njet_convert
from njet_convert.data import load_opencv_digits
from njet_convert.data.photos import calibration_photos, heldout_photos
from njet_convert.fidelity import agreement, logits
from njet_convert.fitting import calibrate, fit_kernels
from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn, load_mobilenet_v2
from njet_layers import NJetConv2d


def _convert(model: nn.Module, order: int) -> tuple[nn.Module, dict[str, str]]:
    """Every conv larger than 1×1 swapped for its least-squares NJetConv2d fit (strides and pools kept)."""
    converted = copy.deepcopy(model)
    pairs = {}
    for name, conv in list(converted.named_modules()):
        if isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1:
            fit = fit_kernels(conv.weight.detach(), order, 2.0, dilation=conv.dilation)
            layer = NJetConv2d(conv.in_channels, conv.out_channels, order=order, sigma=fit.sigma, k=2.0,
                               groups=conv.groups, bias=conv.bias is not None, stride=conv.stride)
            with torch.no_grad():
                layer.alpha.copy_(fit.alpha)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
            parent, _, child = name.rpartition(".")
            setattr(converted.get_submodule(parent) if parent else converted, child, layer)
            pairs[name] = name
    return converted.eval(), pairs


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return agreement(a, logits(b, x), x)[0]


@pytest.fixture(scope="module")
def mobilenet_v2() -> nn.Module:
    return load_mobilenet_v2()


def test_mobilenet_v2_order4_agrees_on_heldout_photos(mobilenet_v2):
    converted, _ = njet_convert.convert(mobilenet_v2, order=4)  # safe subsampling: strides become SafeSubsample
    assert sum(isinstance(m, NJetConv2d) for m in converted.modules()) == 18  # the stem and 17 depthwise 3×3 convs
    images = heldout_photos(40, 160)
    assert _agreement(converted, mobilenet_v2, images) >= 0.99


def test_mobilenet_v2_order3_calibration_beats_plain_fit(mobilenet_v2):
    # What users get: convert() with safe subsampling. Small (16 images at 128 px, ~7 s of CPU) to keep the test
    # fast; the full-size numbers (256 images at 224 px) are in benchmarks/fidelity.py.
    held = heldout_photos(40, 128)
    plain, _ = njet_convert.convert(mobilenet_v2, order=3)
    calibrated, report = njet_convert.convert(mobilenet_v2, order=3, calibration=calibration_photos(16, 128))
    assert report.calibrated
    plain_agree, calibrated_agree = _agreement(plain, mobilenet_v2, held), _agreement(calibrated, mobilenet_v2, held)
    # the plain order-3 fit compounds into near-random agreement (docs/design.md, "What conversion measured")
    assert plain_agree < 0.2
    # measured 0.70 on these 40 images; the margin (about 3 standard errors) absorbs changes in the photo set
    assert calibrated_agree >= 0.5, (plain_agree, calibrated_agree)


@pytest.fixture(scope="module")
def mnist_cnn_and_digits():
    model = load_mnist_cnn()
    images, labels = load_opencv_digits(pad_to=20)
    # as the package's own preprocessing: resize the 20×20 digit to 28×28, MNIST normalisation
    images = F.interpolate(images[:, None], size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    images = (images - MNIST_MEAN) / MNIST_STD
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    return model, images[order], labels[order]


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(-1) == labels).float().mean())


def test_mnist_cnn_keeps_its_accuracy_on_opencv_digits(mnist_cnn_and_digits):
    model, images, labels = mnist_cnn_and_digits
    calib, test_x, test_y = images[:256], images[1000:3000], labels[1000:3000]
    base = _accuracy(model, test_x, test_y)
    assert base > 0.8  # the real model recognises these digits
    exact, _ = _convert(model, order=4)
    assert abs(_accuracy(exact, test_x, test_y) - base) <= 0.002
    converted, pairs = _convert(model, order=3)
    plain = _accuracy(converted, test_x, test_y)
    calibrate(converted, model, pairs, calib, order=3, k=2.0, progress=False)
    calibrated = _accuracy(converted, test_x, test_y)
    assert calibrated >= base - 0.01, (base, plain, calibrated)
