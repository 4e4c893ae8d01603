"""Data helpers shared by the classification experiments: a fixed train/test split of the opencv digits
(MNIST-like, 28×28) and resizing by a factor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from njet_convert.data.opencv_digits import load_opencv_digits

__all__ = ["digits_split", "resize_images"]


def digits_split(n_train: int = 4000, n_test: int = 1000, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` with images ``[N, 1, 28, 28]``; disjoint, fixed by ``seed``."""
    images, labels = load_opencv_digits()
    if n_train < 1 or n_test < 1 or n_train + n_test > images.shape[0]:
        raise ValueError(f"n_train + n_test must be in 2..{images.shape[0]}, got {n_train} + {n_test}")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    return images[tr, None], labels[tr], images[te, None], labels[te]


def resize_images(images: Tensor, factor: float) -> Tensor:
    """Bilinear resize of ``[N, C, H, W]`` by ``factor`` (size ``round(H * factor)``); identity for 1."""
    if factor == 1:
        return images
    size = [round(s * factor) for s in images.shape[-2:]]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
