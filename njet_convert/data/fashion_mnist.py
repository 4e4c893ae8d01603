"""Offline Fashion-MNIST reader: the idx files of the Debian package ``dataset-fashion-mnist``.

No download code: the files are read from ``/usr/share/datasets/fashion-mnist`` (or a given folder), so the
experiments run on machines without network.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DEFAULT_ROOT", "FashionMNIST", "load_fashion_mnist", "read_idx"]

DEFAULT_ROOT = Path(os.environ.get("NJET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (optionally gzipped) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"path is not an idx file: {str(path)!r}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"idx file {str(path)!r} holds {array.size} values, its header says {shape}")
    return array.reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Images ``[N, 28, 28]`` float32 in ``[0, 1]`` and labels ``[N]`` int64 (0..9) of ``split`` (train/test)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist` or set NJET_FASHION_MNIST to a folder holding the idx files."
        )
    images = torch.from_numpy(read_idx(paths[0]).astype(np.float32) / 255.0)
    labels = torch.from_numpy(read_idx(paths[1]).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST as a map-style dataset of ``([1, 28, 28] float image, int label)`` pairs."""

    classes = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )

    def __init__(self, split: str = "train", root: str | Path | None = None) -> None:
        self.images, self.labels = load_fashion_mnist(split, root)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].unsqueeze(0), int(self.labels[index])
