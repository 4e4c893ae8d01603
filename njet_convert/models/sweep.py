"""The third-party architectures conversion is checked on (random init): the zoo sweep of the tests and of
``benchmarks/fidelity.py --sweep``, listed once so the two cannot drift apart.

Each entry is ``(source, name, size, size_up, slow)``: the input size at conversion, a larger one for the run after
every σ grows by 50 % (maps shrink faster, so some networks need more pixels), and whether the test is marked slow.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

__all__ = ["SWEEP", "SweepModel", "build_sweep_model"]


class SweepModel(NamedTuple):
    source: str  # "timm" or "torchvision"
    name: str
    size: int
    size_up: int
    slow: bool = False

    @property
    def label(self) -> str:
        return f"{self.source} {self.name}"


_TIMM = [
    ("resnet18", 64, 64), ("resnet26d", 64, 64), ("seresnext26d_32x4d", 64, 64), ("mobilenetv3_small_050", 64, 64),
    ("tf_efficientnet_b0", 64, 64), ("densenet121", 64, 128), ("vgg11", 64, 128), ("regnetx_002", 64, 64),
    ("convnext_atto", 64, 64), ("nf_resnet26", 64, 64), ("dla34", 64, 64), ("ese_vovnet19b_dw", 64, 128),
]
_TIMM_SLOW = [("inception_v3", 96, 320), ("mixnet_s", 64, 64), ("resnetv2_50x1_bit", 64, 64),
              ("hrnet_w18_small", 64, 64)]
_TORCHVISION = [
    ("resnet18", 64, 64), ("mobilenet_v2", 64, 64), ("googlenet", 96, 128), ("vgg11", 64, 128),
    ("shufflenet_v2_x0_5", 64, 64), ("squeezenet1_0", 64, 96), ("deeplabv3_mobilenet_v3_large", 64, 64),
]
_TORCHVISION_SLOW = [("densenet121", 64, 128), ("inception_v3", 96, 320)]

SWEEP: list[SweepModel] = (
    [SweepModel("timm", *e) for e in _TIMM] + [SweepModel("timm", *e, slow=True) for e in _TIMM_SLOW]
    + [SweepModel("torchvision", *e) for e in _TORCHVISION]
    + [SweepModel("torchvision", *e, slow=True) for e in _TORCHVISION_SLOW]
)

# torchvision builders that would otherwise download weights or build auxiliary heads
_TORCHVISION_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
                       "inception_v3": {"aux_logits": False, "init_weights": False},
                       "deeplabv3_mobilenet_v3_large": {"weights_backbone": None}}


def build_sweep_model(entry: SweepModel) -> nn.Module:
    """The entry's network, randomly initialised (no download), in eval mode."""
    if entry.source == "timm":
        import timm

        return timm.create_model(entry.name, pretrained=False).eval()
    import torchvision

    kwargs = _TORCHVISION_KWARGS.get(entry.name, {})
    return torchvision.models.get_model(entry.name, weights=None, **kwargs).eval()
