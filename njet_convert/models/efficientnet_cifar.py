"""EfficientNet-B0 for 32×32 inputs (the paper trains B0 from scratch on CIFAR/SVHN, §4.1).

timm's ``efficientnet_b0`` subsamples by 32 (stem stride 2, then stride 2 in stages 2, 3, 4 and 6), which leaves
a 1×1 map at 32 px. This variant sets the stride of the stem conv and of the first block of stage 2 (its depthwise
3×3 conv) to 1, so the total stride is 8 and the last map is 4×4 at 32 px — the usual CIFAR adaptation. Everything
else (widths, depths, kernel sizes, squeeze-excitation, ~4.0 M parameters at 10 classes) is timm's B0; the model
is a ``timm.models.EfficientNet``. Both changed convs have 3×3 kernels and symmetric padding 1, so they stay 'same'.
"""

from __future__ import annotations

import timm
from timm.models import register_model
from torch import nn

from ._cfg import no_weights, with_cfg, zoo_cfg

__all__ = ["cifar_strides"]


def cifar_strides(model: nn.Module) -> nn.Module:
    """Set the stem conv's and stage 2's first depthwise conv's stride to 1 (in place); returns ``model``."""
    for conv in (model.conv_stem, model.blocks[1][0].conv_dw):
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3) or conv.padding != (1, 1):
            raise ValueError(f"unexpected EfficientNet layout: {conv!r} (expected a 3×3 conv with padding 1)")
        conv.stride = (1, 1)
    return model


@register_model
def efficientnet_b0_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """EfficientNet-B0 with total stride 8 for 32 px inputs (stem and stage-2 strides set to 1)."""
    no_weights("efficientnet_b0_cifar", pretrained)
    kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "in_chans", "drop_rate", "drop_path_rate")}
    kwargs.setdefault("num_classes", 10)
    model = cifar_strides(timm.create_model("efficientnet_b0", pretrained=False, **kwargs))
    cfg = zoo_cfg("efficientnet_b0_cifar", int(kwargs["num_classes"]), (int(kwargs.get("in_chans", 3)), 32, 32),
                  first_conv="conv_stem", classifier="classifier", pool_size=(4, 4))
    return with_cfg(model, cfg)
