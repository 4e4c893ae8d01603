"""The paper's model zoo: every model builds through timm.create_model and runs at its input size."""

from __future__ import annotations

import pytest
import timm
import torch

import njet_convert  # noqa: F401  (registers the zoo)
from njet_convert.models import ZOO

# Parameter counts at 10 classes: ResNet-32's 0.47 M is the paper's Table 4; NIN's ~0.97 M is Lin et al.'s.
PARAMS = {"resnet20": 272_474, "resnet32": 466_906, "resnet44": 661_338, "resnet56": 855_770,
          "resnet110": 1_147_738, "resnet110_wide": 6_904_106, "nin": 968_404, "allcnn": 1_370_996}
HEAVY = {"deeplabv2_aspp", "njet_deeplabv2_aspp"}  # ResNet-101 backbone: built with a small backbone below


def test_zoo_names_are_registered_and_do_not_shadow_timm():
    for name in ZOO:
        assert timm.is_model(name), name
        assert timm.models.model_entrypoint(name).__module__.startswith("njet_convert."), name


@pytest.mark.parametrize("name", sorted(set(ZOO) - HEAVY))
def test_builds_and_forwards(name):
    model = timm.create_model(name).eval()
    c, h, w = ZOO[name]
    with torch.no_grad():
        y = model(torch.randn(2, c, h, w))
    assert y.shape[0] == 2 and torch.isfinite(y).all()
    if name in PARAMS:
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
        assert y.shape == (2, 10)


def test_num_classes_and_input_size_cfg():
    model = timm.create_model("resnet32", num_classes=100)
    assert model.fc.out_features == 100
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.pretrained_cfg["architecture"] == "resnet32"


def test_resnet110_is_bottleneck_110_layers():
    model = timm.create_model("resnet110")
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and "downsample" not in n]
    assert len(convs) + 1 == 110  # 108 block convs + the stem conv, + the classifier
    assert model.layer3[-1].conv3.out_channels == 256  # 64 × 4 expansion


def test_efficientnet_b0_cifar_total_stride_8():
    model = timm.create_model("efficientnet_b0_cifar").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-2:] == (4, 4)
    assert model.pretrained_cfg["architecture"] == "efficientnet_b0_cifar"
    assert 3.9e6 < sum(p.numel() for p in model.parameters()) < 4.1e6


def test_deeplab_aspp_small_backbone():
    model = timm.create_model("deeplabv2_aspp", backbone="resnet18", num_classes=21).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 21, 64, 64)


def test_pretrained_zoo_model_is_a_clear_error():
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("resnet32", pretrained=True)
