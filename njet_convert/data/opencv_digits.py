"""The 5000 handwritten digits of opencv-doc's ``digits.png`` (50 rows × 100 columns of 20×20 px digits; each
block of 5 rows holds one digit class, 0 to 9), padded to MNIST's 28×28 layout (MNIST centres a 20×20 digit
box in 28×28 px) — an offline stand-in for MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_DIGITS_PATH", "digits_split", "load_opencv_digits"]

DEFAULT_DIGITS_PATH = Path(os.environ.get("NJET_OPENCV_DIGITS", "/usr/share/doc/opencv-doc/examples/data/digits.png"))


def load_opencv_digits(path: str | Path | None = None, pad_to: int = 28) -> tuple[Tensor, Tensor]:
    """Images ``[5000, pad_to, pad_to]`` float32 in ``[0, 1]`` (row-major grid order) and labels ``[5000]``."""
    path = Path(path) if path is not None else DEFAULT_DIGITS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"opencv digits not found: {str(path)!r}. Install them with `apt-get install opencv-doc`"
        )
    if pad_to < 20:
        raise ValueError(f"pad_to must be >= 20 (the digits are 20×20 px), got {pad_to!r}")
    from PIL import Image

    with Image.open(path) as img:
        grid = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if grid.shape != (1000, 2000):
        raise ValueError(f"expected a 1000×2000 digits.png, got {grid.shape} from {str(path)!r}")
    digits = grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)
    images = torch.from_numpy(np.ascontiguousarray(digits))
    pad = pad_to - 20
    images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return images, torch.from_numpy(labels.astype(np.int64))


def digits_split(n_train: int = 4000, n_test: int = 1000, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` with images ``[N, 1, 28, 28]``; disjoint, fixed by ``seed`` (the split
    every digit experiment, benchmark and the ``opencv-digits`` dataset use)."""
    images, labels = load_opencv_digits()
    if n_train < 1 or n_test < 1 or n_train + n_test > images.shape[0]:
        raise ValueError(f"n_train + n_test must be in 2..{images.shape[0]}, got {n_train} + {n_test}")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    return images[tr, None], labels[tr], images[te, None], labels[te]
