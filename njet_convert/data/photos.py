"""Real photos that work offline, split into a calibration set and a disjoint held-out set (ImageNet-normalised).

Sources: scikit-image's bundled ``skimage.data`` photos and the photos of opencv-doc
(``/usr/share/doc/opencv-doc/examples/data``; override with ``NJET_OPENCV_DATA``). Synthetic images (logos,
charts, rendered shapes, text pages, chessboards, digits) are left out. Every source photo belongs to exactly one
of the two sets; pairs of near-duplicate photos (stereo pairs, two frames of one scene) stay in the same set, so no
held-out image shares a scene with a calibration image.

Image ``i`` of a set is built from photo ``i % P`` of that set (``P`` photos): the first round (``i < P``) is the
whole photo's centre square; later rounds are random crops (2 %–100 % of the area, aspect 3/4–4/3) with a random
horizontal flip, drawn from a generator seeded by the set and ``i`` — so ``calibration_photos(n)`` is the first
``n`` images of one fixed sequence, and the same on every machine. Gray photos are repeated over RGB. Images are
resized to ``size × size`` (bilinear, antialiased) and normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CALIBRATION_SOURCES",
    "HELDOUT_SOURCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "calibration_photos",
    "heldout_photos",
    "photo_set",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

OPENCV_DATA = Path(os.environ.get("NJET_OPENCV_DATA", "/usr/share/doc/opencv-doc/examples/data"))

# "skimage:NAME" is skimage.data.NAME(); anything else is a file name in OPENCV_DATA.
CALIBRATION_SOURCES: tuple[str, ...] = (
    "skimage:astronaut", "skimage:coffee", "skimage:rocket", "skimage:immunohistochemistry", "skimage:camera",
    "skimage:grass", "skimage:brick", "skimage:stereo_motorcycle",
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "baboon.jpg", "basketball1.png", "basketball2.png",
    "board.jpg", "building.jpg", "fruits.jpg", "graf1.png", "graf3.png", "home.jpg", "left.jpg", "right.jpg",
    "leuvenA.jpg", "leuvenB.jpg", "messi5.jpg", "pca_test1.jpg", "stuff.jpg", "text_motion.jpg",
)
HELDOUT_SOURCES: tuple[str, ...] = (
    "skimage:chelsea", "skimage:hubble_deep_field", "skimage:retina", "skimage:gravel",
    "apple.jpg", "blox.jpg", "box.png", "box_in_scene.png", "butterfly.jpg", "chicky_512.png", "ela_original.jpg",
    "HappyFish.jpg", "licenseplate_motion.jpg", "orange.jpg", "rubberwhale1.png", "rubberwhale2.png",
    "smarties.png", "squirrel_cls.jpg", "starry_night.jpg", "sudoku.png", "text_defocus.jpg",
)

_SEEDS = {"calibration": 1_000_003, "heldout": 2_000_003}


def calibration_photos(n: int, size: int = 224) -> Tensor:
    """``n`` calibration images ``[n, 3, size, size]`` (float32, ImageNet-normalised) from CALIBRATION_SOURCES."""
    return photo_set("calibration", n, size)


def heldout_photos(n: int, size: int = 224) -> Tensor:
    """``n`` held-out images ``[n, 3, size, size]`` from HELDOUT_SOURCES (no photo shared with calibration)."""
    return photo_set("heldout", n, size)


def photo_set(which: str, n: int, size: int = 224) -> Tensor:
    """The first ``n`` images of the ``"calibration"`` or ``"heldout"`` sequence (see the module docstring)."""
    if which not in _SEEDS:
        raise ValueError(f"which must be 'calibration' or 'heldout', got {which!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    photos = _load_sources(CALIBRATION_SOURCES if which == "calibration" else HELDOUT_SOURCES)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        photo = photos[i % len(photos)]
        crop = _centre_square(photo) if i < len(photos) else _random_crop(photo, _SEEDS[which] + i)
        out[i] = (_resize(crop, size) - mean) / std
    return out


def _centre_square(img: Tensor) -> Tensor:
    h, w = img.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[:, top : top + side, left : left + side]


def _random_crop(img: Tensor, seed: int) -> Tensor:
    rng = np.random.default_rng(seed)
    h, w = img.shape[-2:]
    for _ in range(20):
        area = h * w * rng.uniform(0.02, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = round(float(np.sqrt(area / aspect))), round(float(np.sqrt(area * aspect)))
        if 16 <= ch <= h and 16 <= cw <= w:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = img[:, top : top + ch, left : left + cw]
            return crop.flip(-1) if rng.random() < 0.5 else crop
    return _centre_square(img)


def _resize(img: Tensor, size: int) -> Tensor:
    out = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


@functools.lru_cache(maxsize=4)
def _load_sources(sources: tuple[str, ...]) -> tuple[Tensor, ...]:
    return tuple(_load_photo(name) for name in sources)


def _load_photo(name: str) -> Tensor:
    """One photo as float32 ``[3, H, W]`` in ``[0, 1]``."""
    if name.startswith("skimage:"):
        import skimage.data

        array = getattr(skimage.data, name.split(":", 1)[1])()
        array = array[0] if isinstance(array, tuple) else array
    else:
        path = OPENCV_DATA / name
        if not path.is_file():
            raise FileNotFoundError(f"photo not found: {str(path)!r}. Install it with `apt-get install opencv-doc`")
        from PIL import Image

        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    array = np.array(array)  # a writable copy
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()
    return tensor / 255.0 if array.dtype == np.uint8 else tensor.clamp(0.0, 1.0)
