"""Data helpers shared by the classification experiments: a fixed train/test split of the opencv digits
(MNIST-like, 28×28) and resizing by a factor."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from njet_convert.data.opencv_digits import digits_split

__all__ = ["digits_split", "resize_images"]


def resize_images(images: Tensor, factor: float) -> Tensor:
    """Bilinear resize of ``[N, C, H, W]`` by ``factor`` (size ``round(H * factor)``); identity for 1."""
    if factor == 1:
        return images
    size = [round(s * factor) for s in images.shape[-2:]]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
